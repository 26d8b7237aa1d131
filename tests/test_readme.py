"""Every output block in the README matches what its command prints now."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
update_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_readme)

BLOCKS = update_readme.blocks((ROOT / "README.md").read_text())


def _stable(text: str) -> list[str]:
    # The solver and status lines report the solver's own wall time, which varies run to run; compare
    # them without numbers.
    return [re.sub(r"[\d.]+ s\b", "<t> s", line) if line.startswith(("solver:", "status:")) else line.rstrip()
            for line in text.strip().splitlines()]


def test_readme_has_output_blocks():
    commands = [cmd for cmd, _ in BLOCKS]
    assert any(cmd.startswith("tierplan plan kv") for cmd in commands)


@pytest.mark.parametrize("command, shown", BLOCKS, ids=[cmd for cmd, _ in BLOCKS])
def test_readme_output_is_current(command, shown):
    assert _stable(update_readme.run(command)) == _stable(shown), (
        f"README output of {command!r} is stale: run python scripts/update_readme.py")


def test_the_readme_system_yaml_loads_as_written(tmp_path):
    # "Your own hardware" shows a complete system; it must load exactly as a user would save it.
    import re

    from hwprofiles import load_system

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Your own hardware"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "my-system.yaml"
    path.write_text(block)
    system = load_system(path)
    assert system.name == "my-workstation" and system.disk is not None
    assert system.host.memory_bytes == 128 * 2**30
