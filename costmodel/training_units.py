"""Workloads, per-layer policies, per-op FLOPs/bytes/saved activations and per-unit costs of training.

The pieces :mod:`costmodel.training` schedules: :class:`TrainWorkload` and :class:`LayerTrainPolicy`
(the decisions), :func:`layer_ops` (each op of a layer with what it saves for the backward, checked
against Korthikanti et al. 2022), :class:`TrainUnitCosts` (the coefficients a MIP reads) and
:func:`unit_phase_times` (seconds per resource of each phase, affine in the decisions).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from costmodel.errors import WorkloadError
from costmodel.kv import Tier
from costmodel.roofline import Processor, roofline_time_s
from costmodel.training_states import (
    MOMENT_DTYPES,
    OPTIMIZER_FLOP_PER_PARAM,
    OptimizerKind,
    Precision,
    StateBytes,
    state_bytes,
    step_bytes_per_param,
)
from costmodel.transformer import TransformerSpec
from hwprofiles import Host, OpClass, System

MASK_BYTES = 1  # a dropout mask element is one byte (torch.bool / uint8), as Korthikanti et al. count it
LSE_BYTES = 4  # flash attention keeps one fp32 log-sum-exp per head and query row for its backward
STAT_BYTES = 4  # a norm's per-row statistics (LayerNorm mean and rstd, RMSNorm rstd) are fp32
# How the layer's norms and MLP activation are implemented, which sets what they save for the backward
# (:func:`norm_saved_bytes`, :func:`layer_ops`): "eager" is Hugging Face transformers' PyTorch code
# (LlamaRMSNorm upcasts to fp32; act_fn(gate) * up as separate ops), "fused" is fused kernels
# (Megatron-Core / Transformer Engine / Apex RMSNorm and LayerNorm, a fused SwiGLU).
KERNELS = ("eager", "fused")
# FlashAttention's backward does 2.5x its forward FLOPs (Dao-AILab/flash-attention,
# benchmarks/benchmark_flash_attention.py, flops(): "2.5 * f if mode == 'bwd'").
FLASH_BWD_FACTOR = 2.5
ELEMENTWISE_BWD_BYTES = 1.5  # backward of an elementwise op reads dy and x, writes dx: 3 tensors vs 2


class StepDevice(enum.StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class ActAction(enum.StrEnum):
    """What a layer keeps of its activations between its forward and its backward."""

    KEEP = "keep"
    RECOMPUTE = "recompute"  # full: keep the layer input, rerun the forward in the backward
    # Korthikanti §4.2: drop the attention core's s^2 tensors and recompute the core; with a fused kernel
    # nothing is dropped but the core is still recomputed (as Megatron's selective granularity does).
    SELECTIVE = "selective"
    OFFLOAD = "offload"  # copy the kept tensors to the host in the forward, back in the backward


class Overlap(enum.StrEnum):
    NONE = "none"
    DEEPSPEED = "deepspeed"
    FULL = "full"


class TrainResource(enum.StrEnum):
    GPU = "gpu"
    H2D = "h2d"
    D2H = "d2h"
    CPU = "cpu"
    DISK = "disk"
    INTERCONNECT = "interconnect"


# Per resource, the keys of unit_phase_times whose seconds it is busy for: costmodel.training's
# evaluate_training sums its busy times over them, and the MIP's busy coefficients
# (solver.training_formulation) take the same keys.
RESOURCE_KEYS: tuple[tuple[TrainResource, tuple[str, ...]], ...] = (
    (TrainResource.GPU, ("gpu",)), (TrainResource.H2D, ("h2d", "stream_h2d", "h2d_accum")),
    (TrainResource.D2H, ("d2h", "stream_d2h")), (TrainResource.CPU, ("cpu",)),
    (TrainResource.DISK, ("disk",)), (TrainResource.INTERCONNECT, ("interconnect", "reduce")))


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise WorkloadError(f"{name} must be {rule}, got {value!r}")
    return value


def _enum(cls: type[enum.StrEnum], name: str, value: object) -> enum.StrEnum:
    try:
        return cls(value)
    except ValueError:
        raise WorkloadError(f"{name} must be one of {', '.join(m.value for m in cls)}, got {value!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainWorkload:
    """One training iteration: ``gpus`` data-parallel GPUs, each running ``grad_accum`` micro-steps of
    ``micro_batch`` sequences of ``seq_len`` tokens, then one optimizer step.

    ``precision`` is the weights' and activations' dtype (fp16/bf16 with fp32 master weights, or
    fp32); ``optimizer`` and ``moments_dtype`` the optimizer state (:mod:`costmodel.training_states`);
    ``fp32_grad_copy`` keeps an fp32 gradient for the step (DeepSpeed, Megatron; the ZeRO paper's
    16 B/param leaves it out). ``zero_stage`` partitions optimizer states (1), gradients (2) and
    weights (3) over the ``gpus``. ``fused_attention``: a flash kernel that keeps no s x s score
    matrix; ``dropout``: dropout after the softmax, the attention and the MLP (1-byte masks).
    ``kernels``: ``eager`` (Hugging Face transformers' PyTorch code, the default) or ``fused`` (fused
    norm and activation kernels as Megatron-Core and Transformer Engine run them); it sets what the
    norms and the gated MLP save (:func:`norm_saved_bytes`, :func:`layer_ops`). ``snapshot_every``:
    every k iterations the states a restart needs (fp32 master weights, or the weights in fp32
    training, and the moments) are copied to a host-memory snapshot, as in-memory checkpointing does
    (CheckFreq, FAST'21; Gemini, SOSP'23); 0: never (:func:`unit_phase_times`, ``snapshot``).
    ``grad_clip``: gradients are clipped by their global norm (DeepSpeed ``gradient_clipping`` > 0;
    Megatron's ``--clip-grad`` and Hugging Face Trainer's ``max_grad_norm`` default to 1.0); with
    fp16's loss scale it decides whether the step pays the unscale pass (:attr:`unscales`).
    ``pin_memory``: host buffers are page-locked (rounded up to powers of two, full link rate); else
    pageable, at the link's ``pageable_factor`` (DeepSpeed's ``offload_optimizer.pin_memory``
    defaults to false, deepspeed/runtime/zero/offload_config.py). ``interconnect_bytes_per_s``: the
    bus bandwidth between the GPUs for ring collectives, overriding the system's ``interconnect``
    (one of the two is needed when ``gpus > 1``: :func:`check_node`). With ``gpus > 1`` the GPUs share
    one host and disk (:func:`node_host`: a host profile that is one GPU's share of its node counts
    ``gpus`` shares), and each GPU has its own link.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=1024, micro_batch=4)
    >>> wl.tokens_per_iteration, wl.state.total
    (4096, 20.0)
    """

    model: TransformerSpec
    seq_len: int
    micro_batch: int
    grad_accum: int = 1
    gpus: int = 1
    precision: Precision | str = Precision.FP16
    optimizer: OptimizerKind | str = OptimizerKind.ADAMW
    moments_dtype: str = "fp32"
    fp32_grad_copy: bool = True
    zero_stage: int = 2
    fused_attention: bool = True
    dropout: bool = False
    pin_memory: bool = False
    grad_clip: bool = True
    overlap: Overlap | str = Overlap.DEEPSPEED
    interconnect_bytes_per_s: float | None = None
    kernels: str = "eager"
    snapshot_every: int = 0
    allow_long_context: bool = False

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch", "grad_accum", "gpus"):
            _positive_int(name, getattr(self, name))
        _positive_int("snapshot_every", self.snapshot_every, minimum=0)
        object.__setattr__(self, "precision", _enum(Precision, "precision", self.precision))
        object.__setattr__(self, "optimizer", _enum(OptimizerKind, "optimizer", self.optimizer))
        object.__setattr__(self, "overlap", _enum(Overlap, "overlap", self.overlap))
        if self.kernels not in KERNELS:
            raise WorkloadError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")
        if self.moments_dtype not in MOMENT_DTYPES:
            raise WorkloadError(f"moments_dtype must be one of {', '.join(MOMENT_DTYPES)}, got {self.moments_dtype!r}")
        if isinstance(self.zero_stage, bool) or self.zero_stage not in (0, 1, 2, 3):
            raise WorkloadError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        for name in ("fp32_grad_copy", "fused_attention", "dropout", "pin_memory", "grad_clip", "allow_long_context"):
            if not isinstance(getattr(self, name), bool):
                raise WorkloadError(f"{name} must be true or false, got {getattr(self, name)!r}")
        bw = self.interconnect_bytes_per_s
        if bw is not None and (isinstance(bw, bool) or not isinstance(bw, int | float) or not 0 < bw < math.inf):
            raise WorkloadError(f"interconnect_bytes_per_s must be a positive number of bytes/s, got {bw!r}")
        if self.seq_len > self.model.max_context_tokens and not self.allow_long_context:
            raise WorkloadError(f"seq_len must be at most {self.model.name}'s context of "
                                f"{self.model.max_context_tokens} tokens, got {self.seq_len}; set "
                                "allow_long_context to cost it anyway")

    @property
    def state(self) -> StateBytes:
        return state_bytes(self.precision, self.optimizer, moments_dtype=self.moments_dtype,
                           fp32_grad_copy=self.fp32_grad_copy)

    @property
    def unscales(self) -> bool:
        """Whether the step first rescales its gradient in place (:func:`step_bytes_per_param`): fp16
        has a loss scale to divide out; any precision that clips multiplies by the clip factor."""
        return self.precision is Precision.FP16 or self.grad_clip

    @property
    def act_bytes(self) -> int:
        """Bytes per activation element: 2 (fp16/bf16) or 4 (fp32)."""
        return 4 if self.precision is Precision.FP32 else 2

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch on one GPU: ``micro_batch * seq_len``."""
        return self.micro_batch * self.seq_len

    @property
    def tokens_per_iteration(self) -> int:
        return self.tokens * self.grad_accum * self.gpus

    def summary(self) -> dict[str, object]:
        return {"model": self.model.name, "seq_len": self.seq_len, "micro_batch": self.micro_batch,
                "grad_accum": self.grad_accum, "gpus": self.gpus, "precision": str(self.precision),
                "optimizer": str(self.optimizer), "moments_dtype": self.moments_dtype,
                "fp32_grad_copy": self.fp32_grad_copy, "zero_stage": self.zero_stage,
                "fused_attention": self.fused_attention, "dropout": self.dropout, "pin_memory": self.pin_memory,
                "grad_clip": self.grad_clip, "overlap": str(self.overlap), "interconnect_bytes_per_s": self.interconnect_bytes_per_s,
                "kernels": self.kernels, "snapshot_every": self.snapshot_every}


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerTrainPolicy:
    """Where one layer's states live, where its step runs, and what it keeps of its activations.

    ``params``: the 16-bit (working) weights; off the GPU only with ZeRO stage 3 (ZeRO-Infinity).
    ``grads``: where the gradients the step reads land (the GPU for a GPU step; host or disk for a
    CPU step). ``master``/``moments``: fp32 master weights and optimizer moments. A CPU step needs
    its master, moments and gradients off the GPU; a GPU step with master and moments on the host
    streams them in and out each step (Deep Optimizer States style); a GPU step from disk is not
    modelled. ``offload_share``: with ``activations="offload"``, the share of the kept activation
    bytes sent to the host (the rest stays on the GPU).

    Examples
    --------
    >>> LayerTrainPolicy(grads="host", master="host", moments="host", step="cpu").step
    <StepDevice.CPU: 'cpu'>
    """

    params: Tier | str = Tier.GPU
    grads: Tier | str = Tier.GPU
    master: Tier | str = Tier.GPU
    moments: Tier | str = Tier.GPU
    step: StepDevice | str = StepDevice.GPU
    activations: ActAction | str = ActAction.KEEP
    offload_share: float = 1.0

    def __post_init__(self) -> None:
        for name in ("params", "grads", "master", "moments"):
            object.__setattr__(self, name, _enum(Tier, name, getattr(self, name)))
        object.__setattr__(self, "step", _enum(StepDevice, "step", self.step))
        object.__setattr__(self, "activations", _enum(ActAction, "activations", self.activations))
        s = self.offload_share
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 <= s <= 1.0:
            raise WorkloadError(f"offload_share must be in [0, 1], got {s!r}")
        if self.step is StepDevice.CPU:
            for name in ("grads", "master", "moments"):
                if getattr(self, name) is Tier.GPU:
                    raise WorkloadError(f"{name} must be host or disk for a CPU step (step='cpu'), got 'gpu'")
        else:
            if self.grads is not Tier.GPU:
                raise WorkloadError(f"grads must be 'gpu' for a GPU step (step='gpu'), got {self.grads.value!r}")
            for name in ("master", "moments"):
                if getattr(self, name) is Tier.DISK:
                    raise WorkloadError(f"{name} on disk with a GPU step is not modelled; use step='cpu' or "
                                        f"{name}='host'")

    @property
    def offloaded_share(self) -> float:
        """Share of the kept activations that lives on the host between forward and backward."""
        return float(self.offload_share) if self.activations is ActAction.OFFLOAD else 0.0

    def summary(self) -> dict[str, object]:
        return {"params": str(self.params), "grads": str(self.grads), "master": str(self.master),
                "moments": str(self.moments), "step": str(self.step), "activations": str(self.activations),
                "offload_share": self.offload_share}


# ---------------------------------------------------------------------------------------------
# Ops of one layer: FLOPs, bytes and saved activations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainOp:
    """One kernel of a layer over a micro-batch: forward and backward FLOPs and bytes, the bytes it
    saves for the backward, and the transient gradient bytes its backward holds (dy and dx).

    ``core``: part of the attention core (QK^T, softmax, dropout, PV) that selective recompute
    drops and recomputes (Korthikanti et al. 2022, §4.2)."""

    name: str
    op_class: OpClass
    flop: float
    bytes: float
    bwd_flop: float
    bwd_bytes: float
    saved_bytes: float
    work_bytes: float
    core: bool = False


def _gemm(name: str, rows: float, k: float, n: float, d: int, *, saved: float) -> TrainOp:
    """A linear layer: 2 rows k n FLOPs; backward = dgrad + wgrad = exactly 2x the FLOPs."""
    nbytes = (k * n + rows * k + rows * n) * d
    return TrainOp(name=name, op_class=OpClass.GEMM, flop=2.0 * rows * k * n, bytes=nbytes, bwd_flop=4.0 * rows * k * n,
                   bwd_bytes=2.0 * nbytes, saved_bytes=saved, work_bytes=(rows * k + rows * n) * d)


def _elementwise(name: str, elements: float, d: int, *, flop_per: float = 1.0, saved: float = 0.0,
                 extra_bytes: float = 0.0, core: bool = False) -> TrainOp:
    nbytes = 2.0 * elements * d + extra_bytes
    return TrainOp(name=name, op_class=OpClass.ELEMENTWISE, flop=flop_per * elements, bytes=nbytes,
                   bwd_flop=2.0 * flop_per * elements, bwd_bytes=ELEMENTWISE_BWD_BYTES * nbytes, saved_bytes=saved,
                   work_bytes=2.0 * elements * d, core=core)


def norm_saved_bytes(wl: TrainWorkload, rows: float, width: int) -> float:
    """Bytes a norm over ``rows`` rows of ``width`` saves for its backward (d: activation bytes).

    * LayerNorm (``torch.nn.functional.layer_norm``, either kernel style): its input and the fp32 mean
      and rstd per row, ``rows (width d + 2 x 4)``;
    * fused RMSNorm (Apex / Transformer Engine / Megatron-Core): its input and the fp32 rstd,
      ``rows (width d + 4)``;
    * eager RMSNorm (Hugging Face ``LlamaRMSNorm``: ``x.to(float32)``, ``pow(2).mean``, ``* rsqrt``,
      ``weight * normed.to(dtype)``): the fp32 copy of the input (saved by ``pow`` and the ``*``), the
      rsqrt per row and the normalised tensor in the activation dtype (saved by the weight's ``*``),
      ``rows (width (4 + d) + 4)``; the input itself is not kept.
    """
    d = wl.act_bytes
    if wl.model.layer_norm:
        return rows * (width * d + 2 * STAT_BYTES)
    if wl.kernels == "eager":
        return rows * (width * (STAT_BYTES + d) + STAT_BYTES)
    return rows * (width * d + STAT_BYTES)


def layer_ops(wl: TrainWorkload) -> tuple[TrainOp, ...]:
    """The ops of one decoder layer over one micro-batch, with what each saves for the backward.

    Saved bytes follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models", arXiv:2205.05198, §4.1), generalised to the layer's real structure, with
    T = b s tokens, d bytes per element, a heads, q = heads x head_dim, k = kv_heads x head_dim,
    f the MLP width:

    * each norm what :func:`norm_saved_bytes` says (its input T h d and fp32 statistics per token; an
      eager RMSNorm an fp32 copy and its output instead); the QKV projection its input, T h d; a
      per-head q/k norm (qwen3) the same over T heads rows of head_dim;
    * unfused attention: Q and K for QK^T, T (q + k') d; the softmax output, a b s^2 d; with
      dropout its 1-byte mask a b s^2 and its output a b s^2 d; V for the PV product, T k' d
      (k' = q for GQA, since the eager kernel repeats K and V to every head before the matmul);
    * fused (flash) attention: Q, K, V, T (q + 2k) d, and an fp32 log-sum-exp per head and row,
      T a 4 — no s^2 term;
    * the output projection its input, T q d; the attention and MLP dropouts their masks, T h each;
      with parallel attention and MLP (Falcon) the one norm output feeds both and is kept once;
    * GELU MLP: up-projection input T h d, GELU input T f d, down-projection input T f d;
      SwiGLU / GeGLU: up/gate input T h d, gate and up outputs 2 T f d (all a fused kernel keeps;
      eager ``act(gate) * up`` also keeps act(gate), T f d), down input T f d; MoE: per token ``experts_per_token`` routed copies of the expert terms plus
      the router's fp32 probabilities, T experts 4, and the shared experts' terms.

    For a GPT layer (LayerNorm, MHA, GELU, f = 4h) with unfused attention, dropout and d = 2 this is
    exactly ``s b h (34 + 5 a s / h)`` (Korthikanti eq. 1, no tensor parallelism) plus the two
    LayerNorms' fp32 mean and rstd, ``2 x 2 x 4 s b``, which eq. 1 leaves out.

    FLOPs: each GEMM ``2 rows k n`` forward and 2x that backward; unfused attention computes the
    full s x s matrix (``2 T s q`` each for QK^T and PV), flash the causal half and 2.5x backward.
    """
    m, d, t, s, b = wl.model, wl.act_bytes, float(wl.tokens), float(wl.seq_len), float(wl.micro_batch)
    h, q, kv, heads = m.hidden, m.q_dim, m.kv_dim, m.n_heads
    drop = wl.dropout
    ops: list[TrainOp] = [_elementwise("norm1", t * h, d, flop_per=5.0, saved=norm_saved_bytes(wl, t, h))]
    # Q, K, V (or MLA's compressions and up-projections) as one GEMM of their summed weights; MLA's
    # latent inputs to its up-projections are not counted among the saved bytes.
    qkv = m.attention_linears()[:-1]
    qkv_weights, qkv_out = sum(k * n * c for k, n, c in qkv), sum(n * c for _, n, c in qkv)
    nbytes = (qkv_weights + t * (h + qkv_out)) * d
    ops.append(TrainOp(name="qkv_proj", op_class=OpClass.GEMM, flop=2.0 * t * qkv_weights, bytes=nbytes,
                       bwd_flop=4.0 * t * qkv_weights, bwd_bytes=2.0 * nbytes, saved_bytes=t * h * d,
                       work_bytes=t * (h + qkv_out) * d))
    if m.qk_norm:  # per-head RMSNorm of q and k before the rotation
        ops.append(_elementwise("qk_norm", t * (q + kv), d, flop_per=5.0,
                                saved=norm_saved_bytes(wl, t * heads, m.head_dim)
                                + norm_saved_bytes(wl, t * m.n_kv_heads, m.head_dim)))
    if not m.learned_positions and m.family != "falcon":  # rotary embeddings (their backward needs no input)
        ops.append(_elementwise("rope", t * (q + kv), d, flop_per=3.0))
    scores = b * heads * s * s  # elements of the full score matrix
    if wl.fused_attention:
        pairs = s / 2.0  # causal: the kernel skips the masked half (flash-attn benchmarks count f // 2)
        flop = 4.0 * t * pairs * q
        nbytes = t * (2 * q + 2 * kv) * d
        ops.append(TrainOp(name="attention", op_class=OpClass.ATTENTION, flop=flop, bytes=nbytes,
                           bwd_flop=FLASH_BWD_FACTOR * flop, bwd_bytes=t * (4 * q + 4 * kv) * d,
                           saved_bytes=t * (q + 2 * kv) * d + t * heads * LSE_BYTES,
                           work_bytes=t * (2 * q + 2 * kv) * d, core=True))
    else:
        k_saved = q if m.is_gqa else kv
        ops.append(TrainOp(name="qk_matmul", op_class=OpClass.GEMM, flop=2.0 * t * s * q,
                           bytes=t * (q + k_saved) * d + scores * d, bwd_flop=4.0 * t * s * q,
                           bwd_bytes=2.0 * (t * (q + k_saved) * d + scores * d), saved_bytes=t * (q + k_saved) * d,
                           work_bytes=scores * d + t * (q + k_saved) * d, core=True))
        ops.append(_elementwise("softmax", scores, d, flop_per=5.0, saved=scores * d, core=True))
        if drop:
            ops.append(_elementwise("attn_dropout", scores, d, saved=scores * (d + MASK_BYTES),
                                    extra_bytes=scores * MASK_BYTES, core=True))
        ops.append(TrainOp(name="pv_matmul", op_class=OpClass.GEMM, flop=2.0 * t * s * q,
                           bytes=scores * d + t * (k_saved + q) * d, bwd_flop=4.0 * t * s * q,
                           bwd_bytes=2.0 * (scores * d + t * (k_saved + q) * d), saved_bytes=t * k_saved * d,
                           work_bytes=scores * d + t * (k_saved + q) * d, core=True))
    o_in = m.attention_linears()[-1][0]
    ops.append(_gemm("o_proj", t, o_in, h, d, saved=t * o_in * d))
    if drop:
        ops.append(_elementwise("attn_out_dropout", t * h, d, saved=t * h * MASK_BYTES, extra_bytes=t * h * MASK_BYTES))
    ops.append(_elementwise("residual1", t * h, d))
    if m.norms_per_layer > 1:
        ops.append(_elementwise("norm2", t * h, d, flop_per=5.0, saved=norm_saved_bytes(wl, t, h)))
    mlp = _mlp_ops(wl)
    if m.norms_per_layer == 1 and m.n_experts == 1:  # parallel attention and MLP (Falcon): one norm output
        mlp[0] = replace(mlp[0], saved_bytes=0.0)  # feeds both, kept once (by the QKV projection)
    ops.extend(mlp)
    if drop:
        ops.append(_elementwise("mlp_dropout", t * h, d, saved=t * h * MASK_BYTES, extra_bytes=t * h * MASK_BYTES))
    ops.append(_elementwise("residual2", t * h, d))
    for extra in range(max(m.norms_per_layer - 2, 0)):  # gemma2/3 post-norms
        ops.append(_elementwise(f"post_norm{extra + 1}", t * h, d, flop_per=5.0, saved=norm_saved_bytes(wl, t, h)))
    return tuple(ops)


def _mlp_ops(wl: TrainWorkload) -> list[TrainOp]:
    m, d, t = wl.model, wl.act_bytes, float(wl.tokens)
    h, f = m.hidden, m.intermediate

    def one(prefix: str, rows: float, width: int) -> list[TrainOp]:
        up = 2 if m.gated_mlp else 1
        # gate and up outputs (+ act(gate) when eager) / the GELU input
        act_saved = ((3 if wl.kernels == "eager" else 2) if m.gated_mlp else 1) * rows * width * d
        return [_gemm(f"{prefix}up", rows, h, up * width, d, saved=rows * h * d),
                _elementwise(f"{prefix}act", rows * width, d, flop_per=8.0, saved=act_saved),
                _gemm(f"{prefix}down", rows, width, h, d, saved=rows * width * d)]

    if m.n_experts == 1:
        return one("mlp_", t, f)
    k = m.experts_per_token
    router = _gemm("router", t, h, m.n_experts, d, saved=0.0)  # its input is the norm output, already kept
    router = replace(router, saved_bytes=t * m.n_experts * 4)  # fp32 routing probabilities
    ops = [router, *one("experts_", t * k, f)]
    if m.shared_experts:
        ops.extend(one("shared_", t, m.shared_experts * f))
    return ops


def head_ops(wl: TrainWorkload) -> tuple[TrainOp, ...]:
    """Embedding, final norm, LM head and cross entropy over one micro-batch.

    tierplan's count (Korthikanti §4.1 covers the transformer layer only): the final norm's
    (:func:`norm_saved_bytes`), the LM head's input, T h d, and the fp32 softmax the cross entropy keeps, T V 4 (the
    16-bit logits are cast to fp32 and freed); its backward holds dlogits in fp32 and 16-bit."""
    m, d, t = wl.model, wl.act_bytes, float(wl.tokens)
    h, v = m.hidden, m.vocab
    ops = [_elementwise("embedding", t * h, d, saved=t * h * MASK_BYTES if wl.dropout else 0.0),
           _elementwise("final_norm", t * h, d, flop_per=5.0, saved=norm_saved_bytes(wl, t, h)),
           _gemm("lm_head", t, h, v, d, saved=t * h * d)]
    ce = _elementwise("cross_entropy", t * v, 4, flop_per=5.0, saved=t * v * 4, extra_bytes=t * v * d)
    ops.append(replace(ce, work_bytes=t * v * (4 + d)))
    return tuple(ops)


def activation_bytes(wl: TrainWorkload, action: ActAction | str = ActAction.KEEP) -> float:
    """Bytes one layer keeps per micro-batch between its forward and backward under ``action``.

    ``keep``/``offload``: Σ saved bytes of :func:`layer_ops`; ``selective``: without the attention
    core's tensors beyond Q, K, V (the softmax output, dropout mask and output: Korthikanti's
    ``5 a s^2 b`` term; nothing for a fused kernel, which keeps none); ``recompute``: the layer input
    only, ``T h d`` (Korthikanti §4: ``2 s b h`` at d = 2).

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=1024, micro_batch=1, fused_attention=False,
    ...                    dropout=True)
    >>> s, b, h, a = 1024, 1, 768, 12
    >>> stats = 2 * 2 * 4 * s * b  # the two LayerNorms' fp32 mean and rstd, which eq. 1 leaves out
    >>> activation_bytes(wl) == s * b * h * (34 + 5 * a * s / h) + stats
    True
    >>> activation_bytes(wl, "selective") == 34 * s * b * h + stats, activation_bytes(wl, "recompute") == 2 * s * b * h
    (True, True)
    """
    action = ActAction(action)
    ops = layer_ops(wl)
    if action is ActAction.RECOMPUTE:
        return float(wl.tokens * wl.model.hidden * wl.act_bytes)
    keep = sum(op.saved_bytes for op in ops)
    if action is ActAction.SELECTIVE and not wl.fused_attention:
        # The softmax, dropout and their outputs go; Q, K (qk_matmul) and V (pv_matmul) stay.
        keep -= sum(op.saved_bytes for op in ops if op.core and op.op_class is OpClass.ELEMENTWISE)
    return float(keep)


# ---------------------------------------------------------------------------------------------
# Per-unit costs (shared by the evaluator and the future MIP)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainUnitCosts:
    """The coefficients of one unit (a decoder layer, or the embeddings + LM head) for one micro-batch
    or one step, in seconds and bytes; :func:`unit_phase_times` combines them with a policy's 0/1
    decisions, affinely.

    GPU times are per GPU per micro-batch; ``cpu_step_s`` is the node's CPU time to step the whole
    unit (every GPU's partition: the processes share the host's memory bandwidth), ``gpu_step_s``
    one GPU's time to step its partition on HBM. Byte fields are whole-unit (before partitioning);
    the shard factors divide them.
    """

    params: float
    fwd_gpu_s: float
    bwd_gpu_s: float
    recompute_gpu_s: float  # full recompute: the forward again
    selective_gpu_s: float  # selective recompute: the attention core's forward again
    act_keep_bytes: float
    act_selective_bytes: float
    act_input_bytes: float
    act_transient_bytes: float  # the largest dy + dx of one op's backward
    weights_bytes: float  # 16-bit (or fp32) working weights of the unit
    grads_bytes: float  # gradients as the backward writes them
    grad32_bytes: float  # the fp32 gradient copy for the step (0 if none)
    step_grad_bytes: float  # what the step reads as gradient, and the boundary D2H carries (fp32)
    master_bytes: float  # fp32 master weights when offloaded (fp32 training: a host copy of the weights)
    master_gpu_bytes: float  # fp32 master weights on the GPU (0 in fp32 training: the weights are the master)
    moments_bytes: float
    moment_tensors: int
    cpu_step_s: float
    gpu_step_s: float
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    link_latency_s: float
    disk_read_bytes_per_s: float
    disk_write_bytes_per_s: float
    disk_latency_s: float
    interconnect_bytes_per_s: float
    gpus: int
    zero_stage: int
    grad_accum: int
    snapshot_every: int = 0
    snap_master_host_s: float = 0.0  # the node's CPU time to copy the unit's master (or fp32 weights) in host memory
    snap_moments_host_s: float = 0.0  # ... and its moments
    bidir_penalty: float = 0.0  # extra link time per byte moved while the other direction moves: 1/bidirectional_factor - 1
    # The head only: the share of its gradient bytes complete only when the backward ends -- the token
    # (and learned position) embeddings', whose backward runs last; a tied LM head's weight is one of them.
    late_grad_share: float = 0.0

    @property
    def weight_shard(self) -> float:
        """Share of the weights one GPU holds: 1/N at ZeRO stage 3, else 1."""
        return 1.0 / self.gpus if self.zero_stage >= 3 else 1.0

    @property
    def grad_shard(self) -> float:
        """Share of the 16-bit gradients one GPU holds after reduction: 1/N at stage >= 2, else 1."""
        return 1.0 / self.gpus if self.zero_stage >= 2 else 1.0

    @property
    def state_shard(self) -> float:
        """Share of the optimizer states (master, moments, fp32 gradient) one GPU owns: 1/N at stage >= 1."""
        return 1.0 / self.gpus if self.zero_stage >= 1 else 1.0


def check_node(wl: TrainWorkload, system: System) -> None:
    """Raise :class:`WorkloadError` unless ``system`` can run ``wl.gpus`` data-parallel GPUs: a host
    that is one GPU's share of its node (``node_share`` s < 1) has at most round(1/s) GPUs, and more
    than one GPU needs a bus bandwidth for the collectives (the workload's or the system's
    ``interconnect``)."""
    n, share = wl.gpus, system.host.node_share
    if n > 1 and share < 1.0 and n * share > 1.0 + 1e-9:
        raise WorkloadError(f"gpus={n}: system {system.name!r}'s host {system.host.name!r} is one GPU's share of a "
                            f"{round(1.0 / share)}-GPU node (node_share {share:.4g}), so at most {round(1.0 / share)} "
                            "GPUs share it")
    if n > 1 and wl.interconnect_bytes_per_s is None and system.interconnect is None:
        raise WorkloadError(f"gpus={n} needs the GPUs' bus bandwidth for the gradient reduce-scatter and all-gather: "
                            f"system {system.name!r} has no interconnect (add one with --set interconnect=NAME, e.g. "
                            "nvswitch-h100) and the workload gives no interconnect_bytes_per_s (--interconnect)")


def node_host(wl: TrainWorkload, system: System) -> Host:
    """The host the ``gpus`` processes share. A whole host (``node_share`` 1) is shared as it is; a
    profile of one GPU's share of its node (``node_share`` s < 1, the bundled ``*-gpu-share`` hosts)
    counts N = ``gpus`` shares: memory, reserved memory, memory and optimizer bandwidth and FLOP/s times N,
    share N s."""
    host, n = system.host, wl.gpus
    if n == 1 or host.node_share >= 1.0:
        return host
    opt = host.optimizer_bytes_per_s
    return replace(host, memory_bytes=host.memory_bytes * n, reserved_bytes=host.reserved_bytes * n,
                   memory_bytes_per_s=host.memory_bytes_per_s * n, fp32_flop_per_s=host.fp32_flop_per_s * n,
                   optimizer_bytes_per_s=None if opt is None else opt * n, node_share=min(host.node_share * n, 1.0))


def node_capacity(wl: TrainWorkload, system: System) -> dict[str, float]:
    """Usable bytes per tier for the node of ``wl.gpus`` GPUs: one GPU's memory (each GPU holds its own
    partition and is checked alone), the shared host of :func:`node_host`, the disk."""
    host = node_host(wl, system)
    return {"gpu_bytes": system.gpu.memory_bytes - system.gpu.reserved_bytes,
            "host_bytes": host.memory_bytes - host.reserved_bytes,
            "disk_bytes": system.disk.capacity_bytes if system.disk else 0.0}


def interconnect_rate(wl: TrainWorkload, system: System) -> float:
    """Bus bandwidth of the collectives: the workload's ``interconnect_bytes_per_s`` if given, else the
    system interconnect's ``bus_bytes_per_s``; infinite for one GPU (no collectives)."""
    if wl.interconnect_bytes_per_s is not None:
        return float(wl.interconnect_bytes_per_s)
    if wl.gpus == 1:
        return math.inf
    if system.interconnect is None:
        check_node(wl, system)  # raises, naming both ways to give the bandwidth
    return system.interconnect.bus_bytes_per_s


def _gpu_proc(wl: TrainWorkload, system: System) -> Processor:
    gpu = Processor.gpu(system.gpu)
    if wl.precision is Precision.FP32:
        gpu = replace(gpu, peak_flop_per_s=system.gpu.fp32_flop_per_s)
    return gpu


def _ops_s(ops: Sequence[TrainOp], proc: Processor, backward: bool = False, core_only: bool = False) -> float:
    total = 0.0
    for op in ops:
        if core_only and not op.core:
            continue
        flop, nbytes = (op.bwd_flop, op.bwd_bytes) if backward else (op.flop, op.bytes)
        total += float(roofline_time_s(flop, nbytes, op.op_class, proc))
    return total


def _step_s(params: float, wl: TrainWorkload, proc: Processor, optimizer_bytes_per_s: float | None = None) -> float:
    """One optimizer step of ``params`` parameters, memory-bound elementwise passes where the states
    live: roofline(FLOPs = params x (OPTIMIZER_FLOP_PER_PARAM + 1 for the unscale's multiply), bytes =
    params x (read + written)) with the processor's elementwise and memory efficiency curves; the
    bytes of the unscale, update and 16-bit copy passes are :func:`step_bytes_per_param`'s.

    With a measured CPU optimizer rate (``optimizer_bytes_per_s``, the host's
    :attr:`~hwprofiles.types.Host.optimizer_bytes_per_s`) the update pass takes
    ``params x update bytes / rate`` instead, and the other passes (unscale, 16-bit copy) stay on
    the roofline: ``roofline(params x their FLOPs, params x their bytes)``.
    """
    if params <= 0:
        return 0.0
    read, written = step_bytes_per_param(wl.state, unscale=wl.unscales)
    flop = OPTIMIZER_FLOP_PER_PARAM[wl.optimizer] + (1 if wl.unscales else 0)
    if optimizer_bytes_per_s is None:
        return float(roofline_time_s(params * flop, params * (read + written), OpClass.ELEMENTWISE, proc))
    update = sum(step_bytes_per_param(wl.state, writes_weights_copy=False))
    rest, rest_flop = read + written - update, 1 if wl.unscales else 0
    passes = float(roofline_time_s(params * rest_flop, params * rest, OpClass.ELEMENTWISE, proc)) if rest > 0 else 0.0
    return params * update / optimizer_bytes_per_s + passes


@functools.lru_cache(maxsize=256)
def unit_costs(wl: TrainWorkload, system: System, *, head: bool = False) -> TrainUnitCosts:
    """Per-unit costs of one decoder layer (or, ``head=True``, of the embeddings, final norm and LM head).

    A MoE model's dense layers are costed like its MoE layers (the mean parameter count is used).
    Link rates per GPU: the link's, times its pageable factor unless ``pin_memory``, times
    ``max(uplink_share, 1/gpus)`` (GPUs behind a shared host uplink copy at once).
    """
    m, sb = wl.model, wl.state
    gpu = _gpu_proc(wl, system)
    ops = head_ops(wl) if head else layer_ops(wl)
    params = float(m.head_params() if head else m.layer_params())
    fwd = _ops_s(ops, gpu)
    link, disk = system.link, system.disk
    n = wl.gpus
    # Pageable host buffers copy at the pageable factor; N GPUs copying at once behind shared host uplinks
    # (PCIe switches) each keep max(share, 1/N) of the link's rates (hwprofiles.types.Link.uplink_share),
    # and the data-parallel step waits for the slowest.
    rate = (1.0 if wl.pin_memory else link.pageable_factor) * max(link.uplink_share, 1.0 / n)
    shard = 1.0 / n if wl.zero_stage >= 1 else 1.0
    host = node_host(wl, system)
    return TrainUnitCosts(
        params=params, fwd_gpu_s=fwd, bwd_gpu_s=_ops_s(ops, gpu, backward=True),
        recompute_gpu_s=0.0 if head else fwd, selective_gpu_s=0.0 if head else _ops_s(ops, gpu, core_only=True),
        act_keep_bytes=sum(op.saved_bytes for op in ops),
        act_selective_bytes=sum(op.saved_bytes for op in ops) if head else activation_bytes(wl, ActAction.SELECTIVE),
        act_input_bytes=float(wl.tokens * m.hidden * wl.act_bytes),
        act_transient_bytes=max(op.work_bytes for op in ops),
        weights_bytes=params * sb.weights, grads_bytes=params * sb.grads, grad32_bytes=params * sb.grad32,
        step_grad_bytes=params * sb.step_grad, master_bytes=params * (sb.master or sb.weights),
        master_gpu_bytes=params * sb.master, moments_bytes=params * sb.moments, moment_tensors=sb.moment_tensors,
        # The N processes step their partitions at once on the shared host: the node's CPU work is the unit.
        cpu_step_s=_step_s(params, wl, Processor.cpu(host), host.optimizer_bytes_per_s),
        gpu_step_s=_step_s(params * shard, wl, replace(gpu, peak_flop_per_s=system.gpu.fp32_flop_per_s)),
        h2d_bytes_per_s=link.h2d_bytes_per_s * rate, d2h_bytes_per_s=link.d2h_bytes_per_s * rate,
        link_latency_s=link.latency_s,
        disk_read_bytes_per_s=disk.read_bytes_per_s if disk else math.inf,
        disk_write_bytes_per_s=disk.write_bytes_per_s if disk else math.inf,
        disk_latency_s=disk.latency_s if disk else 0.0,
        interconnect_bytes_per_s=interconnect_rate(wl, system),
        gpus=n, zero_stage=wl.zero_stage, grad_accum=wl.grad_accum, snapshot_every=wl.snapshot_every,
        snap_master_host_s=_host_copy_s(params * (sb.master or sb.weights), host),
        snap_moments_host_s=_host_copy_s(params * sb.moments, host),
        bidir_penalty=1.0 / link.bidirectional_factor - 1.0,
        late_grad_share=(m.vocab + m.learned_positions) * m.hidden / params if head and params > 0 else 0.0,
    )


def _host_copy_s(nbytes: float, host: Host) -> float:
    """A copy of ``nbytes`` within host memory: it reads and writes them, ``2 nbytes`` on the host's
    memory roof (its efficiency curve)."""
    if nbytes <= 0:
        return 0.0
    return float(roofline_time_s(0.0, 2.0 * nbytes, OpClass.ELEMENTWISE, Processor.cpu(host)))


class Phase(enum.StrEnum):
    FORWARD = "forward"
    BACKWARD_FIRST = "backward_first"  # micro-step 0 of several
    BACKWARD_MID = "backward_mid"  # micro-steps 1 .. A-2
    BACKWARD_LAST = "backward_last"  # the accumulation boundary (the only one when grad_accum = 1)
    STEP = "step"
    SNAPSHOT = "snapshot"  # the in-memory snapshot's copies, per iteration (overlapped: busy time only)


def _xfer(nbytes: float, rate: float, latency: float) -> float:
    return nbytes / rate + latency if nbytes > 0 else 0.0


def _both_ways(h2d_bytes: float, d2h_bytes: float, uc: TrainUnitCosts) -> tuple[float, float]:
    """Seconds on the H2D and D2H engines of one unit's copies in one phase, each direction's bytes at
    its rate plus the link latency, and both slowed while the two directions run at once: the bytes
    that overlap, ``min(H2D, D2H)``, cost ``1/bidirectional_factor - 1`` extra per byte on each side
    (as :mod:`costmodel.kv` and :mod:`costmodel.embeddings_cost` charge them). The copies of a phase
    run on two copy streams beside each other (DeepSpeed's prefetch and offload, the replay's
    ``h2d``/``d2h`` streams), so within a phase the overlap is taken whole; a unit's copies are
    matched with its own opposite copies, which in a run of identical units are its neighbours'.

    >>> from types import SimpleNamespace
    >>> uc = SimpleNamespace(h2d_bytes_per_s=1e9, d2h_bytes_per_s=1e9, link_latency_s=0.0, bidir_penalty=1.0)
    >>> _both_ways(2e9, 1e9, uc)  # half-rate while both run: the common 1 GB costs twice on each side
    (3.0, 2.0)
    """
    extra = min(h2d_bytes, d2h_bytes) * uc.bidir_penalty  # 0 unless both directions move bytes
    return (_xfer(h2d_bytes + extra, uc.h2d_bytes_per_s, uc.link_latency_s),
            _xfer(d2h_bytes + extra, uc.d2h_bytes_per_s, uc.link_latency_s))


def unit_phase_times(uc: TrainUnitCosts, pol: LayerTrainPolicy) -> dict[Phase, dict[str, float]]:
    """Seconds per resource of one unit in each phase under ``pol``.

    Affine in the policy's 0/1 decisions (and in ``offload_share``) with the coefficients of ``uc``,
    except each transfer's fixed latency, charged once when a unit moves any bytes on a resource in
    a phase (a MIP charges it with the decision's binary), and the link's bidirectional slow-down,
    ``min(H2D, D2H) (1/bidirectional_factor - 1)`` extra bytes on each side of a phase's copies
    (:func:`_both_ways`; a GPU-stepped unit's streamed states count on both sides) -- each a
    constant of the policy, which is what the MIP's modes take.

    With N GPUs, w/g the weights'/gradients' bytes, and the shard factors of :class:`TrainUnitCosts`
    (ws = weight share, os = optimizer-state share), per GPU:

    * forward: GPU ``fwd``; H2D ``w ws`` if the weights are off the GPU (ZeRO-3 offload fetches the
      GPU's partition, then all-gathers); interconnect ``(N-1)/N w`` all-gather at stage 3; disk
      read ``w`` (the node's partitions) if the weights are on disk; D2H of offloaded activations
      ``share x keep``.
    * backward: GPU ``bwd`` + ``fwd`` (full recompute) or the attention core's forward (selective);
      H2D of the weights again (off-GPU weights) and of offloaded activations; "d2h" the gradients
      off the GPU, per DeepSpeed stage_1_and_2.py (commit 022f2236) ``copy_grads_in_partition``:
      with grad_accum > 1, ``async_accumulate_grad_in_cpu_via_gpu`` fetches the host buffer and
      adds it on the GPU on every micro-step but the first (``if self.micro_step_id > 0:
      accumulate_gradients()``: H2D ``g os``, key ``h2d_accum``) and copies the sum back to the host
      on every micro-step but the boundary (``if not self.is_gradient_accumulation_boundary:
      copy_gradients_to_cpu()``: D2H ``g os``) — so micro-step 0 moves ``g os`` out, each middle
      micro-step (1 .. A-2) ``g os`` in *and* out, and the boundary ``g os`` in. All of it is issued
      on DeepSpeed's reduction stream (``reduce_ipg_grads`` under ``overlap_comm``), one copy after
      another: the fetch is part of stage B, in series with the reduction and the copy out, not a
      prefetch beside the compute; the boundary then
      casts the partition to fp32 on the GPU and copies it to the host fp32 gradient
      (``async_inplace_copy_grad_to_fp32_buffer_from_gpu``: D2H ``4 P os``); interconnect: the gradients' reduce-scatter ``(N-1)/N g`` every
      micro-step at stage >= 2, at the boundary only at stages 0 (all-reduce, twice the bytes) and 1.
      Gradients on disk are written there at the boundary.
    * step: CPU ``cpu_step`` for a CPU step (the node's work); GPU ``gpu_step`` for a GPU step, plus
      H2D/D2H of master and moments streamed from the host; disk reads of the step's gradient (on
      disk), master and moments (on disk) and writes of master, moments and 16-bit weights (on
      disk); H2D of the updated 16-bit partition ``w os`` when a CPU step serves GPU-resident
      weights (a blocking ``copy_`` converts on the CPU, so 2 B/param cross); D2H of the updated
      16-bit partition ``w os`` when a GPU step serves weights that live off the GPU (``d2h``: they
      go back to the host copy they are fetched from, or through host staging to the disk, whose
      write of ``w`` is the disk term above); interconnect all-gather of updated weights
      ``(N-1)/N w`` at stages 1-2.

    A GPU step's keys are the stages of :func:`gpu_step_jobs`' flow shop.

    * snapshot (``snapshot_every`` k > 0), per iteration, 1/k of one copy of the states a restart
      needs -- the master weights (the weights themselves in fp32 training) and the moments -- into
      host memory, from where each lives: GPU-resident ones D2H (the GPU's partition), host-resident
      ones copied in host memory by the CPU (2 x their bytes on its memory roof), disk-resident ones
      read from the disk. The copies run beside training (a snapshot is taken asynchronously and
      finished before the next step), so they add busy time to their resources, not a schedule
      stage: they lengthen the iteration only where a resource has no slack.

    Examples
    --------
    A middle micro-step of a ZeRO-Offload layer copies its gradient partition both ways, one copy after
    the other on the reduction stream (the fetch is ``h2d_accum``; not slowed by the link's other
    direction, which the stream never runs at once); the first micro-step only copies out:

    >>> from costmodel.transformer import load_model
    >>> from hwprofiles import load_system
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=128, micro_batch=1, grad_accum=3)
    >>> uc = unit_costs(wl, load_system("a100-40gb"))
    >>> t = unit_phase_times(uc, LayerTrainPolicy(grads="host", master="host", moments="host", step="cpu"))
    >>> first, mid, last = (t[p] for p in (Phase.BACKWARD_FIRST, Phase.BACKWARD_MID, Phase.BACKWARD_LAST))
    >>> first["h2d_accum"] == 0 < first["d2h"] == mid["d2h"], 0 < mid["h2d_accum"] == last["h2d_accum"]
    (True, True)
    """
    n, lat, ic = uc.gpus, uc.link_latency_s, uc.interconnect_bytes_per_s
    frac = (n - 1) / n
    ws, os_ = uc.weight_shard, uc.state_shard
    h2d, d2h, dr, dw = uc.h2d_bytes_per_s, uc.d2h_bytes_per_s, uc.disk_read_bytes_per_s, uc.disk_write_bytes_per_s
    dlat = uc.disk_latency_s
    w_off = pol.params is not Tier.GPU
    w_disk = pol.params is Tier.DISK
    act_off = pol.offloaded_share * uc.act_keep_bytes
    gather = frac * uc.weights_bytes / ic if uc.zero_stage >= 3 and n > 1 else 0.0
    fwd_h2d, fwd_d2h = _both_ways(uc.weights_bytes * ws if w_off else 0.0, act_off, uc)
    fwd = {"gpu": uc.fwd_gpu_s, "h2d": fwd_h2d, "d2h": fwd_d2h, "interconnect": gather,
           "disk": _xfer(uc.weights_bytes if w_disk else 0.0, dr, dlat), "cpu": 0.0}
    recompute = {ActAction.RECOMPUTE: uc.recompute_gpu_s, ActAction.SELECTIVE: uc.selective_gpu_s}.get(
        pol.activations, 0.0)
    grads_off = pol.grads is not Tier.GPU
    g_part = uc.grads_bytes * os_
    accum = uc.grad_accum > 1

    def backward(micro: str) -> dict[str, float]:
        inbound = (uc.weights_bytes * ws if w_off else 0.0) + act_off
        outbound = fetched = 0.0
        if grads_off and accum:
            fetched = g_part if micro != "first" else 0.0  # accumulate_gradients(): micro_step_id > 0
            outbound += g_part if micro != "last" else 0.0  # copy_gradients_to_cpu(): not the boundary
        if grads_off and micro == "last":
            outbound += uc.step_grad_bytes * os_
        if uc.zero_stage >= 2:
            reduce = frac * uc.grads_bytes / ic if n > 1 else 0.0
        elif micro == "last":
            reduce = (2.0 if uc.zero_stage == 0 else 1.0) * frac * uc.grads_bytes / ic if n > 1 else 0.0
        else:
            reduce = 0.0
        disk = _xfer(uc.weights_bytes if w_disk else 0.0, dr, dlat)
        if pol.grads is Tier.DISK and micro == "last":
            disk += _xfer(uc.step_grad_bytes, dw, dlat)
        bwd_h2d, bwd_d2h = _both_ways(inbound, outbound, uc)
        # The accumulation fetch runs where DeepSpeed issues it, on the reduction stream, in series with
        # the reduction and the copy out (stage B): fetch, add, copy back, then the next unit's.
        return {"gpu": uc.bwd_gpu_s + recompute, "h2d": bwd_h2d, "d2h": bwd_d2h, "h2d_accum": _xfer(fetched, h2d, lat),
                "interconnect": gather, "reduce": reduce, "disk": disk, "cpu": 0.0}

    cpu = pol.step is StepDevice.CPU
    disk_read = (uc.step_grad_bytes if pol.grads is Tier.DISK else 0.0) + \
        (uc.master_bytes if pol.master is Tier.DISK else 0.0) + (uc.moments_bytes if pol.moments is Tier.DISK else 0.0)
    disk_write = (uc.master_bytes if pol.master is Tier.DISK else 0.0) + \
        (uc.moments_bytes if pol.moments is Tier.DISK else 0.0) + (uc.weights_bytes if w_disk else 0.0)
    streamed = 0.0 if cpu else ((uc.master_gpu_bytes if pol.master is Tier.HOST else 0.0)
                                + (uc.moments_bytes if pol.moments is Tier.HOST else 0.0)) * os_
    step = {"cpu": uc.cpu_step_s if cpu else 0.0, "gpu": 0.0 if cpu else uc.gpu_step_s,
            # a GPU-stepped unit's states stream in while its neighbour's go back out (and its weights
            # after them): the streamed bytes overlap, as in _both_ways
            "stream_h2d": _xfer(streamed * (1.0 + uc.bidir_penalty), h2d, lat),
            "stream_d2h": _xfer(streamed * (1.0 + uc.bidir_penalty), d2h, lat),
            "disk": _xfer(disk_read, dr, dlat) + _xfer(disk_write, dw, dlat),
            "h2d": _xfer(uc.weights_bytes * os_ if cpu and not w_off else 0.0, h2d, lat),
            "d2h": _xfer(uc.weights_bytes * os_ if not cpu and w_off else 0.0, d2h, lat),
            "interconnect": frac * uc.weights_bytes / ic if uc.zero_stage in (1, 2) and n > 1 else 0.0}
    snap = {"d2h": 0.0, "cpu": 0.0, "disk": 0.0}
    if uc.snapshot_every:
        k = float(uc.snapshot_every)
        fp32_master = uc.master_gpu_bytes == 0.0  # fp32 training: the weights are the master
        master_gpu = uc.weights_bytes * ws if fp32_master else uc.master_gpu_bytes * os_
        for tier, gpu_b, node_b, host_s in ((pol.params if fp32_master else pol.master, master_gpu, uc.master_bytes,
                                             uc.snap_master_host_s),
                                            (pol.moments, uc.moments_bytes * os_, uc.moments_bytes,
                                             uc.snap_moments_host_s)):
            if tier is Tier.GPU:
                snap["d2h"] += _xfer(gpu_b, d2h, lat) / k
            elif tier is Tier.HOST:
                snap["cpu"] += host_s / k
            else:
                snap["disk"] += _xfer(node_b, dr, dlat) / k
    return {Phase.FORWARD: fwd, Phase.BACKWARD_FIRST: backward("first"), Phase.BACKWARD_MID: backward("mid"),
            Phase.BACKWARD_LAST: backward("last"), Phase.STEP: step, Phase.SNAPSHOT: snap}


def backward_stages(phase: dict[str, float]) -> tuple[float, float]:
    """The two flow-shop stages of one unit's backward (a backward phase of :func:`unit_phase_times`):
    stage A, its compute beside its inbound copies, ``max(gpu, h2d, interconnect, disk)``; stage B,
    DeepSpeed's reduction stream, the reduce-scatter, the accumulation fetch and the copy out in
    series, ``reduce + h2d_accum + d2h``. :func:`costmodel.training.evaluate_training` and the MIP's
    coefficients both take them from here.

    Examples
    --------
    >>> backward_stages({"gpu": 3.0, "h2d": 1.0, "interconnect": 0.0, "disk": 0.0,
    ...                  "reduce": 0.5, "h2d_accum": 1.0, "d2h": 2.0})
    (3.0, 3.5)
    """
    return (max(phase["gpu"], phase["h2d"], phase["interconnect"], phase["disk"]),
            phase["reduce"] + phase["h2d_accum"] + phase["d2h"])


def gpu_step_job(step: dict[str, float]) -> tuple[float, float, float, float]:
    """The four stages of one unit's GPU step (the ``Phase.STEP`` seconds of :func:`unit_phase_times`):
    the H2D of its host-resident master and moments, the update on the GPU, the D2H of those states
    and of its updated 16-bit weights when they live off the GPU, then the disk write of those weights
    when they live on disk.

    A unit's states cannot be updated before they have arrived, nor sent back before they are
    updated (Deep Optimizer States' streamed update; the replay's ``_gpu_chain``), and each stage is
    one engine (one copy engine per direction), so the GPU-stepped units form a permutation flow
    shop over these stages (:func:`flow_shop_s`), in the order they are stepped.

    Examples
    --------
    >>> gpu_step_job({"stream_h2d": 1.0, "gpu": 2.0, "stream_d2h": 1.0, "d2h": 0.5, "disk": 0.0})
    (1.0, 2.0, 1.5, 0.0)
    """
    return (step["stream_h2d"], step["gpu"], step["stream_d2h"] + step["d2h"], step["disk"])


def flow_shop_s(jobs: Sequence[Sequence[float]]) -> float:
    """Makespan of jobs run in the given order through stages in series, each stage one job at a time:
    ``C[j, k] = max(C[j-1, k], C[j, k-1]) + p[j, k]`` (a permutation flow shop).

    Examples
    --------
    >>> flow_shop_s([(2, 1), (2, 1), (2, 1)])  # the second stage hides behind the first but the last
    7.0
    >>> flow_shop_s([(1, 3), (1, 3)])
    7.0
    """
    if not jobs:
        return 0.0
    done = [0.0] * len(jobs[0])
    for p in jobs:
        prev = 0.0
        for k, pk in enumerate(p):
            prev = max(done[k], prev) + pk
            done[k] = prev
    return float(done[-1])


__all__ = [
    "RESOURCE_KEYS", "ActAction", "LayerTrainPolicy", "Overlap", "Phase", "StepDevice", "Tier", "TrainOp", "TrainResource",
    "TrainUnitCosts", "TrainWorkload", "KERNELS", "activation_bytes", "backward_stages", "check_node", "flow_shop_s", "gpu_step_job", "head_ops",
    "interconnect_rate", "layer_ops", "node_capacity", "node_host", "norm_saved_bytes", "unit_costs", "unit_phase_times",
]
