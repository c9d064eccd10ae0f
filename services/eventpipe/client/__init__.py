"""The EventPipe Python client library (docs/client.md)."""
