"""Cost of LLM inference with weights and KV cache spread over GPU, host and disk.

One layer's work in a decode step overlaps its own transfers (the prefetch of the next layer runs
while this one computes, one copy engine per direction), so a layer takes the longest of its
resources: GPU compute, H2D, D2H, disk and the CPU-attention chain (FlexGen's cost model,
Sheng et al., ICML 2023, section 4.2). For KV not on the GPU, each context token is either
transferred, recomputed on the GPU from host-stored activations (KVPR, Jiang et al., 2024), or
attended on the CPU where it lives (FlexGen's CPU attention).

The per-unit costs (:class:`UnitCosts`) are shared by the exact evaluator below and by the solver's
linear program, so the two can only differ where the LP linearises a size-dependent efficiency.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from costmodel.errors import WorkloadError
from costmodel.roofline import Op, Processor, roofline_time_s
from costmodel.transformer import TransformerSpec
from hwprofiles import Link, OpClass, System

# A batch at or below this many rows makes a GEMM a GEMV-like (memory-bound, low-occupancy) kernel.
GEMV_MAX_ROWS = 8
# Bytes of the log-sum-exp kept per head and token to merge CPU and GPU partial attention (fp32).
LSE_BYTES = 4


class Tier(enum.StrEnum):
    GPU = "gpu"
    HOST = "host"
    DISK = "disk"


class KvAction(enum.StrEnum):
    """What happens to a KV token that does not live on the GPU, each decode step."""

    TRANSFER = "transfer"
    RECOMPUTE = "recompute"
    CPU = "cpu"


class Resource(enum.StrEnum):
    GPU = "gpu"
    H2D = "h2d"
    D2H = "d2h"
    DISK = "disk"
    CPU = "cpu"
    CPU_CHAIN = "cpu_chain"


@dataclass(frozen=True, slots=True, kw_only=True)
class KvWorkload:
    """Batch inference: ``batch`` sequences of ``prompt_len`` tokens generating ``gen_len`` each.

    Decode step ``j`` (0-based) attends over ``prompt_len + j + 1`` tokens.
    """

    model: TransformerSpec
    batch: int
    prompt_len: int
    gen_len: int
    dtype_bytes: int = 2
    prefill_chunk_tokens: int = 4096
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "gen_len", "dtype_bytes", "prefill_chunk_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise WorkloadError(f"{name} must be a positive integer, got {value!r}")
        # Hashed once (a cache key of the cost model, with the model's fields inside).
        object.__setattr__(self, "_hash", hash((self.model, self.batch, self.prompt_len, self.gen_len,
                                                self.dtype_bytes, self.prefill_chunk_tokens)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def max_context(self) -> int:
        return self.prompt_len + self.gen_len

    def contexts(self) -> np.ndarray:
        """Tokens attended at each decode step."""
        return self.prompt_len + 1 + np.arange(self.gen_len)

    def with_batch(self, batch: int) -> KvWorkload:
        return KvWorkload(model=self.model, batch=batch, prompt_len=self.prompt_len, gen_len=self.gen_len,
                          dtype_bytes=self.dtype_bytes, prefill_chunk_tokens=self.prefill_chunk_tokens)

    def summary(self) -> dict[str, object]:
        return {"model": self.model.name, "model_file": self.model.source, "batch": self.batch, "prompt_len": self.prompt_len,
                "gen_len": self.gen_len, "dtype_bytes": self.dtype_bytes,
                "prefill_chunk_tokens": self.prefill_chunk_tokens}


def range_bounds(gen_len: int, n_ranges: int) -> list[tuple[int, int]]:
    """Split decode steps ``[0, gen_len)`` into ``n_ranges`` contiguous ranges of near-equal size.

    >>> range_bounds(10, 3)
    [(0, 3), (3, 7), (7, 10)]
    """
    n = max(1, min(n_ranges, gen_len))
    edges = np.linspace(0, gen_len, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------------------------------------
# Ops of one layer
# ---------------------------------------------------------------------------------------------


def _gemm(name: str, rows: float, k: int, n: int, dt: int, weight_bytes: float | None = None) -> Op:
    wb = k * n * dt if weight_bytes is None else weight_bytes
    return Op(name=name, op_class=OpClass.GEMV if rows <= GEMV_MAX_ROWS else OpClass.GEMM,
              flop=2.0 * rows * k * n, bytes=wb + (rows * k + rows * n) * dt)


def dense_ops(model: TransformerSpec, tokens: int, dt: int) -> list[Op]:
    """The non-attention ops of one layer over ``tokens`` rows (a decode step: tokens = batch)."""
    h, q, kv, i = model.hidden, model.q_dim, model.kv_dim, model.intermediate
    ops = [
        Op(name="norm1", op_class=OpClass.ELEMENTWISE, flop=5.0 * tokens * h, bytes=2.0 * tokens * h * dt),
        _gemm("qkv_proj", tokens, h, q + 2 * kv, dt),
        Op(name="rope", op_class=OpClass.ELEMENTWISE, flop=3.0 * tokens * (q + kv), bytes=2.0 * tokens * (q + kv) * dt),
        _gemm("o_proj", tokens, q, h, dt),
        Op(name="norm2", op_class=OpClass.ELEMENTWISE, flop=5.0 * tokens * h, bytes=2.0 * tokens * h * dt),
    ]
    per_expert_mats = 3 if model.gated_mlp else 2
    if model.n_experts == 1:
        ops.append(_gemm("mlp_up", tokens, h, (per_expert_mats - 1) * i, dt))
        ops.append(_gemm("mlp_down", tokens, i, h, dt))
    else:
        e, k = model.n_experts, model.experts_per_token
        ops.append(_gemm("router", tokens, h, e, dt))
        # Expected distinct experts hit when each token picks k distinct experts (uniform router):
        # an expert is missed by one token with probability 1 - k/e, so hit = e * (1 - (1 - k/e)^tokens).
        hit = e * (1.0 - (1.0 - k / e) ** tokens)
        rows = tokens * k
        ops.append(_gemm("experts_up", rows, h, 2 * i, dt, weight_bytes=hit * h * 2 * i * dt))
        ops.append(_gemm("experts_down", rows, i, h, dt, weight_bytes=hit * i * h * dt))
    return ops


def attention_op(model: TransformerSpec, batch: int, query_len: int, context, dt: int, *, causal: bool) -> tuple:
    """FLOPs and bytes of attention of ``query_len`` new tokens over ``context`` tokens (arrays ok).

    Decode reads the whole K and V (2 * kv_dim * dtype bytes per token); prefill with a fused
    (flash) kernel reads Q, K, V and writes O once.
    """
    context = np.asarray(context, dtype=float)
    pairs = query_len * context / (2.0 if causal else 1.0)
    flop = 4.0 * batch * pairs * model.q_dim
    if query_len == 1:
        nbytes = batch * context * 2 * model.kv_dim * dt + 2.0 * batch * model.q_dim * dt
    else:
        nbytes = batch * query_len * (2 * model.q_dim + 2 * model.kv_dim) * dt
    return flop, nbytes


def head_ops(model: TransformerSpec, rows: int, dt: int) -> list[Op]:
    """Final norm and LM head over ``rows`` positions (only the last position of each sequence)."""
    return [
        Op(name="final_norm", op_class=OpClass.ELEMENTWISE, flop=5.0 * rows * model.hidden,
           bytes=2.0 * rows * model.hidden * dt),
        _gemm("lm_head", rows, model.hidden, model.vocab, dt),
    ]


def ops_time_s(ops: Sequence[Op], proc: Processor) -> float:
    return float(sum(roofline_time_s(op.flop, op.bytes, op.op_class, proc) for op in ops))


# ---------------------------------------------------------------------------------------------
# Per-unit costs shared by the evaluator and the LP
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitCosts:
    """Costs of one layer for one batch, per unit of each decision (seconds, bytes).

    ``*_per_token`` values are for one context position of every sequence in the batch.
    """

    dense_gpu_s: float
    attn_gpu_s_per_token: float
    recompute_gpu_s_per_token: float  # slope of the tangent at the operating size
    recompute_gpu_fixed_s: float  # intercept of that tangent (small ops run below peak efficiency)
    attn_cpu_s_per_token: float
    attn_cpu_fixed_s: float
    weight_bytes: float
    kv_bytes_per_token: float
    act_bytes_per_token: float
    q_bytes: float  # D2H per layer per step for CPU attention (the queries)
    o_bytes: float  # H2D back: partial outputs and their log-sum-exp
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    link_latency_s: float
    bidir_penalty: float  # extra time per overlapped byte: (1/bidirectional_factor - 1)
    disk_read_bytes_per_s: float
    disk_write_bytes_per_s: float
    disk_latency_s: float


@functools.lru_cache(maxsize=1024)
def dense_gpu_s(wl: KvWorkload, system: System) -> float:
    """GPU time of one layer's non-attention ops in a decode step, with the attention kernels' launches.

    Cached: the same layer at the same batch is costed for every context range, solve and baseline.
    """
    gpu = Processor.gpu(system.gpu)
    return ops_time_s(dense_ops(wl.model, wl.batch, wl.dtype_bytes), gpu) + 2 * gpu.launch_overhead_s


def _size_time_s(wl: KvWorkload, system: System, what: str, t: float) -> float:
    """Time of a size-dependent op over ``t`` context positions of every sequence (no launch)."""
    m, b, dt = wl.model, wl.batch, wl.dtype_bytes
    if what == "gpu_attention":
        flop, nbytes = attention_op(m, b, 1, t, dt, causal=False)
        return float(roofline_time_s(float(flop), float(nbytes), OpClass.ATTENTION, Processor.gpu(system.gpu), launches=0))
    if what == "cpu_attention":  # in fp32 on the CPU
        flop, nbytes = attention_op(m, b, 1, t, 4 if dt < 4 else dt, causal=False)
        return float(roofline_time_s(float(flop), float(nbytes), OpClass.ATTENTION, Processor.cpu(system.host),
                                     launches=0))
    # recompute: K and V projections of t positions per sequence from stored layer inputs, plus RoPE on K.
    gpu = Processor.gpu(system.gpu)
    op = _gemm("kv_recompute", b * t, m.hidden, 2 * m.kv_dim, dt, weight_bytes=0.0)
    rope = roofline_time_s(3.0 * b * t * m.kv_dim, 2.0 * b * t * m.kv_dim * dt, OpClass.ELEMENTWISE, gpu, launches=0)
    return float(roofline_time_s(op.flop, op.bytes, op.op_class, gpu, launches=0) + rope)


@functools.lru_cache(maxsize=8192)
def _per_token_s(wl: KvWorkload, system: System, what: str, tokens: float) -> float:
    """Mean time per position of an op over ``tokens`` positions (cached like :func:`_tangent`)."""
    return _size_time_s(wl, system, what, tokens) / tokens


@functools.lru_cache(maxsize=8192)
def _tangent(wl: KvWorkload, system: System, what: str, tokens: float) -> tuple[float, float]:
    """(intercept, slope) of the tangent to an op's time at ``tokens``. Time grows sub-linearly with
    size (efficiency rises with size), so the tangent over-estimates elsewhere and is exact here.
    Cached: evaluations and re-solves ask again for the same sizes (and all ask at 1 for unused ops)."""
    f0, f1 = _size_time_s(wl, system, what, tokens), _size_time_s(wl, system, what, tokens * 1.01)
    slope = (f1 - f0) / (0.01 * tokens)
    return max(f0 - slope * tokens, 0.0), slope


def unit_costs(wl: KvWorkload, system: System, *, context: float, gpu_attn_tokens: float,
               recompute_tokens: float, cpu_tokens: float) -> UnitCosts:
    """Per-unit costs of a decode step at ``context``.

    The ``*_tokens`` arguments are the operating sizes (context positions per sequence) at which
    the size-dependent efficiencies are read; the evaluator passes the real sizes, the LP its
    linearisation point.
    """
    m, b, dt = wl.model, wl.batch, wl.dtype_bytes
    kv_tok = b * m.kv_elements_per_token() * dt
    act_tok = b * m.hidden * dt
    link = system.link
    disk = system.disk
    rec_fixed, rec_slope = _tangent(wl, system, "recompute", max(float(recompute_tokens), 1.0))
    cpu_fixed, cpu_slope = _tangent(wl, system, "cpu_attention", max(float(cpu_tokens), 1.0))
    return UnitCosts(
        dense_gpu_s=dense_gpu_s(wl, system),
        attn_gpu_s_per_token=_per_token_s(wl, system, "gpu_attention", max(float(gpu_attn_tokens), 1.0)),
        recompute_gpu_s_per_token=rec_slope,
        recompute_gpu_fixed_s=rec_fixed,
        attn_cpu_s_per_token=cpu_slope,
        attn_cpu_fixed_s=cpu_fixed,
        weight_bytes=m.layer_params() * dt,
        kv_bytes_per_token=kv_tok,
        act_bytes_per_token=act_tok,
        q_bytes=b * m.q_dim * dt,
        o_bytes=b * m.q_dim * dt + b * m.n_heads * LSE_BYTES,
        h2d_bytes_per_s=link.h2d_bytes_per_s,
        d2h_bytes_per_s=link.d2h_bytes_per_s,
        link_latency_s=link.latency_s,
        bidir_penalty=1.0 / link.bidirectional_factor - 1.0,
        disk_read_bytes_per_s=disk.read_bytes_per_s if disk else float("inf"),
        disk_write_bytes_per_s=disk.write_bytes_per_s if disk else float("inf"),
        disk_latency_s=disk.latency_s if disk else 0.0,
    )


# UnitCosts fields that depend on the context and operating sizes (the rest depend on the batch only).
_SIZED_FIELDS = ("attn_gpu_s_per_token", "recompute_gpu_s_per_token", "recompute_gpu_fixed_s", "attn_cpu_s_per_token",
                 "attn_cpu_fixed_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefillCosts:
    """Per-layer prefill costs for the whole batch (all prompt tokens)."""

    gpu_s: float
    weight_bytes: float
    kv_bytes: float
    act_bytes: float


@functools.lru_cache(maxsize=1024)
def prefill_costs(wl: KvWorkload, system: System) -> PrefillCosts:
    m, dt = wl.model, wl.dtype_bytes
    gpu = Processor.gpu(system.gpu)
    tokens = wl.batch * wl.prompt_len
    chunks = -(-tokens // wl.prefill_chunk_tokens)
    rows = tokens / chunks
    dense = chunks * ops_time_s(dense_ops(m, int(rows), dt), gpu)
    flop, nbytes = attention_op(m, wl.batch, wl.prompt_len, wl.prompt_len, dt, causal=True)
    attn = float(roofline_time_s(flop, nbytes, OpClass.ATTENTION, gpu))
    return PrefillCosts(gpu_s=dense + attn, weight_bytes=m.layer_params() * dt,
                        kv_bytes=tokens * m.kv_elements_per_token() * dt, act_bytes=tokens * m.hidden * dt)


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Fractions:
    """Shares of something over the three tiers; they sum to one."""

    gpu: float = 1.0
    host: float = 0.0
    disk: float = 0.0

    def __post_init__(self) -> None:
        values = (self.gpu, self.host, self.disk)
        # 1e-6: LP solutions are exact only to the solver's feasibility tolerance.
        if min(values) < -1e-6 or abs(sum(values) - 1.0) > 1e-6:
            raise WorkloadError(f"tier fractions must be non-negative and sum to 1, got {values}")

    @property
    def offloaded(self) -> float:
        return self.host + self.disk

    def as_dict(self) -> dict[str, float]:
        return {"gpu": self.gpu, "host": self.host, "disk": self.disk}


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSplit:
    """Shares of the offloaded KV tokens transferred, recomputed and attended on the CPU."""

    transfer: float = 1.0
    recompute: float = 0.0
    cpu: float = 0.0

    def __post_init__(self) -> None:
        values = (self.transfer, self.recompute, self.cpu)
        if min(values) < -1e-6 or abs(sum(values) - 1.0) > 1e-6:
            raise WorkloadError(f"token split must be non-negative and sum to 1, got {values}")

    def as_dict(self) -> dict[str, float]:
        return {"transfer": self.transfer, "recompute": self.recompute, "cpu": self.cpu}


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerPolicy:
    """Where one layer's weights and KV live and what happens to its offloaded KV tokens.

    ``splits`` has one entry per context range (:func:`range_bounds`); ``activations_on_host``
    keeps every token's layer input on the host so that any share of tokens can be recomputed.
    """

    weights: Fractions = field(default_factory=Fractions)
    kv: Fractions = field(default_factory=Fractions)
    activations_on_host: bool = False
    splits: tuple[TokenSplit, ...] = (TokenSplit(),)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.activations_on_host and any(s.recompute > 1e-6 for s in self.splits):
            raise WorkloadError("recompute needs activations_on_host=True (the layer inputs to recompute from)")
        # Hashed once: the evaluator groups layers by policy on every call.
        object.__setattr__(self, "_hash", hash((self.weights, self.kv, self.activations_on_host, self.splits)))

    def __hash__(self) -> int:
        return self._hash


# ---------------------------------------------------------------------------------------------
# Exact evaluation
# ---------------------------------------------------------------------------------------------


def layer_step_times(uc: UnitCosts, pol_w: Fractions, pol_kv: Fractions, act: bool, split: TokenSplit,
                     context) -> dict[Resource, np.ndarray]:
    """Each resource's time for one layer in one decode step (arrays over ``context``)."""
    return _step_times(uc, pol_w, pol_kv, act, split.transfer, split.recompute, split.cpu, context)


def _step_times(uc: UnitCosts, pol_w: Fractions, pol_kv: Fractions, act: bool, transfer, recompute, cpu,
                context) -> dict[Resource, np.ndarray]:
    """:func:`layer_step_times` where the token split, and the size-dependent fields of ``uc``, may be
    arrays over the steps (the evaluator costs every context range of a layer in one pass)."""
    c = np.asarray(context, dtype=float)
    off = pol_kv.offloaded
    x_tok, r_tok, c_tok = c * (off * transfer), c * (off * recompute), c * (off * cpu)
    uses_cpu = (off > 0) & (np.asarray(cpu) > 0)
    h2d_bytes = (pol_w.offloaded * uc.weight_bytes + x_tok * uc.kv_bytes_per_token
                 + r_tok * uc.act_bytes_per_token + np.where(uses_cpu, uc.o_bytes, 0.0))
    if off > 0 or act:
        d2h_bytes = (off * uc.kv_bytes_per_token + (uc.act_bytes_per_token if act else 0.0)
                     + np.where(uses_cpu, uc.q_bytes, 0.0)) + np.zeros_like(c)
    else:
        d2h_bytes = np.zeros_like(c)
    # Counts of copies per step (numpy adds boolean arrays as "or", so count in floats).
    n_h2d = (float(pol_w.offloaded > 0) + np.greater(off * np.asarray(transfer), 0).astype(float)
             + np.greater(off * np.asarray(recompute), 0).astype(float) + uses_cpu.astype(float))
    n_d2h = float(off > 0) + float(act) + uses_cpu.astype(float)
    overlap = np.minimum(h2d_bytes, d2h_bytes) * uc.bidir_penalty
    cpu_s = np.where(c_tok > 0, uc.attn_cpu_fixed_s + c_tok * uc.attn_cpu_s_per_token, 0.0)
    times = {
        Resource.GPU: uc.dense_gpu_s + (c - c_tok) * uc.attn_gpu_s_per_token
        + np.where(r_tok > 0, uc.recompute_gpu_fixed_s + r_tok * uc.recompute_gpu_s_per_token, 0.0),
        Resource.H2D: n_h2d * uc.link_latency_s + (h2d_bytes + overlap) / uc.h2d_bytes_per_s,
        Resource.D2H: n_d2h * uc.link_latency_s + (d2h_bytes + overlap) / uc.d2h_bytes_per_s,
        Resource.DISK: ((pol_w.disk > 0) + (pol_kv.disk > 0)) * uc.disk_latency_s
        + (pol_w.disk * uc.weight_bytes + c * pol_kv.disk * uc.kv_bytes_per_token) / uc.disk_read_bytes_per_s
        + pol_kv.disk * uc.kv_bytes_per_token / uc.disk_write_bytes_per_s,
        Resource.CPU: cpu_s,
        Resource.CPU_CHAIN: np.where(uses_cpu, uc.dense_gpu_s + 2 * uc.link_latency_s + uc.q_bytes / uc.d2h_bytes_per_s
                                     + uc.o_bytes / uc.h2d_bytes_per_s + cpu_s, 0.0),
    }
    return {k: np.broadcast_to(np.asarray(v, dtype=float), c.shape) for k, v in times.items()}


def layer_prefill_times(pc: PrefillCosts, uc: UnitCosts, pol_w: Fractions, pol_kv: Fractions, act: bool) -> dict[Resource, float]:
    off = pol_kv.offloaded
    h2d = pol_w.offloaded * pc.weight_bytes
    d2h = off * pc.kv_bytes + (pc.act_bytes if act else 0.0)
    overlap = min(h2d, d2h) * uc.bidir_penalty
    return {
        Resource.GPU: pc.gpu_s,
        Resource.H2D: (h2d > 0) * uc.link_latency_s + (h2d + overlap) / uc.h2d_bytes_per_s,
        Resource.D2H: ((off > 0) + act) * uc.link_latency_s + (d2h + overlap) / uc.d2h_bytes_per_s,
        Resource.DISK: ((pol_w.disk > 0) + (pol_kv.disk > 0)) * uc.disk_latency_s
        + pol_w.disk * pc.weight_bytes / uc.disk_read_bytes_per_s + pol_kv.disk * pc.kv_bytes / uc.disk_write_bytes_per_s,
        Resource.CPU: 0.0,
        Resource.CPU_CHAIN: 0.0,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadCosts:
    """Embeddings, final norm and LM head: kept on the GPU, or on the host and streamed each step."""

    bytes: float
    gpu_s: float

    def step_s(self, on_gpu: bool, link: Link) -> float:
        """One pass of the head: its GPU time, or (streamed) the longer of that and its H2D copy."""
        if on_gpu:
            return self.gpu_s
        return max(self.gpu_s, link.latency_s + self.bytes / link.h2d_bytes_per_s)


@functools.lru_cache(maxsize=1024)
def head_costs(wl: KvWorkload, system: System) -> HeadCosts:
    m, dt = wl.model, wl.dtype_bytes
    gpu = Processor.gpu(system.gpu)
    t = ops_time_s(head_ops(m, wl.batch, dt), gpu)
    return HeadCosts(bytes=m.head_params() * dt, gpu_s=t)


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """Bytes per tier, with what they hold."""

    gpu_bytes: float
    host_bytes: float
    disk_bytes: float
    gpu_breakdown: tuple[tuple[str, float], ...]
    host_breakdown: tuple[tuple[str, float], ...]

    def as_dict(self) -> dict[str, float]:
        return {"gpu_bytes": self.gpu_bytes, "host_bytes": self.host_bytes, "disk_bytes": self.disk_bytes}


def capacity(system: System) -> dict[str, float]:
    """Usable bytes per tier (capacity less the reserved share)."""
    return {
        "gpu_bytes": system.gpu.memory_bytes - system.gpu.reserved_bytes,
        "host_bytes": system.host.memory_bytes - system.host.reserved_bytes,
        "disk_bytes": system.disk.capacity_bytes if system.disk else 0.0,
    }


def working_bytes(wl: KvWorkload) -> float:
    """GPU activations and scratch: the larger of prefill (hidden states of every prompt token, one
    chunk's intermediates) and a decode step; plus fp32 logits of the last positions."""
    m, dt, b = wl.model, wl.dtype_bytes, wl.batch
    per_row = (m.q_dim + 2 * m.kv_dim + 2 * m.experts_per_token * m.intermediate + 2 * m.hidden) * dt
    tokens = b * wl.prompt_len
    prefill = 2 * tokens * m.hidden * dt + min(tokens, wl.prefill_chunk_tokens) * per_row
    decode = 2 * b * m.hidden * dt + b * per_row
    return max(prefill, decode) + b * m.vocab * 4


def _best_time_s(proc: Processor, op_classes: Sequence[OpClass], flop: float, nbytes: float) -> float:
    """An op's time at the processor's best efficiencies (over ``op_classes``, the classes its size
    may give it): never more than its roofline time at any size."""
    best_compute = max(max(proc.curves.compute_curve(c).values) for c in op_classes)
    return max(flop / (proc.peak_flop_per_s * best_compute),
               nbytes / (proc.memory_bytes_per_s * max(proc.curves.memory.values)))


def _best_attention_s_per_token(wl: KvWorkload, proc: Processor, dt: int) -> float:
    """Decode attention per context position (every sequence of the batch): its K and V bytes and
    its FLOPs (see attention_op), at the processor's best."""
    m, b = wl.model, wl.batch
    return _best_time_s(proc, (OpClass.ATTENTION,), 4.0 * b * m.q_dim, b * 2 * m.kv_dim * dt)


def _all_kv_over_link_s(wl: KvWorkload, system: System, gpu_s, positions, link_s: float, recompute: bool,
                        transfer: bool):
    """Least step time when every KV position comes over the link, as KV (transfer) or as the layer
    input plus GPU work (recompute), beside ``gpu_s`` of other GPU work and ``link_s`` of other
    copies: the GPU time grows and the link time shrinks with the recomputed share, so the least
    of their maximum is where they cross (or an end)."""
    m, b, dt = wl.model, wl.batch, wl.dtype_bytes
    h2d = system.link.h2d_bytes_per_s
    kv_b, act_b = b * m.kv_elements_per_token() * dt, b * m.hidden * dt  # bytes per position
    if not recompute:
        return np.maximum(gpu_s, link_s + positions * kv_b / h2d)
    # Recompute per position: the K/V projection (a GEMM, or a GEMV for few rows) at the GPU's best.
    rec_s = _best_time_s(Processor.gpu(system.gpu), (OpClass.GEMM, OpClass.GEMV), 2.0 * b * m.hidden * 2 * m.kv_dim,
                         b * (m.hidden + 2 * m.kv_dim) * dt)
    if not transfer:
        return np.maximum(gpu_s + positions * rec_s, link_s + positions * act_b / h2d)
    link_all = link_s + positions * kv_b / h2d  # nothing recomputed
    saving = (kv_b - act_b) / h2d  # link time saved per recomputed position
    if saving <= 0:
        return np.maximum(gpu_s, link_all)
    y = np.clip((link_all - gpu_s) / (rec_s + saving), 0.0, positions)
    return np.maximum(gpu_s + rec_s * y, link_all - saving * y)


def time_lower_bound_s(wl: KvWorkload, system: System, *, kv_actions: Sequence[KvAction] = tuple(KvAction),
                       kv_offloaded: bool = False, weights_offloaded: bool = False) -> float:
    """Prefill + decode seconds that no placement at this batch can beat (:func:`evaluate` never
    returns less for any feasible policy).

    A layer's time is the longest of its resources, so a step takes at least the sum over layers of
    any one resource, and every op takes at least its time at the processor's best efficiency.
    Each decode step, per step:

    - every layer's dense GPU work, and attention over every position, on the GPU or (offloaded
      positions) the CPU side by side: at least their balanced split;
    - whatever does not fit on the GPU beside the working memory (and the head, if it stays) is off
      the GPU: offloaded weights cross the link; an offloaded KV position crosses it as KV
      (transfer) or as the layer input (recompute), or is attended on the CPU. Given a step time T,
      the link and the CPU together serve at most ``T * rate`` offloaded bytes: T >= excess / rate;
    - a policy that moves all its KV over the link (KVPR, KV offload) pays each position there or,
      if recomputed, partly on the GPU: at least where the two times cross.

    The exact evaluator costs size-dependent recompute and CPU attention by tangents within each
    context range; property tests check the bound against it for random policies. The throughput
    search skips a batch whose bound cannot beat the best plan or baseline found.

    Parameters
    ----------
    kv_actions : sequence of KvAction
        What may happen to offloaded KV positions (a baseline's restriction; default: anything).
    kv_offloaded, weights_offloaded : bool
        The policy offloads all the KV, or all the weights (baselines that do, whether they fit or not).
    """
    return _time_lower_bound_s(wl, system, frozenset(KvAction(a) for a in kv_actions), kv_offloaded, weights_offloaded)


@functools.lru_cache(maxsize=4096)  # the plan and each baseline ask for the same batches
def _time_lower_bound_s(wl: KvWorkload, system: System, kv_actions: frozenset[KvAction], kv_offloaded: bool,
                        weights_offloaded: bool) -> float:
    m, dt, L, b = wl.model, wl.dtype_bytes, wl.model.n_layers, wl.batch
    pc, hc = prefill_costs(wl, system), head_costs(wl, system)
    link = system.link
    room = capacity(system)["gpu_bytes"] - working_bytes(wl)
    weights = L * m.layer_params() * dt
    kv_layer = b * wl.max_context * m.kv_elements_per_token() * dt
    dense = dense_gpu_s(wl, system)
    c = wl.contexts().astype(float)
    # Offloaded KV bytes served per second of step time, per route, at each step's context.
    link_bytes = [b * m.kv_elements_per_token() * dt] * (KvAction.TRANSFER in kv_actions) \
        + [b * m.hidden * dt] * (KvAction.RECOMPUTE in kv_actions)
    kv_link_rate = kv_layer * link.h2d_bytes_per_s / (c * min(link_bytes)) if link_bytes else np.zeros_like(c)
    kv_cpu_rate = np.zeros_like(c)
    cpu_s_per_tok = float("inf")
    if KvAction.CPU in kv_actions:
        cpu = Processor.cpu(system.host)
        cpu_s_per_tok = _best_attention_s_per_token(wl, cpu, 4 if dt < 4 else dt)
        kv_cpu_rate = kv_layer / (c * cpu_s_per_tok)
    # Attention: every (layer, position) pair is attended on the GPU or, if offloaded, on the CPU;
    # the two run side by side, so the step is at least the balanced split of that work.
    gpu_s_per_tok = _best_attention_s_per_token(wl, Processor.gpu(system.gpu), dt)
    gpu_work = L * dense + gpu_s_per_tok * L * c
    on_cpu = np.minimum(gpu_work / (gpu_s_per_tok + cpu_s_per_tok), L * c)  # 0 without CPU attention
    attention_s = np.maximum(gpu_work - gpu_s_per_tok * on_cpu, L * dense)
    kv_rate = kv_link_rate + kv_cpu_rate
    # The link serves either KV or weights; both at once only split its time.
    rate = kv_cpu_rate + np.maximum(kv_link_rate, link.h2d_bytes_per_s)
    forced_kv = L * kv_layer if kv_offloaded else 0.0
    forced_w = weights if weights_offloaded else 0.0
    best = float("inf")
    for on_gpu in (True, False):
        head = hc.step_s(on_gpu, link)
        kept = hc.bytes if on_gpu else 0.0
        excess = max(weights + L * kv_layer - room + kept, forced_kv + forced_w, 0.0)
        w_link_s = max(weights - room + kept, forced_w, 0.0) / link.h2d_bytes_per_s
        if kv_offloaded and KvAction.CPU not in kv_actions and link_bytes:
            forced_s = _all_kv_over_link_s(wl, system, L * dense + gpu_s_per_tok * L * c, L * c, w_link_s,
                                           KvAction.RECOMPUTE in kv_actions, KvAction.TRANSFER in kv_actions)
        else:
            forced_s = forced_kv / np.maximum(kv_rate, 1e-300)
        step = np.maximum.reduce([attention_s, excess / rate, np.full_like(c, w_link_s), forced_s])
        best = min(best, max(L * pc.gpu_s, w_link_s) + head + float(step.sum()) + wl.gen_len * head)
    return best


def _runs(layers: Sequence[LayerPolicy]) -> list[tuple[LayerPolicy, int]]:
    """Distinct policies with their layer counts, in first-seen order. Plans repeat one policy
    object over many layers, so runs are found by identity and only each run is hashed."""
    counts: dict[LayerPolicy, int] = {}
    prev, run = None, 0
    for pol in layers:
        if pol is prev:
            run += 1
            continue
        if prev is not None:
            counts[prev] = counts.get(prev, 0) + run
        prev, run = pol, 1
    if prev is not None:
        counts[prev] = counts.get(prev, 0) + run
    return list(counts.items())


def memory_use(wl: KvWorkload, layers: Sequence[LayerPolicy], head_on_gpu: bool) -> Memory:
    m, dt = wl.model, wl.dtype_bytes
    w_layer = m.layer_params() * dt
    kv_layer = wl.batch * wl.max_context * m.kv_elements_per_token() * dt
    act_layer = wl.batch * wl.max_context * m.hidden * dt
    head = m.head_params() * dt
    runs = _runs(layers)

    def total(share) -> float:
        return sum(n * share(p) for p, n in runs)

    # Double buffers: the largest streamed share of one layer's weights, and the largest set of
    # KV positions (transferred, or recomputed from activations) any layer brings in at the last step.
    w_buf = 2 * max((p.weights.offloaded for p, _ in runs), default=0.0) * w_layer
    kv_buf = 2 * max(
        (p.kv.offloaded * max((s.transfer * kv_layer + s.recompute * (kv_layer + act_layer)) for s in p.splits)
         for p, _ in runs), default=0.0)
    prefill_kv = 2 * wl.batch * wl.prompt_len * m.kv_elements_per_token() * dt if any(
        p.kv.offloaded > 0 for p, _ in runs) else 0.0
    work = working_bytes(wl)
    gpu = {"weights": total(lambda p: p.weights.gpu) * w_layer, "kv": total(lambda p: p.kv.gpu) * kv_layer,
           "head": head if head_on_gpu else 0.0, "weight_buffers": w_buf, "kv_buffers": max(kv_buf, prefill_kv),
           "working": work}
    disk_staging = 2 * max((p.weights.disk for p, _ in runs), default=0.0) * w_layer
    host = {
        "weights": total(lambda p: p.weights.host) * w_layer,
        "kv": total(lambda p: p.kv.host) * kv_layer,
        "activations": total(lambda p: p.activations_on_host) * act_layer,
        "head": 0.0 if head_on_gpu else head,
        "disk_staging": disk_staging,
    }
    disk = total(lambda p: p.weights.disk) * w_layer + total(lambda p: p.kv.disk) * kv_layer
    return Memory(gpu_bytes=sum(gpu.values()), host_bytes=sum(host.values()), disk_bytes=disk,
                  gpu_breakdown=tuple(gpu.items()), host_breakdown=tuple(host.items()))


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerCost:
    """One layer's predicted times: prefill, and the mean over decode steps, per resource."""

    prefill: tuple[tuple[Resource, float], ...]
    decode: tuple[tuple[Resource, float], ...]
    prefill_s: float
    step_s: float  # mean decode-step time of this layer (mean of per-step maxima)

    @property
    def binding(self) -> Resource:
        return max(self.decode, key=lambda kv: kv[1])[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class KvCost:
    prefill_s: float
    decode_s: float
    step_times_s: np.ndarray
    layers: tuple[LayerCost, ...]
    head_step_s: float
    memory: Memory
    capacity: dict[str, float]

    @property
    def step_time_s(self) -> float:
        return self.decode_s / len(self.step_times_s)

    def shortfalls(self) -> dict[str, float]:
        """Bytes missing per tier (empty when the plan fits)."""
        return shortfalls(self.memory, self.capacity)

    @property
    def feasible(self) -> bool:
        return not self.shortfalls()


def shortfalls(memory: Memory, cap: dict[str, float]) -> dict[str, float]:
    """Bytes missing per tier (empty when everything fits)."""
    use = memory.as_dict()
    # 1 KiB slack: byte totals are sums of products of LP fractions.
    return {k: use[k] - cap[k] for k in use if use[k] > cap[k] + 1024}


def evaluate(wl: KvWorkload, system: System, layers: Sequence[LayerPolicy], *, head_on_gpu: bool = True) -> KvCost:
    """Predict prefill and decode time and memory of a per-layer policy, exactly (no linearisation).

    Parameters
    ----------
    wl : KvWorkload
        Model, batch and lengths.
    system : System
        The hardware.
    layers : sequence of LayerPolicy
        One policy per decoder layer; every policy has the same number of context ranges.
    head_on_gpu : bool
        Whether embeddings and LM head stay on the GPU (else they are streamed from the host).
    """
    if len(layers) != wl.model.n_layers:
        raise WorkloadError(f"a policy needs one entry per layer ({wl.model.n_layers}), got {len(layers)}")
    runs = _runs(layers)
    n_ranges = len(layers[0].splits)
    if any(len(p.splits) != n_ranges for p, _ in runs):
        raise WorkloadError("every layer policy must have the same number of context ranges")
    if system.disk is None and any(p.weights.disk > 0 or p.kv.disk > 0 for p, _ in runs):
        raise WorkloadError(f"the policy puts data on disk but system {system.name!r} has no disk")
    contexts = wl.contexts().astype(float)
    bounds = range_bounds(wl.gen_len, n_ranges)
    pc = prefill_costs(wl, system)
    hc = head_costs(wl, system)
    cache: dict[LayerPolicy, LayerCost] = {}
    step_total = np.zeros_like(contexts)
    lengths = [b - a for a, b in bounds]
    mids = [wl.prompt_len + 1 + (a + b - 1) / 2 for a, b in bounds]  # mean context of each range
    for pol, count in runs:
        off = pol.kv.offloaded
        ucs = [unit_costs(wl, system, context=mid, gpu_attn_tokens=mid * (1 - off * split.cpu),
                          recompute_tokens=mid * off * split.recompute, cpu_tokens=mid * off * split.cpu)
               for mid, split in zip(mids, pol.splits)]
        # Every range in one pass: the fields that depend on the range's sizes become per-step arrays.
        uc = replace(ucs[0], **{f: np.repeat([getattr(u, f) for u in ucs], lengths) for f in _SIZED_FIELDS})
        splits = pol.splits[:len(bounds)]  # fewer decode steps than ranges: the first ranges only
        per_range = {f: np.repeat([getattr(s, f) for s in splits], lengths) for f in ("transfer", "recompute", "cpu")}
        t = _step_times(uc, pol.weights, pol.kv, pol.activations_on_host, per_range["transfer"],
                        per_range["recompute"], per_range["cpu"], contexts)
        per_step = np.maximum.reduce(list(t.values()))
        sums = {r: float(v.sum()) for r, v in t.items()}
        pre = layer_prefill_times(pc, ucs[0], pol.weights, pol.kv, pol.activations_on_host)
        cache[pol] = LayerCost(prefill=tuple(pre.items()), decode=tuple((r, sums[r] / len(contexts)) for r in Resource),
                               prefill_s=max(pre.values()), step_s=float(per_step.mean()))
        step_total += count * per_step
    costs, prev, prev_cost = [], None, None
    for pol in layers:  # by identity first: hashing a policy costs more than the lookup
        if pol is not prev:
            prev, prev_cost = pol, cache[pol]
        costs.append(prev_cost)
    head_step = hc.step_s(head_on_gpu, system.link)  # once per decode step, and once after prefill
    step_total += head_step
    return KvCost(
        prefill_s=sum(c.prefill_s for c in costs) + head_step,
        decode_s=float(step_total.sum()),
        step_times_s=step_total,
        layers=tuple(costs),
        head_step_s=head_step,
        memory=memory_use(wl, layers, head_on_gpu),
        capacity=capacity(system),
    )
