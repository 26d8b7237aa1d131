"""What-if sweeps: plan a grid of (model, hardware, overrides, prompt, batch) points in parallel.

Points run on any ``concurrent.futures.Executor`` (a local process pool by default; a Dask
``client.get_executor()`` or Ray's for a cluster). Each finished point is appended at once to a
JSON-lines checkpoint beside the output, so an interrupted sweep loses nothing and ``resume``
skips every point already there. The result is a pandas DataFrame, one row per point.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from costmodel import KvWorkload, WorkloadError, load_model
from hwprofiles import SCHEMA_DIMENSIONS, ProfileError, load_system, parse_quantity
from solver.errors import PlanError
from solver.kv import BASELINES, plan_kv


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    model: str
    hw: str
    overrides: tuple[str, ...] = ()
    prompt: int
    batch: int
    gen: int
    objective: str = "throughput"
    allow_long_context: bool = False

    def key(self) -> str:
        """A stable identity, used to skip finished points on resume."""
        return json.dumps(asdict(self), sort_keys=True)


_RANGE = re.compile(r"^(?P<a>[\d.eE+-]+)\s*(?P<ua>[A-Za-z/%]+)\.\.(?P<b>[\d.eE+-]+)\s*(?P<ub>[A-Za-z/%]+)(?::(?P<n>\d+))?$")


def parse_vary(text: str) -> tuple[str, list[str]]:
    """``part.field=a..b:n`` (n values evenly spaced from a to b, same unit) or ``part.field=v1,v2``.

    >>> parse_vary("link.h2d=8GB/s..64GB/s:8")
    ('link.h2d', ['8GB/s', '16GB/s', '24GB/s', '32GB/s', '40GB/s', '48GB/s', '56GB/s', '64GB/s'])
    >>> parse_vary("host.memory=64GiB,208GiB")
    ('host.memory', ['64GiB', '208GiB'])
    """
    field, sep, spec = text.partition("=")
    field, spec = field.strip(), spec.strip()
    if not sep or not field or not spec:
        raise PlanError(f"--vary must read 'part.field=a..b:n' or 'part.field=v1,v2', got {text!r}")
    if field not in SCHEMA_DIMENSIONS:
        raise PlanError(f"--vary field must be one of {sorted(SCHEMA_DIMENSIONS)}, got {field!r}")
    m = _RANGE.match(spec)
    if m:
        if m["ua"] != m["ub"]:
            raise PlanError(f"--vary range ends must share a unit, got {m['ua']!r} and {m['ub']!r} in {text!r}")
        n = int(m["n"] or 2)
        if n < 2:
            raise PlanError(f"--vary range needs at least 2 points, got {n} in {text!r}")
        a, b = float(m["a"]), float(m["b"])
        values = [f"{v:g}{m['ua']}" for v in np.linspace(a, b, n)]
    else:
        values = [v.strip() for v in spec.split(",") if v.strip()]
    for v in values:  # fail now, with the field named, not inside a worker
        parse_quantity(v, SCHEMA_DIMENSIONS[field], field=field, file=f"--vary {text}",
                       allow_zero=field.endswith("latency"))
    return field, values


def grid(models: Sequence[str], systems: Sequence[str], *, prompts: Sequence[int], batches: Sequence[int], gen: int,
         vary: Sequence[tuple[str, Sequence[str]]] = (), fixed: Sequence[str] = (),
         objective: str = "throughput", allow_long_context: bool = False) -> list[SweepPoint]:
    """Every combination of the inputs, as points."""
    fields = [f for f, _ in vary]
    combos = list(itertools.product(*[vals for _, vals in vary])) or [()]
    return [SweepPoint(model=m, hw=h, overrides=tuple(fixed) + tuple(f"{f}={v}" for f, v in zip(fields, combo)),
                       prompt=p, batch=b, gen=gen, objective=objective, allow_long_context=allow_long_context)
            for m, h, combo, p, b in itertools.product(models, systems, combos, prompts, batches)]


def run_point(point: SweepPoint) -> dict:
    """Plan one point and flatten the plan into a row (module-level so process pools can pickle it)."""
    row: dict = {"model": point.model, "hw": point.hw, "prompt": point.prompt, "max_batch": point.batch,
                 "gen": point.gen, "objective": point.objective, "overrides": ",".join(point.overrides)}
    for ov in point.overrides:
        field, _, value = ov.partition("=")
        row[field] = value
        if field in SCHEMA_DIMENSIONS:
            row[f"{field}_si"] = parse_quantity(value, SCHEMA_DIMENSIONS[field], field=field,
                                                allow_zero=field.endswith("latency"))
    start = time.perf_counter()
    try:
        system = load_system(point.hw, point.overrides)
        wl = KvWorkload(model=load_model(point.model), batch=point.batch, prompt_len=point.prompt, gen_len=point.gen,
                        allow_long_context=point.allow_long_context)
        plan = plan_kv(wl, system, objective=point.objective, simulate=False)
    except (ProfileError, WorkloadError, PlanError) as err:
        row.update({"status": "error", "error": str(err), "plan_time_s": time.perf_counter() - start,
                    "key": point.key()})
        return row
    row.update({"status": plan.status, "plan_time_s": time.perf_counter() - start,
                "solve_time_s": plan.solver["solve_time_s"], "backend": plan.solver["backend"],
                "solves": plan.solver["solves"], "lp_solves": plan.solver["lp_solves"],
                "batches_pruned": plan.solver["batches_pruned"],
                "explanation": plan.explanation})
    if plan.predicted:
        p = plan.predicted
        row.update({k: p[k] for k in ("batch", "prefill_s", "step_time_s", "decode_s", "tokens_per_s",
                                      "decode_tokens_per_s")})
        row.update({k: plan.memory[k] for k in ("gpu_bytes", "host_bytes", "disk_bytes")})
        n = len(plan.layers)
        for what in ("weights", "kv"):
            for tier in ("gpu", "host", "disk"):
                row[f"{what}_{tier}_share"] = sum(e[what][tier] for e in plan.layers) / n
        tok = [e["tokens_per_step"] for e in plan.layers]
        total = sum(t["transferred"] + t["recomputed"] + t["cpu_attended"] for t in tok)
        # Shares of the offloaded KV tokens (kv_host_share + kv_disk_share say how much is offloaded).
        for name, key in (("transfer", "transferred"), ("recompute", "recomputed"), ("cpu", "cpu_attended")):
            row[f"offloaded_{name}_share"] = sum(t[key] for t in tok) / total if total else 0.0
        row["activations_on_host_share"] = sum(e["activations_on_host"] for e in plan.layers) / n
    for name in BASELINES:
        b = plan.baselines.get(name, {})
        row[f"speedup_{name}"] = b.get("speedup", float("nan"))
        row[f"{name}_tokens_per_s"] = b["predicted"]["tokens_per_s"] if b.get("status") == "feasible" else float("nan")
    row["key"] = point.key()
    return row


def run_points(points: Sequence[SweepPoint]) -> list[dict]:
    """Several points in one task: a process pool's per-task cost (pickling, scheduling) is about a
    tenth of a point's own, so points travel in small chunks."""
    return [run_point(p) for p in points]


def checkpoint_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial.jsonl")


def load_rows(output: str | Path) -> list[dict]:
    """Rows already finished for ``output``: the final file (if written) and its checkpoint."""
    import pandas as pd

    output = Path(output)
    rows: dict[str, dict] = {}
    if output.exists():
        df = pd.read_parquet(output) if output.suffix == ".parquet" else pd.read_csv(output)
        for row in df.to_dict("records"):
            rows[row["key"]] = row
    ck = checkpoint_path(output)
    if ck.exists():
        for line in ck.read_text().splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interruption: that point reruns
                    continue
                rows[row["key"]] = row
    return list(rows.values())


class _Progress:
    def __init__(self, total: int, done: int, stream=sys.stderr) -> None:
        self.total, self.done, self.stream = total, done, stream
        self.start = time.perf_counter()
        self.new = 0

    def update(self) -> None:
        self.done += 1
        self.new += 1
        rate = self.new / max(time.perf_counter() - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate else float("inf")
        self.stream.write(f"\rsweep: {self.done}/{self.total} points, {rate:.1f} points/s, ~{left:.0f} s left ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")


def sweep(points: Iterable[SweepPoint], *, output: str | Path | None = None, resume: bool = True,
          executor: Executor | None = None, workers: int | None = None, progress: bool = True,
          on_row: Callable[[dict], None] | None = None):
    """Plan every point; return a pandas DataFrame with one row per point.

    Parameters
    ----------
    points : iterable of SweepPoint
        See :func:`grid`.
    output : path, optional
        ``.parquet`` or ``.csv``. Each finished point is appended to ``<output>.partial.jsonl`` as it
        completes; the table is written when the sweep ends.
    resume : bool
        Skip points already in ``output`` or its checkpoint.
    executor : concurrent.futures.Executor, optional
        Where points run; default a local process pool of ``workers`` (default: all cores).
        For a cluster, pass a Dask ``client.get_executor()``.
    """
    import pandas as pd

    points = list(points)
    done_rows = load_rows(output) if (output and resume) else []
    done_keys = {r["key"] for r in done_rows}
    todo = [p for p in points if p.key() not in done_keys]
    rows = [r for r in done_rows if r["key"] in {p.key() for p in points}]
    bar = _Progress(len(points), len(points) - len(todo)) if progress else None
    ck = open(checkpoint_path(output), "a") if output else None  # noqa: SIM115 - closed in finally
    own = executor is None and len(todo) > 1
    n_workers = workers or os.cpu_count() or 1
    pool = (ProcessPoolExecutor(max_workers=n_workers) if own else executor)
    # Chunks of up to 8 points, at least 4 chunks per worker so that the workers finish together.
    chunk = max(1, min(8, len(todo) // (4 * n_workers)))
    try:
        if pool is None:
            results = ([run_point(p)] for p in todo)
        else:
            results = (f.result() for f in as_completed(
                [pool.submit(run_points, todo[i:i + chunk]) for i in range(0, len(todo), chunk)]))
        for row in itertools.chain.from_iterable(results):
            rows.append(row)
            if ck:
                ck.write(json.dumps(row, default=float) + "\n")
                ck.flush()
            if on_row:
                on_row(row)
            if bar:
                bar.update()
    finally:
        if bar:
            bar.close()
        if ck:
            ck.close()
        if own:
            pool.shutdown(cancel_futures=True)
    order = {p.key(): i for i, p in enumerate(points)}
    df = pd.DataFrame(sorted(rows, key=lambda r: order[r["key"]]))
    if output:
        output = Path(output)
        if output.suffix == ".parquet":
            df.to_parquet(output, index=False)
        else:
            df.to_csv(output, index=False)
    return df
