"""Print the README's configuration table from the settings classes themselves.

Every field of every component's settings becomes a row: the variable, its default, the
components that read it and the description written beside the field. ``tests/unit/test_docs.py``
fails when the README's table differs from this output, so the documentation cannot drift.
Run ``python docs/config_table.py --write`` to rewrite the table between the README's markers.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = [
    ("producer", "producer.settings", "ProducerSettings"),
    ("consumer", "consumer.settings", "ConsumerSettings"),
    ("reclaimer", "reclaimer.settings", "ReclaimerSettings"),
    ("autoscaler", "autoscaler.settings", "AutoscalerSettings"),
]


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if value is None or value == "":
        return "—"
    # Defaults computed from this interpreter's path would make the table machine-specific.
    return f"`{str(value).replace(sys.executable, 'python')}`"


def rows() -> list[tuple[str, str, list[str], str]]:
    """``(VAR, default, [components], description)`` for every settings field, sorted by variable."""
    found: dict[str, tuple[str, list[str], str]] = {}
    for component, module, cls in SETTINGS:
        model = getattr(importlib.import_module(module), cls)
        for name, field in model.model_fields.items():
            var = (field.validation_alias if isinstance(field.validation_alias, str) else name).upper()
            desc = (field.description or "").strip()
            if desc.startswith("--"):
                continue  # a command-line flag (python -m autoscaler --local ...), documented with the command
            prefix = f"{var}:"
            if desc.upper().startswith(prefix):
                desc = desc[len(prefix):].strip()
            default = _default(field)
            if var in found:
                found[var][1].append(component)
                if found[var][0] != default:
                    found[var] = (f"{found[var][0]} ({found[var][1][0]}), {default} ({component})", found[var][1], found[var][2])
            else:
                found[var] = (default, [component], desc)
    return [(var, d, comps, desc) for var, (d, comps, desc) in sorted(found.items())]


def table() -> str:
    """The markdown table."""
    out = ["| variable | default | read by | meaning |", "|---|---|---|---|"]
    for var, default, comps, desc in rows():
        desc = desc.replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{var}` | {default} | {', '.join(comps)} | {desc} |")
    return "\n".join(out)


def write_readme(readme: Path = Path(__file__).resolve().parents[1] / "README.md") -> None:
    """Replace the table between ``<!-- config-table:start -->`` and ``<!-- config-table:end -->``."""
    text = readme.read_text()
    start, end = "<!-- config-table:start -->\n", "\n<!-- config-table:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + table() + end + tail)


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_readme()
    else:
        print(table())
