"""The serving process's collector settings (kosmo.heap), checked in a process of their own:
``settle`` changes the interpreter's global state, which this test process must keep."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
import actors.gateway  # what a gateway process has imported when it settles
from kosmo import heap
before = len(gc.get_objects())
heap.settle()
print(json.dumps({"before": before, "after": len(gc.get_objects()),
                  "frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold()}))
"""


def test_settle_leaves_the_imported_heap_out_of_later_collections() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60)
    seen = json.loads(out.stdout)
    # What a collection traverses: a small part of what it traversed before.
    assert seen["before"] > 20_000
    assert seen["after"] < seen["before"] / 20
    assert seen["frozen"] > seen["before"] / 2
    assert tuple(seen["thresholds"]) == (5_000, 20, 100)

