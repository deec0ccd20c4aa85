"""The Cropwatch field agent: sources, inference, outbox, transport, model slots, health.

Never imports torch: a field device installs only the ``edge`` extra.
"""
