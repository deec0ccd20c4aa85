"""A broker SIGKILLed before it saved: the agent's hold sends again what the broker forgot.

Mosquitto acknowledges a QoS 1 message once it is in memory and writes its queues to disk every
``autosave_interval``. Here the interval is an hour, so everything published after the last clean
restart lives only in memory when the broker is killed. With ``hold_acked_s`` the agent sends it
again after reconnecting and the offline subscriber's persistent session gets every message; with
``hold_acked_s = 0`` (the control) they are gone, which shows the test can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.outbox import Outbox, OutMessage
from edge_agent.pipeline import Identity
from edge_agent.sender import Sender
from edge_agent.transport import MqttTransport
from shared.settings import MqttSettings
from tests.edge_helpers import Recorder
from tests.services import private_mosquitto, wait_for

pytestmark = pytest.mark.integration

N = 20
TOPIC = "cropwatch/v1/farm1/dev1/detection"


@pytest.mark.parametrize("hold_s", [60.0, 0.0], ids=["held", "control-no-hold"])
def test_messages_a_killed_broker_had_not_saved_are_sent_again(tmp_path: Path, hold_s: float) -> None:
    with private_mosquitto(tmp_path / "broker", ["autosave_interval 3600"]) as broker:
        ingest = Recorder(broker.port, topic="cropwatch/v1/farm1/+/detection", client_id="ingest-1")
        wait_for(ingest.subscribed.is_set, 10, what="the subscriber's session")
        ingest.close()
        broker.restart()  # a clean stop saves the subscriber's session, nothing else after it

        box = Outbox(tmp_path / "outbox.db", budget_bytes=10**9)
        sender: Sender | None = None

        def connected(session_present: bool) -> None:
            if sender is not None:
                sender.on_connected()

        settings = MqttSettings(host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5)
        transport = MqttTransport(settings, "cw-farm1-dev1", on_connected=connected)
        sender = Sender(box, transport, Identity("farm1", "dev1"), hold_acked_s=hold_s)
        sender.start()
        transport.start()
        try:
            box.add([OutMessage(f"{i:026d}", "detection", TOPIC, b'{"n": %d}' % i) for i in range(N)])
            wait_for(lambda: box.counters().get("sent") == N, 10, what="every PUBACK")

            assert broker.proc is not None
            broker.proc.kill()  # no save: the N queued messages were only in memory
            broker.proc.wait()
            broker.proc = None
            broker.start()
            if hold_s:
                wait_for(lambda: box.counters().get("resent_after_reconnect") == N, 15, what="held rows sent again")
            # A last message: the subscriber's session delivers in order, so once it is in, all is in.
            box.add([OutMessage(f"{N:026d}", "detection", TOPIC, b'{"n": %d}' % N)])
            wait_for(lambda: box.stats()["depth"] == 0 and sender.inflight() == 0, 15, what="the marker sent")

            ingest = Recorder(broker.port, topic="cropwatch/v1/farm1/+/detection", client_id="ingest-1")
            wait_for(lambda: any(p == b'{"n": %d}' % N for _, p, _ in ingest.messages), 15, what="the marker")
            got = {p for _, p, _ in ingest.messages}
            ingest.close()
        finally:
            sender.stop()
            transport.stop()
            box.close()
    before_kill = {b'{"n": %d}' % i for i in range(N)}
    if hold_s:
        assert before_kill <= got
    else:
        assert not before_kill & got  # Mosquitto's limit, which the hold closes
