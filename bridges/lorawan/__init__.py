"""The LoRaWAN bridge: network-server uplinks (ChirpStack v4, The Things Stack v3) to Cropwatch telemetry.

``uplink`` reads the two JSON formats, ``convert`` maps an uplink to a ``Telemetry`` message,
``transport`` is the one module that speaks MQTT, ``cli`` is ``cropwatch bridge lorawan``.
See docs/lorawan.md.
"""
