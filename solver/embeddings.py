"""The embedding-table placement MIP for DLRM training: formulate, solve, extract per-table policies.

Each table is placed ``gpu``, ``cache``, ``uvm`` or ``cpu`` with the cost model's defaults per
placement (:class:`costmodel.embeddings_cost.TablePolicy`): optimizer state on the GPU for ``gpu``
tables and on the host otherwise; updates on the GPU except for ``cpu`` tables (the CPU updates
them); ``prefetch`` is the workload's default. A ``cache`` is of one kind (``cache_kind``, static by
default: it is never worse than LRU under the cost model's independent-reference assumption).

Identical tables (rows, dim, element size, pooling, access distribution, optimizer) form a group;
each group gets an integer count per placement and, for its cached tables, an aggregate cache size
``C`` (rows) and an aggregate hit rate ``H`` (the sum of its cached tables' hit rates). The concave
hit curve enters as an epigraph in perspective form, ``H <= slope_j C + intercept_j n_cache`` for
each of its chords, so maximising hits stays linear; the chords lie below a concave curve, so the
MIP never counts a hit that is not there. An equal split of ``C`` is optimal for identical tables
(the curve is concave), and the extraction gives each cached table ``floor(C / n_cache)`` rows.

Every per-table byte and FLOP count of :func:`costmodel.embeddings_cost.table_traffic` is affine in
the hit rate ``h`` (the cold rows are ``U (1 - h)``), so its coefficients come from two calls per
group (``h = 0`` and a full cache) and are exact. What is linearised:

* HBM bytes run at the GPU's memory bandwidth times its efficiency at one size, the HBM bytes of
  every table on the GPU (the evaluator takes the efficiency at the actual total);
* link latencies and kernel launches are counted as if every ``cache``/``uvm`` table gathered host
  rows and wrote rows back (an upper bound: a table with every distinct row hit does neither);
* the bidirectional penalty ``min(H2D, D2H) (1/f - 1)`` of the compute stage takes one binary that
  picks the smaller side (exact).

Stage times are epigraphs as in the evaluator: ``fetch >= H2D``, ``fetch >= CPU forward + pooled
copies``; ``compute >= GPU``, ``>= H2D``, ``>= D2H``; ``host_update`` a sum. Rows of bytes are in
GB and rows of time in milliseconds (see :mod:`solver.kv_formulation`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from costmodel.embeddings import FP32_BYTES, CurveKind, Table, dense_optimizer_state_bytes_per_param
from costmodel.embeddings_cost import (
    BASELINES,
    INDEX_BYTES,
    EmbCost,
    EmbWorkload,
    Placement,
    TablePolicy,
    TableTraffic,
    UpdateOn,
    activation_bytes,
    baseline_policies,
    dense_gpu_s,
    evaluate_embeddings,
    table_traffic,
)
from costmodel.kv import capacity
from costmodel.roofline import OpClass, Processor, memory_time_s, roofline_time_s
from hwprofiles import System
from solver.backends import EQ, GE, LE, MipModel, SolveResult, SolveStatus, solve
from solver.errors import PlanError

GB = 1e-9
MS = 1e3
# Share of each memory tier the MIP leaves free: a solver's feasibility tolerance (about 1e-7 on a row
# in GB, 100 bytes) must not let the extracted cache rows overflow the tier when costed exactly.
CAPACITY_MARGIN = 1e-6
PLACEMENTS = (Placement.GPU, Placement.CACHE, Placement.UVM, Placement.CPU)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbSolution:
    """A solve of the embedding MIP: ``policies`` (one per table, in the model's order; empty unless
    the status is optimal or feasible) and ``lp_estimate_s``, the MIP's iteration seconds."""

    status: SolveStatus
    policies: tuple[TablePolicy, ...]
    lp_estimate_s: float | None
    result: SolveResult


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


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbPlan:
    """The chosen placement: ``selected`` is ``"mip"`` or ``"baseline:NAME"`` (a baseline the exact
    model ranks above the MIP's choice); ``cost`` is its exact cost; ``mip_cost`` the MIP choice's."""

    status: SolveStatus
    selected: str
    policies: tuple[TablePolicy, ...]
    cost: EmbCost | None
    mip_cost: EmbCost | None
    lp_estimate_s: float | None
    baselines: tuple[BaselineResult, ...]
    solve_time_s: float

    @property
    def samples_per_s(self) -> float | None:
        return None if self.cost is None else self.cost.samples_per_s


def _group_key(wl: EmbWorkload, t: Table) -> tuple:
    try:
        hash(t.access)
        acc = t.access
    except TypeError:
        acc = id(t.access)
    return (t.rows, t.dim, t.dtype_bytes, float(t.pooling), wl.model.optimizer_state_bytes_per_row(t), acc)


@dataclass(frozen=True, slots=True)
class _Coef:
    """One table's per-iteration quantity under a placement: ``base + per_hit * h``."""

    base: float
    per_hit: float = 0.0


def _affine(t0: TableTraffic, t1: TableTraffic | None, h1: float, attr: str) -> _Coef:
    v0 = float(getattr(t0, attr))
    if t1 is None or h1 <= 0:
        return _Coef(v0)
    return _Coef(v0, (float(getattr(t1, attr)) - v0) / h1)


def _check_args(time_limit_s: float, n_points: int) -> None:
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) or not (
            math.isfinite(time_limit_s) and time_limit_s > 0):
        raise PlanError(f"time_limit_s must be a positive number of seconds, got {time_limit_s!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or not 2 <= n_points <= 4096:
        raise PlanError(f"n_points must be an integer in [2, 4096], got {n_points!r}")


def solve_embeddings(wl: EmbWorkload, system: System, *, backend: str | None = None, time_limit_s: float = 10.0,
                     n_points: int = 8, cache_kind: CurveKind | str = CurveKind.STATIC,
                     gap_rel: float = 1e-4) -> EmbSolution:
    """Formulate and solve the placement MIP (see the module docstring).

    Parameters
    ----------
    n_points : int
        Breakpoints of each group's concave hit curve (``concave_curve``).
    cache_kind : {"static", "lru"}
        The kind of every ``cache`` table.

    Returns
    -------
    EmbSolution
        Infeasible (nothing fits) and time limit are statuses, not exceptions.
    """
    if not isinstance(wl, EmbWorkload):
        raise PlanError(f"wl must be an EmbWorkload, got {type(wl).__name__}")
    _check_args(time_limit_s, n_points)
    try:
        kind = CurveKind(cache_kind)
    except ValueError:
        raise PlanError(f"cache_kind must be one of {', '.join(k.value for k in CurveKind)}, "
                        f"got {cache_kind!r}") from None
    m, link = wl.model, system.link
    cap = capacity(system)
    h2d_rate, d2h_rate = link.h2d_bytes_per_s, link.d2h_bytes_per_s
    uvm_rate = h2d_rate * link.pageable_factor
    lat = link.latency_s
    gpu_proc, cpu_proc = Processor.gpu(system.gpu), Processor.cpu(system.host)
    prefetch = bool(wl.prefetch)

    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(m.tables):
        groups.setdefault(_group_key(wl, t), []).append(i)

    # per group: table, curve, traffic per placement (cache at h = 0 and at a full cache)
    info = []
    ref_gpu_bytes = 0.0
    for idx in groups.values():
        t = m.tables[idx[0]]
        tr = {p: table_traffic(wl, t, TablePolicy(placement=p, cache_kind=kind)) for p in PLACEMENTS}
        full = table_traffic(wl, t, TablePolicy(placement=Placement.CACHE, cache_rows=t.rows, cache_kind=kind))
        curve = t.access.concave_curve(kind, n_points)
        info.append((idx, t, tr, full, curve))
        ref_gpu_bytes += len(idx) * tr[Placement.GPU].gpu_bytes
    hbm_s_per_byte = float(memory_time_s(max(ref_gpu_bytes, 1.0), gpu_proc)) / max(ref_gpu_bytes, 1.0)

    mip = MipModel("embeddings")
    # stage accumulators: lists of (col, coef seconds) plus constants
    fetch_h2d, fetch_cpu, comp_gpu, comp_h2d, comp_d2h, host_upd = ([] for _ in range(6))
    const = dict.fromkeys(("fetch_h2d", "fetch_cpu", "comp_gpu", "comp_h2d", "comp_d2h", "host_upd"), 0.0)
    h2d_c_bytes, d2h_c_bytes = [], []  # compute-stage link bytes, for the bidirectional penalty
    gpu_mem, host_mem = [], []
    cols = []
    for gi, (idx, t, tr, full, curve) in enumerate(info):
        n = len(idx)
        count = {p: mip.var(f"n[{gi},{p.value}]", ub=n, integer=True) for p in PLACEMENTS}
        mip.add([(c, 1.0) for c in count.values()], EQ, n)
        # cache size in tables' worth of rows (C / rows), so slopes per row of large tables stay above
        # the solver's drop tolerance
        c_rows = mip.var(f"C[{gi}]", ub=float(n))
        hits = mip.var(f"H[{gi}]", ub=float(n))
        mip.add([(c_rows, 1.0), (count[Placement.CACHE], -1.0)], LE, 0.0)
        for slope, icpt in curve.segments():
            mip.add([(hits, 1.0), (c_rows, -slope * t.rows), (count[Placement.CACHE], -icpt)], LE, 0.0)
        mip.add([(hits, 1.0), (count[Placement.CACHE], -max(curve.hit_rate))], LE, 0.0)
        cols.append((count, c_rows, hits))
        h1 = full.hit_rate
        r = float(t.row_bytes)
        s = float(m.optimizer_state_bytes_per_row(t))
        g = float(wl.batch * t.dim * FP32_BYTES)
        for p in PLACEMENTS:
            col = count[p]
            t0 = tr[p]
            t1 = full if p is Placement.CACHE else None

            def coef(attr: str) -> _Coef:
                return _affine(t0, t1, h1, attr)

            def put(acc: list, c: _Coef, per: float) -> None:
                acc.append((col, c.base * per))
                if c.per_hit:
                    acc.append((hits, c.per_hit * per))

            gb = coef("gpu_bytes")
            put(comp_gpu, gb, hbm_s_per_byte)
            if p is Placement.CPU:
                fwd = float(roofline_time_s(t0.cpu_fwd_flop, t0.cpu_fwd_bytes, OpClass.ELEMENTWISE, cpu_proc))
                fetch_cpu.append((col, fwd + lat + t0.h2d_bytes / h2d_rate))
            else:
                stage_h2d = comp_h2d if (prefetch and p in (Placement.CACHE, Placement.UVM)) else fetch_h2d
                n_lat = 1 if p is Placement.GPU and t0.uvm_h2d_bytes == 0 else 2
                stage_h2d.append((col, n_lat * lat))
                put(stage_h2d, coef("h2d_bytes"), 1.0 / h2d_rate)
                put(stage_h2d, coef("uvm_h2d_bytes"), 1.0 / uvm_rate)
                if stage_h2d is comp_h2d:
                    put(h2d_c_bytes, coef("h2d_bytes"), 1.0)
                    put(h2d_c_bytes, coef("uvm_h2d_bytes"), 1.0 / link.pageable_factor)
            pol = TablePolicy(placement=p, cache_kind=kind)
            if pol.update_on is UpdateOn.CPU:
                upd = float(roofline_time_s(t0.cpu_upd_flop, t0.cpu_upd_bytes, OpClass.ELEMENTWISE, cpu_proc))
                host_upd.append((col, upd + lat + t0.d2h_bytes / d2h_rate))
            else:
                db = coef("d2h_bytes")
                if db.base or db.per_hit or p is not Placement.GPU:
                    comp_d2h.append((col, lat))
                put(comp_d2h, db, 1.0 / d2h_rate)
                put(d2h_c_bytes, db, 1.0)
            # memory, as costmodel.embeddings_cost.memory_use
            lookups = t0.lookups
            gpu_fixed = 2 * g + (0.0 if p is Placement.CPU else INDEX_BYTES * lookups)
            host_fixed = INDEX_BYTES * lookups + (2 * g if pol.update_on is UpdateOn.CPU else 0.0)
            if p is Placement.GPU:
                gpu_fixed += t.rows * (r + s)
            else:
                host_fixed += t.rows * (r + s)
            gpu_mem.append((col, gpu_fixed))
            host_mem.append((col, host_fixed))
            if prefetch and p in (Placement.CACHE, Placement.UVM):
                put(gpu_mem, coef("cold_rows"), 2 * r)
        gpu_mem.append((c_rows, t.rows * r))

    params = float(m.dense_params())
    dense_mem = params * (2 * m.dense_dtype_bytes + dense_optimizer_state_bytes_per_param(m.dense_optimizer))
    dense_mem += activation_bytes(wl)
    mip.add(gpu_mem, LE, cap["gpu_bytes"] * (1 - CAPACITY_MARGIN) - dense_mem, scale=GB)
    mip.add(host_mem, LE, cap["host_bytes"] * (1 - CAPACITY_MARGIN), scale=GB)

    const_gpu = dense_gpu_s(wl, system) + 3 * gpu_proc.launch_overhead_s
    t_fetch, t_comp = mip.var("T_fetch"), mip.var("T_compute")
    t_host = mip.var("T_host_update")
    mip.add([(t_fetch, 1.0)] + [(c, -v) for c, v in fetch_h2d], GE, 0.0, scale=MS)
    mip.add([(t_fetch, 1.0)] + [(c, -v) for c, v in fetch_cpu], GE, 0.0, scale=MS)
    mip.add([(t_comp, 1.0)] + [(c, -v) for c, v in comp_gpu], GE, const_gpu, scale=MS)
    k = 1.0 / link.bidirectional_factor - 1.0
    pen_terms_h2d: list = []
    pen_terms_d2h: list = []
    if prefetch and k > 0 and h2d_c_bytes and d2h_c_bytes:
        # P >= k min(A, B): one binary y picks the smaller side (P >= kA - M y, P >= kB - M (1 - y)).
        pen = mip.var("P_bidir")
        y = mip.binary("y_bidir")
        big = k * (sum(abs(v) for _, v in h2d_c_bytes) + sum(abs(v) for _, v in d2h_c_bytes)) * max(
            len(m.tables), 1)
        mip.add([(pen, 1.0), (y, big)] + [(c, -k * v) for c, v in h2d_c_bytes], GE, 0.0, scale=GB)
        mip.add([(pen, 1.0), (y, -big)] + [(c, -k * v) for c, v in d2h_c_bytes], GE, -big, scale=GB)
        pen_terms_h2d, pen_terms_d2h = [(pen, -1.0 / h2d_rate)], [(pen, -1.0 / d2h_rate)]
    mip.add([(t_comp, 1.0)] + [(c, -v) for c, v in comp_h2d] + pen_terms_h2d, GE, 0.0, scale=MS)
    mip.add([(t_comp, 1.0)] + [(c, -v) for c, v in comp_d2h] + pen_terms_d2h, GE, 0.0, scale=MS)
    mip.add([(t_host, 1.0)] + [(c, -v) for c, v in host_upd], EQ, 0.0, scale=MS)
    mip.minimize([(t_fetch, MS), (t_comp, MS), (t_host, MS)])

    result = solve(mip, backend=backend, time_limit_s=time_limit_s, gap_rel=gap_rel)
    if result.status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return EmbSolution(status=result.status, policies=(), lp_estimate_s=None, result=result)
    policies: list[TablePolicy | None] = [None] * len(m.tables)
    for (idx, t, _, _, _), (count, c_rows, _) in zip(info, cols):
        counts = {p: int(round(result.value(count[p]))) for p in PLACEMENTS}
        n_cache = counts[Placement.CACHE]
        per_table = min(t.rows, int(math.floor(result.value(c_rows) * t.rows / n_cache + 1e-6))) if n_cache else 0
        order = [p for p in PLACEMENTS for _ in range(counts[p])]
        if len(order) != len(idx):
            raise PlanError(f"internal: group counts {counts} do not sum to the group's {len(idx)} tables")
        for i, p in zip(idx, order):
            policies[i] = (TablePolicy(placement=p, cache_rows=per_table, cache_kind=kind)
                           if p is Placement.CACHE else TablePolicy(placement=p))
    estimate = None if result.objective is None else result.objective / MS
    return EmbSolution(status=result.status, policies=tuple(policies), lp_estimate_s=estimate, result=result)


def plan_embeddings(wl: EmbWorkload, system: System, *, baselines: Sequence[str] = BASELINES,
                    backend: str | None = None, time_limit_s: float = 10.0, n_points: int = 8,
                    cache_kind: CurveKind | str = CurveKind.STATIC) -> EmbPlan:
    """Solve the MIP, cost its policies exactly, and compare with every baseline, each costed exactly.

    A baseline that the exact model ranks above the MIP's choice is returned instead
    (``selected = "baseline:NAME"``). With no feasible placement the status says so (no exception):
    ``policies`` is empty and ``cost`` None.
    """
    start = time.perf_counter()
    sol = solve_embeddings(wl, system, backend=backend, time_limit_s=time_limit_s, n_points=n_points,
                           cache_kind=cache_kind)
    mip_cost = evaluate_embeddings(wl, system, sol.policies) if sol.policies else None
    best_cost, best_pols, selected = None, (), "mip"
    if mip_cost is not None and mip_cost.feasible:
        best_cost, best_pols = mip_cost, sol.policies
    evaluated = []
    for name in baselines:
        pols = baseline_policies(name, wl, system)
        cost = evaluate_embeddings(wl, system, pols)
        evaluated.append((name, cost))
        if cost.feasible and (best_cost is None or cost.iteration_s < best_cost.iteration_s):
            best_cost, best_pols, selected = cost, pols, f"baseline:{name}"
    base = []
    for name, cost in evaluated:
        if not cost.feasible:
            base.append(BaselineResult(name=name, feasible=False, samples_per_s=None, iteration_s=None, speedup=None,
                                       reason=cost.explain_shortfall()))
            continue
        speedup = None if best_cost is None else best_cost.samples_per_s / cost.samples_per_s
        base.append(BaselineResult(name=name, feasible=True, samples_per_s=cost.samples_per_s,
                                   iteration_s=cost.iteration_s, speedup=speedup))
    status = sol.status
    if best_cost is None and status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        status = SolveStatus.INFEASIBLE  # the MIP's extraction did not fit exactly, and no baseline does
    if best_cost is not None and status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        status = SolveStatus.FEASIBLE  # the MIP gave nothing, a baseline fits
    return EmbPlan(status=status, selected=selected if best_cost is not None else "", policies=tuple(best_pols),
                   cost=best_cost, mip_cost=mip_cost, lp_estimate_s=sol.lp_estimate_s, baselines=tuple(base),
                   solve_time_s=time.perf_counter() - start)


__all__ = ["BaselineResult", "EmbPlan", "EmbSolution", "plan_embeddings", "solve_embeddings"]
