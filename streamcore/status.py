"""``orderstream status``: the stack's state at a glance in a terminal, from a running producer.

It reads the producer's HTTP API (``GET /stream/info`` and ``GET /dead-letters``), the same
answers the web console and any script get, so it works wherever the API is reachable (a local
``make up``, a ``kubectl port-forward``, an ingress) and needs no Redis credentials. It prints
the stream, every consumer group (state, lag, pending, age of the oldest pending order,
consumers), each consumer (pending entries, idle time) and the oldest dead letters with their
reason; ``--watch`` redraws it every few seconds until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
from typing import Any, TextIO

import aiohttp

#: How many dead letters the overview lists by default.
DEFAULT_DEAD_LETTERS = 5


class StatusError(Exception):
    """The producer could not be asked, or answered something else than its API's JSON."""


async def fetch(url: str, dead_letters: int = DEFAULT_DEAD_LETTERS, timeout_s: float = 10.0
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(GET /stream/info, GET /dead-letters?limit=N)`` of the producer at ``url`` (its base URL).

    Raises:
        StatusError: connection refused or timed out, a non-200 answer, or a body that is not JSON.
    """
    base = url.rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            info = await _get(http, f"{base}/stream/info")
            dead = await _get(http, f"{base}/dead-letters?limit={max(dead_letters, 1)}")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise StatusError(f"cannot reach the producer at {base}: {type(exc).__name__}: {exc}") from None
    return info, dead


async def _get(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise StatusError(f"GET {url} answered {resp.status}: {text[:300]}")
        try:
            return json.loads(text)
        except ValueError:
            raise StatusError(f"GET {url} answered something that is not JSON: {text[:300]}") from None


def duration(ms: int | None) -> str:
    """``ms`` milliseconds for people: ``850ms``, ``4.2s``, ``3m05s``, ``2h10m``, ``3d4h``; ``-`` for None."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h}h"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(value: object) -> str:
    """``value`` as text safe for a terminal: control characters (escape sequences, carriage
    returns, bells: data written by anyone into a consumer name or a dead letter) are shown as
    ``\\xNN`` instead of being acted on."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _table(rows: list[list[str]], indent: str = "") -> list[str]:
    rows = [[shown(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _name(item: dict[str, Any], key: str = "name") -> str:
    value = item.get(key)
    return value if value is not None else f"base64:{item.get(key + 'Base64', '')}"


def render(info: dict[str, Any], dead: dict[str, Any], now: dt.datetime | None = None) -> str:
    """The overview as text, from the two API answers (shapes: ``producer.openapi``)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    out = [f"orderstream status at {now.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    info = {k: shown(v) if isinstance(v, str) else v for k, v in info.items()}
    if not info.get("exists"):
        out.append(f"stream {info['stream']}: does not exist yet (no order accepted)")
    else:
        out.append(f"stream {info['stream']}: {info['length']} entries, last {info.get('lastGeneratedId') or '-'}, "
                   f"lost {info.get('lostEntries', 0)}")
    dl = info.get("deadLetters") or {}
    out.append(f"dead letters ({dl.get('stream', dead.get('stream'))}): {dl.get('length', dead.get('length', 0))}")
    out.append(f"configured group {info['group']}: {info['groupState']}")
    out.append("")
    if info.get("groups"):
        rows = [["GROUP", "STATE", "LAG", "PENDING", "OLDEST PENDING", "CONSUMERS"]]
        for g in info["groups"]:
            rows.append([_name(g), "paused" if g.get("paused") else g["state"],
                         "?" if g.get("lag") is None else str(g["lag"]), str(g["pending"]),
                         duration(g.get("oldestPendingAgeMs")), str(g["consumerCount"])])
        out += _table(rows)
        for g in info["groups"]:
            if not g.get("consumers"):
                continue
            out.append("")
            rows = [[f"CONSUMERS OF {_name(g)}", "PENDING", "IDLE", "INACTIVE"]]
            for c in g["consumers"]:
                rows.append([_name(c), str(c["pending"]), duration(c.get("idleMs")), duration(c.get("inactiveMs"))])
            out += _table(rows, "  ")
    else:
        out.append("no consumer group on the stream")
    letters = dead.get("deadLetters") or []
    if letters:
        out.append("")
        total = int(dead.get("length", len(letters)))
        rows = [[f"DEAD LETTERS (oldest {len(letters)} of {total})", "ORDER", "REASON", "DELIVERIES", "ERROR"]]
        for d in letters:
            error = (d.get("lastError") or "").replace("\n", " ")
            rows.append([d["dlqId"], str(d.get("orderId") or "-"), str(d.get("reason") or "-"),
                         str(d.get("deliveries") if d.get("deliveries") is not None else "-"),
                         error[:60] + ("…" if len(error) > 60 else "")])
        out += _table(rows)
    return "\n".join(out) + "\n"


async def run(url: str, *, watch_s: float | None, dead_letters: int = DEFAULT_DEAD_LETTERS,
              stream: TextIO = sys.stdout) -> int:
    """Print the overview once (or every ``watch_s`` seconds until cancelled); 0, or 1 when the
    producer cannot be asked (one line on stderr; with ``--watch`` it keeps trying)."""
    while True:
        try:
            info, dead = await fetch(url, dead_letters)
        except StatusError as exc:
            print(f"orderstream status: {exc}", file=sys.stderr)
            if watch_s is None:
                return 1
        else:
            text = render(info, dead)
            if watch_s is not None and stream.isatty():
                stream.write("\x1b[H\x1b[2J")  # home and clear, as watch(1) does
            stream.write(text if watch_s is None else text + f"\n(every {watch_s:g}s; Ctrl-C to stop)\n")
            stream.flush()
            if watch_s is None:
                return 0
        await asyncio.sleep(watch_s)
