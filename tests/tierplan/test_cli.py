"""The CLI end to end, as a user runs it (in process, through main())."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tierplan.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_hw_list_names_every_bundled_system(capsys):
    from hwprofiles import list_systems

    code, out, _ = run(capsys, "hw", "list")
    assert code == 0
    for name in list_systems():
        assert name in out


def test_hw_show_prints_sources_and_applies_overrides(capsys):
    code, out, _ = run(capsys, "hw", "show", "a100-40gb", "--set", "link.h2d=12GB/s", "--json")
    data = json.loads(out)
    assert code == 0
    h2d = data["parts"]["link"]["fields"]["h2d"]
    assert h2d["value"] == 12e9 and h2d["source"] == "override"
    assert all(f["ref"] for part in data["parts"].values() for f in part["fields"].values())
    opt = data["parts"]["host"]["fields"]["optimizer_bandwidth"]  # optional, not in the bundled host
    assert opt["value"] is None and opt["ref"].startswith("not measured")
    code, out, _ = run(capsys, "hw", "show", "a100-40gb")
    assert code == 0 and any(line.split()[:3] == ["optimizer_bandwidth", "-", "not"] for line in out.splitlines())


def test_models_show_json_gives_gqa_kv_bytes(capsys):
    code, out, _ = run(capsys, "models", "show", "llama-3-8b", "--json")
    data = json.loads(out)
    # 8 KV heads x 128 dims x (K and V) x 2 bytes = 4096 bytes per token per layer, x 32 layers
    assert data["kv_bytes_per_token_per_layer"] == 2 * 8 * 128 * 2
    assert data["kv_bytes_per_token"] == 2 * 8 * 128 * 2 * 32
    assert data["kv_heads"] == 8 and data["heads"] == 32


def test_plan_json_has_stable_fields_and_evaluate_recosts_it(capsys, tmp_path):
    code, out, _ = run(capsys, "plan", "kv", "--model", "llama-2-7b", "--hw", "a100-40gb", "--batch", "8",
                       "--prompt", "256", "--gen", "16", "--json")
    assert code == 0
    plan = json.loads(out)
    for key in ("schema_version", "kind", "status", "workload", "hardware", "predicted", "memory", "capacity",
                "units", "extras", "baselines", "solver"):
        assert key in plan
    for key in ("prefill_s", "step_time_s", "decode_s", "tokens_per_s", "decode_tokens_per_s"):
        assert plan["predicted"][key] > 0
    assert len(plan["units"]) == 32
    for tier in ("gpu_bytes", "host_bytes", "disk_bytes"):
        assert plan["memory"][tier] <= plan["capacity"][tier]
    assert {"backend", "status", "solve_time_s"} <= set(plan["solver"])
    assert plan["solver"]["status"] == plan["status"] == "optimal"
    path = tmp_path / "plan.json"
    path.write_text(out)
    code, out, _ = run(capsys, "evaluate", str(path), "--hw", "h100-sxm", "--json")
    recost = json.loads(out)
    assert code == 0 and recost["hardware"] == "h100-sxm"
    # Same decisions on a faster GPU and link cannot be slower.
    assert recost["predicted"]["total_s"] <= plan["predicted"]["total_s"]


def test_evaluate_named_policy_and_flexgen_percentages(capsys):
    code, out, _ = run(capsys, "evaluate", "kv", "--policy", "flexgen:100,0,0,100,0,100", "--model", "llama-2-7b",
                       "--hw", "rtx4090", "--batch", "4", "--prompt", "1024", "--gen", "8", "--json")
    data = json.loads(out)
    assert code == 0 and data["status"] == "feasible"


@pytest.mark.parametrize("argv, needle", [
    (["plan", "kv", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["plan", "kv", "--hw", "no-such-gpu"], "unknown system 'no-such-gpu'"),
    (["plan", "kv", "--set", "link.h2d=-3GB/s"], "link.h2d must be positive"),
    (["plan", "kv", "--set", "link.h2d=12"], "needs a unit"),
    (["plan", "kv", "--batch", "0"], "--batch must be a positive integer"),
    (["evaluate", "kv", "--policy", "nope"], "unknown policy 'nope'"),
])
def test_bad_input_is_a_clear_error_not_a_traceback(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_infeasible_workload_explains_the_short_tier(capsys):
    code, out, _ = run(capsys, "plan", "kv", "--model", "llama-2-70b", "--hw", "t4", "--set", "host.memory=32GiB",
                       "--set", "disk.capacity=1GB", "--batch", "1", "--prompt", "128", "--gen", "8")
    assert code == 1
    assert "infeasible" in out and "short by" in out


def test_plan_from_a_config_file_and_a_system_file(capsys, tmp_path):
    # A user's own files: an HF config.json and a system YAML that names bundled parts and a file.
    from costmodel.transformer import MODELS_DIR

    (tmp_path / "config.json").write_text((MODELS_DIR / "mistral-7b.json").read_text())
    (tmp_path / "my-system.yaml").write_text(
        "kind: system\nname: mine\ngpu: rtx4090\nhost: workstation-7950x-128gb\nlink: pcie4-x16\n")
    code, out, _ = run(capsys, "plan", "kv", "--model", str(tmp_path / "config.json"), "--hw",
                       str(tmp_path / "my-system.yaml"), "--batch", "2", "--prompt", "4096", "--gen", "8",
                       "--objective", "latency", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["hardware"]["system"] == "mine" and plan["objective"] == "latency"
    assert plan["workload"]["batch"] == 2  # latency: the batch is fixed
    assert plan["hardware"]["disk"] is None and plan["memory"]["disk_bytes"] == 0


def test_evaluate_plan_uses_the_plans_own_model(capsys, tmp_path):
    # Regression: --model defaulted to llama-2-7b, so a llama-3-8b plan (also 32 layers) was
    # silently re-costed as llama-2-7b.
    path = tmp_path / "plan.json"
    code, _, _ = run(capsys, "plan", "kv", "--model", "llama-3-8b", "--hw", "a100-40gb", "--batch", "4",
                     "--prompt", "256", "--gen", "8", "--objective", "latency", "-o", str(path), "--json")
    plan = json.loads(path.read_text())
    code, out, _ = run(capsys, "evaluate", str(path), "--json")
    same_hw = json.loads(out)
    assert code == 0
    # Re-costed on its own hardware, the plan predicts exactly what it predicted.
    assert same_hw["predicted"]["total_s"] == pytest.approx(plan["predicted"]["total_s"], rel=1e-9)


def test_json_output_is_pure_json_in_a_fresh_process():
    # highspy >= 1.16 prints a banner on stdout when a process makes its first solver; piping
    # `--json` into another tool must still work.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tierplan", "plan", "kv", "--batch", "2", "--prompt", "64",
                          "--gen", "4", "--json"], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout)["status"] == "optimal"


# ---------------------------------------------------------------------------------------------- issue 8


def test_evaluate_takes_flexgen_gpu_batches_and_costs_that_batch(capsys):
    # FlexGen's OPT-30B T4 run: 3 GPU batches of 48 = batch 144, costed at 144 and feasible.
    code, out, _ = run(capsys, "evaluate", "kv", "--policy", "flexgen:20,80,0,100,0,100", "--model", "opt-30b",
                       "--hw", "gcp-t4-flexgen", "--gpu-batch", "48", "--gpu-batches", "3", "--prompt", "512",
                       "--gen", "32", "--json")
    data = json.loads(out)
    assert code == 0 and data["status"] == "feasible"
    assert data["predicted"]["batch"] == 144 and data["predicted"]["gpu_batches"] == 3
    assert data["workload"]["gpu_batch"] == 48 and data["workload"]["prefill_chunk_tokens"] == 0
    assert data["memory"]["gpu_bytes"] <= data["capacity"]["gpu_bytes"]
    assert set(data["memory"]["gpu_breakdown"]) >= {"weights", "weight_buffers", "prefill_kv_staging",
                                                    "prefill_hidden", "prefill_working", "kv_buffers"}


@pytest.mark.parametrize("policy", ["gpu-only", "kv-offload", "flexgen:100,0,100,0,100,0"])
def test_evaluate_never_answers_another_batch(capsys, policy):
    code, out, _ = run(capsys, "evaluate", "kv", "--policy", policy, "--model", "llama-2-7b", "--hw", "a100-40gb",
                       "--batch", "100000", "--prompt", "512", "--gen", "32", "--json")
    data = json.loads(out)
    assert code == 1 and data["status"] == "infeasible"
    assert data["workload"]["batch"] == 100000 and "predicted" not in data
    assert "at batch 100000" in data["reason"] and data["shortfall_bytes"]


def test_inconsistent_gpu_batches_are_refused(capsys):
    code, _, err = run(capsys, "evaluate", "kv", "--policy", "gpu-only", "--batch", "100", "--gpu-batch", "48",
                       "--gpu-batches", "3")
    assert code == 2 and "--batch 100 must equal --gpu-batch 48 x --gpu-batches 3" in err


def test_plan_says_what_it_searched(capsys):
    code, out, _ = run(capsys, "plan", "kv", "--model", "llama-2-7b", "--hw", "a100-40gb", "--batch", "256",
                       "--prompt", "512", "--gen", "32")
    assert code == 0 and "(searched up to 256)" in out
    assert "prefill" in out and "decode" in out and "(peak)" in out


def test_a_context_past_the_model_is_an_error_unless_allowed(capsys):
    code, _, err = run(capsys, "plan", "kv", "--model", "llama-2-7b", "--prompt", "8000", "--gen", "8", "--batch", "1")
    assert code == 2 and "exceeds llama-2-7b's context of 4096 tokens" in err
    code, out, _ = run(capsys, "plan", "kv", "--model", "llama-2-7b", "--prompt", "8000", "--gen", "8", "--batch", "1",
                       "--allow-long-context", "--json")
    assert code == 0 and json.loads(out)["workload"]["allow_long_context"] is True


def test_kv_compression_options_shrink_the_kv(capsys):
    sizes = {}
    for extra in ((), ("--kv-dtype", "fp8"), ("--kv-dtype", "int4"), ("--kv-keep", "0.25")):
        code, out, _ = run(capsys, "evaluate", "kv", "--policy", "gpu-only", "--model", "llama-3-8b", "--hw",
                           "a100-80gb", "--batch", "8", "--prompt", "2048", "--gen", "32", "--json", *extra)
        assert code == 0
        sizes[extra[1] if extra else "fp16"] = json.loads(out)["memory"]["gpu_breakdown"]["kv"]
    # fp8: 1 byte per element; int4: 0.5 + 4 / 64 bytes (scale and zero per 64); keep 0.25 of the tokens.
    assert sizes["fp8"] == pytest.approx(sizes["fp16"] / 2, rel=1e-12)
    assert sizes["int4"] == pytest.approx(sizes["fp16"] * (0.5 + 4 / 64) / 2, rel=1e-12)
    assert sizes["0.25"] == pytest.approx(sizes["fp16"] / 4, rel=1e-12)


def test_validate_published_prints_the_error_table_without_torch(capsys):
    code, out, _ = run(capsys, "validate", "--published")
    assert code == 0
    assert "flexgen-t4-opt-30b-p512" in out and "mean |error|" in out


# ---------------------------------------------------------------------------------------------- embeddings


def test_plan_embeddings_places_every_table_and_beats_or_ties_each_baseline(capsys):
    code, out, _ = run(capsys, "plan", "embeddings", "--model", "criteo-terabyte", "--hw", "a100-40gb",
                       "--batch", "16384", "--json")
    data = json.loads(out)
    assert code == 0 and data["kind"] == "embeddings" and data["schema_version"] == 2 and len(data["units"]) == 26
    assert data["memory"]["gpu_bytes"] <= data["capacity"]["gpu_bytes"] * (1 + 1e-9)
    assert sum(data["memory"]["gpu_breakdown"].values()) == pytest.approx(data["memory"]["gpu_bytes"], rel=1e-12)
    for name, b in data["baselines"].items():
        if b["status"] == "feasible":
            assert data["predicted"]["samples_per_s"] >= b["predicted"]["samples_per_s"] * (1 - 1e-9), name
            assert b["speedup"] == pytest.approx(data["predicted"]["samples_per_s"] / b["predicted"]["samples_per_s"])
    # 84.85 GiB of tables cannot all sit on a 40 GB card: all-gpu is refused with its terms.
    all_gpu = data["baselines"]["all-gpu"]
    assert all_gpu["status"] == "infeasible" and "tables" in all_gpu["reason"] and all_gpu["shortfall_bytes"]["gpu"] > 0
    assert any("Zipf" in note for note in data["extras"]["access_assumptions"])  # the assumption travels with it


def test_an_embeddings_plan_file_recosts_to_its_prediction_here_and_elsewhere(capsys, tmp_path):
    path = tmp_path / "plan.json"
    code, _, _ = run(capsys, "plan", "embeddings", "--model", "criteo-kaggle", "--hw", "a100-40gb", "--batch", "8192",
                     "--optimizer", "rowwise-adagrad", "--set", "gpu.memory=2GiB", "-o", str(path))
    assert code == 0
    plan = json.loads(path.read_text())
    assert plan["hardware"]["overrides"] == ["gpu.memory=2GiB"] and plan["workload"]["table_optimizer"] == "rowwise-adagrad"
    code, out, _ = run(capsys, "evaluate", str(path), "--json")
    again = json.loads(out)
    assert code == 0 and again["status"] == "feasible"
    assert again["predicted"]["samples_per_s"] == pytest.approx(plan["predicted"]["samples_per_s"], rel=1e-12)
    assert [t["placement"] for t in again["tables"]] == [u["placement"] for u in plan["units"]]
    # the same decisions on a machine with a faster link and more HBM are never slower
    code, out, _ = run(capsys, "evaluate", str(path), "--hw", "gh200", "--json")
    there = json.loads(out)
    assert code == 0 and there["hardware"] == "gh200"
    assert there["predicted"]["samples_per_s"] > plan["predicted"]["samples_per_s"]
    # and on a smaller card it answers infeasible with the shortfall, exit 1
    code, out, _ = run(capsys, "evaluate", str(path), "--set", "gpu.memory=1.7GiB", "--json")
    short = json.loads(out)
    assert code == 1 and short["status"] == "infeasible" and short["shortfall_bytes"]["gpu"] > 0


def test_an_embeddings_plan_of_another_model_is_refused(capsys, tmp_path):
    path = tmp_path / "plan.json"
    assert run(capsys, "plan", "embeddings", "--model", "criteo-kaggle", "--batch", "1024", "-o", str(path))[0] == 0
    code, _, err = run(capsys, "evaluate", str(path), "--model", "criteo-terabyte")
    assert code == 2 and "not the model the plan was made for" in err
    data = json.loads(path.read_text())
    data["units"][4]["placement"] = "disk"
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "evaluate", str(path))
    assert code == 2 and err.strip().endswith(f"plan field units[4].placement must be one of gpu, cache, uvm, cpu, got "
                                              f"'disk' ({path})")
    data["units"][4].update(placement="cpu", cache_rows=0, prefetch=None, state_tier="host", update_on="gpu")
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "evaluate", str(path))
    assert code == 2 and "plan field units[4] is not a valid table policy (table policy: update_on must be cpu" in err


def test_evaluate_embeddings_costs_a_named_placement(capsys):
    code, out, _ = run(capsys, "evaluate", "embeddings", "--policy", "torchrec-uvm-cache:0.2", "--model",
                       "criteo-kaggle", "--hw", "a100-80gb", "--batch", "4096", "--optimizer", "rowwise-adagrad",
                       "--json")
    data = json.loads(out)
    assert code == 0 and data["status"] == "feasible" and data["workload"]["batch"] == 4096
    assert {t["placement"] for t in data["tables"]} == {"cache"}
    code, _, err = run(capsys, "evaluate", "embeddings", "--policy", "nope")
    assert code == 2 and "--policy must be one of" in err
    code, _, err = run(capsys, "evaluate", "kv", "--policy", "gpu-only", "--prefetch")
    assert code == 2 and "evaluate embeddings" in err


def test_evaluate_embeddings_on_colossalais_runtime_reports_what_stays_allocated(capsys):
    args = ("evaluate", "embeddings", "--policy", "colossalai-cache:0.01", "--model", "criteo-terabyte", "--hw",
            "a100-80gb-epyc-7543", "--batch", "16384")
    code, out, _ = run(capsys, *args, "--runtime", "colossalai", "--json")
    data = json.loads(out)
    assert code == 0 and data["workload"]["runtime"] == "colossalai"
    mem = data["memory"]
    assert mem["gpu_breakdown"]["sparse_grads"] > 0
    assert mem["gpu_between_iterations_bytes"] == pytest.approx(sum(mem["gpu_between_iterations"].values()))
    assert mem["gpu_between_iterations_bytes"] < mem["gpu_bytes"]
    code, out, _ = run(capsys, *args)  # the same placement on FBGEMM's runtime: its own bookkeeping, no gradient
    assert code == 0 and "gpu between iterations" in out and "sparse grads" not in out
    code, _, err = run(capsys, *args[:-2], "--runtime", "colossalai", "--batch", "16384", "--optimizer", "adam")
    assert code == 2 and "SGD only" in err
    code, _, err = run(capsys, "evaluate", "embeddings", "--policy", "cpu-hybrid", "--runtime", "colossalai")
    assert code == 2 and "no UVM, no CPU pooling" in err
    code, _, err = run(capsys, "evaluate", "kv", "--policy", "gpu-only", "--runtime", "colossalai")
    assert code == 2 and "options of evaluate embeddings" in err


def test_an_embeddings_plan_for_another_runtime_is_refused_by_the_planner_and_noted_by_the_export(capsys, tmp_path):
    from costmodel import EmbWorkload, load_rec_model
    from hwprofiles import load_system
    from solver.embeddings import plan_embeddings
    from solver.errors import PlanError

    with pytest.raises(PlanError, match="runtime fbgemm"):
        plan_embeddings(EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=1024, runtime="colossalai"),
                        load_system("a100-80gb"))
    path = tmp_path / "plan.json"
    assert run(capsys, "plan", "embeddings", "--model", "criteo-kaggle", "--batch", "1024", "-o", str(path))[0] == 0
    plan = json.loads(path.read_text())
    assert plan["workload"]["runtime"] == "fbgemm"
    plan["workload"]["runtime"] = "colossalai"
    path.write_text(json.dumps(plan))
    code, out, err = run(capsys, "export", "torchrec", str(path))
    assert code == 0, err
    assert any(c["decision"] == "runtime=colossalai" for c in json.loads(out)["cannot_express"])
    if importlib.util.find_spec("torch"):
        code, _, err = run(capsys, "replay", str(path), "--tables", "2", "--iterations", "1")
        assert code == 2 and "replay stands in for runtime fbgemm" in err
    plan["workload"]["runtime"] = "tensorflow"
    path.write_text(json.dumps(plan))
    code, _, err = run(capsys, "evaluate", str(path))
    assert code == 2 and "workload.runtime" in err and "tensorflow" in err


def test_export_torchrec_writes_constraints_a_torchrec_user_can_load(capsys, tmp_path):
    import ast

    path = tmp_path / "plan.json"
    assert run(capsys, "plan", "embeddings", "--model", "criteo-kaggle", "--set", "gpu.memory=2GiB", "--batch", "8192",
               "-o", str(path))[0] == 0
    plan = json.loads(path.read_text())
    code, out, _ = run(capsys, "export", "torchrec", str(path))
    data = json.loads(out)
    assert code == 0 and set(data["tables"]) == {u["table"] for u in plan["units"]}
    for u in plan["units"]:
        c = data["tables"][u["table"]]
        kernel = {"gpu": "fused", "cache": "fused_uvm_caching", "uvm": "fused_uvm", "cpu": "fused_uvm"}[u["placement"]]
        assert c["compute_kernels"] == [kernel], u["table"]
        if u["placement"] == "cache":
            assert c["cache_params"]["load_factor"] * u["rows"] >= u["cache_rows"]
    py = tmp_path / "constraints.py"
    code, _, err = run(capsys, "export", "torchrec", str(path), "--python", "-o", str(py))
    assert code == 0 and "wrote" in err
    ast.parse(py.read_text())
    # a KV plan is not an embeddings plan
    kv = tmp_path / "kv.json"
    assert run(capsys, "plan", "kv", "--model", "opt-6.7b", "--batch", "2", "--prompt", "64", "--gen", "2",
               "-o", str(kv))[0] == 0
    code, _, err = run(capsys, "export", "torchrec", str(kv))
    assert code == 2 and "export torchrec takes an embeddings plan, got a plan of kind 'kv'" in err


def test_a_tf32_embeddings_plan_keeps_tf32_when_re_costed(capsys, tmp_path):
    path = tmp_path / "plan.json"
    assert run(capsys, "plan", "embeddings", "--model", "criteo-kaggle", "--hw", "a100-80gb", "--batch", "32768",
               "--tf32", "-o", str(path))[0] == 0
    plan = json.loads(path.read_text())
    assert plan["workload"]["tf32"] is True
    code, out, _ = run(capsys, "evaluate", str(path), "--json")
    assert code == 0 and json.loads(out)["predicted"]["samples_per_s"] == pytest.approx(
        plan["predicted"]["samples_per_s"], rel=1e-12)
    code, out, _ = run(capsys, "evaluate", "embeddings", "--policy", "all-gpu", "--model", "criteo-kaggle", "--hw",
                       "a100-80gb", "--batch", "32768", "--json")
    fp32 = json.loads(out)["predicted"]["samples_per_s"]
    assert plan["predicted"]["samples_per_s"] > fp32  # TF32 tensor cores beat the plain fp32 rate on an A100


@pytest.mark.parametrize("family", ["kv", "embeddings", "training"])
def test_a_plan_of_a_relative_model_path_re_costs_from_another_folder(capsys, tmp_path, monkeypatch, family):
    import shutil

    from costmodel.transformer import MODELS_DIR

    made = tmp_path / "made"
    made.mkdir()
    if family == "embeddings":
        shutil.copy(Path(__file__).resolve().parents[2] / "costmodel" / "recmodels" / "criteo-kaggle.yaml",
                    made / "spec.yaml")
        argv = ["plan", "embeddings", "--model", "./spec.yaml", "--batch", "1024"]
    else:
        shutil.copy(MODELS_DIR / "gpt2.json", made / "cfg.json")
        argv = (["plan", "kv", "--model", "./cfg.json", "--hw", "t4", "--prompt", "64", "--gen", "4", "--batch", "2"]
                if family == "kv" else ["plan", "training", "--model", "./cfg.json", "--hw", "t4", "--seq", "256"])
    monkeypatch.chdir(made)
    assert run(capsys, *argv, "-o", "plan.json")[0] == 0
    monkeypatch.chdir(tmp_path)  # a user re-costs the plan from elsewhere
    code, _, err = run(capsys, "evaluate", str(made / "plan.json"))
    assert code == 0, err
