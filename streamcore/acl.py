"""The least-privilege Redis ACL user of one orderstream pipeline (issue 13).

:func:`rule` gives the ``ACL SETUSER`` rules for the producer, the consumers, the reclaimer and
the local autoscaler of one stream: the commands they send (read from every Redis call in the
code, Lua scripts included, and checked by running the integration suite as this user, see
``tests/integration/test_tls_acl.py``) and the key patterns of :class:`streamcore.keys.Keys`,
which all start with the stream name, plus the dead-letter stream. No Pub/Sub channels.

Print it for your names (``STREAM_NAME``, ``DLQ_STREAM``)::

    python -m streamcore.acl            # the rules
    python -m streamcore.acl --user orderstream   # a whole ACL SETUSER line for redis-cli

A custom ``HANDLER`` that uses Redis itself needs its own commands added
(``--handler-command INCR`` or ``rule(..., handler_commands=["incr"])``); its keys must live
under the stream name (``<stream>:...``), which the patterns already cover.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

#: Commands the stack sends, lower-case as ACL rules spell them. SCRIPT only with the
#: subcommands the script helpers use; INFO for the server check and the autoscaler;
#: HELLO/PING/SELECT at connect; WAIT for REDIS_WAIT_REPLICAS. No CLIENT: create_redis turns off
#: redis-py's CLIENT SETINFO (Redis 7.0 has no such subcommand, so a rule naming it is refused).
COMMANDS: tuple[str, ...] = (
    # streams
    "xadd", "xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "xinfo", "xgroup",
    "xrange", "xrevrange", "xlen", "xtrim", "xdel",
    # scripts (Lua runs with the caller's permissions: every command in them is listed here too)
    "evalsha", "eval", "script|load", "script|exists",
    # plain keys: idempotency records, order index, markers, trim floor, loss counters, heartbeats
    "get", "set", "del", "exists", "expire", "pexpire", "incrby", "hset", "hget", "hgetall",
    # connection and server
    "ping", "info", "hello", "select", "wait",
)

#: Characters that are special in ACL key patterns (glob-style) and escaped in key names.
_GLOB = re.compile(r"([*?\[\]\\])")


def key_pattern(name: str) -> str:
    """``name`` as an ACL key pattern that matches that key alone (``*?[]\\`` escaped)."""
    return _GLOB.sub(r"\\\1", name)


def rules(stream: str, dlq: str, *, handler_commands: Sequence[str] = ()) -> list[str]:
    """The ACL rules of the pipeline on ``stream`` with dead-letter stream ``dlq``, as separate
    arguments for ``ACL SETUSER <user> <rules...>`` (names with spaces stay one argument).

    Args:
        stream: STREAM_NAME; every key in :class:`streamcore.keys.Keys` is ``stream`` or starts
            with ``stream:``.
        dlq: DLQ_STREAM (may lie outside ``stream:``).
        handler_commands: extra commands a custom HANDLER sends (``"incr"``, ``"rpush"``...).

    Returns:
        ``["resetkeys", "resetchannels", "-@all", "+xadd", ..., "~orders", "~orders:*", ...]``;
        it sets no password and does not switch the user on (``on``, ``>password`` are yours).
    """
    extra = [c.lower() for c in handler_commands if c.lower() not in COMMANDS]
    patterns = [key_pattern(stream), key_pattern(stream) + ":*"]
    if not (dlq.startswith(stream + ":") or dlq == stream):
        patterns.append(key_pattern(dlq))
    return (["resetkeys", "resetchannels", "-@all"] + [f"+{c}" for c in (*COMMANDS, *extra)]
            + [f"~{p}" for p in patterns])


def _quoted(arg: str) -> str:
    return f'"{arg}"' if re.search(r'[\s"\']', arg) else arg


def rule(stream: str, dlq: str, *, handler_commands: Sequence[str] = ()) -> str:
    """:func:`rules` as one line for ``redis-cli`` (arguments with spaces or quotes in double
    quotes), e.g. ``resetkeys resetchannels -@all +xadd ... ~orders ~orders:*``."""
    return " ".join(_quoted(a) for a in rules(stream, dlq, handler_commands=handler_commands))


def main(argv: list[str] | None = None) -> int:
    """``python -m streamcore.acl``: print the rule for STREAM_NAME and DLQ_STREAM (env vars, as
    every component reads them); ``--user NAME`` prints a whole ``ACL SETUSER`` line with a
    ``>CHANGE_ME`` password to replace. Reads no other setting and connects to nothing."""
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from streamcore.settings import command_parser, load_or_exit

    class AclNames(BaseSettings):
        model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)
        stream_name: str = Field(default="orders", min_length=1, description="STREAM_NAME: the order stream key.")
        dlq_stream: str = Field(default="orders:dlq", min_length=1, description="DLQ_STREAM: the dead-letter stream key.")

    parser = command_parser("python -m streamcore.acl", "Print the least-privilege ACL SETUSER rule of one pipeline.",
                            AclNames)
    parser.add_argument("--user", help="print a whole ACL SETUSER line for this user name")
    parser.add_argument("--handler-command", action="append", default=[], metavar="CMD",
                        help="a command your own HANDLER sends (repeatable)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = load_or_exit(AclNames, prog="python -m streamcore.acl", settings_cls=AclNames)
    line = rule(names.stream_name, names.dlq_stream, handler_commands=args.handler_command)
    print(f"ACL SETUSER {args.user} reset on >CHANGE_ME {line}" if args.user else line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
