"""A small MIP container and its solvers: HiGHS in process (highspy, the default) or CBC via PuLP.

Models are plain arrays (columns with bounds and integrality, rows in compressed sparse row form),
so a model of a few hundred columns is built in well under a millisecond and handed to HiGHS in
one call; PuLP's per-expression objects cost more than the solve itself on models this small.
CBC, the fallback, gets the same arrays rebuilt as a PuLP problem.

Infeasible and time-limited solves are statuses, never exceptions; only a missing or crashed
backend raises :class:`PlanError`.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from solver.errors import PlanError


class SolveStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    FEASIBLE = "feasible"  # a solution, not proven optimal (time limit)
    INFEASIBLE = "infeasible"
    TIME_LIMIT = "time_limit"  # stopped with no solution
    ERROR = "error"


BACKENDS = ("highs", "cbc")
SMALL_MIP_INTEGERS = 48  # see _solve_highs: HiGHS options differ below and above (measured, not derived)
LE, GE, EQ = "<=", ">=", "=="


class MipModel:
    """Columns and rows of a mixed-integer program, built incrementally.

    Examples
    --------
    >>> m = MipModel()
    >>> x, y = m.var("x", ub=4), m.var("y", integer=True)
    >>> m.add([(x, 1.0), (y, 1.0)], GE, 2.5)
    >>> m.minimize([(x, 1.0), (y, 2.0)])
    >>> m.n_variables, m.n_constraints
    (2, 1)
    """

    def __init__(self, name: str = "mip") -> None:
        self.name = name
        self.col_names: list[str] = []
        self.col_lower: list[float] = []
        self.col_upper: list[float] = []
        self.col_integer: list[bool] = []
        self.row_start: list[int] = [0]
        self.row_index: list[int] = []
        self.row_value: list[float] = []
        self.row_lower: list[float] = []
        self.row_upper: list[float] = []
        self.cost: dict[int, float] = {}
        self.offset = 0.0
        self.maximise = False

    @property
    def n_variables(self) -> int:
        return len(self.col_names)

    @property
    def n_constraints(self) -> int:
        return len(self.row_lower)

    def var(self, name: str, *, lb: float = 0.0, ub: float = math.inf, integer: bool = False) -> int:
        """A new column; returns its index."""
        self.col_names.append(name)
        self.col_lower.append(lb)
        self.col_upper.append(ub)
        self.col_integer.append(integer)
        return len(self.col_names) - 1

    def binary(self, name: str) -> int:
        return self.var(name, lb=0.0, ub=1.0, integer=True)

    def fix(self, name: str, value: float) -> None:
        """Hold a column at ``value`` (it is then continuous: a model with every integer fixed is an LP)."""
        try:
            col = self.col_names.index(name)
        except ValueError:
            raise PlanError(f"internal: model {self.name!r} has no column {name!r}") from None
        self.col_lower[col] = self.col_upper[col] = float(value)
        self.col_integer[col] = False

    def add(self, terms: Iterable[tuple[int, float]], sense: str, rhs: float, scale: float = 1.0) -> None:
        """Add ``sum(coef * x[col]) <sense> rhs``, every coefficient and ``rhs`` multiplied by ``scale``
        (rows of bytes are scaled to GB so that a solver's absolute tolerances mean the same on every
        row). A column repeated in ``terms`` gets the sum of its coefficients."""
        terms = list(terms)
        cols = [col for col, _ in terms]
        if len(set(cols)) < len(cols):  # rare: merge repeated columns
            coef: dict[int, float] = {}
            for col, c in terms:
                coef[col] = coef.get(col, 0.0) + c
            terms = list(coef.items())
        for col, c in terms:
            if c != 0.0:
                self.row_index.append(col)
                self.row_value.append(c * scale)
        self.row_start.append(len(self.row_index))
        rhs = rhs * scale
        if sense not in (LE, GE, EQ):
            raise PlanError(f"internal: row sense must be one of {LE!r}, {GE!r}, {EQ!r}, got {sense!r}")
        self.row_lower.append(rhs if sense in (GE, EQ) else -math.inf)
        self.row_upper.append(rhs if sense in (LE, EQ) else math.inf)

    def minimize(self, terms: Iterable[tuple[int, float]], constant: float = 0.0) -> None:
        self._objective(terms, constant, maximise=False)

    def maximize(self, terms: Iterable[tuple[int, float]], constant: float = 0.0) -> None:
        self._objective(terms, constant, maximise=True)

    def _objective(self, terms: Iterable[tuple[int, float]], constant: float, *, maximise: bool) -> None:
        self.cost = {}
        for col, c in terms:
            self.cost[col] = self.cost.get(col, 0.0) + c
        self.offset = constant
        self.maximise = maximise


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveResult:
    status: SolveStatus
    backend: str
    solve_time_s: float
    objective: float | None
    n_variables: int
    n_constraints: int
    values: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def value(self, col: int | None) -> float:
        """A column's value, clipped at zero (solvers return -1e-12 for zero); 0 for no column."""
        return 0.0 if col is None or not len(self.values) else max(float(self.values[col]), 0.0)


@functools.lru_cache(maxsize=1)
def _silence_highs_banner() -> None:
    """highspy >= 1.16 prints a copyright banner on stdout (from C, before any option can be set)
    the first time a Highs object is made in a process. It would corrupt `tierplan ... --json`,
    so make that first object with file descriptor 1 pointed at /dev/null."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@functools.cache
def backend_installed(name: str) -> bool:
    """Whether one backend can run here, probed on first use and cached: ``highs`` imports highspy,
    ``cbc`` imports PuLP and asks it for its bundled CBC (listSolvers probes executables on PATH, ~3 ms,
    and importing PuLP costs ~60 ms, so a plan solved by HiGHS never pays for it)."""
    if name == "highs":
        try:
            import highspy  # noqa: F401
        except ImportError:
            return False
        return True
    if name == "cbc":
        try:
            import pulp
        except ImportError:
            return False
        return "PULP_CBC_CMD" in pulp.listSolvers(onlyAvailable=True)
    return False


def available_backends() -> list[str]:
    """The installed backends, in order of preference (probes every one; :func:`default_backend` stops at
    the first)."""
    return [b for b in BACKENDS if backend_installed(b)]


def default_backend() -> str:
    for backend in BACKENDS:
        if backend_installed(backend):
            return backend
    raise PlanError("no MIP backend found: install highspy (pip install highspy) or a PuLP with CBC")


class _HighsFailed(PlanError):
    """HiGHS ran and reported an error (not an infeasible or timed-out model)."""


def solve(model: MipModel, *, backend: str | None = None, time_limit_s: float = 10.0,
          gap_rel: float = 1e-4, mip_feasibility_tol: float | None = None) -> SolveResult:
    """Solve ``model``. Infeasible and time limit are statuses; a missing or crashed backend raises
    PlanError. ``gap_rel`` is the relative MIP gap at which a solution counts as optimal;
    ``mip_feasibility_tol`` HiGHS's ``mip_feasibility_tolerance`` (None: its default, 1e-6; CBC ignores it)."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise PlanError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not backend_installed(backend):
        raise PlanError(f"backend {backend!r} is not installed; available: {available_backends()}")
    start = time.perf_counter()
    if backend == "highs":
        try:
            status, objective, values = _solve_highs(model, time_limit_s, gap_rel, mip_feasibility_tol)
        except _HighsFailed:
            # HiGHS's numerical "Solve error" on a model it accepted (seen on a placement MIP whose
            # cache modes cannot fit): CBC, the fallback backend, solves the same model; the result
            # names the backend that solved it.
            if not backend_installed("cbc"):
                raise
            backend = "cbc"
            status, objective, values = _solve_cbc(model, time_limit_s, gap_rel)
    else:
        status, objective, values = _solve_cbc(model, time_limit_s, gap_rel)
    return SolveResult(status=status, backend=backend, solve_time_s=time.perf_counter() - start,
                       objective=objective, n_variables=model.n_variables, n_constraints=model.n_constraints,
                       values=values)


def _solve_highs(model: MipModel, time_limit_s: float, gap_rel: float,
                 mip_feasibility_tol: float | None = None) -> tuple[SolveStatus, float | None, np.ndarray]:
    # The LP relaxation first, without presolve (on these small models presolve costs more than it
    # saves: 2.1 ms against 3.8 ms on 36 full placement LPs). If it is infeasible, so is the MIP; if
    # its integer columns come out integral, it is the MIP's optimum (no MIP bound can be lower).
    # That held for 22 of 36 full placement MIPs, which then cost 2 ms instead of 10 ms.
    ints = np.flatnonzero(model.col_integer)
    status, objective, values = _run_highs(model, time_limit_s, gap_rel, integer=False)
    if not len(ints) or status is SolveStatus.INFEASIBLE:
        return status, objective, values
    if status is SolveStatus.OPTIMAL and np.all(np.abs(values[ints] - np.round(values[ints])) <= INTEGRAL_TOL):
        values[ints] = np.round(values[ints])
        return status, objective, values
    return _run_highs(model, time_limit_s, gap_rel, integer=True, mip_feasibility_tol=mip_feasibility_tol)


INTEGRAL_TOL = 1e-9  # an LP value this close to an integer counts as that integer


def _run_highs(model: MipModel, time_limit_s: float, gap_rel: float, *, integer: bool,
               mip_feasibility_tol: float | None = None) -> tuple[SolveStatus, float | None, np.ndarray]:
    import highspy

    _silence_highs_banner()
    n, m = model.n_variables, model.n_constraints
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, m
    cost = np.zeros(n)
    for col, c in model.cost.items():
        cost[col] = c
    lp.col_cost_ = cost
    lp.offset_ = model.offset
    lp.sense_ = highspy.ObjSense.kMaximize if model.maximise else highspy.ObjSense.kMinimize
    lp.col_lower_ = np.asarray(model.col_lower, dtype=float)
    lp.col_upper_ = np.asarray(model.col_upper, dtype=float)
    lp.row_lower_ = np.asarray(model.row_lower, dtype=float)
    lp.row_upper_ = np.asarray(model.row_upper, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, m
    lp.a_matrix_.start_ = np.asarray(model.row_start, dtype=np.int32)
    lp.a_matrix_.index_ = np.asarray(model.row_index, dtype=np.int32)
    lp.a_matrix_.value_ = np.asarray(model.row_value, dtype=float)
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in model.col_integer]
    h = highspy.Highs()
    for key, value in (("output_flag", False), ("threads", 1), ("time_limit", float(time_limit_s)),
                       ("mip_rel_gap", float(gap_rel))):
        h.setOptionValue(key, value)
    if not integer:
        h.setOptionValue("presolve", "off")
    elif mip_feasibility_tol is not None:
        h.setOptionValue("mip_feasibility_tolerance", float(mip_feasibility_tol))
    # Machinery sized for big MIPs costs more than it saves on ours. The feasibility-jump heuristic
    # alone costs ~8 ms per MIP however small (a 21-column placement MIP: 8.5 ms with it, 0.5 ms
    # without), and the RINS/RENS sub-MIPs never paid on any placement MIP measured. On the small
    # MIPs of continuous shares (at most SMALL_MIP_INTEGERS integer columns) restarts, symmetry
    # detection and the root reduced-cost heuristic cost too (the slowest sweep point: 0.24 s ->
    # 0.11 s); on the per-head-group MIPs (69 integer columns) they are what closes the search
    # (llama-2-7b, 32 groups: 1.7 s with them, 8.9 s without). Heuristics only find incumbents and
    # the others only steer the search, so optimality proofs are unchanged. An option that an older
    # highspy lacks is reported by setOptionValue and ignored.
    off = ["mip_heuristic_run_feasibility_jump", "mip_heuristic_run_rins", "mip_heuristic_run_rens"]
    if sum(model.col_integer) <= SMALL_MIP_INTEGERS:
        off += ["mip_heuristic_run_root_reduced_cost", "mip_detect_symmetry", "mip_allow_restart"]
    for key in off:
        h.setOptionValue(key, False)
    if h.passModel(lp) == highspy.HighsStatus.kError:
        raise PlanError(f"MIP backend 'highs' rejected model {model.name!r}")
    if h.run() == highspy.HighsStatus.kError:
        raise _HighsFailed(f"MIP backend 'highs' failed on model {model.name!r}: "
                           f"{h.modelStatusToString(h.getModelStatus())}")
    ms = h.getModelStatus()
    has_solution = h.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible
    S = highspy.HighsModelStatus
    if ms == S.kOptimal:
        status = SolveStatus.OPTIMAL
    elif ms == S.kInfeasible or (integer and ms == S.kUnboundedOrInfeasible):
        status = SolveStatus.INFEASIBLE
    elif ms in (S.kTimeLimit, S.kIterationLimit, S.kSolutionLimit, S.kInterrupt):
        status = SolveStatus.FEASIBLE if has_solution else SolveStatus.TIME_LIMIT
    else:
        status = SolveStatus.ERROR
    if status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return status, h.getInfo().objective_function_value, np.asarray(h.getSolution().col_value, dtype=float)
    return status, None, np.zeros(0)


def _solve_cbc(model: MipModel, time_limit_s: float, gap_rel: float) -> tuple[SolveStatus, float | None, np.ndarray]:
    import pulp

    prob = pulp.LpProblem(model.name, pulp.LpMaximize if model.maximise else pulp.LpMinimize)
    cols = [pulp.LpVariable(name, lowBound=None if math.isinf(lo) else lo, upBound=None if math.isinf(hi) else hi,
                            cat="Integer" if integer else "Continuous")
            for name, lo, hi, integer in zip(model.col_names, model.col_lower, model.col_upper, model.col_integer)]
    prob.setObjective(pulp.LpAffineExpression([(cols[c], v) for c, v in model.cost.items()], constant=model.offset))
    for r in range(model.n_constraints):
        a, b = model.row_start[r], model.row_start[r + 1]
        expr = pulp.LpAffineExpression([(cols[c], v) for c, v in zip(model.row_index[a:b], model.row_value[a:b])])
        lo, hi = model.row_lower[r], model.row_upper[r]
        if lo == hi:
            prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintEQ, f"r{r}", lo))
        else:
            if not math.isinf(lo):
                prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintGE, f"r{r}", lo))
            if not math.isinf(hi):
                prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintLE, f"r{r}u", hi))
    try:
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap_rel))
    except pulp.PulpSolverError as err:  # a crashed backend is an exception, not a status
        raise PlanError(f"MIP backend 'cbc' failed: {err}") from err
    # PuLP's ``status`` reads "Optimal" even when the time limit stopped the search; only
    # ``sol_status`` (1: proven optimal, 2: a solution was found) tells them apart.
    if prob.status == pulp.LpStatusOptimal:
        status = SolveStatus.OPTIMAL if prob.sol_status == pulp.LpSolutionOptimal else SolveStatus.FEASIBLE
    elif prob.status in (pulp.LpStatusInfeasible, pulp.LpStatusUnbounded):  # CBC reports some infeasible MIPs as unbounded
        status = SolveStatus.INFEASIBLE
    elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
        status = SolveStatus.FEASIBLE
    elif prob.status == pulp.LpStatusNotSolved:
        status = SolveStatus.TIME_LIMIT
    else:
        status = SolveStatus.ERROR
    if status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return status, pulp.value(prob.objective), np.array([v.varValue or 0.0 for v in cols], dtype=float)
    return status, None, np.zeros(0)
