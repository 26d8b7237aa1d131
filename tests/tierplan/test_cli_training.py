"""The training family on the command line: plan, evaluate a named policy, re-cost a plan file, export
it to DeepSpeed, sweep it; bad options are one-line errors."""

from __future__ import annotations

import json

import pytest

from tierplan.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("training") / "plan.json"
    assert main(["plan", "training", "--model", "llama-2-7b", "--hw", "a100-40gb", "--seq", "2048", "--micro-batch", "4",
                 "--grad-accum", "8", "-o", str(path)]) == 0
    return path


def test_plan_training_places_every_layer_and_beats_each_feasible_baseline(plan_file):
    plan = json.loads(plan_file.read_text())
    assert plan["kind"] == "training" and len(plan["units"]) == 32 and "head" in plan["extras"]
    assert plan["memory"]["gpu_bytes"] <= plan["capacity"]["gpu_bytes"] * (1 + 1e-9)
    feasible = {n: b for n, b in plan["baselines"].items() if b["status"] == "feasible"}
    assert "zero-offload+full-recompute" in feasible
    for name, b in feasible.items():
        assert plan["predicted"]["tokens_per_s"] >= b["predicted"]["tokens_per_s"] * (1 - 1e-9), name
    # the full model states cannot sit on a 40 GB card: all-gpu is refused with its terms
    assert plan["baselines"]["all-gpu"]["status"] == "infeasible" and "moments" in plan["baselines"]["all-gpu"]["reason"]


def test_a_training_plan_file_recosts_to_its_prediction_and_on_other_hardware(capsys, plan_file):
    plan = json.loads(plan_file.read_text())
    code, out, _ = run(capsys, "evaluate", str(plan_file), "--json")
    again = json.loads(out)
    assert code == 0 and again["predicted"]["tokens_per_s"] == pytest.approx(plan["predicted"]["tokens_per_s"], rel=1e-12)
    code, out, _ = run(capsys, "evaluate", str(plan_file), "--set", "link.h2d=64GB/s", "--set", "link.d2h=64GB/s",
                       "--json")
    assert code == 0 and json.loads(out)["predicted"]["tokens_per_s"] >= plan["predicted"]["tokens_per_s"] * (1 - 1e-12)


def test_evaluate_training_costs_the_named_policy_at_the_workload_asked(capsys):
    code, out, _ = run(capsys, "evaluate", "training", "--policy", "zero-offload+full-recompute", "--model", "llama-2-7b",
                       "--hw", "a100-40gb", "--seq", "2048", "--micro-batch", "4", "--json")
    data = json.loads(out)
    assert code == 0 and data["status"] == "feasible" and data["workload"]["zero_stage"] == 2
    assert {(u["step"], u["activations"]) for u in data["layers"]} == {("cpu", "recompute")}
    # without recompute the activations of micro-batch 4 do not fit: infeasible with the shortfall, exit 1
    code, out, _ = run(capsys, "evaluate", "training", "--policy", "zero-offload", "--model", "llama-2-7b", "--hw",
                       "a100-40gb", "--seq", "2048", "--micro-batch", "4", "--json")
    data = json.loads(out)
    assert code == 1 and data["status"] == "infeasible" and data["shortfall_bytes"]["gpu"] > 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--policy", "twin-flow:1.5"], "ratio (DeepSpeed offload_optimizer.ratio) must be in [0, 1], got '1.5'"),
    (["--policy", "lamb-offload"], "baseline must be one of"),
    (["--policy", "zero-offload", "--seq", "-4"], "--seq must be a positive integer, got -4"),
    (["--policy", "zero-offload", "--gpus", "2", "--hw", "rtx4090"], "gpus=2 needs the GPUs' bus bandwidth"),
    (["--policy", "zero-offload", "--gpus", "16"], "one GPU's share of a 8-GPU node (node_share 0.125), so at most 8"),
    (["--policy", "zero-offload", "--gpus", "100"], "--gpus must be at most 64, got 100"),
    (["--policy", "zero-offload", "--snapshot-every", "-2"], "--snapshot-every must be 0 or a positive integer, got -2"),
    (["--policy", "zero-offload", "--interconnect", "fast"], "--interconnect"),
    (["--policy", "zero-offload", "--seq", "100000"], "seq_len must be at most llama-2-7b's context"),
])
def test_bad_training_options_are_one_line_errors(capsys, argv, message):
    code, _, err = run(capsys, "evaluate", "training", "--model", "llama-2-7b", *argv)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_export_deepspeed_writes_a_config_and_says_what_it_cannot_express(capsys, plan_file, tmp_path):
    out = tmp_path / "ds_config.json"
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "export", "deepspeed", str(plan_file), "-o", str(out), "--report", str(report))
    assert code == 0 and "DeepSpeed cannot express" in err
    cfg = json.loads(out.read_text())
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["train_batch_size"] == 32 and cfg["zero_optimization"]["stage"] in (2, 3)
    rep = json.loads(report.read_text())
    assert rep["ds_config"] == cfg and len(rep["nearest_policies"]) == 32
    assert rep["predicted_as_exported"]["plan_iteration_s"] > 0
    code, _, err = run(capsys, "export", "torchrec", str(plan_file))
    assert code == 2 and "export torchrec takes an embeddings plan, got a plan of kind 'training'" in err


def test_sweep_training_plans_each_point(capsys, tmp_path):
    out = tmp_path / "s.csv"
    code, text, _ = run(capsys, "sweep", "training", "--model", "llama-2-7b", "--hw", "a100-40gb", "--seq", "1024",
                        "--micro-batch", "2", "--zero-stage", "2", "--vary", "link.h2d=8GB/s..32GB/s:2", "--workers",
                        "1", "-o", str(out))
    assert code == 0 and out.exists()
    import pandas as pd

    df = pd.read_csv(out).sort_values("link.h2d_si")
    assert list(df["status"]) == ["optimal", "optimal"] or set(df["status"]) <= {"optimal", "feasible"}
    slow, fast = df["tokens_per_s"]
    assert fast >= slow * (1 - 1e-9)  # more link bandwidth is never slower
    code, _, err = run(capsys, "sweep", "training", "--prompt", "512")
    assert code == 2 and "--prompt are not options of sweep training" in err


def test_sweep_marks_a_baseline_that_does_not_fit(capsys):
    # on a 24 GB card llama-2-7b's ZeRO-Offload at seq 2048 (12.55 GiB of fp16 weights and 12 GiB of
    # activations, no recompute) does not fit: no speed-up over it to show, and the table says why
    code, text, _ = run(capsys, "sweep", "training", "--model", "llama-2-7b", "--hw", "rtx4090", "--seq", "2048",
                        "--vary", "link.h2d=12GB/s..24GB/s:2", "--workers", "1")
    assert code == 0
    rows = [line.split() for line in text.splitlines() if line.startswith("llama-2-7b")]
    assert len(rows) == 2 and all(r[-1] == "-" for r in rows)  # speedup_zero-offload is the last column shown
    assert "'-' under speedup_zero-offload: no speed-up at that point, because that baseline or the plan does not fit" \
        in text
