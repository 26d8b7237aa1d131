"""The Plan: versioned dict, JSON and YAML on disk, and back to per-layer policies."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from costmodel import KvWorkload, load_model
from hwprofiles import ProfileError, load_system
from solver import SCHEMA_VERSION, Plan, PlanError, evaluate_plan, plan_kv
from solver.plan import plan_system


@pytest.fixture(scope="module")
def workload():
    # KV must be partly offloaded (see test_kv.py), so the plan mixes transfer, recompute and CPU.
    return KvWorkload(model=load_model("llama-2-7b"), batch=8, prompt_len=1024, gen_len=8)


@pytest.fixture(scope="module")
def plan(toy, workload):
    return plan_kv(workload, toy, objective="latency", baselines=("gpu-only", "kvpr"))


def test_plan_dict_has_the_documented_layout(plan):
    d = plan.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION == 2
    assert d["kind"] == "kv" and d["status"] == "optimal" and d["objective"] == "latency"
    assert d["workload"]["model"] == "llama-2-7b" and d["workload"]["batch"] == 8
    assert d["hardware"]["system"] == "toy"
    assert len(d["units"]) == 32
    for key in ("prefill_s", "step_time_s", "decode_s", "tokens_per_s", "decode_tokens_per_s", "batch"):
        assert key in d["predicted"]
    for key in ("gpu_bytes", "host_bytes", "disk_bytes"):
        assert key in d["memory"] and key in d["capacity"]
    layer = d["units"][0]
    assert set(layer["weights"]) == set(layer["kv"]) == {"gpu", "host", "disk"}
    assert len(layer["kv_actions"]) == len(d["extras"]["context_ranges"]) == 4
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
        assert text.startswith("schema_version: 2")  # YAML, keys in layout order
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


@pytest.mark.parametrize("version", [3, 0, "2", True, None])
def test_wrong_schema_version_is_refused(plan, version):
    d = copy.deepcopy(plan.to_dict())
    d["schema_version"] = version
    with pytest.raises(PlanError) as err:
        Plan.from_dict(d, file="p.json")
    assert str(err.value) == (f"schema_version must be one of 1, 2 (this tierplan writes 2), got {version!r} "
                              "(p.json)")


def _as_v1(d):
    """A version-2 KV plan dict as tierplan 0.x wrote it (schema version 1)."""
    v1 = {k: v for k, v in d.items() if k not in ("units", "extras")}
    v1.update(schema_version=1, layers=d["units"], **d["extras"])
    return v1


def test_a_version_1_plan_still_loads_and_recosts_the_same(plan, toy, workload, tmp_path):
    v1 = _as_v1(copy.deepcopy(plan.to_dict()))
    assert "layers" in v1 and "head" in v1 and "units" not in v1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(v1))
    old = Plan.load(path)
    assert old == plan and old.to_dict()["schema_version"] == 2
    assert old.policies() == plan.policies()
    _, again = evaluate_plan(old, workload.with_batch(plan.predicted["batch"]), toy)
    assert again["tokens_per_s"] == plan.predicted["tokens_per_s"]


def test_a_version_1_plan_must_be_kv_and_complete(plan):
    v1 = _as_v1(copy.deepcopy(plan.to_dict()))
    del v1["head"]
    with pytest.raises(PlanError, match="plan field 'head' is missing"):
        Plan.from_dict(v1)
    v1 = _as_v1(copy.deepcopy(plan.to_dict()))
    v1["kind"] = "embeddings"
    with pytest.raises(PlanError, match="a schema_version 1 plan must be of kind 'kv'"):
        Plan.from_dict(v1)


@pytest.mark.parametrize("key", ["kind", "status", "objective", "workload", "hardware", "predicted", "memory",
                                 "capacity", "units", "extras", "baselines", "solver", "explanation"])
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
    assert "malformed JSON at line 1, column 2" in str(err.value) and "bad.json" in str(err.value)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [unclosed\n")
    with pytest.raises(PlanError, match=r"malformed YAML at line 2, column 1: .*bad\.yaml"):
        Plan.load(bad_yaml)


def test_malformed_layer_entry_is_a_plan_error(plan):
    d = copy.deepcopy(plan.to_dict())  # to_dict shares the plan's own dicts
    del d["units"][3]["kv_actions"]
    with pytest.raises(PlanError, match=r"plan field units\[3\]\.kv_actions is missing \(p\.json\)"):
        Plan.from_dict(d, file="p.json")


def test_the_plan_is_immutable(plan):
    with pytest.raises(AttributeError):
        plan.status = "feasible"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Every field later code reads is checked on load, with its path and the file
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["inference", "serving"])
def test_a_plan_of_an_unknown_kind_is_refused_not_costed_as_kv(plan, kind):
    d = copy.deepcopy(plan.to_dict())
    d["kind"] = kind
    with pytest.raises(PlanError) as err:
        Plan.from_dict(d, file="p.json")
    assert str(err.value) == f"plan kind '{kind}' is not supported; this tierplan plans 'kv', 'embeddings', 'training' (p.json)"


def test_a_kv_plan_relabelled_embeddings_is_refused_by_the_embeddings_checker(plan):
    d = copy.deepcopy(plan.to_dict())
    d["kind"], d["objective"] = "embeddings", "throughput"
    with pytest.raises(PlanError, match=r"plan field (workload|units\[0\])\.\w+ is missing"):
        Plan.from_dict(d, file="p.json")


@pytest.mark.parametrize("key", ["model", "batch", "prompt_len", "gen_len"])
def test_a_missing_workload_field_names_its_path_and_file(plan, key):
    d = copy.deepcopy(plan.to_dict())
    del d["workload"][key]
    with pytest.raises(PlanError) as err:
        Plan.from_dict(d, file="p.json")
    assert str(err.value) == f"plan field workload.{key} is missing (p.json)"


def _set(d, path, value):
    *parents, last = path
    for key in parents:
        d = d[key]
    d[last] = value


@pytest.mark.parametrize(("path", "value", "message"), [
    (("workload", "batch"), 0, "plan field workload.batch must be a positive integer, got 0"),
    (("workload", "batch"), "8", "plan field workload.batch must be a positive integer, got '8'"),
    (("workload", "gen_len"), 8.0, "plan field workload.gen_len must be a positive integer, got 8.0"),
    (("workload", "prompt_len"), True, "plan field workload.prompt_len must be a positive integer, got True"),
    (("workload", "dtype_bytes"), 3, "plan field workload.dtype_bytes must be 2 (fp16/bf16) or 4 (fp32), got 3"),
    (("workload", "model"), "", "plan field workload.model must be a non-empty string, got ''"),
    (("workload", "gpu_batches"), "2", "plan field workload.gpu_batches must be a positive integer, got '2'"),
    (("workload", "overlap"), "yes", "plan field workload.overlap must be true or false, got 'yes'"),
    (("workload", "kv_keep"), 1.5, "plan field workload.kv_keep must be in [0, 1], got 1.5"),
    (("workload",), [], "plan field workload must be a mapping, got []"),
    (("hardware",), "a100-40gb", "plan field hardware must be a mapping, got 'a100-40gb'"),
    (("hardware", "system"), 7, "plan field hardware.system must be a non-empty string, got 7"),
    (("hardware", "overrides"), "link.h2d=1GB/s", "plan field hardware.overrides must be a list, got 'link.h2d=1GB/s'"),
    (("hardware", "resolved"), [1], "plan field hardware.resolved must be a mapping, got [1]"),
    (("units",), {"0": {}}, "plan field units must be a list, got {'0': {}}"),
    (("units", 3), None, "plan field units[3] must be a mapping, got None"),
    (("units", 3, "kv", "gpu"), "all", "plan field units[3].kv.gpu must be a finite number, got 'all'"),
    (("units", 3, "kv", "gpu"), float("nan"), "plan field units[3].kv.gpu must be a finite number, got nan"),
    (("units", 3, "kv", "gpu"), 5.0, "plan field units[3].kv.gpu must be in [-1e-06, 1], got 5.0"),
    (("units", 3, "kv", "nvme"), 0.0, "plan field units[3].kv may hold only gpu, host, disk, got ['nvme']"),
    (("units", 3, "weights"), {"gpu": 0.5, "host": 0.2, "disk": 0.1},
     "plan field units[3].weights must sum to 1 (gpu + host + disk), got {'gpu': 0.5, 'host': 0.2, 'disk': 0.1}"),
    (("units", 3, "activations_on_host"), 1, "plan field units[3].activations_on_host must be true or false, got 1"),
    (("units", 3, "kv_actions"), [], "plan field units[3].kv_actions must hold one token split per context range, got []"),
    (("units", 3, "kv_actions"), [{"transfer": 1.0, "recompute": 0.0, "cpu": 0.0}],
     "plan field units[3].kv_actions must hold 4 token splits, as units[0] does, got '1 splits'"),
    (("units", 3, "kv_actions", 1, "cpu"), None, "plan field units[3].kv_actions[1].cpu must be a finite number, got None"),
    (("extras", "head"), None, "plan field extras.head must be a mapping, got None"),
    (("extras", "head"), {}, "plan field extras.head.on_gpu is missing"),
    (("extras", "activations"), {}, "plan field extras.activations.prefill_hidden_on_gpu is missing"),
    (("extras", "head", "on_gpu"), "yes", "plan field extras.head.on_gpu must be a finite number, got 'yes'"),
    (("extras", "activations", "prefill_hidden_on_gpu"), 2,
     "plan field extras.activations.prefill_hidden_on_gpu must be in [0, 1], got 2"),
    (("extras", "tables"), [], "plan field extras of a kv plan may hold only head, activations, context_ranges, "
                               "got ['tables']"),
    (("extras",), [], "plan field extras must be a mapping, got []"),
    (("kind",), 3, "plan field kind must be a string, got 3"),
    (("objective",), "speed", "plan field objective must be 'throughput' or 'latency' for a plan of kind 'kv', got 'speed'"),
])
def test_a_bad_field_names_its_path_rule_value_and_file(plan, path, value, message):
    d = copy.deepcopy(plan.to_dict())
    _set(d, path, value)
    with pytest.raises(PlanError) as err:
        Plan.from_dict(d, file="p.json")
    assert str(err.value) == f"{message} (p.json)"


def test_a_missing_kv_action_share_is_named(plan):
    d = copy.deepcopy(plan.to_dict())
    del d["units"][5]["kv_actions"][2]["recompute"]
    with pytest.raises(PlanError, match=r"^plan field units\[5\]\.kv_actions\[2\]\.recompute is missing \(p\.json\)$"):
        Plan.from_dict(d, file="p.json")


def test_recompute_without_layer_inputs_on_the_host_is_refused(plan):
    d = copy.deepcopy(plan.to_dict())
    d["units"][2]["activations_on_host"] = False
    d["units"][2]["kv_actions"][0].update(transfer=0.5, recompute=0.5, cpu=0.0)
    with pytest.raises(PlanError, match=r"units\[2\]\.kv_actions\[0\]\.recompute must be 0 when "
                                        r"units\[2\]\.activations_on_host is false"):
        Plan.from_dict(d, file="p.json")


def test_partial_shares_take_the_cost_models_defaults(plan):
    d = copy.deepcopy(plan.to_dict())
    d["units"][0]["weights"] = {}  # Fractions(): all on the GPU
    d["units"][0]["kv"] = {"host": 1.0, "gpu": 0.0}
    pols, _ = Plan.from_dict(d).policies()
    assert pols[0].weights.gpu == 1.0 and pols[0].kv.host == 1.0


def _walk(value, path=()):
    """Every (path, value) in a nested plan dict, layers limited to the first two."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:2]):
            yield from _walk(v, (*path, i))


def test_no_corruption_of_a_read_field_escapes_as_another_exception(plan):
    # Replace each value of the fields evaluate and replay read by values of every other JSON type:
    # from_dict either refuses it as a PlanError or the plan still gives its policies.
    d0 = plan.to_dict()
    read = ("kind", "status", "objective", "workload", "units", "extras")
    paths = [p for p, _ in _walk(d0) if p and p[0] in read]
    for path in paths:
        for bad in (None, "x", -1, 1.5, True, [], {}, [1], {"a": 1}):
            d = copy.deepcopy(d0)
            _set(d, path, bad)
            try:
                Plan.from_dict(d, file="p.json").policies()
            except PlanError:
                pass


def test_a_truncated_json_plan_is_a_plan_error_at_every_cut(plan, tmp_path):
    text = json.dumps(plan.to_dict(), indent=1)
    path = tmp_path / "cut.json"
    for cut in range(0, len(text), max(1, len(text) // 97)):
        path.write_text(text[:cut])
        with pytest.raises(PlanError, match=r"(malformed JSON at line \d+, column \d+|must be a JSON object).*cut\.json"):
            Plan.load(path)


def test_a_truncated_yaml_plan_is_a_plan_error(plan, tmp_path):
    import yaml

    text = yaml.safe_dump(plan.to_dict(), sort_keys=False)
    path = tmp_path / "cut.yaml"
    for cut in range(1, len(text), max(1, len(text) // 41)):
        if not text[cut:].strip():
            continue  # only the final newline cut: the whole plan, which loads (the step lands there by chance)
        path.write_text(text[:cut])
        with pytest.raises(PlanError, match=r"cut\.yaml"):
            Plan.load(path)


def test_a_corrupted_plan_file_is_a_plan_error(plan, tmp_path):
    text = json.dumps(plan.to_dict()).encode()
    path = tmp_path / "bad.json"
    path.write_bytes(text[:500] + b"\x00\xff" + text[502:])
    with pytest.raises(PlanError, match=r"plan file .*bad\.json is binary \(a NUL byte at offset 500\)"):
        Plan.load(path)
    path.write_bytes(text[:500] + b"\xff" + text[501:])
    with pytest.raises(PlanError, match=r"plan file .*bad\.json is not UTF-8 text: byte 0xff at offset 500"):
        Plan.load(path)
    with pytest.raises(PlanError, match=r"plan file .* is a directory"):
        Plan.load(tmp_path)


def test_a_yaml_plan_with_an_alias_is_refused(plan, tmp_path):
    import yaml

    text = yaml.safe_dump(plan.to_dict(), sort_keys=False).replace("explanation: ''", "explanation: &e x\nnote: *e")
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    with pytest.raises(PlanError, match=r"YAML anchors are not allowed \(&e at line \d+.*alias\.yaml"):
        Plan.load(path)


def test_an_oversized_plan_file_is_refused_with_the_limit(plan, tmp_path, monkeypatch):
    import solver.plan as plan_module

    path = tmp_path / "big.json"
    plan.save(path)
    monkeypatch.setattr(plan_module, "PLAN_MAX_BYTES", 1000)
    with pytest.raises(PlanError, match=r"plan file .*big\.json is [\d.]+ (KiB|bytes|MiB); the limit for a plan file is 1000 bytes"):
        Plan.load(path)


# ---------------------------------------------------------------------------------------------
# Plans carry their hardware: plan_system
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_system(tmp_path_factory):
    """A plan made on a system YAML of the user's own (a copy of the toy), with an override."""
    from tests.conftest import TOY

    path = tmp_path_factory.mktemp("hw") / "my-system.yaml"
    path.write_bytes(TOY.read_bytes())
    return path


@pytest.fixture(scope="module")
def own_plan(own_system, workload):
    system = load_system(own_system, ["link.h2d=12GB/s"])
    return system, plan_kv(workload, system, objective="latency", baselines=())


def _saved(plan, tmp_path, suffix=".json"):
    path = tmp_path / f"plan{suffix}"
    plan.save(path)
    return Plan.load(path)


def test_the_plan_records_its_hardware(own_plan, own_system):
    system, plan = own_plan
    hw = plan.hardware
    assert hw["source"] == str(own_system.resolve())
    assert hw["content_sha256"] == hashlib.sha256(own_system.read_bytes()).hexdigest()
    assert hw["overrides"] == ["link.h2d=12GB/s"]
    assert hw["resolved"] == system.to_dict()


def test_an_unchanged_system_file_is_loaded_again_with_the_plans_overrides(own_plan, tmp_path):
    system, plan = own_plan
    again, note = plan_system(_saved(plan, tmp_path))
    assert again == system and note is None
    assert again.link.h2d_bytes_per_s == 12e9  # the override is not dropped


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_deleted_system_file_is_rebuilt_from_the_record_and_recosts_exactly(own_plan, workload, tmp_path, suffix):
    system, plan = own_plan
    path = tmp_path / "gone.yaml"
    path.write_bytes(Path(plan.hardware["source"]).read_bytes())
    moved = dataclasses.replace(plan, hardware={**plan.hardware, "source": str(path)})
    loaded = _saved(moved, tmp_path, suffix)
    path.unlink()
    rebuilt, note = plan_system(loaded)
    assert rebuilt == system
    assert rebuilt.source == str(path) and rebuilt.overrides == ("link.h2d=12GB/s",)
    assert note == (f"the plan's hardware file {path} is not as recorded: it is gone; "
                    "re-costed on the values the plan recorded (hardware.resolved)")
    _, metrics = evaluate_plan(loaded, workload.with_batch(plan.predicted["batch"]), rebuilt)
    for key in ("prefill_s", "decode_s", "tokens_per_s"):
        assert metrics[key] == pytest.approx(plan.predicted[key], rel=1e-12), key


def test_a_changed_system_file_is_not_used_and_the_note_says_so(own_plan, tmp_path):
    system, plan = own_plan
    path = tmp_path / "edited.yaml"
    path.write_text(Path(plan.hardware["source"]).read_text().replace('"16 GiB"', '"24 GiB"'))
    loaded = Plan.from_dict({**plan.to_dict(), "hardware": {**plan.hardware, "source": str(path)}})
    rebuilt, note = plan_system(loaded)
    assert rebuilt == system and rebuilt.gpu.memory_bytes == 16 * 2**30
    assert "is not as recorded: it has changed since the plan was made (its SHA-256 differs)" in note


def test_hw_given_replaces_the_plans_hardware(own_plan):
    _, plan = own_plan
    system, note = plan_system(plan, hw="a100-40gb", overrides=["link.h2d=20GB/s"])
    assert system.name == "a100-40gb" and system.link.h2d_bytes_per_s == 20e9 and note is None


def test_overrides_apply_on_top_of_the_plans_own(own_plan):
    _, plan = own_plan
    system, _ = plan_system(plan, overrides=["gpu.memory=24GiB"])
    assert system.link.h2d_bytes_per_s == 12e9 and system.gpu.memory_bytes == 24 * 2**30
    assert system.overrides == ("link.h2d=12GB/s", "gpu.memory=24GiB")


def test_a_bundled_system_is_loaded_by_name_with_its_overrides(workload, tmp_path):
    system = load_system("a100-40gb", ["link.h2d=12GB/s"])
    plan = Plan.from_dict({**_stub(), "hardware": system.summary()})
    again, note = plan_system(plan)
    assert again == system and note is None
    # a bundled profile that changed since the plan was made: the note says what differs
    hw = copy.deepcopy(system.summary())
    hw["resolved"]["gpu"]["memory"]["value"] = "41 GiB"
    again, note = plan_system(Plan.from_dict({**_stub(), "hardware": hw}, file="p.json"))
    assert again == system
    assert note == ("the profile a100-40gb now differs from the values the plan recorded (gpu.memory.value: "
                    "'41 GiB' recorded, '40 GiB' now): re-costed on the profile as it is now; pass --hw to choose")


def _stub() -> dict:
    """The smallest plan that passes from_dict: no layer decisions (an infeasible plan), as tierplan
    0.x wrote it (schema version 1)."""
    return {"schema_version": 1, "kind": "kv", "status": "infeasible", "objective": "throughput",
            "workload": {"model": "llama-2-7b", "batch": 1, "prompt_len": 8, "gen_len": 2},
            "hardware": {"system": "a100-40gb"}, "predicted": None, "memory": {}, "capacity": {}, "layers": [],
            "head": {}, "activations": {}, "context_ranges": [], "baselines": {}, "solver": {}, "explanation": ""}


def test_an_old_plan_of_a_bundled_system_uses_it_by_name_with_a_note():
    plan = Plan.from_dict({**_stub(), "hardware": {"system": "t4", "overrides": ["link.h2d=5GB/s"]}})
    system, note = plan_system(plan)
    assert system.name == "t4" and system.link.h2d_bytes_per_s == 5e9
    assert "records only its system's name" in note


def test_an_old_plan_of_a_file_system_says_to_pass_hw():
    plan = Plan.from_dict({**_stub(), "hardware": {"system": "my-system", "file": "/gone/my-system.yaml"}},
                          file="old.json")
    with pytest.raises(PlanError) as err:
        plan_system(plan)
    assert str(err.value) == (
        "the plan does not carry its hardware: system 'my-system' is not bundled and the plan (from an older "
        "tierplan) records no profile values; pass --hw with the profile it was made on (old.json)")


def test_a_corrupted_hardware_record_is_a_profile_error_naming_the_plan(own_plan, tmp_path):
    _, plan = own_plan
    hw = copy.deepcopy(plan.hardware)
    hw["source"] = str(tmp_path / "never-there.yaml")
    hw["resolved"]["link"]["h2d"]["value"] = "fast"
    with pytest.raises(ProfileError, match=r"system.link.h2d must look like .*got 'fast' \(hardware.resolved in p\.json\)"):
        plan_system(Plan.from_dict({**plan.to_dict(), "hardware": hw}, file="p.json"))


def test_a_yaml_plan_with_shared_dicts_is_saved_without_aliases_and_loads(plan, tmp_path):
    shared = {"gpu": 1.0, "host": 0.0, "disk": 0.0}
    d = copy.deepcopy(plan.to_dict())
    for entry in d["units"]:
        entry["weights"] = shared  # one object in many places: PyYAML would write &id001 / *id001
    path = tmp_path / "shared.yaml"
    Plan.from_dict(d).save(path)
    assert "&id" not in path.read_text()
    assert Plan.load(path).layers[5]["weights"] == shared
