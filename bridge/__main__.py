"""``python -m bridge``: the same as ``kosmo bridge`` (same flags, environment and signals)."""

import sys

from kosmo.cli import main

main(["bridge", *sys.argv[1:]])
