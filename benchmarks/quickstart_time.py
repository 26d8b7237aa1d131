"""Wall time of the README's quick-start plan, as a new user runs it (a fresh interpreter each time).

Prints the median and the spread of 7 runs, and the import time alone. The aim: under 0.5 s wall.
This machine is shared and noisy: compare medians, not single runs.

    python benchmarks/quickstart_time.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMAND = ["-m", "tierplan.cli", "plan", "kv", "--model", "llama-2-7b", "--hw", "a100-40gb", "--batch", "64",
           "--prompt", "512", "--gen", "128"]


def wall(args: list[str], repeats: int = 7) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    plan = wall(COMMAND)
    imports = wall(["-c", "import tierplan.cli"])
    bare = wall(["-c", "pass"])
    print(f"quick-start plan: median {statistics.median(plan):.3f} s wall (min {min(plan):.3f}, max {max(plan):.3f}) "
          f"over {len(plan)} runs")
    print(f"  of which Python start-up {statistics.median(bare):.3f} s and imports "
          f"{statistics.median(imports) - statistics.median(bare):.3f} s (medians)")
    print(f"aim: under 0.5 s wall -> {'met' if statistics.median(plan) < 0.5 else 'not met'}")


if __name__ == "__main__":
    main()
