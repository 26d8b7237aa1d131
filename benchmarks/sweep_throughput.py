"""Sweep throughput: solved points per second on this machine, with the backend, for 32-layer
models. Each point is a full plan_kv (batch search, re-linearisation, five baselines), as
`tierplan sweep` runs it. Prints figures; asserts nothing.

    python benchmarks/sweep_throughput.py [--points-per-system N]

Three runs over the same grid: in this process on one core (no pool: the per-point cost alone;
fastest of --repeats), then a process pool of 1 and of all cores (what `tierplan sweep` does, with
its start-up cost).
"""

from __future__ import annotations

import argparse
import os
import time

from solver import default_backend
from solver.sweep import grid, parse_vary, sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points-per-system", type=int, default=8, help="link.h2d values per (model, GPU, prompt)")
    ap.add_argument("--repeats", type=int, default=3, help="in-process runs; the fastest is reported (on a shared "
                                                             "machine the speed drifts by tens of percent)")
    args = ap.parse_args()
    pts = grid(["llama-2-7b", "llama-3-8b"], ["a100-40gb", "rtx4090"], prompts=[2048, 3968], batches=[16], gen=128,
               vary=[parse_vary(f"link.h2d=8GB/s..64GB/s:{args.points_per_system}")])
    sweep(pts[:2], executor=None, workers=None, progress=False)  # warm the imports and caches
    for label, workers in (("in process", 0), ("pool", 1), ("pool", os.cpu_count() or 1)):
        runs = []
        for _ in range(args.repeats if workers == 0 else 1):
            t, cpu = time.perf_counter(), time.process_time()
            if workers == 0:
                df = sweep(pts, progress=False, executor=_Inline())
            else:
                df = sweep(pts, workers=workers, progress=False)
            runs.append((time.perf_counter() - t, time.process_time() - cpu, df))
        wall, cpu, df = min(runs, key=lambda r: r[0])
        cores = max(workers, 1)
        n = len(pts)
        cpu_note = f", {n / cpu:.1f} per CPU-second of this process" if workers == 0 else ""
        print(f"{n} points, {label}, {cores} core(s), backend {default_backend()}: {n / wall:.1f} points/s "
              f"({n / wall / cores:.1f} per core{cpu_note}); per point: plan_kv {df['plan_time_s'].mean() * 1e3:.0f} ms, "
              f"{df['solves'].mean():.1f} solves taking {df['solve_time_s'].mean() * 1e3:.0f} ms, "
              f"{df['batches_pruned'].mean():.1f} candidate batches skipped by the bound; "
              f"statuses {sorted(df['status'].unique())}")
        if workers == 0:
            for (model, prompt), g in df.groupby(["model", "prompt"]):
                print(f"    {model}, prompt {prompt}: plan_kv {g['plan_time_s'].mean() * 1e3:.0f} ms per point "
                      f"({1 / g['plan_time_s'].mean():.1f} points/s), {g['solves'].mean():.1f} solves "
                      f"({g['lp_solves'].mean():.1f} of them LPs) taking {g['solve_time_s'].mean() * 1e3:.0f} ms")


class _Inline:
    """An Executor that runs each point at once in this process."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        f: Future = Future()
        f.set_result(fn(*args))
        return f


if __name__ == "__main__":
    main()
