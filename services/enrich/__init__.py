"""The enrich service: see services/enrich/server.py for how it is wired."""
