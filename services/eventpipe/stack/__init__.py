"""The local stack: installing the real components, starting and stopping them as processes.

``install`` fetches Kafka, the Bigtable emulator and the CLI tools into a cache outside the
repo; ``components`` starts one component each; ``stack`` wires them into ``eventpipe stack``.
"""
