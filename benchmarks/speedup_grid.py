"""Speed-up of the plan over each baseline across models (MHA and GQA), GPUs, batch and context.
Every figure is the cost model's prediction on bundled profiles, not a measurement. Prints a table
and the per-baseline geometric mean; asserts nothing.

    python benchmarks/speedup_grid.py
"""

from __future__ import annotations

import itertools
import math
import time

from costmodel import KvWorkload, load_model
from hwprofiles import load_system
from solver import BASELINES, plan_kv

MODELS = ["opt-6.7b", "llama-2-7b", "llama-3-8b", "mistral-7b", "llama-2-13b", "opt-30b", "llama-2-70b", "llama-3-70b"]
SYSTEMS = ["a100-40gb", "rtx4090", "l4"]
BATCHES = [8, 64]
PROMPTS = [512, 8192]
GEN = 64


def main() -> None:
    ratios: dict[str, list[float]] = {b: [] for b in BASELINES}
    start = time.perf_counter()
    header = f"{'model':12s} {'gpu':10s} {'batch':>5s} {'prompt':>6s} {'plan tok/s':>10s} {'recomp%':>7s} {'cpu%':>5s} " + \
        " ".join(f"{b:>12s}" for b in BASELINES)
    print(header)
    for model, hw, batch, prompt in itertools.product(MODELS, SYSTEMS, BATCHES, PROMPTS):
        wl = KvWorkload(model=load_model(model), batch=batch, prompt_len=prompt, gen_len=GEN)
        plan = plan_kv(wl, load_system(hw), simulate=False)
        if plan.predicted is None:
            print(f"{model:12s} {hw:10s} {batch:5d} {prompt:6d} {'infeasible':>10s}")
            continue
        tok = [e["tokens_per_step"] for e in plan.layers]
        total = sum(t["transferred"] + t["recomputed"] + t["cpu_attended"] for t in tok) or 1.0
        rec = 100 * sum(t["recomputed"] for t in tok) / total
        cpu = 100 * sum(t["cpu_attended"] for t in tok) / total
        cells = []
        for b in BASELINES:
            entry = plan.baselines[b]
            if entry["status"] == "feasible":
                ratios[b].append(entry["speedup"])
                cells.append(f"{entry['speedup']:11.2f}x")
            else:
                cells.append(f"{'infeasible':>12s}")
        print(f"{model:12s} {hw:10s} {batch:5d} {prompt:6d} {plan.predicted['tokens_per_s']:10.1f} {rec:7.1f} {cpu:5.1f} "
              + " ".join(cells), flush=True)
    print("\ngeometric mean speed-up of the plan over each baseline (feasible cases only):")
    for b, r in ratios.items():
        if r:
            gm = math.exp(sum(math.log(x) for x in r) / len(r))
            print(f"  {b:12s} {gm:6.2f}x  (min {min(r):.2f}x, max {max(r):.2f}x, {len(r)} cases)")
    print(f"\n{time.perf_counter() - start:.0f} s for the grid")


if __name__ == "__main__":
    main()
