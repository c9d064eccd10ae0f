"""The Spark engine of enrichment, by concern: session, transforms, layout, batch (the engine
class in ``enrich.adapters.spark_engine``) and streaming."""
