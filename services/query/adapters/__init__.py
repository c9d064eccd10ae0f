"""Adapters of the query service to Kafka, Bigtable, Spark or the cache."""
