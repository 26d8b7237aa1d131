"""Backends: statuses are reported, never raised; a missing backend is an error."""

from __future__ import annotations

import pulp
import pytest

from solver import PlanError, SolveStatus, available_backends, default_backend
from solver.backends import solve

BACKENDS = available_backends()


def test_default_backend_is_the_first_available():
    assert default_backend() == BACKENDS[0]
    assert BACKENDS == [b for b in ("highs", "cbc") if b in BACKENDS]  # HiGHS preferred


def _knapsack() -> tuple[pulp.LpProblem, dict[str, pulp.LpVariable]]:
    # max 5a + 4b + 3c  s.t. 2a + 3b + c <= 5, 4a + b + 2c <= 11, 3a + 4b + 2c <= 8, integer >= 0.
    # By enumeration: a=2, b=0, c=1 gives 13 (2*2+1 = 5, 8+2 = 10, 6+2 = 8), and nothing beats it.
    prob = pulp.LpProblem("k", pulp.LpMaximize)
    v = {n: pulp.LpVariable(n, lowBound=0, cat="Integer") for n in "abc"}
    prob += 5 * v["a"] + 4 * v["b"] + 3 * v["c"]
    prob += 2 * v["a"] + 3 * v["b"] + v["c"] <= 5
    prob += 4 * v["a"] + v["b"] + 2 * v["c"] <= 11
    prob += 3 * v["a"] + 4 * v["b"] + 2 * v["c"] <= 8
    return prob, v


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_mip_is_solved_to_proven_optimality(backend):
    prob, v = _knapsack()
    result = solve(prob, backend=backend, gap_rel=0.0)
    assert result.status is SolveStatus.OPTIMAL
    assert result.backend == backend
    assert result.objective == pytest.approx(13.0, abs=1e-9)
    assert (v["a"].varValue, v["b"].varValue, v["c"].varValue) == pytest.approx((2, 0, 1), abs=1e-9)
    assert result.n_variables == 3 and result.n_constraints == 3
    assert result.solve_time_s >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_model_is_a_status_not_an_exception(backend):
    prob = pulp.LpProblem("inf", pulp.LpMinimize)
    x = pulp.LpVariable("x", lowBound=0, upBound=1)
    prob += x
    prob += x >= 2
    result = solve(prob, backend=backend)
    assert result.status is SolveStatus.INFEASIBLE
    assert result.objective is None


def test_unknown_backend_is_an_error():
    prob, _ = _knapsack()
    with pytest.raises(PlanError, match="backend must be one of"):
        solve(prob, backend="cplex")
