"""The demo's child processes: every component runs as ``python -m cropwatch ...`` from this tree."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)


def cropwatch_command(*args: str) -> list[str]:
    """The command line of one ``cropwatch`` subcommand, run by this interpreter (installed or not)."""
    return [sys.executable, "-m", "cropwatch", *args]


@dataclass
class Stack:
    """The processes the demo started, stopped in reverse order."""

    logs: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            cropwatch_command(*args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the children in order
        )
        self.procs.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs if proc.poll() is not None]

    def raise_if_dead(self) -> None:
        dead = self.dead()
        if dead:
            raise RuntimeError(f"{', '.join(dead)} stopped; see {self.logs}/{dead[0]}.log")

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        stack.raise_if_dead()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}; logs in {stack.logs}")
        time.sleep(0.1)


def run_step(console: Console, title: str, args: list[str]) -> None:
    """A one-off command whose progress bars the user should see."""
    console.rule(title)
    started = time.monotonic()
    result = subprocess.run(cropwatch_command(*args), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"'cropwatch {' '.join(args)}' failed with exit code {result.returncode}")
    console.print(f"[green]done[/green] in {time.monotonic() - started:.0f} s")


# Steps running in the background build, so stopping the demo can stop them too.
_background_steps: list[subprocess.Popen[bytes]] = []


def quiet_step(log: Path, args: list[str]) -> None:
    """A one-off command run beside the live farm: its output goes to a log, not over the live table."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cropwatch_command(*args), stdout=fh, stderr=subprocess.STDOUT)
        _background_steps.append(proc)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"'cropwatch {' '.join(args)}' failed with exit code {code}; see {log}")


def stop_background_steps() -> None:
    for proc in _background_steps:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Background:
    """One function on a thread; the demo's loop polls it, so the farm keeps running meanwhile."""

    def __init__(self, target: Callable[[], Path], name: str) -> None:
        self.result: Path | None = None
        self.error: Exception | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._target()
        except Exception as exc:  # reported by the loop; the demo goes on without a yield model
            self.error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()
