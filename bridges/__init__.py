"""Bridges: bring readings from other networks' brokers onto the Cropwatch contract.

A bridge is a gateway-side daemon that owns no database and no model: it subscribes to another
system's MQTT (a LoRaWAN network server), converts what arrives to Cropwatch messages and publishes
them under each mapped device's own identity. It imports only the contract (``shared``).
"""
