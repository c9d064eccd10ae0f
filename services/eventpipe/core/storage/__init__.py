"""The Bigtable storage model, written once: every reader and writer imports it.

- ``keys``: every row key, key range and key parser (salt, reversed times, prefixes).
- ``rows``: the one row shape (``Cells``, ``EventRow``), the one flattener of client rows,
  and the row codecs (events, dimension versions, the idempotency claim).
- ``attributes``: the one attribute-kind table (oneof field <-> column family <-> Spark type
  <-> Python type) and the cell codecs.
- ``granularity``: the one metric granularity type (proto enum, "hour"/"day", key letter,
  bucket width).
- ``tables``: the tables of every service (the pipeline's and enrich's state tables), their
  families and GC rules.
- ``times``: Timestamp <-> microseconds and Bigtable cell times.
- ``erasures``: the entity-erasure tombstone and audit record, and the dimension-record
  tombstone version (``m:deleted``), with their codecs.

See docs/schema.md for the layout and the reasons behind it.
"""
