"""Results out: result JSON, alerts, counters and side outputs of a finished batch."""
