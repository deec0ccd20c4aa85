"""Prometheus text metrics and a health endpoint for the ingest service (stdlib only)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters, gauges and one histogram; updated under a lock, rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._hist_counts = [0] * (len(BATCH_BUCKETS) + 1)
        self._hist_sum = 0.0
        self._hist_n = 0
        self.started = time.time()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self.gauges[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            return self.counters.get(key, self.gauges.get(key, 0.0))

    def total(self, name: str) -> float:
        with self._lock:
            return sum(v for (n, _), v in self.counters.items() if n == name)

    def observe_batch(self, seconds: float) -> None:
        with self._lock:
            self._hist_sum += seconds
            self._hist_n += 1
            for i, bound in enumerate(BATCH_BUCKETS):
                if seconds <= bound:
                    self._hist_counts[i] += 1
                    break
            else:
                self._hist_counts[-1] += 1

    def render(self) -> str:
        def fmt(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
            if labels:
                inner = ",".join(f'{k}="{v}"' for k, v in labels)
                return f"{name}{{{inner}}} {value:g}"
            return f"{name} {value:g}"

        lines: list[str] = []
        with self._lock:
            seen: set[str] = set()
            for (name, labels), value in sorted(self.counters.items()):
                if name not in seen:
                    lines.append(f"# TYPE {name} counter")
                    seen.add(name)
                lines.append(fmt(name, labels, value))
            for (name, labels), value in sorted(self.gauges.items()):
                if name not in seen:
                    lines.append(f"# TYPE {name} gauge")
                    seen.add(name)
                lines.append(fmt(name, labels, value))
            h = "cropwatch_ingest_batch_seconds"
            lines.append(f"# TYPE {h} histogram")
            cumulative = 0
            for bound, count in zip(BATCH_BUCKETS, self._hist_counts, strict=False):
                cumulative += count
                lines.append(f'{h}_bucket{{le="{bound}"}} {cumulative}')
            lines.append(f'{h}_bucket{{le="+Inf"}} {self._hist_n}')
            lines.append(f"{h}_sum {self._hist_sum:g}")
            lines.append(f"{h}_count {self._hist_n}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (JSON, 503 when unhealthy) on a thread."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], dict[str, Any]]) -> None:
        metrics_ref, health_ref = metrics, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    if self.path.split("?")[0] == "/metrics":
                        body = metrics_ref.render().encode()
                        self._reply(200, body, "text/plain; version=0.0.4")
                    elif self.path.split("?")[0] in ("/healthz", "/health"):
                        report = health_ref()
                        self._reply(200 if report.get("ok") else 503, json.dumps(report).encode(), "application/json")
                    else:
                        self._reply(404, b"not found: use /metrics or /healthz\n", "text/plain")
                except Exception:
                    logger.exception("metrics request %s failed", self.path)
                    self._reply(500, b"internal error\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("metrics http: %s", format % args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics, health on /healthz", *self.server.server_address[:2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
