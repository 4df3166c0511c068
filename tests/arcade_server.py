"""Start and stop the real puzzle arcade server (``chuk-puzzles-gym``) on loopback.

Only ever as ``server-launcher chuk_puzzles_gym.server:ArcadeHandler --host
127.0.0.1 --port PORT --transport telnet`` (the package's own
``chuk-puzzles-server`` binds every interface); stopped by its PID.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

#: Why arcade tests are skipped, or None when the server can run here.
SKIP_REASON: str | None = None
LAUNCHER = Path(sys.executable).parent / "server-launcher"
if importlib.util.find_spec("chuk_puzzles_gym") is None:
    SKIP_REASON = 'chuk-puzzles-gym is not installed (pip install "laden[arcade]")'
elif not LAUNCHER.exists():
    SKIP_REASON = f"{LAUNCHER} (from chuk-protocol-server) is missing"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class ArcadeServer:
    """One arcade server process on 127.0.0.1; :meth:`restart` keeps the port."""

    def __init__(self, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            str(LAUNCHER),
            "chuk_puzzles_gym.server:ArcadeHandler",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--transport",
            "telnet",
        ]

    def start(self, timeout: float = 20.0) -> ArcadeServer:
        """Start it and wait (bounded) until the port accepts connections."""
        if self.log is not None:
            self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log_file if self._log_file is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the arcade server exited with {self.process.returncode}")
            if port_accepts(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the arcade server did not accept on port {self.port} in {timeout} s")

    def stop(self) -> None:
        """Kill the process by its PID and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ArcadeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
