"""``--help`` and bad settings on every command (issue 9, item 9).

Each command runs as a subprocess with ``REDIS_URL`` pointing at a socket this test listens on
and never answers: any connection attempt is queued there and detected. ``--help`` must print the
usage and the environment variables and exit 0; a bad value must exit 2 with one line on stderr
naming the variable. Both without connecting, and without serving (a server would not exit
within the timeout). Every port a command could listen on is a free loopback port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30

#: command (after ``python -m``) → a variable only that command's help lists.
COMMANDS = {
    "producer": "MAX_BODY_BYTES",
    "consumer": "BLOCK_MS",
    "reclaimer": "RECLAIM_LIMIT",
    "autoscaler": "LOCAL_MAX_CONSUMERS",
    "streamcore.cli up": "ORDERSTREAM_DATA",
}


@pytest.fixture
def trap():
    """A listening socket that never answers: the Redis URL of every run. ``connected()`` tells
    whether anything tried to connect (a completed handshake waits in the accept queue)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.setblocking(False)

        class Trap:
            url = f"redis://127.0.0.1:{s.getsockname()[1]}/0"

            @staticmethod
            def connected() -> bool:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    return False
                conn.close()
                return True

        yield Trap


def run(command: str, args: list[str], trap, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = dict(os.environ)
    for name in ("REDIS_URL", "PORT", "CONCURRENCY", "BLOCK_MS"):
        base.pop(name, None)
    base.update(
        REDIS_URL=trap.url, REDIS_SOCKET_TIMEOUT_S="2", HOST="127.0.0.1", HEALTH_HOST="127.0.0.1", PORT=str(free_port()),
        HEALTH_PORT=str(free_port()), METRICS_PORT=str(free_port()), ORDERSTREAM_DATA=str(tmp_path / "data"),
        LOCAL_REDIS_PORT=str(free_port()), CONSUMER_HEALTH_PORT="0", KUBECONFIG=str(tmp_path / "no-kubeconfig"),
    )
    base.update(env)
    return subprocess.run([sys.executable, "-m", *command.split(), *args], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_prints_usage_and_variables_and_exits_0_without_connecting(command, trap, tmp_path):
    proc = run(command, ["--help"], trap, tmp_path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.startswith("usage: ")
    assert "environment variables" in proc.stdout
    assert COMMANDS[command] in proc.stdout
    if command != "streamcore.cli up":
        assert "REDIS_URL (default: redis://localhost:6379/0)" in proc.stdout
    assert not trap.connected()
    assert not (tmp_path / "data").exists()  # `up` started no Redis


def test_orderstream_help_lists_its_commands(trap, tmp_path):
    proc = run("streamcore.cli", ["--help"], trap, tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("usage: orderstream") and " up " in proc.stdout


@pytest.mark.parametrize(("command", "env", "named"), [
    ("producer", {"PORT": "abc"}, "PORT"),
    ("producer", {"MAX_BODY_BYTES": "10"}, "MAX_BODY_BYTES"),
    ("producer", {"REDIS_URL": "http://user:secret@example.com"}, "REDIS_URL"),
    ("consumer", {"CONCURRENCY": "0"}, "CONCURRENCY"),
    ("consumer", {"BLOCK_MS": "20000", "REDIS_SOCKET_TIMEOUT_S": "15"}, "BLOCK_MS"),
    ("consumer", {"ABANDONED_AFTER_MS": "0"}, "ABANDONED_AFTER_MS"),
    ("consumer", {"HANDLER": "no_such_module:apply"}, "HANDLER"),
    ("consumer", {"HANDLER": "consumer.handler:no_such_function"}, "HANDLER"),
    ("reclaimer", {"HANDLER": "no_such_module:apply"}, "HANDLER"),
    ("reclaimer", {"RECLAIM_LIMIT": "many"}, "RECLAIM_LIMIT"),
    ("reclaimer", {"CONCURRENCY": "0"}, "CONCURRENCY"),
    ("autoscaler", {"METRICS_PORT": "-1"}, "METRICS_PORT"),
    ("autoscaler", {"LOCAL_MIN_CONSUMERS": "5", "LOCAL_MAX_CONSUMERS": "2"}, "LOCAL_MIN_CONSUMERS"),
    ("autoscaler", {"NAMESPACES": "not json"}, "NAMESPACES"),
    ("streamcore.cli up", {"PORT": "abc"}, "PORT"),
    ("streamcore.cli up", {"CONSUMERS": "two"}, "CONSUMERS"),
])
def test_bad_value_exits_2_with_one_line_naming_it_before_connecting(command, env, named, trap, tmp_path):
    args = ["--local"] if command == "autoscaler" else []
    proc = run(command, args, trap, tmp_path, **env)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert named in lines[0] and "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr  # a Redis URL may hold a password: never echoed
    assert proc.stdout == ""
    assert not trap.connected()
    assert not (tmp_path / "data").exists()


def test_up_stops_everything_with_exit_2_when_a_component_has_a_bad_setting(tmp_path):
    """CONCURRENCY=0 is read by the consumers and the reclaimer: they exit 2, and ``up`` stops the
    stack with exit 2 instead of restarting them forever."""
    env = dict(os.environ, CONCURRENCY="0", PORT=str(free_port()), HOST="127.0.0.1", PYTHONUNBUFFERED="1")
    env.pop("REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "streamcore.cli", "up", "--fixed", "--consumers", "1", "--redis-port", str(free_port()),
         "--data-dir", str(tmp_path), "--consumer-health-port", "0", "--grace", "10"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "invalid setting CONCURRENCY='0'" in proc.stdout
    assert "not restarting it, stopping everything" in proc.stdout
    assert "restarting in" not in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_burst_against_no_producer_reports_the_failed_batches_without_a_traceback(tmp_path):
    """``orderstream burst`` when nothing listens: exit 1, one ``failed:`` line per batch (up to
    5) naming the error, the accepted count (0), and the --ids file written (empty)."""
    ids = tmp_path / "ids.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "streamcore.cli", "burst", "--url", f"http://127.0.0.1:{free_port()}", "--orders", "6",
         "--batch", "3", "--ids", str(ids)],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("accepted 0 of 6 orders"), proc.stdout
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed: batch from ")]
    assert len(failed) == 2 and all("no answer after 5 attempts (ClientConnectorError" in f for f in failed), proc.stderr
    assert ids.read_text() == ""


def test_burst_with_a_url_that_is_not_http_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamcore.cli", "burst", "--url", "127.0.0.1:3000", "--orders", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["orderstream burst: --url must start with http:// or https://, got "
                                                "'127.0.0.1:3000'"]
