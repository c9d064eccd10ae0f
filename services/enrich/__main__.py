"""Starts the enrich service: `python -m enrich`. Configuration comes from the environment."""

from enrich.server import main

raise SystemExit(main())
