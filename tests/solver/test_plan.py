"""The Plan: versioned dict, JSON and YAML on disk, and back to per-layer policies."""

from __future__ import annotations

import copy
import json

import pytest

from costmodel import KvWorkload, load_model
from solver import SCHEMA_VERSION, Plan, PlanError, evaluate_plan, plan_kv



@pytest.fixture(scope="module")
def workload():
    # KV must be partly offloaded (see test_kv.py), so the plan mixes transfer, recompute and CPU.
    return KvWorkload(model=load_model("llama-2-7b"), batch=8, prompt_len=1024, gen_len=8)


@pytest.fixture(scope="module")
def plan(toy, workload):
    return plan_kv(workload, toy, objective="latency", baselines=("gpu-only", "kvpr"))


def test_plan_dict_has_the_documented_layout(plan):
    d = plan.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION == 1
    assert d["kind"] == "kv" and d["status"] == "optimal" and d["objective"] == "latency"
    assert d["workload"]["model"] == "llama-2-7b" and d["workload"]["batch"] == 8
    assert d["hardware"]["system"] == "toy"
    assert len(d["layers"]) == 32
    for key in ("prefill_s", "step_time_s", "decode_s", "tokens_per_s", "decode_tokens_per_s", "batch"):
        assert key in d["predicted"]
    for key in ("gpu_bytes", "host_bytes", "disk_bytes"):
        assert key in d["memory"] and key in d["capacity"]
    layer = d["layers"][0]
    assert set(layer["weights"]) == set(layer["kv"]) == {"gpu", "host", "disk"}
    assert len(layer["kv_actions"]) == len(d["context_ranges"]) == 4
    assert d["baselines"]["gpu-only"]["status"] == "infeasible"
    assert d["baselines"]["kvpr"]["status"] == "feasible"
    assert "simulated" in d["solver"] and d["solver"]["backend"] in ("highs", "cbc")
    # what JSON can hold, it holds: serialising must not need a custom encoder
    json.dumps(d)


def test_dict_round_trip(plan):
    again = Plan.from_dict(plan.to_dict())
    assert again == plan
    assert again.to_dict() == plan.to_dict()


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_file_round_trip(plan, tmp_path, suffix):
    path = tmp_path / f"plan{suffix}"
    plan.save(path)
    text = path.read_text()
    if suffix == ".json":
        json.loads(text)
    else:
        assert text.startswith("schema_version: 1")  # YAML, keys in layout order
    loaded = Plan.load(path)
    assert loaded.to_dict() == plan.to_dict()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_saved_plan_recosts_to_its_prediction(plan, toy, workload, tmp_path, suffix):
    path = tmp_path / f"plan{suffix}"
    plan.save(path)
    pols, head = Plan.load(path).policies()
    assert (pols, head) == plan.policies()
    assert len(pols) == 32
    _, metrics = evaluate_plan(Plan.load(path), workload.with_batch(plan.predicted["batch"]), toy)
    # floats survive JSON and YAML exactly (repr round trip), so the re-costing is exact
    for key in ("prefill_s", "decode_s", "tokens_per_s"):
        assert metrics[key] == pytest.approx(plan.predicted[key], rel=1e-12), key


def test_policies_reflect_the_layer_entries(plan):
    pols, head = plan.policies()
    assert head == plan.head["on_gpu"]
    for pol, entry in zip(pols, plan.layers):
        assert pol.weights.as_dict() == entry["weights"]
        assert pol.kv.as_dict() == entry["kv"]
        assert pol.activations_on_host == entry["activations_on_host"]
        assert [s.as_dict() for s in pol.splits] == [
            {k: a[k] for k in ("transfer", "recompute", "cpu")} for a in entry["kv_actions"]]


def test_wrong_schema_version_is_refused(plan):
    d = copy.deepcopy(plan.to_dict())
    d["schema_version"] = 2
    with pytest.raises(PlanError, match="schema_version must be 1, got 2"):
        Plan.from_dict(d, file="p.json")


@pytest.mark.parametrize("key", ["kind", "status", "workload", "hardware", "layers"])
def test_missing_field_is_refused(plan, key):
    d = copy.deepcopy(plan.to_dict())
    del d[key]
    with pytest.raises(PlanError, match=f"plan field '{key}' is missing"):
        Plan.from_dict(d)


def test_a_plan_must_be_a_mapping():
    with pytest.raises(PlanError, match="must be a mapping, got list"):
        Plan.from_dict([1, 2])  # type: ignore[arg-type]


def test_missing_and_malformed_files_are_plan_errors(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        Plan.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError) as err:
        Plan.load(bad)
    assert "malformed plan file" in str(err.value) and "bad.json" in str(err.value)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [unclosed\n")
    with pytest.raises(PlanError, match="malformed plan file"):
        Plan.load(bad_yaml)


def test_malformed_layer_entry_is_a_plan_error(plan):
    d = copy.deepcopy(plan.to_dict())  # to_dict shares the plan's own dicts
    del d["layers"][3]["kv_actions"]
    with pytest.raises(PlanError, match="layer entry is malformed"):
        Plan.from_dict(d).policies()


def test_the_plan_is_immutable(plan):
    with pytest.raises(AttributeError):
        plan.status = "feasible"  # type: ignore[misc]
