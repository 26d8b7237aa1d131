"""The embedding-table placement MIP (solver.embeddings): hand-checked optimum, capacities, baselines.

Toy system (tests/data/toy-system.yaml): 1 TB/s HBM, 10 GB/s link, UVM gathers at 5 GB/s, flat
efficiency curves, no latency or launch overhead; the GPU's memory is overridden per test.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from costmodel.embeddings import HistogramAccess, RecModel, Table, ZipfAccess, load_rec_model
from costmodel.embeddings_cost import EmbWorkload, Placement, TablePolicy, evaluate_embeddings
from hwprofiles import load_system
from solver.backends import SolveStatus
from solver.embeddings import plan_embeddings, solve_embeddings
from solver.errors import PlanError

TOY = Path(__file__).resolve().parents[1] / "data" / "toy-system.yaml"
PRESETS = [(m, s) for m in ("criteo-kaggle", "criteo-terabyte") for s in ("a100-80gb", "a100-40gb")]


def _two_table_model() -> RecModel:
    """A 1,000-row table and a 5M-row table (256 B fp32 rows: 1.28 GB), uniform lookups, SGD."""
    small = Table(name="small", rows=1000, dim=64, access=HistogramAccess(rows=1000, counts=np.ones(1000)))
    big = Table(name="big", rows=5_000_000, dim=64,
                access=HistogramAccess(rows=5_000_000, counts=np.ones(5_000_000)))
    return RecModel(name="two", tables=(small, big), dense_features=4, bottom_mlp=(64,), top_mlp=(4, 1))


def test_two_tables_hand_checked_optimum():
    # GPU 2 GiB, 1 GiB reserved: the big table cannot sit in HBM. Under the cost model a hit costs
    # 3 r bytes of HBM at 1 TB/s and a miss r bytes over UVM at 5 GB/s plus r written back at 10 GB/s,
    # so every cache row pays; with uniform lookups the static curve is linear (its chords exact), and
    # the optimum is the small table on the GPU and the big one cached in all the HBM left over.
    system = load_system(TOY, ["gpu.memory=2GiB"])
    wl = EmbWorkload(model=_two_table_model(), batch=4096)
    sol = solve_embeddings(wl, system)
    assert sol.status is SolveStatus.OPTIMAL
    small, big = sol.policies
    # the small table whole in HBM: on the GPU, or a cache of all its rows (the same cost on the toy,
    # which has no link latency; SGD keeps no state)
    assert small.placement is Placement.GPU or (small.placement is Placement.CACHE and small.cache_rows == 1000)
    assert big.placement is Placement.CACHE
    empty = evaluate_embeddings(wl, system, (small, TablePolicy(placement="cache", cache_kind="static")))
    free_rows = (empty.capacity["gpu_bytes"] - empty.memory.gpu_bytes) / 256
    margin_rows = 1e-6 * empty.capacity["gpu_bytes"] / 256 + 2
    assert free_rows - margin_rows <= big.cache_rows <= free_rows
    cost = evaluate_embeddings(wl, system, sol.policies)
    assert cost.feasible
    assert sol.lp_estimate_s == pytest.approx(cost.iteration_s, rel=1e-3)
    # a smaller cache is slower, exactly costed
    half = (small, TablePolicy(placement="cache", cache_rows=big.cache_rows // 2, cache_kind="static"))
    assert evaluate_embeddings(wl, system, half).iteration_s > cost.iteration_s


@pytest.mark.parametrize("model,system_name", PRESETS)
def test_presets_fit_and_beat_every_feasible_baseline(model, system_name):
    m = load_rec_model(model)
    system = load_system(system_name)
    for prefetch in (False, True):
        wl = EmbWorkload(model=m, batch=m.reference_batch_size * 16, prefetch=prefetch)
        plan = plan_embeddings(wl, system)
        assert plan.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)
        assert plan.cost is not None and plan.cost.feasible and plan.mip_cost.feasible
        exact = evaluate_embeddings(wl, system, plan.policies)
        assert exact.iteration_s == plan.cost.iteration_s
        for b in plan.baselines:
            if b.feasible:
                assert plan.cost.iteration_s <= b.iteration_s * (1 + 1e-12), b.name
                assert b.speedup >= 1 - 1e-12
            else:
                assert b.reason and b.samples_per_s is None
        gap = plan.lp_estimate_s / plan.mip_cost.iteration_s - 1
        print(f"{model} {system_name} prefetch={prefetch}: {plan.selected}, MIP estimate "
              f"{plan.lp_estimate_s * 1e3:.4f} ms vs exact {plan.mip_cost.iteration_s * 1e3:.4f} ms ({gap:+.2e})")
        assert abs(gap) < 0.01


def test_nothing_fits_is_a_status():
    # Host 1 GiB: every placement but gpu keeps the 1.28 GB table's rows in host memory, and 1 GiB of
    # usable HBM cannot hold it either.
    system = load_system(TOY, ["gpu.memory=2GiB", "host.memory=1GiB"])
    wl = EmbWorkload(model=_two_table_model(), batch=1024)
    sol = solve_embeddings(wl, system)
    assert sol.status is SolveStatus.INFEASIBLE and sol.policies == () and sol.lp_estimate_s is None
    plan = plan_embeddings(wl, system)
    assert plan.status is SolveStatus.INFEASIBLE and plan.cost is None and plan.policies == ()
    assert all(not b.feasible and "memory short" in b.reason for b in plan.baselines)


def test_bad_arguments_raise_plan_error():
    wl = EmbWorkload(model=_two_table_model(), batch=16)
    system = load_system(TOY)
    with pytest.raises(PlanError, match="time_limit_s"):
        solve_embeddings(wl, system, time_limit_s=-1)
    with pytest.raises(PlanError, match="n_points"):
        solve_embeddings(wl, system, n_points=1)
    with pytest.raises(PlanError, match="cache_kind"):
        solve_embeddings(wl, system, cache_kind="fifo")
    with pytest.raises(PlanError, match="EmbWorkload"):
        solve_embeddings("wl", system)


def test_lru_cache_kind():
    m = load_rec_model("criteo-terabyte")
    wl = EmbWorkload(model=m, batch=m.reference_batch_size)
    system = load_system("a100-40gb")
    sol = solve_embeddings(wl, system, cache_kind="lru")
    assert sol.status is SolveStatus.OPTIMAL
    assert all(p.cache_kind.value == "lru" for p in sol.policies if p.placement is Placement.CACHE)
    assert evaluate_embeddings(wl, system, sol.policies).feasible


def test_thousand_tables_plan_quickly():
    shapes = [(10**k, 0.9 + 0.1 * k) for k in range(3, 8)]  # 1e3 .. 1e7 rows, Zipf 1.2 .. 1.6
    tables = tuple(Table(name=f"t{i}", rows=shapes[i % 5][0], dim=16, pooling=2,
                         access=ZipfAccess(rows=shapes[i % 5][0], alpha=shapes[i % 5][1])) for i in range(1000))
    model = RecModel(name="synthetic-1000", tables=tables, dense_features=13, bottom_mlp=(64, 16),
                     top_mlp=(64, 1), interaction="dcnv2", dcn_layers=1, dcn_rank=16)
    wl = EmbWorkload(model=model, batch=256)
    system = load_system("a100-40gb")
    start = time.perf_counter()
    plan = plan_embeddings(wl, system)
    elapsed = time.perf_counter() - start
    print(f"1,000 tables: planned in {elapsed:.2f} s ({plan.selected}, "
          f"{plan.samples_per_s:,.0f} samples/s)")
    assert plan.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE) and plan.cost.feasible
    assert len(plan.policies) == 1000 and math.isfinite(plan.cost.iteration_s)
