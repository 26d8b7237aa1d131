"""Solve a PuLP model with HiGHS (in process, via highspy) or CBC, and report an honest status.

PuLP's ``status`` reads "Optimal" even when the time limit stopped the search; only
``sol_status`` (1: proven optimal, 2: a solution was found) tells them apart, so both are read.
"""

from __future__ import annotations

import enum
import functools
import os
import sys
import time
from dataclasses import dataclass

import pulp

from solver.errors import PlanError


class SolveStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    FEASIBLE = "feasible"  # a solution, not proven optimal (time limit)
    INFEASIBLE = "infeasible"
    TIME_LIMIT = "time_limit"  # stopped with no solution
    ERROR = "error"


BACKENDS = ("highs", "cbc")


@functools.lru_cache(maxsize=1)
def _silence_highs_banner() -> None:
    """highspy >= 1.16 prints a copyright banner on stdout (from C, before any option can be set)
    the first time a Highs object is made in a process. It would corrupt `tierplan ... --json`,
    so make that first object with file descriptor 1 pointed at /dev/null."""
    try:
        import highspy
    except ImportError:
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@functools.lru_cache(maxsize=1)
def _found_solvers() -> tuple[str, ...]:
    # listSolvers probes executables on PATH each call: ~3 ms, a quarter of a sweep point's time.
    return tuple(pulp.listSolvers(onlyAvailable=True))


def available_backends() -> list[str]:
    found = _found_solvers()
    return [b for b, s in (("highs", "HiGHS"), ("cbc", "PULP_CBC_CMD")) if s in found]


def default_backend() -> str:
    avail = available_backends()
    if not avail:
        raise PlanError("no MIP backend found: install highspy (pip install highspy) or a PuLP with CBC")
    return avail[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveResult:
    status: SolveStatus
    backend: str
    solve_time_s: float
    objective: float | None
    n_variables: int
    n_constraints: int


def solve(model: pulp.LpProblem, *, backend: str | None = None, time_limit_s: float = 10.0,
          gap_rel: float = 1e-4) -> SolveResult:
    """Solve ``model`` in place. Infeasible and time limit are statuses; a missing or crashed backend
    raises PlanError."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise PlanError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends():
        raise PlanError(f"backend {backend!r} is not installed; available: {available_backends()}")
    if backend == "highs":
        _silence_highs_banner()
        engine = pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap_rel, threads=1)
    else:
        engine = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap_rel)
    start = time.perf_counter()
    try:
        model.solve(engine)
    except pulp.PulpSolverError as err:  # a crashed backend is an exception, not a status
        raise PlanError(f"MIP backend {backend!r} failed: {err}") from err
    elapsed = time.perf_counter() - start
    if model.status == pulp.LpStatusOptimal:
        status = SolveStatus.OPTIMAL if model.sol_status == pulp.LpSolutionOptimal else SolveStatus.FEASIBLE
    elif model.status == pulp.LpStatusInfeasible:
        status = SolveStatus.INFEASIBLE
    elif model.sol_status == pulp.LpSolutionIntegerFeasible:
        status = SolveStatus.FEASIBLE
    elif model.status == pulp.LpStatusNotSolved:
        status = SolveStatus.TIME_LIMIT
    else:
        status = SolveStatus.INFEASIBLE if model.status == pulp.LpStatusUnbounded else SolveStatus.ERROR
    objective = pulp.value(model.objective) if status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE) else None
    return SolveResult(status=status, backend=backend, solve_time_s=elapsed, objective=objective,
                       n_variables=model.numVariables(), n_constraints=model.numConstraints())
