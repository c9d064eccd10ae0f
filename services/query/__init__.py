"""The query service: see services/query/server.py for how it is wired."""
