"""The embeddings replay on the CPU: the same code paths a GPU runs, for real, with the throttled link."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from costmodel.embeddings import (
    HistogramAccess,
    RecModel,
    Table,
    TraceAccess,
    ZipfAccess,
    load_rec_model,
)
from costmodel.embeddings_cost import (
    EmbWorkload,
    TablePolicy,
    all_gpu,
    baseline_policies,
    evaluate_embeddings,
    memory_use,
    uvm_all,
)
from hwprofiles import load_system
from solver.errors import PlanError
from validate import ReplayError
from validate.replay_embeddings import (
    EmbReplayer,
    GatherLink,
    choose_tables,
    draw_ids,
    hottest_rows,
    replay_embeddings,
    replay_table,
    row_grads,
    scale_slice,
    scaled_access,
)
from validate.report import ordering
from validate.suite_embeddings import (
    run_embeddings_suite,
    suite_workloads,
    write_embeddings_record,
)

RECORDED_PROFILE = Path(__file__).resolve().parents[2] / "validate" / "records" / "cpu-2core-2026-12-01-profile.yaml"
QUIET = {"progress": lambda m: None}


@pytest.fixture(scope="module")
def cpu_system(tmp_path_factory):
    """The profile ``tierplan profile`` measured on this repo's 2-core CPU machine (kept in
    validate/records) when the tests run there, else this machine profiled now."""
    from validate.replay import machine_name, profile_tags

    if RECORDED_PROFILE.is_file():
        system = load_system(RECORDED_PROFILE)
        if profile_tags(system.description).get("machine") == machine_name(torch.device("cpu")):
            return system
    from validate.profile import profile_machine, write_profile

    path = tmp_path_factory.mktemp("prof") / "cpu.yaml"
    write_profile(profile_machine(quick=True, device="cpu", progress=lambda m: None), path)
    return load_system(path)


def _model(n_tables=3, rows=512, dim=8, pooling=3.0, alpha=0.9, optimizers=None, table_optimizer="sgd",
           dense_optimizer="sgd", name="tiny"):
    optimizers = optimizers or [None] * n_tables
    tables = tuple(Table(name=f"t{i}", rows=rows, dim=dim, pooling=pooling, optimizer=optimizers[i],
                         access=ZipfAccess(rows=rows, alpha=alpha)) for i in range(n_tables))
    return RecModel(name=name, tables=tables, dense_features=5, bottom_mlp=(16, dim), top_mlp=(8, 1),
                    table_optimizer=table_optimizer, dense_optimizer=dense_optimizer)


MIXED = [
    TablePolicy(placement="gpu"),
    TablePolicy(placement="cache", cache_rows=64, cache_kind="lru"),
    TablePolicy(placement="cache", cache_rows=64, cache_kind="static", prefetch=True),
    TablePolicy(placement="uvm", prefetch=True),
    TablePolicy(placement="uvm", update_on="cpu"),
    TablePolicy(placement="cpu"),
]


# ------------------------------------------------------------------------------------ a replay
def test_replay_of_every_placement_gives_finite_times_per_iteration(cpu_system):
    opts = ["sgd", "rowwise-adagrad", "adam", "adagrad", "rowwise-adagrad", "adam"]
    wl = EmbWorkload(model=_model(n_tables=6, optimizers=opts, dense_optimizer="adam"), batch=64)
    r = replay_embeddings(wl, cpu_system, MIXED, iterations=3, repeats=2, warmup=1, device="cpu", **QUIET)
    assert len(r["iterations"]) == 3
    for row in r["iterations"]:
        assert math.isfinite(row["predicted_s"]) and row["predicted_s"] > 0
        assert math.isfinite(row["measured_s"]) and row["measured_s"] > 0
        assert row["measured_min_s"] <= row["measured_s"] <= row["measured_max_s"]
        assert row["error_pct"] == pytest.approx(100 * (row["predicted_s"] - row["measured_s"]) / row["measured_s"])
        # the iteration is its three stages, one after another
        assert sum(row["stages"][s]["measured_s"] for s in ("fetch", "compute", "host_update")) == \
            pytest.approx(row["measured_s"], rel=0.05)
    # the prediction is the cost model's for the replayed workload, stage by stage
    cost = evaluate_embeddings(wl, cpu_system, MIXED)
    assert r["predicted_s"] == pytest.approx(cost.iteration_s)
    assert {k: v["predicted_s"] for k, v in r["stages"].items()} == pytest.approx({s.value: t for s, t in cost.stage_s})
    assert r["mean_abs_error_pct"] <= r["max_abs_error_pct"]
    assert r["slice"]["tables"] == list(range(6)) and r["slice"]["scaled"] == []
    assert [t["placement"] for t in r["tables"]] == ["gpu", "cache", "cache", "uvm", "uvm", "cpu"]
    gpu_row, uvm_row, cpu_row = r["tables"][0], r["tables"][3], r["tables"][5]
    assert gpu_row["measured_hit_rate"] == 1.0 and uvm_row["measured_hit_rate"] == 0.0
    assert cpu_row["measured_cold_rows"] == 0  # pooled on the host: nothing gathered over the link
    # 64 x 3 = 192 lookups a batch; distinct rows of a Zipf(0.9) table of 512 rows: the model's
    # expectation and the replay's mean over 6 batches agree to within sampling noise
    assert uvm_row["measured_distinct_rows"] == pytest.approx(uvm_row["predicted_distinct_rows"], rel=0.15)
    # the cold rows a cache fetches are the distinct rows it does not hold (not U (1 - h), which
    # undercounts them: the hits repeat the hot rows), for the static cache exactly in expectation and
    # for the LRU cache by Che's approximation
    lru_row, static_row = r["tables"][1], r["tables"][2]
    assert static_row["measured_cold_rows"] == pytest.approx(static_row["predicted_cold_rows"], rel=0.15)
    assert lru_row["measured_cold_rows"] == pytest.approx(lru_row["predicted_cold_rows"], rel=0.3)
    h = static_row["predicted_hit_rate"]
    assert static_row["measured_cold_rows"] > 1.2 * static_row["predicted_distinct_rows"] * (1 - h)
    assert r["memory"]["measured_peak_gpu_bytes"] is None and r["memory"]["predicted_gpu_bytes"] > 0
    assert r["link"]["h2d_bytes_per_s"] == 1e9  # the profile's throttled-copier tag
    assert r["warnings"] == []
    assert "iteration" in replay_table(r)
    json.dumps(r)


def test_uvm_is_measurably_slower_than_all_gpu_through_the_throttled_link(cpu_system):
    # 2 tables, 512 x 32 = 16384 lookups each over 32768 rows of 512 B (Zipf 0.5: most rows
    # distinct): ~6 MB of cold rows a table, 12 MB a batch up and the same down, at 0.25 GB/s:
    # >= 48 ms of fetch alone, against a few ms for the whole all-GPU iteration.
    tables = tuple(Table(name=f"t{i}", rows=1 << 15, dim=128, pooling=32, access=ZipfAccess(rows=1 << 15, alpha=0.5))
                   for i in range(2))
    wl = EmbWorkload(model=RecModel(name="wide", tables=tables, dense_features=4, bottom_mlp=(128,), top_mlp=(4, 1)),
                     batch=512)
    rate = 0.25e9
    kw = dict(iterations=2, repeats=1, warmup=1, device="cpu", link_bytes_per_s=rate, **QUIET)
    gpu = replay_embeddings(wl, cpu_system, all_gpu(wl), **kw)
    uvm = replay_embeddings(wl, cpu_system, uvm_all(wl), **kw)
    # The copier sleeps until the bytes moved match the rate, so a fetch can never beat
    # (cold row bytes + id bytes) / rate: a lower bound that no machine noise can break.
    rep = EmbReplayer(wl, uvm_all(wl), torch.device("cpu"), n_batches=4, link_bytes_per_s=(rate, rate))
    try:
        ts = rep.tables
        fetch_bytes = [sum(t.steps[k].cold_rows.numel() * 512 + t.steps[k].bundle.nbytes for t in ts) for k in (1, 2)]
    finally:
        rep.close()
    for row, nbytes in zip(uvm["iterations"], fetch_bytes):
        assert nbytes > 10e6
        assert row["stages"]["fetch"]["measured_s"] >= nbytes / rate * (1 - 1e-6)
    assert uvm["measured_s"] > 2 * gpu["measured_s"]
    assert uvm["link"]["moved"]["h2d_bytes"] > 3 * 10e6  # warm-up and two timed batches
    assert uvm["predicted_s"] > 2 * gpu["predicted_s"]


# ------------------------------------------------------------------------------------ training is right
def _weights(rep: EmbReplayer) -> list[torch.Tensor]:
    return [ts.logical_weight() for ts in rep.tables]


def _states(rep: EmbReplayer) -> list[torch.Tensor | None]:
    out = []
    for ts in rep.tables:
        st = ts.state_dev if ts.state_dev is not None else ts.state_host
        out.append(None if st is None else st.detach().cpu().clone())
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise-adagrad", "adagrad", "adam"])
def test_updated_rows_are_exactly_the_distinct_rows_touched(optimizer):
    wl = EmbWorkload(model=_model(n_tables=6, rows=64, dim=4, pooling=2.0, table_optimizer=optimizer), batch=8)
    rep = EmbReplayer(wl, MIXED, torch.device("cpu"), n_batches=3, seed=3)
    try:
        before, state_before = _weights(rep), _states(rep)
        rep.iteration(0)
        after, state_after = _weights(rep), _states(rep)
        for ts, w0, w1, s0, s1 in zip(rep.tables, before, after, state_before, state_after):
            touched = set(ts.steps[0].ids.tolist())  # 8 x 2 = 16 lookups
            assert touched == set(ts.steps[0].uniq.tolist())
            changed = set(torch.nonzero((w0 != w1).any(dim=1)).flatten().tolist())
            assert changed == touched, (ts.placement, optimizer)
            if s0 is not None:  # the optimizer state moves for the same rows only
                assert set(torch.nonzero((s0 != s1).any(dim=1)).flatten().tolist()) == touched
    finally:
        rep.close()


def test_the_cache_holds_fbgemm_bookkeeping_at_the_modelled_size():
    # The replay keeps its slot map on the host but allocates FBGEMM's bookkeeping on the device, so a
    # CUDA peak-memory measurement holds the bytes memory_use counts as cache_state.
    pols = [TablePolicy(placement="cache", cache_rows=16, cache_kind="lru"),
            TablePolicy(placement="cache", cache_rows=16, cache_kind="static", prefetch=True),
            TablePolicy(placement="gpu")]
    wl = EmbWorkload(model=_model(n_tables=3, rows=64, dim=4, pooling=2.0), batch=8)
    rep = EmbReplayer(wl, pols, torch.device("cpu"), n_batches=2, seed=1)
    try:
        held = [sum(t.numel() * t.element_size() for t in ts.cache_state_dev) for ts in rep.tables]
    finally:
        rep.close()
    # lru: 4 x 64 map + (8 + 8) x 16 slots; static (LFU), prefetched: 4 x 64 + 8 x 65 + (8 + 4) x 16; gpu: none
    assert held == [256 + 256, 256 + 520 + 192, 0]
    assert sum(held) == dict(memory_use(wl, pols).gpu_breakdown)["cache_state"]


def test_every_placement_trains_the_same_model():
    # Same seed, same ids, same arithmetic: where the rows live must not change what they become.
    # Prefetched uvm and cache tables read rows the previous batch updated through the forwarding
    # of its write-backs; an LRU cache evicts and writes back; the CPU pools and updates on the host.
    placements = {
        "gpu": TablePolicy(placement="gpu"),
        "lru": TablePolicy(placement="cache", cache_rows=16, cache_kind="lru"),
        "lru-prefetch": TablePolicy(placement="cache", cache_rows=16, cache_kind="lru", prefetch=True),
        "static-prefetch": TablePolicy(placement="cache", cache_rows=16, cache_kind="static", prefetch=True),
        "uvm-prefetch": TablePolicy(placement="uvm", prefetch=True, state_tier="host"),
        "cpu": TablePolicy(placement="cpu"),
    }
    wl = EmbWorkload(model=_model(n_tables=2, rows=64, dim=4, pooling=4.0, alpha=1.2,
                                  table_optimizer="rowwise-adagrad"), batch=16)
    final = {}
    for name, pol in placements.items():
        rep = EmbReplayer(wl, [pol, pol], torch.device("cpu"), n_batches=6, seed=5)
        try:
            for k in range(5):
                rep.iteration(k)
            final[name] = _weights(rep)
        finally:
            rep.close()
    for name, ws in final.items():
        for a, b in zip(final["gpu"], ws):
            assert torch.allclose(a, b, rtol=0, atol=1e-6), name  # fp32 sums in one order: equal


def test_row_grads_sum_each_rows_pooled_gradients():
    # lookups -> distinct rows [2, 0, 2, 1]; bags of lookups [0, 0, 1, 1]; bag gradients 1 and 10:
    # row 0 gets bag 0 (1); row 1 gets bag 1 (10); row 2 gets bag 0 and bag 1 (11).
    g = row_grads(torch.tensor([2, 0, 2, 1]), torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0], [10.0]]), 3)
    assert g.flatten().tolist() == [1.0, 10.0, 11.0]


def test_dcnv2_slice_replays_with_its_rank_cut_to_the_slice_width(cpu_system):
    # mlperf-dlrm-dcnv2: 26 tables of dim 128, 3 cross layers of rank 512, row-wise Adagrad tables.
    # Two tables make a (2 + 1) x 128 = 384-wide cross network: its rank is cut to 384.
    wl = EmbWorkload(model=load_rec_model("mlperf-dlrm-dcnv2"), batch=32)
    pols = uvm_all(wl)
    r = replay_embeddings(wl, cpu_system, pols, tables=2, iterations=1, repeats=1, warmup=1, device="cpu",
                          max_table_bytes=8 << 20, **QUIET)
    assert {"dcn_rank": 384, "of_dcn_rank": 512} in r["slice"]["scaled"]
    assert math.isfinite(r["measured_s"]) and r["tables"][0]["optimizer"] == "adagrad"


def test_a_saved_plan_replays_with_its_own_policies(cpu_system):
    from solver.embeddings import plan_embeddings
    from solver.embeddings_plan import to_plan
    from validate.replay_embeddings import replay_plan
    from validate.suite_embeddings import tight_system

    wl = EmbWorkload(model=_model(n_tables=3, rows=512, dim=8), batch=32)
    tight = tight_system(wl, cpu_system)
    emb = plan_embeddings(wl, tight)
    plan = to_plan(wl, tight, emb)
    with pytest.raises(PlanError, match="cannot load the plan.s model .tiny."):  # made in memory: no file
        replay_plan(plan, cpu_system, device="cpu", **QUIET)
    r = replay_plan(plan, cpu_system, model=wl.model, iterations=1, repeats=1, warmup=1, device="cpu", **QUIET)
    assert [t["placement"] for t in r["tables"]] == [p.placement.value for p in emb.policies]
    assert r["predicted_s"] == pytest.approx(evaluate_embeddings(wl, cpu_system, emb.policies).iteration_s)


# ------------------------------------------------------------------------------------ the ordering check
def test_ordering_check_can_fail_on_an_inverted_prediction(cpu_system):
    tables = tuple(Table(name=f"t{i}", rows=1 << 14, dim=128, pooling=16, access=ZipfAccess(rows=1 << 14, alpha=0.5))
                   for i in range(2))
    wl = EmbWorkload(model=RecModel(name="wide", tables=tables, dense_features=4, bottom_mlp=(128,), top_mlp=(4, 1)),
                     batch=256)
    cases = []
    for name in ("all-gpu", "uvm"):
        r = replay_embeddings(wl, cpu_system, baseline_policies(name, wl, cpu_system), iterations=2, repeats=1,
                              warmup=1, device="cpu", link_bytes_per_s=0.25e9, **QUIET)
        cases.append({"case": name, "model": "wide", "status": "replayed", "predicted_s": r["predicted_s"],
                      "measured_s": r["measured_s"], "error_pct": r["error_pct"], "policy_digest": r["policy_digest"]})
    assert cases[1]["measured_s"] > 1.5 * cases[0]["measured_s"]  # >= 8 MB a batch each way at 0.25 GB/s
    assert ordering(cases)["agree"] == 1
    inverted = [dict(cases[0], predicted_s=cases[1]["predicted_s"]), dict(cases[1], predicted_s=cases[0]["predicted_s"])]
    order = ordering(inverted)
    assert order["pairs"] == 1 and order["agree"] == 0
    assert order["disagreements"][0]["why"] == "predicted apart, measured in the other order"


def test_suite_runs_its_cases_and_keeps_a_record(cpu_system, tmp_path):
    wl = EmbWorkload(model=_model(n_tables=2, rows=256, dim=8, pooling=2.0), batch=32)
    r = run_embeddings_suite(cpu_system, device="cpu", workloads={"tiny": wl}, iterations=1, repeats=1, warmup=1,
                             **QUIET)
    names = [c["case"] for c in r["cases"]]
    assert names == ["tiny plan (tight memory)", "tiny all-gpu", "tiny cpu-hybrid", "tiny uvm",
                     "tiny torchrec-uvm-cache:0.2"]
    replayed = [c for c in r["cases"] if c["status"] == "replayed"]
    assert len(replayed) >= 4
    o = r["summary"]["ordering"]
    distinct = len({c["policy_digest"] for c in replayed})
    assert o["pairs"] == distinct * (distinct - 1) // 2 and 0 <= o["agree"] <= o["pairs"]
    assert r["summary"]["mean_abs_error_pct"] <= r["summary"]["max_abs_error_pct"]
    assert r["suite"] == "embeddings" and r["device"] == "cpu" and r["torch"] == torch.__version__
    assert set(r["baseline_time_over_plan_time"].get("tiny", {})) <= {"all-gpu", "cpu-hybrid", "uvm",
                                                                       "torchrec-uvm-cache:0.2"}
    path = write_embeddings_record(r, tmp_path)
    assert path.name.startswith("embeddings-cpu-") and json.loads(path.read_text())["suite"] == "embeddings"
    assert write_embeddings_record(r, tmp_path).name.endswith("-2.json")  # never overwrites a record


def test_cpu_suite_workloads_fit_the_budget():
    wls = suite_workloads(torch.device("cpu"))
    assert set(wls) == {"synthetic", "criteo-kaggle"}
    criteo = wls["criteo-kaggle"].model
    assert len(criteo.tables) == 4 and criteo.top_mlp_in_features == 16 + 5 * 4 // 2
    for wl in wls.values():
        m = wl.model
        assert sum(t.bytes + m.table_state_bytes(t) for t in m.tables) <= 256 << 20


# ------------------------------------------------------------------------------------ slices and ids
def test_slice_keeps_every_placement_and_scales_rows_to_the_budget(cpu_system):
    wl = EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=128)
    pols = list(all_gpu(wl))
    pols[2] = TablePolicy(placement="cache", cache_rows=2_026_246)  # cat_2: 10,131,227 rows, 20 % cached
    pols[20] = TablePolicy(placement="cpu")
    idx = choose_tables(pols, 3, sizes=[t.bytes for t in wl.model.tables])
    assert {pols[i].placement.value for i in idx} == {"gpu", "cache", "cpu"} and len(idx) == 3
    # Budget 16 MiB of fp32 rows of width 16 (64 B, SGD: no state): the largest table the gpu group
    # spreads over is cat_11 (8.35M rows); cat_2 and cat_20 are cut to one cap C with
    # 3 C x 64 <= 2^24 when all three are cut: C = floor(2^24 / 192) = 87381.
    sliced, spols, cut = scale_slice(wl, pols, idx, 16 << 20)
    assert [t.rows for t in sliced.model.tables] == [87381] * 3 and len(cut) == 3
    cached = next(p for p in spols if p.placement.value == "cache")
    assert cached.cache_rows == round(2_026_246 * 87381 / 10_131_227)  # the load factor kept: 17476
    r = replay_embeddings(wl, cpu_system, pols, tables=3, iterations=1, repeats=1, warmup=1, device="cpu",
                          max_table_bytes=16 << 20, **QUIET)
    assert r["slice"]["tables"] == idx and r["slice"]["scaled"] == cut
    assert r["predicted_s"] == pytest.approx(evaluate_embeddings(sliced, cpu_system, spols).iteration_s)
    assert r["predicted_full_model_s"] == pytest.approx(evaluate_embeddings(wl, cpu_system, pols).iteration_s)


def test_scaled_access_keeps_every_lookup():
    h = scaled_access(HistogramAccess(rows=6, counts=np.array([5.0, 1, 1, 2, 0, 3])), 3)
    assert h.counts.tolist() == [7.0, 1.0, 4.0]  # rows i and i + 3 fold together
    t = scaled_access(TraceAccess(rows=10, ids=np.array([9, 3, 4])), 4)
    assert t.ids.tolist() == [1, 3, 0]
    assert scaled_access(ZipfAccess(rows=100, alpha=1.3), 7) == ZipfAccess(rows=7, alpha=1.3)


def test_ids_and_hot_rows_follow_the_access_distribution():
    trace = TraceAccess(rows=5, ids=np.array([4, 4, 1, 0, 4]))
    rng = np.random.default_rng(0)
    assert [draw_ids(trace, 2, rng, k).tolist() for k in range(3)] == [[4, 4], [1, 0], [4, 4]]
    assert hottest_rows(trace, 2).tolist() == [4, 0]  # 4 three times, then 0 and 1 once (stable order)
    z = draw_ids(ZipfAccess(rows=1000, alpha=1.2), 20000, rng, 0)
    assert z.min() >= 0 and z.max() < 1000 and np.mean(z == 0) > np.mean(z == 1) > np.mean(z == 10)


def test_gather_link_moves_rows_and_paces_them():
    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

        def sleep(self, s):
            self.t += s

    clock = Clock()
    link = GatherLink(1e5, inline=True, clock=clock, sleep=clock.sleep)  # 16-byte rows: 160 us each
    table, out = torch.arange(40.0).view(10, 4), torch.zeros(3, 4)
    link.wait_host(link.submit_ops([("gather", out, table, torch.tensor([7, 0, 7]))]))
    assert out[:, 0].tolist() == [28.0, 0.0, 28.0]
    assert clock.t == pytest.approx(3 * 16 / 1e5)  # 3 rows of 16 bytes at 0.1 MB/s: all of it pacing
    link.wait_host(link.submit_ops([("scatter", table, torch.full((2, 4), -1.0), torch.tensor([1, 2]))]))
    assert table[1:3].eq(-1).all() and table[0, 0] == 0 and clock.t == pytest.approx(5 * 16 / 1e5)
    with pytest.raises(ReplayError, match="must be 'copy', 'gather' or 'scatter', got 'move'"):
        link.submit_ops([("move", out, table)])


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"iterations": 0}, r"iterations must be a positive integer, got 0"),
    ({"repeats": -2}, r"repeats must be a positive integer, got -2"),
    ({"warmup": 1.5}, r"warmup must be an integer >= 0, got 1.5"),
    ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
    ({"tables": 0}, r"tables must be a positive integer, got 0"),
    ({"tables": [0, 7]}, r"tables must be distinct indices in \[0, 3\), got \[0, 7\]"),
    ({"tables": "all"}, r"tables must be a positive integer, .* got 'all'"),
    ({"device": "tpu"}, r"device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ({"max_table_bytes": 0}, r"max_table_bytes must be a positive finite number of bytes, got 0"),
    ({"link_bytes_per_s": -1.0}, r"link_bytes_per_s must be a positive rate .* got -1.0"),
])
def test_bad_arguments_name_the_field_and_value(cpu_system, kwargs, match):
    wl = EmbWorkload(model=_model(), batch=8)
    with pytest.raises(ReplayError, match=match):
        replay_embeddings(wl, cpu_system, all_gpu(wl), **{"device": "cpu", **kwargs}, **QUIET)


def test_bad_policies_are_refused(cpu_system):
    wl = EmbWorkload(model=_model(), batch=8)
    with pytest.raises(ReplayError, match=r"policies must be one TablePolicy per table of 'tiny' \(3\), got 2"):
        replay_embeddings(wl, cpu_system, all_gpu(wl)[:2], device="cpu", **QUIET)
    pols = [TablePolicy(placement="cache", cache_rows=600)] * 3
    with pytest.raises(ReplayError, match=r"policies\[0\]\.cache_rows must be at most table 't0''s 512 rows, got 600"):
        replay_embeddings(wl, cpu_system, pols, device="cpu", **QUIET)
    with pytest.raises(ReplayError, match=r"policies\[1\] must be a TablePolicy, got str"):
        replay_embeddings(wl, cpu_system, [TablePolicy(placement="gpu"), "gpu", "gpu"], device="cpu", **QUIET)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replay_on_cuda_measures_peak_memory(cpu_system):  # pragma: no cover - runs where a GPU is
    # the CPU profile predicts (a warning says it is not this machine); the path and the memory are checked
    wl = EmbWorkload(model=_model(n_tables=6), batch=256)
    r = replay_embeddings(wl, cpu_system, MIXED, iterations=2, repeats=1, device="cuda", **QUIET)
    assert r["memory"]["measured_peak_gpu_bytes"] > 0
    assert all(math.isfinite(x["measured_s"]) and x["measured_s"] > 0 for x in r["iterations"])
    assert any("not on this machine" in w for w in r["warnings"])


def test_cli_replays_an_embeddings_plan_and_refuses_kv_flags(tmp_path, capsys):
    from tierplan.cli import main

    path = tmp_path / "plan.json"
    assert main(["plan", "embeddings", "--model", "criteo-kaggle", "--batch", "512", "--set", "gpu.memory=2GiB",
                 "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["replay", str(path), "--tables", "2", "--iterations", "2", "--repeats", "1", "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["iterations"]) == 2 and out["measured_s"] > 0 and out["predicted_s"] > 0
    assert main(["replay", str(path), "--layers", "2"]) == 2
    assert "--layers is for KV plans" in capsys.readouterr().err
