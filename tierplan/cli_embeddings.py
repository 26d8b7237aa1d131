"""The embeddings family's commands: ``plan embeddings``, ``evaluate embeddings``, and the embeddings side
of ``evaluate PLAN``, ``sweep embeddings`` and ``export torchrec``. Argument parsing and output only.

The planner (``solver.embeddings``), the envelope (``solver.embeddings_plan``) and the cost model
(``costmodel.embeddings_cost``) do the work; this module turns flags into an
:class:`~costmodel.embeddings_cost.EmbWorkload`, runs them and prints a table (or ``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from collections import Counter

from costmodel import EMB_POLICIES, EmbRuntime, EmbWorkload, baseline_policies, evaluate_embeddings, load_rec_model
from costmodel.embeddings import Optimizer
from hwprofiles import format_bytes, load_system
from solver import Plan
from solver import embeddings_plan as ep
from solver.errors import PlanError
from tierplan._format import eval_record

DEFAULTS = {"model": "criteo-kaggle", "hw": "a100-40gb", "batch": 16384, "runtime": EmbRuntime.FBGEMM.value}


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
    p.add_argument("--tf32", action="store_true", help="fp32 matmuls on TF32 tensor cores (PyTorch allow_tf32)")
    if policy:
        p.add_argument("--policy", required=True,
                       help=f"one of {', '.join(EMB_POLICIES)} (torchrec-uvm-cache:CLF, default CLF 0.2; "
                            "colossalai-cache:RATIO, default 0.01)")
        p.add_argument("--runtime", choices=[r.value for r in EmbRuntime], default=DEFAULTS["runtime"],
                       help="the engine that runs the placement: what its caches' bookkeeping and gradients keep "
                            "in HBM (default: %(default)s; colossalai: ColossalAI's CachedEmbeddingBag, SGD tables)")
    else:
        p.add_argument("--cache-kind", choices=("static", "lru"), default="static",
                       help="hit curve of the cached tables: the hottest rows, or an LRU cache (default: static)")
        p.add_argument("--time-limit", type=float, default=10.0, help="seconds per MIP solve")
        p.add_argument("-o", "--output", help="also write the plan to this .json or .yaml file")
    p.add_argument("--backend", choices=("highs", "cbc"), default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def workload(args: argparse.Namespace) -> EmbWorkload:
    model = load_rec_model(args.model)
    if args.optimizer:
        model = dataclasses.replace(model, table_optimizer=Optimizer(args.optimizer))
    return EmbWorkload(model=model, batch=args.batch, prefetch=args.prefetch, tf32=bool(getattr(args, "tf32", False)),
                       runtime=getattr(args, "runtime", DEFAULTS["runtime"]))


# ---------------------------------------------------------------------------------------------- output


def _summary_lines(units: list[dict]) -> list[str]:
    counts = Counter(u["placement"] for u in units)
    cached = [u for u in units if u["placement"] == "cache"]
    lines = [f"tables: {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}"]
    if cached:
        rows = sum(u["cache_rows"] for u in cached)
        lines.append(f"cached tables hold {rows:,} of their {sum(u['rows'] for u in cached):,} rows on the GPU")
    moved = Counter((u["state_tier"], u["update_on"]) for u in units if u["placement"] != "gpu")
    if moved:
        lines.append("host-resident tables: " + ", ".join(f"{n} with state on the {s}, updated on the {w}"
                                                          for (s, w), n in sorted(moved.items())))
    pre = [u for u in units if u.get("prefetched")]
    if pre:
        rows = sum(u["placement"] != "gpu" for u in pre)
        lines.append(f"{len(pre)} tables copy the next batch's ids while this batch computes"
                     + (f" ({rows} with their cold rows)" if rows else ""))
    return lines


def _terms(breakdown: dict) -> str:
    """A breakdown's non-zero terms as ``name bytes, ...``."""
    return ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in breakdown.items() if v)


def _cost_lines(predicted: dict, memory: dict, cap: dict) -> list[str]:
    gpu = _terms(memory["gpu_breakdown"])
    stages = ", ".join(f"{k.replace('_', ' ')} {v * 1e3:.3f}" for k, v in predicted["stage_s"].items())
    return [f"predicted  {predicted['samples_per_s']:,.0f} samples/s, iteration {predicted['iteration_s'] * 1e3:.3f} ms"
            f" ({stages} ms)",
            f"gpu {format_bytes(memory['gpu_bytes'])} of {format_bytes(cap['gpu_bytes'])}: {gpu}",
            f"host {format_bytes(memory['host_bytes'])} of {format_bytes(cap['host_bytes'])}"]


def render_plan(plan: Plan) -> str:
    """The text ``tierplan plan embeddings`` prints."""
    w, s = plan.workload, plan.solver
    lines = [f"tierplan embeddings plan: {w['model']} on {plan.hardware['system']}, batch {w['batch']}, "
             f"table optimizer {w['table_optimizer']}{', prefetch' if w['prefetch'] else ''}"
             f"{', TF32 matmuls' if w.get('tf32') else ''}",
             f"status: {plan.status} (from {s['selected_from'] or 'nothing'}; MIP in {s['solve_time_s']:.2f} s)"]
    for note in plan.extras.get("access_assumptions", []):
        lines.append(f"assumption: {note}")
    if plan.predicted is None:
        lines.append("\n".join(textwrap.wrap(plan.explanation, width=110)))
        return "\n".join(lines)
    lines += _summary_lines(list(plan.units)) + _cost_lines(plan.predicted, plan.memory, plan.capacity)
    lines.append("\nbaselines (same cost model, same batch)")
    for name, b in plan.baselines.items():
        lines.append(f"  {name:22s} " + (f"{b['predicted']['samples_per_s']:>14,.0f} samples/s   plan speed-up "
                                         f"{b['speedup']:.2f}x" if b["status"] == "feasible"
                                         else f"infeasible: {b['reason']}"))
    for name, b in plan.baselines.items():
        h = b.get("hit_rates")
        if h:
            lines.append(f"{name}: TorchRec's planner takes its caches' hit rate as the load factor, "
                         f"{100 * h['assumed_by_torchrec']:.1f} % of lookups; the access distribution gives "
                         f"{100 * h['tierplan']:.1f} %")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    from solver.embeddings import plan_embeddings

    system = load_system(args.hw, args.set or [])
    wl = workload(args)
    emb = plan_embeddings(wl, system, backend=args.backend, time_limit_s=args.time_limit, cache_kind=args.cache_kind)
    plan = ep.to_plan(wl, system, emb, cache_kind=args.cache_kind)
    if args.output:
        plan.save(args.output)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else render_plan(plan))
    return 0 if plan.predicted is not None else 1


def _eval_record(label: str, wl: EmbWorkload, policies, cost, system) -> dict:
    return eval_record(label, ep.KIND, system, cost, workload=ep.workload_record(wl), memory=ep.memory_record(cost),
                       units={"tables": ep.unit_entries(wl, policies, cost)}, predicted=ep.predicted_record)


def _print_eval(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=1, default=str))
        return
    w = out["workload"]
    print(f"{out['policy']}: {out['status']} ({w['model']} on {out['hardware']}, batch {w['batch']})")
    if "reason" in out:
        print("  " + "\n  ".join(textwrap.wrap(out["reason"], width=110)))
    lines = _summary_lines(out["tables"])
    if "predicted" in out:
        lines += _cost_lines(out["predicted"], out["memory"], out["capacity"])
        mem = out["memory"]
        lines.append(f"gpu between iterations {format_bytes(mem['gpu_between_iterations_bytes'])} "
                     f"(allocated after the optimizer step): {_terms(mem['gpu_between_iterations'])}")
    print("  " + "\n  ".join(lines))


def cmd_evaluate(args: argparse.Namespace) -> int:
    name = args.policy.partition(":")[0]
    if name not in EMB_POLICIES:
        raise PlanError(f"--policy must be one of {', '.join(EMB_POLICIES)}, got {args.policy!r}")
    system = load_system(args.hw, args.set or [])
    wl = workload(args)
    policies = baseline_policies(args.policy, wl, system)
    cost = evaluate_embeddings(wl, system, policies)
    _print_eval(_eval_record(args.policy, wl, policies, cost, system), args.json)
    return 0 if cost.feasible else 1


def evaluate_plan_file(plan: Plan, system, args: argparse.Namespace) -> int:
    """``tierplan evaluate PLAN`` for an embeddings plan: its decisions re-costed on ``system``."""
    model = load_rec_model(args.model) if args.model else None
    wl, cost = ep.evaluate_plan(plan, system, model)
    _print_eval(_eval_record(f"plan {args.target}", wl, ep.policies_from_plan(plan, model), cost, system), args.json)
    return 0 if cost.feasible else 1


def cmd_export_torchrec(args: argparse.Namespace) -> int:
    """``tierplan export torchrec PLAN``: the plan as TorchRec ``ParameterConstraints`` (JSON, or the
    Python that builds them with ``--python``), with what TorchRec cannot express listed."""
    from solver.export_torchrec import export_torchrec
    from solver.plan import plan_system

    plan = Plan.load(args.plan)
    if plan.kind != ep.KIND:
        raise PlanError(f"export torchrec takes an embeddings plan, got a plan of kind {plan.kind!r} ({args.plan})")
    system, _ = plan_system(plan)
    ex = export_torchrec(ep.workload_from_plan(plan), ep.policies_from_plan(plan), system=system,
                         one_tbe_per_table=args.one_tbe_per_table)
    text = ex.to_python() if args.python else json.dumps(ex.to_dict(), indent=1)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}: {len(ex.tables)} tables, {len(ex.cannot_express)} decisions TorchRec cannot "
              f"express", file=__import__("sys").stderr)
    else:
        print(text)
    return 0
