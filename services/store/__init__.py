"""The store service: see services/store/server.py for how it is wired."""
