"""The Cropwatch farm monitor: ingest (MQTT to database) and the Streamlit app (database to people)."""
