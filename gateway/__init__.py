"""The farm gateway: a local Mosquitto bridged to the cloud, the farm's own ingest and monitor."""
