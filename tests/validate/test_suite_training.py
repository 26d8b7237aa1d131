"""The training validation suite on the CPU stand-in: every case replays, measured times order the
cases as predicted, and the CLI replays a training plan; the ordering check can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from hwprofiles import load_system  # noqa: E402
from validate.report import ordering  # noqa: E402
from validate.suite_training import run_training_suite, tight_system, suite_workload  # noqa: E402

PROFILE = Path(__file__).resolve().parents[2] / "validate" / "records" / "cpu-2core-2026-12-01-profile.yaml"


@pytest.fixture(scope="module")
def result():
    return run_training_suite(load_system(PROFILE), quick=True, device="cpu", progress=lambda m: None)


def test_every_case_replays_with_a_prediction_and_a_measurement(result):
    replayed = [c for c in result["cases"] if c["status"] == "replayed"]
    assert {c["case"] for c in replayed} >= {"plan (tight memory)", "all-gpu", "zero-offload+full-recompute"}
    assert all(c["predicted_s"] > 0 and c["measured_s"] > 0 for c in replayed)
    assert result["suite"] == "training" and "paced" in result["link"]


def test_offloading_is_measured_slower_than_keeping_states_on_the_gpu(result):
    by = {c["case"]: c for c in result["cases"] if c["status"] == "replayed"}
    assert by["zero-offload+full-recompute"]["measured_s"] > by["all-gpu"]["measured_s"]
    assert by["zero-offload+full-recompute"]["predicted_s"] > by["all-gpu"]["predicted_s"]


def test_the_ordering_check_can_fail(result):
    cases = [dict(c) for c in result["cases"] if c["status"] == "replayed"]
    for c in cases:  # invert the predictions: the cheapest predicted becomes the dearest
        c["predicted_s"] = 1.0 / c["predicted_s"]
    check = ordering(cases)
    assert check["agree"] < check["pairs"]


def test_the_tight_system_does_not_fit_all_gpu():
    from costmodel import evaluate_training, train_baseline_policies

    system = load_system(PROFILE)
    wl = suite_workload(__import__("torch").device("cpu"))
    small = tight_system(wl, system)
    assert not evaluate_training(wl, small, train_baseline_policies("all-gpu", wl, small)).feasible


def test_cli_replays_a_training_plan(tmp_path, capsys):
    from tierplan.cli import main

    path = tmp_path / "plan.json"
    assert main(["plan", "training", "--model", "gpt2", "--hw", str(PROFILE), "--seq", "256", "--micro-batch", "2",
                 "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["replay", str(path), "--layers", "2", "--iterations", "2", "--repeats", "1", "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["measured_s"] > 0 and out["predicted_s"] > 0 and set(out["phases"]) >= {"forward", "backward", "step"}
    assert main(["replay", str(path), "--tables", "2"]) == 2
    assert "--tables is not an option for training plans" in capsys.readouterr().err
