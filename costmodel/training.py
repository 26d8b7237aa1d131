"""Cost of training a transformer whose model states may not fit on the GPU (ZeRO-Offload style).

Per layer (the unit of decision) a :class:`LayerTrainPolicy` says where the 16-bit weights, the
gradients the step reads, the fp32 master weights and the optimizer moments live (GPU, host,
NVMe), whether the layer's optimizer step runs on the GPU or the CPU, and whether its activations
are kept, fully recomputed, selectively recomputed (Korthikanti et al. 2022) or offloaded to the
host. :func:`evaluate_training` predicts one iteration (``grad_accum`` micro-steps and the step) of
``gpus`` data-parallel GPUs of one node and the memory per tier.

Schedule (how overlap is modelled; ``TrainWorkload.overlap``)
-----------------------------------------------------------
Each phase of each layer takes, per resource (GPU compute, H2D and D2H copy engines, CPU, disk,
GPU interconnect), the time of the bytes or work it puts on that resource (:func:`unit_phase_times`,
affine in the policy's 0/1 decisions with the coefficients of :class:`TrainUnitCosts`).

* forward: the next layer's weights are prefetched and this layer's offloaded activations copied
  out while it computes, so a layer takes its slowest resource: ``Σ_l max_r fwd[l, r]``.
* backward: a two-stage flow shop in layer order L..1 — stage A, the layer's backward with its
  recompute and inbound copies (``max`` of GPU, H2D, parameter all-gather, disk reads); stage B,
  its gradient reduce-scatter, the fetch of its accumulated gradient (micro-steps after the first),
  then D2H, in series on DeepSpeed's reduction stream, which overlaps the next layer's stage A
  (``overlap_comm``; one copy engine per direction). Completion times follow the recurrence
  ``C[j, k] = max(C[j-1, k], C[j, k-1]) + p[j, k]`` — linear constraints ``C[j,k] >= C[j-1,k] + p``,
  ``C[j,k] >= C[j,k-1] + p`` in a MIP, with ``p`` affine in the decisions. The head's job opens the
  sequence (the LM head's backward runs first) with the copies of its early gradients (final norm,
  an untied LM head); its embeddings' gradients -- a tied LM head's weight among them, as autograd
  sums both uses before the hook fires -- are complete only when the backward ends, so their copies
  are a last job of stage B alone (``TrainUnitCosts.late_grad_share`` of the head's stage B).
* step, ``overlap="deepspeed"`` (DeepSpeed's behaviour: ``step()`` runs after the backward): the
  CPU-stepped layers one after another, each ``max(cpu, disk)`` (NVMe reads/writes pipelined with
  the CPU, ``pipeline_read``/``pipeline_write``) then the H2D of its updated 16-bit weights;
  concurrently the GPU-stepped layers (Twin-Flow), in backward order, as a four-stage flow shop
  (:func:`gpu_step_job`: H2D of host-resident master and moments, the update, D2H of those states
  and of updated weights that live off the GPU, the disk write of weights on disk; a layer with
  everything on the GPU is its update alone); then the all-gather of updated weights (stages 1-2).
* ``overlap="full"``: the CPU step of a layer starts as soon as its gradients are on the host,
  overlapping the rest of the backward: a flow shop (stage A, stage B, CPU+disk, H2D of weights) in
  backward order. The H2D of updated weights either follows each CPU step (a fourth stage) or, but
  for the last-stepped unit's, is deferred into the next iteration's first forward, where it is
  prefetched with its unit (that unit's forward H2D grows by the copy); the faster of the two
  schedules is taken (both are valid; a MIP chooses with one binary).
* ``overlap="none"``: every resource time is added.

Every schedule is then bounded below by each resource's busy time over the iteration
(``iteration_s >= Σ busy[r]``), so a resource shared by two stages (the H2D engine carries both
prefetches and updated weights) is never over-committed.

Memory is counted as the runtime allocates it, per GPU for the GPU and for the whole node for the
host and disk (the ``gpus`` processes share one host, its memory bandwidth and CPU, and the disk;
each GPU has its own link; a host profile that is one GPU's share of its node counts ``gpus`` shares,
:func:`~costmodel.training_units.node_host`). Every term is named in :class:`TrainMemory`'s breakdowns; formulas are
in :func:`memory_use`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from costmodel.errors import WorkloadError
from costmodel.training_memory import TrainMemory, memory_use
from costmodel.training_states import (
    OptimizerKind,
    Precision,
    StateBytes,
    deepspeed_zero2_estimate,
    deepspeed_zero3_estimate,
    megatron_bytes_per_param,
    pinned_allocation_bytes,
    state_bytes,
    step_bytes_per_param,
    zero_paper_model_state_bytes,
)
from costmodel.training_units import (
    RESOURCE_KEYS,
    ActAction,
    LayerTrainPolicy,
    Overlap,
    Phase,
    StepDevice,
    Tier,
    TrainOp,
    TrainResource,
    TrainUnitCosts,
    TrainWorkload,
    _gpu_proc,
    activation_bytes,
    backward_stages,
    check_node,
    flow_shop_s,
    gpu_step_job,
    head_ops,
    layer_ops,
    node_capacity,
    node_host,
    unit_costs,
    unit_phase_times,
)
from hwprofiles import System, format_bytes

# ---------------------------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class TrainCost:
    """Predicted time and memory of one training iteration under a per-layer policy.

    ``forward_s`` and ``backward_s`` are the scheduled forward and backward of all micro-steps;
    ``step_s`` is the rest of the iteration (the optimizer step and whatever of it the schedule
    does not hide). ``busy`` is each resource's busy time over the iteration (the node's for CPU and
    disk); ``schedule_s`` the schedule before the busy-time bounds; ``binding`` what sets
    ``iteration_s`` ("schedule" or a resource). ``mfu``: model FLOPs (forward and backward, no
    recompute) / (iteration x GPUs x peak). ``unit_times``: per decoder layer, then the head, the
    seconds per resource of each phase (:func:`unit_phase_times`).
    """

    iteration_s: float
    forward_s: float
    backward_s: float
    step_s: float
    schedule_s: float
    tokens_per_s: float
    mfu: float
    busy: tuple[tuple[TrainResource, float], ...]
    binding: str
    memory: TrainMemory
    capacity: dict[str, float] = field(hash=False)
    unit_times: tuple[tuple[tuple[str, tuple[tuple[str, float], ...]], ...], ...] = field(repr=False, default=())

    def busy_s(self, resource: TrainResource | str) -> float:
        return dict(self.busy)[TrainResource(resource)]

    def shortfalls(self) -> dict[str, float]:
        """Bytes missing per tier (empty when the plan fits); 1 KiB slack for float sums."""
        use = self.memory.as_dict()
        return {k: use[k] - self.capacity[k] for k in use if use[k] > self.capacity[k] + 1024}

    @property
    def feasible(self) -> bool:
        return not self.shortfalls()

    def explain_shortfall(self) -> str:
        """Each short tier with its need, its usable bytes and the terms of the need ('' if it fits)."""
        parts = []
        terms = {"gpu_bytes": self.memory.gpu_breakdown, "host_bytes": self.memory.host_breakdown,
                 "disk_bytes": self.memory.disk_breakdown}
        names = {"gpu_bytes": "gpu memory (per GPU, peak of the backward)", "host_bytes": "host memory (the node)",
                 "disk_bytes": "disk"}
        for key, missing in self.shortfalls().items():
            listed = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in terms[key] if v > 0)
            need, usable = format_bytes(missing + self.capacity[key]), format_bytes(self.capacity[key])
            parts.append(f"{names[key]} short by {format_bytes(missing)}: needs {need} of {usable} usable"
                         + (f" ({listed})" if listed else ""))
        return "; ".join(parts)

    def summary(self) -> dict[str, object]:
        return {"iteration_s": self.iteration_s, "forward_s": self.forward_s, "backward_s": self.backward_s,
                "step_s": self.step_s, "tokens_per_s": self.tokens_per_s, "mfu": self.mfu, "binding": self.binding,
                "busy_s": {str(r): v for r, v in self.busy}, "memory": self.memory.as_dict(),
                "capacity": dict(self.capacity), "feasible": self.feasible}


def _check(wl: TrainWorkload, system: System, units: Sequence[LayerTrainPolicy]) -> None:
    check_node(wl, system)
    for i, p in enumerate(units):
        where = "head policy" if i == len(units) - 1 else f"layer {i}"
        if p.params is not Tier.GPU and wl.zero_stage != 3:
            raise WorkloadError(f"{where}: params={p.params.value!r} (weights off the GPU) needs zero_stage 3 "
                                f"(ZeRO-Infinity parameter offload), got zero_stage={wl.zero_stage}")
        if p.step is StepDevice.CPU and wl.zero_stage == 0:
            raise WorkloadError(f"{where}: step='cpu' needs zero_stage >= 1 (DeepSpeed offload_optimizer is valid with "
                                "stages 1, 2 and 3), got zero_stage=0")
        if system.disk is None and Tier.DISK in (p.params, p.grads, p.master, p.moments):
            raise WorkloadError(f"{where}: the policy puts state on disk but system {system.name!r} has no disk")


def evaluate_training(wl: TrainWorkload, system: System, policies: Sequence[LayerTrainPolicy], *,
                      head: LayerTrainPolicy | None = None) -> TrainCost:
    """Predict one iteration's time and memory of a per-layer policy (see the module docstring).

    Parameters
    ----------
    wl : TrainWorkload
        Model, batch, accumulation, GPUs, precision, optimizer, ZeRO stage and overlap.
    system : System
        The hardware: one GPU kind (each of the ``gpus`` has its own link), the shared host and disk.
    policies : sequence of LayerTrainPolicy
        One per decoder layer.
    head : LayerTrainPolicy, optional
        Placement of the embeddings, final norm and LM head (their activations are always kept);
        default: the first layer's placement.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> from hwprofiles import load_system
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=1024, micro_batch=8)
    >>> cost = evaluate_training(wl, load_system("a100-40gb"), baseline_policies("all-gpu", wl, None))
    >>> cost.feasible, abs(cost.iteration_s - (cost.forward_s + cost.backward_s + cost.step_s)) < 1e-12
    (True, True)
    """
    m = wl.model
    policies = tuple(policies)
    if len(policies) != m.n_layers:
        raise WorkloadError(f"a policy needs one entry per layer ({m.n_layers}), got {len(policies)}")
    for i, p in enumerate((*policies, head)):
        if not isinstance(p, LayerTrainPolicy) and not (p is None and i == len(policies)):
            where = "head policy" if i == len(policies) else f"layer {i}"
            raise WorkloadError(f"{where}: a policy must be a LayerTrainPolicy, got {type(p).__name__}")
    if head is None:
        head = replace(policies[0], activations=ActAction.KEEP, offload_share=1.0)
    _check(wl, system, (*policies, head))
    uc, hc = unit_costs(wl, system), unit_costs(wl, system, head=True)
    cache: dict[LayerTrainPolicy, dict[Phase, dict[str, float]]] = {}
    units = []
    for u, p in [(uc, pol) for pol in policies] + [(hc, head)]:
        key = (u is hc, p)
        if key not in cache:
            cache[key] = unit_phase_times(u, p)
        units.append((cache[key], p))
    a, overlap = wl.grad_accum, wl.overlap

    if overlap is Overlap.NONE:
        fwd = sum(sum(t[Phase.FORWARD].values()) for t, _ in units)
    else:
        fwd = sum(max(t[Phase.FORWARD].values()) for t, _ in units)
    order = list(reversed(units))  # backward: the LM head first, then layers L .. 1, the embeddings last
    late = hc.late_grad_share

    def jobs_of(phase: Phase) -> list[tuple[float, float]]:
        """The backward's flow-shop jobs (stage A, stage B): the head's LM head and final norm, with the
        share of its gradient copies ready then; the layers L .. 1; and last the embeddings, whose
        gradients (a tied LM head's weight among them) are complete only when the backward ends, so
        that share of the head's copies closes the backward (its GPU work, a scatter-add, is not counted)."""
        head_a, head_b = backward_stages(order[0][0][phase])
        return ([(head_a, (1.0 - late) * head_b)] + [backward_stages(t[phase]) for t, _ in order[1:]]
                + [(0.0, late * head_b)])

    def backward_s(phase: Phase) -> float:
        if overlap is Overlap.NONE:
            return sum(sum(t[phase].values()) for t, _ in order)
        return flow_shop_s(jobs_of(phase))

    phases = [Phase.BACKWARD_LAST] if a == 1 else [Phase.BACKWARD_FIRST, *[Phase.BACKWARD_MID] * (a - 2),
                                                    Phase.BACKWARD_LAST]
    bwd_early = sum(backward_s(ph) for ph in phases[:-1])
    last = Phase.BACKWARD_LAST
    steps = [(t[Phase.STEP], p) for t, p in order]
    ic_step = sum(s["interconnect"] for s, _ in steps)
    cpu_jobs = [(max(s["cpu"], s["disk"]), s["h2d"]) if p.step is StepDevice.CPU else (0.0, 0.0) for s, p in steps]
    # The GPU-stepped units in order: a four-stage flow shop (states in, update, states and weights out, disk).
    gpu_chain = flow_shop_s([gpu_step_job(s) for s, p in steps if p.step is StepDevice.GPU])
    if overlap is Overlap.NONE:
        bwd_last = backward_s(last)
        step = sum(sum(s.values()) for s, _ in steps)
    else:  # DeepSpeed (FULL is refined below)
        bwd_last = backward_s(last)
        step = max(sum(c + h for c, h in cpu_jobs), gpu_chain) + ic_step
    fwd_first = fwd
    if overlap is Overlap.FULL:
        jobs = jobs_of(last)
        bwd_last = flow_shop_s(jobs)
        # The backward's jobs in sequence with the unit (index in ``order``) each one's CPU step follows: the
        # head's step waits for its last gradients, so it rides with the closing embeddings job.
        owner = [None, *range(1, len(order)), 0]
        cpu_al = [cpu_jobs[u] if u is not None else (0.0, 0.0) for u in owner]
        # (a) each unit's updated weights go up right after its CPU step: a four-stage flow shop.
        cpu_end = flow_shop_s([(*j, *c) for j, c in zip(jobs, cpu_al, strict=True)])
        step = max(cpu_end, bwd_last + gpu_chain) - bwd_last + ic_step
        # (b) only the last CPU-stepped unit's copy closes the step; the others ride with the next forward's
        # prefetch of their unit (that unit's forward H2D grows by the copy). The better schedule is taken.
        cpu_units = [u for u in owner if u is not None and order[u][1].step is StepDevice.CPU]
        if cpu_units:
            k = cpu_units[-1]
            cpu3_end = flow_shop_s([(*j, c[0]) for j, c in zip(jobs, cpu_al, strict=True)])
            step_b = max(cpu3_end + cpu_jobs[k][1], bwd_last + gpu_chain) - bwd_last + ic_step
            deferred = [0.0 if j == k else cpu_jobs[j][1] for j in range(len(order))][::-1]  # forward order
            fwd_b = sum(max({**t[Phase.FORWARD], "h2d": t[Phase.FORWARD]["h2d"] + extra}.values())
                        for (t, _), extra in zip(units, deferred, strict=True))
            if step_b + fwd_b < step + fwd:
                step, fwd_first = step_b, fwd_b
    forward_total = fwd_first + (a - 1) * fwd
    backward_total = bwd_early + bwd_last
    schedule = forward_total + backward_total + step
    counts = {Phase.FORWARD: a, Phase.STEP: 1, Phase.SNAPSHOT: 1}
    for ph in phases:
        counts[ph] = counts.get(ph, 0) + 1
    busy = {r: sum(n * t[ph].get(k, 0.0) for t, _ in units for ph, n in counts.items() for k in keys)
            for r, keys in RESOURCE_KEYS}
    worst = max(busy, key=busy.get)
    iteration = max(schedule, busy[worst])
    # A schedule that only sums one resource equals its busy time up to float rounding: call it the schedule.
    binding = "schedule" if schedule >= busy[worst] * (1 - 1e-9) else str(worst)
    gpu = _gpu_proc(wl, system)
    model_flop = a * (m.n_layers * sum(op.flop + op.bwd_flop for op in layer_ops(wl))
                      + sum(op.flop + op.bwd_flop for op in head_ops(wl)))
    unit_times = tuple(tuple((str(ph), tuple(d.items())) for ph, d in t.items()) for t, _ in units)
    return TrainCost(
        iteration_s=iteration, forward_s=forward_total, backward_s=backward_total,
        step_s=iteration - forward_total - backward_total, schedule_s=schedule,
        tokens_per_s=wl.tokens_per_iteration / iteration, mfu=model_flop / (iteration * gpu.peak_flop_per_s),
        busy=tuple(busy.items()), binding=binding, memory=memory_use(wl, system, policies, head),
        capacity=node_capacity(wl, system), unit_times=unit_times)


def model_flop_per_token(wl: TrainWorkload) -> float:
    """Forward + backward FLOPs per token of the model as :func:`layer_ops` counts them (no recompute)."""
    per_mb = wl.model.n_layers * sum(op.flop + op.bwd_flop for op in layer_ops(wl)) + \
        sum(op.flop + op.bwd_flop for op in head_ops(wl))
    return per_mb / wl.tokens


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------

STATE_BASELINES = ("all-gpu", "zero-offload", "zero-infinity-cpu", "zero-infinity-nvme", "twin-flow")
ACTIVATION_BASELINES = ("full-recompute", "selective-recompute", "activation-offload")
BASELINES = STATE_BASELINES + ACTIVATION_BASELINES

_ON_GPU = LayerTrainPolicy()
_CPU_STEP = dict(grads=Tier.HOST, master=Tier.HOST, moments=Tier.HOST, step=StepDevice.CPU)
_NEEDS_STAGE = {"zero-offload": 2, "zero-infinity-cpu": 3, "zero-infinity-nvme": 3, "twin-flow": 3}


def _state_policies(base: str, wl: TrainWorkload, system: System | None, value: float | None) -> list[LayerTrainPolicy]:
    n = wl.model.n_layers
    stage = _NEEDS_STAGE.get(base)
    if stage is not None and wl.zero_stage != stage:
        raise WorkloadError(f"baseline {base!r} runs at ZeRO stage {stage}: set zero_stage={stage}, "
                            f"got zero_stage={wl.zero_stage}")
    if base == "all-gpu":
        return [_ON_GPU] * n
    if base == "zero-offload":  # ZeRO-Offload: fp16 weights on the GPU, gradients, states and the step on the CPU
        return [LayerTrainPolicy(**_CPU_STEP)] * n
    if base == "zero-infinity-cpu":
        return [LayerTrainPolicy(params=Tier.HOST, **_CPU_STEP)] * n
    if base == "zero-infinity-nvme":
        if system is not None and system.disk is None:
            raise WorkloadError(f"baseline 'zero-infinity-nvme' needs a disk; system {system.name!r} has none "
                                "(add one with --set disk=NAME)")
        return [LayerTrainPolicy(params=Tier.DISK, grads=Tier.HOST, master=Tier.DISK, moments=Tier.DISK,
                                 step=StepDevice.CPU)] * n
    # twin-flow: DeepSpeed offload_optimizer.ratio, "Percentage of offloaded optimizer states to CPU Adam"
    # (deepspeed/runtime/zero/offload_config.py); the first round(ratio x layers) layers step on the CPU.
    k = round(value * n)
    return [LayerTrainPolicy(**_CPU_STEP)] * k + [_ON_GPU] * (n - k)


def baseline_zero_stage(name: str) -> int | None:
    """The ZeRO stage a (possibly ``+``-joined) baseline runs at, as DeepSpeed users run it (None: any).

    Examples
    --------
    >>> baseline_zero_stage("zero-offload+full-recompute"), baseline_zero_stage("twin-flow:0.5")
    (2, 3)
    >>> baseline_zero_stage("selective-recompute") is None
    True
    """
    for part in str(name).split("+"):
        stage = _NEEDS_STAGE.get(part.strip().partition(":")[0])
        if stage is not None:
            return stage
    return None


def baseline_policies(name: str, wl: TrainWorkload, system: System | None) -> tuple[LayerTrainPolicy, ...]:
    """Per-layer policies of a named baseline, or of a ``+``-joined state baseline and activation baseline.

    State baselines (:data:`STATE_BASELINES`): ``all-gpu``; ``zero-offload`` (ZeRO-2, DeepSpeed
    ZeRO-Offload: 16-bit weights on the GPU, gradients, master weights and moments on the host, the
    step on the CPU); ``zero-infinity-cpu`` (ZeRO-3: the weights on the host too);
    ``zero-infinity-nvme`` (ZeRO-3: weights, master and moments on NVMe, gradients on the host);
    ``twin-flow:RATIO`` (ZeRO-3: a RATIO share of the layers stepped on the CPU, the rest on the GPU
    with GPU-resident states). Activation baselines (:data:`ACTIVATION_BASELINES`):
    ``full-recompute``, ``selective-recompute`` (Megatron's), ``activation-offload[:SHARE]``.
    E.g. ``zero-offload+full-recompute``.

    Raises
    ------
    WorkloadError
        An unknown name, a missing or bad value, two baselines of one kind, or a workload whose
        ZeRO stage the baseline does not run at.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=512, micro_batch=1, zero_stage=3)
    >>> pols = baseline_policies("twin-flow:0.25+selective-recompute", wl, None)
    >>> [p.step.value for p in pols].count("cpu"), pols[0].activations.value
    (3, 'selective')
    """
    if not isinstance(name, str) or not name.strip():
        raise WorkloadError(f"a baseline must be named by text, one of {', '.join(BASELINES)}, got {name!r}")
    state, act = None, None
    for part in name.split("+"):
        base, sep, arg = part.strip().partition(":")
        if base not in BASELINES:
            raise WorkloadError(f"baseline must be one of {', '.join(BASELINES)} (or two joined by '+'), "
                                f"got {base!r} in {name!r}")
        value = None
        if sep:
            if base not in ("twin-flow", "activation-offload"):
                raise WorkloadError(f"baseline {base!r} takes no value, got {part!r}")
            try:
                value = float(arg)
            except ValueError:
                raise WorkloadError(f"baseline {base!r} needs a number after ':', got {arg!r}") from None
            if not 0.0 <= value <= 1.0:  # NaN fails too
                what = "ratio (DeepSpeed offload_optimizer.ratio)" if base == "twin-flow" else "share"
                raise WorkloadError(f"baseline {base!r} {what} must be in [0, 1], got {arg!r}")
        elif base == "twin-flow":
            raise WorkloadError(f"baseline 'twin-flow' needs a ratio: the share of layers stepped on the CPU, "
                                f"e.g. 'twin-flow:0.3', got {part!r}")
        kind = "state" if base in STATE_BASELINES else "activation"
        if (state if kind == "state" else act) is not None:
            raise WorkloadError(f"baseline {name!r} names two {kind} baselines; join at most one of "
                                f"{', '.join(STATE_BASELINES)} with one of {', '.join(ACTIVATION_BASELINES)}")
        if kind == "state":
            state = (base, value)
        else:
            act = (base, value)
    pols = _state_policies(*(state or ("all-gpu", None))[:1], wl, system, (state or (None, None))[1])
    if act is not None:
        base, value = act
        action = {"full-recompute": ActAction.RECOMPUTE, "selective-recompute": ActAction.SELECTIVE,
                  "activation-offload": ActAction.OFFLOAD}[base]
        pols = [replace(p, activations=action, offload_share=1.0 if value is None else value) for p in pols]
    return tuple(pols)


__all__ = [
    "ACTIVATION_BASELINES", "BASELINES", "STATE_BASELINES", "ActAction", "LayerTrainPolicy", "OptimizerKind", "Overlap",
    "Phase", "Precision", "StateBytes", "StepDevice", "Tier", "TrainCost", "TrainMemory", "TrainOp", "TrainResource",
    "TrainUnitCosts", "TrainWorkload", "activation_bytes", "baseline_policies", "check_node", "deepspeed_zero2_estimate",
    "deepspeed_zero3_estimate", "evaluate_training", "flow_shop_s", "gpu_step_job", "head_ops", "layer_ops",
    "megatron_bytes_per_param", "memory_use", "model_flop_per_token", "node_capacity", "node_host",
    "pinned_allocation_bytes", "state_bytes", "step_bytes_per_param",
    "unit_costs", "unit_phase_times", "zero_paper_model_state_bytes",
]
