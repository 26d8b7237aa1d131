"""The embedding plan's speed-up over each baseline across presets, batches, HBM sizes and links.

    python benchmarks/embeddings_speedup.py            # 4 presets x 3 batches x 4 systems x 3 HBM sizes
    python benchmarks/embeddings_speedup.py --quick    # 2 x 2 x 2 x 2, a few seconds

For each point, plan_embeddings (the MIP, re-costed exactly, against every baseline of
costmodel.embeddings_cost.BASELINES) gives the plan's samples/s and its speed-up over each baseline
(plan samples/s over the baseline's; "infeasible" where the baseline does not fit in HBM or host
memory). Then the median, minimum and maximum speed-up per baseline over the points where both fit.
Systems: a100-40gb and a100-80gb (PCIe 4), h100-sxm (PCIe 5), gh200 (NVLink-C2C); HBM sizes: the
GPU's own and smaller ones set with gpu.memory (hwprofiles.load_system overrides). Every figure is
the cost model's prediction on bundled profiles, not a measurement. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import pandas as pd

from costmodel.embeddings import load_rec_model
from costmodel.embeddings_cost import BASELINES, EmbWorkload
from hwprofiles import load_system
from solver.embeddings import plan_embeddings

PRESETS = ("criteo-kaggle", "criteo-terabyte", "mlperf-dlrm", "mlperf-dlrm-dcnv2")
BATCHES = (4096, 16384, 65536)
SYSTEMS = ("a100-40gb", "a100-80gb", "h100-sxm", "gh200")
HBM = ("", "16GiB", "4GiB")  # "" = the GPU's own memory
QUICK = {"presets": ("criteo-kaggle", "criteo-terabyte"), "batches": (4096, 65536), "systems": ("a100-80gb", "gh200"),
         "hbm": ("", "16GiB")}


def run(presets, batches, systems, hbm) -> tuple[pd.DataFrame, dict[str, list[float]], dict[str, int]]:
    rows, ratios = [], {b: [] for b in BASELINES}
    infeasible = dict.fromkeys(BASELINES, 0)
    models = {name: load_rec_model(name) for name in presets}
    for name, hw, mem, batch in itertools.product(presets, systems, hbm, batches):
        system = load_system(hw, [f"gpu.memory={mem}"] if mem else [])
        plan = plan_embeddings(EmbWorkload(model=models[name], batch=batch), system)
        row = {"model": name, "system": hw, "link": system.link.name,
               "hbm_GiB": round(system.gpu.memory_bytes / 2**30, 1), "batch": batch,
               "plan_samples_per_s": plan.samples_per_s if plan.samples_per_s is not None else float("nan"),
               "selected": plan.selected or "infeasible"}
        for b in plan.baselines:
            if b.feasible and b.speedup is not None:
                ratios.setdefault(b.name, []).append(b.speedup)
                row[b.name] = f"{b.speedup:.3f}x"
            else:
                infeasible[b.name] = infeasible.get(b.name, 0) + 1
                row[b.name] = "infeasible"
        rows.append(row)
    return pd.DataFrame(rows), ratios, infeasible


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small grid (2 presets, 2 batches, 2 systems, 2 HBM sizes)")
    args = ap.parse_args(argv)
    grid = QUICK if args.quick else {"presets": PRESETS, "batches": BATCHES, "systems": SYSTEMS, "hbm": HBM}
    start = time.perf_counter()
    df, ratios, infeasible = run(grid["presets"], grid["batches"], grid["systems"], grid["hbm"])
    elapsed = time.perf_counter() - start
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_rows", 500)
    shown = df.assign(plan_samples_per_s=df.plan_samples_per_s.map(lambda v: "infeasible" if v != v else f"{v:,.0f}"))
    print("plan samples/s and its speed-up over each baseline (plan samples/s / baseline samples/s; cost model, "
          "not measured)")
    print(shown.to_string(index=False))
    print(f"\nspeed-up of the plan over each baseline, over the {len(df)} points (feasible ones only):")
    for b in BASELINES:
        r = ratios.get(b, [])
        if r:
            print(f"  {b:22s} median {statistics.median(r):6.3f}x  (min {min(r):.3f}x, max {max(r):.3f}x; "
                  f"{len(r)} feasible, {infeasible.get(b, 0)} infeasible)")
        else:
            print(f"  {b:22s} infeasible at every point ({infeasible.get(b, 0)})")
    print(f"\n{elapsed:.1f} s for {len(df)} plans")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
