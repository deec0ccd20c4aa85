"""A longer uplink outage through the generated gateway bridge, with a table of what arrived where.

    PYTHONPATH=. python bench/gateway_outage.py --minutes 5 --rate 10

Same parts as tests/integration/test_gateway_bridge.py (two Mosquittos, TLS bridge from
``cropwatch gateway init``, an ingest at each end on SQLite, three agent-shaped devices on the real
outbox/sender/transport), but the devices keep producing ``--rate`` messages per second in total for
``--minutes`` with the uplink cut. Baseline: the same number of messages with the uplink up, in the
same process; the ratio is catch-up time after the cut over the baseline's delivery time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm

from farm_monitor.provision import Pki
from gateway.cli import main as gateway_main
from tests.gateway_helpers import Device, GatewayBroker, Proxy, Tap, table
from tests.integration.ingest_helpers import config, ingest_thread, stored_ids
from tests.services import free_port, private_mosquitto


def _wait(cond, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - start


def run(tmp: Path, minutes: float, rate: float) -> dict[str, object]:
    pki = Pki(tmp / "pki")
    pki.server_cert(["127.0.0.1"])
    tls_port = free_port()
    tls = [f"listener {tls_port} 127.0.0.1", f"cafile {pki.ca_cert_path}", f"certfile {tmp}/pki/server.crt",
           f"keyfile {tmp}/pki/server.key", "require_certificate true"]  # fmt: skip
    with private_mosquitto(tmp / "cloud", tls) as cloud:
        proxy = Proxy(tls_port)
        proxy.open()
        local = free_port()
        gateway_main(["init", "--farm", "north", "--cloud", f"mqtts://127.0.0.1:{proxy.port}", "--out", str(tmp / "gw"),
                      "--pki", str(tmp / "pki"), "--install-dir", str(tmp / "gw"), "--state-dir", str(tmp / "st"),
                      "--local-port", str(local), "--device-port", "0", "--retry-max-s", "2"])  # fmt: skip
        (tmp / "st" / "mosquitto").mkdir(parents=True)
        gw = GatewayBroker(tmp / "gw" / "mosquitto.conf", local, tmp / "gw.log")
        gw.start()
        tap = Tap(cloud.port, "north")
        gw_url, cloud_url = f"sqlite:///{tmp}/gw.db", f"sqlite:///{tmp}/cloud.db"
        devices = [Device("north", f"dev-{i}", tmp, gw.port) for i in range(3)]
        try:
            with ingest_thread(config(gw_url, gw)), ingest_thread(config(cloud_url, cloud)):
                for d in devices:
                    d.start()
                n = max(3, int(rate * minutes * 60))
                per_tick = max(1, round(rate / 3))
                # Baseline: n messages with the uplink up.
                for d in devices:
                    d.produce(n // 3)
                sent = lambda: {m for d in devices for m in d.sent}  # noqa: E731
                baseline_s = _wait(lambda: set(stored_ids(cloud_url)) >= sent(), 600)
                proxy.cut()
                cut_start = time.monotonic()
                with tqdm(total=n, desc="produced during the cut", unit="msg") as bar:
                    while time.monotonic() - cut_start < minutes * 60:
                        for d in devices:
                            d.produce(per_tick)
                        bar.update(per_tick * 3)
                        time.sleep(1.0)
                cut_s = time.monotonic() - cut_start
                _wait(lambda: set(stored_ids(gw_url)) >= sent(), 600)
                before = set(stored_ids(cloud_url))
                proxy.open()
                catch_up_s = _wait(lambda: set(stored_ids(cloud_url)) >= sent(), 1800)
        finally:
            for d in devices:
                d.stop()
            tap.stop()
            gw.stop()
            proxy.cut()
        all_sent, gw_ids, cloud_ids = sent(), stored_ids(gw_url), stored_ids(cloud_url)
        return {
            "outage": f"{cut_s / 60:.1f} min", "sent": len(all_sent), "during cut": len(all_sent - before),
            "gateway DB": len(set(gw_ids)), "cloud DB": len(set(cloud_ids)),
            "bridge dups": sum(c - 1 for c in tap.counts.values()), "lost": len(all_sent - set(cloud_ids)),
            "baseline s": f"{baseline_s:.1f}", "catch-up s": f"{catch_up_s:.1f}",
            "ratio": f"{catch_up_s / max(baseline_s, 1e-3):.2f}",
        }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the uplink cut")
    parser.add_argument("--rate", type=float, default=6.0, help="messages per second, all three devices together")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(table([run(Path(tmp), args.minutes, args.rate)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
