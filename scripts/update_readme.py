"""Regenerate every README output block from the command that produced it.

A block is written as

    <!-- output: tierplan plan kv --model llama-2-7b ... -->
    ```
    ...output...
    ```

and this script reruns the command (in process, through ``tierplan.cli.main``) and replaces the
block. ``tests/test_readme.py`` checks that every block matches a fresh run, so the README cannot
drift from what the code prints. Lines that report the solver's own wall time vary run to run and
are compared without their numbers.

    python scripts/update_readme.py
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- output: (?P<cmd>.+?) -->\n```\n(?P<out>.*?)```", re.S)


def run(command: str) -> str:
    from tierplan.cli import main

    argv = shlex.split(command)
    if argv[0] != "tierplan":
        raise SystemExit(f"README output blocks must run tierplan, got {command!r}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(argv[1:])
    return buf.getvalue().rstrip() + "\n"


def blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group("cmd"), m.group("out")) for m in BLOCK.finditer(text)]


def main() -> int:
    text = README.read_text()
    new = BLOCK.sub(lambda m: f"<!-- output: {m.group('cmd')} -->\n```\n{run(m.group('cmd'))}```", text)
    README.write_text(new)
    print(f"updated {len(blocks(new))} output blocks in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
