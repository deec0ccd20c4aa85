"""Metered and solar uplinks: what to send, when, and how much (docs/uplink.md "Byte budget, windows and power").

``settings`` is the ``[uplink]`` config section; ``budget`` ranks messages by their value to the
farmer and keeps the day's and month's bytes; ``windows`` says when the link may be used;
``gate`` puts the two together for the outbox; ``aggregate`` folds telemetry per interval;
``status`` decides when a status is worth its bytes; ``power`` stretches capture intervals on a
low battery.
"""
