"""The edge-to-cloud channel: KServe V2 gRPC server and client, routing policy, MQTT plumbing."""
