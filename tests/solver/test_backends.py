"""Backends: statuses are reported, never raised; a missing backend is an error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solver import PlanError, SolveStatus, available_backends, default_backend
from solver.backends import EQ, GE, LE, MipModel, solve

BACKENDS = available_backends()


def test_default_backend_is_the_first_available():
    assert default_backend() == BACKENDS[0]
    assert BACKENDS == [b for b in ("highs", "cbc") if b in BACKENDS]  # HiGHS preferred


def _knapsack() -> tuple[MipModel, dict[str, int]]:
    # max 5a + 4b + 3c  s.t. 2a + 3b + c <= 5, 4a + b + 2c <= 11, 3a + 4b + 2c <= 8, integer >= 0.
    # By enumeration: a=2, b=0, c=1 gives 13 (2*2+1 = 5, 8+2 = 10, 6+2 = 8), and nothing beats it.
    prob = MipModel("k")
    v = {n: prob.var(n, integer=True) for n in "abc"}
    prob.maximize([(v["a"], 5), (v["b"], 4), (v["c"], 3)])
    prob.add([(v["a"], 2), (v["b"], 3), (v["c"], 1)], LE, 5)
    prob.add([(v["a"], 4), (v["b"], 1), (v["c"], 2)], LE, 11)
    prob.add([(v["a"], 3), (v["b"], 4), (v["c"], 2)], LE, 8)
    return prob, v


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_mip_is_solved_to_proven_optimality(backend):
    prob, v = _knapsack()
    result = solve(prob, backend=backend, gap_rel=0.0)
    assert result.status is SolveStatus.OPTIMAL
    assert result.backend == backend
    assert result.objective == pytest.approx(13.0, abs=1e-9)
    assert tuple(result.value(v[n]) for n in "abc") == pytest.approx((2, 0, 1), abs=1e-9)
    assert result.n_variables == 3 and result.n_constraints == 3
    assert result.solve_time_s >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_model_is_a_status_not_an_exception(backend):
    prob = MipModel("inf")
    x = prob.var("x", ub=1)
    prob.minimize([(x, 1.0)])
    prob.add([(x, 1.0)], GE, 2)
    result = solve(prob, backend=backend)
    assert result.status is SolveStatus.INFEASIBLE
    assert result.objective is None


@pytest.mark.skipif(BACKENDS != ["highs", "cbc"], reason="needs both backends")
def test_a_highs_solve_error_falls_back_to_cbc(monkeypatch):
    import solver.backends as B

    def broken(model, *args, **kwargs):
        raise B._HighsFailed(f"MIP backend 'highs' failed on model {model.name!r}: Solve error")

    monkeypatch.setattr(B, "_run_highs", broken)
    prob, _ = _knapsack()
    result = solve(prob, backend="highs", gap_rel=0.0)
    assert result.status is SolveStatus.OPTIMAL and result.backend == "cbc"  # says who solved it
    assert result.objective == pytest.approx(13.0, abs=1e-9)
    monkeypatch.setattr(B, "backend_installed", lambda name: name == "highs")  # no CBC: the error stands
    with pytest.raises(PlanError, match="Solve error"):
        solve(prob, backend="highs")


def test_unknown_backend_is_an_error():
    prob, _ = _knapsack()
    with pytest.raises(PlanError, match="backend must be one of"):
        solve(prob, backend="cplex")


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_columns_add_up_and_rows_are_scaled(backend):
    # min x + y with x + x >= 3 (a repeated column: 2x >= 3), y == 1 given in GB-scaled form.
    prob = MipModel("r")
    x, y = prob.var("x"), prob.var("y", lb=-math.inf)
    prob.minimize([(x, 1.0), (y, 1.0)], constant=0.5)
    prob.add([(x, 1.0), (x, 1.0)], GE, 3.0)
    prob.add([(y, 1e9)], EQ, 1e9, scale=1e-9)
    result = solve(prob, backend=backend)
    assert result.status is SolveStatus.OPTIMAL
    assert result.value(x) == pytest.approx(1.5) and result.value(y) == pytest.approx(1.0)
    assert result.objective == pytest.approx(3.0)  # the constant counts


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=6), st.integers(5, 30))
def test_highs_matches_enumeration_on_random_knapsacks(items, cap):
    """0-1 knapsacks: HiGHS through MipModel finds the optimum that enumeration finds."""
    prob = MipModel("k")
    cols = [prob.binary(f"x{i}") for i in range(len(items))]
    prob.maximize([(c, value) for c, (value, _) in zip(cols, items)])
    prob.add([(c, weight) for c, (_, weight) in zip(cols, items)], LE, cap)
    best = max(sum(v for (v, w), t in zip(items, take) if t) for take in np.ndindex(*(2,) * len(items))
               if sum(w for (_, w), t in zip(items, take) if t) <= cap)
    result = solve(prob, backend=BACKENDS[0], gap_rel=0.0)
    assert result.status is SolveStatus.OPTIMAL
    assert result.objective == pytest.approx(best)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mip_whose_relaxation_is_integral_or_infeasible(backend):
    # min x + y, x integer >= 2, y integer in [0, 5], x + y >= 3: the relaxation's optimum (x=2, y=1 or
    # x=3, y=0) is integral, so it is the MIP's; adding x + y <= 1 makes even the relaxation infeasible.
    prob = MipModel("integral")
    x, y = prob.var("x", lb=2, integer=True), prob.var("y", ub=5, integer=True)
    prob.minimize([(x, 1.0), (y, 1.0)])
    prob.add([(x, 1.0), (y, 1.0)], GE, 3)
    result = solve(prob, backend=backend)
    assert result.status is SolveStatus.OPTIMAL and result.objective == pytest.approx(3.0)
    assert result.value(x) + result.value(y) == 3.0 and float(result.value(x)).is_integer()
    prob.add([(x, 1.0), (y, 1.0)], LE, 1)
    assert solve(prob, backend=backend).status is SolveStatus.INFEASIBLE
