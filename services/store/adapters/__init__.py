"""Adapters of the store service to Kafka, Bigtable, Spark or the cache."""
