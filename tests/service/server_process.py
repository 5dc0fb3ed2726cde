"""A service running as a real uvicorn process on a free local port, for the end-to-end tests."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 120
REQUEST_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30


@dataclass
class Server:
    """A running `chextriev serve` process and where it listens and logs."""

    process: subprocess.Popen
    base_url: str
    log_path: Path

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in time; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        return self.process.returncode

    def log_lines(self) -> list[dict]:
        """The JSON log lines the server wrote."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(server: Server, client: httpx.Client) -> dict:
    """Poll /readyz until it answers 200 (the readiness body); fails if the server exits or is not ready in time."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log_path.read_text()
        try:
            response = client.get("/readyz")
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"not ready after {START_TIMEOUT_SECONDS} s:\n{server.log_path.read_text()}")
