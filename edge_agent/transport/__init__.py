"""The MQTT session: paho driven by the agent's own network thread."""
