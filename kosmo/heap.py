"""The garbage collector of a serving process: long-lived state, short-lived requests.

CPython's cycle collector stops the whole process while it runs, and with its defaults it ran
often and long in the gateway: a request's objects live for milliseconds, longer than the
young generation's 700 allocations, so they were promoted and soon triggered full
collections, each of which traversed every object of the process (the imported modules' tens
of thousands included). Measured at 200 sends/s: a full collection every few seconds, 25-100
ms each, growing with the heap; they made the tail of the send latency (bench/README.md).

Rules:
- ``settle()`` is called once per serving process (``kosmo gateway``, each of its workers,
  ``kosmo up``) after its modules are imported and before it serves: a full collection, then
  ``gc.freeze()``, so that what exists then (modules, classes, functions: the bulk of the
  heap) is never traversed again. Such objects are still freed by reference counting; only a
  cycle among them would stay, and at start-up there is none worth a pause.
- ``THRESHOLDS`` replace CPython's (700, 10, 10): a young generation of 5,000 allocations, so
  that most of a request's objects die before a collection would promote them, and fewer
  middle and full collections. Cyclic garbage still goes, just later.
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
