"""Start `specqd serve` as a real subprocess on 127.0.0.1 and a free port, and stop it by its PID.

Tests and the load benchmark (scripts/serve_bench.py) run the server as clients meet it: a separate process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import urllib.error
import urllib.request

START_TIMEOUT = 180  # seconds: compiling the levels and measuring their step times


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(export: Path, *options: str, log: Path):
    port = free_port()
    command = [sys.executable, "-m", "specqd.runtime.cli", "serve", str(export), "--host", "127.0.0.1",
               "--port", str(port), *options]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # Ray's proxy holds it while replicas load
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /health in {START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.3)
        yield Server(url, process.pid)
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


class Server:
    def __init__(self, url: str, pid: int):
        self.url = url
        self.pid = pid

    def client(self, api_key: str = "unused"):
        """The official openai client for this server (openai is a dev dependency, not the server's)."""
        import openai
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels` (0 when absent)."""
        total = 0.0
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total
