"""Replay training iterations of a per-layer training plan with torch; compare measured with predicted
time, phase by phase (forward, backward, optimizer step).

What runs
---------
A slice of the model's decoder layers (each distinct layer policy keeps its share,
:func:`validate.replay.choose_slice`) and the head (embeddings, final norm, LM head and cross
entropy) train for real: a GPT/LLaMA-style block of the spec's shapes (LayerNorm or RMSNorm -- for
``kernels="eager"`` Hugging Face's ``LlamaRMSNorm`` code, for ``"fused"`` a kernel that keeps its input
and fp32 rstd --, one fused QKV projection split into separate q, k, v tensors as separate projections
give them where a rotation or q/k norm follows, rotary embeddings unless the model has learned positions, causal attention
with :func:`torch.nn.functional.scaled_dot_product_attention` -- or the eager softmax(QK^T)V when
the workload says ``fused_attention=False`` --, the output projection, a GELU or SwiGLU MLP (eager
``silu(gate) * up``, or with ``kernels="fused"`` one op that keeps only its input),
dropout where the workload has it), forward and backward over ``micro_batch x seq_len`` random
tokens, ``grad_accum`` micro-steps, then the optimizer step. Each layer does what its
:class:`~costmodel.training.LayerTrainPolicy` says:

* activations ``keep``: autograd keeps what it saves; ``recompute``: the layer runs under
  :func:`torch.utils.checkpoint.checkpoint` (``use_reentrant=False``), which keeps its input only;
  ``selective``: only the attention core is checkpointed (Korthikanti et al. 2022, §4.2);
  ``offload``: a :class:`torch.autograd.graph.saved_tensors_hooks` pack hook sends each storage the
  layer saves (up to ``offload_share`` of the layer's saved bytes) to a host buffer over the D2H
  link as soon as it is saved; the layer's backward finds it fetched back over the H2D link (the
  fetch is issued when the layer above starts its backward);
* ``params`` off the GPU (ZeRO-3 / ZeRO-Infinity): the layer's weights are fetched into one of two
  device slots during the previous layer (from host memory, or from a file through host staging
  for ``disk``); the pack hook saves references, not tensors, for the weights, and the backward
  fetches them again (as ZeRO-3 re-gathers them);
* ``grads`` off the GPU (a CPU step): when a unit's gradients are complete
  (:meth:`torch.Tensor.register_post_accumulate_grad_hook`) they go down over the D2H link while
  the next layer's backward runs -- with ``grad_accum > 1`` as DeepSpeed's
  ``async_accumulate_grad_in_cpu_via_gpu`` does (micro-step 0 copies them to a host buffer, later
  ones fetch that buffer, add, and copy the sum back, all in series on a reduction stream -- a CUDA
  stream, or one worker thread over the CPU stand-in's copiers -- as DeepSpeed's
  ``reduction_stream`` runs them), at the boundary cast to fp32 and copied to the step's fp32
  gradient (written on to a file for ``grads="disk"``);
* ``step="cpu"``: when the workload unscales (fp16, or clipped gradients) the step's gradient is
  first rescaled in place as DeepSpeed's ``unscale_and_clip_grads`` does, then
  :class:`torch.optim.AdamW` (``foreach=True``, ``fused=False``; Adam or SGD as the
  workload's optimizer says) on the fp32 master weights and moments in host memory -- read from and
  written back to files for ``disk`` tiers --, then the updated 16-bit weights go up over the H2D
  link; these layers are stepped one after another on a host thread while the GPU-stepped ones step
  on the device (Twin-Flow); a GPU step of states kept on the host streams them in and out.

The schedule is the cost model's ``overlap="deepspeed"`` (:mod:`costmodel.training`): copies of the
next unit overlap this unit's compute; ``overlap="none"`` waits for every copy where it is issued.

The link
--------
Under CUDA, one copy stream per direction (:class:`validate.replay.CudaLink`), host buffers pinned
when the workload says ``pin_memory``. On the CPU stand-in the "device" is the CPU too and a copier
thread per direction on its own core, paced to a rate (:class:`validate.replay.ThrottledLink`),
carries every transfer, so a byte over the link costs what the profile's link says; a disk is a
:class:`FileLink` (one paced thread over ``np.memmap`` files in a temporary directory). With
``link_bytes_per_s`` given, the copiers are paced to it *and* the prediction uses it
(``link.h2d = link.d2h``), as ``validate --suite embeddings`` does: on one CPU core the link is
otherwise only a few times slower than the stand-in's "HBM", and plans would differ mostly by
device work (see :data:`validate.suite_embeddings.CPU_LINK_BYTES_PER_S`).

Where the replay does what the cost model does not count
--------------------------------------------------------
* The head's gradients are complete only after the embeddings' backward, the last of the pass,
  so its D2H closes the backward (the model's flow shop puts the head's first).
* Each unit whose weights live on disk has its own host staging buffer (reads run two units ahead).
* On the CPU stand-in the copiers, the disk thread and the host's optimizer share one core.

What the prediction covers
--------------------------
:func:`replay_training` predicts the *replayed* workload with :func:`costmodel.training.evaluate_training`:
the slice of layers plus the head, with the model scaled down where it exceeds this device's
budget (:func:`scale_workload`: fewer heads and a narrower MLP at the same head size, a shorter
sequence, a smaller vocabulary), in the dtype replayed; ``slice`` in the result says what was cut
and ``predicted_full_model_s`` what the model predicts for the whole workload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import numbers
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from costmodel.errors import WorkloadError
from costmodel.training import (
    ActAction,
    LayerTrainPolicy,
    OptimizerKind,
    Overlap,
    Precision,
    StepDevice,
    Tier,
    TrainCost,
    TrainWorkload,
    evaluate_training,
    unit_costs,
)
from costmodel.transformer import TransformerSpec
from hwprofiles import System, apply_overrides
from validate.errors import ReplayError
from validate.replay import (
    MIN_SLEEP_S,
    CudaLink,
    CoreSplit,
    ThrottledLink,
    _hardware_warnings,
    _random_,
    byte_views,
    choose_slice,
    machine_name,
    memory_record,
    positive_int,
    profile_tags,
    run_settings,
)

# The CPU stand-in's budget for the replayed model, so that one iteration takes tens of milliseconds
# on one core (a layer of 2^20 parameters over 512 tokens is ~1 GFLOP forward, ~7 ms at the
# 0.15 TFLOP/s of validate/records/cpu-2core-2026-12-01-profile.yaml): a layer above it is narrowed
# (fewer heads at the same head size, a narrower MLP), longer micro-batches are cut.
CPU_MAX_LAYER_PARAMS = 1 << 20
CPU_MAX_TOKENS = 512
CPU_MAX_VOCAB = 2048
# Under CUDA the layers are replayed as planned unless a layer exceeds this (the slice's states
# must fit the device).
CUDA_MAX_LAYER_PARAMS = 1 << 31
# Values only steer the arithmetic (time is what is measured): a small step; AdamW's weight decay
# is torch.optim.AdamW's default (1e-2, https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html);
# SGD's momentum the usual 0.9.
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-2
SGD_MOMENTUM = 0.9
UNSCALE = 1.0 / 1024  # the step's in-place gradient rescale (1 / loss scale x clip factor)
DROPOUT_P = 0.1
NORM_EPS = 1e-5
ROPE_THETA = 10000.0
PHASES = ("forward", "backward", "step")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NP_BITS = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


# ------------------------------------------------------------------------------------ arguments
def _hf_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face transformers' ``LlamaRMSNorm.forward``, op for op (what it saves is what
    :func:`costmodel.training_units.norm_saved_bytes` counts for ``kernels="eager"``)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return w * h.to(dtype)


class _FusedRMSNorm(torch.autograd.Function):
    """RMSNorm as fused kernels run it (Apex ``FusedRMSNorm``, Transformer Engine): the forward keeps its
    input and the fp32 rstd per row, the backward recomputes the normalised tensor."""

    @staticmethod
    def forward(ctx, x, w, eps):
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, w, rstd)
        return (x.float() * rstd).to(x.dtype) * w

    @staticmethod
    def backward(ctx, grad):
        x, w, rstd = ctx.saved_tensors
        n = x.float() * rstd
        g = grad.float()
        gw = (g * n).sum(dim=tuple(range(g.dim() - 1))).to(w.dtype)
        gn = g * w.float()
        gx = rstd * (gn - n * (gn * n).mean(-1, keepdim=True))
        return gx.to(x.dtype), gw, None


class _FusedSwiGLU(torch.autograd.Function):
    """``silu(gate) * up`` of the up-projection's output as one fused op (Megatron-Core's
    ``bias_swiglu``): it keeps only its input and recomputes silu in the backward."""

    @staticmethod
    def forward(ctx, up):
        ctx.save_for_backward(up)
        g, u = up.chunk(2, dim=-1)
        return F.silu(g) * u

    @staticmethod
    def backward(ctx, grad):
        (up,) = ctx.saved_tensors
        g, u = up.chunk(2, dim=-1)
        sig = torch.sigmoid(g)
        silu = g * sig
        return torch.cat((grad * u * sig * (1 + g * (1 - sig)), grad * silu), dim=-1)


def _rate(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and math.isfinite(value)):
        raise ReplayError(f"{name} must be a positive finite number of bytes/s, got {value!r}")
    return float(value)


def _check_policies(wl, policies, head) -> tuple[tuple[LayerTrainPolicy, ...], LayerTrainPolicy]:
    if not isinstance(wl, TrainWorkload):
        raise ReplayError(f"wl must be a TrainWorkload, got {type(wl).__name__}")
    n = wl.model.n_layers
    if not isinstance(policies, (list, tuple)) or len(policies) != n:
        got = len(policies) if isinstance(policies, (list, tuple)) else type(policies).__name__
        raise ReplayError(f"policies must be one LayerTrainPolicy per layer of {wl.model.name!r} ({n}), got {got}")
    for i, p in enumerate(policies):
        if not isinstance(p, LayerTrainPolicy):
            raise ReplayError(f"policies[{i}] must be a LayerTrainPolicy, got {type(p).__name__}")
    if head is None:  # evaluate_training's default: the first layer's placement, activations kept
        head = dataclasses.replace(policies[0], activations=ActAction.KEEP, offload_share=1.0)
    elif not isinstance(head, LayerTrainPolicy):
        raise ReplayError(f"head must be a LayerTrainPolicy or None, got {type(head).__name__}")
    m = wl.model
    if m.n_experts > 1:
        raise ReplayError(f"replay of MoE layers is not supported yet (model {m.name!r} has n_experts={m.n_experts})")
    if m.kv_lora_rank:
        raise ReplayError(f"replay of MLA (latent KV) layers is not supported yet (model {m.name!r} has "
                          f"kv_lora_rank={m.kv_lora_rank})")
    if m.quant is not None:
        raise ReplayError(f"replay of quantised weights is not supported (model {m.name!r}: {m.quantization})")
    if m.n_heads % m.n_kv_heads:
        raise ReplayError(f"n_heads must be a multiple of n_kv_heads, got {m.n_heads} and {m.n_kv_heads}")
    if wl.gpus != 1:
        raise ReplayError(f"replay runs one GPU; the workload has gpus={wl.gpus} (its collectives are not replayed)")
    if wl.overlap is Overlap.FULL:
        raise ReplayError("overlap must be 'deepspeed' or 'none' to be replayed (the CPU step overlapping the "
                          "backward is not replayed yet), got 'full'")
    return tuple(policies), head


# ------------------------------------------------------------------------------------ scaling
def _floor_to(x: float, k: int) -> int:
    """``x`` rounded down to a multiple of ``k`` (at least ``k``): a narrowed layer stays within its budget."""
    return max(k, int(x // k) * k)


def scale_workload(wl: TrainWorkload, n_layers: int, device: torch.device | str = "cpu", *,
                   seq_len: int | None = None) -> tuple[TrainWorkload, list[dict]]:
    """The workload of a slice of ``n_layers`` layers, scaled to this device's budget.

    On the CPU a layer of more than :data:`CPU_MAX_LAYER_PARAMS` parameters is narrowed by
    ``r = sqrt(budget / params)``: the KV heads and the query heads by ``r`` (rounded down, the
    query heads a multiple of the KV heads, at least two per KV head for GQA/MQA, so the group
    may shrink), the head size only when the heads cannot shrink enough, hidden and MLP widths as
    the query width (a block with ``hidden == n_heads x head_dim`` stays so); the
    vocabulary is cut to :data:`CPU_MAX_VOCAB`; a micro-batch over :data:`CPU_MAX_TOKENS` tokens
    loses sequences, then tokens. ``seq_len`` replaces the sequence length (and is not cut).
    Returns the workload and one ``{field, value, of}`` entry per change.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=1024, micro_batch=8)
    >>> run, cut = scale_workload(wl, 2)
    >>> run.model.n_layers, run.model.hidden, run.model.n_heads, run.seq_len, run.micro_batch
    (2, 256, 4, 512, 1)
    >>> run.model.layer_params() <= CPU_MAX_LAYER_PARAMS
    True
    """
    dev = torch.device(device)
    m = wl.model
    cut: list[dict] = []
    cpu = dev.type == "cpu"
    budget = CPU_MAX_LAYER_PARAMS if cpu else CUDA_MAX_LAYER_PARAMS
    fields: dict[str, object] = {"n_layers": n_layers}
    if m.layer_params() > budget:
        r = math.sqrt(budget / m.layer_params())
        group = m.n_heads // m.n_kv_heads
        kv = max(1, int(m.n_kv_heads * r))  # rounded down: the layer stays within the budget
        # query heads a multiple of the KV heads; a GQA/MQA model keeps at least two per KV head
        heads = max(kv * min(group, 2), int(m.n_heads * r / kv) * kv)
        head_dim = m.head_dim
        if heads / m.n_heads > 1.5 * r:  # the heads cannot shrink enough (e.g. MQA): narrow each head too
            head_dim = _floor_to(m.head_dim * r * m.n_heads / heads, 8)
        # hidden and MLP widths scale as the query width does, so a square block stays square
        r_q = heads * head_dim / m.q_dim
        hidden = heads * head_dim if m.hidden == m.q_dim else _floor_to(m.hidden * r_q, 8)
        f = _floor_to(m.intermediate * r_q, 8)
        fields.update(n_heads=heads, n_kv_heads=kv, head_dim=head_dim, hidden=hidden, intermediate=f)
        # rounding (at least two heads, whole head sizes) can leave the layer over budget: a layer's
        # parameters are affine in the MLP width, so narrow the MLP until it fits
        p1 = dataclasses.replace(m, **fields).layer_params()
        if p1 > budget:
            p0 = dataclasses.replace(m, **{**fields, "intermediate": 0}).layer_params()
            fields["intermediate"] = _floor_to((budget - p0) / ((p1 - p0) / f), 8)
    if cpu and m.vocab > CPU_MAX_VOCAB:
        fields["vocab"] = CPU_MAX_VOCAB
    seq, mb = wl.seq_len, wl.micro_batch
    if seq_len is not None:
        seq = seq_len
    elif cpu and seq > CPU_MAX_TOKENS:
        seq = CPU_MAX_TOKENS
    if cpu and mb * seq > CPU_MAX_TOKENS:
        mb = max(1, CPU_MAX_TOKENS // seq)
    if seq > m.max_context_tokens:  # a longer replayed sequence (seq_len given): the context grows with it
        fields["max_positions"] = seq
        fields["context_tokens"] = 0
        if m.learned_positions:  # every row is trained, used or not: only a longer sequence adds rows
            fields["learned_positions"] = seq + max(0, m.learned_positions - m.max_positions)  # OPT's offset
    for k, v in fields.items():
        if getattr(m, k) != v and k != "context_tokens":
            cut.append({"field": k, "value": v, "of": getattr(m, k)})
    narrowed = "hidden" in fields or "vocab" in fields
    model = dataclasses.replace(m, **fields, name=f"{m.name} (replayed slice)" if narrowed else m.name)
    for k, v in (("seq_len", seq), ("micro_batch", mb)):
        if getattr(wl, k) != v:
            cut.append({"field": k, "value": v, "of": getattr(wl, k)})
    try:
        return dataclasses.replace(wl, model=model, seq_len=seq, micro_batch=mb), cut
    except WorkloadError as err:
        raise ReplayError(f"the replayed slice is not a valid workload: {err}") from None


# ------------------------------------------------------------------------------------ copy engines
class FileLink(ThrottledLink):
    """The stand-in for a disk: one thread copying between files (``np.memmap`` tensors) and host
    buffers, reads paced to ``read_bytes_per_s`` and writes to ``write_bytes_per_s``, one request at
    a time in submission order (the cost model adds a unit's reads and writes on its disk).

    Examples
    --------
    >>> disk = FileLink(1e9, 5e8)
    >>> a, b = torch.ones(1 << 16), torch.zeros(1 << 16)
    >>> disk.wait_host(disk.write([(b, a)])); disk.close()
    >>> bool(b.eq(1).all()), disk.bytes_moved
    (True, 262144)
    """

    def __init__(self, read_bytes_per_s: float, write_bytes_per_s: float, *, cpu: int | None = None,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        super().__init__(read_bytes_per_s, name="disk", cpu=cpu, clock=clock, sleep=sleep)
        self.write_bytes_per_s = _rate(write_bytes_per_s, "the disk's write rate")

    def _views(self, pairs):
        views = byte_views(pairs, "disk")
        return views

    def _queue_at(self, pairs, rate: float) -> Future:
        fut: Future = Future()
        self._queue.put(((rate, self._views(pairs)), fut))
        return fut

    def read(self, pairs) -> Future:
        """Queue copies from files into host buffers (paced at the read rate)."""
        return self._queue_at(pairs, self.bytes_per_s)

    def write(self, pairs) -> Future:
        """Queue copies from host buffers into files (paced at the write rate)."""
        return self._queue_at(pairs, self.write_bytes_per_s)

    submit = read

    def _copy(self, job) -> None:
        rate, views = job
        start = max(self.clock(), self._busy_until)
        done = 0
        for dst, src in views:
            for i in range(0, dst.size, self.chunk_bytes):
                j = min(dst.size, i + self.chunk_bytes)
                np.copyto(dst[i:j], src[i:j])
                done += j - i
                wait = start + done / rate - self.clock()
                if wait > MIN_SLEEP_S:
                    self.sleep(wait)
        self.bytes_moved += done
        self._busy_until = start + done / rate


# ------------------------------------------------------------------------------------ layouts
@dataclass(frozen=True, slots=True)
class _Layout:
    """The tensors of one unit packed in one flat buffer (DeepSpeed's flat partitions): one
    contiguous copy per unit and direction."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    @staticmethod
    def of(items: Sequence[tuple[str, tuple[int, ...]]]) -> _Layout:
        offsets, at = [], 0
        for _, shape in items:
            offsets.append(at)
            at += math.prod(shape)
        return _Layout(names=tuple(n for n, _ in items), shapes=tuple(s for _, s in items), offsets=tuple(offsets),
                       numel=at)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: flat[o:o + math.prod(s)].view(s) for n, s, o in zip(self.names, self.shapes, self.offsets)}


def _norm_items(prefix: str, h: int, layer_norm: bool) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.w", (h,))] + ([(f"{prefix}.b", (h,))] if layer_norm else [])


def layer_layout(m: TransformerSpec) -> _Layout:
    """The parameters of one decoder layer as the replay lays them out; their count is
    :meth:`~costmodel.transformer.TransformerSpec.layer_params`.

    >>> from costmodel.transformer import load_model
    >>> m = load_model("gpt2")
    >>> layer_layout(m).numel == m.layer_params() == 12 * 768**2 + 13 * 768
    True
    """
    h, q, kv, f, hd = m.hidden, m.q_dim, m.kv_dim, m.intermediate, m.head_dim
    up = (2 if m.gated_mlp else 1) * f
    items = _norm_items("norm1", h, m.layer_norm) + [("qkv.w", (q + 2 * kv, h))]
    if m.qkv_bias or m.linear_bias:
        items.append(("qkv.b", (q + 2 * kv,)))
    if m.qk_norm:
        items += [("q_norm.w", (hd,)), ("k_norm.w", (hd,))]
    items.append(("o.w", (h, q)))
    if m.o_bias or m.linear_bias:
        items.append(("o.b", (h,)))
    if m.norms_per_layer >= 2:
        items += _norm_items("norm2", h, m.layer_norm)
    for i in range(max(m.norms_per_layer - 2, 0)):
        items += _norm_items(f"post{i + 1}", h, m.layer_norm)
    items.append(("up.w", (up, h)))
    if m.mlp_bias or m.linear_bias:
        items.append(("up.b", (up,)))
    items.append(("down.w", (h, f)))
    if m.mlp_bias or m.linear_bias:
        items.append(("down.b", (h,)))
    return _Layout.of(items)


def head_layout(m: TransformerSpec) -> _Layout:
    """Embeddings, learned positions, the final norm and the LM head (unless tied):
    :meth:`~costmodel.transformer.TransformerSpec.head_params` parameters."""
    items = [("embed.w", (m.vocab, m.hidden))]
    if m.learned_positions:
        items.append(("pos.w", (m.learned_positions, m.hidden)))
    items += _norm_items("final_norm", m.hidden, m.layer_norm)
    if not m.tied_embeddings:
        items.append(("lm_head.w", (m.vocab, m.hidden)))
    return _Layout.of(items)


# ------------------------------------------------------------------------------------ saved tensors
class _WeightRef:
    """What the pack hook keeps for a weight of a unit whose weights leave the GPU: its geometry."""

    __slots__ = ("offset", "size", "stride", "unit")

    def __init__(self, unit, t: torch.Tensor):
        self.unit, self.offset, self.size, self.stride = unit, t.storage_offset(), tuple(t.size()), t.stride()


@dataclass(slots=True)
class _Offloaded:
    """One storage a layer saved, sent to the host: its host copy, the device copy fetched back."""

    nbytes: int
    host: torch.Tensor
    d2h: object
    dev: torch.Tensor | None  # the saved device storage, held until its copy is done
    back: torch.Tensor | None = None


class _ActRef:
    __slots__ = ("dtype", "entry", "offset", "size", "stride", "unit")

    def __init__(self, unit, entry: _Offloaded, t: torch.Tensor):
        self.unit, self.entry, self.dtype = unit, entry, t.dtype
        self.offset, self.size, self.stride = t.storage_offset(), tuple(t.size()), t.stride()


@dataclass(slots=True)
class _ActRecord:
    """What one layer's forward saved (per storage): offloaded entries, or None for kept ones."""

    by_ptr: dict
    entries: list
    seen_bytes: int = 0
    offloaded_bytes: int = 0
    released: bool = False


def _over(t: torch.Tensor, storage, offset: int, size, stride) -> torch.Tensor:
    return torch.empty(0, dtype=t.dtype if isinstance(t, torch.Tensor) else t, device=storage.device).set_(
        storage, offset, size, stride)


def _bytes_of(storage) -> torch.Tensor:
    """A 1-D uint8 tensor over a whole storage."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class _BufferPool:
    """Device buffers reused by units in turn (gradient slots, fp32 casts, fetched accumulations):
    a buffer is free again once the copy that reads it is done; a new one is allocated only when
    every buffer is busy and none is being drained."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device, link):
        self.numel, self.dtype, self.device, self.link = numel, dtype, device, link
        self.free: list[torch.Tensor] = []
        self.draining: list[tuple[torch.Tensor, object]] = []
        self.allocated = 0

    def acquire(self) -> torch.Tensor:
        if self.free:
            return self.free.pop()
        if self.draining and self.allocated >= 2:
            buf, handle = self.draining.pop(0)
            self.link.wait_device(handle)
            return buf
        self.allocated += 1
        return torch.empty(self.numel, dtype=self.dtype, device=self.device)

    def release(self, buf: torch.Tensor, handle=None) -> None:
        if handle is None:
            self.free.append(buf)
        else:
            self.draining.append((buf, handle))

    def settle(self) -> None:
        for buf, handle in self.draining:
            self.link.wait_host(handle)
            self.free.append(buf)
        self.draining.clear()


# ------------------------------------------------------------------------------------ units
class _Unit:
    """One decoder layer (or the head) with its tensors on the tiers its policy names."""

    def __init__(self, name: str, layout: _Layout, pol: LayerTrainPolicy, rep: TrainReplayer, *, is_head: bool):
        self.name, self.layout, self.pol, self.is_head = name, layout, pol, is_head
        n, dev, wd = layout.numel, rep.dev, rep.dtype
        self.numel = n
        self.mixed = wd != torch.float32
        self.params_gpu = pol.params is Tier.GPU
        self.grads_gpu = pol.grads is Tier.GPU
        self.cpu_step = pol.step is StepDevice.CPU
        self.offload = pol.activations is ActAction.OFFLOAD and pol.offload_share > 0 and not is_head
        self.k_moments = rep.k_moments
        init = torch.empty(n, dtype=torch.float32)
        _random_(init)
        for name_, view in layout.views(init).items():  # norms start at 1, biases at 0
            if name_.endswith(".b"):
                view.zero_()
            elif "norm" in name_:
                view.fill_(1.0)
        self.w_dev = self.w_host = self.w_file = None
        self.params: dict[str, torch.Tensor] = {}
        if self.params_gpu:
            self.w_dev = init.to(device=dev, dtype=wd)
            for k, v in layout.views(self.w_dev).items():
                p = torch.nn.Parameter(v)
                p.register_post_accumulate_grad_hook(lambda t, u=self: rep._leaf_done(u))
                self.params[k] = p
        elif pol.params is Tier.HOST:
            self.w_host = rep.host_tensor(n, wd).copy_(init)
        else:
            self.w_file = rep.file_tensor(f"{name}.weights", n, wd).copy_(init)
        # fp32 master weights: their own copy in mixed precision (a host copy for a CPU step in fp32)
        self.m_dev = self.m_host = self.m_file = None
        if self.mixed or self.cpu_step:
            if pol.master is Tier.GPU:
                self.m_dev = init.to(device=dev)
            elif pol.master is Tier.HOST:
                self.m_host = rep.host_tensor(n, torch.float32).copy_(init)
            else:
                self.m_file = rep.file_tensor(f"{name}.master", n, torch.float32).copy_(init)
        k = self.k_moments
        self.mom_dev = self.mom_host = self.mom_file = None
        if k:
            if pol.moments is Tier.GPU:
                self.mom_dev = torch.zeros(k * n, device=dev)
            elif pol.moments is Tier.HOST:
                self.mom_host = rep.host_tensor(k * n, torch.float32).zero_()
            else:
                self.mom_file = rep.file_tensor(f"{name}.moments", k * n, torch.float32).zero_()
        self.g_dev = self.g32_dev = self.accum_host = self.g32_host = self.g_file = None
        if self.grads_gpu:
            self.g_dev = torch.zeros(n, dtype=wd, device=dev)
            if self.mixed:
                self.g32_dev = torch.zeros(n, device=dev)
        else:
            if rep.wl.grad_accum > 1:
                self.accum_host = rep.host_tensor(n, wd).zero_()
            self.g32_host = rep.host_tensor(n, torch.float32).zero_()
            if pol.grads is Tier.DISK:
                self.g_file = rep.file_tensor(f"{name}.grads", n, torch.float32).zero_()
        step_dev = torch.device("cpu") if self.cpu_step else dev
        self.opt_param = torch.empty(0, device=step_dev)
        self.opt = rep.make_optimizer(self.opt_param)
        self.step_t = torch.tensor(0.0)
        # per-iteration state
        self.leaves: list[torch.Tensor] = list(self.params.values())
        self.fwd_ptr = self.w_dev.untyped_storage().data_ptr() if self.w_dev is not None else None
        self.fwd_flat: torch.Tensor | None = self.w_dev
        self.bwd_flat: torch.Tensor | None = self.w_dev
        self.inbound = None  # the H2D handle of this unit's fetch for the pass in progress
        self.inbound_pass = None
        self.disk_read: Future | None = None
        self.disk_stage: torch.Tensor | None = None
        self.grad_buf: torch.Tensor | None = None
        self.pending = 0
        self.d2h = None
        self.after_d2h: Future | None = None
        self.act: _ActRecord | None = None
        self.keep_bytes_measured: int | None = None
        self.host_act_bufs: list[torch.Tensor] = []

    @property
    def streams_states(self) -> bool:
        """A GPU step of states kept on the host: they are streamed in and out (Deep Optimizer States)."""
        return not self.cpu_step and ((self.mixed and self.pol.master is Tier.HOST) or
                                      (self.k_moments > 0 and self.pol.moments is Tier.HOST))


def _on_disk(u: _Unit) -> bool:
    return any(t is not None for t in (u.w_file, u.m_file, u.mom_file, u.g_file))


# ------------------------------------------------------------------------------------ the replayer
class TrainReplayer:
    """Runs training iterations of a slice of layers plus the head and times each phase.

    Parameters
    ----------
    wl : TrainWorkload
        The workload as replayed (sliced and scaled: ``wl.model.n_layers`` layers; its precision the
        replay's).
    policies : sequence of LayerTrainPolicy
        One per layer of ``wl.model``.
    head : LayerTrainPolicy
        The head's placement (its activations are kept).
    device : torch.device
        ``cuda`` (copy streams) or ``cpu`` (paced copier threads).
    link_bytes_per_s : (float, float)
        H2D and D2H rates of the CPU stand-in's copiers (ignored under CUDA).
    disk_bytes_per_s : (float, float) or None
        Read and write rates of the disk stand-in (needed when a tier is ``disk``).
    compute_threads : int or None
        CPU stand-in only: torch threads for compute, the last core left to the copiers and the
        host's optimizer.
    seed : int
        Seeds the weights, tokens and labels.

    Examples
    --------
    >>> from costmodel.transformer import load_model
    >>> m = dataclasses.replace(load_model("gpt2"), n_layers=1, hidden=64, n_heads=2, n_kv_heads=2, head_dim=32,
    ...                         intermediate=128, vocab=128)
    >>> wl = TrainWorkload(model=m, seq_len=16, micro_batch=1)
    >>> rep = TrainReplayer(wl, [LayerTrainPolicy()], LayerTrainPolicy(), torch.device("cpu"))
    >>> sorted(rep.iteration()); rep.close()
    ['backward', 'forward', 'step']
    """

    def __init__(self, wl: TrainWorkload, policies: Sequence[LayerTrainPolicy], head: LayerTrainPolicy,
                 device: torch.device, *, link_bytes_per_s: tuple[float, float] = (1e9, 1e9),
                 disk_bytes_per_s: tuple[float, float] | None = None, compute_threads: int | None = None,
                 seed: int = 0):
        self.wl, self.m, self.dev = wl, wl.model, device
        self.cuda = device.type == "cuda"
        self.dtype = torch.float32 if wl.precision is Precision.FP32 else DTYPES[str(wl.precision)]
        self.pinned = self.cuda and wl.pin_memory
        self.sync_copies = wl.overlap is Overlap.NONE
        self.k_moments = {OptimizerKind.ADAMW: 2, OptimizerKind.ADAM: 2, OptimizerKind.SGD_MOMENTUM: 1,
                          OptimizerKind.SGD: 0}[wl.optimizer]
        self.stats = {"pack_calls": 0, "offloaded_tensors": 0, "offloaded_storages": 0, "offloaded_bytes": 0,
                      "unpack_calls": 0, "saved_bytes_offload_layers": 0}
        self.stepped: dict[str, list[str]] = {"cpu": [], "gpu": []}
        self.notes: list[str] = []
        # Bytes a layer saves, to size an offload share before a forward has measured it (all, by default).
        self.predicted_keep_bytes = math.inf
        self._tmp: str | None = None
        self._cores = CoreSplit(not self.cuda, compute_threads)
        copier_core = self._cores.copier_core
        self.h2d = self.d2h = self.disk = self.host = self.reduction = None
        self.reduce_stream = None
        try:
            pols = list(policies)
            uses_disk = any(Tier.DISK in (p.params, p.grads, p.master, p.moments) for p in (*pols, head))
            if uses_disk:
                if disk_bytes_per_s is None:
                    raise ReplayError("a policy puts state on disk but no disk rates were given (the system has no disk)")
                self._tmp = tempfile.mkdtemp(prefix="tierplan-replay-train-")
                self.disk = FileLink(*disk_bytes_per_s, cpu=copier_core)
            if self.cuda:
                self.h2d, self.d2h = CudaLink(device, "h2d"), CudaLink(device, "d2h")
                # DeepSpeed's reduction stream: an accumulated gradient's fetch, add and copy back, in series
                self.reduce_stream = torch.cuda.Stream(device)
            else:
                self.h2d = ThrottledLink(link_bytes_per_s[0], name="h2d", cpu=copier_core)
                self.d2h = ThrottledLink(link_bytes_per_s[1], name="d2h", cpu=copier_core)
            # The host's CPU: the optimizer of CPU-stepped units and the work after their gradients land.
            self.host = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierplan-host",
                                           initializer=self._pin_host_thread, initargs=(copier_core,))
            if not self.cuda:  # the CPU stand-in's reduction stream: one worker, one chain after another
                self.reduction = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierplan-reduction")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(pols, head, seed)
        except BaseException:
            self.close()
            raise

    # -- construction --------------------------------------------------------------------------
    def _pin_host_thread(self, core: int | None) -> None:
        self._cores.pin_host_thread(core)

    def host_tensor(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype, pin_memory=self.pinned)

    def file_tensor(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        path = os.path.join(self._tmp, name.replace(" ", "_"))
        mm = np.memmap(path, dtype=_NP_BITS[dtype], mode="w+", shape=(max(1, numel),))
        t = torch.from_numpy(mm)[:numel]
        return t.view(dtype) if dtype is torch.bfloat16 else t

    def make_optimizer(self, param: torch.Tensor) -> torch.optim.Optimizer:
        opt = self.wl.optimizer
        if opt is OptimizerKind.ADAMW:
            return torch.optim.AdamW([param], lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, foreach=True, fused=False)
        if opt is OptimizerKind.ADAM:
            return torch.optim.Adam([param], lr=LEARNING_RATE, foreach=True, fused=False)
        return torch.optim.SGD([param], lr=LEARNING_RATE, momentum=SGD_MOMENTUM if opt is OptimizerKind.SGD_MOMENTUM
                               else 0.0, foreach=True)

    def _build(self, pols: list[LayerTrainPolicy], head: LayerTrainPolicy, seed: int) -> None:
        m, wl, dev, dt = self.m, self.wl, self.dev, self.dtype
        if m.n_heads % m.n_kv_heads or m.n_experts > 1 or m.kv_lora_rank:
            raise ReplayError(f"model {m.name!r} cannot be replayed: it needs dense layers (n_experts 1, no MLA) and "
                              f"n_heads a multiple of n_kv_heads, got n_experts={m.n_experts}, "
                              f"kv_lora_rank={m.kv_lora_rank}, n_heads={m.n_heads}, n_kv_heads={m.n_kv_heads}")
        self.layers = [_Unit(f"layer {j}", layer_layout(m), p, self, is_head=False) for j, p in enumerate(pols)]
        self.head = _Unit("head", head_layout(m), head, self, is_head=True)
        for u in self.layers:
            if u.numel != m.layer_params():
                raise ReplayError(f"the replay's layer holds {u.numel:,} parameters but the cost model counts "
                                  f"{m.layer_params():,} for {m.name!r}: the layer is not replayed as costed")
        if self.head.numel != m.head_params():
            raise ReplayError(f"the replay's head holds {self.head.numel:,} parameters but the cost model counts "
                              f"{m.head_params():,} for {m.name!r}")
        units = [*self.layers, self.head]
        n_layer = self.layers[0].numel
        # Device slots for weights that live off the GPU: two for the layers, one for the head.
        self.w_slots = [torch.empty(n_layer, dtype=dt, device=dev) for _ in range(2)] \
            if any(not u.params_gpu for u in self.layers) else None
        self.head_slot = torch.empty(self.head.numel, dtype=dt, device=dev) if not self.head.params_gpu else None
        off = [u for u in units if not u.grads_gpu]
        big = max((u.numel for u in off), default=0)
        self.grad_pool = _BufferPool(n_layer, dt, dev, self.d2h) if any(not u.grads_gpu for u in self.layers) else None
        self.head_grad = torch.empty(self.head.numel, dtype=dt, device=dev) if not self.head.grads_gpu else None
        self.g32_pool = _BufferPool(big, torch.float32, dev, self.d2h) if off and dt != torch.float32 else None
        self.accum_pool = _BufferPool(big, dt, dev, self.d2h) if off and wl.grad_accum > 1 else None
        # Host staging for weights read from disk: one buffer per unit (reads run two units ahead of
        # the compute and copies up one, so a shared ring could be refilled under a copy in flight).
        for u in units:
            if u.w_file is not None:
                u.disk_stage = self.host_tensor(u.numel, dt)
        # Host staging for a CPU step of states on disk (two sets: one being stepped, one read/written).
        disk_step = [u for u in units if u.cpu_step and _on_disk(u)]
        if disk_step:
            big_s = max(u.numel for u in disk_step)
            self.step_stage = [{"master": self.host_tensor(big_s, torch.float32),
                                "moments": self.host_tensor(max(1, self.k_moments * big_s), torch.float32),
                                "grad": self.host_tensor(big_s, torch.float32),
                                "weights": self.host_tensor(big_s, dt)} for _ in range(2)]
        else:
            self.step_stage = None
        cpu_units = [u for u in units if u.cpu_step]
        self.w16_stage = self.host_tensor(max(u.numel for u in cpu_units), dt) \
            if cpu_units and dt != torch.float32 else None
        streamed = [u for u in units if u.streams_states]
        if streamed:
            big_s = max(u.numel for u in streamed)
            self.state_stage = [{"master": torch.empty(big_s, device=dev),
                                 "moments": torch.empty(max(1, self.k_moments * big_s), device=dev)}
                                for _ in range(2)]
        else:
            self.state_stage = None
        # Inputs and constants (kept on the device by every pack hook).
        b, s = wl.micro_batch, wl.seq_len
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, m.vocab, (b, s), generator=gen).to(dev)
        self.labels = torch.randint(0, m.vocab, (b, s), generator=gen).to(dev)
        self.pos = torch.arange(s, device=dev)
        self.rope = not m.learned_positions and m.family != "falcon"  # as costmodel.training_units.layer_ops
        consts = [self.ids, self.labels, self.pos]
        if self.rope:
            d = m.head_dim
            inv = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            freqs = torch.outer(torch.arange(s, dtype=torch.float32), inv)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.cos, self.sin = emb.cos().to(device=dev, dtype=dt), emb.sin().to(device=dev, dtype=dt)
            consts += [self.cos, self.sin]
        if not wl.fused_attention:
            self.mask = torch.full((s, s), float("-inf"), device=dev, dtype=dt).triu(1)
            consts.append(self.mask)
        self._const_ptrs = {t.untyped_storage().data_ptr() for t in consts}
        self.phase = "forward"
        self.micro = "last"
        self.micro_id = self._micro_count = 0

    def _restore(self) -> None:
        self._cores.restore()

    def close(self) -> None:
        for name in ("h2d", "d2h", "disk"):
            link = getattr(self, name, None)
            if link is not None:
                link.close()
        for name in ("host", "reduction"):
            pool = getattr(self, name, None)
            if pool is not None:
                pool.shutdown()
                setattr(self, name, None)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._restore()

    # -- transfers -----------------------------------------------------------------------------
    def _wait(self, link, handle) -> None:
        if handle is not None:
            link.wait_device(handle)

    def _submit(self, link, pairs, *, after_compute: bool = True):
        if not pairs:
            return None
        handle = link.submit(pairs, after_compute=after_compute) if link is not self.disk else link.read(pairs)
        if self.sync_copies:
            link.wait_host(handle)
        return handle

    def _start_disk_read(self, u: _Unit) -> None:
        """Read a unit's weights from its file into a host staging buffer (overlaps other work)."""
        if u.w_file is None or u.disk_read is not None:
            return
        if u.inbound is not None:  # the last copy up out of this unit's staging buffer is done
            self.h2d.wait_host(u.inbound)
        u.disk_read = self.disk.read([(u.disk_stage, u.w_file)])

    def _fetch(self, u: _Unit, pos: int, phase: str) -> None:
        """Issue unit ``u``'s inbound copies for ``phase``: its weights (off the GPU), in the backward
        also its offloaded activations. One H2D job. (Accumulated gradients are fetched on the reduction
        stream when the unit's gradients are ready: :meth:`_reduction_chain`.)"""
        if u.inbound_pass == (phase, self.micro_id):
            return
        u.inbound_pass = (phase, self.micro_id)
        pairs = []
        if not u.params_gpu:
            slot = self.head_slot if u.is_head else self.w_slots[pos % 2]
            flat = slot[:u.numel]
            if u.w_file is not None:
                self._start_disk_read(u)
                self.disk.wait_host(u.disk_read)
                src, u.disk_read = u.disk_stage, None
            else:
                src = u.w_host
            pairs.append((flat, src))
            if phase == "forward":
                u.fwd_flat = flat
            u.bwd_flat = flat
        if phase == "backward" and u.act is not None:
            for e in u.act.entries:
                e.back = torch.empty(e.nbytes, dtype=torch.uint8, device=self.dev)
                pairs.append((e.back, e.host))
        u.inbound = self._submit(self.h2d, pairs)

    # -- weights as the compute sees them --------------------------------------------------------
    def _weights(self, u: _Unit) -> dict[str, torch.Tensor]:
        if u.params_gpu:
            return u.params
        if self.phase == "forward":
            return dict(zip(u.layout.names, u.leaves))
        # a recompute in the backward: the weights fetched again (leaves, so the recomputation saves
        # what the forward saved)
        self._wait(self.h2d, u.inbound)
        return {k: v.detach().requires_grad_(True) for k, v in u.layout.views(u.bwd_flat).items()}

    def _make_leaves(self, u: _Unit) -> None:
        """The weights of a unit fetched into a slot, as fresh leaves whose gradients are hooked."""
        u.leaves = []
        for v in u.layout.views(u.fwd_flat).values():
            leaf = v.detach().requires_grad_(True)
            leaf.register_post_accumulate_grad_hook(lambda t, u=u: self._leaf_done(u))
            u.leaves.append(leaf)
        u.fwd_ptr = u.fwd_flat.untyped_storage().data_ptr()

    # -- saved tensors ---------------------------------------------------------------------------
    def _hooks(self, u: _Unit):
        if u.params_gpu and not u.offload:
            return contextlib.nullcontext()
        if u.offload:
            u.act = _ActRecord(by_ptr={}, entries=[])
        return torch.autograd.graph.saved_tensors_hooks(lambda t: self._pack(u, t), self._unpack)

    def _pack(self, u: _Unit, t: torch.Tensor):
        self.stats["pack_calls"] += 1
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self._const_ptrs:
            return t
        if ptr == u.fwd_ptr:
            return t if u.params_gpu else _WeightRef(u, t)
        if not u.offload:
            return t
        rec = u.act
        if ptr in rec.by_ptr:
            entry = rec.by_ptr[ptr]
        else:
            nbytes = st.nbytes()
            rec.seen_bytes += nbytes
            share = u.pol.offload_share
            total = u.keep_bytes_measured if u.keep_bytes_measured is not None else self.predicted_keep_bytes
            if share < 1.0 and rec.offloaded_bytes + nbytes / 2 > share * total:
                entry = None  # this storage stays on the device (the rest of the share)
            else:
                idx = len(rec.entries)
                if idx >= len(u.host_act_bufs) or u.host_act_bufs[idx].numel() != nbytes:
                    buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)
                    if idx < len(u.host_act_bufs):
                        u.host_act_bufs[idx] = buf
                    else:
                        u.host_act_bufs.append(buf)
                host = u.host_act_bufs[idx]
                src = _bytes_of(st)
                entry = _Offloaded(nbytes=nbytes, host=host, d2h=self._submit(self.d2h, [(host, src)]), dev=src)
                rec.entries.append(entry)
                rec.offloaded_bytes += nbytes
                self.stats["offloaded_storages"] += 1
                self.stats["offloaded_bytes"] += nbytes
            rec.by_ptr[ptr] = entry
        if entry is None:
            return t
        self.stats["offloaded_tensors"] += 1
        return _ActRef(u, entry, t)

    def _unpack(self, ref):
        if isinstance(ref, torch.Tensor):
            return ref
        if isinstance(ref, _WeightRef):
            u = ref.unit
            self._wait(self.h2d, u.inbound)
            return _over(u.bwd_flat, u.bwd_flat.untyped_storage(), ref.offset, ref.size, ref.stride)
        e = ref.entry
        if e.back is None:  # not prefetched (the first layer of a pass): fetch it now
            e.back = torch.empty(e.nbytes, dtype=torch.uint8, device=self.dev)
            self.h2d.wait_device(self.h2d.submit([(e.back, e.host)]))
        else:
            self._wait(self.h2d, ref.unit.inbound)
        self.stats["unpack_calls"] += 1
        return _over(ref.dtype, e.back.untyped_storage(), ref.offset, ref.size, ref.stride)

    def _release_forward_copies(self, u: _Unit) -> None:
        """Wait for a layer's activation copies to the host, then let go of their device storage."""
        if u.act is None or u.act.released:
            return
        for e in u.act.entries:
            self._wait(self.d2h, e.d2h)
            e.dev = None
        u.act.released = True
        u.keep_bytes_measured = u.act.seen_bytes
        self.stats["saved_bytes_offload_layers"] += u.act.seen_bytes

    # -- model -----------------------------------------------------------------------------------
    def _norm(self, x, w, prefix: str):
        if self.m.layer_norm:
            return F.layer_norm(x, (x.shape[-1],), w[f"{prefix}.w"], w[f"{prefix}.b"], NORM_EPS)
        return self._rms(x, w[f"{prefix}.w"])

    def _rms(self, x, w):
        if self.wl.kernels == "fused":
            return _FusedRMSNorm.apply(x, w, NORM_EPS)
        return _hf_rms_norm(x, w, NORM_EPS)

    def _rotate(self, x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * self.cos + torch.cat((-x2, x1), dim=-1) * self.sin

    def _core(self, q, k, v):
        m, p = self.m, DROPOUT_P if self.wl.dropout else 0.0
        if self.wl.fused_attention:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True,
                                                  enable_gqa=m.n_kv_heads < m.n_heads)
        if m.n_kv_heads < m.n_heads:  # the eager kernel repeats K and V to every query head
            g = m.n_heads // m.n_kv_heads
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(m.head_dim)) + self.mask
        probs = torch.softmax(scores, dim=-1)
        if p:
            probs = F.dropout(probs, p)
        return probs @ v

    def _attention(self, w, h, selective: bool):
        m = self.m
        b, s, _ = h.shape
        qkv = F.linear(h, w["qkv.w"], w.get("qkv.b"))
        q, k, v = qkv.split([m.q_dim, m.kv_dim, m.kv_dim], dim=-1)
        if self.rope or m.qk_norm:
            # Separate q, k, v projections give separate (tokens, width) tensors, as Hugging Face's
            # q_proj / k_proj / v_proj do: a saved v (or q, k) must not keep the fused projection's whole
            # output, whose q and k parts the rotation or norm replaces.
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        q = q.view(b, s, m.n_heads, m.head_dim).transpose(1, 2)
        k = k.view(b, s, m.n_kv_heads, m.head_dim).transpose(1, 2)
        v = v.view(b, s, m.n_kv_heads, m.head_dim).transpose(1, 2)
        if m.qk_norm:
            q = self._rms(q, w["q_norm.w"])
            k = self._rms(k, w["k_norm.w"])
        if self.rope:
            q, k = self._rotate(q), self._rotate(k)
        if selective:
            o = checkpoint(self._core, q, k, v, use_reentrant=False, preserve_rng_state=self.wl.dropout)
        else:
            o = self._core(q, k, v)
        o = o.transpose(1, 2).reshape(b, s, m.q_dim)
        return F.linear(o, w["o.w"], w.get("o.b"))

    def _mlp(self, w, h):
        up = F.linear(h, w["up.w"], w.get("up.b"))
        if self.m.gated_mlp and self.wl.kernels == "fused":
            a = _FusedSwiGLU.apply(up)
        elif self.m.gated_mlp:
            g, u = up.chunk(2, dim=-1)
            a = F.silu(g) * u
        else:
            a = F.gelu(up, approximate="tanh")
        return F.linear(a, w["down.w"], w.get("down.b"))

    def _drop(self, x):
        return F.dropout(x, DROPOUT_P) if self.wl.dropout else x

    def _layer_body(self, u: _Unit, x):
        w = self._weights(u)
        m = self.m
        extra = max(m.norms_per_layer - 2, 0)
        h = self._norm(x, w, "norm1")
        a = self._attention(w, h, u.pol.activations is ActAction.SELECTIVE)
        if extra >= 1:
            a = self._norm(a, w, "post1")
        a = self._drop(a)
        if m.norms_per_layer == 1:  # parallel attention and MLP (Falcon)
            return x + a + self._drop(self._mlp(w, h))
        x = x + a
        mo = self._mlp(w, self._norm(x, w, "norm2"))
        if extra >= 2:
            mo = self._norm(mo, w, "post2")
        return x + self._drop(mo)

    def _embed(self):
        w = self._weights(self.head)
        x = F.embedding(self.ids, w["embed.w"])
        if self.m.learned_positions:
            x = x + F.embedding(self.pos, w["pos.w"])
        return self._drop(x)

    def _head_top(self, x):
        w = self._weights(self.head)
        h = self._norm(x, w, "final_norm")
        logits = F.linear(h, w["embed.w"] if self.m.tied_embeddings else w["lm_head.w"])
        return F.cross_entropy(logits.float().view(-1, self.m.vocab), self.labels.view(-1))

    # -- one micro-step --------------------------------------------------------------------------
    def _forward(self):
        self.phase = "forward"
        layers, n = self.layers, len(self.layers)
        hd = self.head
        if not hd.params_gpu:
            self._fetch(hd, 0, "forward")
        if not layers[0].params_gpu:
            self._fetch(layers[0], 0, "forward")
        if not hd.params_gpu:
            self._wait(self.h2d, hd.inbound)
            self._make_leaves(hd)
        with self._hooks(hd):
            x = self._embed()
        for j, u in enumerate(layers):
            if self.sync_copies:
                self._fetch(u, j, "forward")
            elif j + 1 < n:
                if j + 2 < n:  # a disk read two layers ahead, the copy up one layer ahead
                    self._start_disk_read(layers[j + 2])
                self._fetch(layers[j + 1], j + 1, "forward")
            if not u.params_gpu:
                self._wait(self.h2d, u.inbound)
                self._make_leaves(u)
            if j >= 2:  # at most one layer of activation write-back in flight
                self._release_forward_copies(layers[j - 2])
            with self._hooks(u):
                if u.pol.activations is ActAction.RECOMPUTE:
                    x = checkpoint(self._layer_body, u, x, use_reentrant=False, preserve_rng_state=self.wl.dropout)
                else:
                    x = self._layer_body(u, x)
            x.register_hook(lambda g, j=j: self._backward_start(j))
        with self._hooks(hd):
            loss = self._head_top(x)
        for u in layers:
            self._release_forward_copies(u)
        return loss

    def _bind_grads(self, u: _Unit) -> None:
        """At a unit's backward start: its leaves accumulate into its flat gradient buffer."""
        if u.grads_gpu:
            flat = u.g_dev
        else:
            # The head's gradients accumulate over the whole backward (the LM head first, the
            # embeddings last): its own buffer; the layers take turns in the pool's.
            u.grad_buf = self.head_grad if u.is_head else self.grad_pool.acquire()
            flat = u.grad_buf[:u.numel]
            flat.zero_()
        for leaf, g in zip(u.leaves, u.layout.views(flat).values()):
            leaf.grad = g
        u.pending = len(u.leaves)

    def _backward_start(self, j: int) -> None:
        """Layer ``j``'s backward is about to run (its output's gradient is ready)."""
        u = self.layers[j]
        self._bind_grads(u)
        pos = j  # the slot a layer's weights use, forward and backward
        if self.sync_copies:
            self._fetch(u, pos, "backward")
        elif j > 0:
            if j >= 2:
                self._start_disk_read(self.layers[j - 2])
            self._fetch(self.layers[j - 1], j - 1, "backward")

    def _backward(self, loss) -> None:
        self.phase = "backward"
        hd, n = self.head, len(self.layers)
        self._bind_grads(hd)
        self._fetch(hd, 0, "backward")
        if not self.sync_copies:
            last = self.layers[-1]
            self._fetch(last, n - 1, "backward")
            if n >= 2:
                self._start_disk_read(self.layers[-2])
        loss.backward()
        for u in (hd, *self.layers):
            if not u.grads_gpu:
                self.d2h.wait_host(u.d2h)
                if u.after_d2h is not None:
                    u.after_d2h.result()
                    u.after_d2h = None
            u.act = None
        for pool in (self.grad_pool, self.g32_pool, self.accum_pool):
            if pool is not None:
                pool.settle()

    def _leaf_done(self, u: _Unit) -> None:
        u.pending -= 1
        if u.pending == 0:
            self._grads_ready(u)

    def _grads_ready(self, u: _Unit) -> None:
        """A unit's gradients are complete: off-GPU ones go down now (beside the next layer's backward).

        At the boundary they are cast to fp32 on the GPU (mixed precision) and copied to the step's
        host gradient, else to the host accumulation buffer. After the first of several micro-steps,
        DeepSpeed first fetches the host sum and adds it (``async_accumulate_grad_in_cpu_via_gpu``),
        all on its reduction stream: :meth:`_reduction_chain` runs fetch, add, cast and copy down in
        series, one unit after another, beside the compute."""
        if u.grads_gpu:
            return
        n, buf = u.numel, u.grad_buf
        last = self.micro == "last"
        cast = last and self.g32_pool is not None
        out = self.g32_pool.acquire() if cast else buf
        dst = u.g32_host if last else u.accum_host
        if self.wl.grad_accum > 1 and self.micro != "first":
            acc = self.accum_pool.acquire()
            handle = self._reduction_chain(u, buf, acc, out, dst)
            self.accum_pool.release(acc, handle)
        else:
            if cast:
                out[:n].copy_(buf[:n])
            handle = self._submit(self.d2h, [(dst, out[:n])])
        u.d2h = handle
        if buf is not self.head_grad:
            self.grad_pool.release(buf, handle)
        if cast:
            self.g32_pool.release(out, handle)
        if last and u.g_file is not None:
            u.after_d2h = self.host.submit(self._grads_to_file, u, u.d2h)
        u.grad_buf = None

    def _reduction_chain(self, u: _Unit, buf: torch.Tensor, acc: torch.Tensor, out: torch.Tensor,
                         dst: torch.Tensor):
        """Fetch unit ``u``'s accumulated host gradient into ``acc``, add it to ``buf``, cast into ``out``
        (when it is another buffer) and copy it down to ``dst``, in series and after the previous unit's
        chain: on a CUDA stream of its own (DeepSpeed's ``reduction_stream``), or on the CPU stand-in's
        one reduction worker over the paced copiers. Returns the handle the copy down is waited on by."""
        n = u.numel
        if self.cuda:
            s = self.reduce_stream
            s.wait_stream(torch.cuda.current_stream(self.dev))  # the gradients are complete
            with torch.cuda.stream(s):
                acc[:n].copy_(u.accum_host, non_blocking=True)
                buf[:n].add_(acc[:n])
                if out is not buf:
                    out[:n].copy_(buf[:n])
                dst.copy_(out[:n], non_blocking=True)
                for t in (buf, acc, out):
                    t.record_stream(s)
                event = torch.cuda.Event()
                event.record(s)
            handle = event
        else:
            def chain() -> None:
                self.h2d.wait_host(self.h2d.submit([(acc[:n], u.accum_host)], after_compute=False))
                buf[:n].add_(acc[:n])
                if out is not buf:
                    out[:n].copy_(buf[:n])
                self.d2h.wait_host(self.d2h.submit([(dst, out[:n])], after_compute=False))

            handle = self.reduction.submit(chain)
        if self.sync_copies:
            self.d2h.wait_host(handle)
        return handle

    def _grads_to_file(self, u: _Unit, handle) -> None:
        self.d2h.wait_host(handle)
        self.disk.wait_host(self.disk.write([(u.g_file, u.g32_host)]))

    # -- the optimizer step ----------------------------------------------------------------------
    def _opt_step(self, u: _Unit, p: torch.Tensor, g: torch.Tensor, moments: torch.Tensor | None) -> None:
        if self.wl.unscales:  # DeepSpeed's unscale_and_clip_grads: grad.data.mul_(1. / combined_scale)
            g.mul_(UNSCALE)
        ph = u.opt_param
        ph.set_(p)
        ph.grad = g
        k, n = self.k_moments, u.numel
        if k == 2:
            u.opt.state[ph] = {"step": u.step_t, "exp_avg": moments[:n], "exp_avg_sq": moments[n:2 * n]}
        elif k == 1:
            u.opt.state[ph] = {"momentum_buffer": moments[:n]}
        u.opt.step()
        ph.grad = None

    def _cpu_chain(self, units: list[_Unit]) -> None:
        """The CPU-stepped units one after another on the host: each its states read from disk (the
        next unit's read overlaps this step), the step, the writes, then its updated weights up."""
        disk_units = [u for u in units if _on_disk(u)]
        reads: dict[int, Future] = {}
        writes: list[Future] = []
        n_k = self.k_moments

        def read(u: _Unit, stage: dict) -> Future:
            n = u.numel
            pairs = []
            if u.m_file is not None:
                pairs.append((stage["master"][:n], u.m_file))
            if u.mom_file is not None:
                pairs.append((stage["moments"][:n_k * n], u.mom_file))
            if u.g_file is not None:
                pairs.append((stage["grad"][:n], u.g_file))
            return self.disk.read(pairs)

        for u in units:
            n = u.numel
            stage = None
            if u in disk_units:
                d = disk_units.index(u)
                stage = self.step_stage[d % 2]
                if d not in reads:
                    reads[d] = read(u, stage)
                if d + 1 < len(disk_units):
                    reads[d + 1] = read(disk_units[d + 1], self.step_stage[(d + 1) % 2])
                self.disk.wait_host(reads.pop(d))
            p = stage["master"][:n] if u.m_file is not None else u.m_host
            g = stage["grad"][:n] if u.g_file is not None else u.g32_host
            mom = None
            if n_k:
                mom = stage["moments"][:n_k * n] if u.mom_file is not None else u.mom_host
            self._opt_step(u, p, g, mom)
            self.stepped["cpu"].append(u.name)
            pairs = []
            if u.m_file is not None:
                pairs.append((u.m_file, p))
            if u.mom_file is not None:
                pairs.append((u.mom_file, mom))
            if u.params_gpu:
                src = p
                if self.w16_stage is not None:  # a blocking copy_ converts on the CPU: 2 B/param cross
                    src = self.w16_stage[:n].copy_(p)
                h = self.h2d.submit([(u.w_dev, src)], after_compute=False)
                self.h2d.wait_host(h)
            elif u.w_host is not None:
                u.w_host.copy_(p)
            else:
                pairs.append((u.w_file, stage["weights"][:n].copy_(p)))
            if pairs:
                writes.append(self.disk.write(pairs))
        for f in writes:
            f.result()

    def _gpu_chain(self, units: list[_Unit]) -> None:
        """The GPU-stepped units on the device; states kept on the host are streamed in (the next
        unit's during this step) and out."""
        streamed = [u for u in units if u.streams_states]
        fetched: dict[int, object] = {}
        outs: list = [None, None]
        n_k = self.k_moments

        def fetch(i: int) -> None:
            u, st = streamed[i], self.state_stage[i % 2]
            self._wait(self.d2h, outs[i % 2])  # the staging set's previous contents have gone down
            n, pairs = u.numel, []
            if u.mixed and u.m_host is not None:
                pairs.append((st["master"][:n], u.m_host))
            if n_k and u.mom_host is not None:
                pairs.append((st["moments"][:n_k * n], u.mom_host))
            fetched[i] = self._submit(self.h2d, pairs)

        for u in units:
            n = u.numel
            st = None
            if u.streams_states:
                i = streamed.index(u)
                st = self.state_stage[i % 2]
                if i not in fetched:
                    fetch(i)
                if i + 1 < len(streamed) and not self.sync_copies:
                    fetch(i + 1)
                self._wait(self.h2d, fetched.pop(i))
            if u.mixed:
                p = st["master"][:n] if u.m_host is not None else u.m_dev
                g = u.g32_dev.copy_(u.g_dev)
            else:
                p, g = (u.w_dev if u.params_gpu else u.m_dev), u.g_dev
                if p is None:  # fp32 weights off the GPU: the step updates a device copy of them
                    p = u.bwd_flat.clone() if u.bwd_flat is not None else torch.zeros(n, device=self.dev)
            mom = None
            if n_k:
                mom = st["moments"][:n_k * n] if (st is not None and u.mom_host is not None) else u.mom_dev
            self._opt_step(u, p, g, mom)
            self.stepped["gpu"].append(u.name)
            if st is not None:
                pairs = []
                if u.mixed and u.m_host is not None:
                    pairs.append((u.m_host, p))
                if n_k and u.mom_host is not None:
                    pairs.append((u.mom_host, mom))
                i = streamed.index(u)
                outs[i % 2] = self._submit(self.d2h, pairs)
            if u.params_gpu:
                if u.mixed:
                    u.w_dev.copy_(p)
            else:  # weights on the host or disk: the updated ones go back (not in the cost model)
                dst = u.w_host if u.w_host is not None else u.w_file
                src = p.to(self.dtype).contiguous()
                if u.w_host is not None:
                    self.d2h.wait_host(self._submit(self.d2h, [(dst, src)]))
                else:
                    tmp = torch.empty(n, dtype=self.dtype, pin_memory=self.pinned)
                    self.d2h.wait_host(self._submit(self.d2h, [(tmp, src)]))
                    self.disk.write([(u.w_file, tmp)]).result()
        for h in outs:
            if h is not None:
                self.d2h.wait_host(h)

    def _step(self) -> None:
        self.phase = "step"
        units = [self.head, *reversed(self.layers)]  # the backward's order
        cpu = [u for u in units if u.cpu_step]
        gpu = [u for u in units if not u.cpu_step]
        job = self.host.submit(self._cpu_chain, cpu) if cpu and not self.sync_copies else None
        self._gpu_chain(gpu)
        if job is not None:
            job.result()
        elif cpu:
            self.host.submit(self._cpu_chain, cpu).result()
        for u in units:
            if u.grads_gpu:
                u.g_dev.zero_()

    # -- one iteration ---------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def iteration(self, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
        """One iteration (``grad_accum`` micro-steps, then the step); seconds per phase."""
        a = self.wl.grad_accum
        out = {"forward": 0.0, "backward": 0.0, "step": 0.0}
        self.stepped = {"cpu": [], "gpu": []}
        for k in range(a):
            self.micro = "last" if k == a - 1 else ("first" if k == 0 else "mid")
            self._micro_count += 1
            self.micro_id = self._micro_count
            self._sync()
            t0 = clock()
            loss = self._forward()
            self._sync()
            t1 = clock()
            self._backward(loss)
            del loss
            self._sync()
            t2 = clock()
            out["forward"] += t1 - t0
            out["backward"] += t2 - t1
        self._sync()
        t0 = clock()
        self._step()
        self._sync()
        out["step"] = clock() - t0
        return out

    def weights(self) -> dict[str, torch.Tensor]:
        """Each unit's working weights as the next forward will read them (a copy, flat)."""
        out = {}
        for u in (*self.layers, self.head):
            src = u.w_dev if u.w_dev is not None else (u.w_host if u.w_host is not None else u.w_file)
            out[u.name] = src.detach().to("cpu", copy=True)
        return out


# ------------------------------------------------------------------------------------ entry points
def _err(pred: float, meas: float) -> float | None:
    return 100.0 * (pred - meas) / meas if meas > 0 else None


def policy_digest(wl: TrainWorkload, policies: Sequence[LayerTrainPolicy], head: LayerTrainPolicy) -> str:
    """A short name for the replayed workload and its decisions: equal digests, equal replays."""
    key = (repr(wl.summary()), wl.model.hidden, wl.model.n_layers, tuple(policies), head)
    return hashlib.sha1(repr(key).encode()).hexdigest()[:12]


def _replay_precision(wl: TrainWorkload, system: System, dev: torch.device) -> tuple[TrainWorkload, list[str]]:
    """The workload in the dtype replayed: the profile's measured dtype, else the plan's (fp32 on the
    CPU, where fp16/bf16 math is emulated); fp32 moments; with a note per change."""
    notes = []
    tag = profile_tags(system.description).get("compute_dtype")
    if tag is not None and tag not in DTYPES:
        raise ReplayError(f"the profile's compute_dtype must be one of {sorted(DTYPES)}, got {tag!r} "
                          f"({system.file or system.name})")
    # fp32 on the CPU whatever the profile measured (a CUDA profile used here predicts; it does not run)
    want = Precision.FP32 if dev.type == "cpu" else wl.precision
    out = wl
    if want is not wl.precision:
        why = f"the dtype profile {system.name!r} measured" if tag else f"fp32 on {dev.type}"
        notes.append(f"the plan trains in {wl.precision}; replayed and re-predicted in {want} ({why}): fp32 weights "
                     f"and gradients (4 B/param each, no separate master copy), so transfers and states differ "
                     f"from the plan's")
        out = dataclasses.replace(out, precision=want)
    if out.moments_dtype != "fp32":
        notes.append(f"the plan keeps {out.moments_dtype} moments; replayed and re-predicted with fp32 moments "
                     f"(torch.optim keeps the parameters' dtype)")
        out = dataclasses.replace(out, moments_dtype="fp32")
    if out.snapshot_every:
        notes.append(f"the plan snapshots its states every {out.snapshot_every} iterations; the replay takes no "
                     f"snapshot and is re-predicted without one")
        out = dataclasses.replace(out, snapshot_every=0)
    return out, notes


def replay_training(wl: TrainWorkload, system: System, policies: Sequence[LayerTrainPolicy], *,
                    head: LayerTrainPolicy | None = None, layers: int | None = None, iterations: int = 3,
                    repeats: int = 2, warmup: int = 1, device: str | None = None, seq_len: int | None = None,
                    progress: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter,
                    link_bytes_per_s: float | None = None, plan_hardware: dict | None = None,
                    seed: int = 0) -> dict:
    """Replay training iterations of a per-layer training policy; returns the predicted-vs-measured report.

    Parameters
    ----------
    wl : TrainWorkload
        The plan's workload (one GPU; ``overlap`` ``deepspeed`` or ``none``).
    system : System
        The profile that predicts (measured on this machine for the errors to mean something).
    policies : sequence of LayerTrainPolicy
        One per decoder layer of ``wl.model``.
    head : LayerTrainPolicy or None
        The embeddings' and LM head's placement (default: :func:`~costmodel.training.evaluate_training`'s,
        the first layer's with activations kept).
    layers : int or None
        Replay this many layers (each distinct policy keeps its share, the head always); None: all.
    iterations, repeats : int
        ``iterations x repeats`` timed iterations; a row per iteration index gives the medians over
        the repeats.
    warmup : int
        Untimed iterations first (at least 1: the optimizer's state and the offload buffers exist
        after it).
    device : str or None
        ``cuda``, ``cuda:N`` or ``cpu`` (default: cuda when available).
    seq_len : int or None
        The replay's sequence length (default: the plan's, cut to :data:`CPU_MAX_TOKENS` on the CPU).
    progress : callable
        Receives one line per stage of the replay.
    clock : callable
        Seconds, for the phase timings (injectable for tests).
    link_bytes_per_s : float or None
        CPU stand-in only: the link's rate both ways, for the copiers *and* the prediction
        (``link.h2d``/``link.d2h`` overridden, the latency kept). Default: the profile's throttled
        copier rate (its ``link_throttle_bytes_per_s`` tag) for the copiers, else its link figures;
        the prediction keeps the profile's link.
    plan_hardware : dict or None
        ``Plan.hardware``, to warn when the plan was made for other hardware.
    seed : int
        Seeds the weights and tokens (>= 0).

    Returns
    -------
    dict
        ``predicted_s``/``measured_s``/``error_pct`` of one iteration, ``phases`` (forward, backward,
        step: predicted, measured median, min, max, error), ``iterations`` (rows), ``slice``,
        ``workload`` (as replayed), ``predicted_busy_s``, ``predicted_full_model_s``,
        ``activation_offload`` (pack-hook counts and bytes), ``stepped`` (units stepped on the CPU
        and on the device in the last iteration), ``memory`` (predicted and, under CUDA, measured
        peak device bytes), ``link``, ``warnings``.

    Raises
    ------
    ReplayError
        An argument is out of range or of the wrong kind (the message names it and its value), the
        workload cannot be replayed (MoE, MLA, several GPUs, ``overlap="full"``), or CUDA was asked
        for and is not there.
    """
    dev, iterations, repeats, warmup, seed = run_settings(device, iterations, repeats, warmup, seed)
    if layers is not None:
        layers = positive_int(layers, "layers")
    if seq_len is not None:
        seq_len = positive_int(seq_len, "seq_len")
    if not callable(progress) or not callable(clock):
        bad = "progress" if not callable(progress) else "clock"
        raise ReplayError(f"{bad} must be callable, got {(progress if bad == 'progress' else clock)!r}")
    if not isinstance(system, System):
        raise ReplayError(f"system must be a hwprofiles System, got {type(system).__name__}")
    pols, head = _check_policies(wl, policies, head)
    warnings = _hardware_warnings(system, plan_hardware, dev)
    tags = profile_tags(system.description)
    pred_system = system
    if dev.type == "cuda":
        if link_bytes_per_s is not None:
            raise ReplayError("link_bytes_per_s paces the CPU stand-in's copiers; under CUDA the link is real, "
                              f"got link_bytes_per_s={link_bytes_per_s!r}")
        rates = None
        link_note = "CUDA copy streams, one per direction" + ("; host buffers pinned" if wl.pin_memory else
                                                                "; host buffers pageable (pin_memory false)")
    else:
        pageable = 1.0 if wl.pin_memory else system.link.pageable_factor
        if link_bytes_per_s is not None:
            rate = _rate(link_bytes_per_s, "link_bytes_per_s")
            gbs = f"{rate / 1e9:.6g}GB/s"
            pred_system = apply_overrides(system, [f"link.h2d={gbs}", f"link.d2h={gbs}"])
            rates = (rate * pageable, rate * pageable)
            link_note = (f"CPU stand-in: copier threads paced to {gbs} both ways (x the pageable factor unless "
                         f"pin_memory) and predicted with link.h2d = link.d2h = {gbs} (latency kept)")
        else:
            throttle = tags.get("link_throttle_bytes_per_s")
            if throttle:
                rates = (float(throttle),) * 2
            else:
                rates = (system.link.h2d_bytes_per_s * pageable, system.link.d2h_bytes_per_s * pageable)
                warnings.append(f"profile {system.name!r} has no throttled-copier rate; the CPU copiers are paced "
                                f"to its link figures ({rates[0] / 1e9:.3g} / {rates[1] / 1e9:.3g} GB/s), which a "
                                f"memcpy on this machine may not reach")
            link_note = "CPU stand-in: copier threads paced to the profile's link; predicted with the profile's link"
    threads = int(tags["compute_threads"]) if tags.get("compute_threads", "").isdigit() else None

    idx = choose_slice(pols, layers)
    sliced = tuple(pols[i] for i in idx)
    wl_run, cut = scale_workload(wl, len(idx), dev, seq_len=seq_len)
    wl_run, notes = _replay_precision(wl_run, system, dev)
    warnings += notes
    try:
        cost: TrainCost = evaluate_training(wl_run, pred_system, sliced, head=head)
    except WorkloadError as err:
        raise ReplayError(f"the replayed slice cannot be costed: {err}") from None
    try:
        full = evaluate_training(wl, pred_system, pols, head=head).iteration_s
    except WorkloadError:
        full = None
    disk = pred_system.disk
    disk_rates = (disk.read_bytes_per_s, disk.write_bytes_per_s) if disk is not None else None
    uc = unit_costs(wl_run, pred_system)
    for w in warnings:
        progress(f"warning: {w}")
    kinds = sorted({f"{p.step.value}-step/{p.activations.value}" for p in sliced})
    progress(f"replaying layers {idx if len(idx) <= 8 else f'{len(idx)} of {len(pols)}'} ({', '.join(kinds)}) and "
             f"the head of {wl.model.name} on {dev.type}: {wl_run.micro_batch} x {wl_run.seq_len} tokens, "
             f"grad_accum {wl_run.grad_accum}, {wl_run.precision}"
             + (f", copiers at {rates[0] / 1e9:.3g}/{rates[1] / 1e9:.3g} GB/s H2D/D2H" if rates else "")
             + (f", model cut ({', '.join(c['field'] for c in cut)})" if cut else ""))
    base_bytes = 0.0
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base_bytes = float(torch.cuda.memory_allocated(dev))
        torch.cuda.reset_peak_memory_stats(dev)
    rep = TrainReplayer(wl_run, sliced, head, dev, link_bytes_per_s=rates or (1.0, 1.0), disk_bytes_per_s=disk_rates,
                        compute_threads=threads, seed=seed)
    rep.predicted_keep_bytes = uc.act_keep_bytes
    warnings += rep.notes
    try:
        for _ in range(warmup):
            rep.iteration(clock=clock)
        for k in rep.stats:
            rep.stats[k] = 0
        moved0 = {n: getattr(getattr(rep, n), "bytes_moved", None) for n in ("h2d", "d2h", "disk")}
        runs = [rep.iteration(clock=clock) for _ in range(iterations * repeats)]
        moved = {f"{n}_bytes": (getattr(getattr(rep, n), "bytes_moved", 0) - moved0[n]) / len(runs)
                 if moved0[n] is not None else None for n in ("h2d", "d2h", "disk")}
        peak = float(torch.cuda.max_memory_allocated(dev)) - base_bytes if dev.type == "cuda" else None
        stats = dict(rep.stats)
        stepped = {k: list(v) for k, v in rep.stepped.items()}
    finally:
        rep.close()
    predicted = {"forward": cost.forward_s, "backward": cost.backward_s, "step": cost.step_s}
    pred = float(cost.iteration_s)
    rows = []
    for i in range(iterations):
        per = [runs[r * iterations + i] for r in range(repeats)]
        totals = [sum(x.values()) for x in per]
        me = statistics.median(totals)
        rows.append({"iteration": i, "predicted_s": pred, "measured_s": me, "measured_min_s": min(totals),
                     "measured_max_s": max(totals), "error_pct": _err(pred, me),
                     "phases": {ph: {"predicted_s": predicted[ph], "measured_s": statistics.median(x[ph] for x in per)}
                                for ph in PHASES}})
        progress(f"  iteration {i}: predicted {pred * 1e3:.2f} ms, measured {me * 1e3:.2f} ms "
                 f"({rows[-1]['error_pct']:+.1f} %)")
    totals = [sum(x.values()) for x in runs]
    meas = statistics.median(totals)
    phases = {}
    for ph in PHASES:
        xs = [x[ph] for x in runs]
        me = statistics.median(xs)
        phases[ph] = {"predicted_s": predicted[ph], "measured_s": me, "measured_min_s": min(xs),
                      "measured_max_s": max(xs), "error_pct": _err(predicted[ph], me) if me > 1e-6 else None}
    micro_steps = len(runs) * wl_run.grad_accum
    n_off = sum(1 for p in sliced if p.activations is ActAction.OFFLOAD and p.offload_share > 0)
    mem = cost.memory
    out = {
        "family": "training",
        "device": str(dev), "device_name": machine_name(dev), "torch": torch.__version__,
        "dtype": str(rep.dtype).removeprefix("torch."), "plan_precision": str(wl.precision),
        "link": ({"kind": "throttled copier threads (CPU stand-in for the link)", "h2d_bytes_per_s": rates[0],
                  "d2h_bytes_per_s": rates[1], "moved_per_iteration": moved, "note": link_note}
                 if rates else {"kind": link_note}),
        "disk": ({"kind": "np.memmap files in a temporary directory, one copier thread paced to the profile's disk",
                  "read_bytes_per_s": disk_rates[0], "write_bytes_per_s": disk_rates[1]}
                 if disk_rates and rep.disk is not None else None),
        "policy_digest": policy_digest(wl_run, sliced, head),
        "workload": wl_run.summary(),
        "slice": {"layers": idx, "of_layers": len(pols), "policies": [p.summary() for p in sliced],
                  "head": head.summary(), "scaled": cut,
                  "model": {"hidden": wl_run.model.hidden, "n_heads": wl_run.model.n_heads,
                            "n_kv_heads": wl_run.model.n_kv_heads, "head_dim": wl_run.model.head_dim,
                            "intermediate": wl_run.model.intermediate, "vocab": wl_run.model.vocab,
                            "layer_params": wl_run.model.layer_params(), "head_params": wl_run.model.head_params()},
                  "representative": ("every layer" if len(idx) == len(pols) else
                                     "each distinct layer policy keeps its share of the slice"),
                  "note": ("predicted and measured describe the same thing: evaluate_training of the replayed "
                           "workload (these layers and the head"
                           + (", the model scaled down as 'scaled' lists"
                              if any(c["field"] != "n_layers" for c in cut) else "")
                           + (", in the replay's dtype" if wl_run.precision is not wl.precision else "")
                           + ") on the prediction profile")},
        "predicted_s": pred, "measured_s": meas, "error_pct": _err(pred, meas),
        "mean_abs_error_pct": statistics.mean(abs(r["error_pct"]) for r in rows),
        "max_abs_error_pct": max(abs(r["error_pct"]) for r in rows),
        "phases": phases, "iterations": rows,
        "predicted_busy_s": {str(r): float(t) for r, t in cost.busy}, "predicted_binding": cost.binding,
        "predicted_full_model_s": full,
        "activation_offload": {
            "layers": n_off, **{k: v / micro_steps for k, v in stats.items()},
            "per": "micro-step (means over the timed iterations)",
            "predicted_saved_bytes_offload_layers": n_off * uc.act_keep_bytes,
            "note": "pack_calls counts every saved tensor of layers run under hooks; offloaded_bytes went to the "
                    "host over the D2H link in the forward and came back over the H2D link in the backward"},
        "stepped": stepped,
        "settings": {"iterations": iterations, "repeats": repeats, "warmup": warmup, "seed": seed,
                     "layers": layers, "seq_len": wl_run.seq_len},
        "memory": memory_record(float(mem.gpu_bytes), mem.gpu_breakdown, "costmodel.training.memory_use of the replayed slice and head", peak),
        "warnings": warnings,
    }
    return out


def replay_plan(plan, system: System, *, model: TransformerSpec | None = None, **kwargs) -> dict:
    """Replay a :class:`solver.Plan` of kind ``training`` (its workload, layer policies and head,
    :func:`solver.training_plan.workload_from_plan` / ``policies_from_plan``) on this machine.

    ``model`` is the plan's :class:`TransformerSpec` when it cannot be loaded from the plan (a config
    file that moved); ``kwargs`` are those of :func:`replay_training`. Raises ``PlanError`` for a plan
    of another kind or without decisions.
    """
    from solver.training_plan import policies_from_plan, workload_from_plan

    wl = workload_from_plan(plan, model)
    pols, head = policies_from_plan(plan, wl)
    return replay_training(wl, system, pols, head=head, plan_hardware=plan.hardware, **kwargs)


def replay_table(result: dict) -> str:
    """The replay as text: per phase and per iteration, predicted vs measured (ms)."""
    lines = [(f"{'phase':>10s}  {'predicted ms':>12s}  {'measured ms':>11s}  {'min ms':>8s}  {'max ms':>8s}  "
              f"{'error %':>7s}")]
    for ph in PHASES:
        r = result["phases"][ph]
        e = "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}"
        lines.append(f"{ph:>10s}  {r['predicted_s'] * 1e3:12.2f}  {r['measured_s'] * 1e3:11.2f}  "
                     f"{r['measured_min_s'] * 1e3:8.2f}  {r['measured_max_s'] * 1e3:8.2f}  {e:>7s}")
    lines.append(f"{'iteration':>10s}  {result['predicted_s'] * 1e3:12.2f}  {result['measured_s'] * 1e3:11.2f}  "
                 f"{'':8s}  {'':8s}  {result['error_pct']:+7.1f}")
    for r in result["iterations"]:
        lines.append(f"  iteration {r['iteration']}: measured {r['measured_s'] * 1e3:.2f} ms "
                     f"(min {r['measured_min_s'] * 1e3:.2f}, max {r['measured_max_s'] * 1e3:.2f}), "
                     f"{r['error_pct']:+.1f} %")
    sl = result["slice"]
    kinds = sorted({f"{p['step']}-step/{p['activations']}" for p in sl["policies"]})
    lines.append(f"slice: layers {sl['layers']} of {sl['of_layers']} ({', '.join(kinds)}) and the head; "
                 f"{sl['representative']}; {sl['note']}")
    for c in sl["scaled"]:
        lines.append(f"  cut: {c['field']} {c['value']} of {c['of']}")
    off = result["activation_offload"]
    if off["layers"]:
        lines.append(f"activation offload: {off['offloaded_bytes'] / 1e6:.3g} MB a micro-step to the host "
                     f"({off['offloaded_storages']:.0f} storages, {off['unpack_calls']:.0f} unpacks); the layers "
                     f"saved {off['saved_bytes_offload_layers'] / 1e6:.3g} MB, the cost model counts "
                     f"{off['predicted_saved_bytes_offload_layers'] / 1e6:.3g} MB")
    mem = result["memory"]
    if mem["measured_peak_gpu_bytes"] is not None:
        lines.append(f"peak device memory: predicted {mem['predicted_gpu_bytes'] / 2**20:.1f} MiB, measured "
                     f"{mem['measured_peak_gpu_bytes'] / 2**20:.1f} MiB")
    link = result.get("link", {})
    if "h2d_bytes_per_s" in link:
        lines.append(f"link: {link['kind']}, {link['h2d_bytes_per_s'] / 1e9:.3g} GB/s H2D, "
                     f"{link['d2h_bytes_per_s'] / 1e9:.3g} GB/s D2H; {link['note']}")
    elif link:
        lines.append(f"link: {link['kind']}")
    lines.append(f"device {result['device_name']}, torch {result['torch']}, {result['dtype']}")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


__all__ = ["CPU_MAX_LAYER_PARAMS", "CPU_MAX_TOKENS", "CPU_MAX_VOCAB", "FileLink", "TrainReplayer", "head_layout",
           "layer_layout", "policy_digest", "replay_plan", "replay_table", "replay_training", "scale_workload"]
