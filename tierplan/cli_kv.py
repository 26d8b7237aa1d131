"""The KV family's commands: ``plan kv``, ``evaluate kv``, and the KV side of ``evaluate PLAN`` and
``replay``. Argument parsing and output only; ``solver.kv`` and ``costmodel.kv`` do the work."""

from __future__ import annotations

import argparse
import json
import textwrap

from costmodel import KvWorkload, WorkloadError, capacity, load_model
from costmodel.kv import KV_DTYPES, explain_shortfall
from hwprofiles import format_bytes, load_system
from solver import BASELINES, OBJECTIVES, Plan, PlanError, evaluate_plan, evaluate_policy, plan_kv
from solver.kv import FLEXGEN_ENGINE, memory_record, metrics, workload_from_plan
from solver.plan import shortfall_bytes
from tierplan._format import _ms, _pct, _table

DEFAULTS = {"model": "llama-2-7b", "hw": "a100-40gb", "batch": 64, "prompt": 512, "gen": 128}


def _workload(args: argparse.Namespace, *, flexgen: bool = False) -> KvWorkload:
    """The workload the flags describe. ``--gpu-batch B --gpu-batches K`` is a batch of B x K run as K
    GPU batches (FlexGen's notions); FlexGen policies run as FlexGen does: a GPU batch's prompt
    prefilled at once (unless --prefill-chunk says otherwise), attention and MLP weights streamed
    separately, unfused attention, CPU attention through an fp32 copy of the KV it reads."""
    gb, k, batch = args.gpu_batch, args.gpu_batches, args.batch
    if k is not None and gb is None:
        if batch is None or batch % k:
            raise WorkloadError(f"--gpu-batches {k} needs --gpu-batch, or a --batch that is a multiple of it, "
                                f"got --batch {batch}")
        gb = batch // k
    if gb is not None and k is not None:
        if batch is not None and batch != gb * k:
            raise WorkloadError(f"--batch {batch} must equal --gpu-batch {gb} x --gpu-batches {k} = {gb * k}")
        batch = gb * k
    batch = DEFAULTS["batch"] if batch is None else batch
    engine = dict(FLEXGEN_ENGINE) if flexgen else {}
    if args.prefill_chunk is not None:
        engine["prefill_chunk_tokens"] = args.prefill_chunk
    prompt = DEFAULTS["prompt"] if args.prompt is None else args.prompt
    gen = DEFAULTS["gen"] if args.gen is None else args.gen
    return KvWorkload(model=load_model(args.model), batch=batch, prompt_len=prompt, gen_len=gen,
                      dtype_bytes=args.dtype_bytes or 2, gpu_batch=gb or 0, kv_dtype=args.kv_dtype or "",
                      kv_keep=1.0 if args.kv_keep is None else args.kv_keep,
                      allow_long_context=args.allow_long_context, **engine)


def _layer_rows(plan: Plan) -> list[list[str]]:
    """One row per run of consecutive identical layers."""
    rows: list[list[str]] = []
    prev_key, start = None, 0
    entries = list(plan.layers)

    def key(e):
        return (tuple(round(v, 3) for v in e["weights"].values()), tuple(round(v, 3) for v in e["kv"].values()),
                e["activations_on_host"], tuple((round(a["transfer"], 2), round(a["recompute"], 2), round(a["cpu"], 2))
                                                for a in e["kv_actions"]))

    def row(a: int, b: int) -> list[str]:
        e = entries[a]
        w, kv = e["weights"], e["kv"]
        acts = e["kv_actions"]
        off = kv["host"] + kv["disk"]
        if off <= 0:
            actions = "-"
        else:
            first, last = acts[0], acts[-1]
            fmt = lambda x: f"{_pct(x['transfer'])}/{_pct(x['recompute'])}/{_pct(x['cpu'])}"  # noqa: E731
            actions = fmt(first) if fmt(first) == fmt(last) else f"{fmt(first)} -> {fmt(last)}"
        return [f"{a}" if a == b else f"{a}-{b}", f"{_pct(w['gpu'])}/{_pct(w['host'])}/{_pct(w['disk'])}",
                f"{_pct(kv['gpu'])}/{_pct(kv['host'])}/{_pct(kv['disk'])}", "yes" if e["activations_on_host"] else "no",
                actions, _ms(e["prefill_s"]), _ms(e["step_time_s"]), e["binding"]]

    for i, e in enumerate(entries):
        k = key(e)
        if k != prev_key and prev_key is not None:
            rows.append(row(start, i - 1))
            start = i
        prev_key = k
    if entries:
        rows.append(row(start, len(entries) - 1))
    return rows


def render_plan(plan: Plan) -> str:
    wl, hw = plan.workload, plan.hardware
    lines = [f"tierplan kv plan: {wl['model']} on {hw['system']} ({hw['gpu']}, {hw['link']}), prompt {wl['prompt_len']}, "
             f"gen {wl['gen_len']}, objective {plan.objective}"]
    if hw.get("overrides"):
        lines.append(f"overrides: {', '.join(hw['overrides'])}")
    lines.append(f"status: {plan.status}")
    if plan.predicted is None:
        lines.append(f"no feasible plan: {plan.explanation}")
        lines += _baseline_lines(plan)
        return "\n".join(lines)
    p = plan.predicted
    split = f" as {p['gpu_batches']} GPU batches of {p['gpu_batch']}" if p.get("gpu_batches", 1) > 1 else ""
    searched = (f"searched up to {wl.get('max_batch', wl['batch'])}" if plan.objective == "throughput"
                else "the batch asked")
    lines.append(f"batch: {p['batch']}{split} ({searched})\n")
    lines.append("per layer (weights and KV as % gpu/host/disk; offloaded KV tokens as % transfer/recompute/cpu, "
                 "first -> last context range; times in ms)")
    lines.append(_table(["layers", "weights", "kv", "act@host", "kv tokens T/R/C", "prefill ms", "step ms", "binding"],
                        _layer_rows(plan)))
    head = plan.head
    lines.append(f"head (embeddings + LM head): {'gpu' if head['on_gpu'] else 'host, streamed'}, {_ms(head['step_s'])} ms/step\n")
    lines.append(f"predicted  prefill {p['prefill_s']:.3f} s   decode step {_ms(p['step_time_s'])} ms (mean)   "
                 f"decode {p['decode_s']:.3f} s")
    lines.append(f"           throughput {p['tokens_per_s']:,.1f} tokens/s (generated / (prefill + decode)),  "
                 f"decode-only {p['decode_tokens_per_s']:,.1f} tokens/s")
    sim = plan.solver.get("simulated")
    if sim:
        lp = plan.solver.get("lp_estimate_s")
        lp_text = f"LP estimate {lp:.3f} s" if lp is not None else "no LP estimate (a baseline's decisions)"
        lines.append(f"           {lp_text}, exact cost model {p['total_s']:.3f} s, simulated timeline {sim['total_s']:.3f} s")
    lines.append("")
    mem_rows = []
    for tier in ("gpu", "host", "disk"):
        used, cap = plan.memory[f"{tier}_bytes"], plan.capacity[f"{tier}_bytes"]
        mem_rows.append([tier, format_bytes(used), format_bytes(cap), f"{100 * used / cap:.0f}%" if cap else "-"])
    lines.append(_table(["memory", "used", "usable", "share"], mem_rows))
    lines += _gpu_breakdown_lines(plan.memory)
    lines.append("")
    lines += _baseline_lines(plan)
    s = plan.solver
    pruned = s.get("batches_pruned", 0)
    lps = s.get("lp_solves", 0)
    lines.append(f"\nsolver: {s['backend']}, {s['solves'] - lps} MIP + {lps} LP solves in {s['solve_time_s']:.2f} s "
                 f"(statuses: {', '.join(s['statuses'])}), largest model {s['n_variables']} variables; "
                 f"{pruned} candidate batch{'es' if pruned != 1 else ''} skipped by the time bound; "
                 f"modes {s.get('mode_counts')}")
    return "\n".join(lines)


_PHASE_TERMS = {"prefill": ("prefill_kv_staging", "prefill_hidden", "prefill_working"),
                "decode": ("kv_buffers", "decode_working")}


def _gpu_breakdown_lines(memory: dict) -> list[str]:
    """What the GPU holds: the resident terms, then each phase's own terms and its peak."""
    terms = memory.get("gpu_breakdown", {})
    phase_terms = {t for ts in _PHASE_TERMS.values() for t in ts}
    fmt = lambda items: ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in items if v)  # noqa: E731
    lines = [f"gpu holds: {fmt((k, v) for k, v in terms.items() if k not in phase_terms)}"]
    for phase, names in _PHASE_TERMS.items():
        total = memory.get(f"gpu_{phase}_bytes")
        if total is None:
            continue
        peak = " (peak)" if memory.get("gpu_peak_phase") == phase else ""
        lines.append(f"  {phase} {format_bytes(total)}{peak}: + {fmt((k, terms.get(k, 0.0)) for k in names)}")
    return lines


def _baseline_lines(plan: Plan) -> list[str]:
    rows = []
    for name, b in plan.baselines.items():
        if b["status"] != "feasible":
            rows.append([name, "infeasible", "", "", "", b.get("reason", "")])
            continue
        bp = b["predicted"]
        speed = f"{b['speedup']:.2f}x" if "speedup" in b else ""
        rows.append([name, str(bp["batch"]), f"{bp['tokens_per_s']:,.1f}", _ms(bp["step_time_s"]), speed, ""])
    if not rows:
        return []
    return ["baselines (same cost model; each at its best batch for throughput)",
            _table(["policy", "batch", "tokens/s", "step ms", "plan speed-up", "note"], rows)]


def cmd_plan_kv(args: argparse.Namespace) -> int:
    system = load_system(args.hw, args.set or [])
    wl = _workload(args)
    plan = plan_kv(wl, system, objective=args.objective, n_ranges=args.ranges, kv_groups=args.kv_groups,
                   backend=args.backend, time_limit_s=args.time_limit)
    if args.output:
        plan.save(args.output)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else render_plan(plan))
    return 0 if plan.predicted is not None else 1


def cmd_evaluate_policy(args: argparse.Namespace) -> int:
    """``tierplan evaluate kv --policy P``: the policy costed at the batch asked, or infeasible."""
    if not args.policy:
        raise PlanError("evaluate kv needs --policy NAME (" + ", ".join(BASELINES) + ", flexgen:wg,wc,cg,cc,hg,hc)")
    if args.objective != "throughput":
        raise PlanError("evaluate kv costs the policy at the batch asked; --objective is a plan option")
    system = load_system(args.hw or DEFAULTS["hw"], args.set or [])
    args.model = args.model or DEFAULTS["model"]
    wl = _workload(args, flexgen=args.policy.startswith("flexgen:"))
    res = evaluate_policy(args.policy, wl, system, backend=args.backend)
    out = {"policy": args.policy, "status": res.status, "workload": wl.summary()}
    if res.memory is not None:
        out["memory"] = memory_record(res.memory)
        out["capacity"] = capacity(system)
    if res.evaluated is None:
        out["reason"] = res.reason
        out["shortfall_bytes"] = shortfall_bytes(res.shortfalls)
    else:
        ev = res.evaluated
        out["predicted"] = metrics(ev.workload, ev.cost)
        out["placement"] = {"head_on_gpu": ev.head_on_gpu, "prefill_hidden_on_gpu": ev.hidden_on_gpu}
    _print_eval(out, args.json)
    return 0 if res.feasible else 1


def evaluate_plan_file(plan: Plan, system, args: argparse.Namespace) -> int:
    """``tierplan evaluate PLAN`` for a KV plan: its decisions re-costed on ``system``."""
    wl = plan_workload(plan, model=load_model(args.model) if args.model else None)
    cost, pred = evaluate_plan(plan, wl, system)
    out = {"policy": f"plan {args.target}", "hardware": system.name,
           "status": "feasible" if cost.feasible else "infeasible", "predicted": pred,
           "memory": memory_record(cost.memory), "capacity": cost.capacity}
    if not cost.feasible:
        out["reason"] = explain_shortfall(cost.memory, cost.capacity)
    _print_eval(out, args.json)
    return 0 if cost.feasible else 1


def plan_workload(plan: Plan, *, model=None) -> KvWorkload:
    """The workload a plan was made for (its batch, GPU batch, chunking and streaming included)."""
    return workload_from_plan(plan, model)


def _print_eval(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['policy']}: {out['status']}")
    if "reason" in out:
        print("  " + "\n  ".join(textwrap.wrap(out["reason"], width=110)))
    p = out.get("predicted")
    if p:
        split = f" ({p['gpu_batches']} GPU batches of {p['gpu_batch']})" if p.get("gpu_batches", 1) > 1 else ""
        print(f"  batch {p['batch']}{split}: prefill {p['prefill_s']:.3f} s, decode step {_ms(p['step_time_s'])} ms, "
              f"throughput {p['tokens_per_s']:,.1f} tokens/s")
        for tier in ("gpu", "host", "disk"):
            print(f"  {tier:5s} {format_bytes(out['memory'][f'{tier}_bytes']):>12s} of "
                  f"{format_bytes(out['capacity'][f'{tier}_bytes'])}")
        print("  " + "\n  ".join(_gpu_breakdown_lines(out["memory"])))


def _workload_args(p: argparse.ArgumentParser, *, required_model: bool = False) -> None:
    p.add_argument("--model", default=None if required_model else DEFAULTS["model"],
                   help=f"bundled model name or path to a Hugging Face config.json (default: {DEFAULTS['model']}"
                        + (", or the plan's own" if required_model else "") + ")")
    p.add_argument("--batch", type=int, default=None,
                   help=f"plan: the largest batch searched (throughput) or the batch (latency); evaluate: the batch "
                        f"(default: {DEFAULTS['batch']})")
    p.add_argument("--gpu-batch", type=int, default=None,
                   help="sequences per GPU batch: the batch runs as batch / gpu-batch GPU batches (FlexGen's "
                        "--gpu-batch-size; default: the whole batch, or the plan's choice)")
    p.add_argument("--gpu-batches", type=int, default=None,
                   help="number of GPU batches (FlexGen's --num-gpu-batches); with --gpu-batch it sets the batch")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="tokens per prefill chunk, 0 = a GPU batch's whole prompt (default: 4096; FlexGen "
                        "policies: 0)")
    p.add_argument("--prompt", type=int, default=None, help=f"prompt tokens (default: {DEFAULTS['prompt']})")
    p.add_argument("--gen", type=int, default=None, help=f"generated tokens (default: {DEFAULTS['gen']})")
    p.add_argument("--dtype-bytes", type=int, choices=(2, 4), default=None,
                   help="bytes per weight/activation element: 2 (fp16/bf16) or 4 (fp32) (default: 2)")
    p.add_argument("--kv-dtype", choices=tuple(KV_DTYPES), default=None,
                   help="KV cache storage (fp8: 1 byte; int4: 0.5 byte + an fp16 scale and zero per 64 elements; "
                        "default: --dtype-bytes)")
    p.add_argument("--kv-keep", type=float, default=None,
                   help="share of context tokens whose KV is kept (token eviction, e.g. 0.25; default: 1)")
    p.add_argument("--allow-long-context", action="store_true",
                   help="cost a context longer than the model's max_position_embeddings (with rope scaling)")
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput")
    p.add_argument("--set", action="append", metavar="PART.FIELD=VALUE",
                   help="override a profile number or part, e.g. link.h2d=12GB/s, host.memory=208GiB, disk=nvme-gen4")
    p.add_argument("--backend", choices=("highs", "cbc"), default=None,
                   help="MIP backend (default: highs if highspy is installed, else cbc)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
