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
