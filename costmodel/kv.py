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
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass, field, replace

import numpy as np

from costmodel.errors import WorkloadError
from costmodel.roofline import Op, Processor, roofline_time_s
from costmodel.transformer import TransformerSpec
from hwprofiles import Link, OpClass, System, format_bytes

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


STREAM_GRANULARITIES = ("layer", "sublayer")

# Bounds on a workload, so that no input makes the planner work for minutes or gigabytes before it
# answers: the evaluator keeps a few arrays of gen_len floats per policy, and the MIP's coefficients
# grow with the batch. Raise one explicitly with TIERPLAN_LIMITS="gen_len=1000000,batch=4194304".
DEFAULT_LIMITS = {"batch": 1 << 20, "prompt_len": 1 << 24, "gen_len": 1 << 17}


def limits() -> dict[str, int]:
    """The workload bounds in force: :data:`DEFAULT_LIMITS`, raised (or lowered) by ``TIERPLAN_LIMITS``."""
    import os

    out = dict(DEFAULT_LIMITS)
    text = os.environ.get("TIERPLAN_LIMITS", "").strip()
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in out or not value.strip().isdigit() or int(value) <= 0:
            raise WorkloadError(f"TIERPLAN_LIMITS entries must read NAME=POSITIVE_INTEGER with NAME one of "
                                f"{', '.join(out)}, got {item!r}")
        out[name.strip()] = int(value)
    return out
# Stored bytes per cached KV element. fp8: one byte, with a per-tensor scale (vLLM's fp8 KV cache,
# docs "Quantized KV Cache"); int4: half a byte plus an fp16 scale and an fp16 zero point per group of
# 64 elements (group-wise asymmetric quantisation as in KIVI, Liu et al., ICML 2024, arXiv:2402.02750).
KV_GROUP = 64
KV_DTYPES = {"fp16": 2.0, "bf16": 2.0, "fp32": 4.0, "fp8": 1.0, "int8": 1.0 + 4.0 / KV_GROUP,
             "int4": 0.5 + 4.0 / KV_GROUP}


@dataclass(frozen=True, slots=True, kw_only=True)
class KvWorkload:
    """Batch inference: ``batch`` sequences of ``prompt_len`` tokens generating ``gen_len`` each.

    Decode step ``j`` (0-based) attends over ``prompt_len + j + 1`` tokens.

    The batch runs as ``gpu_batches`` micro-batches of ``gpu_batch`` sequences (FlexGen's "GPU
    batch size" and "number of GPU batches"; 0 = the whole batch at once): weights brought to the
    GPU for a layer serve every micro-batch, while activations, KV staging and the GPU kernels are
    per micro-batch. Prefill runs layer by layer over chunks of at most ``prefill_chunk_tokens``
    tokens of one micro-batch (0 = a micro-batch's whole prompt at once, as FlexGen does).
    Streamed weights arrive one layer at a time (``stream_granularity="layer"``, as tierplan's
    replay streams) or one sub-layer at a time, attention and MLP separately ("sublayer", as
    FlexGen's OPT layers are split). ``fused_attention`` is a fused (flash) kernel that keeps no
    score matrix; FlexGen's OPT attention is batched matmuls and a softmax that do.

    KV compression: ``kv_dtype`` stores the cache quantised (:data:`KV_DTYPES`, bytes per element
    with the scales; "" = ``dtype_bytes``), and ``kv_keep`` keeps that fraction of every sequence's
    context tokens (token eviction: KVCrush, Keyformer, PyramidInfer keep a fraction of the
    context): KV bytes and attention work scale by it. A context longer than the model's
    (:attr:`TransformerSpec.max_context_tokens`) is an error unless ``allow_long_context``.

    How the engine runs: ``overlap`` (a layer's copies run beside its compute, so it takes its
    slowest resource; without it, as in FlexGen's ``--overlap False`` loop and Accelerate's
    per-module hooks, the sum of them), ``pinned_weights`` (host weights in page-locked memory; else
    they cross at the link's pageable rate), ``cpu_attention_upcast`` (CPU attention first copies
    the KV it reads into an fp32 workspace, as FlexGen's ``mha_gen`` on the CPU does),
    ``cpu_attention_repeat_kv`` (a GQA model's CPU attention first repeats the cached K and V to every
    query head, then attends over the copies: Hugging Face's ``repeat_kv`` on the host cache, which
    ZeRO-Inference's LLaMA ``kv_offload`` path runs in decode, tjruwase/transformers@0e25ddc5
    src/transformers/models/llama/modeling_llama.py ``LlamaAttention.forward``).
    """

    model: TransformerSpec
    batch: int
    prompt_len: int
    gen_len: int
    dtype_bytes: int = 2
    prefill_chunk_tokens: int = 4096
    gpu_batch: int = 0
    stream_granularity: str = "layer"
    fused_attention: bool = True
    overlap: bool = True
    pinned_weights: bool = True
    cpu_attention_upcast: bool = False
    cpu_attention_repeat_kv: bool = False
    kv_dtype: str = ""
    kv_keep: float = 1.0
    allow_long_context: bool = False
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "gen_len", "dtype_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise WorkloadError(f"{name} must be a positive integer, got {value!r}")
        bounds = limits()
        for name, bound in bounds.items():
            if getattr(self, name) > bound:
                raise WorkloadError(f"{name} must be at most {bound:,} (a bound on the planner's work), got "
                                    f"{getattr(self, name):,}; raise it with TIERPLAN_LIMITS=\"{name}=...\"")
        for name in ("prefill_chunk_tokens", "gpu_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise WorkloadError(f"{name} must be 0 or a positive integer, got {value!r}")
        if self.gpu_batch and self.batch % self.gpu_batch:
            raise WorkloadError(f"batch ({self.batch}) must be a multiple of gpu_batch ({self.gpu_batch}): "
                                "the batch runs as whole GPU batches")
        if self.kv_dtype and self.kv_dtype not in KV_DTYPES:
            raise WorkloadError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_dtype!r}")
        if isinstance(self.kv_keep, bool) or not isinstance(self.kv_keep, int | float) or not 0 < self.kv_keep <= 1:
            raise WorkloadError(f"kv_keep (the kept share of context tokens) must be in (0, 1], got {self.kv_keep!r}")
        limit = self.model.max_context_tokens
        if self.prompt_len + self.gen_len > limit and not self.allow_long_context:
            raise WorkloadError(f"prompt + gen = {self.prompt_len + self.gen_len} tokens exceeds {self.model.name}'s "
                                f"context of {limit} tokens (max_position_embeddings with rope scaling, "
                                f"{self.model.source or 'bundled config'}); pass --allow-long-context to cost it anyway")
        if self.stream_granularity not in STREAM_GRANULARITIES:
            raise WorkloadError(f"stream_granularity must be one of {STREAM_GRANULARITIES}, "
                                f"got {self.stream_granularity!r}")
        # Hashed once (a cache key of the cost model, with the model's fields inside).
        object.__setattr__(self, "_hash", hash((self.model, self.batch, self.prompt_len, self.gen_len,
                                                self.dtype_bytes, self.prefill_chunk_tokens, self.gpu_batch,
                                                self.stream_granularity, self.fused_attention, self.overlap,
                                                self.pinned_weights, self.cpu_attention_upcast,
                                                self.cpu_attention_repeat_kv, self.kv_dtype,
                                                self.kv_keep, self.allow_long_context)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def max_context(self) -> int:
        return self.prompt_len + self.gen_len

    @property
    def micro_batch(self) -> int:
        """Sequences per GPU batch (the whole batch when ``gpu_batch`` is 0)."""
        return self.gpu_batch or self.batch

    @property
    def gpu_batches(self) -> int:
        """Number of GPU batches (micro-batches) the batch runs as."""
        return self.batch // self.micro_batch

    @property
    def chunk_tokens(self) -> int:
        """Tokens of one prefill chunk: ``min(prefill_chunk_tokens, micro_batch * prompt_len)``."""
        whole = self.micro_batch * self.prompt_len
        return min(self.prefill_chunk_tokens, whole) if self.prefill_chunk_tokens else whole

    @property
    def kv_token_bytes(self) -> float:
        """Stored KV bytes per context token of one sequence in one layer: cached elements x bytes
        per element (``kv_dtype``) x the kept share of tokens (``kv_keep``)."""
        per = KV_DTYPES[self.kv_dtype] if self.kv_dtype else float(self.dtype_bytes)
        return self.model.kv_elements_per_token() * per * self.kv_keep

    @property
    def layer_weight_bytes(self) -> float:
        """Stored bytes of one decoder layer's weights (the mean layer; quantised where the config is)."""
        return self.model.layer_params() * self.model.weight_bytes_per_param(self.dtype_bytes)

    @property
    def head_weight_bytes(self) -> float:
        """Stored bytes of the embeddings, final norm and LM head."""
        return self.model.head_params() * self.model.head_weight_bytes_per_param(self.dtype_bytes)

    def contexts(self) -> np.ndarray:
        """Tokens attended at each decode step."""
        return self.prompt_len + 1 + np.arange(self.gen_len)

    def with_batch(self, batch: int, gpu_batch: int = 0) -> KvWorkload:
        """The same workload at another batch (run whole, or as GPU batches of ``gpu_batch``)."""
        return replace(self, batch=batch, gpu_batch=gpu_batch)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], model: TransformerSpec) -> KvWorkload:
        """The workload :meth:`summary` describes (a plan's ``workload``), with ``model`` for its model.
        Fields an older summary lacks take the defaults they had then."""
        w = summary
        try:
            return cls(model=model, batch=w["batch"], prompt_len=w["prompt_len"], gen_len=w["gen_len"],
                       dtype_bytes=w.get("dtype_bytes", 2), prefill_chunk_tokens=w.get("prefill_chunk_tokens", 4096),
                       gpu_batch=w.get("gpu_batch", 0) if w.get("gpu_batches", 1) > 1 else 0,
                       stream_granularity=w.get("stream_granularity", "layer"),
                       fused_attention=w.get("fused_attention", True), overlap=w.get("overlap", True),
                       pinned_weights=w.get("pinned_weights", True),
                       cpu_attention_upcast=w.get("cpu_attention_upcast", False),
                       cpu_attention_repeat_kv=w.get("cpu_attention_repeat_kv", False), kv_dtype=w.get("kv_dtype", ""),
                       kv_keep=w.get("kv_keep", 1.0), allow_long_context=w.get("allow_long_context", False))
        except KeyError as err:
            raise WorkloadError(f"workload field {err} is missing") from None

    def summary(self) -> dict[str, object]:
        # the config's absolute path: a plan is re-costed from other folders than the one it was made in
        model_file = str(Path(self.model.source).resolve()) if self.model.source else None
        return {"model": self.model.name, "model_file": model_file, "batch": self.batch, "prompt_len": self.prompt_len,
                "gen_len": self.gen_len, "dtype_bytes": self.dtype_bytes,
                "prefill_chunk_tokens": self.prefill_chunk_tokens, "gpu_batch": self.micro_batch,
                "gpu_batches": self.gpu_batches, "stream_granularity": self.stream_granularity,
                "fused_attention": self.fused_attention, "overlap": self.overlap,
                "pinned_weights": self.pinned_weights, "cpu_attention_upcast": self.cpu_attention_upcast,
                "cpu_attention_repeat_kv": self.cpu_attention_repeat_kv,
                "kv_dtype": self.kv_dtype, "kv_keep": self.kv_keep, "allow_long_context": self.allow_long_context}


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
    """The non-attention ops of one layer over ``tokens`` rows (a decode step: tokens = batch).

    The projections are the model's own (:meth:`TransformerSpec.attention_linears`: Q, K, V and O,
    or MLA's compressions and up-projections); their weights are read at the stored bytes per
    parameter (a ``quantization_config`` packs them). MoE layers add the router, the experts hit and
    the shared experts (DeepSeek, Qwen-MoE); DeepSeek's dense first layers are costed as MoE layers.
    """
    h, i = model.hidden, model.intermediate
    wbpp = model.weight_bytes_per_param(dt)
    linears = model.attention_linears()
    proj = [(k, n * c) for k, n, c in linears]
    *qkv, (o_in, o_out) = proj
    q_width = sum(n for _, n in qkv)
    ops = [
        Op(name="norm1", op_class=OpClass.ELEMENTWISE, flop=5.0 * tokens * h, bytes=2.0 * tokens * h * dt),
        Op(name="qkv_proj", op_class=OpClass.GEMV if tokens <= GEMV_MAX_ROWS else OpClass.GEMM,
           flop=2.0 * tokens * sum(k * n for k, n in qkv),
           bytes=sum(k * n for k, n in qkv) * wbpp + tokens * (h + q_width) * dt),
        Op(name="rope", op_class=OpClass.ELEMENTWISE, flop=3.0 * tokens * (model.q_dim + model.kv_dim),
           bytes=2.0 * tokens * (model.q_dim + model.kv_dim) * dt),
        _gemm("o_proj", tokens, o_in, o_out, dt, weight_bytes=o_in * o_out * wbpp),
        Op(name="norm2", op_class=OpClass.ELEMENTWISE, flop=5.0 * tokens * h, bytes=2.0 * tokens * h * dt),
    ]
    per_expert_mats = 3 if model.gated_mlp else 2
    if model.n_experts == 1:
        ops.append(_gemm("mlp_up", tokens, h, (per_expert_mats - 1) * i, dt, weight_bytes=h * (per_expert_mats - 1) * i * wbpp))
        ops.append(_gemm("mlp_down", tokens, i, h, dt, weight_bytes=i * h * wbpp))
    else:
        e, k = model.n_experts, model.experts_per_token
        up = per_expert_mats - 1
        ops.append(_gemm("router", tokens, h, e, dt))
        # Expected distinct experts hit when each token picks k distinct experts (uniform router):
        # an expert is missed by one token with probability 1 - k/e, so hit = e * (1 - (1 - k/e)^tokens).
        hit = e * (1.0 - (1.0 - k / e) ** tokens)
        rows = tokens * k
        ops.append(_gemm("experts_up", rows, h, up * i, dt, weight_bytes=hit * h * up * i * wbpp))
        ops.append(_gemm("experts_down", rows, i, h, dt, weight_bytes=hit * i * h * wbpp))
        if model.shared_experts:
            si = model.shared_experts * i
            ops.append(_gemm("shared_up", tokens, h, up * si, dt, weight_bytes=h * up * si * wbpp))
            ops.append(_gemm("shared_down", tokens, si, h, dt, weight_bytes=si * h * wbpp))
    return ops


def attention_op(model: TransformerSpec, batch: int, query_len: int, context, dt: int, *, causal: bool,
                 kv_token_bytes: float | None = None) -> tuple:
    """FLOPs and bytes of attention of ``query_len`` new tokens over ``context`` tokens (arrays ok).

    FLOPs per (query, key) pair: :meth:`TransformerSpec.attention_flop_per_query_key` (4 q_dim for
    MHA/GQA; MLA attends over its latent at decode, and over materialised keys in prefill). Decode
    reads the whole KV cache (``kv_token_bytes`` per cached token: the cached elements at their
    stored bytes, default ``kv_elements_per_token * dt``) and the query; prefill with a fused
    (flash) kernel reads Q, K, V and writes O once.
    """
    context = np.asarray(context, dtype=float)
    pairs = query_len * context / (2.0 if causal else 1.0)
    flop = batch * pairs * model.attention_flop_per_query_key(absorbed=query_len == 1)
    kv_tok = model.kv_elements_per_token() * dt if kv_token_bytes is None else kv_token_bytes
    if query_len == 1:
        nbytes = batch * context * kv_tok + 2.0 * batch * model.q_dim * dt
    else:
        nbytes = batch * query_len * (2 * model.q_dim + model.kv_elements_per_token()) * dt
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

    ``*_per_token`` values are for one context position of every sequence in the batch. Work runs
    per GPU batch (``micro_batches`` of them): GPU and CPU times are the sum over GPU batches at the
    GPU batch's size, and each GPU batch's KV, query and output copies are separate transfers.
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
    weight_h2d_bytes_per_s: float  # the pinned rate, or the pageable one for weights not page-locked
    link_latency_s: float
    bidir_penalty: float  # extra time per overlapped byte: (1/bidirectional_factor - 1)
    disk_read_bytes_per_s: float
    disk_write_bytes_per_s: float
    disk_latency_s: float
    micro_batches: int = 1
    pageable_weights: bool = False  # weights not page-locked: their copies hold the issuing host thread


@functools.lru_cache(maxsize=1024)
def dense_gpu_s(wl: KvWorkload, system: System) -> float:
    """GPU time of one layer's non-attention ops in a decode step, with the attention kernels' launches,
    summed over the GPU batches (each runs its own kernels at the GPU batch's size).

    Cached: the same layer at the same batch is costed for every context range, solve and baseline.
    """
    gpu = Processor.gpu(system.gpu)
    return wl.gpu_batches * (ops_time_s(dense_ops(wl.model, wl.micro_batch, wl.dtype_bytes), gpu)
                             + 2 * gpu.launch_overhead_s)


def _size_time_s(wl: KvWorkload, system: System, what: str, t: float) -> float:
    """Time of a size-dependent op over ``t`` context positions of every sequence (no launch), summed
    over the GPU batches, each at the GPU batch's size."""
    m, b, dt, n = wl.model, wl.micro_batch, wl.dtype_bytes, wl.gpu_batches
    # Only the kept share of the context is cached, attended and recomputed (kv_keep).
    t = t * wl.kv_keep
    kept = m.kv_elements_per_token()
    if what == "gpu_attention":
        flop, nbytes = attention_op(m, b, 1, t, dt, causal=False, kv_token_bytes=wl.kv_token_bytes / wl.kv_keep)
        return n * float(roofline_time_s(float(flop), float(nbytes), OpClass.ATTENTION, Processor.gpu(system.gpu),
                                         launches=0))
    if what == "cpu_attention":  # in fp32 on the CPU
        flop, nbytes = attention_op(m, b, 1, t, 4 if dt < 4 else dt, causal=False, kv_token_bytes=kept * max(dt, 4))
        if wl.cpu_attention_upcast:  # K and V read as stored and written to an fp32 workspace first
            nbytes = nbytes + b * t * (wl.kv_token_bytes / wl.kv_keep + 4 * kept)
        groups = m.n_heads // m.n_kv_heads if m.n_kv_heads else 1
        if wl.cpu_attention_repeat_kv and groups > 1:
            # repeat_kv writes K and V at every query head (groups x kept elements), and the two matmuls
            # read those copies instead of the cache: 2 groups x kept fp32 elements more per position
            nbytes = nbytes + b * t * 2 * groups * kept * 4
        return n * float(roofline_time_s(float(flop), float(nbytes), OpClass.ATTENTION, Processor.cpu(system.host),
                                         launches=0))
    # recompute: K and V projections of t positions per sequence from stored layer inputs, plus RoPE on K.
    gpu = Processor.gpu(system.gpu)
    op = _gemm("kv_recompute", b * t, m.hidden, kept, dt, weight_bytes=0.0)
    rope = roofline_time_s(3.0 * b * t * m.kv_dim, 2.0 * b * t * m.kv_dim * dt, OpClass.ELEMENTWISE, gpu, launches=0)
    return n * float(roofline_time_s(op.flop, op.bytes, op.op_class, gpu, launches=0) + rope)


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
    kv_tok = b * wl.kv_token_bytes
    act_tok = b * m.hidden * dt * wl.kv_keep
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
        weight_bytes=wl.layer_weight_bytes,
        kv_bytes_per_token=kv_tok,
        act_bytes_per_token=act_tok,
        q_bytes=b * m.q_dim * dt,
        o_bytes=b * m.q_dim * dt + b * m.n_heads * LSE_BYTES,
        h2d_bytes_per_s=link.h2d_bytes_per_s,
        d2h_bytes_per_s=link.d2h_bytes_per_s,
        weight_h2d_bytes_per_s=link.h2d_bytes_per_s * (1.0 if wl.pinned_weights else link.pageable_factor),
        link_latency_s=link.latency_s,
        bidir_penalty=1.0 / link.bidirectional_factor - 1.0,
        disk_read_bytes_per_s=disk.read_bytes_per_s if disk else float("inf"),
        disk_write_bytes_per_s=disk.write_bytes_per_s if disk else float("inf"),
        disk_latency_s=disk.latency_s if disk else 0.0,
        micro_batches=wl.gpu_batches,
        pageable_weights=not wl.pinned_weights,
    )


# UnitCosts fields that depend on the context and operating sizes (the rest depend on the batch only).
_SIZED_FIELDS = ("attn_gpu_s_per_token", "recompute_gpu_s_per_token", "recompute_gpu_fixed_s", "attn_cpu_s_per_token",
                 "attn_cpu_fixed_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefillCosts:
    """Per-layer prefill costs for the whole batch (all prompt tokens).

    Prefill runs layer by layer (a layer's weights come to the GPU once and serve every GPU batch
    and chunk), so the layer inputs of every prompt token wait between layers: ``hidden_bytes`` =
    batch * prompt_len * hidden * dtype_bytes, kept on the GPU or, at a share on the host, copied
    down after and up before each layer.
    """

    gpu_s: float
    weight_bytes: float
    kv_bytes: float
    act_bytes: float
    hidden_bytes: float
    micro_batches: int = 1


@functools.lru_cache(maxsize=1024)
def prefill_costs(wl: KvWorkload, system: System) -> PrefillCosts:
    """Per-layer prefill: each GPU batch's prompt in chunks of :attr:`KvWorkload.chunk_tokens` rows."""
    m, dt = wl.model, wl.dtype_bytes
    gpu = Processor.gpu(system.gpu)
    per_batch = wl.micro_batch * wl.prompt_len
    chunks = -(-per_batch // wl.chunk_tokens)
    rows = per_batch / chunks
    dense = wl.gpu_batches * chunks * ops_time_s(dense_ops(m, int(rows), dt), gpu)
    flop, nbytes = attention_op(m, wl.micro_batch, wl.prompt_len, wl.prompt_len, dt, causal=True)
    # An unfused kernel writes the scores, reads them for the softmax, writes and reads its output.
    if not wl.fused_attention:
        nbytes += 4.0 * per_batch * m.n_heads * wl.prompt_len * dt
    attn = wl.gpu_batches * float(roofline_time_s(flop, nbytes, OpClass.ATTENTION, gpu))
    tokens = wl.batch * wl.prompt_len
    return PrefillCosts(gpu_s=dense + attn, weight_bytes=wl.layer_weight_bytes,
                        kv_bytes=tokens * wl.kv_token_bytes, act_bytes=tokens * m.hidden * dt * wl.kv_keep,
                        hidden_bytes=tokens * m.hidden * dt, micro_batches=wl.gpu_batches)


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
    w_bytes = pol_w.offloaded * uc.weight_bytes
    h2d_bytes = (w_bytes + x_tok * uc.kv_bytes_per_token
                 + r_tok * uc.act_bytes_per_token + np.where(uses_cpu, uc.o_bytes, 0.0))
    # Weights not page-locked cross at the pageable rate: the extra time over the pinned rate.
    w_extra_s = w_bytes / uc.weight_h2d_bytes_per_s - w_bytes / uc.h2d_bytes_per_s
    # A copy from pageable memory occupies the thread that issues it: "the function will return once
    # the pageable buffer has been copied to the staging memory" (CUDA driver API, "API
    # synchronization behavior", memcpy, https://docs.nvidia.com/cuda/cuda-driver-api/api-sync-behavior.html).
    # The engine's one host thread also runs CPU attention, so the two add up on the CPU.
    staging_s = w_bytes / uc.weight_h2d_bytes_per_s if uc.pageable_weights else 0.0
    if off > 0 or act:
        d2h_bytes = (off * uc.kv_bytes_per_token + (uc.act_bytes_per_token if act else 0.0)
                     + np.where(uses_cpu, uc.q_bytes, 0.0)) + np.zeros_like(c)
    else:
        d2h_bytes = np.zeros_like(c)
    # Counts of copies per step (numpy adds boolean arrays as "or", so count in floats): a layer's
    # weights once, everything else once per GPU batch.
    nb = uc.micro_batches
    n_h2d = (float(pol_w.offloaded > 0) + nb * (np.greater(off * np.asarray(transfer), 0).astype(float)
                                                 + np.greater(off * np.asarray(recompute), 0).astype(float)
                                                 + uses_cpu.astype(float)))
    n_d2h = nb * (float(off > 0) + float(act) + uses_cpu.astype(float))
    overlap = np.minimum(h2d_bytes, d2h_bytes) * uc.bidir_penalty
    cpu_s = np.where(c_tok > 0, uc.attn_cpu_fixed_s + c_tok * uc.attn_cpu_s_per_token + staging_s, 0.0)
    gpu_s = (uc.dense_gpu_s + (c - c_tok) * uc.attn_gpu_s_per_token
             + np.where(r_tok > 0, uc.recompute_gpu_fixed_s + r_tok * uc.recompute_gpu_s_per_token, 0.0))
    # CPU attention waits for its GPU batch's queries and returns its outputs: one GPU batch's chain
    # (dense ops, query copy, CPU attention, output copy), then the other GPU batches pipelined
    # behind it at the pace of the slower of GPU and CPU.
    chain = (uc.dense_gpu_s / nb + 2 * uc.link_latency_s + uc.q_bytes / nb / uc.d2h_bytes_per_s
             + uc.o_bytes / nb / uc.h2d_bytes_per_s + cpu_s / nb + (nb - 1) / nb * np.maximum(gpu_s, cpu_s))
    times = {
        Resource.GPU: gpu_s,
        Resource.H2D: n_h2d * uc.link_latency_s + (h2d_bytes + overlap) / uc.h2d_bytes_per_s + w_extra_s,
        Resource.D2H: n_d2h * uc.link_latency_s + (d2h_bytes + overlap) / uc.d2h_bytes_per_s,
        Resource.DISK: ((pol_w.disk > 0) + (pol_kv.disk > 0)) * uc.disk_latency_s
        + (pol_w.disk * uc.weight_bytes + c * pol_kv.disk * uc.kv_bytes_per_token) / uc.disk_read_bytes_per_s
        + pol_kv.disk * uc.kv_bytes_per_token / uc.disk_write_bytes_per_s,
        Resource.CPU: cpu_s,
        Resource.CPU_CHAIN: np.where(uses_cpu, chain, 0.0),
    }
    return {k: np.broadcast_to(np.asarray(v, dtype=float), c.shape) for k, v in times.items()}


def _layer_time(times: dict, overlap: bool):
    """A layer's time from its resources' times: the slowest when its copies and CPU work overlap its
    GPU work, their sum when the engine runs them one after another (CPU_CHAIN, a derived bound on
    overlapped CPU attention, then drops out)."""
    if overlap:
        return np.maximum.reduce(list(times.values()))
    return sum(v for r, v in times.items() if r is not Resource.CPU_CHAIN)


def layer_prefill_times(pc: PrefillCosts, uc: UnitCosts, pol_w: Fractions, pol_kv: Fractions, act: bool,
                        hidden_host: float = 0.0) -> dict[Resource, float]:
    """Each resource's time for one layer's prefill. ``hidden_host`` is the share of the layer inputs
    kept on the host between layers: copied up before the layer and its outputs down after it."""
    off = pol_kv.offloaded
    nb = pc.micro_batches
    hidden = hidden_host * pc.hidden_bytes
    h2d = pol_w.offloaded * pc.weight_bytes + hidden
    d2h = off * pc.kv_bytes + (pc.act_bytes if act else 0.0) + hidden
    overlap = min(h2d, d2h) * uc.bidir_penalty
    n_h2d = (pol_w.offloaded > 0) + nb * (hidden > 0)
    n_d2h = nb * ((off > 0) + act + (hidden > 0))
    w_bytes = pol_w.offloaded * pc.weight_bytes
    w_extra_s = w_bytes / uc.weight_h2d_bytes_per_s - w_bytes / uc.h2d_bytes_per_s
    return {
        Resource.GPU: pc.gpu_s,
        Resource.H2D: n_h2d * uc.link_latency_s + (h2d + overlap) / uc.h2d_bytes_per_s + w_extra_s,
        Resource.D2H: n_d2h * uc.link_latency_s + (d2h + overlap) / uc.d2h_bytes_per_s,
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

    def step_s(self, on_gpu: bool | float, link: Link) -> float:
        """One pass of the head: its GPU time, or the longer of that and the H2D copy of the share
        not kept on the GPU (``on_gpu`` is a bool or the GPU share, as FlexGen's percentages give)."""
        share = float(on_gpu)
        if share >= 1.0:
            return self.gpu_s
        return max(self.gpu_s, link.latency_s + (1.0 - share) * self.bytes / link.h2d_bytes_per_s)


@functools.lru_cache(maxsize=1024)
def head_costs(wl: KvWorkload, system: System) -> HeadCosts:
    m, dt = wl.model, wl.dtype_bytes
    gpu = Processor.gpu(system.gpu)
    t = wl.gpu_batches * ops_time_s(head_ops(m, wl.micro_batch, dt), gpu)
    return HeadCosts(bytes=wl.head_weight_bytes, gpu_s=t)


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """Bytes per tier, with what they hold.

    The GPU's peak is the larger of its two phases: ``gpu_prefill_bytes`` (what stays resident, the
    weight buffers, and prefill's KV staging, layer inputs and working set) and ``gpu_decode_bytes``
    (what stays resident, the weight buffers, decode's KV buffers and working set). The breakdowns
    name every term (see :func:`memory_use`).
    """

    gpu_bytes: float
    host_bytes: float
    disk_bytes: float
    gpu_breakdown: tuple[tuple[str, float], ...]
    host_breakdown: tuple[tuple[str, float], ...]
    gpu_prefill_bytes: float = 0.0
    gpu_decode_bytes: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"gpu_bytes": self.gpu_bytes, "host_bytes": self.host_bytes, "disk_bytes": self.disk_bytes}

    @property
    def peak_phase(self) -> str:
        """The phase whose GPU bytes are the peak ("prefill" or "decode")."""
        return "prefill" if self.gpu_prefill_bytes >= self.gpu_decode_bytes else "decode"


def capacity(system: System) -> dict[str, float]:
    """Usable bytes per tier (capacity less the reserved share)."""
    return {
        "gpu_bytes": system.gpu.memory_bytes - system.gpu.reserved_bytes,
        "host_bytes": system.host.memory_bytes - system.host.reserved_bytes,
        "disk_bytes": system.disk.capacity_bytes if system.disk else 0.0,
    }


# -- memory terms, each as the runtime allocates it ------------------------------------------------
# b = GPU batch (micro-batch), B = batch, P = prompt tokens, C = prompt + generated tokens,
# h = hidden size, e = KV elements per token per layer, d = bytes per element, k = prefill chunk tokens.


def _sublayer_bytes(wl: KvWorkload, rows: float, context: float) -> float:
    """Intermediate bytes of one layer over ``rows`` token rows attending ``context`` positions, at its
    peak. Kernels free their inputs between sub-layers (PyTorch's caching allocator reuses the
    blocks), so the peak is the larger of the attention sub-layer (norm output, Q K V, attention
    output, projection output: rows (2 h + 2 q_dim + 2 kv_dim) d, plus an unfused kernel's score
    matrix and softmax, 2 rows heads context d) and the MLP (norm output, up outputs, down output:
    rows (2 h + m experts_per_token intermediate) d, m = 3 for a gated MLP, 2 otherwise)."""
    m, dt = wl.model, wl.dtype_bytes
    attn = rows * (2 * m.hidden + 2 * m.q_dim + m.kv_elements_per_token()) * dt
    if not wl.fused_attention:
        attn += 2.0 * rows * m.n_heads * context * dt
    mlp = rows * (2 * m.hidden + (3 if m.gated_mlp else 2) * m.experts_per_token * m.intermediate) * dt
    return max(attn, mlp)


def weight_buffer_bytes(wl: KvWorkload) -> float:
    """GPU bytes of the weight buffers when every layer's weights are streamed whole: two layers
    (``stream_granularity="layer"``: one in use while the next arrives), or one (``"sublayer"``:
    the attention piece in use while the MLP piece arrives, then the other way round)."""
    return (2 if wl.stream_granularity == "layer" else 1) * wl.layer_weight_bytes


def decode_working_bytes(wl: KvWorkload) -> float:
    """GPU working set of a decode step: one GPU batch's layer input and output and its intermediates
    over the longest context (:func:`_sublayer_bytes`), the layer inputs of every GPU batch between
    layers, and one GPU batch's fp32 logits: 2 b h d + inter(b, C) + B h d + 4 b vocab."""
    m, dt, b = wl.model, wl.dtype_bytes, wl.micro_batch
    return 2 * b * m.hidden * dt + _sublayer_bytes(wl, b, wl.max_context) + wl.batch * m.hidden * dt + 4 * b * m.vocab


def prefill_working_bytes(wl: KvWorkload) -> float:
    """GPU working set of prefill: one chunk's intermediates over the prompt (:func:`_sublayer_bytes`)
    and the fp32 logits of one GPU batch's last positions: inter(k, P) + 4 b vocab."""
    return _sublayer_bytes(wl, wl.chunk_tokens, wl.prompt_len) + 4 * wl.micro_batch * wl.model.vocab


def prefill_hidden_bytes(wl: KvWorkload, hidden_on_gpu: float = 1.0) -> tuple[float, float]:
    """(GPU, host) bytes of prefill's layer inputs. Prefill runs layer by layer, so every prompt
    token's layer input waits between layers (B P h d in all). The share ``hidden_on_gpu`` stays on
    the GPU and is updated in place chunk by chunk; the rest lives on the host and one chunk's input
    and output pass through double buffers on the GPU: GPU = g B P h d + (1 - g) 4 k h d,
    host = (1 - g) B P h d."""
    m, dt = wl.model, wl.dtype_bytes
    total = wl.batch * wl.prompt_len * m.hidden * dt
    g = float(hidden_on_gpu)
    chunk_io = 4 * wl.chunk_tokens * m.hidden * dt if g < 1.0 else 0.0
    return g * total + (1.0 - g) * chunk_io, (1.0 - g) * total


def prefill_kv_staging_bytes(wl: KvWorkload, kv_offloaded: float) -> float:
    """GPU bytes for the KV a layer's prefill writes before it is copied to the host: the offloaded
    share of one GPU batch's prompt KV (its attention reads it while the chunks of that GPU batch
    run) plus one chunk's worth more, so the copy-out overlaps the next chunk:
    s (b P + k) e d, with s the largest offloaded KV share of any layer."""
    m = wl.model
    return kv_offloaded * (wl.micro_batch * wl.prompt_len + wl.chunk_tokens) * wl.kv_token_bytes


def kv_layer_bytes(wl: KvWorkload, *, micro: bool = False) -> float:
    """One layer's KV cache at the longest context: B C e d (or b C e d for one GPU batch)."""
    return (wl.micro_batch if micro else wl.batch) * wl.max_context * wl.kv_token_bytes


def act_layer_bytes(wl: KvWorkload, *, micro: bool = False) -> float:
    """One layer's inputs at every position, kept for recompute: B C h d (or b C h d)."""
    return (wl.micro_batch if micro else wl.batch) * wl.max_context * wl.model.hidden * wl.dtype_bytes * wl.kv_keep


def working_bytes(wl: KvWorkload) -> float:
    """The GPU bytes every placement needs whatever it keeps: the larger of decode's working set and
    prefill's working set with its layer inputs on the host (:func:`prefill_hidden_bytes` at 0)."""
    return max(decode_working_bytes(wl), prefill_working_bytes(wl) + prefill_hidden_bytes(wl, 0.0)[0])


def memory_use(wl: KvWorkload, layers: Sequence[LayerPolicy], head_on_gpu: bool | float = True,
               hidden_on_gpu: float = 1.0) -> Memory:
    """Bytes per tier of a per-layer policy, term by term.

    GPU, resident: ``weights`` (sum of GPU weight shares x layer bytes), ``kv`` (sum of GPU KV shares
    x :func:`kv_layer_bytes`), ``head`` (its GPU share x embeddings and LM head bytes). Both phases:
    ``weight_buffers`` = (largest streamed weight share of any layer) x :func:`weight_buffer_bytes`
    (the next piece arrives while this one computes). Prefill:
    ``prefill_kv_staging`` (:func:`prefill_kv_staging_bytes`), ``prefill_hidden``
    (:func:`prefill_hidden_bytes`), ``prefill_working`` (:func:`prefill_working_bytes`). Decode:
    ``kv_buffers`` = 2 x max over layers and context ranges of the KV one GPU batch brings in at the
    last step (offloaded share x (transfer share x b C e d + recompute share x (b C e d + b C h d))),
    ``decode_working`` (:func:`decode_working_bytes`). CPU-attended KV needs no GPU buffer.

    Host: offloaded ``weights`` and ``kv``, ``activations`` kept for recompute (B C h d per layer),
    the ``head``'s host share, prefill's ``hidden`` share, and ``disk_staging`` (largest disk weight
    share x :func:`weight_buffer_bytes`). Disk: weight and KV disk shares.

    Parameters
    ----------
    head_on_gpu : bool or float
        The GPU share of the embeddings and LM head.
    hidden_on_gpu : float
        The share of prefill's layer inputs kept on the GPU between layers (FlexGen's ``hg``).
    """
    m, dt = wl.model, wl.dtype_bytes
    w_layer = wl.layer_weight_bytes
    kv_layer = kv_layer_bytes(wl)
    act_layer = act_layer_bytes(wl)
    kv_mb, act_mb = kv_layer_bytes(wl, micro=True), act_layer_bytes(wl, micro=True)
    head = wl.head_weight_bytes
    head_share = float(head_on_gpu)
    runs = _runs(layers)

    def total(share) -> float:
        return sum(n * share(p) for p, n in runs)

    unit = weight_buffer_bytes(wl)
    w_buf = max((p.weights.offloaded for p, _ in runs), default=0.0) * unit
    kv_buf = 2 * max(
        (p.kv.offloaded * max((s.transfer * kv_mb + s.recompute * (kv_mb + act_mb)) for s in p.splits)
         for p, _ in runs), default=0.0)
    kv_off = max((p.kv.offloaded for p, _ in runs), default=0.0)
    hidden_gpu, hidden_host = prefill_hidden_bytes(wl, hidden_on_gpu)
    resident = {"weights": total(lambda p: p.weights.gpu) * w_layer, "kv": total(lambda p: p.kv.gpu) * kv_layer,
                "head": head_share * head, "weight_buffers": w_buf}
    prefill = {"prefill_kv_staging": prefill_kv_staging_bytes(wl, kv_off), "prefill_hidden": hidden_gpu,
               "prefill_working": prefill_working_bytes(wl)}
    decode = {"kv_buffers": kv_buf, "decode_working": decode_working_bytes(wl)}
    base = sum(resident.values())
    gpu_prefill, gpu_decode = base + sum(prefill.values()), base + sum(decode.values())
    disk_staging = max((p.weights.disk for p, _ in runs), default=0.0) * unit
    host = {
        "weights": total(lambda p: p.weights.host) * w_layer,
        "kv": total(lambda p: p.kv.host) * kv_layer,
        "activations": total(lambda p: p.activations_on_host) * act_layer,
        "head": (1.0 - head_share) * head,
        "hidden": hidden_host,
        "disk_staging": disk_staging,
    }
    disk = total(lambda p: p.weights.disk) * w_layer + total(lambda p: p.kv.disk) * kv_layer
    return Memory(gpu_bytes=max(gpu_prefill, gpu_decode), host_bytes=sum(host.values()), disk_bytes=disk,
                  gpu_breakdown=tuple({**resident, **prefill, **decode}.items()), host_breakdown=tuple(host.items()),
                  gpu_prefill_bytes=gpu_prefill, gpu_decode_bytes=gpu_decode)


def explain_shortfall(memory: Memory, cap: dict[str, float]) -> str:
    """Each short tier with its need, its usable bytes and every term that makes up the need
    ('' when everything fits). The GPU's terms are those of its peak phase."""
    short = shortfalls(memory, cap)
    parts = []
    for key, missing in short.items():
        tier = key.removesuffix("_bytes")
        if tier == "gpu":
            phase = memory.peak_phase
            skip = {"decode": ("prefill_kv_staging", "prefill_hidden", "prefill_working"),
                    "prefill": ("kv_buffers", "decode_working")}[phase]
            terms = [(k, v) for k, v in memory.gpu_breakdown if k not in skip]
            what = f"gpu memory ({phase} peak)"
        elif tier == "host":
            terms, what = list(memory.host_breakdown), "host memory"
        else:
            terms, what = [], "disk"
        listed = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in terms if v > 0)
        parts.append(f"{what} short by {format_bytes(missing)}: needs {format_bytes(missing + cap[key])} of "
                     f"{format_bytes(cap[key])} usable" + (f" ({listed})" if listed else ""))
    return "; ".join(parts)


def _best_time_s(proc: Processor, op_classes: Sequence[OpClass], flop: float, nbytes: float) -> float:
    """An op's time at the processor's best efficiencies (over ``op_classes``, the classes its size
    may give it): never more than its roofline time at any size."""
    best_compute = max(max(proc.curves.compute_curve(c).values) for c in op_classes)
    return max(flop / (proc.peak_flop_per_s * best_compute),
               nbytes / (proc.memory_bytes_per_s * max(proc.curves.memory.values)))


def _best_attention_s_per_token(wl: KvWorkload, proc: Processor, kv_bytes: float) -> float:
    """Decode attention per context position (every sequence of the batch): its KV bytes (``kv_bytes``
    per kept token) and its FLOPs (see attention_op), at the processor's best."""
    m, b, keep = wl.model, wl.batch, wl.kv_keep
    return _best_time_s(proc, (OpClass.ATTENTION,), b * m.attention_flop_per_query_key() * keep, b * kv_bytes * keep)


def _all_kv_over_link_s(wl: KvWorkload, system: System, gpu_s, positions, link_s: float, recompute: bool,
                        transfer: bool):
    """Least step time when every KV position comes over the link, as KV (transfer) or as the layer
    input plus GPU work (recompute), beside ``gpu_s`` of other GPU work and ``link_s`` of other
    copies: the GPU time grows and the link time shrinks with the recomputed share, so the least
    of their maximum is where they cross (or an end)."""
    m, b, dt = wl.model, wl.batch, wl.dtype_bytes
    h2d = system.link.h2d_bytes_per_s
    kv_b, act_b = b * wl.kv_token_bytes, b * m.hidden * dt * wl.kv_keep  # bytes per position
    if not recompute:
        return np.maximum(gpu_s, link_s + positions * kv_b / h2d)
    # Recompute per position: the K/V projection (a GEMM, or a GEMV for few rows) at the GPU's best.
    e, keep = m.kv_elements_per_token(), wl.kv_keep
    rec_s = _best_time_s(Processor.gpu(system.gpu), (OpClass.GEMM, OpClass.GEMV), 2.0 * b * m.hidden * e * keep,
                         b * (m.hidden + e) * dt * keep)
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
    weights = L * wl.layer_weight_bytes
    kv_layer = b * wl.max_context * wl.kv_token_bytes
    dense = dense_gpu_s(wl, system)
    c = wl.contexts().astype(float)
    # Offloaded KV bytes served per second of step time, per route, at each step's context.
    link_bytes = [b * wl.kv_token_bytes] * (KvAction.TRANSFER in kv_actions) \
        + [b * m.hidden * dt * wl.kv_keep] * (KvAction.RECOMPUTE in kv_actions)
    kv_link_rate = kv_layer * link.h2d_bytes_per_s / (c * min(link_bytes)) if link_bytes else np.zeros_like(c)
    kv_cpu_rate = np.zeros_like(c)
    cpu_s_per_tok = float("inf")
    if KvAction.CPU in kv_actions:
        cpu = Processor.cpu(system.host)
        cpu_s_per_tok = _best_attention_s_per_token(wl, cpu, m.kv_elements_per_token() * max(dt, 4))
        kv_cpu_rate = kv_layer / (c * cpu_s_per_tok)
    # Attention: every (layer, position) pair is attended on the GPU or, if offloaded, on the CPU;
    # the two run side by side, so the step is at least the balanced split of that work.
    gpu_s_per_tok = _best_attention_s_per_token(wl, Processor.gpu(system.gpu), wl.kv_token_bytes / wl.kv_keep)
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


def evaluate(wl: KvWorkload, system: System, layers: Sequence[LayerPolicy], *, head_on_gpu: bool | float = True,
             hidden_on_gpu: float = 1.0) -> KvCost:
    """Predict prefill and decode time and memory of a per-layer policy, exactly (no linearisation).

    Parameters
    ----------
    wl : KvWorkload
        Model, batch and lengths.
    system : System
        The hardware.
    layers : sequence of LayerPolicy
        One policy per decoder layer; every policy has the same number of context ranges.
    head_on_gpu : bool or float
        Whether (or which share of) the embeddings and LM head stay on the GPU; the rest is
        streamed from the host each pass.
    hidden_on_gpu : float
        Share of prefill's layer inputs kept on the GPU between layers (the rest waits on the host).
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
        per_step = _layer_time(t, wl.overlap)
        sums = {r: float(v.sum()) for r, v in t.items()}
        pre = layer_prefill_times(pc, ucs[0], pol.weights, pol.kv, pol.activations_on_host, 1.0 - hidden_on_gpu)
        cache[pol] = LayerCost(prefill=tuple(pre.items()), decode=tuple((r, sums[r] / len(contexts)) for r in Resource),
                               prefill_s=float(_layer_time(pre, wl.overlap)), step_s=float(per_step.mean()))
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
        memory=memory_use(wl, layers, head_on_gpu, hidden_on_gpu),
        capacity=capacity(system),
    )
