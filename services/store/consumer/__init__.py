"""The Kafka -> Bigtable consumer daemon (see daemon.py); ``python -m store.consumer``."""
