"""EventPipe's shared library: bootstrap, config, logging, metrics, errors, Kafka and Bigtable
setup, row keys, the local stack and the `eventpipe` command-line tool.

Sub-packages named ``<service>/v1`` (and ``common/v1``) are generated from ``protos/`` by
``make protos`` and are not committed.
"""
