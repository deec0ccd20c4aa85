"""Ingest: MQTT v5 device messages, validated and stored exactly once in the monitor database.

The only part of ``farm_monitor`` that talks MQTT (:mod:`.transport`); it writes through the
shared database layer :mod:`farm_monitor.db` and nothing in the monitor app imports it.
"""
