"""The protobuf messages the simulated device sends, shaped as the firmware shapes them.

Rules:
- Builders only: no state, no clock (times are passed in as UNIX seconds).
- The config dump follows the firmware's order (PhoneAPI states): my_info, our node_info,
  metadata, 8 channels, config sections one per message, the other node_infos, then
  ``config_complete_id``. Module config is not sent; clients keep their defaults.
- Routing ACK/NAK packets are what ``RoutingModule::sendAckNak`` builds: portnum ROUTING_APP,
  ``request_id`` = the acknowledged packet's id, and a ``Routing`` whose ``error_reason`` is set
  explicitly, even to NONE. (An empty ``Routing`` decodes without ``errorReason``, and the
  meshtastic CLI's ACK handler indexes that key.)
- Each node's ``User`` carries a 32-byte public key (a stand-in: a hash of its number), but
  for a node whose key we lack (``SimNode.has_key``), whose ``public_key`` is empty.
- Every packet carries a ``from``: the Python library drops (and logs an ERROR for) packets
  whose ``from`` is 0, taking them for its own.
"""

from __future__ import annotations

import hashlib
from typing import Any

from meshtastic.protobuf import channel_pb2, config_pb2, mesh_pb2, portnums_pb2

from bridge.sim.config import SimConfig, SimNode
from bridge.sim.protocol import node_id

Message = Any  # generated protobuf classes are untyped
ONLY_CONFIG_NONCE = 69420  # SPECIAL_NONCE_ONLY_CONFIG: no other nodes (NODELESS_WANT_CONFIG_ID)
ONLY_NODES_NONCE = 69421  # SPECIAL_NONCE_ONLY_NODES: node_infos only
FIRMWARE_VERSION = "2.7.11.5a1b2c3"
HW_REMOTE = ("HELTEC_V3", "TBEAM", "RAK4631", "T_ECHO")
MAX_CHANNELS = 8


def config_dump(cfg: SimConfig, nonce: int, at: float) -> list[Message]:
    """The FromRadio messages answering ``want_config_id = nonce``."""
    own = [from_radio(node_info=_own_node_info(cfg, at))]
    others = [from_radio(node_info=_node_info(n, i, at)) for i, n in enumerate(cfg.nodes)]
    if nonce == ONLY_NODES_NONCE:
        return [*own, *others, from_radio(config_complete_id=nonce)]
    if nonce == ONLY_CONFIG_NONCE:
        others = []
    return [
        from_radio(my_info=mesh_pb2.MyNodeInfo(
            my_node_num=cfg.my_node_num, reboot_count=1, min_app_version=30200,
            device_id=cfg.my_node_num.to_bytes(4, "big") * 4, pio_env="native",
            nodedb_count=len(cfg.nodes) + 1)),
        *own,
        from_radio(metadata=mesh_pb2.DeviceMetadata(
            firmware_version=FIRMWARE_VERSION, device_state_version=24, hasWifi=True,
            role=config_pb2.Config.DeviceConfig.Role.CLIENT,
            hw_model=mesh_pb2.HardwareModel.PORTDUINO)),
        *(from_radio(channel=_channel(i)) for i in range(MAX_CHANNELS)),
        *(from_radio(config=c) for c in _config_sections(cfg)),
        *others,
        from_radio(config_complete_id=nonce),
    ]


def from_radio(**fields: Any) -> Message:
    return mesh_pb2.FromRadio(**fields)


def queue_status(*, res: int, free: int, maxlen: int, packet_id: int) -> Message:
    return from_radio(queueStatus=mesh_pb2.QueueStatus(
        res=res, free=free, maxlen=maxlen, mesh_packet_id=packet_id))


def routing_packet(*, packet_id: int, sender: int, to: int, request_id: int, error: int,
                   channel: int, at: float, hops_away: int | None = None,
                   hop_limit: int = 3) -> Message:
    """A ROUTING_APP packet acknowledging (error 0) or refusing ``request_id``.

    ``hops_away`` is None for packets our own node makes; set, the packet came over the air.
    """
    routing = mesh_pb2.Routing()
    routing.error_reason = error  # set even when NONE: the oneof must be present
    pkt = _packet(packet_id, sender, to, channel, at, hops_away, hop_limit)
    pkt.priority = mesh_pb2.MeshPacket.Priority.ACK
    pkt.decoded.portnum = portnums_pb2.PortNum.ROUTING_APP
    pkt.decoded.payload = routing.SerializeToString()
    pkt.decoded.request_id = request_id
    return pkt


def text_packet(*, packet_id: int, sender: int, to: int, text: str, channel: int, at: float,
                hops_away: int, hop_limit: int = 3, reply_id: int = 0) -> Message:
    """A text message heard from ``sender`` over the air."""
    pkt = _packet(packet_id, sender, to, channel, at, hops_away, hop_limit)
    pkt.want_ack = True
    pkt.decoded.portnum = portnums_pb2.PortNum.TEXT_MESSAGE_APP
    pkt.decoded.payload = text.encode()
    if reply_id:
        pkt.decoded.reply_id = reply_id
    return pkt


def client_notification(*, reply_id: int, message: str, at: float) -> Message:
    return from_radio(clientNotification=mesh_pb2.ClientNotification(
        reply_id=reply_id, time=int(at), level=mesh_pb2.LogRecord.Level.WARNING,
        message=message))


def _packet(packet_id: int, sender: int, to: int, channel: int, at: float,
            hops_away: int | None, hop_limit: int) -> Message:
    pkt = mesh_pb2.MeshPacket(id=packet_id, to=to, channel=channel, rx_time=int(at))
    setattr(pkt, "from", sender)  # "from" is a Python keyword
    if hops_away is not None:
        pkt.hop_start = hop_limit
        pkt.hop_limit = max(hop_limit - hops_away, 0)
        pkt.rx_snr = 9.5 - 4.0 * hops_away
        pkt.rx_rssi = -70 - 15 * hops_away
        pkt.transport_mechanism = mesh_pb2.MeshPacket.TransportMechanism.TRANSPORT_LORA
    return pkt


def _user(num: int, long_name: str, short_name: str, hw_model: str, *,
          has_key: bool = True) -> Message:
    """A node's User; with a stand-in 32-byte public key (a hash of its number) unless we lack
    its key, as a node database shows a node whose NodeInfo never came."""
    key = hashlib.sha256(num.to_bytes(4, "big")).digest() if has_key else b""
    return mesh_pb2.User(id=node_id(num), long_name=long_name, short_name=short_name,
                         hw_model=mesh_pb2.HardwareModel.Value(hw_model),
                         role=config_pb2.Config.DeviceConfig.Role.CLIENT, public_key=key)


def _own_node_info(cfg: SimConfig, at: float) -> Message:
    return mesh_pb2.NodeInfo(
        num=cfg.my_node_num, last_heard=int(at),
        user=_user(cfg.my_node_num, cfg.long_name, cfg.short_name, "PORTDUINO"))


def _node_info(node: SimNode, index: int, at: float) -> Message:
    info = mesh_pb2.NodeInfo(
        num=node.num, snr=9.5 - 4.0 * node.hops_away, last_heard=int(at) - 60 * (index + 1),
        user=_user(node.num, node.long_name, node.short_name, HW_REMOTE[index % len(HW_REMOTE)],
                   has_key=node.has_key))
    info.hops_away = node.hops_away  # optional field: present even when 0
    return info


def _channel(index: int) -> Message:
    if index == 0:  # the default primary channel: empty name, the default key (psk 0x01)
        return channel_pb2.Channel(index=0, role=channel_pb2.Channel.Role.PRIMARY,
                                   settings=channel_pb2.ChannelSettings(psk=b"\x01"))
    return channel_pb2.Channel(index=index, role=channel_pb2.Channel.Role.DISABLED)


def _config_sections(cfg: SimConfig) -> list[Message]:
    lora = config_pb2.Config.LoRaConfig
    sections = [config_pb2.Config(device=config_pb2.Config.DeviceConfig(
        role=config_pb2.Config.DeviceConfig.Role.CLIENT))]
    for name in ("position", "power", "network", "display"):
        section = config_pb2.Config()
        getattr(section, name).SetInParent()
        sections.append(section)
    sections.append(config_pb2.Config(lora=lora(
        use_preset=True, modem_preset=lora.ModemPreset.Value(cfg.modem_preset),
        region=lora.RegionCode.Value(cfg.region), hop_limit=cfg.hop_limit, tx_enabled=True,
        tx_power=27)))
    sections.append(config_pb2.Config(bluetooth=config_pb2.Config.BluetoothConfig(enabled=False)))
    return sections
