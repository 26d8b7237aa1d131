"""Plan training with offload: per-layer placement of model states, step device and activation policy.

:func:`plan_training` solves the placement MIP of :mod:`solver.training_formulation` (one integer
layer count per mode, the head's mode, the first backward job's mode), costs its policies and every
baseline with :func:`~costmodel.training.evaluate_training`, starts from the fastest feasible, and
improves it by a bounded local search (one, half or all of a mode's layers moved to another mode;
another first backward job; another head mode), each candidate screened with the exact group
formula (:class:`~solver.training_formulation.GroupScreen`) and kept only if
:func:`~costmodel.training.evaluate_training` confirms it. The plan is therefore never slower than
any feasible baseline; ``selected`` says where it came from. With no feasible placement the status
says so, and ``explanation`` names the short tier, its bytes and what would fix it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from costmodel.errors import WorkloadError
from costmodel.training import (
    TrainCost,
    baseline_policies,
    baseline_zero_stage,
    evaluate_training,
)
from costmodel.training_units import (
    LayerTrainPolicy,
    check_node,
    node_capacity,
    Overlap,
    TrainWorkload,
    unit_costs,
)
from hwprofiles import System, format_bytes
from solver.backends import SolveStatus
from solver.errors import PlanError
from solver.training_formulation import (
    CAPACITY_MARGIN,
    GroupScreen,
    ModeCoef,
    head_policy_of,
    layer_modes,
    mode_coef,
    mode_label,
    solve_training,
)

# The baselines a plan reports (costmodel.training.BASELINES, with ZeRO-Offload's and ZeRO-Infinity's
# usual activation checkpointing joined in), each costed at the ZeRO stage it runs at. Twin-Flow at
# ratio 0.5 is one representative point of DeepSpeed's offload_optimizer.ratio, not a published
# setting. A baseline that needs a disk the system lacks is reported infeasible with the reason.
BASELINES_TO_REPORT = (
    "all-gpu", "zero-offload", "zero-infinity-cpu", "zero-infinity-nvme", "twin-flow:0.5", "full-recompute",
    "selective-recompute", "activation-offload", "zero-offload+full-recompute", "zero-infinity-cpu+full-recompute",
    "zero-infinity-nvme+full-recompute",
)
# Local search bounds: moves accepted at most; a move must gain this share of the iteration (the
# screen and the evaluator sum in different orders: float rounding must not count as a gain); with
# overlap "full" the screen is a bound, so this many of its best candidates are costed exactly per move.
LOCAL_MAX_MOVES = 16
LOCAL_MIN_GAIN = 1e-9
FULL_CONFIRM = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineResult:
    """One baseline costed exactly at ``zero_stage`` (the stage it runs at, or the workload's): its
    tokens/s and iteration (None if it cannot run, with ``reason``: the short tier and its terms, or
    the rule it breaks) and the plan's speed-up over it (plan tokens/s over the baseline's)."""

    name: str
    feasible: bool
    tokens_per_s: float | None
    iteration_s: float | None
    speedup: float | None
    mfu: float | None = None
    reason: str = ""
    zero_stage: int | None = None
    cost: TrainCost | None = field(default=None, compare=False, repr=False)  # its exact cost (None: not costed)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainPlan:
    """The chosen per-layer policies of one training workload on one system.

    ``status``: optimal (every MIP proven optimal, to a relative gap of 1e-4, over its mode space;
    the local search may still improve on it), feasible (a time limit stopped a MIP, or only a
    baseline fits), infeasible or time_limit (no plan: ``policies`` empty, ``cost`` None,
    ``explanation`` says why). ``selected``: ``"mip"`` or ``"baseline:NAME"``, with ``"+local"``
    when the local search improved it (``local_moves`` moves). ``workload`` is the one planned (the
    request at the chosen ZeRO stage). ``policies`` one per decoder layer in model order and ``head``
    the embeddings/LM head's: ``evaluate_training(plan.workload, system, plan.policies,
    head=plan.head)`` re-costs the plan. ``cost`` their exact cost;
    ``mip_cost`` the MIP's own choice's; ``lp_estimate_s`` the MIP's iteration seconds (equal to
    ``mip_cost.iteration_s`` for overlap none, and for deepspeed unless the GPU steps' flow shop mixes
    kinds of streamed jobs; a lower bound otherwise and for full: see
    :mod:`solver.training_formulation`).
    ``mode_counts``: (mode label, layers) of the plan. ``n_variables``/``n_constraints``: the largest
    MIP's size; ``mip_status`` the MIPs' combined status; ``mip_solve_time_s`` the seconds spent on
    the MIPs (building, solving, costing their plans); ``solve_time_s`` the whole call's.
    """

    status: SolveStatus
    selected: str
    workload: TrainWorkload
    policies: tuple[LayerTrainPolicy, ...]
    head: LayerTrainPolicy | None
    cost: TrainCost | None
    mip_cost: TrainCost | None
    lp_estimate_s: float | None
    baselines: tuple[BaselineResult, ...]
    solve_time_s: float
    n_variables: int = 0
    n_constraints: int = 0
    explanation: str = ""
    mode_counts: tuple[tuple[str, int], ...] = ()
    local_moves: int = 0
    backend: str = ""
    mip_status: SolveStatus | None = None
    mip_solve_time_s: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.cost is not None

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.cost is None else self.cost.tokens_per_s

    @property
    def iteration_s(self) -> float | None:
        return None if self.cost is None else self.cost.iteration_s

    @property
    def mfu(self) -> float | None:
        return None if self.cost is None else self.cost.mfu


def _check_args(wl: object, system: object, baselines: object, time_limit_s: object) -> None:
    if not isinstance(wl, TrainWorkload):
        raise PlanError(f"workload must be a TrainWorkload, got {type(wl).__name__}")
    if not isinstance(system, System):
        raise PlanError(f"system must be a hwprofiles System, got {type(system).__name__}")
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) or not (
            math.isfinite(time_limit_s) and time_limit_s > 0):
        raise PlanError(f"time_limit_s must be a positive number of seconds, got {time_limit_s!r}")
    if isinstance(baselines, str) or not isinstance(baselines, Sequence) or not all(isinstance(b, str)
                                                                                   for b in baselines):
        raise PlanError(f"baselines must be a sequence of baseline names, got {baselines!r}")


def _mode_counts(policies: Sequence[LayerTrainPolicy]) -> tuple[tuple[str, int], ...]:
    counts: dict[LayerTrainPolicy, int] = {}
    for p in policies:
        counts[p] = counts.get(p, 0) + 1
    return tuple((mode_label(p), n) for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Local search
# ---------------------------------------------------------------------------------------------


def _index(items: list[LayerTrainPolicy], pol: LayerTrainPolicy) -> int:
    try:
        return items.index(pol)
    except ValueError:
        items.append(pol)
        return len(items) - 1


def _local_search(wl: TrainWorkload, system: System, layer: Sequence[LayerTrainPolicy],
                  heads: Sequence[LayerTrainPolicy], start: tuple[tuple[LayerTrainPolicy, ...], LayerTrainPolicy],
                  start_cost: TrainCost, max_moves: int = LOCAL_MAX_MOVES) -> tuple[tuple[LayerTrainPolicy, ...], LayerTrainPolicy,
                                                             TrainCost, int]:
    """Best-improvement moves from ``start`` over counts per mode (the ranked order of the screen):
    one, half or all of a mode's layers to another mode (the moved layer may become the first
    backward job), another first job, another head mode. Every move is screened with the group
    formula and confirmed by :func:`evaluate_training`; at most ``max_moves`` are accepted."""
    pols, head = start
    modes, hmodes = list(layer), list(heads)
    idx = [_index(modes, p) for p in pols]
    h0 = _index(hmodes, head)
    screen = GroupScreen(wl, system, modes, hmodes)
    K, S = len(modes), len(hmodes)
    counts = np.bincount(idx, minlength=K).astype(float)
    first, hd = idx[-1], h0
    best_pols, best_head, best_cost = tuple(pols), head, start_cost
    cur = start_cost.iteration_s
    moves = 0
    full = wl.overlap is Overlap.FULL
    tried: set[tuple] = set()
    while moves < max_moves:
        cands_c, cands_f, cands_h = [counts], [first], [hd]
        for q in np.flatnonzero(counts > 0.5):
            nq = int(counts[q])
            for c in sorted({1, (nq + 1) // 2, nq}):
                for k in range(K):
                    if k == q:
                        continue
                    new = counts.copy()
                    new[q] -= c
                    new[k] += c
                    f_keep = first if (first != q or new[q] > 0.5) else k
                    cands_c.append(new)
                    cands_f.append(f_keep)
                    cands_h.append(hd)
                    if c == 1 and f_keep != k:
                        cands_c.append(new)
                        cands_f.append(k)
                        cands_h.append(hd)
            if q != first:
                cands_c.append(counts)
                cands_f.append(int(q))
                cands_h.append(hd)
        for s in range(S):
            if s != hd:
                cands_c.append(counts)
                cands_f.append(first)
                cands_h.append(s)
        C = np.stack(cands_c)
        F = np.asarray(cands_f, dtype=int)
        Hh = np.asarray(cands_h, dtype=int)
        its, gpu, host, disk = screen.cost(C, F, Hh)
        its = np.where(screen.fits(gpu, host, disk), its, np.inf)
        order = np.argsort(its, kind="stable")
        accepted = False
        for j in order[:FULL_CONFIRM if full else 1]:
            if not its[j] < cur * (1 - LOCAL_MIN_GAIN):  # exact, or with overlap "full" a lower bound
                break
            key = (tuple(C[j].astype(int)), int(F[j]), int(Hh[j]))
            if key in tried:
                continue
            tried.add(key)
            cand_pols, cand_head = screen.policies(C[j].astype(int), int(F[j]), int(Hh[j]))
            cost = evaluate_training(wl, system, cand_pols, head=cand_head)
            if cost.feasible and cost.iteration_s < cur * (1 - LOCAL_MIN_GAIN):
                best_pols, best_head, best_cost, cur = cand_pols, cand_head, cost, cost.iteration_s
                counts, first, hd = C[j].copy(), int(F[j]), int(Hh[j])
                accepted = True
                break
        if not accepted:
            break
        moves += 1
    return best_pols, best_head, best_cost, moves


# ---------------------------------------------------------------------------------------------
# Infeasible: which tier, by how much, and what would fix it
# ---------------------------------------------------------------------------------------------


def _gpu_need(c: ModeCoef) -> float:
    return c.gpu_bytes + c.stored_bytes + c.grad_buffer_bytes + c.offload_buffer_bytes + c.stream_buffer_bytes


def _tiers_text(cost: TrainCost, tiers: Sequence[str]) -> str:
    return "; ".join(p for p in cost.explain_shortfall().split("; ") if p.split(" ")[0] in tiers)


def explain_infeasible(wl: TrainWorkload, system: System, *, backend: str | None = None,
                       time_limit_s: float = 10.0) -> str:
    """Why no placement of ``wl`` fits ``system``: the short tier with its bytes and terms under the
    placement that needs least of it, and what would fix it (ZeRO stage 3, a smaller micro-batch,
    a bigger GPU, more host memory, a disk tier).

    The GPU is checked first, under each unit's least-GPU policy with unlimited host and disk; if
    that fits, the MIP is solved with host and disk allowed to overflow, the least overflow first.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> from hwprofiles import load_system
    >>> wl = TrainWorkload(model=load_model("llama-2-70b"), seq_len=4096, micro_batch=4, zero_stage=2)
    >>> explain_infeasible(wl, load_system("rtx4090")).startswith("no placement fits the GPU")
    True
    """
    cap = node_capacity(wl, system)
    uc, hc = unit_costs(wl, system), unit_costs(wl, system, head=True)
    lay = min((mode_coef(wl, uc, p) for p in layer_modes(wl, system, space="full", prune=False)), key=_gpu_need)
    hed = min((mode_coef(wl, hc, p) for p in layer_modes(wl, system, head=True, space="full", prune=False)),
              key=_gpu_need)
    least_gpu = evaluate_training(wl, system, (lay.policy,) * wl.model.n_layers, head=hed.policy)
    if "gpu_bytes" in least_gpu.shortfalls():
        terms = dict(least_gpu.memory.gpu_breakdown)
        fixes = []
        if wl.zero_stage < 3 and terms.get("weights", 0.0) > 0:
            fixes.append(f"zero_stage=3 (ZeRO-Infinity: the {format_bytes(terms['weights'])} of 16-bit weights "
                         "may then leave the GPU)")
        act = terms.get("activations", 0.0) + terms.get("act_offload_buffers", 0.0)
        if act > 0 and wl.micro_batch > 1:
            fixes.append(f"a smaller micro-batch (the activations take {format_bytes(act)} at micro_batch="
                         f"{wl.micro_batch} and scale with it)")
        elif act > 0:
            fixes.append(f"a shorter sequence (the activations take {format_bytes(act)} at seq_len={wl.seq_len})")
        fixes.append(f"a GPU with at least {format_bytes(least_gpu.memory.gpu_bytes)} usable")
        return (f"no placement fits the GPU: even with every layer {mode_label(lay.policy)} (the least GPU "
                f"memory), {_tiers_text(least_gpu, ('gpu',))}; try {', or '.join(fixes)}")
    disk = system.disk is not None
    screen = GroupScreen(wl, system, layer_modes(wl, system, disk=disk), layer_modes(wl, system, head=True, disk=disk))
    sol = solve_training(screen, backend=backend, time_limit_s=time_limit_s, pull=True, overflow=True)
    if not sol.found:
        return (f"no placement fits: the GPU fits with every layer {mode_label(lay.policy)}, but no placement was "
                f"found with host and disk allowed to overflow (MIP status {sol.result.status.value})")
    pols, head = screen.policies(sol.counts, sol.first, sol.head)
    cost = evaluate_training(wl, system, pols, head=head)
    short = cost.shortfalls()
    fixes = []
    if "host_bytes" in short:
        fixes.append(f"more host memory (at least {format_bytes(cost.memory.host_bytes)} usable, "
                     "--set host.memory=...)")
        if not disk:
            fixes.append("an NVMe disk for the optimizer states (--set disk=nvme-gen4)")
        if wl.zero_stage < 3:
            fixes.append("zero_stage=3 (the 16-bit weights may leave the GPU, making room for states there)")
        if wl.grad_accum > 1:
            fixes.append("grad_accum=1 (no 16-bit gradient accumulation buffer on the host)")
        if wl.pin_memory and dict(cost.memory.host_breakdown).get("pinned_rounding", 0.0) > 0:
            fixes.append("pin_memory=False (no power-of-two rounding of pinned buffers)")
    if "disk_bytes" in short:
        fixes.append(f"a disk of at least {format_bytes(cost.memory.disk_bytes)}")
    if not short:  # the least overflow is within the MIP's margin: fits in all but rounding
        return "no placement fits with the planner's capacity margin; the closest " + \
            f"needs GPU {format_bytes(cost.memory.gpu_bytes)} of {format_bytes(cap['gpu_bytes'])} usable"
    return (f"no placement fits the host and disk: the placement that overflows them least "
            f"({', '.join(f'{n} x {lbl}' for lbl, n in _mode_counts(pols))}) still leaves "
            f"{_tiers_text(cost, ('host', 'disk'))}; try {', or '.join(fixes)}")


# ---------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------


def _disk_may_help(wl: TrainWorkload, system: System) -> bool:
    """Whether the MIP needs disk placements. A disk placement is never faster and never saves GPU
    memory (it adds disk reads and writes, and the host's staging buffers); it only saves host
    memory. So unless some placement without disk could overflow the host — every layer and the
    head in the host-hungriest such mode — the disk modes cannot help, and the MIP is left a third
    of their size (they triple its modes)."""
    if system.disk is None:
        return False
    uc, hc = unit_costs(wl, system), unit_costs(wl, system, head=True)
    worst = (wl.model.n_layers * max(mode_coef(wl, uc, p).host_bytes for p in layer_modes(wl, system, disk=False))
             + max(mode_coef(wl, hc, p).host_bytes for p in layer_modes(wl, system, head=True, disk=False)))
    return worst > node_capacity(wl, system)["host_bytes"] * (1.0 - CAPACITY_MARGIN)


def _baseline(name: str, wl: TrainWorkload, system: System):
    """A named baseline at the ZeRO stage it runs at (``wl``'s if it runs at any): its workload, policies and
    exact cost, or the reason it cannot be costed (a disk the system lacks, a bad name)."""
    stage = baseline_zero_stage(name)
    bwl = wl if stage is None or stage == wl.zero_stage else replace(wl, zero_stage=stage)
    try:
        pols = baseline_policies(name, bwl, system)
        return bwl, pols, evaluate_training(bwl, system, pols), ""
    except WorkloadError as err:
        return bwl, None, None, str(err)


def _better_baseline(a: TrainCost, b: TrainCost | None) -> bool:
    """Whether baseline cost ``a`` beats ``b``: feasible and faster, or both short of memory and ``a`` by fewer bytes."""
    if b is None:
        return True
    if a.feasible != b.feasible:
        return a.feasible
    if a.feasible:
        return a.iteration_s < b.iteration_s
    return sum(a.shortfalls().values()) < sum(b.shortfalls().values())


def _solve_stage(wl: TrainWorkload, system: System, backend: str | None, time_limit_s: float):
    """The MIP at ``wl``'s ZeRO stage: its solution and, if it found one, its policies costed exactly."""
    disk = _disk_may_help(wl, system)
    screen = GroupScreen(wl, system, layer_modes(wl, system, disk=disk), layer_modes(wl, system, head=True, disk=disk))
    # Without first-job binaries the MIP is 2-4x faster and its memory row an upper bound (the worst point of the
    # backward counted with the least stored activations of any mode); the local search then picks the first
    # job. Only if that finds nothing is the exact model solved.
    sol = solve_training(screen, backend=backend, time_limit_s=time_limit_s, pull=False)
    if sol.result.status is SolveStatus.INFEASIBLE:
        sol = solve_training(screen, backend=backend, time_limit_s=time_limit_s, pull=True)
    if not sol.found:
        return sol, None
    pols, head = screen.policies(sol.counts, sol.first, sol.head)
    cost = evaluate_training(wl, system, pols, head=head)
    if not cost.feasible:  # the MIP's rows are the evaluator's terms with a margin: a bug, never hidden
        raise PlanError(f"internal: the training MIP's plan does not fit when costed exactly: "
                        f"{cost.explain_shortfall()}")
    return sol, (pols, head, cost)


def _combined_status(statuses: Sequence[SolveStatus]) -> SolveStatus:
    """optimal: every MIP proven optimal or infeasible, one optimal; feasible: a time limit stopped one with a
    solution; else the first non-solution status (infeasible, time_limit, error)."""
    if set(statuses) <= {SolveStatus.OPTIMAL, SolveStatus.INFEASIBLE}:
        return SolveStatus.OPTIMAL if SolveStatus.OPTIMAL in statuses else SolveStatus.INFEASIBLE
    if SolveStatus.FEASIBLE in statuses or SolveStatus.OPTIMAL in statuses:
        return SolveStatus.FEASIBLE
    return next(s for s in statuses if s is not SolveStatus.INFEASIBLE)


def _check_stages(zero_stages: object) -> tuple[int, ...]:
    try:
        stages = tuple(zero_stages)  # type: ignore[arg-type]
    except TypeError:
        stages = ()
    if not stages or any(isinstance(z, bool) or z not in (0, 1, 2, 3) for z in stages):
        raise PlanError(f"zero_stages must be a non-empty sequence of ZeRO stages 0-3, got {zero_stages!r}")
    return tuple(dict.fromkeys(stages))


def plan_training(wl: TrainWorkload, system: System, *, baselines: Sequence[str] = BASELINES_TO_REPORT,
                  backend: str | None = None, time_limit_s: float = 10.0, zero_stages: Sequence[int] | None = None,
                  local_search: bool = True) -> TrainPlan:
    """Choose every layer's state placement, step device and activation policy, and the head's placement.

    Parameters
    ----------
    wl : TrainWorkload
        Model, sequence length, micro-batch, accumulation, GPUs, precision, optimizer, ZeRO stage
        (weights may leave the GPU only at stage 3) and overlap.
    system : System
        The hardware (one GPU kind, the shared host and disk).
    baselines : sequence of str
        Named policies of :func:`~costmodel.training.baseline_policies` to cost and report, each at
        the ZeRO stage it runs at (:func:`~costmodel.training.baseline_zero_stage`; ``wl``'s if any).
    backend : {"highs", "cbc"}, optional
        The MIP backend (default: the first installed).
    time_limit_s : float
        Each MIP's time limit, seconds.
    zero_stages : sequence of int, optional
        The ZeRO stages the plan may run at (default: ``wl.zero_stage`` only); one MIP per stage, and
        ``TrainPlan.workload`` is ``wl`` at the chosen one.
    local_search : bool
        Improve the best of the MIPs and the baselines by exact local moves.

    Returns
    -------
    TrainPlan
        Never slower than any feasible baseline at a stage of ``zero_stages`` (baselines at other
        stages are reported, not chosen). Never raises for a workload that does not fit: the status
        is ``infeasible`` and ``explanation`` says which tier is short by how much and what would fix it.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> from hwprofiles import load_system
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=1024, micro_batch=8)
    >>> plan = plan_training(wl, load_system("a100-40gb"), baselines=("all-gpu",))
    >>> plan.status.value, plan.selected, plan.cost.iteration_s <= plan.baselines[0].iteration_s
    ('optimal', 'mip', True)
    """
    _check_args(wl, system, baselines, time_limit_s)
    check_node(wl, system)
    stages = (wl.zero_stage,) if zero_stages is None else _check_stages(zero_stages)
    started = time.perf_counter()
    best = None  # (workload, policies, head, cost, selected)
    mip_best = None  # (cost, lp estimate)
    sols = []
    for stage in stages:
        wls = wl if stage == wl.zero_stage else replace(wl, zero_stage=stage)
        sol, found = _solve_stage(wls, system, backend, time_limit_s)
        sols.append(sol)
        if found is not None and (best is None or found[2].iteration_s < best[3].iteration_s):
            best = (wls, *found, "mip")
            mip_best = (found[2], sol.lp_estimate_s)
    solve_s = time.perf_counter() - started
    evaluated = []
    for name in baselines:
        bwl, pols, cost, reason = _baseline(name, wl, system)
        if baseline_zero_stage(name) is None:  # stage-neutral: at the best stage the plan may use
            for stage in stages:
                if stage == bwl.zero_stage:
                    continue
                other = _baseline(name, replace(wl, zero_stage=stage), system)
                if other[2] is not None and _better_baseline(other[2], cost):
                    bwl, pols, cost, reason = other
        evaluated.append((name, bwl, cost, reason))
        if (cost is not None and cost.feasible and bwl.zero_stage in stages
                and (best is None or cost.iteration_s < best[3].iteration_s)):
            best = (bwl, pols, head_policy_of(pols[0]), cost, f"baseline:{name}")
    moves = 0
    if local_search and best is not None:
        bwl = best[0]
        pols, head, cost, n_moves = _local_search(
            bwl, system, layer_modes(bwl, system, space="full"), layer_modes(bwl, system, head=True, space="full"),
            (best[1], best[2]), best[3])
        if n_moves:
            best, moves = (bwl, pols, head, cost, best[4] + "+local"), n_moves
    base = []
    for name, bwl, cost, reason in evaluated:
        stage = bwl.zero_stage if bwl is not None else None
        if cost is None or not cost.feasible:
            base.append(BaselineResult(name=name, feasible=False, tokens_per_s=None, iteration_s=None, speedup=None,
                                       reason=reason or cost.explain_shortfall(), zero_stage=stage, cost=cost))
            continue
        base.append(BaselineResult(name=name, feasible=True, tokens_per_s=cost.tokens_per_s,
                                   iteration_s=cost.iteration_s, mfu=cost.mfu, zero_stage=stage, cost=cost,
                                   speedup=None if best is None else best[3].tokens_per_s / cost.tokens_per_s))
    mip_status = _combined_status([s.result.status for s in sols])
    status = mip_status
    if best is None and status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        status = SolveStatus.INFEASIBLE
    if best is not None and status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        status = SolveStatus.FEASIBLE  # the MIP gave nothing, a baseline fits
    last = sols[-1].result
    common = {"baselines": tuple(base), "mip_cost": mip_best and mip_best[0],
              "lp_estimate_s": mip_best and mip_best[1], "n_variables": max(s.result.n_variables for s in sols),
              "n_constraints": max(s.result.n_constraints for s in sols), "backend": last.backend,
              "mip_status": mip_status, "mip_solve_time_s": solve_s}
    if best is None:
        if status is SolveStatus.INFEASIBLE:
            why = explain_infeasible(replace(wl, zero_stage=max(stages)), system, backend=backend,
                                     time_limit_s=time_limit_s)
        else:  # time_limit or error: the MIP stopped before it found or ruled out a placement
            why = (f"the MIP stopped ({status.value}) before finding a placement, and no baseline fits; "
                   f"try a longer time_limit_s (was {time_limit_s:g} s)")
        return TrainPlan(status=status, selected="", workload=wl, policies=(), head=None, cost=None,
                         explanation=why, solve_time_s=time.perf_counter() - started, **common)
    bwl, pols, head, cost, selected = best
    return TrainPlan(status=status, selected=selected, workload=bwl, policies=tuple(pols), head=head, cost=cost,
                     mode_counts=_mode_counts(pols), local_moves=moves, solve_time_s=time.perf_counter() - started,
                     **common)


__all__ = ["BASELINES_TO_REPORT", "BaselineResult", "TrainPlan", "explain_infeasible", "plan_training"]
