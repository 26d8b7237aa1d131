"""The embeddings family in the shared :class:`~solver.plan.Plan` envelope: write, check, read back, re-cost.

A plan of kind ``"embeddings"`` holds

* ``workload``: ``model`` (a bundled preset's name, or the spec's name with ``model_file``), ``batch``,
  ``dtype_bytes`` (dense compute), ``tf32`` (its GEMMs on TF32 tensor cores), ``prefetch`` (the
  workload default), ``table_optimizer`` and ``runtime`` (the engine, ``fbgemm`` for every plan the
  planner makes; absent in older plans);
* ``units``: one entry per table, in the model's order: the decision (``placement``, ``cache_rows``,
  ``cache_kind``, ``state_tier``, ``update_on``, ``prefetch``), the table's identity (``table``,
  ``rows``, ``dim``) and what the cost model predicts of it (``hit_rate``, ``distinct_rows``,
  ``cold_rows``, bytes per iteration by resource);
* ``extras``: ``access_assumptions`` (the model's stated assumptions, e.g. the Zipf exponent used
  where no per-table counts were given) and ``cache_kind``;
* ``predicted``: ``samples_per_s``, ``iteration_s``, ``stage_s`` (fetch, compute, host_update),
  ``resource_s`` and ``dense_gpu_s``;
* ``memory``: bytes per tier with ``gpu_breakdown`` and ``host_breakdown`` (the terms of
  :func:`costmodel.embeddings_cost.memory_use`, the iteration's peak), and ``gpu_between_iterations``
  (what stays allocated after the optimizer step,
  :func:`costmodel.embeddings_cost.gpu_bytes_between_iterations`);
* ``baselines``: every baseline at the same batch: ``status``, ``predicted``, ``speedup`` or ``reason``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from costmodel import WorkloadError
from costmodel.embeddings import CurveKind, Optimizer, RecModel, list_rec_models, load_rec_model
from costmodel.embeddings_cost import (
    EmbCost,
    EmbWorkload,
    Placement,
    Runtime,
    StateTier,
    TablePolicy,
    UpdateOn,
    evaluate_embeddings,
)
from hwprofiles import System
from solver.errors import PlanError
from solver.plan import Plan, _Checker, register_kind, shortfall_bytes

KIND = "embeddings"
_UNIT_DECISIONS = ("placement", "cache_rows", "cache_kind", "state_tier", "update_on", "prefetch")


def workload_record(wl: EmbWorkload) -> dict[str, Any]:
    """The plan's ``workload`` field: enough to rebuild ``wl`` (:func:`workload_from_plan`)."""
    m = wl.model
    # the spec's absolute path: a plan is re-costed from other folders than the one it was made in
    model_file = str(Path(m.file).resolve()) if m.file else None
    return {"model": m.name, "model_file": model_file, "batch": wl.batch, "dtype_bytes": wl.dense_dtype_bytes,
            "prefetch": bool(wl.prefetch), "tf32": bool(wl.tf32), "table_optimizer": m.table_optimizer.value,
            "runtime": wl.runtime.value}


def memory_record(cost: EmbCost) -> dict[str, Any]:
    """A plan's ``memory`` field: bytes per tier and each tier's terms."""
    return {**cost.memory.as_dict(), "gpu_breakdown": dict(cost.memory.gpu_breakdown),
            "host_breakdown": dict(cost.memory.host_breakdown),
            "gpu_between_iterations_bytes": cost.gpu_between_iterations_bytes,
            "gpu_between_iterations": dict(cost.gpu_between_iterations)}


def predicted_record(cost: EmbCost) -> dict[str, Any]:
    """A plan's ``predicted`` field: samples/s, the iteration, its stages and resources."""
    return {"samples_per_s": cost.samples_per_s, "iteration_s": cost.iteration_s, "batch": cost.batch,
            "stage_s": {s.value: t for s, t in cost.stage_s},
            "resource_s": {r.value: t for r, t in cost.resource_s().items()}, "dense_gpu_s": cost.dense_gpu_s}


def unit_entries(wl: EmbWorkload, policies: Sequence[TablePolicy], cost: EmbCost) -> list[dict[str, Any]]:
    """One ``units`` entry per table: its decision, identity and predicted traffic."""
    out = []
    for t, p, tr in zip(wl.model.tables, policies, cost.tables):
        out.append({"table": t.name, "rows": t.rows, "dim": t.dim, "placement": p.placement.value,
                    "cache_rows": p.cache_rows, "cache_kind": p.cache_kind.value, "state_tier": p.state_tier.value,
                    "update_on": p.update_on.value, "prefetch": p.prefetch, "prefetched": p.prefetched(wl),
                    "hit_rate": tr.hit_rate, "distinct_rows": tr.distinct_rows, "cold_rows": tr.cold_rows,
                    "gpu_bytes": tr.gpu_bytes, "uvm_h2d_bytes": tr.uvm_h2d_bytes, "h2d_bytes": tr.h2d_bytes,
                    "d2h_bytes": tr.d2h_bytes})
    return out


def baseline_record(name: str, cost: EmbCost, plan_samples_per_s: float | None) -> dict[str, Any]:
    """One ``baselines`` entry: the baseline costed at the plan's batch, and the plan's speed-up over it."""
    if not cost.feasible:
        return {"status": "infeasible", "reason": cost.explain_shortfall(),
                "shortfall_bytes": shortfall_bytes(cost.shortfalls())}
    entry: dict[str, Any] = {"status": "feasible", "predicted": {"samples_per_s": cost.samples_per_s,
                                                                  "iteration_s": cost.iteration_s}}
    if plan_samples_per_s is not None:
        entry["speedup"] = plan_samples_per_s / cost.samples_per_s
    return entry


def torchrec_hit_rates(wl: EmbWorkload, policies: Sequence[TablePolicy], cost: EmbCost) -> dict[str, float]:
    """What TorchRec's planner assumes of its cached tables beside what tierplan's hit curves give:
    lookup-weighted hit rates over the ``cache`` tables, ``assumed_by_torchrec`` (the cache load
    factor, :func:`costmodel.embeddings_cost.torchrec_estimated_hit_rate`) and ``tierplan`` (the
    table's access distribution through its cache)."""
    from costmodel.embeddings_cost import torchrec_estimated_hit_rate

    assumed = ours = lookups = 0.0
    for t, p, tr in zip(wl.model.tables, policies, cost.tables):
        if p.placement is Placement.CACHE:
            assumed += tr.lookups * torchrec_estimated_hit_rate(p, t)
            ours += tr.lookups * tr.hit_rate
            lookups += tr.lookups
    return {"assumed_by_torchrec": assumed / lookups, "tierplan": ours / lookups} if lookups else {}


def to_plan(wl: EmbWorkload, system: System, emb: Any, *, cache_kind: CurveKind | str = CurveKind.STATIC) -> Plan:
    """The envelope of a :class:`solver.embeddings.EmbPlan` (``plan_embeddings``'s result).

    Each baseline's entry is made from its exact cost (the planner's, else costed here) so it holds the
    same figures as the plan's (and the infeasible ones their shortfall per tier).
    """
    from costmodel.embeddings_cost import baseline_policies

    cost: EmbCost | None = emb.cost
    plan_rate = None if cost is None else cost.samples_per_s
    baselines = {}
    for b in emb.baselines:
        # the planner's exact cost of the baseline (the same workload and system), else costed here
        bcost = getattr(b, "cost", None)
        pols = baseline_policies(b.name, wl, system) if bcost is None or b.name.startswith("torchrec") else ()
        if bcost is None:
            bcost = evaluate_embeddings(wl, system, pols)
        baselines[b.name] = baseline_record(b.name, bcost, plan_rate)
        if any(p.placement is Placement.CACHE for p in pols):
            baselines[b.name]["hit_rates"] = torchrec_hit_rates(wl, pols, bcost)
    solver_info = {"status": emb.status.value, "selected_from": emb.selected, "solve_time_s": emb.solve_time_s,
                   "lp_estimate_s": emb.lp_estimate_s,
                   "mip_iteration_s": None if emb.mip_cost is None else emb.mip_cost.iteration_s}
    extras = {"cache_kind": CurveKind(cache_kind).value, "access_assumptions": list(wl.model.assumptions)}
    if cost is None:
        short = "; ".join(f"{name}: {b['reason']}" for name, b in baselines.items() if b.get("reason"))
        return Plan(kind=KIND, status=emb.status.value, objective="throughput", workload=workload_record(wl),
                    hardware=system.summary(), capacity=_capacity(system), extras=extras, baselines=baselines,
                    solver=solver_info, explanation=f"no placement fits: {short}" if short else "no placement fits")
    return Plan(kind=KIND, status=emb.status.value, objective="throughput", workload=workload_record(wl),
                hardware=system.summary(), predicted=predicted_record(cost), memory=memory_record(cost),
                capacity=dict(cost.capacity), units=tuple(unit_entries(wl, emb.policies, cost)), extras=extras,
                baselines=baselines, solver=solver_info)


def _capacity(system: System) -> dict[str, float]:
    from costmodel.kv import capacity

    return capacity(system)


# ---------------------------------------------------------------------------------------------
# Reading a plan back
# ---------------------------------------------------------------------------------------------


def _check(c: _Checker, data: Mapping[str, Any]) -> None:
    """An embeddings plan's workload, table units and extras: every field that re-costing, replay and
    export read, with its type and range."""
    w = data["workload"]
    for key in ("batch", "dtype_bytes", "prefetch", "table_optimizer"):
        if key not in w:
            raise c.missing(f"workload.{key}")
    c.integer(w["batch"], "workload.batch", 1)
    if isinstance(w["dtype_bytes"], bool) or w["dtype_bytes"] not in (2, 4, 8):
        raise c.fail("workload.dtype_bytes", "must be 2, 4 or 8", w["dtype_bytes"])
    c.boolean(w["prefetch"], "workload.prefetch")
    if "tf32" in w:
        c.boolean(w["tf32"], "workload.tf32")
        if w["tf32"] and w["dtype_bytes"] != 4:
            raise c.fail("workload.tf32", "may be true only with dtype_bytes 4", w["tf32"])
    _choice(c, w["table_optimizer"], "workload.table_optimizer", [o.value for o in Optimizer])
    if "runtime" in w:
        _choice(c, w["runtime"], "workload.runtime", [r.value for r in Runtime])
        if w["runtime"] == Runtime.COLOSSALAI and w["table_optimizer"] != Optimizer.SGD:
            raise c.fail("workload.runtime", "colossalai needs table_optimizer sgd", w["runtime"])
    for i, u in enumerate(data["units"]):
        at = f"units[{i}]"
        for key in ("table", "rows", *_UNIT_DECISIONS):
            if key not in u:
                raise c.missing(f"{at}.{key}")
        c.string(u["table"], f"{at}.table", empty=False)
        c.integer(u["rows"], f"{at}.rows", 1)
        c.integer(u["cache_rows"], f"{at}.cache_rows", 0)
        _choice(c, u["placement"], f"{at}.placement", [p.value for p in Placement])
        _choice(c, u["cache_kind"], f"{at}.cache_kind", [k.value for k in CurveKind])
        _choice(c, u["state_tier"], f"{at}.state_tier", [s.value for s in StateTier])
        _choice(c, u["update_on"], f"{at}.update_on", [s.value for s in UpdateOn])
        if u["prefetch"] is not None:
            c.boolean(u["prefetch"], f"{at}.prefetch")
        if u["cache_rows"] > u["rows"]:
            raise c.fail(f"{at}.cache_rows", f"must be at most the table's rows ({u['rows']:,})", u["cache_rows"])
        try:
            _policy(u)
        except WorkloadError as err:  # a combination the cost model refuses (cpu tables updated on the GPU, ...)
            raise c.fail(at, f"is not a valid table policy ({err})", {k: u[k] for k in _UNIT_DECISIONS}) from None
    extras = data["extras"]
    if "cache_kind" in extras:
        _choice(c, extras["cache_kind"], "extras.cache_kind", [k.value for k in CurveKind])
    for i, note in enumerate(c.sequence(extras.get("access_assumptions", []), "extras.access_assumptions")):
        c.string(note, f"extras.access_assumptions[{i}]")


def _choice(c: _Checker, value: Any, path: str, allowed: list[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise c.fail(path, f"must be one of {', '.join(allowed)}", value)


def _policy(u: Mapping[str, Any]) -> TablePolicy:
    return TablePolicy(placement=u["placement"], cache_rows=u["cache_rows"], cache_kind=u["cache_kind"],
                       state_tier=u["state_tier"], update_on=u["update_on"], prefetch=u["prefetch"])


register_kind(KIND, _check)


def _where(plan: Plan) -> str:
    return f" ({plan.file})" if plan.file else ""


def _require(plan: Plan) -> None:
    if plan.kind != KIND:
        raise PlanError(f"plan kind {plan.kind!r} is not an embeddings plan{_where(plan)}")


def plan_model(plan: Plan, model: RecModel | None = None) -> RecModel:
    """The plan's model: ``model`` if given; a bundled preset by name (paths differ between machines);
    else the spec file it recorded; with the plan's table optimizer."""
    _require(plan)
    w = plan.workload
    if model is None:
        name = w["model"]
        source = name if name in list_rec_models() else (w.get("model_file") or name)
        try:
            model = load_rec_model(source)
        except WorkloadError as err:
            raise PlanError(f"cannot load the plan's model {name!r}: {err}{_where(plan)}") from None
    return dataclasses.replace(model, table_optimizer=Optimizer(w["table_optimizer"]))


def workload_from_plan(plan: Plan, model: RecModel | None = None) -> EmbWorkload:
    """The workload the plan was made for (model, batch, dense dtype, prefetch default, optimizer)."""
    m = plan_model(plan, model)
    w = plan.workload
    dtype = 0 if w["dtype_bytes"] == m.dense_dtype_bytes else w["dtype_bytes"]
    return EmbWorkload(model=m, batch=w["batch"], dtype_bytes=dtype, prefetch=w["prefetch"], tf32=w.get("tf32", False),
                       runtime=w.get("runtime", Runtime.FBGEMM))


def policies_from_plan(plan: Plan, model: RecModel | None = None) -> tuple[TablePolicy, ...]:
    """The per-table policies the plan decided, checked against the model's tables (names and rows)."""
    _require(plan)
    if not plan.units:
        raise PlanError(f"plan has no table decisions (status {plan.status!r}): nothing to evaluate{_where(plan)}")
    m = plan_model(plan, model)
    if len(plan.units) != len(m.tables):
        raise PlanError(f"plan has {len(plan.units)} tables but model {m.name!r} has {len(m.tables)}{_where(plan)}")
    for i, (u, t) in enumerate(zip(plan.units, m.tables)):
        if u["table"] != t.name or u["rows"] != t.rows:
            raise PlanError(f"plan field units[{i}] is table {u['table']!r} of {u['rows']:,} rows, but model "
                            f"{m.name!r} has {t.name!r} of {t.rows:,} rows there: not the model the plan was made "
                            f"for{_where(plan)}")
    return tuple(_policy(u) for u in plan.units)


def evaluate_plan(plan: Plan, system: System, model: RecModel | None = None) -> tuple[EmbWorkload, EmbCost]:
    """Re-cost the plan's decisions on ``system`` (its own, from :func:`solver.plan.plan_system`, or another)."""
    wl = workload_from_plan(plan, model)
    return wl, evaluate_embeddings(wl, system, policies_from_plan(plan, model))


__all__ = ["KIND", "baseline_record", "evaluate_plan", "memory_record", "plan_model", "policies_from_plan",
           "predicted_record", "to_plan", "unit_entries", "workload_from_plan", "workload_record"]
