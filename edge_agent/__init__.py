"""The edge agent: MQTT readings -> validated windows -> deadline-aware batches -> local
(ONNX Runtime / TensorRT) or offloaded inference -> results, alerts, local store, telemetry.

Entry points: the ``edge-agent`` console script (:mod:`edge_agent.app.cli`), and
:class:`edge_agent.app.agent.EdgeAgent` for in-process use. The reading payload formats
(JSON and the compact binary frame) are documented in :mod:`bus.readings`.
"""
