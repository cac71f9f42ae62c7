"""A simulated Meshtastic radio that the real meshtastic library and CLI connect to over TCP.

``radio`` is the device as a sans-IO state machine; ``server`` serves it on TCP with Trio;
``cli`` is the ``sim-radio`` command; ``air`` holds its counters and its air log. See each
module's header for its rules.
"""

from bridge.sim.air import AirLog, AirRecord, SimStats
from bridge.sim.config import Reach, SimConfig, SimNode, make_nodes
from bridge.sim.radio import SimRadio
from bridge.sim.server import SimRadioServer, serve_radio, serve_sim_radio

__all__ = [
    "AirLog", "AirRecord", "Reach", "SimConfig", "SimNode", "SimRadio", "SimRadioServer",
    "SimStats", "make_nodes", "serve_radio", "serve_sim_radio",
]
