"""Adapters of the ingest service to Kafka, Bigtable, Spark or the cache."""
