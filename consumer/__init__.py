"""Consumer-group worker: reads orders from the stream, handles each at least once, acks after success."""
