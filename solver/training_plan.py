"""The training family in the shared :class:`~solver.plan.Plan` envelope: write, check, read back, re-cost.

A plan of kind ``"training"`` holds

* ``workload``: :meth:`costmodel.training.TrainWorkload.summary` plus ``model_file`` and
  ``allow_long_context`` (enough to rebuild the workload);
* ``units``: one entry per decoder layer, in order: its :class:`~costmodel.training.LayerTrainPolicy`
  (``params``, ``grads``, ``master``, ``moments`` as gpu/host/disk; ``step`` gpu/cpu;
  ``activations`` keep/recompute/selective/offload; ``offload_share``);
* ``extras``: ``head``, the embeddings' and LM head's policy;
* ``predicted``: ``iteration_s``, ``forward_s``, ``backward_s``, ``step_s``, ``tokens_per_s``,
  ``mfu``, ``binding`` and ``busy_s`` per resource;
* ``memory``: bytes per tier (the GPU's peak per GPU; the node's host and disk) with each tier's
  ``<tier>_breakdown`` and the host's pinned/pageable split (:func:`costmodel.training.memory_use`);
* ``baselines``: every baseline at the same workload: ``status``, ``predicted``, ``speedup`` or ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from costmodel import WorkloadError, list_models, load_model
from costmodel.training import (
    ActAction,
    LayerTrainPolicy,
    OptimizerKind,
    Overlap,
    Precision,
    StepDevice,
    TrainCost,
    TrainWorkload,
    evaluate_training,
)
from costmodel.training_units import KERNELS, Tier
from hwprofiles import System
from solver.errors import PlanError
from solver.plan import Plan, _Checker, register_kind, shortfall_bytes

KIND = "training"
POLICY_FIELDS = ("params", "grads", "master", "moments", "step", "activations", "offload_share")
_BOOL_FIELDS = ("fp32_grad_copy", "fused_attention", "dropout", "pin_memory", "grad_clip")


def workload_record(wl: TrainWorkload) -> dict[str, Any]:
    """The plan's ``workload`` field: enough to rebuild ``wl`` (:func:`workload_from_plan`)."""
    # the config's absolute path: a plan is re-costed from other folders than the one it was made in
    model_file = str(Path(wl.model.source).resolve()) if wl.model.source else None
    return {**wl.summary(), "model_file": model_file, "allow_long_context": wl.allow_long_context}


def policy_record(p: LayerTrainPolicy) -> dict[str, Any]:
    return {"params": p.params.value, "grads": p.grads.value, "master": p.master.value, "moments": p.moments.value,
            "step": p.step.value, "activations": p.activations.value, "offload_share": float(p.offload_share)}


def predicted_record(cost: TrainCost) -> dict[str, Any]:
    """A plan's ``predicted`` field."""
    return {"iteration_s": cost.iteration_s, "forward_s": cost.forward_s, "backward_s": cost.backward_s,
            "step_s": cost.step_s, "tokens_per_s": cost.tokens_per_s, "mfu": cost.mfu, "binding": cost.binding,
            "busy_s": {r.value: t for r, t in cost.busy}}


def memory_record(cost: TrainCost) -> dict[str, Any]:
    """A plan's ``memory`` field: bytes per tier and each tier's terms."""
    m = cost.memory
    return {**m.as_dict(), "gpu_breakdown": dict(m.gpu_breakdown), "host_breakdown": dict(m.host_breakdown),
            "disk_breakdown": dict(m.disk_breakdown), "host_pinned_bytes": m.host_pinned_bytes,
            "host_pageable_bytes": m.host_pageable_bytes}


def baseline_record(cost: TrainCost, plan_tokens_per_s: float | None) -> dict[str, Any]:
    """One ``baselines`` entry: the baseline costed on the plan's workload, and the plan's speed-up over it."""
    if not cost.feasible:
        return {"status": "infeasible", "reason": cost.explain_shortfall(),
                "shortfall_bytes": shortfall_bytes(cost.shortfalls())}
    entry: dict[str, Any] = {"status": "feasible", "predicted": {"tokens_per_s": cost.tokens_per_s,
                                                                  "iteration_s": cost.iteration_s, "mfu": cost.mfu}}
    if plan_tokens_per_s is not None:
        entry["speedup"] = plan_tokens_per_s / cost.tokens_per_s
    return entry


def baseline_workload(name: str, wl: TrainWorkload) -> TrainWorkload:
    """``wl`` at the ZeRO stage the baseline runs at (ZeRO-Offload at 2, ZeRO-Infinity and Twin-Flow
    at 3: :func:`costmodel.training.baseline_zero_stage`), the rest unchanged."""
    from dataclasses import replace

    from costmodel.training import baseline_zero_stage

    stage = baseline_zero_stage(name)
    return wl if stage is None or stage == wl.zero_stage else replace(wl, zero_stage=stage)


def to_plan(wl: TrainWorkload, system: System, tp: Any) -> Plan:
    """The envelope of a :class:`solver.training.TrainPlan` (``plan_training``'s result).

    Each baseline's entry is the planner's exact cost of it (:class:`solver.training.BaselineResult`,
    at the ZeRO stage it runs at, the requested workload's for a stage-neutral one), so the record
    shows what the plan was compared with (an infeasible one with its shortfall per tier); a baseline
    the workload cannot run (a ZeRO stage it needs, a disk the system lacks) gets its reason. A
    baseline result without its cost (built by hand) is costed here, at the plan's workload.
    """
    from costmodel.training import baseline_policies

    wl = getattr(tp, "workload", None) or wl  # the plan's own, at the ZeRO stage it chose
    cost: TrainCost | None = tp.cost
    rate = None if cost is None else cost.tokens_per_s
    baselines: dict[str, dict[str, Any]] = {}
    for b in tp.baselines:
        bcost = getattr(b, "cost", None)
        if bcost is None:
            try:
                bwl = baseline_workload(b.name, wl)
                bcost = evaluate_training(bwl, system, baseline_policies(b.name, bwl, system))
            except WorkloadError as err:
                baselines[b.name] = {"status": "not applicable", "reason": str(err)}
                continue
        baselines[b.name] = baseline_record(bcost, rate)
        if getattr(b, "zero_stage", None) is not None:
            baselines[b.name]["zero_stage"] = b.zero_stage
    solver_info = {"status": tp.status.value, "selected_from": tp.selected, "solve_time_s": tp.solve_time_s,
                   "lp_estimate_s": tp.lp_estimate_s,
                   "mip_iteration_s": None if tp.mip_cost is None else tp.mip_cost.iteration_s,
                   "n_variables": getattr(tp, "n_variables", None), "n_constraints": getattr(tp, "n_constraints", None)}
    if cost is None:
        return Plan(kind=KIND, status=tp.status.value, objective="throughput", workload=workload_record(wl),
                    hardware=system.summary(), capacity=_capacity(wl, system), baselines=baselines, solver=solver_info,
                    explanation=getattr(tp, "explanation", "") or "no placement fits")
    head = tp.head if getattr(tp, "head", None) is not None else tp.policies[0]
    return Plan(kind=KIND, status=tp.status.value, objective="throughput", workload=workload_record(wl),
                hardware=system.summary(), predicted=predicted_record(cost), memory=memory_record(cost),
                capacity=dict(cost.capacity), units=tuple(policy_record(p) for p in tp.policies),
                extras={"head": policy_record(head)}, baselines=baselines, solver=solver_info)


def _capacity(wl: TrainWorkload, system: System) -> dict[str, float]:
    from costmodel.training import node_capacity

    return node_capacity(wl, system)


# ---------------------------------------------------------------------------------------------
# Reading a plan back
# ---------------------------------------------------------------------------------------------


def _choice(c: _Checker, value: Any, path: str, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise c.fail(path, f"must be one of {', '.join(allowed)}", value)


def _check_policy(c: _Checker, u: Any, at: str) -> None:
    u = c.mapping(u, at)
    for key in POLICY_FIELDS:
        if key not in u:
            raise c.missing(f"{at}.{key}")
    for key in ("params", "grads", "master", "moments"):
        _choice(c, u[key], f"{at}.{key}", [t.value for t in Tier])
    _choice(c, u["step"], f"{at}.step", [s.value for s in StepDevice])
    _choice(c, u["activations"], f"{at}.activations", [a.value for a in ActAction])
    c.number(u["offload_share"], f"{at}.offload_share", 0.0, 1.0)
    try:
        _policy(u)
    except WorkloadError as err:  # a combination the cost model refuses (a CPU step with GPU states, ...)
        raise c.fail(at, f"is not a valid layer policy ({err})", {k: u[k] for k in POLICY_FIELDS[:6]}) from None


def _check(c: _Checker, data: Mapping[str, Any]) -> None:
    """A training plan's workload, layer units and extras: every field re-costing, replay and export read."""
    w = data["workload"]
    for key in ("seq_len", "micro_batch", "grad_accum", "gpus", "zero_stage", "precision", "optimizer",
                "moments_dtype", "overlap", *_BOOL_FIELDS):
        if key not in w:
            raise c.missing(f"workload.{key}")
    for key in ("seq_len", "micro_batch", "grad_accum", "gpus"):
        c.integer(w[key], f"workload.{key}", 1)
    if isinstance(w["zero_stage"], bool) or w["zero_stage"] not in (0, 1, 2, 3):
        raise c.fail("workload.zero_stage", "must be 0, 1, 2 or 3", w["zero_stage"])
    _choice(c, w["precision"], "workload.precision", [p.value for p in Precision])
    _choice(c, w["optimizer"], "workload.optimizer", [o.value for o in OptimizerKind])
    _choice(c, w["overlap"], "workload.overlap", [o.value for o in Overlap])
    c.string(w["moments_dtype"], "workload.moments_dtype", empty=False)
    for key in _BOOL_FIELDS:
        c.boolean(w[key], f"workload.{key}")
    if "allow_long_context" in w:
        c.boolean(w["allow_long_context"], "workload.allow_long_context")
    if "kernels" in w:  # absent in plans written before it existed: the default
        _choice(c, w["kernels"], "workload.kernels", list(KERNELS))
    if "snapshot_every" in w:
        c.integer(w["snapshot_every"], "workload.snapshot_every", 0)
    if w.get("interconnect_bytes_per_s") is not None:
        c.number(w["interconnect_bytes_per_s"], "workload.interconnect_bytes_per_s", 1.0)
    for i, u in enumerate(data["units"]):
        _check_policy(c, u, f"units[{i}]")
    extras = data["extras"]
    unknown = sorted(map(str, set(extras) - {"head"}))
    if unknown:
        raise c.fail("extras", "of a training plan may hold only head", unknown)
    if data["units"] and "head" not in extras:
        raise c.missing("extras.head")
    if "head" in extras:
        _check_policy(c, extras["head"], "extras.head")


register_kind(KIND, _check)


def _policy(u: Mapping[str, Any]) -> LayerTrainPolicy:
    return LayerTrainPolicy(**{k: u[k] for k in POLICY_FIELDS})


def _where(plan: Plan) -> str:
    return f" ({plan.file})" if plan.file else ""


def workload_from_plan(plan: Plan, model: Any = None) -> TrainWorkload:
    """The workload the plan was made for; its model by bundled name, else the config file it recorded."""
    if plan.kind != KIND:
        raise PlanError(f"plan kind {plan.kind!r} is not a training plan{_where(plan)}")
    w = plan.workload
    if model is None:
        name = w["model"]
        try:
            model = load_model(name if name in list_models() else (w.get("model_file") or name))
        except WorkloadError as err:
            raise PlanError(f"cannot load the plan's model {name!r}: {err}{_where(plan)}") from None
    keys = ("seq_len", "micro_batch", "grad_accum", "gpus", "precision", "optimizer", "moments_dtype", "zero_stage",
            "overlap", "interconnect_bytes_per_s", "kernels", "snapshot_every", "allow_long_context", *_BOOL_FIELDS)
    try:
        return TrainWorkload(model=model, **{k: w[k] for k in keys if k in w})
    except WorkloadError as err:
        raise PlanError(f"the plan's workload does not rebuild: {err}{_where(plan)}") from None


def policies_from_plan(plan: Plan, wl: TrainWorkload | None = None) -> tuple[tuple[LayerTrainPolicy, ...],
                                                                             LayerTrainPolicy]:
    """The per-layer policies and the head's policy the plan decided, checked against the model's layers."""
    if not plan.units:
        raise PlanError(f"plan has no layer decisions (status {plan.status!r}): nothing to evaluate{_where(plan)}")
    wl = wl or workload_from_plan(plan)
    if len(plan.units) != wl.model.n_layers:
        raise PlanError(f"plan has {len(plan.units)} layers but model {wl.model.name!r} has {wl.model.n_layers}"
                        f"{_where(plan)}")
    return tuple(_policy(u) for u in plan.units), _policy(plan.extras["head"])


def evaluate_plan(plan: Plan, system: System, model: Any = None) -> tuple[TrainWorkload, TrainCost]:
    """Re-cost the plan's decisions on ``system`` (its own, from :func:`solver.plan.plan_system`, or another)."""
    wl = workload_from_plan(plan, model)
    pols, head = policies_from_plan(plan, wl)
    try:
        return wl, evaluate_training(wl, system, pols, head=head)
    except WorkloadError as err:  # e.g. a disk the other system lacks
        raise PlanError(f"the plan's decisions cannot run on {system.name}: {err}{_where(plan)}") from None


__all__ = ["KIND", "baseline_record", "evaluate_plan", "memory_record", "policies_from_plan", "policy_record",
           "predicted_record", "to_plan", "workload_from_plan", "workload_record"]
