"""The training family's commands: ``plan training``, ``evaluate training``, the training side of
``evaluate PLAN`` and ``sweep training``, and ``export deepspeed``. Argument parsing and output only.

The planner (``solver.training``), the envelope (``solver.training_plan``) and the cost model
(``costmodel.training``) do the work.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path

from costmodel import TRAIN_BASELINES, TrainWorkload, evaluate_training, load_model, train_baseline_policies
from costmodel.training import OptimizerKind, Overlap, Precision
from costmodel.training_units import KERNELS
from hwprofiles import Dimension, format_bytes, format_quantity, load_system, parse_quantity
from solver import Plan
from solver import training_plan as tp
from solver.errors import PlanError
from tierplan._format import eval_record

DEFAULTS = {"model": "llama-2-7b", "hw": "a100-40gb", "seq": 2048, "micro_batch": 1}


def add_arguments(p: argparse.ArgumentParser, *, policy: bool) -> None:
    p.add_argument("--model", default=DEFAULTS["model"],
                   help=f"bundled model or a Hugging Face config.json (default: {DEFAULTS['model']})")
    p.add_argument("--hw", default=DEFAULTS["hw"], help="bundled system or YAML path (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="PART.FIELD=VALUE", help="override a profile number or part")
    add_workload_arguments(p)
    if policy:
        p.add_argument("--policy", required=True,
                       help=f"one of {', '.join(TRAIN_BASELINES)}, or a state and an activation baseline joined "
                            "by '+' (twin-flow:RATIO, activation-offload:SHARE)")
    else:
        p.add_argument("--time-limit", type=float, default=10.0, help="seconds per MIP solve")
        p.add_argument("-o", "--output", help="also write the plan to this .json or .yaml file")
    p.add_argument("--backend", choices=("highs", "cbc"), default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq", type=int, default=DEFAULTS["seq"], help="tokens per sequence (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=DEFAULTS["micro_batch"],
                   help="sequences per GPU per micro-step (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (default: 1)")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs of one node (default: 1)")
    p.add_argument("--interconnect", default=None, metavar="BANDWIDTH",
                   help="bus bandwidth between the GPUs for the gradient reduce-scatter / all-gather, e.g. "
                        "'150GB/s' (default: the system's interconnect; one of the two is needed with --gpus > 1)")
    p.add_argument("--precision", choices=[x.value for x in Precision], default="fp16",
                   help="weights and activations: fp16 or bf16 with fp32 master weights, or fp32 (default: fp16)")
    p.add_argument("--optimizer", choices=[x.value for x in OptimizerKind], default="adamw")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="ZeRO stage (default: plan both 2 and 3 and keep the faster; evaluate: the policy's own)")
    p.add_argument("--overlap", choices=[x.value for x in Overlap], default="deepspeed",
                   help="when the optimizer step runs: after the backward as DeepSpeed does (default), overlapped "
                        "with it, or with nothing overlapped")
    p.add_argument("--pin-memory", action="store_true", help="page-locked host buffers (DeepSpeed pin_memory)")
    p.add_argument("--no-grad-clip", action="store_true",
                   help="gradients are not clipped (DeepSpeed gradient_clipping 0): a bf16/fp32 step then skips "
                        "its unscale pass over the gradient (default: clipped, as Megatron and Hugging Face "
                        "Trainer default to)")
    p.add_argument("--unfused-attention", action="store_true", help="attention keeps its s x s scores (no flash)")
    p.add_argument("--dropout", action="store_true", help="dropout masks are kept for the backward")
    p.add_argument("--snapshot-every", type=int, default=0, metavar="K",
                   help="copy the states a restart needs to a host-memory snapshot every K iterations, as "
                        "in-memory checkpointing does (default: 0, never)")
    p.add_argument("--kernels", choices=KERNELS, default="eager",
                   help="how norms and the MLP activation run, which sets what they keep for the backward: eager "
                        "(Hugging Face transformers' PyTorch code, default) or fused (Megatron-Core / Transformer "
                        "Engine kernels)")


def workload(args: argparse.Namespace, *, zero_stage: int | None = None) -> TrainWorkload:
    bw = None
    if args.interconnect is not None:
        bw = parse_quantity(args.interconnect, Dimension.BANDWIDTH, field="--interconnect")
    stage = zero_stage if zero_stage is not None else (2 if args.zero_stage is None else args.zero_stage)
    return TrainWorkload(model=load_model(args.model), seq_len=args.seq, micro_batch=args.micro_batch,
                         grad_accum=args.grad_accum, gpus=args.gpus, precision=args.precision,
                         optimizer=args.optimizer, zero_stage=stage, overlap=args.overlap, pin_memory=args.pin_memory,
                         grad_clip=not args.no_grad_clip, fused_attention=not args.unfused_attention, dropout=args.dropout, kernels=args.kernels,
                         snapshot_every=args.snapshot_every,
                         interconnect_bytes_per_s=bw)


# ---------------------------------------------------------------------------------------------- output


def _placement_lines(units: list[dict]) -> list[str]:
    def key(u: dict) -> str:
        return (f"weights {u['params']}, grads {u['grads']}, master {u['master']}, moments {u['moments']}, step on "
                f"{u['step']}, activations {u['activations']}"
                + (f" ({100 * u['offload_share']:.0f} %)" if u["activations"] == "offload" else ""))

    runs: list[tuple[int, int, str]] = []
    for i, u in enumerate(units):
        k = key(u)
        if runs and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], i, k)
        else:
            runs.append((i, i, k))
    return [f"  layers {a}-{b}: {k}" if a != b else f"  layer {a}: {k}" for a, b, k in runs]


def _cost_lines(p: dict, memory: dict, cap: dict) -> list[str]:
    gpu = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in memory["gpu_breakdown"].items() if v)
    host = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in memory["host_breakdown"].items() if v)
    busy = ", ".join(f"{k} {v:.3f}" for k, v in p["busy_s"].items() if v)
    lines = [f"predicted  iteration {p['iteration_s']:.3f} s (forward {p['forward_s']:.3f}, backward "
             f"{p['backward_s']:.3f}, step {p['step_s']:.3f}), {p['tokens_per_s']:,.0f} tokens/s, MFU "
             f"{100 * p['mfu']:.1f} %; bound by {p['binding']}",
             f"busy s: {busy}",
             f"gpu {format_bytes(memory['gpu_bytes'])} of {format_bytes(cap['gpu_bytes'])} (peak)"
             + (f": {gpu}" if gpu else ""),
             f"host {format_bytes(memory['host_bytes'])} of {format_bytes(cap['host_bytes'])}" + (f": {host}" if host else "")]
    if memory.get("disk_bytes"):
        lines.append(f"disk {format_bytes(memory['disk_bytes'])} of {format_bytes(cap['disk_bytes'])}")
    return lines


def _interconnect_text(plan) -> str:
    """`` over nvswitch-h100 (370 GB/s)`` for several GPUs: the bus bandwidth the collectives were costed at."""
    w = plan.workload
    if w["gpus"] <= 1:
        return ""
    if w.get("interconnect_bytes_per_s") is not None:
        return f" over {format_quantity(w['interconnect_bytes_per_s'], Dimension.BANDWIDTH)} (--interconnect)"
    ic = plan.hardware.get("resolved", {}).get("interconnect") or {}
    return f" over {ic.get('name', '?')} ({ic.get('bus_bandwidth', {}).get('value', '?')})"


def _snapshot_text(k: int) -> str:
    return ", a host snapshot every iteration" if k == 1 else f", a host snapshot every {k} iterations"


def render_plan(plan: Plan) -> str:
    """The text ``tierplan plan training`` prints."""
    w, s = plan.workload, plan.solver
    lines = [f"tierplan training plan: {w['model']} on {plan.hardware['system']}, seq {w['seq_len']}, micro-batch "
             f"{w['micro_batch']} x {w['grad_accum']} accumulation x {w['gpus']} GPU{'s' if w['gpus'] > 1 else ''}, "
             f"{w['precision']} {w['optimizer']}, {w.get('kernels', 'eager')} kernels, ZeRO stage {w['zero_stage']}"
             f"{_interconnect_text(plan)}"
             + (_snapshot_text(w["snapshot_every"]) if w.get("snapshot_every") else ""),
             f"status: {plan.status} (from {s['selected_from'] or 'nothing'}; solved in {s['solve_time_s']:.2f} s)"]
    if plan.predicted is None:
        lines += textwrap.wrap(plan.explanation, width=110)
    else:
        counts = Counter(u["step"] for u in plan.units)
        lines.append(f"per layer ({len(plan.units)} layers; {counts.get('cpu', 0)} stepped on the CPU):")
        lines += _placement_lines(list(plan.units))
        lines += _cost_lines(plan.predicted, plan.memory, plan.capacity)
    lines.append("\nbaselines (same cost model, same workload; each at the ZeRO stage it runs at, a stage-neutral "
                 "one at the fastest the plan may use)")
    for name, b in plan.baselines.items():
        stage = b.get("zero_stage")
        label = name if stage is None or stage == w["zero_stage"] else f"{name} (ZeRO-{stage})"
        if b["status"] == "feasible":
            speed = f"   plan speed-up {b['speedup']:.2f}x" if "speedup" in b else ""
            lines.append(f"  {label:44s} {b['predicted']['tokens_per_s']:>12,.0f} tokens/s{speed}")
        else:
            lines.append(f"  {label:44s} {b['status']}: {b['reason']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    from solver.training import plan_training

    system = load_system(args.hw, args.set or [])
    wl = workload(args)
    stages = None if args.zero_stage is not None else (2, 3)  # DeepSpeed's offload stages, when not given
    best = tp.to_plan(wl, system, plan_training(wl, system, backend=args.backend, time_limit_s=args.time_limit,
                                                zero_stages=stages))
    if args.output:
        best.save(args.output)
    print(json.dumps(best.to_dict(), indent=1) if args.json else render_plan(best))
    return 0 if best.predicted is not None else 1


def _eval_record(label: str, wl: TrainWorkload, policies, head, cost, system) -> dict:
    return eval_record(label, tp.KIND, system, cost, workload=tp.workload_record(wl), memory=tp.memory_record(cost),
                       units={"layers": [tp.policy_record(p) for p in policies],
                              "head": tp.policy_record(head if head is not None else policies[0])},
                       predicted=tp.predicted_record)


def _print_eval(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=1, default=str))
        return
    w = out["workload"]
    extra = "".join((f", {w['gpus']} GPUs" if w.get("gpus", 1) > 1 else "", f", {w.get('kernels', 'eager')} kernels",
                     _snapshot_text(w["snapshot_every"]) if w.get("snapshot_every") else ""))
    print(f"{out['policy']}: {out['status']} ({w['model']} on {out['hardware']}, seq {w['seq_len']}, micro-batch "
          f"{w['micro_batch']}, ZeRO stage {w['zero_stage']}{extra})")
    if "reason" in out:
        print("  " + "\n  ".join(textwrap.wrap(out["reason"], width=110)))
    lines = _placement_lines(out["layers"])
    if "predicted" in out:
        lines += _cost_lines(out["predicted"], out["memory"], out["capacity"])
    print("\n".join("  " + line.lstrip() if not line.startswith("  layer") else line for line in lines))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``tierplan evaluate training --policy P``: the named policy at the workload asked (at the ZeRO
    stage it runs at unless --zero-stage says otherwise), or infeasible with the shortfall."""
    system = load_system(args.hw, args.set or [])
    wl = workload(args)
    if args.zero_stage is None:
        wl = tp.baseline_workload(args.policy, wl)
    policies = train_baseline_policies(args.policy, wl, system)
    cost = evaluate_training(wl, system, policies)
    _print_eval(_eval_record(args.policy, wl, policies, None, cost, system), args.json)
    return 0 if cost.feasible else 1


def evaluate_plan_file(plan: Plan, system, args: argparse.Namespace) -> int:
    """``tierplan evaluate PLAN`` for a training plan: its decisions re-costed on ``system``."""
    model = load_model(args.model) if args.model else None
    wl, cost = tp.evaluate_plan(plan, system, model)
    pols, head = tp.policies_from_plan(plan, wl)
    _print_eval(_eval_record(f"plan {args.target}", wl, pols, head, cost, system), args.json)
    return 0 if cost.feasible else 1


def cmd_export_deepspeed(args: argparse.Namespace) -> int:
    """``tierplan export deepspeed PLAN``: the nearest DeepSpeed config (on standard output or ``-o``), what
    it cannot express and the predicted cost of the config as exported (on standard error; all of it
    in ``--report``)."""
    from solver.export_deepspeed import export_deepspeed
    from solver.plan import plan_system

    plan = Plan.load(args.plan)
    if plan.kind != tp.KIND:
        raise PlanError(f"export deepspeed takes a training plan, got a plan of kind {plan.kind!r} ({args.plan})")
    system, _ = plan_system(plan)
    wl = tp.workload_from_plan(plan)
    pols, head = tp.policies_from_plan(plan, wl)
    ex = export_deepspeed(wl, pols, head=head, system=system, model_code=args.model_code, nvme_path=args.nvme_path)
    report = ex.report()
    if args.output:
        Path(args.output).write_text(ex.to_json() + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(ex.to_json())
    lost = report["cannot_express"]
    print(f"tierplan: {len(lost)} decision{'s' if len(lost) != 1 else ''} DeepSpeed cannot express"
          + "".join(f"\n  {d['decision']}: {d['why']}" for d in lost[:12])
          + (f"\n  ... and {len(lost) - 12} more (--report)" if len(lost) > 12 else ""), file=sys.stderr)
    for step in report["model_code"]:
        print(f"tierplan: in the training script: {step}", file=sys.stderr)
    pe = report.get("predicted_as_exported")
    if pe:
        if pe["fits"]:
            print(f"tierplan: the config as exported is predicted at {pe['tokens_per_s']:,.0f} tokens/s (iteration "
                  f"{pe['iteration_s']:.3f} s); the plan: {plan.predicted['tokens_per_s']:,.0f} tokens/s "
                  f"({plan.predicted['iteration_s']:.3f} s)", file=sys.stderr)
        else:
            print("tierplan: the config as exported does not fit this system's memory (see --report)", file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0
