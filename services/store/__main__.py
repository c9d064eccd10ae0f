"""Starts the store service: `python -m store`. Configuration comes from the environment."""

from store.server import main

raise SystemExit(main())
