"""The bridge daemon: it runs next to a Meshtastic radio and carries messages between the MQTT
broker (docs/mqtt.md) and the mesh.

Modules, each opening with its rules:
``cli`` (the ``kosmo bridge`` entry points) and ``config`` (settings); ``daemon`` (supervision,
intake, outbox, retained state); ``sender`` (queue -> radio, results -> reports, the
at-most-once rule); ``radio`` (the meshtastic library, driven from Trio); ``store`` (SQLite
queue and outbox); pure parts: ``tracking`` (what routing results mean), ``pacing`` (when the
next text may go), ``airtime`` (LoRa time on air, duty-cycle rules), ``timing`` (radio time,
wake-ups). ``sim`` is a simulated radio for tests and demos. The MQTT topics and payloads
are ``kosmo.wire``, shared with the gateway.
"""
