"""Plan KV cache and weight placement for LLM inference; evaluate named baseline policies.

``plan_kv`` solves the placement MIP for each candidate batch, re-costs every solution with the
exact cost model, simulates the chosen plan's timeline, and evaluates every baseline the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from dataclasses import dataclass, field


from costmodel import (
    Fractions,
    KvAction,
    KvCost,
    KvWorkload,
    LayerPolicy,
    Memory,
    TokenSplit,
    TransformerSpec,
    capacity,
    evaluate,
    list_models,
    load_model,
    memory_use,
    range_bounds,
    shortfalls,
    time_lower_bound_s,
)
from costmodel.kv import explain_shortfall, kv_layer_bytes, prefill_hidden_bytes
from hwprofiles import System, format_bytes
from solver.backends import SolveStatus
from solver.errors import PlanError
from solver.kv_formulation import CPU, MOVE, Mode, Restriction, all_modes, solve_kv
from solver.plan import Plan
from solver.timeline import simulated_total_s

OBJECTIVES = ("throughput", "latency")
BASELINES = ("gpu-only", "kv-offload", "full-offload", "kvpr", "flexgen")


def batch_candidates(max_batch: int, objective: str) -> list[int]:
    """Batches the throughput objective tries: powers of two up to ``max_batch``, and ``max_batch``.

    >>> batch_candidates(48, "throughput")
    [1, 2, 4, 8, 16, 32, 48]
    """
    if objective == "latency":
        return [max_batch]
    out = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return out + [max_batch]


def candidate_workloads(wl: KvWorkload, objective: str) -> list[KvWorkload]:
    """The workloads a batch search tries, smallest first: :func:`batch_candidates` of ``wl.batch``,
    or, when ``wl.gpu_batch`` fixes the GPU batch, whole multiples of it (a batch no larger than one
    GPU batch runs whole).

    >>> from costmodel import load_model
    >>> wl = KvWorkload(model=load_model("gpt2"), batch=96, gpu_batch=48, prompt_len=8, gen_len=2)
    >>> [(w.batch, w.micro_batch) for w in candidate_workloads(wl, "throughput")]
    [(48, 48), (96, 48)]
    """
    if not wl.gpu_batch:
        return [wl.with_batch(b) for b in batch_candidates(wl.batch, objective)]
    g = wl.gpu_batch
    return [wl.with_batch(g * n, gpu_batch=g if n > 1 else 0) for n in batch_candidates(wl.batch // g, objective)]


def metrics(wl: KvWorkload, cost: KvCost) -> dict[str, float]:
    """The predicted-time fields of a plan (FlexGen's throughput: generated tokens / total time)."""
    total = cost.prefill_s + cost.decode_s
    generated = wl.batch * wl.gen_len
    return {
        "prefill_s": cost.prefill_s,
        "decode_s": cost.decode_s,
        "step_time_s": cost.step_time_s,
        "total_s": total,
        "tokens_per_s": generated / total,
        "decode_tokens_per_s": generated / cost.decode_s,
        "batch": wl.batch,
        "gpu_batch": wl.micro_batch,
        "gpu_batches": wl.gpu_batches,
    }


def _score(wl: KvWorkload, cost: KvCost, objective: str) -> float:
    """Lower is better."""
    total = cost.prefill_s + cost.decode_s
    return total if objective == "latency" else -wl.batch * wl.gen_len / total


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluated:
    """A policy at one batch, costed exactly."""

    workload: KvWorkload
    policies: tuple[LayerPolicy, ...]
    head_on_gpu: bool | float
    cost: KvCost
    mode_counts: tuple[tuple[str, int], ...] = ()
    lp_estimate_s: float | None = None
    hidden_on_gpu: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyResult:
    """A named policy costed at exactly the workload asked (batch and GPU batch included), or the
    reason it cannot run there, with the bytes each tier is short of and every term of its need."""

    name: str
    workload: KvWorkload
    status: str  # "feasible" or "infeasible"
    evaluated: Evaluated | None = None
    reason: str = ""
    shortfalls: dict[str, float] = field(default_factory=dict)
    memory: Memory | None = None  # of the evaluated policy, or of its least-GPU form when infeasible

    @property
    def feasible(self) -> bool:
        return self.evaluated is not None

    @property
    def policies(self) -> tuple[LayerPolicy, ...]:
        if self.evaluated is None:
            raise PlanError(f"{self.name} is infeasible at batch {self.workload.batch}: {self.reason}")
        return self.evaluated.policies


def parse_flexgen(text: str) -> tuple[float, ...]:
    """``flexgen:wg,wc,cg,cc,hg,hc`` percentages (FlexGen's policy notation), optionally followed by
    ``:gpu-attention`` (offloaded KV comes to the GPU to be attended; by default it is attended on the
    CPU, FlexGen's ``--cpu-cache-compute``).

    >>> parse_flexgen("flexgen:20,80,0,100,0,100")
    (0.2, 0.8, 0.0, 1.0, 0.0, 1.0)
    """
    _, _, rest = text.partition(":")
    rest, _, suffix = rest.partition(":")
    if suffix not in ("", "gpu-attention"):
        raise PlanError(f"a flexgen policy may end in ':gpu-attention' only, got {text!r}")
    parts = rest.split(",")
    if len(parts) != 6:
        raise PlanError(f"flexgen percentages must be 'flexgen:wg,wc,cg,cc,hg,hc' (six numbers), got {text!r}")
    try:
        values = tuple(float(p) / 100.0 for p in parts)
    except ValueError:
        raise PlanError(f"flexgen percentages must be numbers, got {text!r}") from None
    if any(v < 0 or v > 1 for v in values):
        raise PlanError(f"flexgen percentages must lie in 0..100, got {text!r}")
    for name, (a, b) in (("wg+wc", values[0:2]), ("cg+cc", values[2:4]), ("hg+hc", values[4:6])):
        if a + b > 1 + 1e-9:
            raise PlanError(f"flexgen {name} must be at most 100, got {text!r}")
    return values


def _restriction(name: str, has_disk: bool) -> Restriction:
    off = "disk" if has_disk else "host"
    table = {
        "gpu-only": Restriction(modes=(Mode("gpu", "gpu"),)),
        "kv-offload": Restriction(modes=(Mode("gpu", "host", MOVE),), kv_all_offloaded=True),
        "full-offload": Restriction(modes=(Mode("host", "host", MOVE),), weights_all_offloaded=True,
                                    kv_all_offloaded=True),
        "kvpr": Restriction(modes=(Mode("gpu", "host", MOVE, act=True),), kv_all_offloaded=True),
        # FlexGen: one uniform policy with CPU attention over offloaded KV; percentages free over all tiers.
        "flexgen": Restriction(modes=(Mode(off, off, CPU),)),
        # ... and its policies that keep all the KV on the GPU: a mode of their own, as the CPU mode
        # charges every layer the fixed costs of the CPU round trip, used or not.
        "flexgen-kv-gpu": Restriction(modes=(Mode(off, "gpu"),)),
    }
    return table[name]


# Re-solves at the previous solution's op sizes: the LP reads size-dependent efficiencies at fixed
# sizes, so a plan that attends a few tokens on the CPU looked cheaper than it is. Two or three
# rounds settle in practice; the exact cost model picks the best round.
RELINEARISE_ROUNDS = 3


def _solve_at(wl: KvWorkload, system: System, restriction: Restriction, *, n_ranges: int, kv_groups: int,
              backend: str | None, time_limit_s: float, stats: dict, hidden_on_gpu: bool = True) -> Evaluated | None:
    best: Evaluated | None = None
    operating = None
    fixed = None
    for _ in range(RELINEARISE_ROUNDS):
        sol = solve_kv(wl, system, n_ranges=n_ranges, kv_groups=kv_groups, restriction=restriction,
                       backend=backend, time_limit_s=time_limit_s, operating=operating, fixed=fixed,
                       hidden_on_gpu=hidden_on_gpu)
        stats["solves"] += 1
        stats["lp_solves"] += fixed is not None
        first = fixed is None
        # Later rounds keep the first round's integer decisions (layer counts per mode, buffers,
        # head) and re-solve only the shares at the new sizes: an LP, ~10x cheaper than the MIP. On
        # 128 sweep points this changed the plan's throughput at 2 points, by at most 0.023 %.
        fixed = sol.integers if fixed is None else fixed
        stats["solve_time_s"] += sol.result.solve_time_s
        stats["backend"] = sol.result.backend
        stats["statuses"].add(sol.result.status.value)
        stats["n_variables"] = max(stats["n_variables"], sol.result.n_variables)
        if not sol.policies:
            break
        cost = evaluate(wl, system, sol.policies, head_on_gpu=sol.head_on_gpu, hidden_on_gpu=float(hidden_on_gpu))
        if not cost.feasible:  # the MIP's memory bounds are conservative, so this means a bug; never hide it
            raise PlanError(f"internal: MIP plan does not fit when evaluated exactly: short {cost.shortfalls()}")
        ev = Evaluated(workload=wl, policies=sol.policies, head_on_gpu=sol.head_on_gpu, cost=cost,
                       mode_counts=sol.mode_counts, lp_estimate_s=sol.lp_estimate_s,
                       hidden_on_gpu=float(hidden_on_gpu))
        if best is None or cost.prefill_s + cost.decode_s < best.cost.prefill_s + best.cost.decode_s:
            best = ev
        # The MIP sized buffers for whole streamed units; the LP rounds size them by the shares, as
        # the evaluator does. One LP round is owed when the MIP's buffers bind GPU memory.
        exact_owed = first and _buffers_bind(cost)
        # Settled: the solution's sizes are where its tangents were taken, or the LP already agrees.
        if not exact_owed and (sol.operating == sol.linearised_at
                               or abs(sol.lp_estimate_s - (cost.prefill_s + cost.decode_s)) < 1e-3 * sol.lp_estimate_s):
            break
        operating = sol.operating
    return best


def _buffers_bind(cost: KvCost) -> bool:
    """Whether the MIP's whole-unit buffers (an upper bound) may have cost the plan GPU room: the plan
    streams or moves something and its GPU use is within one layer's bytes of the capacity."""
    terms = dict(cost.memory.gpu_breakdown)
    buffers = terms.get("weight_buffers", 0.0) + terms.get("kv_buffers", 0.0) + terms.get("prefill_kv_staging", 0.0)
    return buffers > 0 and cost.memory.gpu_bytes > 0.9 * cost.capacity["gpu_bytes"]


def _best(cands: Sequence[Evaluated], objective: str) -> Evaluated | None:
    return min(cands, key=lambda e: _score(e.workload, e.cost, objective), default=None)


def _flexgen_tiers(sizes: Sequence[float], values: tuple[float, ...]) -> tuple[float, float, float]:
    """Bytes of one FlexGen layer's weight tensors on (GPU, host, disk). FlexGen does not split a
    tensor: each goes to the tier its size midpoint falls in, tiers stacked disk, CPU, GPU
    (FlexLLMGen ``flex_opt.py::init_weight_list`` with ``get_choice``: ``mid_percent =
    (cumsum[i] - size[i] / 2) / cumsum[-1]`` against the cumulative [disk, cpu, gpu] percentages),
    so "20 % on the GPU" is whichever tensors sit in the top fifth."""
    wg, wc = values[0], values[1]
    wd = max(0.0, 1.0 - wg - wc)
    out = [0.0, 0.0, 0.0]
    total = float(sum(sizes))
    acc = 0.0
    for size in sizes:
        acc += size
        mid = (acc - size / 2) / total
        out[2 if mid < wd else 1 if mid < wd + wc else 0] += size
    return out[0], out[1], out[2]


def flexgen_weight_tensors(model) -> tuple[list[float], list[float], list[float]]:
    """Element counts of the weight tensors of FlexGen's three kinds of layer, in its order:
    self-attention (q, k, v, out projections with their biases, then the layer norm), MLP (fc1,
    fc2 with biases, then the norm; a gated MLP's gate, up, down) and the embeddings (input: token,
    positions; output: the norm, then the token matrix). FlexLLMGen ``flex_opt.py``
    ``SelfAttention/MLP/InputEmbed/OutputEmbed.init_weight``."""
    h, q, kv, i = model.hidden, model.q_dim, model.kv_dim, model.intermediate
    bias = model.linear_bias or model.qkv_bias
    norm = [h, h] if model.layer_norm else [h]
    attn = []
    for width in (q, kv, kv):
        attn += [h * width] + ([width] if bias else [])
    attn += [q * h] + ([h] if model.linear_bias else []) + norm
    mats = [h * i, h * i, i * h] if model.gated_mlp else [h * i, i * h]
    mlp = []
    for j, size in enumerate(mats):
        mlp += [size * model.n_experts] + ([i if j < len(mats) - 1 else h] if model.linear_bias else [])
    mlp += norm
    embed = [model.vocab * h] + ([model.learned_positions * h] if model.learned_positions else []) + norm \
        + [model.vocab * h]
    return attn, mlp, embed


def flexgen_policies(wl: KvWorkload, values: tuple[float, ...], n_ranges: int,
                     cpu_attention: bool = True) -> tuple[LayerPolicy, ...]:
    """Per-layer policies of ``flexgen:wg,wc,cg,cc,hg,hc``: weights placed tensor by tensor as FlexGen
    places them (:func:`_flexgen_tiers` over attention and MLP separately), KV by its percentages, and
    every offloaded KV token attended on the CPU (FlexGen's ``--cpu-cache-compute``) or, with
    ``cpu_attention=False``, copied to the GPU."""
    _, _, cg, cc, _, _ = values
    attn, mlp, _ = flexgen_weight_tensors(wl.model)
    tiers = np.add(_flexgen_tiers(attn, values), _flexgen_tiers(mlp, values))
    g, h, d = (float(v) for v in tiers / tiers.sum())
    pol = LayerPolicy(weights=Fractions(gpu=g, host=h, disk=d),
                      kv=Fractions(gpu=cg, host=cc, disk=max(0.0, 1 - cg - cc)),
                      splits=((TokenSplit(transfer=0.0, cpu=1.0) if cpu_attention else TokenSplit()),) * n_ranges)
    return (pol,) * wl.model.n_layers


# How FlexGen's engine runs a policy (FlexLLMGen flex_opt.py): a GPU batch's whole prompt prefilled at
# once, attention and MLP as separate layers (sep_layer), batched-matmul attention, and CPU attention
# over an fp32 copy of the KV it reads (mha_gen on the CPU). KvWorkload fields, for a FlexGen policy.
FLEXGEN_ENGINE = {"prefill_chunk_tokens": 0, "stream_granularity": "sublayer", "fused_attention": False,
                  "cpu_attention_upcast": True}


def flexgen_head_on_gpu(wl: KvWorkload, values: tuple[float, ...]) -> float:
    """The GPU share of the embeddings and LM head under FlexGen's tensor placement."""
    _, _, embed = flexgen_weight_tensors(wl.model)
    g, h, d = _flexgen_tiers(embed, values)
    return g / (g + h + d)


# Baselines with no free decision but the head's place: evaluated exactly, no MIP needed.
FIXED_POLICIES = {
    "gpu-only": (Mode("gpu", "gpu"), LayerPolicy()),
    "kv-offload": (Mode("gpu", "host", MOVE), LayerPolicy(kv=Fractions(gpu=0.0, host=1.0))),
    "full-offload": (Mode("host", "host", MOVE), LayerPolicy(weights=Fractions(gpu=0.0, host=1.0),
                                                          kv=Fractions(gpu=0.0, host=1.0))),
}
# The least GPU memory each policy can use (for the shortfall of one that cannot run): its fixed
# placement, or the placement of its space that keeps least on the GPU.
_LEAST_GPU = {
    **{name: pol for name, (_, pol) in FIXED_POLICIES.items()},
    "kvpr": LayerPolicy(kv=Fractions(gpu=0.0, host=1.0), activations_on_host=True),
    "flexgen": LayerPolicy(weights=Fractions(gpu=0.0, host=1.0), kv=Fractions(gpu=0.0, host=1.0),
                           splits=(TokenSplit(transfer=0.0, cpu=1.0),)),
}


def _placements(wl: KvWorkload, system: System) -> list[tuple[bool, bool]]:
    """(head on GPU, prefill layer inputs on GPU) pairs a policy with those choices free may take, most
    GPU first: keeping prefill's layer inputs on the host only pays where they are a real share of
    GPU memory (they then cross the link twice per layer)."""
    hidden = prefill_hidden_bytes(wl, 1.0)[0]
    worth = hidden > 0.02 * capacity(system)["gpu_bytes"]
    return [(True, True)] + ([(True, False)] if worth else []) + [(False, True)] + ([(False, False)] if worth else [])


def _fixed(name: str, wl: KvWorkload, system: System, n_ranges: int, objective: str = "throughput") -> Evaluated | None:
    """A fixed-placement baseline at ``wl``: the best of its head and layer-input placements that fit."""
    mode, pol = FIXED_POLICIES[name]
    pols = (LayerPolicy(weights=pol.weights, kv=pol.kv, splits=(TokenSplit(),) * n_ranges),) * wl.model.n_layers
    found = []
    for head_on_gpu, hidden_on_gpu in _placements(wl, system):
        if not _fits(name, wl, system, head_on_gpu, hidden_on_gpu):  # checked before the costlier timing
            continue
        cost = evaluate(wl, system, pols, head_on_gpu=head_on_gpu, hidden_on_gpu=float(hidden_on_gpu))
        found.append(Evaluated(workload=wl, policies=pols, head_on_gpu=head_on_gpu, cost=cost,
                               mode_counts=((mode.name, wl.model.n_layers),), hidden_on_gpu=float(hidden_on_gpu)))
        if head_on_gpu and hidden_on_gpu:
            break  # everything on the GPU fits: never slower
    return _best(found, objective)


# What each baseline forces, for its time bound (see time_lower_bound_s).
_BOUND_ARGS = {
    "kv-offload": {"kv_actions": (KvAction.TRANSFER,), "kv_offloaded": True},
    "full-offload": {"kv_actions": (KvAction.TRANSFER,), "kv_offloaded": True, "weights_offloaded": True},
    "kvpr": {"kv_actions": (KvAction.TRANSFER, KvAction.RECOMPUTE), "kv_offloaded": True},
    "flexgen": {"kv_actions": (KvAction.CPU,)},
}


def _useful_modes(wl: KvWorkload, *, has_disk: bool) -> tuple[Mode, ...]:
    """Every mode, less those that keep activations for recompute when a layer input is at least as
    many bytes as the KV it rebuilds (GQA with few KV heads): such a mode is no better than its twin
    without activations in any resource or tier (it moves at least as many bytes, adds GPU work,
    host memory and write-back), so dropping it leaves the optimum and shrinks the MIP by a third."""
    m = wl.model
    pays = m.hidden < m.kv_elements_per_token()
    return tuple(md for md in all_modes(has_disk) if pays or not md.act)


def _fits(name: str, wl: KvWorkload, system: System, head_on_gpu: bool = True, hidden_on_gpu: bool = True) -> bool:
    """Whether a fixed-placement baseline fits in memory (no timing)."""
    pols = (FIXED_POLICIES[name][1],) * wl.model.n_layers
    return not shortfalls(memory_use(wl, pols, head_on_gpu, float(hidden_on_gpu)), capacity(system))


def _pruned(wl: KvWorkload, system: System, best: Evaluated | None, objective: str, stats: dict,
            policy: str = "") -> bool:
    """Whether no plan at ``wl.batch`` can beat ``best``: its throughput bound (batch x generated
    tokens / :func:`time_lower_bound_s`) is below ``best``'s throughput."""
    if objective != "throughput" or best is None:
        return False
    bound = -wl.batch * wl.gen_len / time_lower_bound_s(wl, system, **_BOUND_ARGS.get(policy, {}))
    if bound > _score(best.workload, best.cost, objective):
        stats["batches_pruned"] += 1
        return True
    return False


def _check_policy(name: str, system: System) -> tuple[float, ...] | None:
    values = parse_flexgen(name) if name.startswith("flexgen:") else None
    if values is None and name not in BASELINES:
        raise PlanError(f"unknown policy {name!r}; policies are {', '.join(BASELINES)} or flexgen:wg,wc,cg,cc,hg,hc")
    if values is not None and values[4] + values[5] < 1 - 1e-9:
        raise PlanError(f"{name}: hidden states on disk (hg + hc < 100) are not modelled; give hg + hc = 100")
    return values


def _needs_missing_disk(values: tuple[float, ...] | None, system: System) -> bool:
    """Whether FlexGen percentages leave weights or KV for a disk the system does not have."""
    return values is not None and system.disk is None and (values[0] + values[1] < 1 - 1e-9
                                                           or values[2] + values[3] < 1 - 1e-9)


def evaluate_policy(name: str, wl: KvWorkload, system: System, *, n_ranges: int = 4, backend: str | None = None,
                    time_limit_s: float = 10.0, stats: dict | None = None) -> PolicyResult:
    """Cost a named policy at exactly ``wl`` (its batch and GPU batch), or say why it cannot run there.

    Decisions the policy leaves free (where the head and prefill's layer inputs live; KVPR's
    recompute split; FlexGen's percentages when none are given) are chosen at their best for this
    workload. A policy that does not fit is ``infeasible``, with the bytes each tier is short of and
    every term of its need, for its least-GPU placement. Searching over batches is
    :func:`plan_kv`'s job, never this function's.
    """
    stats = stats if stats is not None else _new_stats()
    values = _check_policy(name, system)
    if _needs_missing_disk(values, system):
        return PolicyResult(name=name, workload=wl, status="infeasible",
                            reason=f"{name} puts data on disk but system {system.name!r} has no disk")
    ev = _evaluate_at(name, values, wl, system, n_ranges=n_ranges, backend=backend, time_limit_s=time_limit_s,
                      stats=stats, objective="throughput")
    if ev is not None:
        return PolicyResult(name=name, workload=wl, status="feasible", evaluated=ev, memory=ev.cost.memory)
    if values is not None:
        mem = memory_use(wl, flexgen_policies(wl, values, n_ranges, not name.endswith(":gpu-attention")),
                         flexgen_head_on_gpu(wl, values), values[4])
        what = "its placement"
    else:
        mem = memory_use(wl, (_LEAST_GPU[name],) * wl.model.n_layers, False, 0.0)
        what = "its least-GPU placement (head and prefill's layer inputs on the host)"
    cap = capacity(system)
    short = shortfalls(mem, cap)
    why = explain_shortfall(mem, cap) if short else explain_infeasible(wl, system)
    hint = ""
    if "gpu_bytes" in short and wl.micro_batch > 1:
        hint = f"; a smaller GPU batch (--gpu-batch, now {wl.micro_batch}) needs less GPU memory"
    return PolicyResult(name=name, workload=wl, status="infeasible", shortfalls=short, memory=mem,
                        reason=f"{name} does not fit at batch {wl.batch} ({what}): {why}{hint}")


def _evaluate_at(name: str, values: tuple[float, ...] | None, wl: KvWorkload, system: System, *, n_ranges: int,
                 backend: str | None, time_limit_s: float, stats: dict, objective: str) -> Evaluated | None:
    """The policy at exactly ``wl``, at its best where it leaves decisions free; None if it cannot fit."""
    if values is not None:
        pols = flexgen_policies(wl, values, n_ranges, not name.endswith(":gpu-attention"))
        cost = evaluate(wl, system, pols, head_on_gpu=flexgen_head_on_gpu(wl, values), hidden_on_gpu=values[4])
        return Evaluated(workload=wl, policies=pols, head_on_gpu=flexgen_head_on_gpu(wl, values), cost=cost,
                         hidden_on_gpu=values[4]) if cost.feasible else None
    if name in FIXED_POLICIES:
        return _fixed(name, wl, system, n_ranges, objective)
    parts = (name, "flexgen-kv-gpu") if name == "flexgen" else (name,)
    found = []
    if name == "flexgen" and _fits("gpu-only", wl, system):
        # With all the KV on the GPU, offloading weights only adds copies, so when all-GPU
        # (a FlexGen policy) fits, it is the best KV-on-GPU policy: cost it, no search.
        parts = (name,)
        found.append(_fixed("gpu-only", wl, system, n_ranges, objective))
    hidden_choices = sorted({h for _, h in _placements(wl, system)}, reverse=True)
    for part in parts:
        for hidden in hidden_choices:
            found.append(_solve_at(wl, system, _restriction(part, system.disk is not None), n_ranges=n_ranges,
                                   kv_groups=0, backend=backend, time_limit_s=time_limit_s, stats=stats,
                                   hidden_on_gpu=hidden))
    return _best([e for e in found if e is not None], objective)


def _search_policy(name: str, wl: KvWorkload, system: System, *, objective: str, n_ranges: int, backend: str | None,
                   time_limit_s: float, stats: dict, floor: Evaluated | None = None) -> tuple[Evaluated | None, str]:
    """A named policy at its best batch up to ``wl.batch`` (throughput) or at ``wl.batch`` (latency),
    for a plan's baseline table. Batches are tried from the largest down, and one that cannot beat
    the best found is skipped. ``floor`` is an evaluated policy that lies in this policy's space
    (all-GPU is a FlexGen policy): batches that cannot beat it are skipped too, and it is returned
    if nothing beats it."""
    values = _check_policy(name, system)
    best: Evaluated | None = None
    for wlb in reversed(candidate_workloads(wl, objective)):
        if _pruned(wlb, system, _best([e for e in (best, floor) if e is not None], objective), objective, stats,
                   "" if values is not None else name):
            continue
        if _needs_missing_disk(values, system):
            break
        ev = _evaluate_at(name, values, wlb, system, n_ranges=n_ranges, backend=backend, time_limit_s=time_limit_s,
                          stats=stats, objective=objective)
        best = _best([e for e in (best, ev) if e is not None], objective)
    best = _best([e for e in (best, floor) if e is not None], objective)
    if best is None:
        res = evaluate_policy(name, candidate_workloads(wl, objective)[0], system, n_ranges=n_ranges, backend=backend,
                              time_limit_s=time_limit_s, stats=stats)
        tried = f"at batch {wl.batch}" if objective == "latency" else f"at any batch up to {wl.batch}"
        return None, f"{name} does not fit {tried}: " + res.reason.split(": ", 1)[-1]
    return best, ""


def _new_stats() -> dict:
    return {"solves": 0, "solve_time_s": 0.0, "backend": None, "statuses": set(), "n_variables": 0,
            "batches_pruned": 0, "lp_solves": 0}


def explain_infeasible(wl: KvWorkload, system: System) -> str:
    """Which tier is short, by how many bytes, every term of the need, and what would fix it."""
    m = wl.model
    cap = capacity(system)
    # GPU floor: everything offloaded, the head and prefill's layer inputs on the host, CPU attention
    # (no KV buffers): what is left is working memory and the weight and KV staging buffers.
    floor = memory_use(wl, (_LEAST_GPU["flexgen"],) * m.n_layers, False, 0.0)
    if floor.gpu_bytes > cap["gpu_bytes"]:
        return (f"even with all weights and KV offloaded, {explain_shortfall(floor, {**cap, 'host_bytes': float('inf'), 'disk_bytes': float('inf')})}; "
                f"lower --batch, --gpu-batch or --prompt, or a smaller --prefill-chunk")
    weights = m.n_layers * wl.layer_weight_bytes + wl.head_weight_bytes
    kv = m.n_layers * kv_layer_bytes(wl)
    total_cap = cap["gpu_bytes"] - floor.gpu_bytes + cap["host_bytes"] + cap["disk_bytes"]
    need = weights + kv
    if need > total_cap:
        per_seq = kv / wl.batch
        fit = int((total_cap - weights) // per_seq) if total_cap > weights else 0
        fixes = ["more host memory (--set host.memory=...)"]
        if system.disk is None:
            fixes.insert(0, "a disk tier (--set disk=nvme-gen4)")
        fixes.append(f"a batch of at most {fit}" if fit >= 1 else "a shorter context")
        return (f"memory is short by {format_bytes(need - total_cap)}: weights {format_bytes(weights)} + KV "
                f"{format_bytes(kv)} (batch {wl.batch} x {wl.max_context} tokens) exceed GPU "
                f"{format_bytes(cap['gpu_bytes'] - floor.gpu_bytes)} (after {format_bytes(floor.gpu_bytes)} of buffers "
                f"and working memory) + host {format_bytes(cap['host_bytes'])} + disk {format_bytes(cap['disk_bytes'])} "
                f"usable; try {', or '.join(fixes)}")
    return ("no placement satisfies every capacity at once (buffers for streaming are counted per tier); "
            "lower --batch or add host memory")


def _layer_entries(ev: Evaluated) -> list[dict]:
    wl = ev.workload
    contexts = wl.contexts()
    bounds = range_bounds(wl.gen_len, len(ev.policies[0].splits))
    entries = []
    made: dict[int, dict] = {}  # by policy object: layers of one mode share theirs and their costs
    for i, (pol, lc) in enumerate(zip(ev.policies, ev.cost.layers)):
        if id(pol) in made:  # a copy with nested dicts of its own (entries are handed to users)
            e = made[id(pol)]
            entries.append({**e, "index": i, "weights": dict(e["weights"]), "kv": dict(e["kv"]),
                            "kv_actions": [{**a, "steps": list(a["steps"]), "context": list(a["context"])}
                                           for a in e["kv_actions"]],
                            "tokens_per_step": dict(e["tokens_per_step"]),
                            "decode_resource_s": dict(e["decode_resource_s"])})
            continue
        actions = []
        tok = {"transferred": 0.0, "recomputed": 0.0, "cpu_attended": 0.0}
        for (a, b), s in zip(bounds, pol.splits):
            actions.append({"steps": [a, b], "context": [int(contexts[a]), int(contexts[b - 1])],
                            "transfer": s.transfer, "recompute": s.recompute, "cpu": s.cpu})
            off_tokens = float(contexts[a:b].sum()) * pol.kv.offloaded / wl.gen_len
            tok["transferred"] += off_tokens * s.transfer
            tok["recomputed"] += off_tokens * s.recompute
            tok["cpu_attended"] += off_tokens * s.cpu
        entries.append({
            "index": i,
            "weights": pol.weights.as_dict(),
            "kv": pol.kv.as_dict(),
            "activations_on_host": pol.activations_on_host,
            "kv_actions": actions,
            "tokens_per_step": tok,  # per sequence, mean over decode steps
            "prefill_s": lc.prefill_s,
            "step_time_s": lc.step_s,
            "binding": lc.binding.value,
            "decode_resource_s": {r.value: v for r, v in lc.decode},
        })
        made[id(pol)] = entries[-1]
    return entries


def plan_kv(wl: KvWorkload, system: System, *, objective: str = "throughput", n_ranges: int = 4,
            kv_groups: int = 0, backend: str | None = None, time_limit_s: float = 10.0,
            baselines: Sequence[str] = BASELINES, simulate: bool = True) -> Plan:
    """Plan weights and KV placement and per-token actions for every layer.

    Parameters
    ----------
    wl : KvWorkload
        Model and lengths; ``wl.batch`` is the largest batch (throughput) or the batch (latency).
    system : System
        Hardware profile.
    objective : {"throughput", "latency"}
        Maximise generated tokens per second over candidate batches, or minimise total time at ``wl.batch``.
    n_ranges : int
        Decode context ranges that may each use their own token split.
    kv_groups : int
        Place KV per group of heads (integer groups per layer) instead of by token share.

    Besides the per-layer placements, the plan decides where the head and prefill's layer inputs
    live, and, at a batch that does not fit whole, splits it into GPU batches (halving the GPU
    batch up to three times) unless ``wl.gpu_batch`` fixes the split.
    """
    if objective not in OBJECTIVES:
        raise PlanError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if kv_groups and wl.model.n_kv_heads % kv_groups:
        raise PlanError(f"--kv-groups must divide the model's {wl.model.n_kv_heads} KV heads, got {kv_groups}")
    started = time.perf_counter()
    stats = _new_stats()
    # Baselines first: the cheap fixed ones bound what the MIP's batch search must beat, and
    # all-GPU, a FlexGen policy, is where FlexGen's search starts.
    base = {}
    base_evals: dict[str, Evaluated] = {}
    for name in sorted(baselines, key=lambda n: (n not in FIXED_POLICIES, n)):
        floor = base_evals.get("gpu-only") if name == "flexgen" else None
        ev, reason = _search_policy(name, wl, system, objective=objective, n_ranges=n_ranges, backend=backend,
                                    time_limit_s=time_limit_s, stats=stats, floor=floor)
        if ev is not None:
            base_evals[name] = ev
        base[name] = ({"status": "infeasible", "reason": reason} if ev is None
                      else {"status": "feasible", "predicted": metrics(ev.workload, ev.cost),
                            "mode_counts": dict(ev.mode_counts)})
    base = {name: base[name] for name in baselines}
    floor = _best(list(base_evals.values()), objective)
    best: Evaluated | None = None
    no_disk = Restriction(modes=_useful_modes(wl, has_disk=False))
    for cand in reversed(candidate_workloads(wl, objective)):
        b = cand.batch
        # A batch that cannot beat the best plan so far, or the best baseline, is skipped.
        if _pruned(cand, system, _best([e for e in (best, floor) if e is not None], objective), objective, stats):
            continue
        # Disk modes nest the host modes (a disk mode with no disk share is a host mode), and that
        # symmetry makes the MIP ~5x slower. Disk only stands in for host memory, so it is added
        # only when the problem without it is infeasible or leaves under 10 % of host memory free.
        splits = [cand.gpu_batch] if wl.gpu_batch else [0] + [b >> k for k in (1, 2, 3) if b % (1 << k) == 0]
        for gb in splits:
            wlb = wl.with_batch(b, gpu_batch=gb if gb != b else 0)
            ev = None
            for hidden in sorted({h for _, h in _placements(wlb, system)}, reverse=True):
                found = _solve_at(wlb, system, no_disk, n_ranges=n_ranges, kv_groups=kv_groups,
                                  backend=backend, time_limit_s=time_limit_s, stats=stats, hidden_on_gpu=hidden)
                host_tight = found is None or found.cost.memory.host_bytes > 0.9 * found.cost.capacity["host_bytes"]
                if system.disk is not None and host_tight:
                    with_disk = _solve_at(wlb, system, Restriction(modes=_useful_modes(wl, has_disk=True)),
                                          n_ranges=n_ranges, kv_groups=kv_groups, backend=backend,
                                          time_limit_s=time_limit_s, stats=stats, hidden_on_gpu=hidden)
                    found = _best([e for e in (found, with_disk) if e is not None], objective)
                ev = _best([e for e in (ev, found) if e is not None], objective)
            best = _best([e for e in (best, ev) if e is not None], objective)
            if ev is not None:
                break  # the batch fits as GPU batches of this size: smaller ones only add launches
    # The baselines are points of the MIP's space; if the exact model ranks one above the MIP's
    # choice (the LP linearises small-op efficiencies), take its decisions and say so.
    # (With no MIP plan left, every batch was skipped as unable to beat the best baseline.)
    selected = "mip"
    for name in baselines:
        if name in base_evals and (best is None or _score(base_evals[name].workload, base_evals[name].cost, objective)
                                   < _score(best.workload, best.cost, objective) - 1e-12):
            best, selected = base_evals[name], f"baseline:{name}"
    hw = system.summary()
    solver_info = {"selected_from": selected, "backend": stats["backend"], "solves": stats["solves"],
                   "solve_time_s": stats["solve_time_s"], "statuses": sorted(stats["statuses"]),
                   "n_variables": stats["n_variables"], "batch_candidates": [w.batch for w in candidate_workloads(wl, objective)],
                   "batches_pruned": stats["batches_pruned"], "lp_solves": stats["lp_solves"],
                   "kv_groups": kv_groups, "n_ranges": n_ranges}
    if best is None:
        solver_info["wall_time_s"] = time.perf_counter() - started
        status = SolveStatus.INFEASIBLE if SolveStatus.INFEASIBLE.value in stats["statuses"] else SolveStatus.TIME_LIMIT
        solver_info["status"] = status.value
        return Plan(kind="kv", status=status.value, objective=objective, workload=wl.summary(), hardware=hw,
                    capacity=capacity(system), baselines=base, solver=solver_info,
                    explanation=explain_infeasible(candidate_workloads(wl, objective)[0], system))
    pred = metrics(best.workload, best.cost)
    for entry in base.values():
        if entry["status"] == "feasible":
            entry["speedup"] = pred["tokens_per_s"] / entry["predicted"]["tokens_per_s"] if objective == "throughput" \
                else entry["predicted"]["total_s"] / pred["total_s"]
    solver_info["lp_estimate_s"] = best.lp_estimate_s
    solver_info["mode_counts"] = dict(best.mode_counts)
    if simulate:
        t = time.perf_counter()
        sim_prefill, sim_decode = simulated_total_s(best.workload, system, best.policies, head_on_gpu=best.head_on_gpu)
        solver_info["simulated"] = {"prefill_s": sim_prefill, "decode_s": sim_decode,
                                    "total_s": sim_prefill + sim_decode, "time_s": time.perf_counter() - t}
    solver_info["wall_time_s"] = time.perf_counter() - started
    status = SolveStatus.OPTIMAL if stats["statuses"] <= {SolveStatus.OPTIMAL.value, SolveStatus.INFEASIBLE.value} \
        else SolveStatus.FEASIBLE
    solver_info["status"] = status.value  # optimal: every MIP proven optimal; feasible: a time limit stopped one
    mem = best.cost.memory
    return Plan(
        kind="kv", status=status.value, objective=objective,
        workload={**best.workload.summary(), "max_batch": wl.batch},
        hardware=hw, predicted=pred, memory=memory_record(mem),
        capacity=best.cost.capacity, units=tuple(_layer_entries(best)),
        extras={"head": {"on_gpu": best.head_on_gpu, "step_s": best.cost.head_step_s},
                "activations": {"prefill_hidden_on_gpu": best.hidden_on_gpu},
                "context_ranges": [{"steps": [a, b]} for a, b in range_bounds(wl.gen_len, n_ranges)]},
        baselines=base, solver=solver_info,
    )


def memory_record(mem: Memory) -> dict:
    """A plan's ``memory`` field: bytes per tier, the GPU's per-phase peaks and every term."""
    return {**mem.as_dict(), "gpu_prefill_bytes": mem.gpu_prefill_bytes, "gpu_decode_bytes": mem.gpu_decode_bytes,
            "gpu_peak_phase": mem.peak_phase, "gpu_breakdown": dict(mem.gpu_breakdown),
            "host_breakdown": dict(mem.host_breakdown)}


def workload_from_plan(plan: Plan, model: TransformerSpec | None = None) -> KvWorkload:
    """The workload a KV plan was made for (its batch, GPU batch, chunking and streaming included);
    its model by bundled name when it is one (paths differ between machines), else its config file."""
    w = plan.workload
    if model is None:
        name = w["model"]
        model = load_model(name if name in list_models() else w.get("model_file") or name)
    return KvWorkload.from_summary(w, model)


def evaluate_plan(plan: Plan, wl: KvWorkload, system: System) -> tuple[KvCost, dict[str, float]]:
    """Re-cost a plan's decisions on (possibly other) hardware."""
    pols, head = plan.policies()
    if len(pols) != wl.model.n_layers:
        raise PlanError(f"plan has {len(pols)} layers but model {wl.model.name!r} has {wl.model.n_layers}")
    hidden = float(plan.activations.get("prefill_hidden_on_gpu", 1.0))
    cost = evaluate(wl, system, pols, head_on_gpu=head, hidden_on_gpu=hidden)
    return cost, metrics(wl, cost)


__all__ = ["BASELINES", "OBJECTIVES", "Evaluated", "PolicyResult", "batch_candidates", "evaluate_plan",
           "evaluate_policy", "explain_infeasible", "memory_record", "metrics", "parse_flexgen", "plan_kv",
           "workload_from_plan"]

