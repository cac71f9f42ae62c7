"""The garbage collector of a serving process: long-lived state, short-lived requests.

CPython's cycle collector stops the whole process while it runs. With its defaults, full
collections came every few seconds in a loaded gateway, 25-100 ms each and growing with the
heap, and each one traversed every object of the process, the imported modules' tens of
thousands included. They made the tail of the send latency (bench/README.md, "The
collector's pauses").

Rules:
- ``settle()`` is called once per serving process (``kosmo gateway``, each of its workers,
  ``kosmo up``) after its modules are imported and before it serves. It runs a full
  collection, then ``gc.freeze()``, so that what exists then (modules, classes, functions: the
  bulk of the heap) is never traversed again. Such objects are still freed by reference
  counting; only a cycle among them that forms later would stay, and the collection just
  before the freeze has freed every cycle of the start.
- ``THRESHOLDS`` replace CPython's (700, 10, 10). The 100 makes full collections rare. The
  5,000 for the young generation measured no different from 700 (bench/README.md). Cyclic
  garbage still goes, just later.
- Nothing else calls ``gc``: tests and library use leave the interpreter's settings alone.
"""

from __future__ import annotations

import gc

THRESHOLDS = (5_000, 20, 100)


def settle() -> None:
    """Collect once, freeze what is left, and set ``THRESHOLDS``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
