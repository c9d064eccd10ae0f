"""Adapters of the enrich service to Kafka, Bigtable, Spark or the cache."""
