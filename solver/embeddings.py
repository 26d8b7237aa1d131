"""The embedding-table placement MIP for DLRM training: formulate, solve, extract per-table policies.

Each table gets a *mode* (:class:`TableMode`): a legal combination of where it lives (``gpu``,
``cache``, ``uvm``, ``cpu``), where its optimizer state lives (``state_tier``), who updates its
host-resident rows (``update_on``) and whether its next batch's cold rows are prefetched
(``prefetch``), as :class:`costmodel.embeddings_cost.TablePolicy` allows them: ``gpu`` (state gpu,
update gpu, prefetch of its ids or not), ``cache`` (state gpu or host, update gpu, prefetch or not),
``uvm`` (state gpu or host, update gpu or -- with state host -- cpu, prefetch or not), ``cpu`` (state
host, update cpu): 13
modes, each ``cache`` mode twice (a cache of a chosen size, and a *full* cache of every row that can
be hit). ``choose_state``, ``choose_update`` and ``choose_prefetch`` restrict the choice to the
cost model's defaults (state on the GPU only for ``gpu`` tables, updates on the CPU only for ``cpu``
tables, the workload's ``prefetch``). A ``cache`` is of one kind (``cache_kind``, static by default:
under the cost model's independent-reference assumption it hits at least as often as LRU and
costs no cache maintenance).

Identical tables (rows, dim, element size, pooling, access distribution, optimizer) form a group;
each group gets an integer count ``n_k`` per mode and, for each sized cache mode ``k``, its own
aggregate cache size ``C_k`` (in tables' worth of rows) and aggregate hit fraction ``H_k`` (the sum
of its tables' shares of a batch's distinct rows held in HBM,
:meth:`~costmodel.embeddings.ZipfAccess.distinct_hit_fraction`, the quantity the traffic is affine
in). That concave curve enters in perspective form,
``H_k <= slope_j N C_k + intercept_j n_k`` for each chord ``j`` (``N`` the table's rows), so
maximising hits stays linear; the chords lie below a concave curve, so the MIP never counts a hit
that is not there. An equal split of ``C_k`` is optimal for identical tables (the curve is
concave), and the extraction gives each such table ``floor(C_k N / n_k)`` rows, or fewer: the
smallest size whose chords reach the hits ``H_k / n_k`` the MIP counted (the solver may count fewer
hits than its cache holds when hits cost HBM time it would rather not spend; a smaller cache is
then the plan it costed).

Coefficients. Every byte and FLOP count of :func:`costmodel.embeddings_cost.table_traffic` is
affine in the hit fraction ``g`` (the cold rows are ``U (1 - g)``), so a sized cache mode's coefficients
come from two calls (``h = 0`` and a full cache) and every other mode's from one; the memory terms
are :func:`costmodel.embeddings_cost.memory_use`'s (optimizer state ``N s`` in HBM or host memory
by ``state_tier``; prefetch buffers ``2 U (1 - h) r`` of HBM). The per-table contributions are
taken stage by stage exactly as :func:`~costmodel.embeddings_cost.evaluate_embeddings` sums them
(:func:`_terms`), so on a plan with caches at the curve's breakpoints the MIP's objective is the
evaluator's iteration time but for:

* hit rates between breakpoints: the chords' (below the true curve: the MIP's estimate is then
  an upper bound of the exact cost);
* HBM time: ``t(b) = b / (bandwidth x efficiency(b))``; the MIP takes its tangent at a reference
  size and re-solves at the solution's bytes, at most :data:`HBM_ROUNDS` times. Where ``t`` is
  concave (an efficiency that rises with the bytes, as the bundled GPU curves do) the tangent is an
  upper bound, exact at its point, so each round's plan costs exactly at most the last's;
* link latencies: a sized cache pays the latencies of a table with cold rows (exact below a full
  cache; the full-cache mode pays the exact ones);
* the bidirectional penalty ``min(H2D, D2H) (1/f - 1)`` of the compute stage: one binary picks the
  smaller side, with big-M bounds from the largest per-group traffic (exact); the three kernel
  launches of the embedding work: one binary, set when any table moves HBM bytes (exact).

Stage times are epigraphs as in the evaluator: ``fetch >= H2D``, ``fetch >= CPU forward + pooled
copies``; ``compute >= GPU``, ``>= H2D``, ``>= D2H``; ``host_update`` a sum. Rows of bytes are in
GB and rows of time in milliseconds (see :mod:`solver.kv_formulation`).

:func:`plan_embeddings` then costs the MIP's policies and every baseline exactly, starts from the
fastest feasible one, and improves it by a bounded local search (one table, half or all of a
group's tables with one policy moved to another mode or cache size), screened with the same
per-table terms and kept only if :func:`~costmodel.embeddings_cost.evaluate_embeddings` confirms
it; ``selected`` says where the returned plan came from.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from costmodel.embeddings import FP32_BYTES, CurveKind, HitCurve, Table, dense_optimizer_state_bytes_per_param
from costmodel.embeddings_cost import (
    BASELINES,
    INDEX_BYTES,
    EmbCost,
    EmbWorkload,
    Placement,
    Runtime,
    Stage,
    StateTier,
    TablePolicy,
    TableTraffic,
    UpdateOn,
    activation_bytes,
    baseline_policies,
    cache_state_bytes,
    dense_gpu_s,
    evaluate_embeddings,
    table_key,
    table_traffic,
)
from costmodel.errors import WorkloadError
from costmodel.kv import capacity
from costmodel.roofline import OpClass, Processor, memory_time_s, roofline_time_s
from hwprofiles import System
from solver.backends import EQ, GE, LE, MipModel, SolveResult, SolveStatus, solve
from solver.errors import PlanError

GB = 1e-9
MS = 1e3
# Time rows are scaled so that the dense step (the one time every plan pays) is about 1 unit: in plain
# milliseconds a small model's rows (1e-4) sat near HiGHS's mip_feasibility_tolerance (1e-6), and its
# presolve kept a 2.4 % worse bidirectional-penalty choice than CBC found. Never coarser than milliseconds.
def _time_scale(rates: _Rates) -> float:
    return max(MS, 1.0 / max(rates.dense_s, 1e-12))


# Share of each memory tier the MIP leaves free: a solver's feasibility tolerance (about 1e-7 on a row
# in GB, 100 bytes) must not let the extracted cache rows overflow the tier when costed exactly.
CAPACITY_MARGIN = 1e-6
MIP_FEASIBILITY_TOL = 1e-9
PLACEMENTS = (Placement.GPU, Placement.CACHE, Placement.UVM, Placement.CPU)
# MIP solves at most per plan: the first at the HBM tangent of the all-gpu bytes, each next one at
# the last solution's bytes, until they move by under HBM_REL_TOL.
HBM_ROUNDS = 3
HBM_REL_TOL = 1e-3
# Relative step of the one-sided difference that gives the HBM time's slope.
HBM_SLOPE_STEP = 1e-6
# Local search bounds: moves accepted at most; a move must gain this share of the iteration
# (screening sums in another order than the evaluator: rounding must not count as a gain).
LOCAL_MAX_MOVES = 64
LOCAL_MIN_GAIN = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class TableMode:
    """One legal way to hold and train a table (see the module docstring). ``full``: a ``cache`` of
    every row the access distribution can hit (its size is fixed); otherwise a cache's size is the
    MIP's choice."""

    placement: Placement
    state_tier: StateTier
    update_on: UpdateOn
    prefetch: bool = False
    full: bool = False

    @property
    def sized_cache(self) -> bool:
        return self.placement is Placement.CACHE and not self.full

    def policy(self, cache_rows: int = 0, cache_kind: CurveKind = CurveKind.STATIC) -> TablePolicy:
        """The table's policy in this mode (``cache_rows`` and ``cache_kind`` for ``cache`` only)."""
        cache = self.placement is Placement.CACHE
        return TablePolicy(placement=self.placement, cache_rows=cache_rows if cache else 0,
                           cache_kind=cache_kind if cache else CurveKind.LRU, state_tier=self.state_tier,
                           update_on=self.update_on,
                           prefetch=self.prefetch if self.placement is not Placement.CPU else None)

    @property
    def label(self) -> str:
        parts = [self.placement.value + ("(full)" if self.full else ""), f"state={self.state_tier.value}",
                 f"update={self.update_on.value}"]
        return "/".join(parts + (["prefetch"] if self.prefetch else []))


def table_modes(wl: EmbWorkload, *, choose_state: bool = True, choose_update: bool = True,
                choose_prefetch: bool = True) -> tuple[TableMode, ...]:
    """Every mode :class:`~costmodel.embeddings_cost.TablePolicy` accepts, each ``cache`` mode sized
    and full; a ``choose_*`` that is False keeps that setting at the cost model's default (state on
    the GPU for ``gpu`` only, updates on the CPU for ``cpu`` only, prefetch the workload's).

    Examples
    --------
    >>> from costmodel.embeddings import load_rec_model
    >>> wl = EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=1024)
    >>> len(table_modes(wl)), len(table_modes(wl, choose_state=False, choose_update=False, choose_prefetch=False))
    (17, 5)
    """
    out = []
    for p, st, up, pre in itertools.product(PLACEMENTS, StateTier, UpdateOn, (False, True)):
        try:
            pol = TablePolicy(placement=p, state_tier=st, update_on=up, prefetch=pre)
        except WorkloadError:
            continue
        default = TablePolicy(placement=p)
        if not choose_state and st is not default.state_tier:
            continue
        if not choose_update and up is not default.update_on:
            continue
        if not choose_prefetch and pol.prefetched(wl) != default.prefetched(wl):
            continue
        for full in ((False, True) if p is Placement.CACHE else (False,)):
            out.append(TableMode(placement=p, state_tier=st, update_on=up, prefetch=pre, full=full))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbSolution:
    """A solve of the embedding MIP: ``policies`` (one per table, in the model's order; empty unless
    the status is optimal or feasible), ``lp_estimate_s``, the MIP's iteration seconds, and
    ``rounds``, the MIP solves made (one per HBM linearisation, :data:`HBM_ROUNDS` at most)."""

    status: SolveStatus
    policies: tuple[TablePolicy, ...]
    lp_estimate_s: float | None
    result: SolveResult
    rounds: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineResult:
    """One baseline costed exactly: its samples/s (None if it does not fit, with ``reason``) and the
    plan's speed-up over it (plan samples/s over the baseline's)."""

    name: str
    feasible: bool
    samples_per_s: float | None
    iteration_s: float | None
    speedup: float | None
    reason: str = ""
    cost: EmbCost | None = field(default=None, compare=False, repr=False)  # the exact cost, for the plan's record


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbPlan:
    """The chosen placement: ``selected`` is ``"mip"`` or ``"baseline:NAME"`` (a baseline the exact
    model ranks above the MIP's choice), with ``"+local"`` appended when the local search improved
    it (``local_moves`` moves); ``cost`` is its exact cost; ``mip_cost`` the MIP choice's.
    ``n_variables`` and ``n_constraints`` are the (last) MIP's size."""

    status: SolveStatus
    selected: str
    policies: tuple[TablePolicy, ...]
    cost: EmbCost | None
    mip_cost: EmbCost | None
    lp_estimate_s: float | None
    baselines: tuple[BaselineResult, ...]
    solve_time_s: float
    local_moves: int = 0
    n_variables: int = 0
    n_constraints: int = 0

    @property
    def samples_per_s(self) -> float | None:
        return None if self.cost is None else self.cost.samples_per_s


def _groups(wl: EmbWorkload) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(wl.model.tables):
        groups.setdefault(table_key(wl, t), []).append(i)
    return list(groups.values())


def _check_args(time_limit_s: float, n_points: int) -> None:
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) or not (
            math.isfinite(time_limit_s) and time_limit_s > 0):
        raise PlanError(f"time_limit_s must be a positive number of seconds, got {time_limit_s!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or not 2 <= n_points <= 4096:
        raise PlanError(f"n_points must be an integer in [2, 4096], got {n_points!r}")


def _check_flags(**flags: object) -> None:
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise PlanError(f"{name} must be true or false, got {value!r}")


def _kind(cache_kind: CurveKind | str) -> CurveKind:
    try:
        return CurveKind(cache_kind)
    except ValueError:
        raise PlanError(f"cache_kind must be one of {', '.join(k.value for k in CurveKind)}, "
                        f"got {cache_kind!r}") from None


# ---------------------------------------------------------------------------------------------
# One table's contribution, as the evaluator sums it
# ---------------------------------------------------------------------------------------------

# Components of a table's contribution (_terms): seconds (_S), bytes (_B) or counts of link latencies (_N).
(F_H2D_S, F_LAT_N, F_CPU_S, C_H2D_S, C_LAT_N, GPU_B, D2H_C_B, D2H_C_N, D2H_U_B, D2H_U_N, CPU_UPD_S,
 GPU_MEM_B, CACHE_MEM_B, HOST_MEM_B) = range(14)
N_TERMS = 14
LATENCY_TERMS = (F_LAT_N, C_LAT_N, D2H_C_N, D2H_U_N)


@dataclass(frozen=True, slots=True)
class _Rates:
    """What the evaluator's stage sums need of the system and the workload."""

    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    uvm_bytes_per_s: float
    latency_s: float
    penalty_factor: float  # 1 / bidirectional_factor - 1
    launch_s: float  # three launches of the embedding kernels
    dense_s: float
    gpu: Processor
    cpu: Processor
    gpu_fixed_bytes: float  # dense weights, gradients and state, activations
    gpu_cap_bytes: float
    host_cap_bytes: float

    @classmethod
    def of(cls, wl: EmbWorkload, system: System) -> _Rates:
        m, link = wl.model, system.link
        cap = capacity(system)
        dense_mem = float(m.dense_params()) * (2 * m.dense_dtype_bytes
                                              + dense_optimizer_state_bytes_per_param(m.dense_optimizer))
        gpu = Processor.gpu(system.gpu)
        return cls(h2d_bytes_per_s=link.h2d_bytes_per_s, d2h_bytes_per_s=link.d2h_bytes_per_s,
                   uvm_bytes_per_s=link.h2d_bytes_per_s * link.pageable_factor, latency_s=link.latency_s,
                   penalty_factor=1.0 / link.bidirectional_factor - 1.0, launch_s=3 * gpu.launch_overhead_s,
                   dense_s=dense_gpu_s(wl, system), gpu=gpu, cpu=Processor.cpu(system.host),
                   gpu_fixed_bytes=dense_mem + activation_bytes(wl), gpu_cap_bytes=cap["gpu_bytes"],
                   host_cap_bytes=cap["host_bytes"])


def _terms(wl: EmbWorkload, table: Table, pol: TablePolicy, tr: TableTraffic, rates: _Rates) -> np.ndarray:
    """One table's share of each sum :func:`~costmodel.embeddings_cost.evaluate_embeddings` and
    :func:`~costmodel.embeddings_cost.memory_use` make, term for term (``N`` rows, ``C`` cache rows,
    ``r`` row bytes, ``s`` state bytes per row, ``g = B D 4``, ``L`` lookups, ``M`` cold rows):

    * ``cpu`` tables: CPU forward (host roofline) + one latency + pooled vectors ``g`` up, in fetch;
    * others: ids and pinned copies ``/ h2d`` + gathers ``/ (h2d x pageable)``, with one latency
      (two when it gathers over UVM), in fetch, or in compute when prefetched;
    * HBM bytes; CPU-updated tables: the CPU update (host roofline), gradients down and a latency in
      host_update; other tables' write-backs down and a latency (if any) in compute;
    * GPU memory: ``N r`` (gpu), ``N s`` (state on the GPU), ``2 g + 8 L`` (``2 g`` for cpu),
      ``2 M r`` (prefetch buffers), a cache's fixed bookkeeping; cache rows ``C (r + a)`` apart, ``a``
      the bookkeeping per cache row (:func:`~costmodel.embeddings_cost.cache_state_bytes`); host memory: ``N r`` (not gpu),
      ``N s`` (state on the host), ``8 L + 2 g`` (``8 L`` unless updated on the CPU).
    """
    v = np.zeros(N_TERMS)
    lat_n = 0.0
    if tr.placement is Placement.CPU:
        v[F_CPU_S] = (float(roofline_time_s(tr.cpu_fwd_flop, tr.cpu_fwd_bytes, OpClass.ELEMENTWISE, rates.cpu))
                      + rates.latency_s + tr.h2d_bytes / rates.h2d_bytes_per_s)
    else:
        link_s = tr.h2d_bytes / rates.h2d_bytes_per_s + tr.uvm_h2d_bytes / rates.uvm_bytes_per_s
        lat_n = 1.0 + (tr.uvm_h2d_bytes > 0)
        on, lat = (C_H2D_S, C_LAT_N) if tr.stage_of_cold is Stage.COMPUTE else (F_H2D_S, F_LAT_N)
        v[on], v[lat] = link_s, lat_n
    v[GPU_B] = tr.gpu_bytes
    if tr.cpu_upd_bytes:
        v[CPU_UPD_S] = float(roofline_time_s(tr.cpu_upd_flop, tr.cpu_upd_bytes, OpClass.ELEMENTWISE, rates.cpu))
        v[D2H_U_B], v[D2H_U_N] = tr.d2h_bytes, 1.0
    elif tr.d2h_bytes:
        v[D2H_C_B], v[D2H_C_N] = tr.d2h_bytes, 1.0
    m = wl.model
    rows, r = float(table.rows), float(table.row_bytes)
    state = rows * m.optimizer_state_bytes_per_row(table)
    g = float(wl.batch * table.dim * FP32_BYTES)
    gpu_mem = 2 * g + (0.0 if pol.placement is Placement.CPU else INDEX_BYTES * tr.lookups)
    host_mem = INDEX_BYTES * tr.lookups + (2 * g if pol.update_on is UpdateOn.CPU else 0.0)
    if pol.placement is Placement.GPU:
        gpu_mem += rows * r
    else:
        host_mem += rows * r
    if pol.state_tier is StateTier.GPU:
        gpu_mem += state
    else:
        host_mem += state
    if pol.prefetched(wl):
        gpu_mem += 2 * tr.cold_rows * r
    fixed, per_row = cache_state_bytes(wl, table, pol)
    v[GPU_MEM_B], v[HOST_MEM_B] = gpu_mem + fixed, host_mem
    if pol.placement is Placement.CACHE:
        v[CACHE_MEM_B] = pol.cache_rows * (r + per_row)
    return v


def _iteration_s(totals: np.ndarray, rates: _Rates) -> np.ndarray:
    """Iteration seconds of rows of summed terms, as the evaluator combines them: ``fetch =
    max(H2D, CPU)``, ``compute = max(GPU, H2D + penalty, D2H + penalty)``, ``host_update`` a sum."""
    t = np.atleast_2d(totals)
    lat = rates.latency_s
    fetch = np.maximum(t[:, F_LAT_N] * lat + t[:, F_H2D_S], t[:, F_CPU_S])
    gb = t[:, GPU_B]
    hbm = np.where(gb > 0, memory_time_s(np.maximum(gb, 1.0), rates.gpu) + rates.launch_s, 0.0)
    pen = np.minimum(t[:, C_H2D_S] * rates.h2d_bytes_per_s, t[:, D2H_C_B]) * rates.penalty_factor
    compute = np.maximum(rates.dense_s + hbm, np.maximum(
        t[:, C_LAT_N] * lat + t[:, C_H2D_S] + pen / rates.h2d_bytes_per_s,
        t[:, D2H_C_N] * lat + (t[:, D2H_C_B] + pen) / rates.d2h_bytes_per_s))
    host = t[:, D2H_U_N] * lat + t[:, D2H_U_B] / rates.d2h_bytes_per_s + t[:, CPU_UPD_S]
    return fetch + compute + host


def _fits(totals: np.ndarray, rates: _Rates) -> np.ndarray:
    t = np.atleast_2d(totals)
    keep = 1.0 - CAPACITY_MARGIN
    return ((t[:, GPU_MEM_B] + t[:, CACHE_MEM_B] + rates.gpu_fixed_bytes <= rates.gpu_cap_bytes * keep)
            & (t[:, HOST_MEM_B] <= rates.host_cap_bytes * keep))


def _hbm_tangent(nbytes: float, rates: _Rates) -> tuple[float, float]:
    """(slope s per byte, intercept) of the HBM time's tangent at ``nbytes``: ``t(b) <= t(b*) + s (b - b*)``
    for a concave ``t(b) = b / (bandwidth x efficiency(b))``."""
    b = max(float(nbytes), 1.0)
    t0 = float(memory_time_s(b, rates.gpu))
    t1 = float(memory_time_s(b * (1 + HBM_SLOPE_STEP), rates.gpu))
    slope = (t1 - t0) / (b * HBM_SLOPE_STEP)
    icpt = t0 - slope * b
    # a flat efficiency makes t linear: the intercept is then rounding noise, not a cost
    return slope, icpt if abs(icpt) > HBM_SLOPE_STEP * t0 else 0.0


# ---------------------------------------------------------------------------------------------
# The MIP
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ModeCoef:
    """A group's per-table terms in one mode: ``base + per_hit h`` (sized caches), else ``base``."""

    mode: TableMode
    base: np.ndarray
    per_hit: np.ndarray | None
    traffic0: TableTraffic
    traffic1: TableTraffic | None  # sized cache: at the full cache
    cache_rows: int  # full cache: its rows


@dataclass(frozen=True, slots=True)
class _Group:
    idx: tuple[int, ...]
    table: Table
    curve: HitCurve
    full_rows: int
    coefs: tuple[_ModeCoef, ...]


# HiGHS drops matrix entries of magnitude at most its small_matrix_value, 1e-9.
SMALL_COEF = 1e-9


def _traffic(memo: dict[TablePolicy, TableTraffic], wl: EmbWorkload, t: Table, pol: TablePolicy) -> TableTraffic:
    if pol not in memo:
        memo[pol] = table_traffic(wl, t, pol)
    return memo[pol]


def _group_info(wl: EmbWorkload, rates: _Rates, modes: Sequence[TableMode], kind: CurveKind,
                n_points: int) -> list[_Group]:
    out = []
    for idx in _groups(wl):
        t = wl.model.tables[idx[0]]
        lookups = wl.batch * float(t.pooling)
        curve = t.access.distinct_concave_curve(kind, lookups, n_points)
        # the hull's last vertex is every row that can be hit (two points stop at one row: ask three)
        last = curve if n_points >= 3 else t.access.distinct_concave_curve(kind, lookups, 3)
        full_rows = min(t.rows, int(last.cache_rows[-1]))
        coefs = []
        memo: dict[TablePolicy, TableTraffic] = {}  # a sized cache's full end is its full mode's traffic
        for mode in modes:
            if mode.full and full_rows <= 0:
                continue
            rows = full_rows if mode.full else 0
            pol = mode.policy(rows, kind)
            tr0 = _traffic(memo, wl, t, pol)
            v0 = _terms(wl, t, pol, tr0, rates)
            per_hit, tr1 = None, None
            if mode.sized_cache and full_rows > 0:
                pol1 = mode.policy(full_rows, kind)
                tr1 = _traffic(memo, wl, t, pol1)
                if tr1.row_hit_fraction > 0:
                    v1 = _terms(wl, t, pol1, tr1, rates)
                    per_hit = (v1 - v0) / tr1.row_hit_fraction
                    per_hit[list(LATENCY_TERMS)] = 0.0  # a sized cache pays a cold-row table's latencies
                    per_hit[CACHE_MEM_B] = 0.0  # cache rows enter through C
            coefs.append(_ModeCoef(mode=mode, base=v0, per_hit=per_hit, traffic0=tr0, traffic1=tr1,
                                   cache_rows=rows))
        out.append(_Group(idx=tuple(idx), table=t, curve=curve, full_rows=full_rows, coefs=tuple(coefs)))
    return out


@dataclass(slots=True)
class _Built:
    mip: MipModel
    cols: list[list[tuple[int, int | None, int | None]]]  # per group, per mode: (n, C, H) columns
    time_scale: float = MS  # the objective is seconds x time_scale


def _build(wl: EmbWorkload, rates: _Rates, groups: list[_Group], slope: float, icpt: float) -> _Built:
    mip = MipModel("embeddings")
    ts = _time_scale(rates)
    acc: list[list[tuple[int, float]]] = [[] for _ in range(N_TERMS)]
    a_max = b_max = gpu_b_max = 0.0
    cols = []
    for gi, grp in enumerate(groups):
        n, t = len(grp.idx), grp.table
        gcols = []
        counts = []
        for mc in grp.coefs:
            col = mip.var(f"n[{gi},{mc.mode.label}]", ub=n, integer=True)
            counts.append((col, 1.0))
            c_col = h_col = None
            if mc.per_hit is not None:
                # cache size in tables' worth of rows (C / rows), so slopes per row of large tables stay
                # above the solver's drop tolerance
                share = grp.full_rows / t.rows
                c_col = mip.var(f"C[{gi},{mc.mode.label}]", ub=n * share)
                h_col = mip.var(f"H[{gi},{mc.mode.label}]", ub=float(n))
                mip.add([(c_col, 1.0), (col, -share)], LE, 0.0)
                for slope_j, icpt_j in grp.curve.segments():
                    # A chord's intercept within 1e-9 of 0 is float noise of a curve that is linear at the
                    # head (every hot row is touched); HiGHS would drop it (small_matrix_value 1e-9).
                    # Rounding it to 0 lowers the bound by at most 1e-9 per table: never a hit not there.
                    slope_n = slope_j * t.rows
                    mip.add([(h_col, 1.0), (c_col, -slope_n if abs(slope_n) > SMALL_COEF else 0.0),
                             (col, -icpt_j if icpt_j > SMALL_COEF else 0.0)], LE, 0.0)
                mip.add([(h_col, 1.0), (col, -max(grp.curve.hit_rate))], LE, 0.0)
                per_row = cache_state_bytes(wl, t, mc.mode.policy(grp.full_rows, grp.curve.kind))[1]
                acc[CACHE_MEM_B].append((c_col, t.rows * (float(t.row_bytes) + per_row)))
            for j in range(N_TERMS):
                if mc.base[j]:
                    acc[j].append((col, float(mc.base[j])))
                if mc.per_hit is not None and mc.per_hit[j]:
                    acc[j].append((h_col, float(mc.per_hit[j])))
            top = mc.base if mc.per_hit is None else np.maximum(mc.base, mc.base + mc.per_hit)
            gcols.append((col, c_col, h_col, top))
        mip.add(counts, EQ, n)
        tops = np.array([top for *_, top in gcols])
        a_max += n * float(tops[:, C_H2D_S].max()) * rates.h2d_bytes_per_s
        b_max += n * float(tops[:, D2H_C_B].max())
        gpu_b_max += n * float(tops[:, GPU_B].max())
        cols.append([(c, cc, hc) for c, cc, hc, _ in gcols])

    def terms(j: int, per: float) -> list[tuple[int, float]]:
        return [(c, -v * per) for c, v in acc[j]]

    lat = rates.latency_s
    t_fetch, t_comp, t_host = mip.var("T_fetch"), mip.var("T_compute"), mip.var("T_host_update")
    mip.add([(t_fetch, 1.0)] + terms(F_H2D_S, 1.0) + terms(F_LAT_N, lat), GE, 0.0, scale=ts)
    mip.add([(t_fetch, 1.0)] + terms(F_CPU_S, 1.0), GE, 0.0, scale=ts)
    gpu_row = [(t_comp, 1.0)] + terms(GPU_B, slope)
    fixed = icpt + rates.launch_s
    if gpu_b_max > 0 and fixed != 0:
        # z = 1 when any table moves HBM bytes (the evaluator adds launches only then)
        z = mip.binary("z_hbm")
        mip.add([(c, v) for c, v in acc[GPU_B]] + [(z, -gpu_b_max)], LE, 0.0, scale=GB)
        gpu_row.append((z, -fixed))
    mip.add(gpu_row, GE, rates.dense_s, scale=ts)
    k = rates.penalty_factor
    pen_h2d: list[tuple[int, float]] = []
    pen_d2h: list[tuple[int, float]] = []
    if k > 0 and a_max > 0 and b_max > 0:
        # P >= k min(A, B): y = 1 takes B, y = 0 takes A (P >= kA - k A_max y, P >= kB - k B_max (1 - y)).
        # P is in units of k max(A_max, B_max) bytes, so its rows are O(1) whatever the tables' size (in
        # GB a small model's rows, 1e-5, sat near HiGHS's feasibility tolerance).
        unit = k * max(a_max, b_max)
        pen = mip.var("P_bidir")
        y = mip.binary("y_bidir")
        ma, mb = k * a_max / unit, k * b_max / unit
        mip.add([(pen, 1.0), (y, ma)] + [(c, -k * v * rates.h2d_bytes_per_s / unit) for c, v in acc[C_H2D_S]],
                GE, 0.0)
        mip.add([(pen, 1.0), (y, -mb)] + [(c, -k * v / unit) for c, v in acc[D2H_C_B]], GE, -mb)
        pen_h2d = [(pen, -unit / rates.h2d_bytes_per_s)]
        pen_d2h = [(pen, -unit / rates.d2h_bytes_per_s)]
    mip.add([(t_comp, 1.0)] + terms(C_H2D_S, 1.0) + terms(C_LAT_N, lat) + pen_h2d, GE, 0.0, scale=ts)
    mip.add([(t_comp, 1.0)] + terms(D2H_C_B, 1.0 / rates.d2h_bytes_per_s) + terms(D2H_C_N, lat) + pen_d2h,
            GE, 0.0, scale=ts)
    mip.add([(t_host, 1.0)] + terms(D2H_U_B, 1.0 / rates.d2h_bytes_per_s) + terms(D2H_U_N, lat)
            + terms(CPU_UPD_S, 1.0), EQ, 0.0, scale=ts)
    keep = 1 - CAPACITY_MARGIN
    mip.add(acc[GPU_MEM_B] + acc[CACHE_MEM_B], LE, rates.gpu_cap_bytes * keep - rates.gpu_fixed_bytes, scale=GB)
    mip.add(acc[HOST_MEM_B], LE, rates.host_cap_bytes * keep, scale=GB)
    mip.minimize([(t_fetch, ts), (t_comp, ts), (t_host, ts)])
    return _Built(mip=mip, cols=cols, time_scale=ts)


def _extract(wl: EmbWorkload, groups: list[_Group], built: _Built, result: SolveResult,
             kind: CurveKind) -> tuple[tuple[TablePolicy, ...], float]:
    """Per-table policies, and the solution's HBM bytes (for the next tangent)."""
    policies: list[TablePolicy | None] = [None] * len(wl.model.tables)
    hbm = 0.0
    for grp, gcols in zip(groups, built.cols):
        t, order = grp.table, []
        for mc, (col, c_col, h_col) in zip(grp.coefs, gcols):
            cnt = round(result.value(col))
            hbm += result.value(col) * mc.base[GPU_B]
            if mc.per_hit is not None:
                hbm += result.value(h_col) * mc.per_hit[GPU_B]
            if not cnt:
                continue
            rows = mc.cache_rows
            if mc.per_hit is not None:
                # the rows C gives each table, but no more than the chords need for the hits H counts
                # (H below the chords is a smaller cache: fewer hits cost less HBM time)
                by_c = math.floor(result.value(c_col) * t.rows / cnt + 1e-6)
                by_h = math.ceil(float(np.interp(result.value(h_col) / cnt, grp.curve.hit_rate, grp.curve.cache_rows))
                                 - 1e-6)
                rows = max(0, min(grp.full_rows, by_c, by_h))
            order += [mc.mode.policy(rows, kind)] * cnt
        if len(order) != len(grp.idx):
            raise PlanError(f"internal: the group's mode counts sum to {len(order)}, not its {len(grp.idx)} tables")
        for i, pol in zip(grp.idx, order):
            policies[i] = pol
    return tuple(policies), hbm


def _solve(wl: EmbWorkload, system: System, *, backend: str | None, time_limit_s: float, n_points: int,
           cache_kind: CurveKind | str, gap_rel: float, choose_state: bool, choose_update: bool,
           choose_prefetch: bool) -> tuple[EmbSolution, list[_Group], _Rates, tuple[TableMode, ...], CurveKind]:
    if not isinstance(wl, EmbWorkload):
        raise PlanError(f"wl must be an EmbWorkload, got {type(wl).__name__}")
    if wl.runtime is not Runtime.FBGEMM:
        # ColossalAI's cache has one knob (its cache ratio) and no per-table placement to plan
        raise PlanError(f"the planner places tables for runtime fbgemm (TorchRec/FBGEMM), got runtime "
                        f"{wl.runtime.value!r}: evaluate its policy instead (colossalai-cache:RATIO)")
    _check_args(time_limit_s, n_points)
    _check_flags(choose_state=choose_state, choose_update=choose_update, choose_prefetch=choose_prefetch)
    kind = _kind(cache_kind)
    start = time.perf_counter()
    rates = _Rates.of(wl, system)
    modes = table_modes(wl, choose_state=choose_state, choose_update=choose_update, choose_prefetch=choose_prefetch)
    groups = _group_info(wl, rates, modes, kind, n_points)
    # the first tangent at the all-gpu bytes (every table's HBM work if it all sat on the GPU)
    ref = sum(len(g.idx) * next(mc.base[GPU_B] for mc in g.coefs if mc.mode.placement is Placement.GPU)
              for g in groups)
    best: EmbSolution | None = None
    for rnd in range(1, HBM_ROUNDS + 1):
        left = time_limit_s - (time.perf_counter() - start)
        if best is not None and left <= 0:
            break
        slope, icpt = _hbm_tangent(ref, rates)
        built = _build(wl, rates, groups, slope, icpt)
        # HiGHS's presolve at its default mip_feasibility_tolerance (1e-6) kept y_bidir = 0 with a 2.4 %
        # worse objective on a small model (CBC, or HiGHS without presolve or at 1e-9, found y = 1).
        result = solve(built.mip, backend=backend, time_limit_s=max(left, 1e-3), gap_rel=gap_rel,
                       mip_feasibility_tol=MIP_FEASIBILITY_TOL)
        if result.status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
            if best is None:
                best = EmbSolution(status=result.status, policies=(), lp_estimate_s=None, result=result, rounds=rnd)
            break
        policies, hbm = _extract(wl, groups, built, result, kind)
        estimate = None if result.objective is None else result.objective / built.time_scale
        best = EmbSolution(status=result.status, policies=policies, lp_estimate_s=estimate, result=result,
                           rounds=rnd)
        if abs(hbm - ref) <= HBM_REL_TOL * max(ref, 1.0) or hbm <= 0:
            break
        ref = hbm
    return best, groups, rates, modes, kind


def solve_embeddings(wl: EmbWorkload, system: System, *, backend: str | None = None, time_limit_s: float = 10.0,
                     n_points: int = 8, cache_kind: CurveKind | str = CurveKind.STATIC, gap_rel: float = 1e-4,
                     choose_state: bool = True, choose_update: bool = True,
                     choose_prefetch: bool = True) -> EmbSolution:
    """Formulate and solve the placement MIP (see the module docstring).

    Parameters
    ----------
    n_points : int
        Breakpoints of each group's concave hit curve (``concave_curve``).
    cache_kind : {"static", "lru"}
        The kind of every ``cache`` table.
    time_limit_s : float
        Seconds for all the MIP solves together.
    choose_state, choose_update, choose_prefetch : bool
        Whether the MIP chooses each table's optimizer-state tier, where its host rows are updated,
        and whether its cold rows are prefetched; False keeps the cost model's default
        (:func:`table_modes`).

    Returns
    -------
    EmbSolution
        Infeasible (nothing fits) and time limit are statuses, not exceptions.
    """
    return _solve(wl, system, backend=backend, time_limit_s=time_limit_s, n_points=n_points, cache_kind=cache_kind,
                  gap_rel=gap_rel, choose_state=choose_state, choose_update=choose_update,
                  choose_prefetch=choose_prefetch)[0]


# ---------------------------------------------------------------------------------------------
# Exact screening and local search
# ---------------------------------------------------------------------------------------------


_AFFINE = tuple(f.name for f in fields(TableTraffic) if f.name not in ("name", "placement", "stage_of_cold"))


class _Screen:
    """Per-table terms of any policy, cached per group, so a plan's iteration is a sum and a max.

    A sized cache of the MIP's kind in one of its modes is interpolated between the group's two
    :func:`~costmodel.embeddings_cost.table_traffic` calls (every field is affine in the hit
    fraction g; the lookup hit rate, which is not, is set from the curve); any other policy is costed
    by its own call.
    """

    def __init__(self, wl: EmbWorkload, rates: _Rates, groups: list[_Group], kind: CurveKind) -> None:
        self.wl, self.rates, self.groups, self.kind = wl, rates, groups, kind
        self.group_of = {}
        for gi, grp in enumerate(groups):
            for i in grp.idx:
                self.group_of[i] = gi
        self._terms: dict[tuple[int, TablePolicy], np.ndarray] = {}
        self._hits: dict[tuple[int, int, CurveKind], float] = {}
        self._sized = [{mc.mode: mc for mc in grp.coefs if mc.per_hit is not None} for grp in groups]
        self._fracs: dict[tuple[int, int, CurveKind], float] = {}
        for gi, grp in enumerate(groups):  # the hull's vertices are points of the true curve
            for rows, g in zip(grp.curve.cache_rows, grp.curve.hit_rate):
                self._fracs[(gi, int(rows), kind)] = float(g)

    def hit(self, gi: int, rows: int, kind: CurveKind) -> float:
        """The lookup hit rate h of a cache of ``rows`` rows."""
        key = (gi, rows, kind)
        if key not in self._hits:
            self._hits[key] = float(self.groups[gi].table.access.hit_rate(rows, kind))
        return self._hits[key]

    def fraction(self, gi: int, rows: int, kind: CurveKind) -> float:
        """The distinct-row hit fraction g of a cache of ``rows`` rows."""
        key = (gi, rows, kind)
        if key not in self._fracs:
            t = self.groups[gi].table
            self._fracs[key] = float(t.access.distinct_hit_fraction(rows, self.wl.batch * float(t.pooling), kind))
        return self._fracs[key]

    def terms(self, gi: int, pol: TablePolicy) -> np.ndarray:
        key = (gi, pol)
        got = self._terms.get(key)
        if got is not None:
            return got
        grp = self.groups[gi]
        t = grp.table
        mode = TableMode(placement=pol.placement, state_tier=pol.state_tier, update_on=pol.update_on,
                         prefetch=bool(pol.prefetch) if pol.prefetch is not None else bool(self.wl.prefetch))
        mc = self._sized[gi].get(mode) if pol.placement is Placement.CACHE and pol.cache_kind is self.kind else None
        if mc is not None and 0 < pol.cache_rows < grp.full_rows:
            g = self.fraction(gi, pol.cache_rows, pol.cache_kind)
            f = g / mc.traffic1.row_hit_fraction
            t0, t1 = mc.traffic0, mc.traffic1
            tr = replace(t0, **{a: getattr(t0, a) + (getattr(t1, a) - getattr(t0, a)) * f for a in _AFFINE})
            tr = replace(tr, hit_rate=self.hit(gi, pol.cache_rows, pol.cache_kind), row_hit_fraction=g)
        else:
            tr = table_traffic(self.wl, t, pol)
        v = _terms(self.wl, t, pol, tr, self.rates)
        self._terms[key] = v
        return v

    def totals(self, policies: Sequence[TablePolicy]) -> np.ndarray:
        return np.sum([self.terms(self.group_of[i], p) for i, p in enumerate(policies)], axis=0)


def _local_search(screen: _Screen, start: Sequence[TablePolicy], modes: Sequence[TableMode],
                  max_moves: int = LOCAL_MAX_MOVES) -> tuple[tuple[TablePolicy, ...], int]:
    """Best-improvement moves from ``start``: one table, half, or all of a group's tables that share a
    policy move to another mode (a cache at each breakpoint of its curve, its group's sizes, or the
    largest that fits); bounded by ``max_moves`` accepted moves, each screened exactly."""
    rates, kind = screen.rates, screen.kind
    pols = list(start)
    total = screen.totals(pols)
    cur = float(_iteration_s(total, rates)[0])
    moves = 0
    keep = 1.0 - CAPACITY_MARGIN
    while moves < max_moves:
        cands: list[tuple[int, TablePolicy, TablePolicy, int]] = []
        deltas = []
        for gi, grp in enumerate(screen.groups):
            by_pol: dict[TablePolicy, list[int]] = {}
            for i in grp.idx:
                by_pol.setdefault(pols[i], []).append(i)
            sizes = set(grp.curve.cache_rows) | {p.cache_rows for p in by_pol if p.placement is Placement.CACHE}
            r = float(grp.table.row_bytes)
            for q, members in by_pol.items():
                vq = screen.terms(gi, q)
                for c in sorted({1, (len(members) + 1) // 2, len(members)}):
                    free = (rates.gpu_cap_bytes * keep - rates.gpu_fixed_bytes - total[GPU_MEM_B]
                            - total[CACHE_MEM_B] + c * (vq[GPU_MEM_B] + vq[CACHE_MEM_B]))
                    for mode in modes:
                        targets = []
                        if mode.placement is not Placement.CACHE:
                            targets.append(mode.policy())
                        elif mode.full:
                            targets.append(mode.policy(grp.full_rows, kind))
                        else:
                            base = screen.terms(gi, mode.policy(0, kind))
                            # a cache row takes its bytes and its bookkeeping (CACHE_MEM_B = C (r + a))
                            ra = r + cache_state_bytes(screen.wl, grp.table, mode.policy(0, kind))[1]
                            c0 = math.floor((free / c - base[GPU_MEM_B]) / ra) if ra else 0
                            fit = set()
                            if c0 >= 0:
                                c0 = min(c0, grp.full_rows)
                                v0 = screen.terms(gi, mode.policy(c0, kind))
                                fit = {c0, max(c0, min(grp.full_rows, math.floor((free / c - v0[GPU_MEM_B]) / ra)))}
                            targets += [mode.policy(s, kind) for s in sorted((sizes | fit) - {grp.full_rows})
                                        if 0 <= s <= grp.full_rows]
                        for q2 in targets:
                            if q2 == q:
                                continue
                            cands.append((gi, q, q2, c))
                            deltas.append(c * (screen.terms(gi, q2) - vq))
        if not cands:
            break
        trial = total + np.asarray(deltas)
        its = _iteration_s(trial, rates)
        its = np.where(_fits(trial, rates), its, np.inf)
        j = int(np.argmin(its))
        if not its[j] < cur * (1 - LOCAL_MIN_GAIN):
            break
        gi, q, q2, c = cands[j]
        moved = 0
        for i in screen.groups[gi].idx:
            if moved < c and pols[i] == q:
                pols[i] = q2
                moved += 1
        total, cur = trial[j], float(its[j])
        moves += 1
    return tuple(pols), moves


def plan_embeddings(wl: EmbWorkload, system: System, *, baselines: Sequence[str] = BASELINES,
                    backend: str | None = None, time_limit_s: float = 10.0, n_points: int = 8,
                    cache_kind: CurveKind | str = CurveKind.STATIC, choose_state: bool = True,
                    choose_update: bool = True, choose_prefetch: bool = True,
                    local_search: bool = True) -> EmbPlan:
    """Solve the MIP, cost its policies and every baseline exactly, and improve the fastest.

    The fastest feasible of the MIP's choice and the baselines (each costed by
    :func:`~costmodel.embeddings_cost.evaluate_embeddings`) is the start: ``selected`` is ``"mip"``
    or ``"baseline:NAME"``. With ``local_search``, bounded moves (:func:`_local_search`) then try to
    improve it; a result :func:`~costmodel.embeddings_cost.evaluate_embeddings` confirms as faster and
    feasible replaces it and ``"+local"`` is appended. So the plan is never slower than any feasible
    baseline. With no feasible placement the status says so (no exception): ``policies`` is empty
    and ``cost`` None.
    """
    start = time.perf_counter()
    sol, groups, rates, modes, kind = _solve(
        wl, system, backend=backend, time_limit_s=time_limit_s, n_points=n_points, cache_kind=cache_kind,
        gap_rel=1e-4, choose_state=choose_state, choose_update=choose_update, choose_prefetch=choose_prefetch)
    mip_cost = evaluate_embeddings(wl, system, sol.policies) if sol.policies else None
    best_cost, best_pols, selected = None, (), "mip"
    if mip_cost is not None and mip_cost.feasible:
        best_cost, best_pols = mip_cost, sol.policies
    evaluated = []
    for name in baselines:
        pols = baseline_policies(name, wl, system)
        cost = evaluate_embeddings(wl, system, pols)
        evaluated.append((name, cost))
        # A baseline replaces the MIP's choice only when faster beyond float noise (LOCAL_MIN_GAIN): a
        # tie is the MIP's (the baselines are points of its space).
        if cost.feasible and (best_cost is None or cost.iteration_s < best_cost.iteration_s * (1 - LOCAL_MIN_GAIN)):
            best_cost, best_pols, selected = cost, pols, f"baseline:{name}"
    moves = 0
    if local_search and best_cost is not None:
        screen = _Screen(wl, rates, groups, kind)
        pols, n_moves = _local_search(screen, best_pols, modes)
        if n_moves:
            cost = evaluate_embeddings(wl, system, pols)
            if cost.feasible and cost.iteration_s < best_cost.iteration_s * (1 - LOCAL_MIN_GAIN):
                best_cost, best_pols, selected, moves = cost, pols, selected + "+local", n_moves
    base = []
    for name, cost in evaluated:
        if not cost.feasible:
            base.append(BaselineResult(name=name, feasible=False, samples_per_s=None, iteration_s=None, speedup=None,
                                       reason=cost.explain_shortfall(), cost=cost))
            continue
        speedup = None if best_cost is None else best_cost.samples_per_s / cost.samples_per_s
        base.append(BaselineResult(name=name, feasible=True, samples_per_s=cost.samples_per_s,
                                   iteration_s=cost.iteration_s, speedup=speedup, cost=cost))
    status = sol.status
    if best_cost is None and status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        status = SolveStatus.INFEASIBLE  # the MIP's extraction did not fit exactly, and no baseline does
    if best_cost is not None and status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        status = SolveStatus.FEASIBLE  # the MIP gave nothing, a baseline fits
    return EmbPlan(status=status, selected=selected if best_cost is not None else "", policies=tuple(best_pols),
                   cost=best_cost, mip_cost=mip_cost, lp_estimate_s=sol.lp_estimate_s, baselines=tuple(base),
                   solve_time_s=time.perf_counter() - start, local_moves=moves,
                   n_variables=sol.result.n_variables, n_constraints=sol.result.n_constraints)


__all__ = ["BaselineResult", "EmbPlan", "EmbSolution", "TableMode", "plan_embeddings", "solve_embeddings",
           "table_modes"]
