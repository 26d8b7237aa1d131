"""The TorchRec exporter (solver.export_torchrec): field names against TorchRec's, load factors, the
Python snippet, a hand-checked two-table export, what cannot be expressed, bad input.

TorchRec is not installed here: the snippet is checked with ``ast`` (it parses, it names every
table, its numbers are the export's), and field names against the sets copied, with their commit,
into the module.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.embeddings import load_rec_model, rec_model_from_dict
from costmodel.embeddings_cost import (
    EmbWorkload,
    TablePolicy,
    baseline_policies,
    memory_use,
)
from costmodel.kv import capacity
from hwprofiles import load_system
from solver.errors import PlanError
from solver.export_torchrec import (
    CACHE_ALGORITHMS,
    CACHE_PARAMS_FIELDS,
    EMB_OPTIM_TYPES,
    EMBEDDING_COMPUTE_KERNELS,
    FBGEMM_CACHE_ASSOC,
    FORMAT,
    PARAMETER_CONSTRAINTS_FIELDS,
    PARAMETER_CONSTRAINTS_SOURCE,
    SHARDING_TYPES,
    CacheAlgorithm,
    ComputeKernel,
    EmbOptimType,
    cache_load_factor,
    export_torchrec,
    fbgemm_cache_rows,
)

BASELINES = ("torchrec-uvm-cache:0.2", "cpu-hybrid", "all-gpu", "uvm", "torchrec-uvm-cache:0.05")


def _two_tables(table_optimizer: str = "sgd", **table_extra) -> dict:
    return {"name": "two", "dense_features": 4, "bottom_mlp": [16], "top_mlp": [1], "defaults": {"dim": 16},
            "optimizers": {"tables": table_optimizer}, "access": {"kind": "zipf", "alpha": 1.05},
            "tables": [{"name": "small", "rows": 1000}, {"name": "big", "rows": 10_000, **table_extra}]}


def _criteo() -> EmbWorkload:
    return EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=2048, prefetch=True)


@pytest.fixture(scope="module")
def a100():
    return load_system("a100-40gb")


@pytest.fixture(scope="module")
def criteo_exports(a100):
    wl = _criteo()
    return {name: export_torchrec(wl, baseline_policies(name, wl, a100), system=a100) for name in BASELINES}


def _mixed_policies(n: int) -> list[TablePolicy]:
    kinds = [TablePolicy(placement="gpu"), TablePolicy(placement="cache", cache_rows=1, cache_kind="static"),
             TablePolicy(placement="cache", cache_rows=1, cache_kind="lru", prefetch=True),
             TablePolicy(placement="uvm", update_on="cpu"), TablePolicy(placement="uvm", prefetch=True),
             TablePolicy(placement="cpu"), TablePolicy(placement="cache", cache_rows=0)]
    return [kinds[i % len(kinds)] for i in range(n)]


def _all_exports(criteo_exports):
    wl = _criteo()
    mixed = export_torchrec(wl, _mixed_policies(len(wl.model.tables)), one_tbe_per_table=True)
    return [*criteo_exports.values(), mixed]


# --- names against TorchRec's --------------------------------------------------------------------


def test_cited_field_sets_hold_the_fields_the_export_relies_on():
    # copied from meta-pytorch/torchrec@8cf003ae torchrec/distributed/planner/types.py: 16 fields
    assert len(PARAMETER_CONSTRAINTS_FIELDS) == len(set(PARAMETER_CONSTRAINTS_FIELDS)) == 16
    assert {"sharding_types", "compute_kernels", "pooling_factors", "num_poolings", "batch_sizes",
            "cache_params"} <= set(PARAMETER_CONSTRAINTS_FIELDS)
    assert set(CACHE_PARAMS_FIELDS) == {"algorithm", "load_factor", "reserved_memory", "precision",
                                        "prefetch_pipeline", "stats", "multipass_prefetch_config"}
    assert "8cf003aed8e7dd3d96a5e1f2107ff73a3a6384b4" in PARAMETER_CONSTRAINTS_SOURCE


def test_every_emitted_field_is_a_torchrec_field(criteo_exports):
    for ex in _all_exports(criteo_exports):
        d = ex.to_dict()
        assert d["format"] == FORMAT == "torchrec-parameter-constraints"
        assert d["torchrec_fields_from"] == PARAMETER_CONSTRAINTS_SOURCE
        assert list(d["tables"]) == [t.name for t in load_rec_model("criteo-kaggle").tables]
        for fields in d["tables"].values():
            assert set(fields) <= set(PARAMETER_CONSTRAINTS_FIELDS)
            if "cache_params" in fields:
                assert set(fields["cache_params"]) <= set(CACHE_PARAMS_FIELDS)
                assert fields["cache_params"]["algorithm"] in CACHE_ALGORITHMS


def test_kernels_sharding_types_and_optimizers_are_torchrec_and_fbgemm_values(criteo_exports):
    for member in ComputeKernel:
        assert EMBEDDING_COMPUTE_KERNELS[member.name] == member.value
    for member in EmbOptimType:
        assert EMB_OPTIM_TYPES[member.name] == member.value
    assert {a.value for a in CacheAlgorithm} == set(CACHE_ALGORITHMS)
    for ex in _all_exports(criteo_exports):
        d = ex.to_dict()
        for fields in d["tables"].values():
            assert set(fields["compute_kernels"]) <= set(EMBEDDING_COMPUTE_KERNELS.values())
            assert fields["sharding_types"] == [SHARDING_TYPES["TABLE_WISE"]] == ["table_wise"]
        assert d["fused_params"]["optimizer"] in EMB_OPTIM_TYPES


@pytest.mark.parametrize(("optimizer", "name"), [("sgd", "EXACT_SGD"), ("rowwise-adagrad", "EXACT_ROWWISE_ADAGRAD"),
                                                 ("adagrad", "EXACT_ADAGRAD"), ("adam", "ADAM")])
def test_optimizer_maps_to_fbgemm_name(optimizer, name):
    wl = EmbWorkload(model=rec_model_from_dict(_two_tables(optimizer)), batch=64)
    ex = export_torchrec(wl, [TablePolicy(placement="gpu")] * 2)
    assert ex.fused_params() == {"optimizer": name}
    assert f"EmbOptimType.{name}," in ex.to_python()


# --- load factors ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(1, 1 << 40), data=st.data())
def test_load_factor_never_gives_a_smaller_cache(rows, data):
    cache_rows = data.draw(st.integers(1, rows))
    lf = cache_load_factor(cache_rows, rows)
    assert 0 < lf <= 1
    assert lf * rows >= cache_rows  # FBGEMM truncates int(rows * lf): this is what it reads
    assert int(lf * rows) >= cache_rows
    assert lf * rows <= cache_rows + 1
    slots = fbgemm_cache_rows(rows, lf)
    assert slots % FBGEMM_CACHE_ASSOC == 0
    assert cache_rows <= slots < cache_rows + FBGEMM_CACHE_ASSOC + 1


def test_load_factor_rounds_up_where_the_quotient_rounds_down():
    # 0.29 x 100 = 28.999999999999996 in floats: the plain quotient would give FBGEMM 28 rows, not 29
    assert int(100 * (29 / 100)) == 28
    lf = cache_load_factor(29, 100)
    assert lf > 29 / 100 and int(100 * lf) == 29
    assert math.nextafter(29 / 100, 1.0) == lf  # one ulp up suffices


def test_realistic_cache_exports_hold_the_planned_rows(criteo_exports):
    tables = {t.name: t for t in load_rec_model("criteo-kaggle").tables}
    for name in ("torchrec-uvm-cache:0.2", "torchrec-uvm-cache:0.05"):
        ex = criteo_exports[name]
        cached = [t for t in ex.tables if t.compute_kernel is ComputeKernel.FUSED_UVM_CACHING]
        assert len(cached) == 26
        for t in cached:
            rows = tables[t.table].rows
            lf = ex.to_dict()["tables"][t.table]["cache_params"]["load_factor"]
            assert 0 < lf <= 1
            assert lf * rows >= t.cache_rows
            assert lf * rows <= t.cache_rows + 1
            assert t.cache_rows <= t.fbgemm_cache_rows <= t.cache_rows + FBGEMM_CACHE_ASSOC


@pytest.mark.parametrize(("cache_rows", "rows"), [(0, 10), (11, 10), (-1, 10), (1, 0), (1.5, 10), (True, 10)])
def test_load_factor_rejects_bad_sizes(cache_rows, rows):
    with pytest.raises(PlanError, match="cache_rows|rows"):
        cache_load_factor(cache_rows, rows)


# --- the Python snippet ---------------------------------------------------------------------------


def _constraints_dict(src: str) -> ast.Dict:
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "constraints":
            assert isinstance(node.value, ast.Dict)
            return node.value
    raise AssertionError("no `constraints: ... = {...}` in the snippet")


def _kwargs(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords}


def test_snippet_parses_and_carries_every_table_and_number(criteo_exports):
    for ex in _all_exports(criteo_exports):
        src = ex.to_python()
        d = _constraints_dict(src)
        assert [ast.literal_eval(k) for k in d.keys] == [t.table for t in ex.tables]
        for t, call in zip(ex.tables, d.values):
            assert isinstance(call, ast.Call) and call.func.id == "ParameterConstraints"
            kw = _kwargs(call)
            assert set(kw) <= set(PARAMETER_CONSTRAINTS_FIELDS)
            assert ast.unparse(kw["compute_kernels"]) == f"[EmbeddingComputeKernel.{t.compute_kernel.name}.value]"
            assert ast.literal_eval(kw["pooling_factors"]) == [t.pooling_factor]
            assert ast.literal_eval(kw["batch_sizes"]) == [2048]
            if t.compute_kernel is ComputeKernel.FUSED_UVM_CACHING:
                cp = _kwargs(kw["cache_params"])
                assert set(cp) <= set(CACHE_PARAMS_FIELDS)
                assert ast.literal_eval(cp["load_factor"]) == t.load_factor  # repr round-trips the float
                assert ast.unparse(cp["algorithm"]) == f"CacheAlgorithm.{t.cache_algorithm.value}"
            else:
                assert "cache_params" not in kw
        imports = {a.name for node in ast.parse(src).body if isinstance(node, ast.ImportFrom) for a in node.names}
        assert {"ParameterConstraints", "CacheParams", "ShardingType", "EmbeddingComputeKernel", "CacheAlgorithm",
                "EmbOptimType"} <= imports


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=2, max_size=2, unique=True))
def test_snippet_parses_whatever_the_table_names(names):
    spec = _two_tables()
    spec["name"] = names[0] + "\n# model"  # a model name in the header comment
    spec["tables"] = [{"name": names[0], "rows": 100}, {"name": names[1], "rows": 200}]
    wl = EmbWorkload(model=rec_model_from_dict(spec), batch=8)
    ex = export_torchrec(wl, [TablePolicy(placement="cpu"), TablePolicy(placement="cache", cache_rows=3,
                                                                        cache_kind="static")])
    d = _constraints_dict(ex.to_python())
    assert [ast.literal_eval(k) for k in d.keys] == names


def test_snippet_has_topology_only_with_a_system(a100):
    wl = _criteo()
    pols = baseline_policies("all-gpu", wl, a100)
    with_sys, without = export_torchrec(wl, pols, system=a100), export_torchrec(wl, pols)
    cap = capacity(a100)
    # the reservation: the plan's HBM outside TorchRec's shard estimate -- dense part and activations, and
    # each table's pooled-vector gradient g = B D 4 (TorchRec counts its ids and pooled output per shard)
    gpu = dict(memory_use(wl, pols).gpu_breakdown)
    reserved = math.ceil(gpu["dense"] + gpu["activations"] + sum(wl.batch * t.dim * 4 for t in wl.model.tables))
    hbm = int(cap["gpu_bytes"])
    assert with_sys.to_dict()["topology"] == {
        "world_size": 1, "compute_device": "cuda", "hbm_cap": hbm, "ddr_cap": int(cap["host_bytes"]),
        "storage_reservation": {"kind": "FixedPercentageStorageReservation",
                                "percentage": math.floor(reserved / hbm * 1e6) / 1e6, "reserved_bytes": reserved}}
    assert f"hbm_cap={hbm}" in with_sys.to_python()
    assert "storage_reservation=reservation" in with_sys.to_python()
    assert without.to_dict()["topology"] is None and "Topology(" not in without.to_python()
    ast.parse(without.to_python())


# --- a hand-checked export ------------------------------------------------------------------------


def test_two_tables_hand_checked():
    # small (1,000 rows) whole on the GPU; big: an LRU cache of 1,000 of its 10,000 rows ->
    # load_factor 1000 / 10000 = 0.1 (10000 * 0.1 == 1000.0 exactly in floats, no rounding up), and
    # FBGEMM's cache: (1000 + 31) // 32 = 32 sets of 32 = 1,024 rows.
    wl = EmbWorkload(model=rec_model_from_dict(_two_tables()), batch=2048)
    ex = export_torchrec(wl, [TablePolicy(placement="gpu"),
                              TablePolicy(placement="cache", cache_rows=1000, cache_kind="lru")])
    d = ex.to_dict()
    assert d["tables"] == {
        "small": {"sharding_types": ["table_wise"], "compute_kernels": ["fused"], "pooling_factors": [1.0],
                  "num_poolings": [1.0], "batch_sizes": [2048]},
        "big": {"sharding_types": ["table_wise"], "compute_kernels": ["fused_uvm_caching"], "pooling_factors": [1.0],
                "num_poolings": [1.0], "batch_sizes": [2048],
                "cache_params": {"algorithm": "LRU", "load_factor": 0.1, "prefetch_pipeline": False}},
    }
    assert d["fused_params"] == {"optimizer": "EXACT_SGD"}
    assert d["planned"]["big"] == {"placement": "cache", "rows": 10_000, "cache_rows": 1000, "fbgemm_cache_rows": 1024}
    assert d["planned"]["small"]["fbgemm_cache_rows"] == 0
    assert d["cannot_express"] == []
    assert json.loads(json.dumps(d)) == d
    assert "CacheParams(algorithm=CacheAlgorithm.LRU, load_factor=0.1, prefetch_pipeline=False)" in ex.to_python()


def test_prefetch_sets_prefetch_pipeline_and_names_the_pipeline():
    wl = EmbWorkload(model=rec_model_from_dict(_two_tables()), batch=64, prefetch=True)
    ex = export_torchrec(wl, [TablePolicy(placement="gpu"), TablePolicy(placement="cache", cache_rows=10)])
    assert ex.to_dict()["tables"]["big"]["cache_params"]["prefetch_pipeline"] is True
    assert any("PrefetchTrainPipelineSparseDist" in n for n in ex.notes)
    off = export_torchrec(wl, [TablePolicy(placement="gpu"), TablePolicy(placement="cache", cache_rows=10,
                                                                         prefetch=False)])
    assert off.table("big").prefetch_pipeline is False
    assert not any("PrefetchTrainPipelineSparseDist" in n for n in off.notes)


def test_shared_cache_note_and_one_tbe_per_table(criteo_exports):
    ex = criteo_exports["torchrec-uvm-cache:0.2"]
    assert any(n.startswith("Shared cache") for n in ex.notes)
    assert "use_one_tbe_per_table" not in ex.fused_params()
    wl = _criteo()
    own = export_torchrec(wl, baseline_policies("torchrec-uvm-cache:0.2", wl, load_system("a100-40gb")),
                          one_tbe_per_table=True)
    assert own.fused_params() == {"optimizer": "EXACT_SGD", "use_one_tbe_per_table": True}
    assert not any(n.startswith("Shared cache") for n in own.notes)
    assert '"use_one_tbe_per_table": True,' in own.to_python()


# --- what cannot be expressed ---------------------------------------------------------------------


def _lost(ex) -> set[tuple[str, str]]:
    return {(u.table, u.decision) for u in ex.cannot_express}


def test_cpu_hybrid_lists_placement_and_update_of_every_table(criteo_exports):
    ex = criteo_exports["cpu-hybrid"]
    names = [t.name for t in load_rec_model("criteo-kaggle").tables]
    assert _lost(ex) == {(n, d) for n in names for d in ("placement=cpu", "update_on=cpu")}
    assert {t.compute_kernel for t in ex.tables} == {ComputeKernel.FUSED_UVM}  # the nearest runnable
    assert all(u.why for u in ex.cannot_express)
    assert criteo_exports["all-gpu"].cannot_express == ()
    assert criteo_exports["torchrec-uvm-cache:0.2"].cannot_express == ()


def test_static_cache_exports_as_lfu_and_is_listed():
    wl = EmbWorkload(model=rec_model_from_dict(_two_tables()), batch=64)
    ex = export_torchrec(wl, [TablePolicy(placement="gpu"),
                              TablePolicy(placement="cache", cache_rows=500, cache_kind="static")])
    assert ex.table("big").cache_algorithm is CacheAlgorithm.LFU
    assert _lost(ex) == {("big", "cache_kind=static")}


def test_uvm_cpu_update_prefetch_and_empty_cache_are_listed():
    wl = EmbWorkload(model=rec_model_from_dict(_two_tables()), batch=64)
    ex = export_torchrec(wl, [TablePolicy(placement="uvm", update_on="cpu", prefetch=True),
                              TablePolicy(placement="cache", cache_rows=0)])
    assert _lost(ex) == {("small", "update_on=cpu"), ("small", "prefetch=true"), ("big", "cache_rows=0")}
    assert ex.table("big").compute_kernel is ComputeKernel.FUSED_UVM and ex.table("big").load_factor is None


def test_state_tier_follows_fbgemm_placement_of_the_state():
    # FBGEMM: rowwise state on the device for every table; a full state (adagrad, adam) of a uvm or
    # cached table in UVM. Row-wise Adagrad keeps 4 bytes per row: 10,000 rows -> 40,000 bytes.
    rw = EmbWorkload(model=rec_model_from_dict(_two_tables("rowwise-adagrad")), batch=64)
    ex = export_torchrec(rw, [TablePolicy(placement="gpu"), TablePolicy(placement="uvm", state_tier="host")])
    assert _lost(ex) == {("big", "state_tier=host")}
    assert "40,000 bytes" in ex.cannot_express[0].why
    assert export_torchrec(rw, [TablePolicy(placement="gpu"),
                                TablePolicy(placement="uvm", state_tier="gpu")]).cannot_express == ()
    ada = EmbWorkload(model=rec_model_from_dict(_two_tables("adagrad")), batch=64)
    ex = export_torchrec(ada, [TablePolicy(placement="gpu"),
                               TablePolicy(placement="cache", cache_rows=100, state_tier="gpu")])
    assert _lost(ex) == {("big", "state_tier=gpu")}
    assert export_torchrec(ada, [TablePolicy(placement="gpu"),
                                 TablePolicy(placement="cache", cache_rows=100)]).cannot_express == ()


def test_per_table_optimizer_and_row_bytes_are_listed():
    wl = EmbWorkload(model=rec_model_from_dict(_two_tables("sgd", optimizer="adam", dtype_bytes=8)), batch=64)
    ex = export_torchrec(wl, [TablePolicy(placement="gpu")] * 2)
    assert _lost(ex) == {("big", "optimizer=adam"), ("big", "dtype_bytes=8")}
    assert ex.fused_params() == {"optimizer": "EXACT_SGD"}


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_raises_plan_error_naming_field_and_value():
    wl = _criteo()
    pols = list(baseline_policies("all-gpu", wl, load_system("a100-40gb")))
    with pytest.raises(PlanError, match=r"policies must have one TablePolicy per table .*\(26 tables\), got 25"):
        export_torchrec(wl, pols[:-1])
    with pytest.raises(PlanError, match=r"policies\[3\] \(table 'cat_3'\) must be a TablePolicy, got dict"):
        export_torchrec(wl, pols[:3] + [{"placement": "gpu"}] + pols[4:])
    with pytest.raises(PlanError, match="policies must be a list or tuple.*generator"):
        export_torchrec(wl, (p for p in pols))
    with pytest.raises(PlanError, match="wl must be an EmbWorkload, got RecModel"):
        export_torchrec(wl.model, pols)
    with pytest.raises(PlanError, match="system must be a System or None, got str"):
        export_torchrec(wl, pols, system="a100-40gb")
    with pytest.raises(PlanError, match="one_tbe_per_table must be true or false, got 1"):
        export_torchrec(wl, pols, one_tbe_per_table=1)
    small = EmbWorkload(model=rec_model_from_dict(_two_tables()), batch=8)
    with pytest.raises(PlanError, match=r"policies\[0\] \(table 'small'\): cache_rows must be at most the "
                                        r"table's 1,000 rows, got 1,001"):
        export_torchrec(small, [TablePolicy(placement="cache", cache_rows=1001), TablePolicy(placement="gpu")])
    with pytest.raises(PlanError, match="table must be one of"):
        export_torchrec(small, [TablePolicy(placement="gpu")] * 2).table("nope")


def test_export_is_frozen():
    wl = EmbWorkload(model=rec_model_from_dict(_two_tables()), batch=8)
    ex = export_torchrec(wl, [TablePolicy(placement="gpu")] * 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.batch = 1  # type: ignore[misc]


def test_torchrec_itself_plans_the_exported_constraints(check_rows):
    # Where TorchRec imports (not in CI: it is not a dependency, and fbgemm_gpu needs the NVIDIA driver's
    # libraries to load), its own EmbeddingShardingPlanner plans every export of
    # benchmarks/torchrec_export_check.py with the compute kernels and load factors the export asked for.
    pytest.importorskip("torchrec")
    rows = check_rows("torchrec_export_check.py")
    assert len(rows) >= 6
    for r in rows:
        assert r["error"] is None and r["agree"], r
    assert {k for r in rows for k in r["torchrec"]} >= {"fused", "fused_uvm_caching", "fused_uvm"}


def test_the_torchrec_check_says_when_there_is_nothing_to_check():
    # In CI torchrec is absent: the check prints why and exits 0, so the script is exercised there too.
    import subprocess
    import sys
    from pathlib import Path

    imports = True
    try:
        import torchrec  # noqa: F401
    except Exception:  # noqa: BLE001 -- not installed, or fbgemm_gpu does not load
        imports = False
    if imports:
        pytest.skip("torchrec imports here: the check runs in full (test above)")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "torchrec_export_check.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    assert "nothing to check" in out.stdout
