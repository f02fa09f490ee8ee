"""What the benchmarks share: a free local port and the real server as a subprocess (not a benchmark).

:class:`Server` starts ``python -m server serve …`` (or any command) in its own session, so
Ctrl-C reaches only the benchmark, which then stops gunicorn's master and workers in order; it
waits for ``/healthz`` to answer 200 and shows the tail of the server's log when it does not.
Imported by bench/rest.py, bench/cache.py (through rest), bench/cds.py and bench/load.py, which
run as scripts: bench/ is on ``sys.path`` as the script's folder.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["HOST", "ROOT", "Server", "free_port", "serve_argv"]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def serve_argv(port: int, workers: int, threads: int | None = None) -> list[str]:
    """``python -m server serve`` on ``HOST:port`` under gunicorn with ``workers`` (and ``threads``)."""
    argv = [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    return argv if threads is None else [*argv, "--threads", str(threads)]


class Server:
    """A server subprocess in its own session, so Ctrl-C reaches only us and we stop it in order."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{self.log_tail()}")
            conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
            try:
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
            except OSError as exc:
                last = f"{type(exc).__name__}"
            finally:
                conn.close()
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} server not healthy after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: gunicorn's master and its workers
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
