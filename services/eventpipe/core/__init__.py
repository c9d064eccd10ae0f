"""Pieces every service shares: config, logging, metrics, errors, server bootstrap, clients."""
