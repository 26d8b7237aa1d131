"""Sweep throughput: solved points per second on this machine, with the backend, for 32-layer
models. Each point is a full plan_kv (batch search, re-linearisation, five baselines), as
`tierplan sweep` runs it. Prints figures; asserts nothing.

    python benchmarks/sweep_throughput.py
"""

from __future__ import annotations

import os
import time

from solver import default_backend
from solver.sweep import grid, parse_vary, sweep


def main() -> None:
    pts = grid(["llama-2-7b", "llama-3-8b"], ["a100-40gb", "rtx4090"], prompts=[2048], batches=[16], gen=128,
               vary=[parse_vary("link.h2d=8GB/s..32GB/s:4")])
    for workers in (1, os.cpu_count()):
        t = time.perf_counter()
        df = sweep(pts, workers=workers, progress=False)
        wall = time.perf_counter() - t
        solve = df["solve_time_s"].sum()
        plan = df["plan_time_s"].sum()
        print(f"{len(pts)} points, {workers} worker(s), backend {default_backend()}: {len(pts) / wall:.2f} points/s "
              f"({len(pts) / wall / workers:.2f} per core); per point: plan_kv {plan / len(pts) * 1e3:.0f} ms, "
              f"of which MIP solving {solve / len(pts) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
