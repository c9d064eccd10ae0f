"""The ingest service: see services/ingest/server.py for how it is wired."""
