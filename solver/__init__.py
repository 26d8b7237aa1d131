"""Planning: the placement MIPs (HiGHS, or CBC through PuLP) of each family, baselines, the Plan envelope
shared by every family, sweeps and the timeline simulator."""

from solver.backends import SolveStatus, available_backends, default_backend
from solver.errors import PlanError
from solver.kv import (
    BASELINES,
    OBJECTIVES,
    batch_candidates,
    evaluate_plan,
    evaluate_policy,
    explain_infeasible,
    metrics,
    parse_flexgen,
    plan_kv,
)
from solver.kv_formulation import Mode, Restriction, all_modes, solve_kv
from solver.plan import SCHEMA_VERSION, Plan, plan_kinds
from solver import embeddings_plan, training_plan  # noqa: F401  (register the "embeddings" and "training" kinds)
from solver.timeline import Timeline, simulate_decode_step, simulate_prefill, simulated_total_s

__all__ = [
    "BASELINES", "Mode", "OBJECTIVES", "Plan", "PlanError", "Restriction", "SCHEMA_VERSION", "SolveStatus",
    "Timeline", "all_modes", "available_backends", "batch_candidates", "default_backend",
    "evaluate_plan", "evaluate_policy", "plan_kinds", "explain_infeasible", "metrics", "parse_flexgen", "plan_kv",
    "simulate_decode_step", "simulate_prefill", "simulated_total_s", "solve_kv",
]
