"""Starts the ingest service: `python -m ingest`. Configuration comes from the environment."""

from ingest.server import main

raise SystemExit(main())
