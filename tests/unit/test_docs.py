"""The README's configuration table is the settings classes' own description (no drift)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_config_table():
    spec = importlib.util.spec_from_file_location("config_table", ROOT / "docs" / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_configuration_table_matches_the_settings_classes():
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", readme, re.S)
    assert found, "README.md lacks the config-table markers"
    assert found.group(1).strip() == load_config_table().table().strip(), "run: python docs/config_table.py"


def test_every_variable_in_the_table_has_a_description():
    rows = load_config_table().rows()
    assert len(rows) > 40
    assert [var for var, _, _, desc in rows if not desc] == []


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make up", "make test"]
