"""Seconds from starting a server command until its GET /readyz answers 200.

Usage: python scripts/time_to_ready.py --url http://127.0.0.1:8123 -- chextriev demo --port 8123
The command is stopped (SIGINT, then SIGKILL) once the service is ready or the timeout passes.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def time_to_ready(command: list[str], url: str, timeout: float) -> float:
    """Start `command`, poll `url`/readyz every 50 ms; return the seconds until it answered 200."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise SystemExit(f"the command exited with {process.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise SystemExit(f"not ready within {timeout} s")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    seconds = [round(time_to_ready(command, args.url, args.timeout), 2) for _ in range(args.repeat)]
    print(json.dumps({"command": command, "seconds": seconds, "best": min(seconds)}))


if __name__ == "__main__":
    sys.exit(main())
