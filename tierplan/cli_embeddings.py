"""``tierplan plan embeddings`` and ``tierplan evaluate embeddings``: argument parsing and output only.

The embeddings family's planner (``solver.embeddings``) and cost model (``costmodel.embeddings_cost``)
do the work; this module turns flags into an :class:`~costmodel.embeddings_cost.EmbWorkload`, runs
them and prints a table (or ``--json``). Its results are not yet a :class:`solver.Plan` envelope, so
``evaluate PLAN``, ``sweep`` and ``replay`` do not take them yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter

from costmodel import EMB_BASELINES, EmbWorkload, baseline_policies, evaluate_embeddings, load_rec_model
from costmodel.embeddings import Optimizer
from hwprofiles import format_bytes, load_system
from solver.errors import PlanError

DEFAULTS = {"model": "criteo-kaggle", "hw": "a100-40gb", "batch": 16384}


def add_arguments(p: argparse.ArgumentParser, *, policy: bool) -> None:
    p.add_argument("--model", default=DEFAULTS["model"],
                   help=f"recommendation preset or spec YAML (`tierplan models list`; default: {DEFAULTS['model']})")
    p.add_argument("--hw", default=DEFAULTS["hw"], help="bundled system or YAML path (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="PART.FIELD=VALUE", help="override a profile number or part")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="samples per iteration (default: %(default)s)")
    p.add_argument("--optimizer", choices=[o.value for o in Optimizer],
                   help="the tables' optimizer (default: the spec's)")
    p.add_argument("--prefetch", action="store_true",
                   help="copy the next batch's cold rows during this batch's compute (ScratchPipe), into a buffer")
    if policy:
        p.add_argument("--policy", required=True,
                       help=f"one of {', '.join(EMB_BASELINES)} (torchrec-uvm-cache:CLF, default CLF 0.2)")
    else:
        p.add_argument("--cache-kind", choices=("static", "lru"), default="static",
                       help="hit curve of the cached tables: the hottest rows, or an LRU cache (default: static)")
        p.add_argument("--time-limit", type=float, default=10.0, help="seconds per MIP solve")
    p.add_argument("--backend", choices=("highs", "cbc"), default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _workload(args: argparse.Namespace) -> EmbWorkload:
    model = load_rec_model(args.model)
    if args.optimizer:
        model = dataclasses.replace(model, table_optimizer=Optimizer(args.optimizer))
    return EmbWorkload(model=model, batch=args.batch, prefetch=args.prefetch)


def _placements(wl: EmbWorkload, policies) -> list[dict]:
    return [{"table": t.name, "rows": t.rows, "placement": p.placement.value, "cache_rows": p.cache_rows,
             "state": p.state_tier.value, "update_on": p.update_on.value, "prefetch": p.prefetch}
            for t, p in zip(wl.model.tables, policies)]


def _memory(cost) -> dict:
    return {**cost.memory.as_dict(), "gpu_breakdown": dict(cost.memory.gpu_breakdown),
            "host_breakdown": dict(cost.memory.host_breakdown), "capacity": cost.capacity}


def _summary_lines(wl: EmbWorkload, policies) -> list[str]:
    counts = Counter(p.placement.value for p in policies)
    cached = [(t, p) for t, p in zip(wl.model.tables, policies) if p.placement.value == "cache"]
    lines = [f"tables: {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}"]
    if cached:
        rows = sum(p.cache_rows for _, p in cached)
        lines.append(f"cached tables hold {rows:,} of their {sum(t.rows for t, _ in cached):,} rows on the GPU")
    return lines


def _cost_lines(cost) -> list[str]:
    mem = cost.memory
    gpu = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in mem.gpu_breakdown if v)
    return [f"predicted  {cost.samples_per_s:,.0f} samples/s, iteration {cost.iteration_s * 1e3:.3f} ms",
            f"gpu {format_bytes(mem.gpu_bytes)} of {format_bytes(cost.capacity['gpu_bytes'])}: {gpu}",
            f"host {format_bytes(mem.host_bytes)} of {format_bytes(cost.capacity['host_bytes'])}"]


def cmd_plan(args: argparse.Namespace) -> int:
    from solver.embeddings import plan_embeddings

    system = load_system(args.hw, args.set or [])
    wl = _workload(args)
    plan = plan_embeddings(wl, system, backend=args.backend, time_limit_s=args.time_limit, cache_kind=args.cache_kind)
    if args.json:
        out = {"kind": "embeddings", "status": plan.status.value, "selected": plan.selected, "model": wl.model.name,
               "hardware": system.summary(), "batch": wl.batch, "lp_estimate_s": plan.lp_estimate_s,
               "solve_time_s": plan.solve_time_s,
               "baselines": [dataclasses.asdict(b) for b in plan.baselines]}
        if plan.cost is not None:
            out.update({"predicted": {"samples_per_s": plan.cost.samples_per_s, "iteration_s": plan.cost.iteration_s},
                        "memory": _memory(plan.cost), "tables": _placements(wl, plan.policies)})
        print(json.dumps(out, indent=1, default=str))
        return 0 if plan.cost is not None else 1
    print(f"tierplan embeddings plan: {wl.model.name} on {system.name}, batch {wl.batch}, "
          f"table optimizer {wl.model.table_optimizer.value}{', prefetch' if wl.prefetch else ''}")
    print(f"status: {plan.status.value} (from {plan.selected}; MIP in {plan.solve_time_s:.2f} s)")
    if plan.cost is None:
        print("no placement fits: " + "; ".join(f"{b.name}: {b.reason}" for b in plan.baselines if b.reason)[:2000])
        return 1
    print("\n".join(_summary_lines(wl, plan.policies) + _cost_lines(plan.cost)))
    print("\nbaselines (same cost model, same batch)")
    for b in plan.baselines:
        print(f"  {b.name:22s} " + (f"{b.samples_per_s:>14,.0f} samples/s   plan speed-up {b.speedup:.2f}x"
                                    if b.feasible else f"infeasible: {b.reason}"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    name = args.policy.partition(":")[0]
    if name not in EMB_BASELINES:
        raise PlanError(f"--policy must be one of {', '.join(EMB_BASELINES)}, got {args.policy!r}")
    system = load_system(args.hw, args.set or [])
    wl = _workload(args)
    policies = baseline_policies(args.policy, wl, system)
    cost = evaluate_embeddings(wl, system, policies)
    out = {"policy": args.policy, "status": "feasible" if cost.feasible else "infeasible", "model": wl.model.name,
           "batch": wl.batch, "memory": _memory(cost), "tables": _placements(wl, policies)}
    if cost.feasible:
        out["predicted"] = {"samples_per_s": cost.samples_per_s, "iteration_s": cost.iteration_s}
    else:
        out["reason"] = cost.explain_shortfall()
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print(f"{args.policy}: {out['status']} ({wl.model.name} on {system.name}, batch {wl.batch})")
        if not cost.feasible:
            print(f"  {out['reason']}")
        print("  " + "\n  ".join(_summary_lines(wl, policies) + (_cost_lines(cost) if cost.feasible else [])))
    return 0 if cost.feasible else 1
