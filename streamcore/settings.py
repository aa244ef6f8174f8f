"""Settings read from environment variables, once, in each component's ``__main__``.

Every component builds one frozen settings object and passes it explicitly. Variable names are
the upper-case field names (``redis_url`` ← ``REDIS_URL``). The Redis URL may carry a password,
so it is a :class:`pydantic.SecretStr` and never appears in ``repr``, in the start-up log or in
an error message.

Command lines (issue 9, item 9) are built with :func:`command_parser` and
:func:`load_or_exit`: ``--help`` prints the usage and every environment variable the command
reads (generated from the settings class: name, default, description) and exits 0; a bad value
exits 2 with one line on stderr naming the variable — both before anything connects or listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from streamcore.groups import ABANDONED_AFTER_MS
from streamcore.keys import MAX_PARTITIONS, Keys, partition_keys

logger = logging.getLogger(__name__)


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """``"host:port,host:port"`` (REDIS_SENTINELS) as ``[(host, port), ...]``; ``[v6]:port`` for
    IPv6 addresses.

    Raises:
        ValueError: an empty entry, a missing host, or a port that is not 1..65535.
    """
    found = []
    for part in text.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port")
        found.append((host, int(port)))
    return found


def _not_utf8(value: str) -> str | None:
    """None when ``value`` encodes as UTF-8, else where it does not: ``"a byte 0xff at position
    4"`` for a byte that was not UTF-8 (read with ``surrogateescape``), ``"a lone surrogate at
    position 4"`` otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = f"a byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a lone surrogate"
        return f"{what} at position {exc.start}"
    return None


class CommonSettings(BaseSettings):
    """What every component needs: where Redis is and which stream and group to use."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    redis_url: SecretStr = Field(
        default=SecretStr("redis://localhost:6379/0"),
        description="REDIS_URL: redis:// or rediss:// URL, may include user and password.",
    )
    stream_name: str = Field(default="orders", min_length=1, description="STREAM_NAME: the order stream key.")
    group_name: str = Field(default="order-processors", min_length=1, description="GROUP_NAME: the consumer group.")
    dlq_stream: str = Field(default="orders:dlq", min_length=1, description="DLQ_STREAM: the dead-letter stream key.")
    stream_maxlen: int = Field(
        default=100_000,
        ge=1,
        description=(
            "STREAM_MAXLEN: retention in entries. Trimming never passes the safe floor computed "
            "by the reclaimer from the groups' positions (see streamcore.trimming)."
        ),
    )
    redis_socket_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="REDIS_SOCKET_TIMEOUT_S: client socket timeout in seconds; must exceed any BLOCK.",
    )
    abandoned_after_ms: int = Field(
        default=ABANDONED_AFTER_MS,
        ge=1,
        description=(
            "ABANDONED_AFTER_MS: a consumer group with pending entries whose consumers have all been quiet this "
            "long (ms) is reported as abandoned (/stream/info, orderstream_group_state, autoscaler status)."
        ),
    )
    log_level: str = Field(default="INFO", description="LOG_LEVEL: DEBUG, INFO, WARNING, ERROR.")
    log_format: Literal["text", "json"] = Field(default="text", description="LOG_FORMAT: text or json.")
    redis_cluster: bool = Field(
        default=False,
        description="REDIS_CLUSTER: true to talk to a Redis Cluster (REDIS_URL names any node of it).",
    )
    stream_partitions: int = Field(
        default=1,
        ge=1,
        le=MAX_PARTITIONS,
        description=(
            "STREAM_PARTITIONS: number of partition streams (1..256); an order goes to partition "
            "crc32(orderId) % N. 1 keeps the single stream STREAM_NAME. Every component of a pipeline must agree."
        ),
    )

    redis_sentinels: str | None = Field(
        default=None,
        description=(
            "REDIS_SENTINELS: host:port,host:port of Redis Sentinels; with REDIS_SENTINEL_MASTER the primary is the "
            "one they name (followed across failovers) and REDIS_URL gives only scheme, user, password and db."
        ),
    )
    redis_sentinel_master: str | None = Field(
        default=None,
        description="REDIS_SENTINEL_MASTER: the master name the Sentinels monitor (set with REDIS_SENTINELS).",
    )
    redis_tls_ca_file: str | None = Field(
        default=None,
        description=(
            "REDIS_TLS_CA_FILE: PEM file of the CA(s) that signed the Redis server's certificate (a private CA); "
            "unset: the system's CA store. Needs a rediss:// REDIS_URL."
        ),
    )
    redis_tls_cert_file: str | None = Field(
        default=None,
        description=(
            "REDIS_TLS_CERT_FILE: PEM client certificate for servers that check clients (tls-auth-clients); "
            "set together with REDIS_TLS_KEY_FILE. Needs a rediss:// REDIS_URL."
        ),
    )
    redis_tls_key_file: str | None = Field(
        default=None,
        description="REDIS_TLS_KEY_FILE: PEM private key of REDIS_TLS_CERT_FILE (set both or neither).",
    )

    @model_validator(mode="after")
    def _partition_names(self):  # type: ignore[no-untyped-def]
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError("REDIS_CLUSTER=true and REDIS_SENTINELS exclude each other (a Redis Cluster fails over "
                             "by itself; Sentinel watches a standalone primary)")
        # Partition keys add their own hash tag; a brace in the names would override it.
        if self.stream_partitions > 1 or self.redis_cluster:
            for var, name in (("STREAM_NAME", self.stream_name), ("DLQ_STREAM", self.dlq_stream)):
                if "{" in name or "}" in name:
                    raise ValueError(f"{var}={name[:60]!r} must not hold '{{' or '}}' with STREAM_PARTITIONS > 1 "
                                     f"or REDIS_CLUSTER=true (partition keys carry their own hash tag)")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        # Checked here so a typo exits 2 at start instead of failing on first use; the message
        # never repeats the URL (it may hold a password).
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        # A missing or unreadable file is a bad setting at start (exit 2 naming it), not a TLS
        # handshake error on the first command.
        if value is None or value == "":
            return None
        if not os.path.isfile(value):
            raise ValueError("no such file")
        try:
            with open(value, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_sentinels(value)
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _master_name(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _tls_consistent(self) -> CommonSettings:
        if (self.redis_sentinels is None) != (self.redis_sentinel_master is None):
            missing = "REDIS_SENTINEL_MASTER" if self.redis_sentinel_master is None else "REDIS_SENTINELS"
            raise ValueError(f"REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together; {missing} is unset")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            missing = "REDIS_TLS_KEY_FILE" if self.redis_tls_key_file is None else "REDIS_TLS_CERT_FILE"
            raise ValueError(f"REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together; {missing} is unset")
        if self.tls_files and not self.redis_url.get_secret_value().startswith("rediss://"):
            raise ValueError("REDIS_TLS_* files are set but REDIS_URL does not start with rediss://")
        return self

    @model_validator(mode="after")
    def _text_is_utf8(self) -> "CommonSettings":
        """A setting read from bytes that are not UTF-8 (Python gives them as lone surrogates)
        is refused here, naming it: a text field without a length or pattern constraint
        (POD_NAME, HOST) otherwise passed validation and failed later, with a traceback,
        wherever the value was encoded (the settings log line, Redis)."""
        for name, value in self:
            if isinstance(value, str) and (problem := _not_utf8(value)):
                raise ValueError(f"{name.upper()} is not valid UTF-8 ({problem})")
        return self

    @property
    def tls_files(self) -> dict[str, str]:
        """The TLS files as redis-py connection keywords (``ssl_ca_certs``, ``ssl_certfile``,
        ``ssl_keyfile``), only those that are set; from REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE
        and REDIS_TLS_KEY_FILE."""
        found = {"ssl_ca_certs": self.redis_tls_ca_file, "ssl_certfile": self.redis_tls_cert_file,
                 "ssl_keyfile": self.redis_tls_key_file}
        return {k: v for k, v in found.items() if v is not None}

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`streamcore.connection.create_redis` besides the URL,
        socket timeout and pool size: how to reach Redis.

        The TLS files (:attr:`tls_files`: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``;
        paths, read by redis-py's SSL connection when it connects) and, with Sentinel,
        ``sentinels`` (``[(host, port), ...]`` from REDIS_SENTINELS) and ``sentinel_master``
        (REDIS_SENTINEL_MASTER), and ``cluster=True`` with REDIS_CLUSTER. Every component passes
        the whole dict, so a new way of connecting is added here once.
        """
        options: dict[str, Any] = dict(self.tls_files)
        if self.redis_cluster:
            options["cluster"] = True
        if self.redis_sentinels is not None:
            options["sentinels"] = parse_sentinels(self.redis_sentinels)
            options["sentinel_master"] = self.redis_sentinel_master
        return options

    @property
    def keys(self) -> Keys:
        """The key names of the first partition (:class:`streamcore.keys.Keys`); with one
        partition outside cluster mode, the plain names of this stream."""
        return self.partitions[0]

    @property
    def partitions(self) -> tuple[Keys, ...]:
        """The key names of every partition, in index order (:func:`streamcore.keys.partition_keys`)."""
        return partition_keys(self.stream_name, self.group_name, self.dlq_stream, self.stream_partitions,
                              cluster=self.redis_cluster)

    def log_effective(self, component: str) -> None:
        """Log the effective settings at start; secrets are shown as ``**********``."""
        logger.info("%s settings: %s", component, self.model_dump_json())


class HandlingSettings(CommonSettings):
    """What every process that runs the order handler reads: the consumer and the reclaimer.

    Both must agree on these (the reclaimer retries and dead-letters with the same rules), so
    they are declared once here.
    """

    handler: str = Field(default="consumer.handler:process_order", description="HANDLER: the order handler as module:function.")
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="FAILURE_RATE: probability the default handler fails before applying an order.")
    handler_timeout_seconds: float = Field(
        default=300.0,
        ge=0,
        description=(
            "HANDLER_TIMEOUT_SECONDS: longest one handler call may run (s); past it the delivery fails "
            "(retried, then dead-lettered) instead of renewing its lease forever; 0 disables."
        ),
    )
    claim_idle_ms: int = Field(
        default=30_000,
        ge=1,
        description="CLAIM_IDLE_MS: base idle time (ms) before a pending entry is retried; grows 2x per delivery up to 16x.",
    )
    max_deliveries: int = Field(default=5, ge=1, description="MAX_DELIVERIES: deliveries after which a failing order is dead-lettered.")
    dead_letter_xdel: bool = Field(
        default=False,
        description=(
            "DEAD_LETTER_XDEL: when true, dead-lettering also deletes the entry from the order stream (XDEL, in the "
            "same atomic step as the dead-letter XADD and the XACK); by default it stays there, readable in the history."
        ),
    )
    concurrency: int = Field(default=16, ge=1, description="CONCURRENCY: handler calls running at once (batch calls with a batch handler).")
    processed_ttl_seconds: int = Field(
        default=7 * 86400, ge=1, description="PROCESSED_TTL_SECONDS: lifetime of processed-order markers (s)."
    )

    @field_validator("handler")
    @classmethod
    def _importable(cls, value: str) -> str:
        # At start, with every other setting: a HANDLER that cannot be imported is a bad setting
        # (exit 2, one line naming it), not a traceback and a crash loop once the worker starts.
        from streamcore.handling import load_handler

        # Before the import: its UnicodeEncodeError, raised as it is, failed pydantic's own error.
        if problem := _not_utf8(value):
            raise ValueError(f"is not valid UTF-8 ({problem})")
        try:
            load_handler(value)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import {value!r}: {exc}") from None
        except ValueError:
            raise
        except Exception as exc:  # the module raised while importing (SyntaxError, RuntimeError, ...)
            raise ValueError(f"importing {value!r} failed: {type(exc).__name__}: {exc}") from None
        return value


# ---- command lines: --help and bad values ------------------------------------------------------

S = TypeVar("S", bound=BaseSettings)
T = TypeVar("T")

#: Exit code of a usage or settings error (argparse's too).
EXIT_USAGE = 2


def env_var(name: str) -> str:
    """The environment variable of a settings field (its upper-case name)."""
    return name.upper()


def _default_text(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "" or value == ():
        return "unset"
    return str(value)


def env_help(settings_cls: type[BaseSettings], *, width: int = 100) -> str:
    """An ``environment variables:`` block for ``--help``, generated from ``settings_cls``.

    One entry per field, sorted by variable: ``VAR (default: ...)`` and the field's description
    (without its leading ``VAR:``). Fields whose description starts with ``--`` are command-line
    flags (listed by argparse) and are left out.
    """
    lines = ["environment variables (names are case-insensitive):"]
    for name, field in sorted(settings_cls.model_fields.items(), key=lambda item: env_var(item[0])):
        var = env_var(name)
        desc = (field.description or "").strip()
        if desc.startswith("--"):
            continue
        if desc.upper().startswith(var + ":"):
            desc = desc[len(var) + 1:].strip()
        lines.append(f"  {var} (default: {_default_text(field)})")
        lines.extend(textwrap.wrap(desc, width=width, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def command_parser(prog: str, description: str, settings_cls: type[BaseSettings] | None = None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` also lists ``settings_cls``'s environment variables
    (:func:`env_help`). argparse prints usage and exits 0 on ``--help``, 2 on an unknown flag."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=env_help(settings_cls) if settings_cls is not None else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def exit_usage(prog: str, message: str) -> NoReturn:
    """Print ``<prog>: <message>`` as one line on stderr and exit 2."""
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def _secret_fields(settings_cls: type[BaseSettings] | None) -> set[str]:
    if settings_cls is None:
        return set()
    return {name for name, field in settings_cls.model_fields.items() if field.annotation is SecretStr}


def describe_errors(exc: ValidationError | SettingsError, settings_cls: type[BaseSettings] | None = None) -> str:
    """One line naming each bad setting by its environment variable, e.g.
    ``invalid setting PORT='abc': should be a valid integer``. Secret values are not repeated."""
    if isinstance(exc, SettingsError):
        found = re.search(r'field "([^"]+)"', str(exc))
        var = env_var(found.group(1)) if found else "a setting"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        return f"invalid setting {var}: cannot parse its value{cause}"
    secrets = _secret_fields(settings_cls)
    parts = []
    for error in exc.errors(include_url=False):
        msg = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
        msg = re.sub(r"^Input should", "should", msg)
        loc = [str(p) for p in error["loc"]]
        if not loc:  # a check across settings: its message names them
            parts.append(f"invalid settings: {msg}")
            continue
        var = env_var(loc[0])
        value = error.get("input")
        shown = "" if loc[0] in secrets or isinstance(value, (dict, SecretStr)) else f"={str(value)[:60]!r}"
        parts.append(f"invalid setting {var}{shown}: {msg}")
    return "; ".join(parts)


def load_or_exit(factory: Callable[[], T], *, prog: str, settings_cls: type[BaseSettings] | None = None) -> T:
    """Build settings with ``factory`` (e.g. ``ProducerSettings`` or a function reading env vars
    and flags); on a bad value print one line naming the variable and exit 2.

    Nothing has connected or listened yet when this runs (each ``__main__`` calls it first), so
    a bad setting never half-starts a process. A :class:`SystemExit` with a message raised by
    ``factory`` (a cross-setting check) is turned into the same one-line exit 2. With
    REDIS_SENTINELS set, the Sentinels are asked whether they monitor REDIS_SENTINEL_MASTER (the
    one connection made here): a name none of them knows exits 2 the same way.

    Raises:
        SystemExit: code 2 after printing ``<prog>: invalid setting VAR=...: reason`` to stderr.
    """
    try:
        settings = factory()
    except (ValidationError, SettingsError) as exc:
        exit_usage(prog, describe_errors(exc, settings_cls))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            exit_usage(prog, exc.code)
        raise
    if isinstance(settings, CommonSettings) and settings.redis_sentinels is not None:
        _check_master_or_exit(settings, prog)
    return settings


def _check_master_or_exit(settings: CommonSettings, prog: str) -> None:
    # The one check that needs the network: only a Sentinel can say a master name is unknown.
    # Unreachable Sentinels are not a bad setting (the process starts and retries, as it does
    # for an unreachable Redis); Sentinels that answer and do not know the name are.
    from streamcore.connection import check_sentinel_master

    options = settings.redis_options()
    tls = settings.tls_files if settings.redis_url.get_secret_value().startswith("rediss://") else None
    known = check_sentinel_master(options["sentinels"], options["sentinel_master"], tls=tls)
    if known is False:
        exit_usage(prog, f"invalid setting REDIS_SENTINEL_MASTER={settings.redis_sentinel_master!r}: "
                         f"no Sentinel of REDIS_SENTINELS monitors a master of that name")
    if known is None:
        logger.warning("no Sentinel of REDIS_SENTINELS answered; starting anyway, the connection is retried")


def settings_from_command_line(settings_cls: type[S], *, prog: str, description: str, argv: list[str] | None = None,
                               flags: Callable[[argparse.ArgumentParser], None] | None = None,
                               overrides: Callable[[argparse.Namespace], Mapping[str, Any]] | None = None,
                               ) -> tuple[S, argparse.Namespace]:
    """Parse the command line, then build ``settings_cls`` from the environment (exit 0 on
    ``--help``, 2 on a bad flag or setting; see :func:`load_or_exit`).

    Args:
        settings_cls: the component's settings class; its variables are listed by ``--help``.
        prog: the command as typed (``python -m producer``), also the prefix of error lines.
        description: the first paragraph of ``--help``.
        argv: arguments without the program name; ``sys.argv[1:]`` when None.
        flags: adds the command's own flags to the parser.
        overrides: settings field values taken from the parsed flags (they win over env vars).

    Returns:
        ``(settings, parsed flags)``.
    """
    parser = command_parser(prog, description, settings_cls)
    if flags is not None:
        flags(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    values = dict(overrides(args)) if overrides is not None else {}
    settings = load_or_exit(lambda: settings_cls(**values), prog=prog, settings_cls=settings_cls)
    if getattr(settings, "redis_cluster", False):
        verify_cluster_or_exit(settings, prog=prog)  # type: ignore[arg-type]
    return settings, args


def verify_cluster_or_exit(settings: CommonSettings, *, prog: str, timeout_s: float = 5.0) -> None:
    """With ``REDIS_CLUSTER=true``, ask the node REDIS_URL names whether it is a cluster node
    (``INFO cluster``, :func:`streamcore.connection.check_cluster`); when it is not, print one line
    and exit 2 before anything else starts. An unreachable node is not judged (the client retries).

    Raises:
        SystemExit: code 2, the server is standalone.
    """
    import asyncio

    from streamcore.connection import check_cluster

    problem = asyncio.run(check_cluster(settings.redis_url.get_secret_value(), cluster=True, timeout_s=timeout_s))
    if problem:
        exit_usage(prog, problem)
