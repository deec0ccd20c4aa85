"""Fleet operations shared by the trainer, the monitor and the CLI.

The model registry (``registry``, ``registry_server``, ``registry_cli``), rollout publishing and its
history (``rollout``, ``history``, ``mqtt_publish``: the one paho importer), the monitor's desired
rows and rollout table (``desired``), shadow scoring (``shadow``), retraining lineage (``lineage``)
and the labelled-sample export the retrainer reads (``labels``). ``database`` opens the monitor
database for them.

Imports only ``shared``, SQLAlchemy, paho (``mqtt_publish``), the standard library and the monitor's
database layer ``farm_monitor.db``: never the trainer, the monitor app or ingest.
"""
