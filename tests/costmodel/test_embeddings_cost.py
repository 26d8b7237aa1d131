"""Per-iteration cost of embedding placements (costmodel.embeddings_cost).

Toy system (tests/data/toy-system.yaml): GPU 16 GiB (1 GiB reserved), 1 TB/s HBM, 10 TFLOP/s fp32;
host 128 GiB, 100 GB/s; link 10 GB/s both ways, 0 latency, pageable 50 % (so UVM gathers run at
5 GB/s), bidirectional 100 %; flat 100 % efficiency curves, no launch overhead.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.embeddings import HistogramAccess, RecModel, Table, ZipfAccess, load_rec_model
from costmodel.embeddings_cost import (
    BASELINES,
    EmbWorkload,
    Placement,
    Stage,
    TablePolicy,
    baseline_policies,
    dense_gpu_s,
    dense_ops,
    evaluate_embeddings,
    fae,
    table_traffic,
    largest_to_cpu,
    torchrec_cacheability,
    torchrec_estimated_hit_rate,
    torchrec_proportional,
    torchrec_uvm_cache,
)
from costmodel.kv import capacity
from costmodel.errors import WorkloadError
from costmodel.kv import Resource
from hwprofiles import apply_overrides, load_system

TOY = Path(__file__).resolve().parents[1] / "data" / "toy-system.yaml"


def _uniform(rows: int) -> HistogramAccess:
    return HistogramAccess(rows=rows, counts=np.ones(rows))


def _two_tables(access=None) -> RecModel:
    """Two 1000-row tables of width 4 (fp32 rows of 16 B), SGD; dense 4 -> [8, 4], top [4, 1]."""
    tables = tuple(Table(name=f"t{i}", rows=1000, dim=4, access=access or _uniform(1000)) for i in range(2))
    return RecModel(name="toy-rec", tables=tables, dense_features=4, bottom_mlp=(8, 4), top_mlp=(4, 1))


@pytest.fixture(scope="module")
def rec():
    return _two_tables()


def test_dense_time_by_hand(toy, rec):
    wl = EmbWorkload(model=rec, batch=1000)
    # Per op, each on its own roofline (flat curves, no launch overhead): every op here is memory-bound
    # (intensity < 2 FLOP/B, the toy's ridge is 10 TFLOP/s / 1 TB/s = 10), so time = bytes / 1 TB/s.
    # B = 1000, dt = 4; layers bottom 4->8 (first: no dX), 8->4; top 7->4, 4->1 (last: sigmoid + BCE).
    # A layer k->n: fwd, dW, dX each 4 (B k + B n + k n); ReLU 2 + 3 = 5 x 4 B n; loss 3 + 3 = 6 x 4 B n;
    # bias grad 4 (B n + n).
    #   bottom[0] 4->8: 2 x 4 (4000 + 8000 + 32) = 96,256 + ReLU 160,000 + bias 32,032   = 288,288
    #   bottom[1] 8->4: 3 x 4 (8000 + 4000 + 32) = 144,384 + ReLU 80,000 + bias 16,016   = 240,400
    #   top[0]    7->4: 3 x 4 (7000 + 4000 + 28) = 132,336 + ReLU 80,000 + bias 16,016   = 228,352
    #   top[1]    4->1: 3 x 4 (4000 + 1000 + 4)  = 60,048 + loss 24,000 + bias 4,004     = 88,052
    # Dot interaction, F = 3, D = 4, P = 3: concat 2 x 4 x 1000 x 12 = 96,000; bmm 4000 (24 + 9) = 132,000;
    # tril gather 2 x 4000 x 3 = 24,000; concat with the bottom output 2 x 4000 x 7 = 56,000; scatter
    # 4000 (9 + 6) = 60,000; two backward bmms 2 x 4000 (9 + 24) = 264,000; their sum 3 x 4000 x 12 = 144,000;
    # the bottom output's two gradients summed 3 x 4000 x 4 = 48,000                       = 824,000
    # Total 1,669,092 B -> 1669.092 ns. Optimizer (SGD): 113 params x 3 x 4 B = 1356 B -> 1.356 ns.
    assert dense_gpu_s(wl, toy) == pytest.approx(1669.092e-9 + 1.356e-9, rel=1e-12)
    by_name = {op.name: op for op in dense_ops(wl)}
    assert "bottom_mlp[0].dX" not in by_name and "bottom_mlp[1].dX" in by_name
    assert by_name["interaction.bmm"].flop == 2 * 1000 * 9 * 4
    assert sum(op.bytes for op in by_name.values()) == 1_669_092


def test_amp_converts_the_pooled_fp32_vectors_both_ways_by_hand(rec):
    # rec: F = 3 vectors of D = 4, two of them tables. AMP (dt = 2) converts each table's pooled fp32
    # vector to fp16 before the interaction and its gradient back: per direction B (F - 1) D elements,
    # 4 + 2 bytes each: 1000 x 2 x 4 x 6 = 48,000 B, 8000 FLOPs. fp32 runs convert nothing.
    amp = {op.name: op for op in dense_ops(EmbWorkload(model=rec, batch=1000, dtype_bytes=2))}
    for name in ("embeddings.to_dense_dtype", "embeddings.to_dense_dtype_bwd"):
        assert (amp[name].bytes, amp[name].flop, amp[name].op_class) == (48_000, 8000, "elementwise")
    fp32 = [op.name for op in dense_ops(EmbWorkload(model=rec, batch=1000))]
    assert not any(n.startswith("embeddings.to_dense_dtype") for n in fp32)


def test_tf32_runs_the_gemms_at_the_tf32_peak_by_hand(toy, rec):
    # Memory made ~free so every op binds on compute; TF32 peak 40 TFLOP/s, fp32 10 TFLOP/s.
    fast = apply_overrides(toy, ["gpu.memory_bandwidth=1000000TB/s", "gpu.flops_tf32=40TFLOP/s"])
    # GEMM FLOPs: bottom[0] 2 x 2 x 1000 x 32 = 128,000; bottom[1] 3 x 64,000 = 192,000; top[0] 3 x 56,000 =
    # 168,000; top[1] 3 x 8000 = 24,000; bmm and its two backward 3 x 72,000 = 216,000 -> 728,000.
    # Elementwise FLOPs (at fp32): bottom[0] ReLU 2 x 8000 + bias 8000 = 24,000; bottom[1] and top[0]
    # 12,000 each; top[1] loss 2 x 1000 + bias 1000 = 3000; dX sum 12,000; bottom output sum 4000 -> 67,000;
    # optimizer 2 x 113 = 226.
    plain = EmbWorkload(model=rec, batch=1000)
    tf32 = EmbWorkload(model=rec, batch=1000, tf32=True)
    elem = (67_000 + 226) / 10e12
    # memory terms are at most ~1e-12 of the total, below the tolerance
    assert dense_gpu_s(plain, fast) == pytest.approx(728_000 / 10e12 + elem, rel=1e-9)
    assert dense_gpu_s(tf32, fast) == pytest.approx(728_000 / 40e12 + elem, rel=1e-9)
    # a GPU without a TF32 rate (the toy states none: its fp32 peak) gains nothing
    assert dense_gpu_s(tf32, toy) == dense_gpu_s(plain, toy)


def test_tf32_is_for_fp32_runs_only(rec):
    assert EmbWorkload(model=rec, batch=8, tf32=True).summary()["tf32"] is True
    with pytest.raises(WorkloadError, match=r"tf32 is for 4-byte \(fp32\) dense compute, got tf32=True with dtype_bytes 2"):
        EmbWorkload(model=rec, batch=8, dtype_bytes=2, tf32=True)
    with pytest.raises(WorkloadError, match="tf32 must be true or false, got 'yes'"):
        EmbWorkload(model=rec, batch=8, tf32="yes")
    assert EmbWorkload(model=rec, batch=8, tf32=True) != EmbWorkload(model=rec, batch=8)


@pytest.mark.parametrize("interaction", ["dot", "dcnv2"])
def test_dense_gemm_flops_are_the_models_counts(interaction):
    # The GEMMs of dense_ops carry the model's forward + backward matmul FLOPs (RecModel counts), less
    # the first bottom layer's input gradient, which autograd does not compute: 2 B k0 n0.
    tables = tuple(Table(name=f"t{i}", rows=100, dim=4, access=_uniform(100)) for i in range(2))
    extra = {"interaction": "dcnv2", "dcn_layers": 2, "dcn_rank": 3} if interaction == "dcnv2" else {}
    m = RecModel(name="m", tables=tables, dense_features=5, bottom_mlp=(8, 4), top_mlp=(6, 1), **extra)
    wl = EmbWorkload(model=m, batch=64)
    gemm = sum(op.flop for op in dense_ops(wl) if op.op_class == "gemm")
    assert gemm == pytest.approx(64 * (m.forward_flop_per_sample() + m.backward_flop_per_sample()) - 2 * 64 * 5 * 8,
                                 rel=1e-12)
    names = [op.name for op in dense_ops(wl)]
    assert ("cross[1].U.dW" in names) == (interaction == "dcnv2")
    assert ("interaction.bmm" in names) == (interaction == "dot")


def test_gpu_and_static_cache_tables_by_hand(toy, rec):
    wl = EmbWorkload(model=rec, batch=1000)
    pols = (TablePolicy(placement="gpu"), TablePolicy(placement="cache", cache_rows=250, cache_kind="static"))
    cost = evaluate_embeddings(wl, toy, pols)
    u = 1000 * (1 - 0.999**1000)  # uniform rows: E[distinct] = N (1 - (1 - 1/N)^L) = 632.3 of L = 1000
    m = 0.75 * u  # a static cache of 250 of 1000 uniform rows hits 25 %
    g, c = cost.tables
    assert g.distinct_rows == pytest.approx(u, rel=1e-9) and c.hit_rate == pytest.approx(0.25, rel=1e-12)
    # gpu table: forward U r + update 2 U r in HBM; cache table: hits U h r + 2 U h r; each also reads
    # its ids (8 L = 8000) and writes its pooled vectors (g = B D 4 = 16,000) forward, and reads the
    # pooled gradients and the ids again backward: 2 (8000 + 16000) = 48,000.
    assert g.gpu_bytes == pytest.approx(3 * u * 16 + 48000, rel=1e-9)
    assert c.gpu_bytes == pytest.approx(3 * 0.25 * u * 16 + 48000, rel=1e-9)
    assert c.uvm_h2d_bytes == pytest.approx(m * 16, rel=1e-9) and c.d2h_bytes == pytest.approx(m * 16, rel=1e-9)
    stages = dict(cost.stages)
    fetch, compute = dict(stages[Stage.FETCH]), dict(stages[Stage.COMPUTE])
    # fetch: ids 2 x 8 B x 1000 at 10 GB/s + the misses M x 16 B at 5 GB/s (UVM: pinned x pageable factor)
    assert fetch[Resource.H2D] == pytest.approx(16000 / 10e9 + m * 16 / 5e9, rel=1e-9)
    # compute: GPU = dense + ((3 U + 0.75 U) 16 B + 2 x 48,000 B) / 1 TB/s; D2H = write-back M x 16 B / 10 GB/s
    assert compute[Resource.GPU] == pytest.approx(dense_gpu_s(wl, toy) + (3.75 * u * 16 + 96000) / 1e12, rel=1e-9)
    assert compute[Resource.D2H] == pytest.approx(m * 16 / 10e9, rel=1e-9)
    # the GPU's 1.67 us of dense kernels (test_dense_time_by_hand) + 0.14 us of gathers outlast the
    # write-back (474 rows x 16 B / 10 GB/s = 0.76 us): the GPU binds the compute stage
    assert compute[Resource.GPU] > compute[Resource.D2H]
    assert cost.iteration_s == pytest.approx(fetch[Resource.H2D] + compute[Resource.GPU], rel=1e-9)
    gpu_mem, host_mem = dict(cost.memory.gpu_breakdown), dict(cost.memory.host_breakdown)
    # GPU: table 1000 x 16, cache 250 x 16, the static cache's FBGEMM LFU bookkeeping (row -> table map
    # 4 x 1000, per-row frequency 8 x 1001, slot state 8 x 250), dense 113 x (4 + 4), activations 196,000,
    # ids 8000 + pooled vectors and gradients 2 x 1000 x 4 x 4 per table.
    assert gpu_mem == pytest.approx({"tables": 16000, "cache_rows": 4000, "cache_state": 4000 + 8008 + 2000,
                                     "table_state": 0, "dense": 904, "activations": 196000,
                                     "index_pooled": 2 * (8000 + 32000), "prefetch_buffers": 0,
                                     "sparse_grads": 0})
    assert host_mem == pytest.approx({"tables": 16000, "table_state": 0, "batch_buffers": 16000})
    assert cost.feasible and cost.explain_shortfall() == ""


def test_cpu_table_by_hand(toy, rec):
    wl = EmbWorkload(model=rec, batch=1000)
    cost = evaluate_embeddings(wl, toy, (TablePolicy(placement="gpu"), TablePolicy(placement="cpu")))
    u = 1000 * (1 - 0.999**1000)
    stages = dict(cost.stages)
    # fetch: CPU gathers L r + writes g = 16,000 + 16,000 B at 100 GB/s (320 ns; 4000 FLOP at 2 TFLOP/s is 2 ns),
    # then the pooled vectors 16,000 B up at 10 GB/s (1.6 us); the gpu table's ids 8000 B (0.8 us).
    fetch = dict(stages[Stage.FETCH])
    assert fetch[Resource.CPU] == pytest.approx(32000 / 100e9 + 16000 / 10e9, rel=1e-9)
    assert fetch[Resource.H2D] == pytest.approx(8000 / 10e9, rel=1e-9)
    # host update: gradients 16,000 B down, then the CPU reads and writes U rows (2 U 16) and the gradients.
    upd = dict(stages[Stage.HOST_UPDATE])
    assert upd[Resource.D2H] == pytest.approx(16000 / 10e9, rel=1e-9)
    assert upd[Resource.CPU] == pytest.approx((2 * u * 16 + 16000) / 100e9, rel=1e-9)
    assert dict(cost.stage_s)[Stage.HOST_UPDATE] == pytest.approx(upd[Resource.D2H] + upd[Resource.CPU])


def test_prefetch_moves_cold_rows_beside_compute_and_costs_a_buffer(toy, rec):
    wl = EmbWorkload(model=rec, batch=1000)
    plain = (TablePolicy(placement="uvm"),) * 2
    pre = (TablePolicy(placement="uvm", prefetch=True),) * 2
    a, b = evaluate_embeddings(wl, toy, plain), evaluate_embeddings(wl, toy, pre)
    u = 1000 * (1 - 0.999**1000)
    assert dict(dict(b.stages)[Stage.FETCH])[Resource.H2D] == 0.0
    assert dict(b.memory.gpu_breakdown)["prefetch_buffers"] == pytest.approx(2 * 2 * u * 16, rel=1e-9)
    assert b.iteration_s < a.iteration_s
    # the workload's default applies where a policy leaves it open
    assert evaluate_embeddings(EmbWorkload(model=rec, batch=1000, prefetch=True), toy, plain).iteration_s == b.iteration_s


def test_shortfall_names_the_terms(toy):
    big = RecModel(name="big", tables=(Table(name="huge", rows=2 * 10**9, dim=4, access=ZipfAccess(rows=2 * 10**9,
                                                                                                    alpha=1.1)),),
                   dense_features=4, bottom_mlp=(4,), top_mlp=(1,))
    cost = evaluate_embeddings(EmbWorkload(model=big, batch=64), toy, (TablePolicy(placement="gpu"),))
    assert not cost.feasible
    text = cost.explain_shortfall()
    assert text.startswith("gpu memory short by") and "tables 29.80 GiB" in text


def test_torchrec_estimate_is_the_load_factor(rec):
    wl = EmbWorkload(model=rec, batch=10)
    pols = torchrec_uvm_cache(wl, None, 0.2)
    assert [p.cache_rows for p in pols] == [200, 200]
    assert torchrec_estimated_hit_rate(pols[0], rec.tables[0]) == 0.2
    skew = ZipfAccess(rows=10**6, alpha=1.05)
    assert skew.lru_hit_rate(200_000) > 0.8  # a skewed table hits far more than the load factor says


def test_largest_to_cpu_follows_nvidia_cumulative_rule(toy):
    tables = tuple(Table(name=f"t{i}", rows=n, dim=4, access=_uniform(n)) for i, n in enumerate((300, 100, 200)))
    m = RecModel(name="three", tables=tables, dense_features=4, bottom_mlp=(4,), top_mlp=(1,))
    wl = EmbWorkload(model=m, batch=8)
    # sizes 4800, 1600, 3200 B; smallest first: 1600, 4800 (<= 5000), 9600 (> 5000) -> t0 to the CPU
    assert [p.placement for p in largest_to_cpu(wl, toy, 5000)] == [Placement.CPU, Placement.GPU, Placement.GPU]


def test_fae_takes_the_globally_hottest_rows(toy, rec):
    wl = EmbWorkload(model=rec, batch=8)
    pols = fae(wl, toy, budget_bytes=4 * 4 * 600)  # budget / (4 D) = 600 rows over two uniform tables
    assert sum(p.cache_rows for p in pols) == 600
    # the hot rows' tables are static caches; one left without a hot row is uvm (no cache to keep)
    assert all(p.cache_kind == "static" for p in pols if p.placement == "cache")
    assert [p.placement for p in pols] == [Placement.CACHE, Placement.UVM]


def _pooled_pair(pooling=(1, 2), optimizer="sgd", access=None) -> RecModel:
    """Two 1000-row tables of width 4 (rows of 16 B), uniform access unless given, the given poolings."""
    tables = tuple(Table(name=f"t{i}", rows=1000, dim=4, pooling=pf, access=(access or {}).get(i, _uniform(1000)))
                   for i, pf in enumerate(pooling))
    return RecModel(name="pair", tables=tables, dense_features=4, bottom_mlp=(4,), top_mlp=(1,),
                    table_optimizer=optimizer)


def _hbm_bytes(wl, pols) -> float:
    """What a placement adds to HBM beyond an all-cpu one: cache rows C r, gpu tables N (r + s)."""
    m = wl.model
    return sum(p.cache_rows * t.row_bytes if p.placement == "cache"
               else t.rows * (t.row_bytes + m.optimizer_state_bytes_per_row(t)) if p.placement == "gpu" else 0
               for t, p in zip(m.tables, pols))


def test_torchrec_cacheability_is_the_area_under_the_lru_miss_curve():
    uniform = Table(name="u", rows=1000, dim=4, access=_uniform(1000))
    # uniform rows: Che's LRU hit rate is C / N exactly, so the miss curve is 1 - f and its area 1/2
    assert torchrec_cacheability(uniform) == pytest.approx(0.5, abs=1e-9)
    skewed = Table(name="z", rows=1000, dim=4, access=ZipfAccess(rows=1000, alpha=1.2))
    # a skewed table is easier to cache: its misses fall faster with the load factor
    assert 0 < torchrec_cacheability(skewed) < 0.25


def test_torchrec_proportional_splits_the_budget_by_cacheability_times_lookups():
    wl = EmbWorkload(model=_pooled_pair(), batch=1000)
    # the two caches' row -> table maps (4 B x 1000 rows each) come off the budget first
    pols = torchrec_proportional(wl, None, budget_bytes=2 * 4000 + 8000)
    # expected lookups (distinct rows of the batch): U0 = 1000 (1 - 0.999^1000) = 632.30,
    # U1 = 1000 (1 - 0.999^2000) = 864.80; cacheability 1/2 each, so the shares are U_i / (U0 + U1):
    # 8000 x 632.30 / 1497.11 = 3378.8 B -> 105 rows of 16 B + 16 B of LRU bookkeeping; 4621.2 B -> 144 rows.
    u0, u1 = 1000 * (1 - 0.999**1000), 1000 * (1 - 0.999**2000)
    assert u0 == pytest.approx(632.30, abs=0.01) and u1 == pytest.approx(864.80, abs=0.01)
    assert [p.placement for p in pols] == [Placement.CACHE, Placement.CACHE]
    assert all(p.cache_kind == "lru" for p in pols)
    assert [p.cache_rows for p in pols] == [math.floor(8000 * u0 / (u0 + u1) / 32),
                                            math.floor(8000 * u1 / (u0 + u1) / 32)] == [105, 144]


def test_torchrec_proportional_weighs_by_cacheability():
    skew = ZipfAccess(rows=1000, alpha=1.2)
    wl = EmbWorkload(model=_pooled_pair(pooling=(1, 1), access={1: skew}), batch=1000)
    c0, c1 = 0.5, torchrec_cacheability(wl.model.tables[1])
    u0 = 1000 * (1 - 0.999**1000)
    u1 = skew.expected_distinct_rows(1000)
    pols = torchrec_proportional(wl, None, budget_bytes=2 * 4000 + 32 * 1000)
    # 32,000 B (1,000 rows of 16 + 16 B) shared as c0 U0 : c1 U1; the harder-to-cache uniform table gets
    # the larger share
    share0 = c0 * u0 / (c0 * u0 + c1 * u1)
    assert pols[0].cache_rows == math.floor(1000 * share0) and pols[1].cache_rows == math.floor(1000 * (1 - share0))
    assert pols[0].cache_rows > pols[1].cache_rows


def test_torchrec_proportional_caps_at_the_table_and_deals_out_the_rest():
    wl = EmbWorkload(model=_pooled_pair(), batch=1000)
    # A cache row is 16 B + 16 B of LRU bookkeeping, a cached table's map 4,000 B (taken first).
    # pass 1: 60,000 B x (0.4224, 0.5776) = 25,342 B and 34,658 B; t1 is clipped at its 32,000 B and the
    # 2,658 B released go to t0 in pass 2: 28,000 B = 875 rows. t1's load factor is 1 > 0.9999: promoted
    # to gpu, which under SGD (N (r + s) = 16,000 B) frees its cache's bookkeeping.
    pols = torchrec_proportional(wl, None, budget_bytes=8000 + 60000)
    assert pols[0] == TablePolicy(placement="cache", cache_rows=875, cache_kind="lru")
    assert pols[1] == TablePolicy(placement="gpu")
    # Adam keeps 2 x 4 x 4 = 32 B of state per row in HBM once promoted, 48,000 B per table, 12,000 B
    # more than its full cache and map (36,000 B): nothing is left for it, so t1 stays a full cache ...
    adam = EmbWorkload(model=_pooled_pair(optimizer="adam"), batch=1000)
    assert [p.cache_rows for p in torchrec_proportional(adam, None, budget_bytes=8000 + 60000)] == [875, 1000]
    # ... and with both caches full and 18,000 B left, the higher-priority t1 is promoted (12,000 B more),
    # t0 (12,000 B more than the 6,000 left) stays a full cache.
    pols = torchrec_proportional(adam, None, budget_bytes=8000 + 64000 + 18000)
    assert [p.placement for p in pols] == [Placement.CACHE, Placement.GPU] and pols[0].cache_rows == 1000
    # a budget past every fused table promotes them all
    assert all(p.placement == "gpu" for p in torchrec_proportional(adam, None, budget_bytes=8000 + 64000 + 24000))


@pytest.mark.parametrize("prefetch", [False, True])
def test_torchrec_proportional_fills_the_free_hbm_and_fits(prefetch):
    system = load_system("a100-80gb", ["gpu.memory=16GiB"])
    m = load_rec_model("criteo-terabyte")
    wl = EmbWorkload(model=m, batch=16384, prefetch=prefetch)
    pols = torchrec_proportional(wl, system)
    cost = evaluate_embeddings(wl, system, pols)
    assert cost.feasible, cost.explain_shortfall()
    cap = capacity(system)["gpu_bytes"]
    assert cost.memory.gpu_bytes <= cap
    if not prefetch:  # every table's floor(bytes / (r + a)) loses under one row, and a table promoted to
        # gpu frees its cache's bookkeeping (SGD: 4 N + 16 N), which TorchRec does not deal out again
        freed = sum(20 * t.rows for p, t in zip(pols, m.tables) if p.placement == "gpu")
        assert cap - cost.memory.gpu_bytes < sum(t.row_bytes + 16 for t in m.tables) + 1 + freed
    assert all(p.cache_rows <= t.rows for p, t in zip(pols, m.tables))
    big = max(range(len(m.tables)), key=lambda i: m.tables[i].rows)
    assert pols[big].placement == "cache" and 0 < pols[big].cache_rows < m.tables[big].rows


@settings(max_examples=30, deadline=None)
@given(budget=st.floats(0, 80000), pooling=st.tuples(st.sampled_from([1, 2, 5]), st.sampled_from([1, 3])),
       optimizer=st.sampled_from(["sgd", "adagrad", "adam"]), alpha=st.floats(0.6, 1.6))
def test_torchrec_proportional_respects_its_budget_and_the_rows(budget, pooling, optimizer, alpha):
    model = _pooled_pair(pooling=pooling, optimizer=optimizer, access={1: ZipfAccess(rows=1000, alpha=alpha)})
    wl = EmbWorkload(model=model, batch=512)
    pols = torchrec_proportional(wl, None, budget_bytes=budget)
    assert _hbm_bytes(wl, pols) <= budget
    assert all(p.placement in ("cache", "gpu") and p.cache_rows <= 1000 for p in pols)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

PLACEMENTS = st.sampled_from(["gpu", "cache", "uvm", "cpu"])


@st.composite
def policies(draw, rows: int = 1000):
    out = []
    for _ in range(2):
        p = draw(PLACEMENTS)
        kw = {}
        if p == "cache":
            kw = {"cache_rows": draw(st.integers(0, rows)), "cache_kind": draw(st.sampled_from(["static", "lru"]))}
        if p in ("cache", "uvm"):
            kw["prefetch"] = draw(st.booleans())
        if p == "uvm" and draw(st.booleans()):
            kw["update_on"] = "cpu"
        out.append(TablePolicy(placement=p, **kw))
    return tuple(out)


ZIPF = _two_tables(ZipfAccess(rows=1000, alpha=1.2))


@settings(max_examples=25, deadline=None)
@given(pols=policies(), bw=st.floats(1.0, 100.0), factor=st.floats(1.0, 8.0), batch=st.integers(1, 4096))
def test_more_link_bandwidth_is_never_slower(pols, bw, factor, batch):
    wl = EmbWorkload(model=ZIPF, batch=batch)

    def t(gbps):
        return evaluate_embeddings(wl, load_system(TOY, [f"link.h2d={gbps}GB/s", f"link.d2h={gbps}GB/s"]),
                                   pols).iteration_s

    assert t(bw * factor) <= t(bw) * (1 + 1e-12)  # the same sums of smaller terms; only rounding differs


@settings(max_examples=15, deadline=None)
@given(pols=policies(), gib=st.integers(1, 64), extra=st.integers(0, 64))
def test_more_hbm_is_never_less_feasible(pols, gib, extra):
    wl = EmbWorkload(model=ZIPF, batch=256)
    small = evaluate_embeddings(wl, load_system(TOY, [f"gpu.memory={gib + 1}GiB"]), pols)
    large = evaluate_embeddings(wl, load_system(TOY, [f"gpu.memory={gib + 1 + extra}GiB"]), pols)
    assert large.feasible or not small.feasible
    assert large.iteration_s == small.iteration_s


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["static", "lru"]), prefetch=st.booleans(), c1=st.integers(0, 1000),
       c2=st.integers(0, 1000), batch=st.integers(1, 4096), other=st.sampled_from(["gpu", "cache", "uvm"]))
def test_a_bigger_cache_is_never_slower(kind, prefetch, c1, c2, batch, other):
    # Holds while the link is slower than HBM (a static cache's hits read HBM instead of the link).
    small, big = sorted((c1, c2))
    wl = EmbWorkload(model=ZIPF, batch=batch)
    fixed = TablePolicy(placement=other, cache_rows=100 if other == "cache" else 0)
    toy = load_system(TOY)

    def t(c):
        pol = TablePolicy(placement="cache", cache_rows=c, cache_kind=kind, prefetch=prefetch)
        return evaluate_embeddings(wl, toy, (pol, fixed)).iteration_s

    assert t(big) <= t(small) * (1 + 1e-12)


# ---------------------------------------------------------------------------------------------
# Baselines on the bundled models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["criteo-kaggle", "criteo-terabyte"])
@pytest.mark.parametrize("name", list(BASELINES) + ["torchrec-uvm-cache:0.5", "largest-to-cpu:40", "fae:10",
                                  "torchrec-proportional:10"])
def test_every_baseline_evaluates_on_a100(model, name):
    system = load_system("a100-80gb")
    m = load_rec_model(model)
    wl = EmbWorkload(model=m, batch=m.reference_batch_size)
    cost = evaluate_embeddings(wl, system, baseline_policies(name, wl, system))
    assert math.isfinite(cost.iteration_s) and cost.iteration_s > 0
    assert cost.feasible or cost.explain_shortfall().startswith(("gpu memory short", "host memory short"))
    if model == "criteo-kaggle" or name.partition(":")[0] in ("cpu-hybrid", "uvm", "torchrec-uvm-cache",
                                                              "largest-to-cpu", "fae", "torchrec-proportional"):
        assert cost.feasible, cost.explain_shortfall()  # 2.2 GB of Kaggle tables fit; these rules fit 91 GB
    if model == "criteo-terabyte" and name == "all-gpu":
        assert "tables 84.85 GiB" in cost.explain_shortfall()


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"batch": 0}, {"batch": 1.5}, {"batch": True}, {"batch": (1 << 24) + 1},
                                {"dtype_bytes": 3}, {"prefetch": "yes"}])
def test_bad_workloads_raise(rec, kw):
    with pytest.raises(WorkloadError):
        EmbWorkload(model=rec, **{"batch": 8, **kw})


@pytest.mark.parametrize("kw", [{"placement": "disk"}, {"placement": "gpu", "cache_rows": 5},
                                {"placement": "cache", "cache_rows": -1}, {"placement": "cache", "cache_kind": "fifo"},
                                {"placement": "gpu", "state_tier": "host"}, {"placement": "cpu", "state_tier": "gpu"},
                                {"placement": "cache", "update_on": "cpu"}, {"placement": "cpu", "update_on": "gpu"},
                                {"placement": "uvm", "update_on": "cpu", "state_tier": "gpu"},
                                {"placement": "cpu", "prefetch": True}, {"placement": "uvm", "prefetch": 1}])
def test_bad_policies_raise(kw):
    with pytest.raises(WorkloadError):
        TablePolicy(**kw)


def test_bad_evaluations_raise(toy, rec):
    wl = EmbWorkload(model=rec, batch=8)
    with pytest.raises(WorkloadError, match="one TablePolicy per table"):
        evaluate_embeddings(wl, toy, (TablePolicy(placement="gpu"),))
    with pytest.raises(WorkloadError, match="at most the table's"):
        evaluate_embeddings(wl, toy, (TablePolicy(placement="cache", cache_rows=1001), TablePolicy(placement="gpu")))
    with pytest.raises(WorkloadError, match="missing t1"):
        evaluate_embeddings(wl, toy, {"t0": TablePolicy(placement="gpu")})
    with pytest.raises(WorkloadError, match="must be a TablePolicy"):
        evaluate_embeddings(wl, toy, ("gpu", "gpu"))
    for bad in ("nope", "all-gpu:3", "fae:x", "torchrec-uvm-cache:1.5", "largest-to-cpu:-1", "fae:inf",
                "torchrec-proportional:-1", "torchrec-proportional:x", "torchrec-proportional:nan"):
        with pytest.raises(WorkloadError):
            baseline_policies(bad, wl, toy)
    with pytest.raises(WorkloadError, match="needs a system"):
        torchrec_proportional(wl, None)


def test_a_gpu_table_with_prefetch_moves_only_its_ids_into_the_compute_stage(rec, toy):
    t = rec.tables[0]
    wl = EmbWorkload(model=rec, batch=64)
    plain = table_traffic(wl, t, TablePolicy(placement="gpu"))
    pre = table_traffic(wl, t, TablePolicy(placement="gpu", prefetch=True))
    assert plain.stage_of_cold.value == "fetch" and pre.stage_of_cold.value == "compute"
    # the same bytes (8 B ids, no cold rows), only in another stage; no prefetch buffer in HBM
    assert (pre.h2d_bytes, pre.gpu_bytes, pre.cold_rows) == (plain.h2d_bytes, plain.gpu_bytes, 0.0)
    pols = [TablePolicy(placement="gpu", prefetch=True) for _ in rec.tables]
    mem = evaluate_embeddings(wl, toy, pols).memory
    assert dict(mem.gpu_breakdown).get("prefetch_buffers", 0.0) == 0.0


# ---------------------------------------------------------------------------------------------
# Runtime colossalai: ColossalAI's cache bookkeeping, PyTorch's sparse gradients, memory between iterations
# ---------------------------------------------------------------------------------------------


def test_colossalai_runtime_counts_its_maps_and_the_kept_sparse_gradient_by_hand(toy, rec):
    # Two 1000-row tables of 16 B rows, batch 8, pooling 1: each looks up L = 8 rows.
    pols = (TablePolicy(placement="cache", cache_rows=100), TablePolicy(placement="cache", cache_rows=0))
    fb = evaluate_embeddings(EmbWorkload(model=rec, batch=8), toy, pols)
    ca = evaluate_embeddings(EmbWorkload(model=rec, batch=8, runtime="colossalai"), toy, pols)
    g_fb, g_ca = dict(fb.memory.gpu_breakdown), dict(ca.memory.gpu_breakdown)
    # FBGEMM LRU: 4 N per table + 16 per slot; ColossalAI: two int64 maps over N, one over the slots
    assert g_fb["cache_state"] == 2 * 4 * 1000 + 16 * 100
    assert g_ca["cache_state"] == 2 * 16 * 1000 + 8 * 100
    # the uncoalesced sparse gradient: one 16 B row and one int64 index per lookup, per table
    assert g_fb["sparse_grads"] == 0 and g_ca["sparse_grads"] == 2 * 8 * (16 + 8)
    # the time model does not depend on the runtime
    assert ca.iteration_s == fb.iteration_s
    between = dict(ca.gpu_between_iterations)
    assert set(between) == {"tables", "cache_rows", "cache_state", "table_state", "dense", "prefetch_buffers",
                            "sparse_grads", "last_batch"}
    for k in ("cache_rows", "cache_state", "dense", "sparse_grads"):
        assert between[k] == g_ca[k]
    # the last batch: fp32 dense features, labels and logits, int64 ids, int32 KJT lengths and offsets
    assert between["last_batch"] == 8 * (4 * 4 + 8) + 8 * 16 + 4 * (2 * 8 * 2 + 1)
    # activations and pooled vectors are gone after the step: less than the peak
    assert sum(between.values()) < ca.memory.gpu_bytes
    assert "sparse_grads" not in dict(fb.gpu_between_iterations) or dict(fb.gpu_between_iterations)["sparse_grads"] == 0


def test_colossalai_cache_takes_the_globally_hottest_share_of_all_rows(toy):
    m = load_rec_model("criteo-kaggle")
    wl = EmbWorkload(model=m, batch=2048, runtime="colossalai")
    pols = baseline_policies("colossalai-cache:0.01", wl, toy)
    n = sum(t.rows for t in m.tables)
    assert all(p.placement is Placement.CACHE for p in pols)  # one fused table: every table goes through the cache
    assert sum(p.cache_rows for p in pols) == math.floor(0.01 * n)
    assert all(0 <= p.cache_rows <= t.rows for p, t in zip(pols, m.tables))
    # a small table's rows are hotter than a big one's: it is cached whole before the big one is
    small, big = min(m.tables, key=lambda t: t.rows), max(m.tables, key=lambda t: t.rows)
    by = {t.name: p for t, p in zip(m.tables, pols)}
    assert by[small.name].cache_rows == small.rows and by[big.name].cache_rows < big.rows
    assert baseline_policies("colossalai-cache", wl, toy) == pols  # 0.01 is ColossalAI's default ratio
    for bad in ("colossalai-cache:1.5", "colossalai-cache:-0.1", "colossalai-cache:x", "colossalai-cache:nan"):
        with pytest.raises(WorkloadError):
            baseline_policies(bad, wl, toy)


def test_colossalai_runtime_refuses_what_colossalai_cannot_run(toy, rec):
    import dataclasses

    with pytest.raises(WorkloadError, match="SGD only"):
        EmbWorkload(model=dataclasses.replace(rec, table_optimizer="adam"), batch=8, runtime="colossalai")
    with pytest.raises(WorkloadError, match="runtime"):
        EmbWorkload(model=rec, batch=8, runtime="deepspeed")
    wl = EmbWorkload(model=rec, batch=8, runtime="colossalai")
    for pol in ("uvm", "cpu"):
        with pytest.raises(WorkloadError, match="no UVM, no CPU pooling"):
            evaluate_embeddings(wl, toy, (TablePolicy(placement=pol), TablePolicy(placement="gpu")))
