"""Starts the query service: `python -m query`. Configuration comes from the environment."""

from query.server import main

raise SystemExit(main())
