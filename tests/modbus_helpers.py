"""Helpers for the Modbus tests: a serial line between two pseudo-terminals, in pure Python.

RS-485 without hardware: two pty pairs and a thread copying bytes between their master ends (what
``socat pty,raw pty,raw`` does), so pymodbus's serial server opens one slave end and the reader the
other, each through pyserial as on a real port.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import threading
import tty
from collections.abc import Iterator

import pytest


def require_modbus_extra() -> None:
    """Skip without pymodbus and pyserial (the modbus extra), except under CI=true, where it must be installed."""
    missing = [name for name in ("pymodbus", "serial") if importlib.util.find_spec(name) is None]
    if not missing:
        return
    reason = f"the Modbus tests need the modbus extra ({', '.join(missing)} missing): pip install cropwatch[modbus]"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason, allow_module_level=True)


@contextlib.contextmanager
def serial_line() -> Iterator[tuple[str, str]]:
    """Yields (server port, client port): two tty paths joined like a null-modem cable."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (s1, s2):
        tty.setraw(fd)
    stop = threading.Event()

    def relay() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([m1, m2], [], [], 0.1)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the other end closed for a moment (a port reopened)
                    continue
                os.write(m2 if fd == m1 else m1, data)

    thread = threading.Thread(target=relay, name="pty-relay", daemon=True)
    thread.start()
    try:
        yield os.ttyname(s1), os.ttyname(s2)
    finally:
        stop.set()
        thread.join(5)
        for fd in (m1, s1, m2, s2):
            os.close(fd)
