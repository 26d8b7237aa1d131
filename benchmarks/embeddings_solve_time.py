"""Embedding-table planning time, the MIP's size, and the plan's speed-up over each baseline.

    python benchmarks/embeddings_solve_time.py

Prints, for the 26-table presets and for synthetic models of 100 and 1,000 tables (five distinct
shapes, so identical tables group), one run each: the wall time of solve_embeddings (the MIP: its
modes, HBM re-linearisations and extraction) and of plan_embeddings (the MIP, exact re-costing, every
baseline, the local search), the MIP's columns and rows, and where the plan came from. Then the
prefetch case that the MIP used to misrank, and the plan's speed-up over each baseline across presets,
batches, GPUs and links. The aim (issue 10): 1,000 tables in under 5 s on one core. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import time

from costmodel.embeddings import RecModel, Table, ZipfAccess, load_rec_model
from costmodel.embeddings_cost import EmbWorkload
from hwprofiles import apply_overrides, load_system
from solver.embeddings import plan_embeddings, solve_embeddings


def synthetic(n: int) -> RecModel:
    shapes = [(10**k, 0.9 + 0.1 * k) for k in range(3, 8)]  # 1e3 .. 1e7 rows, Zipf 1.2 .. 1.6
    tables = tuple(Table(name=f"t{i}", rows=shapes[i % 5][0], dim=16, pooling=2,
                         access=ZipfAccess(rows=shapes[i % 5][0], alpha=shapes[i % 5][1])) for i in range(n))
    return RecModel(name=f"synthetic-{n}", tables=tables, dense_features=13, bottom_mlp=(64, 16), top_mlp=(64, 1))


def main() -> None:
    system = load_system("a100-40gb")
    print(f"{'model':28s} {'tables':>6s} {'MIP cols x rows':>16s} {'rounds':>6s} {'solve':>8s} {'plan':>8s}  selected")
    for label, model, batch in (("criteo-kaggle", load_rec_model("criteo-kaggle"), 16384),
                                ("criteo-terabyte", load_rec_model("criteo-terabyte"), 16384),
                                ("synthetic-100", synthetic(100), 1024),
                                ("synthetic-1000", synthetic(1000), 256)):
        wl = EmbWorkload(model=model, batch=batch)
        start = time.perf_counter()
        sol = solve_embeddings(wl, system)
        solve_s = time.perf_counter() - start
        start = time.perf_counter()
        plan = plan_embeddings(wl, system)
        plan_s = time.perf_counter() - start
        size = f"{sol.result.n_variables} x {sol.result.n_constraints}"
        print(f"{label + f' (batch {batch})':28s} {len(model.tables):6d} {size:>16s} {sol.rounds:6d} {solve_s:7.2f}s "
              f"{plan_s:7.2f}s  {plan.selected} ({plan.samples_per_s:,.0f} samples/s)")

    print("\ncriteo-terabyte, a100-80gb, batch 16384, workload prefetch on (the case the MIP used to misrank):")
    m = load_rec_model("criteo-terabyte")
    wl = EmbWorkload(model=m, batch=16384, prefetch=True)
    plan = plan_embeddings(wl, load_system("a100-80gb"))
    best = min((b for b in plan.baselines if b.feasible), key=lambda b: b.iteration_s)
    print(f"  MIP choice {plan.mip_cost.iteration_s * 1e3:.4f} ms (estimate {plan.lp_estimate_s * 1e3:.4f} ms), "
          f"best baseline {best.name} {best.iteration_s * 1e3:.4f} ms, plan {plan.cost.iteration_s * 1e3:.4f} ms "
          f"({plan.selected})")

    print("\nplan speed-up over each baseline (same cost model; '-' = the baseline does not fit)")
    for model_name in ("criteo-kaggle", "criteo-terabyte"):
        for hw, overrides in (("a100-40gb", ()), ("a100-80gb", ()), ("a100-40gb", ("link=pcie5-x16",)), ("gh200", ())):
            sysm = apply_overrides(load_system(hw), list(overrides))
            for batch in (4096, 65536):
                plan = plan_embeddings(EmbWorkload(model=load_rec_model(model_name), batch=batch), sysm)
                ups = ", ".join(f"{b.name} {b.speedup:.2f}x" if b.feasible else f"{b.name} -" for b in plan.baselines)
                print(f"  {model_name:16s} {hw + ''.join(' ' + o for o in overrides):24s} batch {batch:6d}: "
                      f"{plan.selected}; {ups}")


if __name__ == "__main__":
    main()
