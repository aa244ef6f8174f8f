"""The chaos soak of issue 9 (``make soak``): see soak/README.md."""
