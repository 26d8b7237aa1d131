"""The family registry: what the shared verbs (evaluate a plan file, sweep, replay, validate) need of
each family, keyed by the plan's ``kind``.

A family brings its workload, cost model, planner and envelope adapter; the shared code looks it up
here instead of naming KV or embeddings fields. Adding a family is one :class:`Family` record and
its modules (``costmodel/<family>.py``, ``solver/<family>.py``, ``solver/<family>_plan.py``).

Examples
--------
>>> sorted(FAMILIES)
['embeddings', 'kv', 'training']
>>> FAMILIES["embeddings"].unit, FAMILIES["embeddings"].throughput_key
('table', 'samples_per_s')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hwprofiles import System
from solver.errors import PlanError
from solver.plan import Plan, shortfall_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanEvaluation:
    """A plan's decisions re-costed on a system: ``status`` ``feasible`` or ``infeasible``; when
    infeasible, ``reason`` names the short tier and its terms and ``shortfall_bytes`` the bytes per tier."""

    status: str
    predicted: Mapping[str, Any]
    memory: Mapping[str, Any]
    capacity: Mapping[str, float]
    reason: str = ""
    shortfall_bytes: Mapping[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.status == "feasible"


@dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    """One family of state that tierplan places.

    ``evaluate(plan, system)`` re-costs a plan's own decisions; ``throughput_key`` names the
    ``predicted`` figure that more is better of; ``unit`` what one entry of ``plan.units`` is.
    """

    name: str
    unit: str
    description: str
    throughput_key: str
    evaluate: Callable[[Plan, System], PlanEvaluation]


def _evaluate_kv(plan: Plan, system: System) -> PlanEvaluation:
    from costmodel.kv import explain_shortfall
    from solver.kv import evaluate_plan, memory_record, workload_from_plan

    cost, pred = evaluate_plan(plan, workload_from_plan(plan), system)
    feasible = cost.feasible
    return PlanEvaluation(status="feasible" if feasible else "infeasible", predicted=pred,
                          memory=memory_record(cost.memory), capacity=dict(cost.capacity),
                          reason="" if feasible else explain_shortfall(cost.memory, cost.capacity),
                          shortfall_bytes=shortfall_bytes(cost.shortfalls()))


def _evaluation(cost: Any, predicted: Mapping[str, Any], memory: Mapping[str, Any]) -> PlanEvaluation:
    """A family cost (``feasible``, ``capacity``, ``shortfalls()``, ``explain_shortfall()``) as a PlanEvaluation."""
    feasible = cost.feasible
    return PlanEvaluation(status="feasible" if feasible else "infeasible", predicted=predicted, memory=memory,
                          capacity=dict(cost.capacity), reason="" if feasible else cost.explain_shortfall(),
                          shortfall_bytes=shortfall_bytes(cost.shortfalls()))


def _evaluate_embeddings(plan: Plan, system: System) -> PlanEvaluation:
    from solver import embeddings_plan as ep

    _, cost = ep.evaluate_plan(plan, system)
    return _evaluation(cost, ep.predicted_record(cost), ep.memory_record(cost))


def _evaluate_training(plan: Plan, system: System) -> PlanEvaluation:
    from solver import training_plan as tp

    _, cost = tp.evaluate_plan(plan, system)
    return _evaluation(cost, tp.predicted_record(cost), tp.memory_record(cost))


FAMILIES: Mapping[str, Family] = MappingProxyType({
    "kv": Family(name="kv", unit="layer", description="KV cache and weights for LLM inference",
                 throughput_key="tokens_per_s", evaluate=_evaluate_kv),
    "embeddings": Family(name="embeddings", unit="table",
                         description="embedding tables for recommendation-model training (DLRM)",
                         throughput_key="samples_per_s", evaluate=_evaluate_embeddings),
    "training": Family(name="training", unit="layer",
                       description="optimizer state and activations for training with offload",
                       throughput_key="tokens_per_s", evaluate=_evaluate_training),
})


def family_of(plan: Plan) -> Family:
    """The family of ``plan`` (by its ``kind``)."""
    try:
        return FAMILIES[plan.kind]
    except KeyError:
        where = f" ({plan.file})" if plan.file else ""
        raise PlanError(f"plan kind {plan.kind!r} has no family here; families are {', '.join(FAMILIES)}{where}") from None


def evaluate_plan_on(plan: Plan, system: System) -> PlanEvaluation:
    """Re-cost any plan's decisions on ``system`` (its own, from :func:`solver.plan.plan_system`, or another)."""
    return family_of(plan).evaluate(plan, system)


__all__ = ["FAMILIES", "Family", "PlanEvaluation", "evaluate_plan_on", "family_of"]
