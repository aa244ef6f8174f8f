"""The ACL rule: commands, key patterns from the stream names, and the README's copy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from streamcore.acl import key_pattern, rule, rules
from streamcore.keys import Keys

ROOT = Path(__file__).resolve().parents[2]


def test_readme_rule_line_is_rule_for_the_default_names():
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- acl-rule -->\n```text\n(.*)\n```", text)
    assert found, "README lacks the acl-rule block"
    assert found.group(1) == rule("orders", "orders:dlq")


def test_rule_shape_for_the_default_names():
    parts = rules("orders", "orders:dlq")
    assert parts[:3] == ["resetkeys", "resetchannels", "-@all"]
    assert [p for p in parts if p.startswith("~")] == ["~orders", "~orders:*"]  # the DLQ is under orders:
    for command in ("+xadd", "+xreadgroup", "+xack", "+xautoclaim", "+evalsha", "+script|load", "+wait"):
        assert command in parts
    assert not [p for p in parts if p.startswith(("+@", "+flushall", "+keys", "+config", "+acl"))]


def test_every_key_name_falls_under_the_patterns():
    keys = Keys(stream="orders", group="g", dlq="orders:dlq")
    names = [keys.stream, keys.dlq, keys.idempotency("k"), keys.order_index("1"), keys.processed("1"),
             keys.dlq_index("1"), keys.trim_floor, keys.lost_counter, keys.lost_reported, keys.heartbeat("c")]
    assert all(n == "orders" or n.startswith("orders:") for n in names), names


def test_a_dlq_outside_the_stream_prefix_gets_its_own_pattern_and_glob_characters_are_escaped():
    parts = rules("shop*orders", "dead[letters]")
    assert [p for p in parts if p.startswith("~")] == ["~shop\\*orders", "~shop\\*orders:*", "~dead\\[letters\\]"]
    assert key_pattern("a?b\\c") == "a\\?b\\\\c"


def test_handler_commands_are_added_once():
    parts = rules("orders", "orders:dlq", handler_commands=["INCR", "get"])
    assert parts.count("+incr") == 1 and parts.count("+get") == 1


def test_cli_prints_the_rule_for_the_env_names():
    env = {"STREAM_NAME": "shop", "DLQ_STREAM": "shop-dlq", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "streamcore.acl", "--user", "app"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out == f"ACL SETUSER app reset on >CHANGE_ME {rule('shop', 'shop-dlq')}\n"
