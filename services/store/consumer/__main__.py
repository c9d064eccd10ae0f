"""Runs only the consumer daemon: `python -m store.consumer`. Configuration from the env."""

from store.server import consumer_main

raise SystemExit(consumer_main())
