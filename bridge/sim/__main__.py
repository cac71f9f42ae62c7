"""``python -m bridge.sim``: the ``sim-radio`` command without the ``kosmo`` front."""

import argparse
import logging
import sys

from bridge.sim.cli import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m bridge.sim",
                                 description="A simulated Meshtastic radio on TCP.")
add_arguments(parser)
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
sys.exit(main(parser.parse_args()))
