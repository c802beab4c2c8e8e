"""The device side: MQTT codec, built-in transport, broker client, topics, device channel."""
