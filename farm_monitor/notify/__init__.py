"""``cropwatch notify``: alerts in the database to people, through Apprise, once per episode and subscriber.

See docs/notifications.md. ``policy`` holds the pure rules (matching, quiet hours, backoff),
``ledger`` the delivery table's claims, ``channels`` Apprise, ``message`` the text and thumbnail,
``service`` the loop (with ``periodic_tasks``, where the farm report plugs in).
"""
