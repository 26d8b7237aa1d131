"""Replay a plan's decode steps with real tensors and compare measured with predicted time.

What runs
---------
Each replayed layer has weights of the model's real shapes, split by rows as the plan says between
the compute device and host buffers; its KV cache split between resident tokens (on the device)
and offloaded ones (on the host); offloaded tokens are transferred, recomputed from host-stored
layer inputs with the layer's real K/V projection, or attended on the CPU, and the partial
attentions are merged by their log-sum-exp (FlashAttention's rescaling). Data are random; only
time and memory are measured.

Memory is laid out as the cost model counts it (:func:`costmodel.kv.memory_use`), sized for the
workload's longest context: on the device the resident weight rows and the resident KV share of
each layer only, two staging slots shared by all layers (streamed weight rows, moved KV tokens,
activations to recompute from; each slot as large as the largest need of any layer), and the
decode working set. KV is stored token-major, ``[tokens, 2 (K and V), batch, kv_heads, head_dim]``,
on both sides, so the tokens a layer moves in a step are one contiguous block: a non-contiguous
slice of pinned memory would be staged through pageable memory by ``copy_`` and block the host.

Copies and overlap (the steady state of the cost model)
-------------------------------------------------------
H2D and D2H each have their own engine: under CUDA a copy stream per direction (plus one for the
small CPU-attention results, so they do not queue behind a prefetch); on the CPU a copier thread
per direction on its own core, paced to the profile's link rate (:class:`ThrottledLink`). Layer
``l+1``'s H2D copies are issued when layer ``l`` starts and overlap its compute; the last layer of
a step prefetches layer 0 of the next step, so every layer, layer 0 included, finds its data
fetched during the previous layer, as the model assumes. Timed steps follow at least one
untimed warm-up step, so the first timed layer 0 was prefetched too. A layer's new KV share, its
input (for recompute) and the queries for CPU attention go D2H on the D2H engine as soon as the
QKV projection has produced them; the next layer waits for that D2H (a layer never runs more than
one layer ahead of its write-back, so a D2H-bound layer is slowed as the model says).

Because each layer's prefetch overlaps the previous layer, a measured per-layer time is
``max(compute of l, H2D of l+1)``, while the model's is ``max(compute of l, H2D of l)``: per-step
totals agree, rows of a slice mixing policies may shift by one layer.

Attention runs in the kernel the profile measured: :func:`decode_attention` (SDPA's fused flash
kernel; the query heads of each KV head are its query rows, which is exact for one decode position
and needs no repeated K/V for GQA). On a machine without CUDA the same code runs with device cpu.

A slice (``layers``, ``steps``) replays the first layers of each distinct policy and a few decode
steps spread over the generation; the report compares the slice's measured time with the slice's
own prediction and says what share of the model it covers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import os
import platform
import queue
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from costmodel import KvWorkload, LayerPolicy, memory_use, range_bounds, unit_costs
from costmodel.kv import layer_step_times
from hwprofiles import System
from validate.errors import ReplayError

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Bytes a paced copier moves between two looks at the clock: large enough that a chunk takes
# milliseconds at 1-2 GB/s (sleep's overshoot of ~0.1 ms stays small), small enough to pace evenly.
COPY_CHUNK_BYTES = 4 << 20
# Below this a paced copier does not sleep (Linux sleeps overshoot by tens of microseconds); the
# debt is paid by the next chunk or job, so the average rate is still the target.
MIN_SLEEP_S = 50e-6
PROFILE_TAG = "tierplan-profile"


# ------------------------------------------------------------------------------------ machine
def machine_name(device: torch.device) -> str:
    """What this machine's compute device is called in a measured profile (``gpu.description``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({len(_cores())} cores)"


def cpu_model() -> str:
    """The host CPU's model as the OS names it (Linux: ``model name`` of /proc/cpuinfo; elsewhere
    ``platform.processor()``), so records of two machines with the same core count tell them apart."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def part_name(machine: str) -> str:
    """The profile part name made from a machine name (``gpu.name`` of a measured profile).

    >>> part_name("NVIDIA H100 80GB HBM3")
    'nvidia-h100-80gb-hbm3'
    """
    return machine.lower().replace(" ", "-")[:60]


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: no affinity control
        return list(range(os.cpu_count() or 1))


def format_tags(tags: dict[str, object]) -> str:
    """The machine-readable tail ``tierplan profile`` writes into a profile's description.

    The loader keeps descriptions as text and refuses unknown keys, so facts the replay needs
    (the dtype measured, the copier's rate) travel here.

    >>> format_tags({"compute_dtype": "fp32", "compute_threads": 1})
    '[tierplan-profile compute_dtype=fp32; compute_threads=1]'
    """
    return f"[{PROFILE_TAG} " + "; ".join(f"{k}={v}" for k, v in tags.items()) + "]"


def profile_tags(description: str) -> dict[str, str]:
    """The tags of :func:`format_tags` found in a description ({} for profiles not measured here).

    >>> profile_tags("Measured on x [tierplan-profile compute_dtype=fp32; link=throttled]")
    {'compute_dtype': 'fp32', 'link': 'throttled'}
    """
    found = re.search(r"\[" + PROFILE_TAG + r" ([^\]]*)\]", description or "")
    if not found:
        return {}
    out = {}
    for item in found.group(1).split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            out[key] = value.strip()
    return out


def _dtype(dtype_bytes: int, device: torch.device) -> torch.dtype:
    """The dtype a plan's element size means when the profile does not say what it measured."""
    if dtype_bytes == 4:
        return torch.float32
    if dtype_bytes == 2:
        # fp16/bf16 math is emulated on most CPUs (30-60x slower than fp32): replay fp32 there.
        return torch.float16 if device.type == "cuda" else torch.float32
    raise ReplayError(f"replay supports 2- or 4-byte elements, got dtype_bytes={dtype_bytes}")


def predicted_layer_step_s(wl: KvWorkload, system: System, pol: LayerPolicy, step: int) -> float:
    """The cost model's time of one layer in decode step ``step`` (the same formula as evaluate())."""
    return max(predicted_layer_step_times(wl, system, pol, step).values())


def predicted_layer_step_times(wl: KvWorkload, system: System, pol: LayerPolicy, step: int) -> dict[str, float]:
    """Each resource's predicted seconds for one layer in decode step ``step``."""
    c = wl.prompt_len + 1 + step
    bounds = range_bounds(wl.gen_len, len(pol.splits))
    split = pol.splits[next(i for i, (a, b) in enumerate(bounds) if a <= step < b)]
    off = pol.kv.offloaded
    uc = unit_costs(wl, system, context=c, gpu_attn_tokens=c * (1 - off * split.cpu),
                    recompute_tokens=c * off * split.recompute, cpu_tokens=c * off * split.cpu)
    times = layer_step_times(uc, pol.weights, pol.kv, pol.activations_on_host, split, np.array([float(c)]))
    return {str(r): float(v[0]) for r, v in times.items()}


# ------------------------------------------------------------------------------------ attention
def attention_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """The decode-attention kernel :func:`decode_attention` runs for this device and dtype.

    SDPA's fused flash kernel, called through its ATen op so that it also returns the log-sum-exp
    (needed to merge partial attentions); the profile's attention sweep calls the same function.
    """
    if device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return "sdpa-flash-cpu"
    if (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention")):
        return "sdpa-flash-cuda"
    return "math"


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one decode position, with its log-sum-exp.

    Parameters
    ----------
    q : Tensor [batch, kv_heads, group, head_dim]
        The ``group = n_heads / kv_heads`` query heads that share each KV head, as query rows (exact
        for a single query position: no causal mask applies).
    k, v : Tensor [batch, kv_heads, tokens, head_dim]
        Any strides with a contiguous last dimension (a view of the token-major cache).
    kernel : str
        From :func:`attention_kernel`.

    Returns
    -------
    out : Tensor [batch, kv_heads, group, head_dim], in q's dtype
    lse : Tensor [batch, kv_heads, group], fp32
    """
    if kernel == "sdpa-flash-cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)
        return out, lse
    if kernel == "sdpa-flash-cuda":
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)
        return res[0], res[1]
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)).to(v.dtype) @ v
    return out, lse


def merge_attention(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine partial attentions over disjoint token sets by their log-sum-exp (FlashAttention's
    rescaling, Dao et al. 2022, section 3.1)."""
    if len(parts) == 1:
        return parts[0][0]
    lse = parts[0][1]
    for _, l2 in parts[1:]:
        lse = torch.logaddexp(lse, l2)
    out = sum(o.float() * torch.exp(l - lse).unsqueeze(-1) for o, l in parts)
    return out.to(parts[0][0].dtype)


def kv_view(buf: torch.Tensor, which: int, n: int) -> torch.Tensor:
    """K (``which=0``) or V (1) of the first ``n`` tokens of a token-major cache
    ``[tokens, 2, batch, kv_heads, head_dim]``, as ``[batch, kv_heads, n, head_dim]`` (a view)."""
    return buf[:n, which].permute(1, 2, 0, 3)


# ------------------------------------------------------------------------------------ copy engines
def positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int if it is one of at least ``minimum``, else :class:`ReplayError` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ReplayError(f"{name} must be {rule}, got {value!r}")
    return int(value)


def check_device_name(device) -> None:
    """A replay's ``device`` argument must be None, 'cpu', 'cuda' or 'cuda:N'."""
    if device is not None and (not isinstance(device, str) or not (device in ("cpu", "cuda")
                                                                    or device.startswith("cuda:"))):
        raise ReplayError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def run_settings(device, iterations, repeats, warmup, seed) -> tuple[torch.device, int, int, int, int]:
    """A family replay's common arguments, checked: ``(device, iterations, repeats, warmup, seed)``
    with the device resolved (:func:`resolve_device`) and at least one warm-up iteration."""
    check_device_name(device)
    dev = resolve_device(device)
    return (dev, positive_int(iterations, "iterations"), positive_int(repeats, "repeats"),
            max(1, positive_int(warmup, "warmup", minimum=0)), positive_int(seed, "seed", minimum=0))


def resolve_device(device) -> torch.device:
    """The device a replay or suite runs on: the one named, else CUDA where torch sees it, else the CPU."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReplayError("device 'cuda' was asked for but torch sees no CUDA device")
    return dev


class CoreSplit:
    """On the CPU stand-in, compute on every core but the last and the copiers on the last one, as
    the profile measured it; :meth:`restore` puts the caller's threads and affinity back. Under CUDA
    (``cpu=False``) it changes nothing.

    ``copier_core`` is the core a copier thread pins itself to (None: a single core, or CUDA).
    """

    def __init__(self, cpu: bool, compute_threads: int | None = None) -> None:
        self.cpu = cpu
        self._threads_before = torch.get_num_threads()
        self._affinity_before = None
        cores = _cores()
        if cpu:
            torch.set_num_threads(compute_threads or max(1, len(cores) - 1))
            if len(cores) > 1:
                try:
                    self._affinity_before = os.sched_getaffinity(0)
                    os.sched_setaffinity(0, set(cores[:-1]))
                except (AttributeError, OSError):
                    self._affinity_before = None
        self.copier_core = cores[-1] if len(cores) > 1 else None

    def restore(self) -> None:
        if self.cpu:
            torch.set_num_threads(self._threads_before)
            if self._affinity_before is not None:
                try:
                    os.sched_setaffinity(0, self._affinity_before)
                except OSError:
                    pass
                self._affinity_before = None

    def pin_host_thread(self, core: int | None) -> None:
        """A host worker thread's initializer: pin it to ``core`` (the copiers'), on the CPU stand-in."""
        if self.cpu and core is not None:
            try:
                os.sched_setaffinity(0, {core})
            except (AttributeError, OSError):
                pass


def byte_views(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(destination, source) byte views of CPU tensor pairs for a copier thread (empty ones left out).

    Raises
    ------
    ReplayError
        A tensor off the CPU, or a pair that is not contiguous and of one dtype and size (``name``
        names the copier).
    """
    views = []
    for dst, src in pairs:
        if dst.device.type != "cpu" or src.device.type != "cpu":
            raise ReplayError(f"the {name} copier copies CPU tensors, got {src.device} -> {dst.device}")
        if not (dst.is_contiguous() and src.is_contiguous()) or dst.nbytes != src.nbytes or dst.dtype != src.dtype:
            raise ReplayError(f"the {name} copier needs contiguous tensors of one dtype and size, got "
                              f"{tuple(src.shape)} {src.dtype} -> {tuple(dst.shape)} {dst.dtype}")
        if dst.nbytes:
            views.append((dst.reshape(-1).view(torch.uint8).numpy(), src.reshape(-1).view(torch.uint8).numpy()))
    return views


def memory_record(predicted_gpu_bytes: float, breakdown: Iterable[tuple[str, float]], note: str,
                  peak: float | None) -> dict:
    """A replay result's ``memory``: the prediction with its terms beside the measured CUDA peak."""
    return {
        "predicted_gpu_bytes": predicted_gpu_bytes,
        "predicted_gpu_breakdown": {k: float(v) for k, v in breakdown},
        "predicted_note": note,
        "measured_peak_gpu_bytes": peak,
        "measured": ("torch.cuda.max_memory_allocated over the replay, less what was allocated before"
                     if peak is not None else "not measured (no GPU: the CPU stands in)"),
        "error_pct": 100 * (predicted_gpu_bytes - peak) / peak if peak else None,
    }


class ThrottledLink:
    """The CPU stand-in for one direction of the link: a copier thread on its own core, paced to
    ``bytes_per_s``.

    Jobs (lists of ``(dst, src)`` pairs of contiguous CPU tensors of equal size) are copied in
    order, :data:`COPY_CHUNK_BYTES` at a time with numpy (one core, the GIL released), sleeping
    after each chunk until the bytes moved so far match the rate. ``inline=True`` copies in the
    calling thread, paced the same way (the CPU-attention results, which must not queue behind a
    prefetch). ``clock`` and ``sleep`` are injectable for tests.

    Examples
    --------
    >>> link = ThrottledLink(1e9)
    >>> a, b = torch.ones(1 << 20), torch.zeros(1 << 20)
    >>> link.wait_host(link.submit([(b, a)])); link.close()
    >>> bool(b.eq(1).all())
    True
    """

    def __init__(self, bytes_per_s: float, *, name: str = "h2d", cpu: int | None = None, inline: bool = False,
                 chunk_bytes: int = COPY_CHUNK_BYTES, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        if not (bytes_per_s > 0 and math.isfinite(bytes_per_s)):
            raise ReplayError(f"the {name} copier's rate must be a positive finite number of bytes/s, got {bytes_per_s!r}")
        self.bytes_per_s, self.name, self.cpu, self.inline = float(bytes_per_s), name, cpu, inline
        self.chunk_bytes, self.clock, self.sleep = chunk_bytes, clock, sleep
        self.bytes_moved = 0
        self._busy_until = 0.0
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        if not inline:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name=f"tierplan-{name}-copier", daemon=True)
            self._thread.start()

    def submit(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], *, after_compute: bool = True) -> Future:
        """Queue copies; returns a future done when they are. (CPU compute is synchronous, so a
        job submitted now is already ordered after the compute issued before it.)"""
        views = byte_views(pairs, self.name)
        fut: Future = Future()
        if self.inline:
            self._copy(views)
            fut.set_result(None)
        else:
            self._queue.put((views, fut))
        return fut

    def _run(self) -> None:
        if self.cpu is not None:
            try:
                os.sched_setaffinity(0, {self.cpu})  # this thread only (Linux: pid 0 is the caller)
            except (AttributeError, OSError):
                pass  # no affinity control here: the copier shares the cores, still paced
        while True:
            item = self._queue.get()
            if item is None:
                return
            views, fut = item
            try:
                self._copy(views)
            except BaseException as err:  # handed to the waiter, who re-raises it
                fut.set_exception(err)
            else:
                fut.set_result(None)

    def _copy(self, views) -> None:
        start = max(self.clock(), self._busy_until)
        done = 0
        for dst, src in views:
            for i in range(0, dst.size, self.chunk_bytes):
                j = min(dst.size, i + self.chunk_bytes)
                np.copyto(dst[i:j], src[i:j])
                done += j - i
                wait = start + done / self.bytes_per_s - self.clock()
                if wait > MIN_SLEEP_S:
                    self.sleep(wait)
        self.bytes_moved += done
        self._busy_until = start + done / self.bytes_per_s

    def wait_device(self, handle: Future | None) -> None:
        if handle is not None:
            handle.result()

    wait_host = wait_device

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class CudaLink:
    """One direction of the PCIe/NVLink link: a CUDA copy stream (the copy engine does the work).

    Copies are ``non_blocking`` from pinned, contiguous host memory, so they are asynchronous to
    the host and run beside the compute stream; the returned event orders whoever needs the data.
    """

    def __init__(self, device: torch.device, name: str = "h2d"):
        self.device, self.name = device, name
        self.stream = torch.cuda.Stream(device)

    def submit(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], *, after_compute: bool = True):
        if after_compute:  # e.g. a slot the compute stream last read, a tensor it just wrote
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for dst, src in pairs:
                dst.copy_(src, non_blocking=True)
                for t in (dst, src):
                    if t.is_cuda:  # keep the allocator from reusing it before this stream is done
                        t.record_stream(self.stream)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def wait_device(self, handle) -> None:
        if handle is not None:
            torch.cuda.current_stream(self.device).wait_event(handle)

    def wait_host(self, handle) -> None:
        if handle is not None:
            handle.synchronize()

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ buffers
def _random_(t: torch.Tensor, scale: float = 0.02) -> torch.Tensor:
    """Fill with small finite values at memory speed (only time is measured: one random block,
    repeated; never denormals, which would slow CPU arithmetic)."""
    if t.numel() == 0:
        return t
    if t.is_cuda:
        return t.normal_(0.0, scale)
    flat = t.view(-1)
    block = (torch.randn(min(flat.numel(), 1 << 20)) * scale).to(t.dtype)
    for i in range(0, flat.numel(), block.numel()):
        j = min(flat.numel(), i + block.numel())
        flat[i:j].copy_(block[: j - i])
    return t


def _host(shape, dtype, pinned: bool) -> torch.Tensor:
    return _random_(torch.empty(shape, dtype=dtype, pin_memory=pinned))


def _dev(shape, dtype, device) -> torch.Tensor:
    return _random_(torch.empty(shape, dtype=dtype, device=device))


@dataclass(slots=True)
class _Split:
    """A weight matrix [k, n] split by rows: resident rows on the device, the rest on the host."""

    resident: torch.Tensor
    host: torch.Tensor | None
    k_resident: int


def _tokens(pol: LayerPolicy, split, c: int) -> tuple[int, int, int, int]:
    """(resident, transferred, recomputed, CPU-attended) tokens of one layer at context ``c``."""
    resident = int(round(pol.kv.gpu * c))
    off = c - resident
    shares = (split.transfer, split.recompute, split.cpu)
    counts = [int(round(off * f)) for f in shares]
    # Rounding leftovers go to the largest share, so an action with no share gets no token.
    counts[shares.index(max(shares))] += off - sum(counts)
    return resident, counts[0], counts[1], counts[2]


class _Layer:
    """One layer's persistent tensors: resident parts on the device, offloaded parts on the host."""

    def __init__(self, wl: KvWorkload, pol: LayerPolicy, c_cap: int, dev: torch.device, dtype: torch.dtype,
                 pinned: bool):
        m = wl.model
        self.pol = pol
        b, h, d, kvh = wl.batch, m.hidden, m.head_dim, m.n_kv_heads
        up = (2 if m.gated_mlp else 1) * m.intermediate
        shapes = {"qkv": (h, m.q_dim + 2 * m.kv_dim), "o": (m.q_dim, h), "up": (h, up), "down": (m.intermediate, h)}
        self.w: dict[str, _Split] = {}
        for name, (k, n) in shapes.items():
            k_res = int(round(pol.weights.gpu * k))
            host = _host((k - k_res, n), dtype, pinned) if k_res < k else None
            self.w[name] = _Split(resident=_dev((k_res, n), dtype, dev), host=host, k_resident=k_res)
        resident, *_ = _tokens(pol, pol.splits[0], c_cap)
        off = c_cap - resident
        uses_cpu = off > 0 and any(s.cpu > 0 for s in pol.splits)
        self.kv_dev = _dev((resident, 2, b, kvh, d), dtype, dev) if resident else None
        self.kv_host = _host((off, 2, b, kvh, d), dtype, pinned) if off else None
        # CPU attention reads fp32 (the cost model costs it so): a second copy unless already fp32.
        self.kv_host32 = (self.kv_host if dtype == torch.float32 else self.kv_host.float()) if uses_cpu else None
        self.act_host = _host((off, b, h), dtype, pinned) if off and pol.activations_on_host else None
        # Write-back per step: the new token's offloaded KV share, its layer input (recompute).
        n_new = int(round(pol.kv.offloaded * b * 2 * m.kv_dim))
        self.new_kv_host = _host((n_new,), dtype, pinned) if n_new else None
        self.new_act_host = _host((b * h,), dtype, pinned) if pol.activations_on_host else None
        group = m.n_heads // kvh
        if uses_cpu:
            self.q_host = _host((b, m.q_dim), dtype, pinned)
            self.o_host = _host((b, kvh, group, d), dtype, pinned)
            self.lse_host = _host((b, kvh, group), torch.float32, pinned)
            self.o_dev = _dev((b, kvh, group, d), dtype, dev)
            self.lse_dev = _dev((b, kvh, group), torch.float32, dev)


class Replayer:
    """Runs decode steps of a slice of layers and times each layer.

    Parameters
    ----------
    wl : KvWorkload
        The workload as replayed (its ``dtype_bytes`` is the replay dtype's).
    layers : sequence of LayerPolicy
        The slice's policies, in order.
    device : torch.device
        ``cuda`` (copy streams) or ``cpu`` (throttled copier threads).
    dtype : torch.dtype
        The dtype the profile measured.
    link_bytes_per_s : (float, float)
        H2D and D2H rates of the CPU copiers (ignored under CUDA).
    compute_threads : int or None
        CPU stand-in only: torch threads for compute, the rest of the cores left to the copiers.
    engines : {"cuda", "threads"} or None
        Copy streams and CUDA events, or paced copier threads and the wall clock (default: by
        device). Tests run the CUDA control flow on the CPU with fakes of ``torch.cuda``.
    """

    def __init__(self, wl: KvWorkload, layers: Sequence[LayerPolicy], device: torch.device, dtype: torch.dtype, *,
                 link_bytes_per_s: tuple[float, float] = (1e9, 1e9), compute_threads: int | None = None,
                 engines: str | None = None):
        m = wl.model
        if m.n_experts > 1:
            raise ReplayError("replay of MoE layers is not supported yet")
        if m.kv_lora_rank:
            raise ReplayError("replay of MLA (latent KV) layers is not supported yet")
        if m.quant is not None:
            raise ReplayError(f"replay of quantised weights ({m.quantization}) is not supported yet")
        if wl.gpu_batches > 1:
            raise ReplayError(f"replay runs the batch as one GPU batch; this plan runs {wl.gpu_batches} GPU batches of "
                              f"{wl.micro_batch} (replay of GPU batches is not supported yet)")
        engine = [f for f, default in (("stream_granularity", "layer"), ("fused_attention", True), ("overlap", True),
                                       ("pinned_weights", True), ("cpu_attention_upcast", False),
                                       ("cpu_attention_repeat_kv", False))
                  if getattr(wl, f) != default]
        if engine or wl.kv_dtype or wl.kv_keep != 1.0:
            raise ReplayError("replay runs tierplan's own runtime (layer streaming, fused attention, overlapped "
                              "copies, pinned weights, full-precision KV of every token); this plan sets "
                              f"{', '.join(engine + (['kv_dtype'] if wl.kv_dtype else []) + (['kv_keep'] if wl.kv_keep != 1.0 else []))}")
        if m.n_heads % m.n_kv_heads:
            raise ReplayError(f"n_heads must be a multiple of n_kv_heads, got {m.n_heads} and {m.n_kv_heads}")
        for p in layers:
            if p.weights.disk > 0 or p.kv.disk > 0:
                raise ReplayError("the plan puts data on disk; replay covers the GPU and host tiers only")
        self.wl, self.dev, self.dtype = wl, device, dtype
        engines = engines or ("cuda" if device.type == "cuda" else "threads")
        if engines not in ("cuda", "threads"):
            raise ReplayError(f"engines must be 'cuda' or 'threads', got {engines!r}")
        self.cuda = engines == "cuda"
        self.pinned = device.type == "cuda"  # page-locked host memory: async DMA, no staging copy
        self.kernel = attention_kernel(device, dtype)
        self.cpu_kernel = attention_kernel(torch.device("cpu"), torch.float32)
        # The copiers get the last core; compute runs on the others, as the profile measured it.
        self._cores = CoreSplit(not self.cuda, compute_threads)
        copier_core = self._cores.copier_core
        try:
            self._build(wl, layers, device, dtype)
            if self.cuda:
                self.h2d, self.d2h, self.ret = CudaLink(device, "h2d"), CudaLink(device, "d2h"), CudaLink(device, "h2d-return")
            else:
                h2d, d2h = link_bytes_per_s
                self.h2d = ThrottledLink(h2d, name="h2d", cpu=copier_core)
                self.d2h = ThrottledLink(d2h, name="d2h", cpu=copier_core)
                self.ret = ThrottledLink(h2d, name="h2d-return", inline=True)
            # CPU attention runs beside the device's work, as the cost model assumes.
            self.cpu_attention = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierplan-cpu-attention",
                                                    initializer=self._pin_host_thread, initargs=(copier_core,))
        except BaseException:
            self._restore()
            raise
        self._slot = 0

    def _pin_host_thread(self, core: int | None) -> None:
        self._cores.pin_host_thread(core)

    def _build(self, wl: KvWorkload, layers: Sequence[LayerPolicy], device, dtype) -> None:
        m, b = wl.model, wl.batch
        c_cap = wl.max_context  # sized for the whole generation, as a runtime allocates (and memory_use counts)
        self.layers = [_Layer(wl, p, c_cap, device, dtype, self.pinned) for p in layers]
        # Staging slots: the largest need of any layer and context range (memory_use's buffers).
        rows = {n: max((L.w[n].host.shape[0] for L in self.layers if L.w[n].host is not None), default=0)
                for n in self.layers[0].w}
        cols = {n: s.resident.shape[1] for n, s in self.layers[0].w.items()}
        moved = [_tokens(p, s, c_cap) for p in layers for s in p.splits]
        kv_rows = max((x + r for _, x, r, _ in moved), default=0)
        act_rows = max((r for _, _, r, _ in moved), default=0)
        self.w_slots = [{n: torch.empty(rows[n], cols[n], device=device, dtype=dtype) for n in rows if rows[n]}
                        for _ in range(2)] if any(rows.values()) else None
        self.kv_slots = [torch.empty(kv_rows, 2, b, m.n_kv_heads, m.head_dim, device=device, dtype=dtype)
                         for _ in range(2)] if kv_rows else None
        self.act_slots = [torch.empty(act_rows, b, m.hidden, device=device, dtype=dtype) for _ in range(2)] \
            if act_rows else None
        self.x0 = _dev((b, m.hidden), dtype, device)

    def _restore(self) -> None:
        self._cores.restore()

    def close(self) -> None:
        for name in ("h2d", "d2h", "ret"):
            link = getattr(self, name, None)
            if link is not None:
                link.close()
        pool = getattr(self, "cpu_attention", None)
        if pool is not None:
            pool.shutdown()
        self._restore()

    # -- copies ------------------------------------------------------------------------------------
    def _prefetch(self, li: int, c: int, split, slot: int):
        """Issue the H2D copies layer ``li`` needs at context ``c`` into staging slot ``slot``."""
        L = self.layers[li]
        _, n_x, n_r, _ = _tokens(L.pol, split, c)
        pairs = []
        for name, s in L.w.items():
            if s.host is not None:
                pairs.append((self.w_slots[slot][name][: s.host.shape[0]], s.host))
        if n_x:
            pairs.append((self.kv_slots[slot][:n_x], L.kv_host[:n_x]))  # K and V of n_x tokens: one block
        if n_r:
            pairs.append((self.act_slots[slot][:n_r], L.act_host[n_x:n_x + n_r]))
        return self.h2d.submit(pairs) if pairs else None

    # -- compute -----------------------------------------------------------------------------------
    @staticmethod
    def _matmul(x: torch.Tensor, s: _Split, slot_w: torch.Tensor | None, cols: slice = slice(None)) -> torch.Tensor:
        y = x[..., : s.k_resident] @ s.resident[:, cols] if s.k_resident else None
        if s.host is not None:
            part = x[..., s.k_resident:] @ slot_w[: s.host.shape[0], cols]
            y = part if y is None else y + part
        return y

    def _cpu_attention(self, L: _Layer, q_handle, lo: int, hi: int):
        """On the host: wait for the queries, attend over host tokens [lo, hi) in fp32, send the
        output and its log-sum-exp back on the return link; returns that copy's handle."""
        m, b = self.wl.model, self.wl.batch
        self.d2h.wait_host(q_handle)
        kvh, d = m.n_kv_heads, m.head_dim
        q = L.q_host.view(b, kvh, m.n_heads // kvh, d).float()
        out, lse = decode_attention(q, kv_view(L.kv_host32[lo:hi], 0, hi - lo), kv_view(L.kv_host32[lo:hi], 1, hi - lo),
                                    self.cpu_kernel)
        L.o_host.copy_(out)
        L.lse_host.copy_(lse)
        return self.ret.submit([(L.o_dev, L.o_host), (L.lse_dev, L.lse_host)], after_compute=False)

    def _layer(self, li: int, slot: int, x: torch.Tensor, c: int, split):
        L, m = self.layers[li], self.wl.model
        slots = self.w_slots[slot] if self.w_slots is not None else {}
        b, kvh, d = x.shape[0], m.n_kv_heads, m.head_dim
        resident, n_x, n_r, n_c = _tokens(L.pol, split, c)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        qkv = self._matmul(h, L.w["qkv"], slots.get("qkv"))
        cpu_job = None
        if n_c:
            q_handle = self.d2h.submit([(L.q_host, qkv[:, : m.q_dim].contiguous())])
            lo = n_x + n_r
            cpu_job = self.cpu_attention.submit(self._cpu_attention, L, q_handle, lo, lo + n_c)
        back = []
        if L.new_kv_host is not None:
            back.append((L.new_kv_host, qkv[:, m.q_dim:].contiguous().view(-1)[: L.new_kv_host.numel()]))
        if L.new_act_host is not None:
            back.append((L.new_act_host, x.contiguous().view(-1)))
        d2h_handle = self.d2h.submit(back) if back else None
        if n_r:  # rebuild K and V of n_r tokens from their stored layer inputs
            act = self.act_slots[slot][:n_r].reshape(n_r * b, m.hidden)
            kv = self._matmul(act, L.w["qkv"], slots.get("qkv"), slice(m.q_dim, None))
            self.kv_slots[slot][n_x:n_x + n_r].copy_(kv.view(n_r, b, 2, kvh, d).transpose(1, 2))
        q = qkv[:, : m.q_dim].view(b, kvh, m.n_heads // kvh, d)
        parts = []
        if resident:
            parts.append(decode_attention(q, kv_view(L.kv_dev, 0, resident), kv_view(L.kv_dev, 1, resident),
                                          self.kernel))
        if n_x + n_r:
            buf = self.kv_slots[slot]
            parts.append(decode_attention(q, kv_view(buf, 0, n_x + n_r), kv_view(buf, 1, n_x + n_r), self.kernel))
        if cpu_job is not None:
            self.ret.wait_device(cpu_job.result())
            parts.append((L.o_dev, L.lse_dev))
        out = merge_attention(parts).reshape(b, m.q_dim)
        x = x + self._matmul(out, L.w["o"], slots.get("o"))
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        up = self._matmul(h, L.w["up"], slots.get("up"))
        if m.gated_mlp:
            g, u = up.chunk(2, dim=-1)
            up = torch.nn.functional.silu(g) * u
        else:
            up = torch.nn.functional.relu(up)
        return x + self._matmul(up, L.w["down"], slots.get("down")), d2h_handle

    def run(self, step: int, n_steps: int, clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
        """``n_steps`` consecutive decode steps at step index ``step``; each one's per-layer seconds.

        Layer 0's copies for the first step are issued before the first step starts (run at
        least one warm-up step before the ones you keep); each later layer 0 is prefetched during
        the last layer of the step before.
        """
        wl = self.wl
        c = wl.prompt_len + 1 + step
        bounds = range_bounds(wl.gen_len, len(self.layers[0].pol.splits))
        k = next(i for i, (a, b) in enumerate(bounds) if a <= step < b)
        splits = [L.pol.splits[k] for L in self.layers]
        n = len(self.layers)
        pending = self._prefetch(0, c, splits[0], self._slot)
        d2h_prev = None
        marks: list = []
        for _ in range(n_steps):
            x = self.x0
            for li in range(n):
                if self.cuda:
                    marks.append(torch.cuda.Event(enable_timing=True))
                    marks[-1].record()
                else:
                    marks.append(clock())
                slot, nxt = self._slot, (li + 1) % n
                # The next layer's copies go first, queued behind this layer's (the link never
                # idles when it binds); its slot was last read by layer li-1, which is done.
                ahead = self._prefetch(nxt, c, splits[nxt], slot ^ 1)
                self.h2d.wait_device(pending)
                self.d2h.wait_device(d2h_prev)  # at most one layer of write-back in flight
                pending = ahead
                x, d2h_prev = self._layer(li, slot, x, c, splits[li])
                self._slot ^= 1
        if self.cuda:
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()
        else:
            marks.append(clock())
        # The last prefetch and write-back are not timed; they must finish before buffers are reused.
        self.h2d.wait_host(pending)
        self.d2h.wait_host(d2h_prev)
        if self.cuda:
            torch.cuda.synchronize(self.dev)
            dt = [marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(len(marks) - 1)]
        else:
            dt = [marks[i + 1] - marks[i] for i in range(len(marks) - 1)]
        return [dt[s * n:(s + 1) * n] for s in range(n_steps)]


# ------------------------------------------------------------------------------------ slices
def choose_slice(policies: Sequence[LayerPolicy], n_layers: int | None) -> list[int]:
    """Layer indices to replay: all, or ``n_layers`` chosen so every distinct policy keeps its share.

    >>> from costmodel import Fractions
    >>> a, b = LayerPolicy(), LayerPolicy(kv=Fractions(gpu=0.0, host=1.0))
    >>> choose_slice([a] * 6 + [b] * 2, 4)
    [0, 1, 2, 6]
    """
    n = len(policies)
    if n_layers is None or n_layers >= n:
        return list(range(n))
    groups: dict[LayerPolicy, list[int]] = {}
    for i, p in enumerate(policies):
        groups.setdefault(p, []).append(i)
    quota = {p: max(1, round(n_layers * len(idx) / n)) for p, idx in groups.items()}
    while sum(quota.values()) > max(n_layers, len(groups)):
        biggest = max(quota, key=quota.get)
        quota[biggest] -= 1
    return sorted(i for p, idx in groups.items() for i in idx[: quota[p]])


def policy_digest(policies: Sequence[LayerPolicy]) -> str:
    """A short name for a sequence of layer policies: equal digests, equal decisions."""
    return hashlib.sha1(repr(tuple(policies)).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ entry points
def replay_dtype(system: System, wl: KvWorkload, device: torch.device) -> tuple[torch.dtype, str | None]:
    """The dtype to replay in: the one the profile measured (its ``compute_dtype`` tag), else the
    plan's own (fp32 on the CPU); with a note when that differs from the plan's element size."""
    tags = profile_tags(system.description)
    name = tags.get("compute_dtype")
    if name is not None:
        if name not in DTYPES:
            raise ReplayError(f"the profile's compute_dtype must be one of {sorted(DTYPES)}, got {name!r} "
                              f"({system.file or system.name})")
        dtype = DTYPES[name]
        why = f"the dtype profile {system.name!r} measured"
    else:
        dtype = _dtype(wl.dtype_bytes, device)
        why = f"profile {system.name!r} does not say which dtype it measured; {DTYPE_NAMES[dtype]} on {device.type}"
    size = torch.empty((), dtype=dtype).element_size()
    if size == wl.dtype_bytes:
        return dtype, None
    return dtype, (f"the plan's elements are {wl.dtype_bytes} bytes; replayed in {DTYPE_NAMES[dtype]} ({why}) and "
                   f"re-predicted with dtype_bytes={size}, so the prediction and the replay use one dtype")


def _hardware_warnings(system: System, plan_hardware: dict | None, dev: torch.device) -> list[str]:
    here = machine_name(dev)
    out = []
    if plan_hardware:
        planned = plan_hardware.get("gpu")
        if planned and planned != part_name(here):
            out.append(f"the plan was made for {plan_hardware.get('system', '?')} (gpu {planned!r}), but the replay "
                       f"runs on this machine ({here}): its decisions may not be what a plan for this machine would be")
    measured_on = profile_tags(system.description).get("machine")
    if measured_on != here:
        where = f"was measured on {measured_on!r}" if measured_on else "was not measured by tierplan profile"
        out.append(f"the prediction profile {system.name!r} {where}, not on this machine ({here}): predicted and "
                   f"measured times describe different hardware")
    return out


def replay_policies(wl: KvWorkload, system: System, policies: Sequence[LayerPolicy], *, layers: int | None = None,
                    steps: int | None = None, repeats: int = 5, warmup: int = 2, device: str | None = None,
                    link_bytes_per_s: float | tuple[float, float] | None = None, plan_hardware: dict | None = None,
                    progress: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Replay decode steps of per-layer policies; returns the predicted-vs-measured report (JSON-able).

    Parameters
    ----------
    wl : KvWorkload
        The plan's workload. If its element size is not the dtype the profile measured, the replay
        runs in the profile's dtype and predicts with that element size (``warnings`` says so).
    system : System
        The profile that predicts.
    policies : sequence of LayerPolicy
        One per layer of the model.
    layers, steps : int or None
        The slice: this many layers (each distinct policy keeps its share) and decode steps
        (spread over the generation); None replays all.
    repeats, warmup : int
        Timed and untimed steps at each replayed step index (at least one warm-up step is run,
        so every timed step starts in the steady state).
    device : str or None
        ``cuda`` or ``cpu`` (default: cuda when available).
    link_bytes_per_s : float, (float, float) or None
        CPU stand-in only: the copiers' H2D and D2H rates. Default: the rate the profile measured
        its copier at (its ``link_throttle_bytes_per_s`` tag), else the profile's link figures.
    plan_hardware : dict or None
        ``Plan.hardware``, to warn when the plan was made for other hardware.

    Returns
    -------
    dict
        ``predicted_s``, ``measured_s``, ``error_pct`` of the slice, per step and per layer rows,
        ``memory`` (predicted and measured peak device bytes), ``warnings`` (a list of strings).
    """
    check_device_name(device)
    dev = resolve_device(device)
    repeats, warmup = positive_int(repeats, "repeats"), max(1, positive_int(warmup, "warmup", minimum=0))
    if len(policies) != wl.model.n_layers:
        raise ReplayError(f"a policy needs one entry per layer ({wl.model.n_layers}), got {len(policies)}")
    warnings = _hardware_warnings(system, plan_hardware, dev)
    dtype, note = replay_dtype(system, wl, dev)
    size = torch.empty((), dtype=dtype).element_size()
    wl_run = wl if note is None else dataclasses.replace(wl, dtype_bytes=size)  # every other field as planned
    if note:
        warnings.append(note)
    tags = profile_tags(system.description)
    if dev.type == "cuda":
        if link_bytes_per_s is not None:
            raise ReplayError("link_bytes_per_s paces the CPU stand-in's copiers; under CUDA the link is real")
        rates = None
    else:
        if link_bytes_per_s is None:
            throttle = tags.get("link_throttle_bytes_per_s")
            rates = (float(throttle),) * 2 if throttle else (system.link.h2d_bytes_per_s, system.link.d2h_bytes_per_s)
            if not throttle:
                warnings.append(f"profile {system.name!r} has no throttled-copier rate; the CPU copiers are paced to "
                                f"its link figures ({rates[0] / 1e9:.3g} / {rates[1] / 1e9:.3g} GB/s), which a "
                                f"memcpy on this machine may not reach")
        else:
            rates = (float(link_bytes_per_s),) * 2 if isinstance(link_bytes_per_s, (int, float)) \
                else tuple(float(r) for r in link_bytes_per_s)
    threads = int(tags["compute_threads"]) if tags.get("compute_threads", "").isdigit() else None
    idx = choose_slice(policies, layers)
    n_steps = wl.gen_len if steps is None else max(1, min(steps, wl.gen_len))
    step_ids = sorted({int(round(s)) for s in np.linspace(0, wl.gen_len - 1, n_steps)})
    sliced = [policies[i] for i in idx]
    for w in warnings:
        progress(f"warning: {w}")
    base_bytes = 0.0
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base_bytes = float(torch.cuda.memory_allocated(dev))
        torch.cuda.reset_peak_memory_stats(dev)
    rep = Replayer(wl_run, sliced, dev, dtype, link_bytes_per_s=rates or (1.0, 1.0), compute_threads=threads)
    progress(f"replaying layers {idx if len(idx) <= 8 else f'{len(idx)} of {len(policies)}'} at decode steps "
             f"{step_ids} on {dev.type} ({DTYPE_NAMES[dtype]}, attention {rep.kernel}"
             + (f", copiers at {rates[0] / 1e9:.3g}/{rates[1] / 1e9:.3g} GB/s H2D/D2H" if rates else "") + ")")
    try:
        per_step = []
        for s in step_ids:
            runs = rep.run(s, warmup + repeats, clock=clock)[warmup:]
            measured = [statistics.median(r[i] for r in runs) for i in range(len(sliced))]
            totals = [sum(r) for r in runs]
            times = [predicted_layer_step_times(wl_run, system, p, s) for p in sliced]
            predicted = [max(t.values()) for t in times]
            per_step.append({"step": s, "context": wl.prompt_len + 1 + s,
                             "predicted_s": sum(predicted), "measured_s": statistics.median(totals),
                             "measured_min_s": min(totals), "measured_max_s": max(totals),
                             "layers": [{"index": i, "predicted_s": pr, "measured_s": me,
                                         "binding": max(t, key=t.get), "predicted_by_resource_s": t}
                                        for i, pr, me, t in zip(idx, predicted, measured, times)]})
            last = per_step[-1]
            progress(f"  step {s} (context {last['context']}): predicted {last['predicted_s'] * 1e3:.2f} ms, "
                     f"measured {last['measured_s'] * 1e3:.2f} ms ({_err(last):+.1f} %)")
        peak = float(torch.cuda.max_memory_allocated(dev)) - base_bytes if dev.type == "cuda" else None
    finally:
        rep.close()
    pred = sum(p["predicted_s"] for p in per_step)
    meas = sum(p["measured_s"] for p in per_step)
    layer_rows = []
    for j, i in enumerate(idx):
        pr = sum(p["layers"][j]["predicted_s"] for p in per_step)
        me = sum(p["layers"][j]["measured_s"] for p in per_step)
        layer_rows.append({"index": i, "predicted_s": pr, "measured_s": me, "error_pct": 100 * (pr - me) / me,
                           "binding": per_step[-1]["layers"][j]["binding"]})
    mem = memory_use(wl_run, sliced, head_on_gpu=False)
    # Decode's peak when the cost model separates the phases (the replay runs no prefill).
    predicted_gpu = float(getattr(mem, "gpu_decode_bytes", 0.0) or mem.gpu_bytes)
    out = {
        "device": str(dev), "device_name": machine_name(dev),
        "torch": torch.__version__, "dtype": DTYPE_NAMES[dtype], "plan_dtype_bytes": wl.dtype_bytes,
        "replay_dtype_bytes": size, "attention_kernel": rep.kernel,
        "link": ({"kind": "throttled copier threads (CPU stand-in for the link)", "h2d_bytes_per_s": rates[0],
                  "d2h_bytes_per_s": rates[1]} if rates else {"kind": "CUDA copy streams, one per direction"}),
        "policy_digest": policy_digest(sliced),
        "slice": {"layers": idx, "of_layers": len(policies), "steps": step_ids, "of_steps": wl.gen_len,
                  "representative": ("every layer" if len(idx) == len(policies) else
                                     "each distinct layer policy keeps its share of the slice"),
                  "note": "predicted and measured cover the same layers and steps; the LM head is not replayed"},
        "predicted_s": pred, "measured_s": meas, "error_pct": 100 * (pred - meas) / meas,
        "steps": per_step, "layers": layer_rows,
        "memory": memory_record(
            predicted_gpu, mem.gpu_breakdown,
            "costmodel.kv.memory_use of the sliced layers, head on the host"
            + (": its decode phase" if getattr(mem, "gpu_decode_bytes", 0.0) else
               "; decode and prefill not separated (the working set and KV buffers include prefill's, which the "
               "replay does not run)"), peak),
        "warnings": warnings,
    }
    if peak is not None:
        out["peak_gpu_bytes"] = peak
    return out


def replay_plan(plan, wl: KvWorkload, system: System, **kwargs) -> dict:
    """Replay a :class:`solver.Plan` (its layer policies; the head is not replayed) on this machine.

    ``wl`` is the plan's workload; ``kwargs`` are those of :func:`replay_policies`. The result's
    ``warnings`` say when the plan was made for other hardware or replayed in another dtype.
    """
    policies, _ = plan.policies()
    return replay_policies(wl, system, policies, plan_hardware=plan.hardware, **kwargs)


def _err(row: dict) -> float:
    return 100 * (row["predicted_s"] - row["measured_s"]) / row["measured_s"]
