"""Moved to ``eventpipe.core.waiting`` (the services' runtime must not import the stack).

Kept as a re-export only for the enrich tests that still import it from here; new code imports
``eventpipe.core.waiting``.
"""

from eventpipe.core.waiting import DeadlineExceeded, wait_until

__all__ = ["DeadlineExceeded", "wait_until"]
