"""The training placement MIP: modes, their coefficients, the model, and its exact group screen.

A decoder layer's *mode* is one legal :class:`~costmodel.training_units.LayerTrainPolicy`: where its
16-bit weights, gradients, fp32 master weights and moments live, where its step runs, and what it
keeps of its activations (keep, full or selective recompute, or offload a share of them).
:func:`layer_modes` enumerates them with the policy's own validation and the evaluator's rules
(weights off the GPU need ZeRO stage 3, a CPU step stage >= 1, a disk tier a disk), in the MIP's
subset (space ``"mip"``, see :data:`CPU_STEP_MIXES`) or all of them (``"full"``, for the local
search); modes that another mode beats or equals in every coefficient are dropped. The layers of a
transformer are identical, so the MIP has an integer count ``n_k`` of layers per mode, not
per-layer binaries; the embeddings + LM head (the *head*) get one binary per mode.

Every coefficient is a constant of the mode (:func:`unit_phase_times` is affine in the policy's
0/1 decisions, and the latencies and the bidirectional slow-down are per mode), so the terms of :func:`~costmodel.training.
evaluate_training` enter as follows (``a`` micro-steps, times in ms and bytes in GB in the rows):

* forward: ``Σ_l max_r fwd[l, r]`` is ``a Σ_k n_k fwd_k`` (``fwd_k`` the mode's max over resources).
* backward, per micro-step phase: the two-stage flow shop over the backward sequence. Layers are
  identical, so their *order* is ours to choose, and the evaluator takes it from the list: the
  sequence is the head, then the list's last layer (the *first* job ``f``), then the modes in a
  fixed ranking — Johnson's rule (1954) on their (stage A, stage B) times summed over the
  micro-step phases (so optimal for the flow shop when ``grad_accum = 1``). A flow shop's makespan
  is ``max_j (Σ_{i<=j} A_i + Σ_{i>=j} B_i)``, and within a run of identical jobs that is largest at
  the run's first or last job, so with prefix sums ``PA`` and suffix sums ``SB`` over the ranked
  *classes* (modes of equal A and B in every phase) the makespan is exactly
  ``M >= A_h + B_h + B_f + SB_1``, ``M >= A_h + A_f + B_f + SB_1`` and for each class ``c``
  ``M >= A_h + A_f + PA_{c-1} + A_c u_c + SB_c``, ``M >= A_h + A_f + PA_c + B_c u_c + SB_{c+1}``,
  with ``u_c`` a binary set when the class has a layer besides ``f`` (``L u_c >= N_c - F_c``); an
  empty class's rows then fall below a real job's value. The sequence closes with the head's
  embeddings job, stage B alone (``B_t``, the copies of the gradients complete only when the backward
  ends): it lies in every suffix, so every row gains ``B_t``, and its own term (all of stage A plus
  ``B_t``) is below the last layer's. So for that order the MIP's backward *is* the evaluator's. ``f`` is a binary per (class, stored activation bytes); with ``pull=False``
  there is none, ``f`` is the ranking's own first job, and the memory row below takes the least
  stored bytes of any mode for it (an upper bound; the local search then chooses ``f`` exactly).
* step, ``overlap="deepspeed"``: ``max(Σ (CPU-or-disk + H2D of weights), GPU-step chain) +
  Σ all-gather``, two epigraph rows; ``"none"``: every resource time summed (no flow shop);
  the GPU-step chain is a four-stage flow shop in the backward order
  (:func:`~costmodel.training_units.gpu_step_job`: states in, update, states and updated weights
  out, weights to disk). Over counts it is not linear, so the MIP takes a valid lower bound ``X``:
  for each stage ``j``, ``X >=`` the head's completion of stage ``j-1`` (the head is the first job)
  ``+ Σ`` every unit's stage ``j``; and for each *kind* of job ``p`` that is more than an update
  (layer modes with equal stages), the head followed by the ``N`` layers of that kind (a
  subsequence: dropping jobs never lengthens a permutation flow shop), whose makespan is, entering
  the run at stage ``i``, ``C^h_i + Σ_{s>=i} p_s + (N-1) max_{s>=i} p_s`` — linear in ``N`` with a
  binary ``z`` (``L z >= N``) for the fixed part. With at most one such kind of job in the plan
  (and the head's update no longer than the first streamed layer's fetch), the bound is the
  flow shop; otherwise :class:`GroupScreen` costs it exactly (runs of identical jobs in closed
  form, :meth:`GroupScreen.gpu_chain_s`) and the local search decides, as for ``"full"``.
  ``"full"``: valid lower bounds only — the CPU stage cannot end before the head's stages A and B
  plus every unit's CPU stage, nor before the backward plus the GPU steps (the four-stage flow shop
  and the deferred weight copies are left to the exact evaluation and the local search).
* ``iteration >= schedule`` and ``iteration >= busy[r]`` for every resource (sums of constants).

Memory rows are :func:`~costmodel.training_memory.memory_use`'s terms: sums of per-mode constants
(the pinned rounding is per allocation, so per mode), the buffers (a max over units of a per-mode
level: one binary per level, set when a layer of that level exists), and the activations at the
worst point of the backward, ``max(S + head keep + head work, S - stored_f + keep + work)`` with
``S = Σ_k n_k stored_k``: every layer's backward needs the same ``keep + work``, so the worst layer
is the first in backward order, whose own stored bytes are the ones not counted.

For ``overlap`` none, and deepspeed when the GPU-step chain's bound is tight, the MIP's objective
is therefore the evaluator's iteration time of the extracted, ranked policies (the tests check it;
it is never above it); :class:`GroupScreen` computes the evaluator's value exactly for many
candidate count vectors at once (the local search's screen) for deepspeed and none, and a lower
bound for ``overlap="full"``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from costmodel.errors import WorkloadError
from costmodel.training_memory import unit_pinned_rounding_bytes
from costmodel.training_states import pinned_allocation_bytes
from costmodel.training_units import (
    RESOURCE_KEYS,
    node_capacity,
    ActAction,
    LayerTrainPolicy,
    Overlap,
    Phase,
    StepDevice,
    Tier,
    TrainUnitCosts,
    TrainWorkload,
    backward_stages,
    gpu_step_job,
    unit_costs,
    unit_phase_times,
)
from hwprofiles import System
from solver.backends import EQ, GE, LE, MipModel, SolveResult, solve
from solver.errors import PlanError

GB = 1e-9
MS = 1e3
# Share of each memory tier the MIP leaves free, so that a solver's feasibility tolerance (about 1e-7
# on a row in GB, 100 bytes) never lets a plan it accepts overflow when costed exactly.
CAPACITY_MARGIN = 1e-6


def backward_phases(grad_accum: int) -> tuple[tuple[Phase, int], ...]:
    """The distinct backward phases of an iteration with how many micro-steps run each.

    >>> [(str(p), n) for p, n in backward_phases(4)]
    [('backward_first', 1), ('backward_mid', 2), ('backward_last', 1)]
    """
    if grad_accum == 1:
        return ((Phase.BACKWARD_LAST, 1),)
    if grad_accum == 2:
        return ((Phase.BACKWARD_FIRST, 1), (Phase.BACKWARD_LAST, 1))
    return ((Phase.BACKWARD_FIRST, 1), (Phase.BACKWARD_MID, grad_accum - 2), (Phase.BACKWARD_LAST, 1))


def legal(wl: TrainWorkload, system: System, pol: LayerTrainPolicy) -> bool:
    """Whether ``evaluate_training`` accepts ``pol`` for ``wl`` on ``system`` (the rules of
    ``costmodel.training._check``: weights off the GPU need ZeRO stage 3, a CPU step stage >= 1,
    state on disk a disk)."""
    if pol.params is not Tier.GPU and wl.zero_stage != 3:
        return False
    if pol.step is StepDevice.CPU and wl.zero_stage == 0:
        return False
    return not (system.disk is None and Tier.DISK in (pol.params, pol.grads, pol.master, pol.moments))


@functools.lru_cache(maxsize=8)
def _all_policies(head: bool, shares: tuple[float, ...]) -> tuple[LayerTrainPolicy, ...]:
    """Every policy the policy's own validation accepts (activations kept only, for the head)."""
    acts = [(ActAction.KEEP, 1.0)] if head else \
        [(ActAction.KEEP, 1.0), (ActAction.RECOMPUTE, 1.0), (ActAction.SELECTIVE, 1.0)] + \
        [(ActAction.OFFLOAD, float(s)) for s in shares]
    out = []
    for params, grads, master, moments, step in itertools.product(Tier, Tier, Tier, Tier, StepDevice):
        for act, share in acts:
            try:
                out.append(LayerTrainPolicy(params=params, grads=grads, master=master, moments=moments, step=step,
                                            activations=act, offload_share=share))
            except WorkloadError:  # the policy's own consistency rules
                continue
    return tuple(out)


def mode_label(pol: LayerTrainPolicy) -> str:
    """A short name of a policy, e.g. ``w:gpu g:host m:host o:host step:cpu act:offload@0.5``.

    >>> mode_label(LayerTrainPolicy())
    'w:gpu g:gpu m:gpu o:gpu step:gpu act:keep'
    """
    act = pol.activations.value + (f"@{pol.offload_share:g}" if pol.activations is ActAction.OFFLOAD else "")
    return (f"w:{pol.params.value} g:{pol.grads.value} m:{pol.master.value} o:{pol.moments.value} "
            f"step:{pol.step.value} act:{act}")


# ---------------------------------------------------------------------------------------------
# Per-mode coefficients
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeCoef:
    """One unit's constants under one policy, in seconds and bytes, as the evaluator combines them.

    ``fwd_s``: its scheduled forward of one micro-step (max over resources; their sum with no
    overlap); ``fwd_h2d_s`` and ``fwd_rest_s`` that forward's H2D and its max over the other
    resources (``overlap="full"`` may defer an updated-weights copy into the H2D). ``a_s``/``b_s``:
    stage A / B of each backward phase (:func:`backward_phases`; with no overlap A is the phase's
    sum, B 0); ``b_late_s`` the part of the head's stage B that closes the backward (its embeddings'
    gradients, :attr:`~costmodel.training_units.TrainUnitCosts.late_grad_share`; 0 for a layer), which
    ``b_s`` then leaves out. ``cpu_s``: the CPU step stage ``max(cpu, disk)`` (0 for a GPU step); ``up_s`` the H2D
    of updated weights after it; ``step_in_s``/``step_gpu_s``/``step_out_s``/``step_disk_s`` a GPU
    step's four flow-shop stages (:func:`~costmodel.training_units.gpu_step_job`; 0 for a CPU step);
    ``ic_step_s`` the step's all-gather; ``step_sum_s`` the step's resources summed. ``busy_s``: per
    resource of :data:`RESOURCE_KEYS` over the iteration. Memory: ``gpu_bytes`` the resident states,
    ``stored_bytes`` the activations kept on the GPU to the backward, the buffer *levels* (a max over
    units) ``grad_buffer_bytes``, ``offload_buffer_bytes``, ``stream_buffer_bytes`` (0 unless a GPU
    step streams host states) and ``staged_bytes`` (disk-resident state of the unit); ``host_bytes``
    (with the pinned rounding of its allocations) and ``disk_bytes``.
    """

    policy: LayerTrainPolicy
    fwd_s: float
    fwd_h2d_s: float
    fwd_rest_s: float
    a_s: tuple[float, ...]
    b_s: tuple[float, ...]
    b_late_s: tuple[float, ...]
    cpu_s: float
    up_s: float
    step_in_s: float
    step_gpu_s: float
    step_out_s: float
    step_disk_s: float
    ic_step_s: float
    step_sum_s: float
    busy_s: tuple[float, ...]
    gpu_bytes: float
    stored_bytes: float
    grad_buffer_bytes: float
    offload_buffer_bytes: float
    stream_buffer_bytes: float
    staged_bytes: float
    host_bytes: float
    disk_bytes: float

    @property
    def gpu_job_s(self) -> tuple[float, float, float, float]:
        """The GPU step's flow-shop stages (all 0 for a CPU step)."""
        return (self.step_in_s, self.step_gpu_s, self.step_out_s, self.step_disk_s)

    def vector(self) -> np.ndarray:
        """Every coefficient, smaller-is-better, for the dominance test."""
        return np.array([self.fwd_s, self.fwd_h2d_s, self.fwd_rest_s, *self.a_s, *self.b_s, *self.b_late_s,
                         self.cpu_s, self.up_s,
                         *self.gpu_job_s, self.ic_step_s, self.step_sum_s, *self.busy_s, self.gpu_bytes,
                         self.stored_bytes, self.grad_buffer_bytes, self.offload_buffer_bytes,
                         self.stream_buffer_bytes, self.staged_bytes, self.host_bytes, self.disk_bytes])


def _stored(uc: TrainUnitCosts, pol: LayerTrainPolicy) -> float:
    # costmodel.training_memory._stored_act_bytes
    return {ActAction.KEEP: uc.act_keep_bytes, ActAction.SELECTIVE: uc.act_selective_bytes,
            ActAction.RECOMPUTE: uc.act_input_bytes,
            ActAction.OFFLOAD: (1.0 - pol.offloaded_share) * uc.act_keep_bytes}[pol.activations]


@functools.lru_cache(maxsize=4096)
def mode_coef(wl: TrainWorkload, uc: TrainUnitCosts, pol: LayerTrainPolicy) -> ModeCoef:
    """The constants of one unit (``uc``: a layer's or the head's costs) under ``pol``: times from
    :func:`unit_phase_times` combined as :func:`~costmodel.training.evaluate_training` combines
    them, memory terms as :func:`~costmodel.training_memory.memory_use` counts them."""
    t = unit_phase_times(uc, pol)
    none = wl.overlap is Overlap.NONE
    fwd = t[Phase.FORWARD]
    phases = backward_phases(wl.grad_accum)
    a_s, b_s, b_late_s = [], [], []
    late = uc.late_grad_share
    for ph, _ in phases:
        d = t[ph]
        if none:
            a_s.append(sum(d.values()))
            b_s.append(0.0)
            b_late_s.append(0.0)
        else:
            a, b = backward_stages(d)  # as evaluate_training takes them
            a_s.append(a)
            b_s.append((1.0 - late) * b)
            b_late_s.append(late * b)
    s = t[Phase.STEP]
    cpu = pol.step is StepDevice.CPU
    counts = {Phase.FORWARD: wl.grad_accum, Phase.STEP: 1, Phase.SNAPSHOT: 1, **dict(phases)}
    busy = tuple(sum(n * t[ph].get(k, 0.0) for ph, n in counts.items() for k in keys) for _, keys in RESOURCE_KEYS)
    # Memory, term by term as costmodel.training_memory.memory_use counts one unit.
    n = wl.gpus
    ws, gs, os_ = uc.weight_shard, uc.grad_shard, uc.state_shard
    g_gpu = pol.grads is Tier.GPU
    gpu = ((uc.weights_bytes * ws if pol.params is Tier.GPU else 0.0)
           + (uc.grads_bytes * gs + uc.grad32_bytes * os_ if g_gpu else 0.0)
           + (uc.master_gpu_bytes * os_ if pol.master is Tier.GPU else 0.0)
           + (uc.moments_bytes * os_ if pol.moments is Tier.GPU else 0.0))
    grad_buf = ((2.0 * uc.grads_bytes if not g_gpu or (wl.zero_stage >= 2 and n > 1) else 0.0)
                + (uc.step_grad_bytes * os_ if not g_gpu else 0.0))
    stream = 0.0 if cpu else 2.0 * ((uc.master_gpu_bytes if pol.master is Tier.HOST else 0.0)
                                    + (uc.moments_bytes if pol.moments is Tier.HOST else 0.0)) * os_
    host = ((uc.weights_bytes if pol.params is Tier.HOST else 0.0)
            + (uc.step_grad_bytes if pol.grads is Tier.HOST else 0.0)
            + (uc.grads_bytes if not g_gpu and wl.grad_accum > 1 else 0.0)
            + (uc.master_bytes if pol.master is Tier.HOST else 0.0)
            + (uc.moments_bytes if pol.moments is Tier.HOST else 0.0)
            + n * pol.offloaded_share * uc.act_keep_bytes
            + (uc.master_bytes + uc.moments_bytes if wl.snapshot_every else 0.0))  # the in-memory snapshot
    if wl.pin_memory:
        host += unit_pinned_rounding_bytes(wl, uc, pol, ws, os_)
    staged = ((uc.step_grad_bytes if pol.grads is Tier.DISK else 0.0)
              + (uc.master_bytes if pol.master is Tier.DISK else 0.0)
              + (uc.moments_bytes if pol.moments is Tier.DISK else 0.0))
    disk = ((uc.weights_bytes if pol.params is Tier.DISK else 0.0) + staged)
    return ModeCoef(
        policy=pol, fwd_s=sum(fwd.values()) if none else max(fwd.values()), fwd_h2d_s=fwd["h2d"],
        fwd_rest_s=max(v for k, v in fwd.items() if k != "h2d"), a_s=tuple(a_s), b_s=tuple(b_s),
        b_late_s=tuple(b_late_s),
        cpu_s=max(s["cpu"], s["disk"]) if cpu else 0.0, up_s=s["h2d"] if cpu else 0.0,
        **dict(zip(("step_in_s", "step_gpu_s", "step_out_s", "step_disk_s"),
                   (0.0,) * 4 if cpu else gpu_step_job(s), strict=True)),
        ic_step_s=s["interconnect"], step_sum_s=sum(s.values()), busy_s=busy, gpu_bytes=gpu,
        stored_bytes=_stored(uc, pol), grad_buffer_bytes=grad_buf,
        offload_buffer_bytes=2.0 * pol.offloaded_share * uc.act_keep_bytes, stream_buffer_bytes=stream,
        staged_bytes=staged, host_bytes=host, disk_bytes=disk)


def _undominated(coefs: list[ModeCoef]) -> list[ModeCoef]:
    """Drop every mode that another mode matches or beats in every coefficient (the first of equals
    stays). Every term of the evaluator is non-decreasing in each coefficient — including the stored
    activations of the first backward job, whose own bytes leave the worst point as they join the
    sum — so a dropped mode's layers can move to the one that beats it at no cost."""
    if len(coefs) < 2:
        return coefs
    v = np.stack([c.vector() for c in coefs])
    tol = 1e-12 * np.maximum(np.abs(v).max(axis=0), 1e-300)
    le = np.all(v[:, None, :] <= v[None, :, :] + tol, axis=2)  # le[j, k]: j <= k everywhere
    eq = le & le.T
    idx = np.arange(len(coefs))
    dominated = (le & ~eq).any(axis=0) | (eq & (idx[:, None] < idx[None, :])).any(axis=0)
    return [c for c, d in zip(coefs, dominated) if not d]


# The MIP's mode space is a subset of the legal policies, chosen so that it stays small (the solve
# time grows fast with the modes: llama-2-7b at ZeRO-3 with a disk, 144 undominated modes: 0.8 s;
# 24: under 0.1 s): a CPU step's (gradients, master, moments) all on the host, or ZeRO-Infinity's
# optimizer states on NVMe with the gradients on the host (offload_optimizer device nvme), or all
# three on disk; a GPU step's master and moments both on the GPU or both streamed from the host;
# offload of all of a layer's activations. The other placements only refine how much memory a
# layer takes; the local search sees every legal policy (space "full", offload shares of
# FULL_SHARES) and moves layers to them when the exact cost says so.
MIP_SHARES = (1.0,)
FULL_SHARES = (0.25, 0.5, 0.75, 1.0)
CPU_STEP_MIXES = ((Tier.HOST, Tier.HOST, Tier.HOST), (Tier.HOST, Tier.DISK, Tier.DISK),
                  (Tier.DISK, Tier.DISK, Tier.DISK))
GPU_STEP_MIXES = ((Tier.GPU, Tier.GPU), (Tier.HOST, Tier.HOST))


def layer_modes(wl: TrainWorkload, system: System, *, head: bool = False, space: str = "mip", disk: bool = True,
                prune: bool = True) -> tuple[LayerTrainPolicy, ...]:
    """The policies a layer (``head=True``: the head, activations kept) may take: every legal
    combination (:func:`legal`) in ``space`` — ``"full"`` (every placement, offload shares
    :data:`FULL_SHARES`) or ``"mip"`` (the MIP's subset: :data:`CPU_STEP_MIXES`,
    :data:`GPU_STEP_MIXES`, :data:`MIP_SHARES`) — without disk placements unless ``disk``, and,
    with ``prune``, less those another policy matches or beats in every coefficient.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> from hwprofiles import load_system
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=512, micro_batch=1)
    >>> system = load_system("a100-40gb")
    >>> # ZeRO-2: 4 GPU-step and 8 CPU-step placements x 7 activation policies; the MIP's: 2 + 3, x 4
    >>> len(layer_modes(wl, system, space="full", prune=False)), len(layer_modes(wl, system, prune=False))
    (84, 20)
    """
    if space not in ("mip", "full"):
        raise PlanError(f"space must be 'mip' or 'full', got {space!r}")
    pols = [p for p in _all_policies(head, MIP_SHARES if space == "mip" else FULL_SHARES) if legal(wl, system, p)]
    if not disk:
        pols = [p for p in pols if Tier.DISK not in (p.params, p.grads, p.master, p.moments)]
    if space == "mip":
        pols = [p for p in pols if (p.grads, p.master, p.moments) in CPU_STEP_MIXES
                or (p.step is StepDevice.GPU and (p.master, p.moments) in GPU_STEP_MIXES)]
    if not prune:
        return tuple(pols)
    uc = unit_costs(wl, system, head=head)
    return tuple(c.policy for c in _undominated([mode_coef(wl, uc, p) for p in pols]))


# ---------------------------------------------------------------------------------------------
# The coefficient arrays of a mode set, and the exact screen of count vectors
# ---------------------------------------------------------------------------------------------


def _flow_run(C: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Stage completions after a run of ``n`` (per row) identical jobs ``p`` of a permutation flow shop
    (see :meth:`GroupScreen.gpu_chain_s`); rows with ``n = 0`` are unchanged."""
    p = np.broadcast_to(p, C.shape)
    out = np.empty_like(C)
    extra = (n - 1.0)[:, None]
    for j in range(C.shape[1]):
        seg = p[:, : j + 1]
        # for each entry stage i <= j: the stages i..j, summed and their max
        sums = np.cumsum(seg[:, ::-1], axis=1)[:, ::-1]
        maxs = np.maximum.accumulate(seg[:, ::-1], axis=1)[:, ::-1]
        out[:, j] = np.max(C[:, : j + 1] + sums + extra * maxs, axis=1)
    return np.where((n > 0.5)[:, None], out, C)


def _johnson_key(a: float, b: float) -> tuple[int, float]:
    """Johnson's rule: jobs with A < B first by increasing A, then the rest by decreasing B (S. M. Johnson,
    "Optimal two- and three-stage production schedules with setup times included", Naval Research
    Logistics Quarterly 1(1):61-68, 1954: optimal for the two-machine flow shop)."""
    return (0, a) if a < b else (1, -b)


class GroupScreen:
    """The coefficients of a set of layer modes and head modes as arrays, the ranking of the layer
    modes' classes, and the exact cost of a state (layer counts per mode, the first backward job's
    mode, the head's mode) under the ranked order.

    ``cost(counts, first, head)`` takes arrays over candidates (counts ``(C, K)``, first and head
    ``(C,)``) and returns ``(iteration_s, gpu_bytes, host_bytes, disk_bytes)``, each ``(C,)``: the
    evaluator's values for ``overlap`` deepspeed and none, the MIP's lower bound for full.
    """

    def __init__(self, wl: TrainWorkload, system: System, layer: Sequence[LayerTrainPolicy],
                 head: Sequence[LayerTrainPolicy]) -> None:
        self.wl, self.system = wl, system
        self.layer, self.head = tuple(layer), tuple(head)
        uc, hc = unit_costs(wl, system), unit_costs(wl, system, head=True)
        self.lc = [mode_coef(wl, uc, p) for p in self.layer]
        self.hc = [mode_coef(wl, hc, p) for p in self.head]
        self.phases = backward_phases(wl.grad_accum)
        self.n_layers = wl.model.n_layers
        cap = node_capacity(wl, system)
        self.cap = (cap["gpu_bytes"], cap["host_bytes"], cap["disk_bytes"])
        self.keep_work_bytes = uc.act_keep_bytes + uc.act_transient_bytes
        self.head_keep_work_bytes = hc.act_keep_bytes + hc.act_transient_bytes
        self.param_buffer_bytes = 2.0 * max(uc.weights_bytes, hc.weights_bytes) if wl.zero_stage >= 3 else 0.0
        self.pin = wl.pin_memory

        def arr(coefs: list[ModeCoef], name: str) -> np.ndarray:
            return np.array([getattr(c, name) for c in coefs], dtype=float)

        self.L = {name: arr(self.lc, name) for name in ModeCoef.__slots__ if name not in
                  ("policy", "a_s", "b_s", "b_late_s", "busy_s")}
        self.H = {name: arr(self.hc, name) for name in self.L}
        self.LA = np.array([c.a_s for c in self.lc]).T.reshape(len(self.phases), -1)  # (P, K)
        self.LB = np.array([c.b_s for c in self.lc]).T.reshape(len(self.phases), -1)
        self.HA = np.array([c.a_s for c in self.hc]).T.reshape(len(self.phases), -1)  # (P, S)
        self.HB = np.array([c.b_s for c in self.hc]).T.reshape(len(self.phases), -1)
        self.HT = np.array([c.b_late_s for c in self.hc]).T.reshape(len(self.phases), -1)  # the closing job
        self.Lbusy = np.array([c.busy_s for c in self.lc]).T.reshape(len(RESOURCE_KEYS), -1)  # (R, K)
        self.Hbusy = np.array([c.busy_s for c in self.hc]).T.reshape(len(RESOURCE_KEYS), -1)
        # Classes: modes of equal (A, B) in every phase, ranked by Johnson's rule on the phase-weighted sums.
        weights = np.array([n for _, n in self.phases], dtype=float)
        keys: dict[tuple, list[int]] = {}
        for k, c in enumerate(self.lc):
            keys.setdefault((c.a_s, c.b_s), []).append(k)
        classes = list(keys.values())
        classes.sort(key=lambda ks: _johnson_key(float(weights @ self.LA[:, ks[0]]), float(weights @ self.LB[:, ks[0]])))
        self.classes = classes
        self.class_of = np.empty(len(self.lc), dtype=int)
        for ci, ks in enumerate(classes):
            self.class_of[ks] = ci
        # The first backward job is chosen per (class, stored activation bytes): the modes of one pair are
        # alike to the flow shop and to the worst point of the backward.
        pairs: dict[tuple[int, float], list[int]] = {}
        for ci, ks in enumerate(classes):
            for k in ks:
                pairs.setdefault((ci, float(self.L["stored_bytes"][k])), []).append(k)
        self.pairs = [(ci, st, ks) for (ci, st), ks in pairs.items()]
        # The screen's arrays: the summed terms as one matrix, the buffer levels (a max), the classes.
        names = ["fwd_s", "cpu_s", "up_s", "ic_step_s", "step_sum_s", "gpu_bytes", "stored_bytes",
                 "host_bytes", "disk_bytes"]
        self.lin_col = {name: i for i, name in enumerate(names)}
        self.busy_cols = list(range(len(names), len(names) + len(RESOURCE_KEYS)))
        self.Lmat = np.column_stack([self.L[x] for x in names] + [self.Lbusy.T])
        self.Hmat = np.column_stack([self.H[x] for x in names] + [self.Hbusy.T])
        tops = ["grad_buffer_bytes", "offload_buffer_bytes", "stream_buffer_bytes", "staged_bytes"]
        self.Htop = np.column_stack([self.H[x] for x in tops])
        # max over used modes of a level = Σ_j [a used mode has level >= v_j] (v_j - v_{j-1}), v sorted
        self.level_at_least, self.level_steps = [], []
        for x in tops:
            v = np.unique(self.L[x][self.L[x] > 0])
            self.level_at_least.append((self.L[x][:, None] >= v[None, :]).astype(float))
            self.level_steps.append(np.diff(v, prepend=0.0))
        self.class_matrix = np.zeros((len(self.lc), len(classes)))
        for ci, ks in enumerate(classes):
            self.class_matrix[ks, ci] = 1.0
        # The GPU steps' flow-shop stages per mode (rows), and the layer modes whose job is more than an update.
        self.Ljob = np.array([c.gpu_job_s for c in self.lc], dtype=float).reshape(-1, 4)
        self.Hjob = np.array([c.gpu_job_s for c in self.hc], dtype=float).reshape(-1, 4)
        kinds: dict[tuple[float, ...], list[int]] = {}
        for k in range(len(self.lc)):
            if np.count_nonzero(self.Ljob[k]) > 1:  # more than an update alone (which the stage totals hold)
                kinds.setdefault(tuple(self.Ljob[k]), []).append(k)
        self.job_kinds = [(np.array(job), ks) for job, ks in kinds.items()]
        self.class_a = np.array([[self.LA[p, ks[0]] for ks in classes] for p in range(len(self.phases))])
        self.class_b = np.array([[self.LB[p, ks[0]] for ks in classes] for p in range(len(self.phases))])

    # -- states and policy lists ------------------------------------------------------------------

    def order(self, counts: Sequence[int], first: int) -> list[int]:
        """Layer modes in list order (the reverse of the backward sequence: ``first`` is last)."""
        seq = [first]
        rest = list(counts)
        rest[first] -= 1
        for ks in self.classes:
            for k in ks:
                seq += [k] * int(rest[k])
        return seq[::-1]

    def policies(self, counts: Sequence[int], first: int, head: int) -> tuple[tuple[LayerTrainPolicy, ...],
                                                                            LayerTrainPolicy]:
        return tuple(self.layer[k] for k in self.order(counts, first)), self.head[head]

    # -- the exact cost of states -------------------------------------------------------------------

    def cost(self, counts: np.ndarray, first: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, ...]:
        counts = np.atleast_2d(np.asarray(counts, dtype=float))
        first, head = np.atleast_1d(first), np.atleast_1d(head)
        wl = self.wl
        lin = counts @ self.Lmat + self.Hmat[head]  # (C, linear terms)
        col = self.lin_col
        top = np.column_stack([((counts @ ind) > 0.5) @ step for ind, step in zip(self.level_at_least,
                                                                                   self.level_steps)])
        top = np.maximum(top, self.Htop[head])
        fwd = wl.grad_accum * lin[:, col["fwd_s"]]
        m = counts.copy()
        m[np.arange(len(first)), first] -= 1.0
        mc = m @ self.class_matrix  # (C, G): each class's jobs besides the first, in ranking order
        cused = mc > 0.5
        spans = []
        for p in range(len(self.phases)):
            ah, bh = self.HA[p, head], self.HB[p, head]
            af, bf = self.LA[p, first], self.LB[p, first]
            if wl.overlap is Overlap.NONE:
                spans.append(ah + af + (m @ self.LA[p]))
                continue
            ac, bc = self.class_a[p], self.class_b[p]
            pa = np.cumsum(mc * ac, axis=1)  # through class g
            sb = np.cumsum((mc * bc)[:, ::-1], axis=1)[:, ::-1]  # from class g
            first_of = np.where(cused, pa - mc * ac + ac + sb, -np.inf)
            last_of = np.where(cused, pa + bc + sb - mc * bc, -np.inf)
            base = ah + af
            span = np.maximum(ah + bh + bf + sb[:, 0], base + bf + sb[:, 0])
            # the head's embeddings job closes the sequence with stage B alone: every job's makespan term
            # gains its copies (and its own term, all of stage A plus them, is below the last job's)
            spans.append(np.maximum(span, base + np.max(np.maximum(first_of, last_of), axis=1)) + self.HT[p, head])
        counts_p = [n for _, n in self.phases]
        early = sum(n * s for n, s in zip(counts_p[:-1], spans[:-1])) if len(spans) > 1 else 0.0
        last = spans[-1]
        if wl.overlap is Overlap.NONE:
            schedule = fwd + early + last + lin[:, col["step_sum_s"]]
        elif wl.overlap is Overlap.DEEPSPEED:
            step = np.maximum(lin[:, col["cpu_s"]] + lin[:, col["up_s"]], self.gpu_chain_s(m, first, head))
            schedule = fwd + early + last + step + lin[:, col["ic_step_s"]]
        else:
            end = np.maximum(last + self.gpu_chain_s(m, first, head), self.HA[-1, head] + self.HB[-1, head]
                             + lin[:, col["cpu_s"]])
            schedule = fwd + early + np.maximum(end, last) + lin[:, col["ic_step_s"]]
        busy = lin[:, self.busy_cols].max(axis=1)
        iteration = np.maximum(schedule, busy)
        s_all = lin[:, col["stored_bytes"]] - self.Hmat[head, col["stored_bytes"]]
        act = np.maximum(s_all + self.head_keep_work_bytes,
                         s_all - self.Lmat[first, col["stored_bytes"]] + self.keep_work_bytes)
        gpu = lin[:, col["gpu_bytes"]] + self.param_buffer_bytes + top[:, :3].sum(axis=1) + act
        staged = top[:, 3]
        staging = 2.0 * (np.vectorize(pinned_allocation_bytes, otypes=[float])(staged) if self.pin else staged)
        return iteration, gpu, lin[:, col["host_bytes"]] + staging, lin[:, col["disk_bytes"]]

    def gpu_chain_s(self, m: np.ndarray, first: np.ndarray, head: np.ndarray) -> np.ndarray:
        """The GPU steps' four-stage flow shop (``evaluate_training``'s ``gpu_chain``), exactly, per candidate:
        the head's job, the first backward job, then each mode's ``m[:, k]`` jobs in the ranked order.

        A run of ``n`` identical jobs ``p`` entering with stage completions ``C`` leaves
        ``C'_j = max_{i <= j} (C_i + Σ_{s=i..j} p_s + (n - 1) max_{s=i..j} p_s)`` — the longest path
        through the run's grid, which spends its extra jobs on the slowest stage it crosses — and
        ``C`` unchanged when ``n = 0``; a CPU-stepped mode's job is all zeros, the identity."""
        C = np.zeros((len(first), 4))
        one = np.ones(len(first))
        C = _flow_run(C, self.Hjob[head], one)
        C = _flow_run(C, self.Ljob[first], one)
        for ks in self.classes:
            for k in ks:
                if self.Ljob[k].any():
                    C = _flow_run(C, self.Ljob[k], m[:, k])
        return C[:, -1]

    def fits(self, gpu: np.ndarray, host: np.ndarray, disk: np.ndarray, margin: float = CAPACITY_MARGIN) -> np.ndarray:
        keep = 1.0 - margin
        g, h, d = self.cap
        return (gpu <= g * keep) & (host <= h * keep) & (disk <= d * keep)

    # -- the MIP --------------------------------------------------------------------------------------

    def build(self, *, pull: bool = True, overflow: bool = False) -> tuple[MipModel, dict]:
        """The MIP over this mode set (see the module docstring); returns it and its column indices.
        ``pull=False``: no first-job binaries — the backward runs in ranked order and the worst point
        of the backward is taken with the least stored bytes of any mode (a valid upper bound).
        ``overflow=True``: host and disk may overflow, and the least overflow is sought first (for
        explaining an infeasible workload)."""
        wl, L, H = self.wl, self.L, self.H
        K, S, nl = len(self.lc), len(self.hc), self.n_layers
        a = wl.grad_accum
        mdl = MipModel("training")
        n = [mdl.var(f"n[{k}]", ub=nl, integer=True) for k in range(K)]
        pairs = self.pairs if pull else []
        f = [mdl.binary(f"f[{j}]") for j in range(len(pairs))]
        h = [mdl.binary(f"h[{s}]") for s in range(S)]
        T = mdl.var("iteration_ms")
        mdl.add([(c, 1.0) for c in n], EQ, nl)
        if pull:
            mdl.add([(c, 1.0) for c in f], EQ, 1.0)
        mdl.add([(c, 1.0) for c in h], EQ, 1.0)
        for j, (_, _, ks) in enumerate(pairs):
            mdl.add([(f[j], 1.0)] + [(n[k], -1.0) for k in ks], LE, 0.0)
        f_of = [[j for j, (ci, _, _) in enumerate(pairs) if ci == g] for g in range(len(self.classes))]

        def lin(name: str, scale: float, mult: float = 1.0) -> list[tuple[int, float]]:
            return ([(n[k], mult * L[name][k] * scale) for k in range(K) if L[name][k]]
                    + [(h[s], mult * H[name][s] * scale) for s in range(S) if H[name][s]])

        # Backward flow shops, per phase, over the ranked classes.
        spans: list[int] = []
        none = wl.overlap is Overlap.NONE
        G = len(self.classes)
        u = [] if none else [mdl.binary(f"u[{g}]") for g in range(G)]
        for g, ks in enumerate(self.classes if not none else ()):
            mdl.add([(u[g], float(nl))] + [(n[k], -1.0) for k in ks] + [(f[j], 1.0) for j in f_of[g]], GE, 0.0)
        for p in range(len(self.phases)):
            M = mdl.var(f"span_ms[{p}]")
            spans.append(M)
            ah = [(h[s], self.HA[p, s] * MS) for s in range(S)]
            if none:  # no flow shop: the phase is every unit's sum
                mdl.add([(M, 1.0)] + [(x, -c) for x, c in ah] + [(n[k], -self.LA[p, k] * MS) for k in range(K)],
                        GE, 0.0)
                continue
            af = [(f[j], self.LA[p, pairs[j][2][0]] * MS) for j in range(len(pairs))]
            bh = [(h[s], self.HB[p, s] * MS) for s in range(S)]
            bf = [(f[j], self.LB[p, pairs[j][2][0]] * MS) for j in range(len(pairs))]
            PA = [mdl.var(f"pa_ms[{p},{g}]") for g in range(G)]
            SB = [mdl.var(f"sb_ms[{p},{g}]") for g in range(G)]
            for g, ks in enumerate(self.classes):
                ac, bc = self.LA[p, ks[0]] * MS, self.LB[p, ks[0]] * MS
                jobs_a = [(n[k], -ac) for k in ks] + [(f[j], ac) for j in f_of[g]]
                jobs_b = [(n[k], -bc) for k in ks] + [(f[j], bc) for j in f_of[g]]
                mdl.add([(PA[g], 1.0)] + ([(PA[g - 1], -1.0)] if g else []) + jobs_a, EQ, 0.0)
                mdl.add([(SB[g], 1.0)] + ([(SB[g + 1], -1.0)] if g + 1 < G else []) + jobs_b, EQ, 0.0)
            bt = [(h[s], self.HT[p, s] * MS) for s in range(S)]  # the head's closing job (stage B alone)
            neg = [(x, -c) for x, c in ah + af + bt]
            mdl.add([(M, 1.0), (SB[0], -1.0)] + [(x, -c) for x, c in ah + bh + bf + bt], GE, 0.0)
            if pull:
                mdl.add([(M, 1.0), (SB[0], -1.0)] + neg + [(x, -c) for x, c in bf], GE, 0.0)
            for g, ks in enumerate(self.classes):
                ac, bc = self.LA[p, ks[0]] * MS, self.LB[p, ks[0]] * MS
                mdl.add([(M, 1.0), (SB[g], -1.0), (u[g], -ac)] + ([(PA[g - 1], -1.0)] if g else []) + neg, GE, 0.0)
                mdl.add([(M, 1.0), (PA[g], -1.0), (u[g], -bc)] + ([(SB[g + 1], -1.0)] if g + 1 < G else []) + neg,
                        GE, 0.0)
        # The GPU steps' flow shop, bounded below (see the module docstring): each stage's total, and for each
        # kind of job that is more than an update, the head's job followed by all the layers' jobs of that kind.
        chain = mdl.var("gpu_chain_ms")
        head_done = np.cumsum(self.Hjob, axis=1)  # (S, 4): the head's stage completions, alone
        for j, name in enumerate(("step_in_s", "step_gpu_s", "step_out_s", "step_disk_s")):
            # stage j starts no job before the head (the first) has left stage j - 1, then serves every job
            if any(L[name]) or any(H[name]):
                mdl.add([(chain, 1.0)] + [(c, -x) for c, x in lin(name, MS)]
                        + ([(h[s], -head_done[s, j - 1] * MS) for s in range(S) if head_done[s, j - 1]] if j else []),
                        GE, 0.0)
        mdl.add([(chain, 1.0)] + [(h[s], -head_done[s, -1] * MS) for s in range(S)], GE, 0.0)
        for c, (job, ks) in enumerate(self.job_kinds):
            z = mdl.binary(f"zjob[{c}]")
            mdl.add([(z, float(nl))] + [(n[k], -1.0) for k in ks], GE, 0.0)
            for i in range(4):  # the path entering the run at stage i
                top, rest = float(job[i:].max()), float(job[i:].sum() - job[i:].max())
                mdl.add([(chain, 1.0), (z, -rest * MS)] + [(n[k], -top * MS) for k in ks]
                        + [(h[s], -head_done[s, i] * MS) for s in range(S) if head_done[s, i]], GE, 0.0)
        weights = [c for _, c in self.phases]
        sched = [(T, 1.0)] + [(c, -x) for c, x in lin("fwd_s", MS, a)] + [(spans[p], -float(weights[p]))
                                                                          for p in range(len(spans) - 1)]
        if wl.overlap is Overlap.NONE:
            mdl.add(sched + [(spans[-1], -1.0)] + [(c, -x) for c, x in lin("step_sum_s", MS)], GE, 0.0)
        elif wl.overlap is Overlap.DEEPSPEED:
            step = mdl.var("step_ms")
            mdl.add([(step, 1.0)] + [(c, -x) for c, x in lin("cpu_s", MS) + lin("up_s", MS)], GE, 0.0)
            mdl.add([(step, 1.0), (chain, -1.0)], GE, 0.0)
            mdl.add(sched + [(spans[-1], -1.0), (step, -1.0)] + [(c, -x) for c, x in lin("ic_step_s", MS)], GE, 0.0)
        else:
            end = mdl.var("cpu_end_ms")
            mdl.add([(end, 1.0), (spans[-1], -1.0), (chain, -1.0)], GE, 0.0)
            mdl.add([(end, 1.0), (spans[-1], -1.0)], GE, 0.0)
            mdl.add([(end, 1.0)] + [(h[s], -(self.HA[-1, s] + self.HB[-1, s]) * MS) for s in range(S)]
                    + [(c, -x) for c, x in lin("cpu_s", MS)], GE, 0.0)
            mdl.add(sched + [(end, -1.0)] + [(c, -x) for c, x in lin("ic_step_s", MS)], GE, 0.0)
        for r in range(len(RESOURCE_KEYS)):
            terms = [(n[k], -self.Lbusy[r, k] * MS) for k in range(K) if self.Lbusy[r, k]] + \
                [(h[s], -self.Hbusy[r, s] * MS) for s in range(S) if self.Hbusy[r, s]]
            if terms:
                mdl.add([(T, 1.0)] + terms, GE, 0.0)

        # Buffers: a max over units of per-mode levels.
        def level_max(name: str, transform=lambda x: x) -> int:
            X = mdl.var(f"{name}_gb")
            for lvl in sorted({float(v) for v in L[name] if v > 0}):
                z = mdl.binary(f"z[{name},{lvl:g}]")
                mdl.add([(z, float(nl))] + [(n[k], -1.0) for k in range(K) if L[name][k] == lvl], GE, 0.0)
                mdl.add([(X, 1.0 / GB), (z, -transform(lvl))], GE, 0.0, scale=GB)
            mdl.add([(X, 1.0 / GB)] + [(h[s], -transform(float(H[name][s]))) for s in range(S)], GE, 0.0, scale=GB)
            return X

        bufs = [level_max(x) for x in ("grad_buffer_bytes", "offload_buffer_bytes", "stream_buffer_bytes")]
        act = mdl.var("activations_gb")
        stored = [(n[k], -L["stored_bytes"][k]) for k in range(K)]
        mdl.add([(act, 1.0 / GB)] + stored, GE, self.head_keep_work_bytes, scale=GB)
        least = 0.0 if pull else float(L["stored_bytes"].min())
        mdl.add([(act, 1.0 / GB)] + stored + [(f[j], st) for j, (_, st, _) in enumerate(pairs)], GE,
                self.keep_work_bytes - least,
                scale=GB)
        keep = 1.0 - CAPACITY_MARGIN
        g_cap, h_cap, d_cap = self.cap
        mdl.add(lin("gpu_bytes", 1.0) + [(x, 1.0 / GB) for x in bufs] + [(act, 1.0 / GB)], LE,
                g_cap * keep - self.param_buffer_bytes, scale=GB)
        staging = level_max("staged_bytes", (lambda x: 2.0 * pinned_allocation_bytes(x)) if self.pin
                            else (lambda x: 2.0 * x))
        # With ``overflow``, host and disk may overflow by a slack (GB) that the objective minimises first.
        over = [mdl.var("host_over_gb"), mdl.var("disk_over_gb")] if overflow else []
        mdl.add(lin("host_bytes", 1.0) + [(staging, 1.0 / GB)] + ([(over[0], -1.0 / GB)] if overflow else []), LE,
                h_cap * keep, scale=GB)
        if any(L["disk_bytes"]) or any(H["disk_bytes"]):
            mdl.add(lin("disk_bytes", 1.0) + ([(over[1], -1.0 / GB)] if overflow else []), LE, d_cap * keep,
                    scale=GB)
        mdl.minimize([(x, 1e6) for x in over] + [(T, 1.0)])
        return mdl, {"n": n, "f": f, "h": h, "iteration": T, "over": over}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSolution:
    """A solve of the training MIP: ``counts`` (layers per layer mode), ``first`` (the mode of the
    first layer in backward order, the list's last), ``head`` (the head's mode index), all empty or
    None unless the status is optimal or feasible; ``lp_estimate_s`` the MIP's iteration seconds."""

    result: SolveResult
    counts: tuple[int, ...] = ()
    first: int | None = None
    head: int | None = None
    lp_estimate_s: float | None = None

    @property
    def found(self) -> bool:
        return self.first is not None


def solve_training(screen: GroupScreen, *, backend: str | None = None, time_limit_s: float = 10.0,
                   gap_rel: float = 1e-4, pull: bool = True, overflow: bool = False) -> TrainSolution:
    """Build and solve the MIP of ``screen``'s modes; extract the counts, first job and head."""
    mdl, cols = screen.build(pull=pull, overflow=overflow)
    res = solve(mdl, backend=backend, time_limit_s=time_limit_s, gap_rel=gap_rel)
    if res.objective is None or not len(res.values):
        return TrainSolution(result=res)
    counts = [round(res.value(c)) for c in cols["n"]]
    if sum(counts) != screen.n_layers:  # the row sum(n) = L holds to the solver's tolerance: a bug, never hidden
        raise PlanError(f"internal: the training MIP's layer counts sum to {sum(counts)}, not {screen.n_layers}")
    if cols["f"]:
        j = max(range(len(cols["f"])), key=lambda j: res.value(cols["f"][j]))
        first = max(screen.pairs[j][2], key=lambda k: counts[k])
    else:  # the ranked order's own first job
        first = next(k for ks in screen.classes for k in ks if counts[k] > 0)
    if counts[first] == 0:  # f <= the pair's layers makes this impossible: a bug, never hidden
        raise PlanError("internal: the training MIP's first backward job is of a mode with no layers")
    head = max(range(len(cols["h"])), key=lambda s: res.value(cols["h"][s]))
    return TrainSolution(result=res, counts=tuple(counts), first=first, head=head,
                         lp_estimate_s=res.value(cols["iteration"]) / MS)


def head_policy_of(pol: LayerTrainPolicy) -> LayerTrainPolicy:
    """The head policy ``evaluate_training`` takes by default from a layer's: its placement, activations kept."""
    return replace(pol, activations=ActAction.KEEP, offload_share=1.0)


__all__ = [
    "CAPACITY_MARGIN",
    "CPU_STEP_MIXES",
    "FULL_SHARES",
    "GPU_STEP_MIXES",
    "MIP_SHARES",
    "RESOURCE_KEYS",
    "GroupScreen",
    "ModeCoef",
    "TrainSolution",
    "backward_phases",
    "head_policy_of",
    "layer_modes",
    "legal",
    "mode_coef",
    "mode_label",
    "solve_training",
]
