"""The `eventpipe` command-line tool: the user's handle on the stack and the pipeline."""
