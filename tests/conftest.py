"""Fixtures shared by the test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from costmodel import load_model
from hwprofiles import load_system

TOY = Path(__file__).resolve().parent / "data" / "toy-system.yaml"


@pytest.fixture(scope="session")
def toy():
    """The made-up round-number system of tests/data/toy-system.yaml."""
    return load_system(TOY)


@pytest.fixture(scope="session")
def llama2():
    return load_model("llama-2-7b")


@pytest.fixture(scope="session")
def check_rows():
    """Run a ``benchmarks/`` engine check (an engine's own parser or planner on tierplan's exports) with
    ``--json`` in a subprocess and return its ``rows``."""
    import json
    import subprocess
    import sys

    def run(script: str) -> list[dict]:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / script
        out = subprocess.run([sys.executable, str(path), "--json"], capture_output=True, text=True, timeout=600,
                             check=True)
        return json.loads(out.stdout[out.stdout.index("{"):])["rows"]

    return run
