"""Embedding-table planning time and the plan's speed-up over each baseline.

    python benchmarks/embeddings_solve_time.py

Prints the wall time of plan_embeddings (MIP, exact re-costing, every baseline) for the 26-table
presets and for synthetic models of 100 and 1,000 tables (five distinct shapes, so identical tables
group), median of 3 runs, then the plan's speed-up over each baseline across presets, batches, GPUs
and links. The aim (issue 10): 1,000 tables in under 5 s on one core. Prints figures; asserts nothing.
"""

from __future__ import annotations

import statistics
import time

from costmodel.embeddings import RecModel, Table, ZipfAccess, load_rec_model
from costmodel.embeddings_cost import EmbWorkload
from hwprofiles import apply_overrides, load_system
from solver.embeddings import plan_embeddings


def synthetic(n: int) -> RecModel:
    shapes = [(10**k, 0.9 + 0.1 * k) for k in range(3, 8)]  # 1e3 .. 1e7 rows, Zipf 1.2 .. 1.6
    tables = tuple(Table(name=f"t{i}", rows=shapes[i % 5][0], dim=16, pooling=2,
                         access=ZipfAccess(rows=shapes[i % 5][0], alpha=shapes[i % 5][1])) for i in range(n))
    return RecModel(name=f"synthetic-{n}", tables=tables, dense_features=13, bottom_mlp=(64, 16), top_mlp=(64, 1))


def timed(wl, system, repeats: int = 3):
    times, plan = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        plan = plan_embeddings(wl, system)
        times.append(time.perf_counter() - start)
    return statistics.median(times), plan


def main() -> None:
    system = load_system("a100-40gb")
    for label, model, batch in (("criteo-kaggle (26 tables)", load_rec_model("criteo-kaggle"), 16384),
                                ("criteo-terabyte (26 tables)", load_rec_model("criteo-terabyte"), 16384),
                                ("synthetic 100 tables", synthetic(100), 1024),
                                ("synthetic 1,000 tables", synthetic(1000), 256)):
        t, plan = timed(EmbWorkload(model=model, batch=batch), system)
        print(f"{label:30s} plan_embeddings {t:6.2f} s (median of 3), {plan.selected}, "
              f"{plan.samples_per_s:,.0f} samples/s")
    print("\nplan speed-up over each baseline (same cost model; '-' = the baseline does not fit)")
    for model_name in ("criteo-kaggle", "criteo-terabyte"):
        for hw, overrides in (("a100-40gb", ()), ("a100-80gb", ()), ("a100-40gb", ("link=pcie5-x16",)), ("gh200", ())):
            sysm = apply_overrides(load_system(hw), list(overrides))
            for batch in (4096, 65536):
                plan = plan_embeddings(EmbWorkload(model=load_rec_model(model_name), batch=batch), sysm)
                ups = ", ".join(f"{b.name} {b.speedup:.2f}x" if b.feasible else f"{b.name} -" for b in plan.baselines)
                print(f"  {model_name:16s} {hw + ''.join(' ' + o for o in overrides):24s} batch {batch:6d}: {ups}")


if __name__ == "__main__":
    main()
