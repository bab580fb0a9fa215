"""What operators see: counters and metrics, telemetry, status documents, HTTP endpoints,
the dashboard and its history.
"""
