"""Memory of a training policy per tier: the GPU's peak over the iteration, the node's host and disk.

Every term is named in :class:`TrainMemory`'s breakdowns, with its formula in :func:`memory_use`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from costmodel.training_states import pinned_allocation_bytes
from costmodel.training_units import (
    ActAction,
    LayerTrainPolicy,
    StepDevice,
    Tier,
    TrainUnitCosts,
    TrainWorkload,
    unit_costs,
)
from hwprofiles import System


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainMemory:
    """Bytes per tier: the GPU's peak (per GPU) and the node's host and disk, with every term named.

    ``host_pinned_bytes`` and ``host_pageable_bytes`` split ``host_bytes`` (pinned bytes include the
    allocator's power-of-two rounding, the ``pinned_rounding`` term)."""

    gpu_bytes: float
    host_bytes: float
    disk_bytes: float
    gpu_breakdown: tuple[tuple[str, float], ...]
    host_breakdown: tuple[tuple[str, float], ...]
    disk_breakdown: tuple[tuple[str, float], ...]
    host_pinned_bytes: float
    host_pageable_bytes: float

    def as_dict(self) -> dict[str, float]:
        return {"gpu_bytes": self.gpu_bytes, "host_bytes": self.host_bytes, "disk_bytes": self.disk_bytes}


def _stored_act_bytes(uc: TrainUnitCosts, pol: LayerTrainPolicy) -> float:
    """GPU bytes a layer keeps between forward and backward under its activation action."""
    return {ActAction.KEEP: uc.act_keep_bytes, ActAction.SELECTIVE: uc.act_selective_bytes,
            ActAction.RECOMPUTE: uc.act_input_bytes,
            ActAction.OFFLOAD: (1.0 - pol.offloaded_share) * uc.act_keep_bytes}[pol.activations]


def unit_pinned_rounding_bytes(wl: TrainWorkload, u: TrainUnitCosts, p: LayerTrainPolicy, ws: float,
                               os_: float) -> float:
    """The pinned allocator's rounding of one unit's host allocations, when ``wl.pin_memory``: each
    page-locked allocation is rounded up to a power of two (:func:`pinned_allocation_bytes`). The
    allocations (bytes of one, how many): the unit's host weights (one per GPU at stage 3), its host
    fp32 gradients, accumulation buffer, master weights (one per partition, ``1 / os_``), each moment
    tensor, and its offloaded activations (one per GPU). ``ws``/``os_``: the weight and state shards."""
    n = wl.gpus
    allocs: list[tuple[float, int]] = []  # (bytes of one allocation, how many)
    if p.params is Tier.HOST:
        allocs.append((u.weights_bytes * ws, n if wl.zero_stage >= 3 else 1))
    if p.grads is Tier.HOST:
        allocs.append((u.step_grad_bytes * os_, round(1 / os_)))
    if p.grads is not Tier.GPU and wl.grad_accum > 1:
        allocs.append((u.grads_bytes * os_, round(1 / os_)))
    if p.master is Tier.HOST:
        allocs.append((u.master_bytes * os_, round(1 / os_)))
    if p.moments is Tier.HOST and u.moment_tensors:
        allocs.append((u.moments_bytes * os_ / u.moment_tensors, round(1 / os_) * u.moment_tensors))
    if p.offloaded_share:
        allocs.append((p.offloaded_share * u.act_keep_bytes, n))
    return sum(k * (pinned_allocation_bytes(b) - b) for b, k in allocs)


def memory_use(wl: TrainWorkload, system: System, policies: Sequence[LayerTrainPolicy],
               head: LayerTrainPolicy) -> TrainMemory:
    """GPU peak, host and disk bytes of a per-layer policy, term by term.

    Shard factors as in :class:`TrainUnitCosts`: ws (weights, 1/N at stage 3), gs (16-bit
    gradients, 1/N at stage >= 2), os (optimizer states, 1/N at stage >= 1). Per unit u with P_u
    parameters and the per-parameter bytes of :class:`~costmodel.training_states.StateBytes`:

    GPU, resident: ``weights`` Σ [params on GPU] w_u ws; ``grads`` Σ [grads on GPU] g_u gs;
    ``grad32`` Σ [grads on GPU] 4 P_u os (the fp32 copy, if kept); ``master`` Σ [master on GPU]
    4 P_u os; ``moments`` Σ [moments on GPU] m P_u os. Buffers (the largest unit): ``param_buffers``
    2 w_u (the gathered layer in use and the prefetched one) at stage 3 or with off-GPU weights;
    ``grad_buffers`` 2 g_u (the layer's 16-bit gradients being written and the previous being drained)
    when gradients leave the GPU or are reduce-scattered, plus 4 P_u os (the fp32 cast of the
    partition before its D2H) when they leave; ``act_offload_buffers`` 2 share keep_u (the next
    layer's activations arrive while this one's are used); ``state_stream_buffers`` 2 (4 + m) P_u os
    for a GPU step of host-resident states. Activations, at the worst point of the backward
    (layers run L..1; at layer l those of layers < l still wait): ``activations`` =
    max( Σ_l stored_l + head_keep + head_work, max_l [Σ_{j<l} stored_j + keep_l + work_l] ), where
    stored_l is what the action keeps on the GPU (:func:`activation_bytes`; offload keeps
    (1 - share) keep_l), keep_l the layer's full set (recomputed or fetched back for its backward),
    and work the largest dy + dx of one of its ops.

    Host (the node, every GPU's partitions): ``weights`` Σ [params on host] w_u; ``grad32``
    Σ [grads on host] 4 P_u; ``grad_accum_buffer`` Σ [grads on host, grad_accum > 1] g_u (DeepSpeed's
    16-bit ``accumulated_grads_in_cpu``); ``master`` and ``moments`` on the host;
    ``offloaded_activations`` N Σ share keep_l; ``disk_staging`` 2 x the largest disk-resident state
    set of one unit (read in, written back); ``snapshot`` (``snapshot_every`` > 0) Σ_u (master_u +
    moments_u), the in-memory snapshot of every unit's states, wherever they live; ``pinned_rounding`` (pin_memory) Σ over allocations —
    one per unit, GPU and state tensor — of PowerOf2Ceil(size) - size
    (:func:`~costmodel.training_states.pinned_allocation_bytes`). Disk: weights and states on disk.
    """
    uc, hc = unit_costs(wl, system), unit_costs(wl, system, head=True)
    units = [(uc, p) for p in policies] + [(hc, head)]
    n = wl.gpus
    ws, gs, os_ = uc.weight_shard, uc.grad_shard, uc.state_shard
    gpu = {
        "weights": sum(u.weights_bytes * ws for u, p in units if p.params is Tier.GPU),
        "grads": sum(u.grads_bytes * gs for u, p in units if p.grads is Tier.GPU),
        "grad32": sum(u.grad32_bytes * os_ for u, p in units if p.grads is Tier.GPU),
        "master": sum(u.master_gpu_bytes * os_ for u, p in units if p.master is Tier.GPU),
        "moments": sum(u.moments_bytes * os_ for u, p in units if p.moments is Tier.GPU),
    }
    gathered = wl.zero_stage >= 3 or any(p.params is not Tier.GPU for _, p in units)
    gpu["param_buffers"] = 2.0 * max(u.weights_bytes for u, _ in units) if gathered else 0.0
    gpu["grad_buffers"] = max(
        (2.0 * u.grads_bytes if p.grads is not Tier.GPU or (wl.zero_stage >= 2 and n > 1) else 0.0)
        + (u.step_grad_bytes * os_ if p.grads is not Tier.GPU else 0.0) for u, p in units)
    gpu["act_offload_buffers"] = 2.0 * max(p.offloaded_share * u.act_keep_bytes for u, p in units)
    gpu["state_stream_buffers"] = 2.0 * max(
        ((u.master_gpu_bytes if p.master is Tier.HOST else 0.0) + (u.moments_bytes if p.moments is Tier.HOST else 0.0))
        * os_ for u, p in units if p.step is StepDevice.GPU) if any(p.step is StepDevice.GPU for _, p in units) else 0.0
    stored = [_stored_act_bytes(uc, p) for p in policies]
    head_start = sum(stored) + hc.act_keep_bytes + hc.act_transient_bytes
    prefix, worst = 0.0, head_start
    for s_l in stored:  # layer 1 first: at layer l, the layers below it still hold theirs
        worst = max(worst, prefix + uc.act_keep_bytes + uc.act_transient_bytes)
        prefix += s_l
    gpu["activations"] = worst
    host = {
        "weights": sum(u.weights_bytes for u, p in units if p.params is Tier.HOST),
        "grad32": sum(u.step_grad_bytes for u, p in units if p.grads is Tier.HOST),
        "grad_accum_buffer": (sum(u.grads_bytes for u, p in units if p.grads is not Tier.GPU)
                              if wl.grad_accum > 1 else 0.0),
        "master": sum(u.master_bytes for u, p in units if p.master is Tier.HOST),
        "moments": sum(u.moments_bytes for u, p in units if p.moments is Tier.HOST),
        "offloaded_activations": n * sum(p.offloaded_share * u.act_keep_bytes for u, p in units),
    }
    staged = [(u.step_grad_bytes if p.grads is Tier.DISK else 0.0) + (u.master_bytes if p.master is Tier.DISK else 0.0)
              + (u.moments_bytes if p.moments is Tier.DISK else 0.0) for u, p in units]
    host["disk_staging"] = 2.0 * max(staged)
    # the in-memory snapshot (snapshot_every > 0): one copy of every unit's master (or fp32 weights) and moments
    host["snapshot"] = sum(u.master_bytes + u.moments_bytes for u, _ in units) if wl.snapshot_every else 0.0
    rounding = 0.0
    if wl.pin_memory:
        rounding += sum(unit_pinned_rounding_bytes(wl, u, p, ws, os_) for u, p in units)
        if host["disk_staging"]:
            rounding += pinned_allocation_bytes(host["disk_staging"] / 2) * 2 - host["disk_staging"]
    host["pinned_rounding"] = rounding
    disk = {"weights": sum(u.weights_bytes for u, p in units if p.params is Tier.DISK),
            "grad32": sum(u.step_grad_bytes for u, p in units if p.grads is Tier.DISK),
            "master": sum(u.master_bytes for u, p in units if p.master is Tier.DISK),
            "moments": sum(u.moments_bytes for u, p in units if p.moments is Tier.DISK)}
    host_total = sum(host.values())
    pinned = host_total if wl.pin_memory else 0.0
    return TrainMemory(gpu_bytes=sum(gpu.values()), host_bytes=host_total, disk_bytes=sum(disk.values()),
                       gpu_breakdown=tuple(gpu.items()), host_breakdown=tuple(host.items()),
                       disk_breakdown=tuple(disk.items()), host_pinned_bytes=pinned,
                       host_pageable_bytes=host_total - pinned)


__all__ = ["TrainMemory", "memory_use", "unit_pinned_rounding_bytes"]
