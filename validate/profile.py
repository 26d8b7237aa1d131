"""Measure this machine with torch micro-benchmarks and write a hardware profile YAML.

GEMM, GEMV, decode attention (the replay's own kernel and KV layout) and elementwise throughput
over sizes on the compute device; device memory bandwidth over sizes; H2D and D2H copies (pinned
and pageable) over sizes, alone and both directions at once; CPU GEMM, CPU attention and CPU memory
bandwidth, and a CPU AdamW step (the host's ``optimizer_bandwidth``, which costs the training
family's CPU optimizer updates). Per-transfer latency and bandwidth are fitted (scipy) from time = latency + bytes /
bandwidth. Efficiency curves are the measured throughput over the peak measured throughput, made to
satisfy the loader's rule that a bigger op never takes less time.

Impossible figures are refused (:func:`check_profile`): a link faster than the memory on either
side, a negative or huge fitted latency. Noisy timings (a large spread between repeats) are said in
the profile's description: the machine was contended.

On a machine without CUDA the CPU is profiled as the compute device, on all cores but one, and the
link is a copier thread on the remaining core paced to a chosen rate (1 GB/s by default,
:class:`validate.replay.ThrottledLink`): transfers then cost something, as over PCIe, and the
profile's link entry is that copier as measured. The dtype measured, the compute threads and the
copier's rate are tagged in the description (:func:`validate.replay.profile_tags`), so a replay
runs as the profile measured.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import optimize

from costmodel.training_states import state_bytes, step_bytes_per_param
from hwprofiles import SCHEMA_DIMENSIONS, format_quantity, parse_quantity
from hwprofiles.units import Dimension
from validate.errors import ReplayError

try:
    import torch
except ImportError as err:  # pragma: no cover - the error names the fix
    raise ImportError("validate needs torch: pip install 'tierplan[validate]' (or torch your usual way)") from err

from validate.replay import (
    DTYPES,
    ThrottledLink,
    _cores,
    attention_kernel,
    decode_attention,
    format_tags,
    kv_view,
    machine_name,
    part_name,
)

# Sanity limits of check_profile. A link's fixed cost per copy is microseconds (PCIe and NVLink
# DMA setup; the bundled profiles hold 2-10 us) and a kernel launch a few; a fitted intercept
# above 1 ms means the timings did not follow time = latency + bytes / bandwidth.
MAX_LATENCY_S = 1e-3
# Repeats of one measurement normally agree within a few percent on an idle machine; a median
# spread (max - min over median) above this says something else was running. Only measurements of
# at least NOISE_MIN_S count: shorter ones jitter by timer resolution, caches and clock steps
# even on an idle machine.
NOISY_SPREAD = 0.10
NOISE_MIN_S = 10e-3
CONTENDED = "the timings were disturbed: the machine was probably contended (rerun on an idle machine)"

Clock = Callable[[], float]


@dataclass(slots=True)
class Timer:
    """Median wall time of a callable after warm-up; synchronises CUDA around each run.

    ``clock`` is injectable so tests can use a fake clock.
    """

    device: torch.device
    repeats: int = 5
    warmup: int = 2
    clock: Clock = time.perf_counter
    samples: list[float] = field(default_factory=list)
    spreads: list[tuple[float, float]] = field(default_factory=list)  # (median s, (max - min) / median) per call

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object], repeats: int | None = None) -> float:
        for _ in range(self.warmup):
            fn()
        self._sync()
        times = []
        for _ in range(repeats or self.repeats):
            start = self.clock()
            fn()
            self._sync()
            times.append(self.clock() - start)
        self.samples = times
        med = statistics.median(times)
        if len(times) > 1 and med > 0:
            self.spreads.append((med, (max(times) - min(times)) / med))
        return med


def monotone_curve(sizes: list[float], eff: list[float]) -> list[tuple[float, float]]:
    """Clamp measured efficiencies so that time = size / eff never falls as size grows (the loader's
    rule for curves interpolated linearly in log10(size)), and to at most 1.

    >>> [(s, round(v, 4)) for s, v in monotone_curve([1e6, 1e7], [0.01, 0.5])]
    [(1000000.0, 0.01), (10000000.0, 0.033)]
    """
    out: list[tuple[float, float]] = []
    for s, v in sorted(zip(sizes, eff)):
        v = min(max(v, 1e-6), 1.0)
        if out:
            s0, v0 = out[-1]
            if s <= s0 * (1 + 1e-4):  # sizes must stay distinct when written with 6 digits
                continue
            # 1e-5 below the limit, so the value written with 6 significant digits stays under it.
            v = min(v, v0 * (1 + math.log(10) * math.log10(s / s0)) * (1 - 1e-5))
        out.append((s, v))
    return out


def fit_link(sizes_bytes: list[float], times_s: list[float]) -> tuple[float, float]:
    """Least-squares fit of time = latency + bytes / bandwidth; returns (latency_s, bytes_per_s).

    >>> lat, bw = fit_link([1e6, 1e7, 1e8], [1e-5 + 1e6 / 1e10, 1e-5 + 1e7 / 1e10, 1e-5 + 1e8 / 1e10])
    >>> round(lat * 1e6, 3), round(bw / 1e9, 3)
    (10.0, 10.0)
    """
    x = np.asarray(sizes_bytes, dtype=float)
    y = np.asarray(times_s, dtype=float)
    # Relative errors: small transfers matter as much as large ones.
    res = optimize.least_squares(lambda p: (p[0] + x * p[1] - y) / y, x0=[y.min() * 0.5, y.max() / x.max()],
                                 bounds=([0.0, 1e-18], [np.inf, np.inf]), x_scale=[y.min(), y.max() / x.max()])
    latency, inv_bw = res.x
    return float(latency), float(1.0 / inv_bw)


def _bidirectional_kept(factor: float) -> float:
    """The bidirectional factor the profile keeps: the measured one within [1 %, 100 %] (above 100 % is
    timing noise: both directions at once cannot beat each alone)."""
    return float(min(max(factor, 0.01), 1.0))


def _bidirectional_said(factor: float) -> str:
    kept = _bidirectional_kept(factor)
    if kept == factor:
        return f"{factor * 100:.0f} %"
    return f"{kept * 100:.0f} % (measured {factor * 100:.0f} %, kept within 1-100 %)"


@dataclass(slots=True)
class Profiler:
    device: torch.device
    quick: bool = False
    progress: Callable[[str], None] = print
    timer: Timer | None = None
    results: dict = field(default_factory=dict)
    dtype: torch.dtype | None = None
    cpu_link_bytes_per_s: float = 1e9  # the CPU stand-in's copier rate (no CUDA)
    copier_core: int | None = None  # the core the stand-in's copiers run on

    def __post_init__(self) -> None:
        self.timer = self.timer or Timer(self.device, repeats=3 if self.quick else 7, warmup=1 if self.quick else 2)
        # fp16 on the GPU (what plans assume); fp32 on the CPU, where fp16 math is emulated.
        self.dtype = self.dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)

    # -- compute ------------------------------------------------------------------------------
    def _gemm_points(self, dev: torch.device, dtype, sizes: list[int]) -> tuple[list[float], list[float]]:
        flops, tput = [], []
        for n in sizes:
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            t = self.timer(lambda: a @ b)
            flops.append(2.0 * n**3)
            tput.append(2.0 * n**3 / t)
            self.progress(f"  gemm {n}x{n}x{n} on {dev.type}: {tput[-1] / 1e12:.3f} TFLOP/s")
        return flops, tput

    def _gemv_points(self, dev, dtype, sizes: list[int]) -> tuple[list[float], list[float]]:
        flops, tput = [], []
        for n in sizes:
            x = torch.randn(4, n, device=dev, dtype=dtype)
            w = torch.randn(n, n, device=dev, dtype=dtype)
            t = self.timer(lambda: x @ w)
            flops.append(2.0 * 4 * n * n)
            tput.append(flops[-1] / t)
        self.progress(f"  gemv (4 rows) on {dev.type}: up to {max(tput) / 1e12:.3f} TFLOP/s")
        return flops, tput

    def _attention_points(self, dev, dtype, contexts: list[int], batch: int = 4, heads: int = 32,
                          head_dim: int = 128, groups: tuple[int, ...] = (1, 8)) -> tuple[list[float], list[float], list[float]]:
        """Decode attention as the replay runs it: :func:`validate.replay.decode_attention` over a
        token-major cache ``[tokens, 2, batch, kv_heads, head_dim]``, for ``heads`` query heads
        sharing ``heads / group`` KV heads, at each group size.

        The FLOPs are the same for every group size and the KV read shrinks with it, so MHA (group 1)
        is bound by memory and GQA (group 8) by compute. The compute curve is the best throughput
        measured at each FLOP count: read off MHA alone, the compute roof would price GQA attention
        at MHA's memory-bound speed (it did: +60 % on llama-3-8b's decode in the CPU suite)."""
        flops, tput, bws = [], [], []
        kernel = attention_kernel(dev, dtype)
        for c in contexts:
            best_t, best_bw = float("inf"), 0.0
            for group in groups:
                kv_heads = max(heads // group, 1)
                q = torch.randn(batch, kv_heads, heads // kv_heads, head_dim, device=dev, dtype=dtype)
                kv = torch.randn(c, 2, batch, kv_heads, head_dim, device=dev, dtype=dtype)
                k, v = kv_view(kv, 0, c), kv_view(kv, 1, c)
                t = self.timer(lambda: decode_attention(q, k, v, kernel))
                best_t = min(best_t, t)
                best_bw = max(best_bw, 2.0 * batch * kv_heads * c * head_dim * q.element_size() / t)
                del kv, k, v
            f = 4.0 * batch * heads * c * head_dim
            flops.append(f)
            tput.append(f / best_t)
            bws.append(best_bw)
        self.progress(f"  decode attention ({kernel}) on {dev.type}: up to {max(tput) / 1e9:.1f} GFLOP/s, "
                      f"{max(bws) / 1e9:.1f} GB/s of KV read")
        return flops, tput, bws

    def _elementwise_points(self, dev, dtype, sizes: list[int]) -> tuple[list[float], list[float]]:
        flops, tput = [], []
        for n in sizes:
            a = torch.randn(n, device=dev, dtype=dtype)
            b = torch.randn(n, device=dev, dtype=dtype)
            t = self.timer(lambda: a.add_(b))
            flops.append(float(n))
            tput.append(n / t)
        return flops, tput

    def _copy_points(self, dev, sizes_bytes: list[int]) -> tuple[list[float], list[float]]:
        moved, bw = [], []
        for nbytes in sizes_bytes:
            src = torch.empty(nbytes, dtype=torch.uint8, device=dev).random_(0, 255)
            dst = torch.empty_like(src)
            t = self.timer(lambda: dst.copy_(src))
            moved.append(2.0 * nbytes)  # read + write
            bw.append(2.0 * nbytes / t)
        self.progress(f"  memory copy on {dev.type}: up to {max(bw) / 1e9:.1f} GB/s (read + write)")
        return moved, bw

    def tf32_peak(self, dev: torch.device) -> float | None:
        """Peak of an fp32 GEMM sweep with TF32 matmuls allowed, on a CUDA device with TF32 tensor cores
        (compute capability 8.0 or later: Ampere and newer); None elsewhere (the CPU, Volta, Turing).

        TF32 is switched on for the sweep only (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, or
        ``allow_tf32 = True`` on a torch without it) and the previous setting restored.
        """
        if dev.type != "cuda" or torch.cuda.get_device_capability(dev)[0] < 8:
            return None
        matmul = torch.backends.cuda.matmul
        new_api = hasattr(matmul, "fp32_precision")
        before = matmul.fp32_precision if new_api else matmul.allow_tf32
        try:
            if new_api:
                matmul.fp32_precision = "tf32"
            else:
                matmul.allow_tf32 = True
            sizes = [1024, 4096] if self.quick else [1024, 2048, 4096, 8192]
            _, tput = self._gemm_points(dev, torch.float32, sizes)
        finally:
            if new_api:
                matmul.fp32_precision = before
            else:
                matmul.allow_tf32 = before
        return max(tput)

    def _launch_overhead(self, dev) -> float:
        x = torch.zeros(1, device=dev)
        return self.timer(lambda: x.add_(1.0), repeats=50 if not self.quick else 10)

    def compute_part(self, dev: torch.device, dtype) -> dict:
        gemm_sizes = [64, 128, 256, 512, 1024] + ([] if self.quick else [2048, 4096 if dev.type == "cuda" else 1536])
        # Up to 8192^2 even when quick: weights of a real layer are far beyond the last-level cache.
        gemv_sizes = [256, 1024, 4096, 8192] if self.quick else [256, 512, 1024, 2048, 4096, 8192]
        ctx = [64, 512, 4096] if self.quick else [64, 256, 1024, 4096, 16384]
        elem = [2**12, 2**18, 2**22] if self.quick else [2**10, 2**14, 2**18, 2**22, 2**24]
        mem = [2**16, 2**20, 2**24, 2**28] + ([] if self.quick else [2**18, 2**22, 2**26])
        gf, gt = self._gemm_points(dev, dtype, gemm_sizes)
        vf, vt = self._gemv_points(dev, dtype, gemv_sizes)
        af, at, _ = self._attention_points(dev, dtype, ctx)
        ef, et = self._elementwise_points(dev, dtype, elem)
        mb, mw = self._copy_points(dev, sorted(mem))
        peak = max(gt)
        mem_peak = max(mw)
        return {
            "peak_flop_per_s": peak,
            "memory_bytes_per_s": mem_peak,
            "launch_overhead_s": self._launch_overhead(dev) if dev.type == "cuda" else 0.0,
            "curves": {
                "gemm": monotone_curve(gf, [t / peak for t in gt]),
                "gemv": monotone_curve(vf, [t / peak for t in vt]),
                "attention": monotone_curve(af, [t / peak for t in at]),
                "elementwise": monotone_curve(ef, [t / peak for t in et]),
                "memory": monotone_curve(mb, [b / mem_peak for b in mw]),
            },
        }

    # -- link ---------------------------------------------------------------------------------
    def _link_sizes(self) -> list[int]:
        return sorted([2**16, 2**20, 2**24] + ([] if self.quick else [2**18, 2**22, 2**26, 2**28]))

    def link_part(self) -> dict:
        if self.device.type != "cuda":
            return self._throttled_link_part()
        sizes = self._link_sizes()
        dev = self.device
        out: dict = {}

        def measure(direction: str, pinned: bool) -> tuple[float, float]:
            times = []
            for nbytes in sizes:
                host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
                other = torch.empty(nbytes, dtype=torch.uint8, device=dev)
                src, dst = (host, other) if direction == "h2d" else (other, host)
                times.append(self.timer(lambda: dst.copy_(src, non_blocking=pinned)))
            lat, bw = fit_link(sizes, times)
            self.progress(f"  {direction} {'pinned' if pinned else 'pageable'}: {bw / 1e9:.2f} GB/s, "
                          f"latency {lat * 1e6:.1f} us")
            return lat, bw

        lat_h, out["h2d"] = measure("h2d", True)
        lat_d, out["d2h"] = measure("d2h", True)
        out["latency"] = (lat_h + lat_d) / 2
        _, pageable = measure("h2d", False)
        out["pageable_factor"] = min(pageable / out["h2d"], 1.0)
        out["bidirectional_factor"] = self._bidirectional(sizes[-1], out["h2d"], out["d2h"])
        return out

    def _throttled_link_part(self) -> dict:
        """The CPU stand-in's link: two copier threads on the last core, paced to the chosen rate,
        measured (and fitted) the way the replay will use them."""
        sizes = self._link_sizes()
        core = self.copier_core
        links = {d: ThrottledLink(self.cpu_link_bytes_per_s, name=d, cpu=core) for d in ("h2d", "d2h")}
        out: dict = {"copier_core": core}
        try:
            lats = []
            for direction, link in links.items():
                times = []
                for nbytes in sizes:
                    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
                    dst = torch.empty_like(src)
                    times.append(self.timer(lambda: link.wait_host(link.submit([(dst, src)]))))
                lat, out[direction] = fit_link(sizes, times)
                lats.append(lat)
                self.progress(f"  {direction} (copier paced to {self.cpu_link_bytes_per_s / 1e9:.3g} GB/s): "
                              f"{out[direction] / 1e9:.3f} GB/s, latency {lat * 1e6:.1f} us")
            out["latency"] = sum(lats) / 2
            out["pageable_factor"] = 1.0
            nbytes = sizes[-1]
            a, b = torch.ones(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
            c, d = torch.ones(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)

            def both():
                f1 = links["h2d"].submit([(b, a)])
                f2 = links["d2h"].submit([(d, c)])
                f1.result()
                f2.result()

            t_both = self.timer(both)
            factor = max(nbytes / out["h2d"], nbytes / out["d2h"]) / t_both
            out["bidirectional_factor"] = _bidirectional_kept(factor)
            self.progress(f"  both directions at once: {_bidirectional_said(factor)} of solo bandwidth each")
        finally:
            for link in links.values():
                link.close()
        return out

    def _bidirectional(self, nbytes: int, h2d: float, d2h: float) -> float:
        """Each direction's share of its solo bandwidth while both directions copy at once (CUDA)."""
        host_a = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        host_b = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        dev_a = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        dev_b = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        s1, s2 = torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)

        def both():
            with torch.cuda.stream(s1):
                dev_a.copy_(host_a, non_blocking=True)
            with torch.cuda.stream(s2):
                host_b.copy_(dev_b, non_blocking=True)
            s1.synchronize()
            s2.synchronize()

        t_both = self.timer(both)
        solo = nbytes / h2d + nbytes / d2h
        # Both transfers finish in t_both; alone they would take nbytes/bw each, overlapped perfectly
        # in max(...). The factor is the solo time of the slower one over the concurrent time.
        factor = max(nbytes / h2d, nbytes / d2h) / t_both
        self.progress(f"  both directions at once: {_bidirectional_said(factor)} of solo bandwidth each "
                      f"(serial would be {max(nbytes / h2d, nbytes / d2h) / solo * 100:.0f} %)")
        return _bidirectional_kept(factor)

    # -- host ---------------------------------------------------------------------------------
    def optimizer_rate(self) -> tuple[float, int, float]:
        """(bytes/s, parameters, bytes per parameter counted) of a CPU optimizer update as the training replay runs it: the median
        time of ``torch.optim.AdamW(foreach=True, fused=False).step()`` over one fp32 parameter of
        16 Mi (quick) or 64 Mi elements, whose 16 B/param of state (weights, gradient, two moments:
        256 MiB or 1 GiB) lie beyond most CPUs' caches, counted in the cost model's 28 B/param of the
        update (:func:`costmodel.training_states.step_bytes_per_param`, fp32 AdamW): so the figure
        holds what AdamW's several foreach passes cost beyond that count."""
        n = (16 if self.quick else 64) * 2**20
        param = torch.nn.Parameter(torch.zeros(n, dtype=torch.float32))
        param.grad = torch.full_like(param, 1e-3)
        opt = torch.optim.AdamW([param], lr=1e-4, weight_decay=1e-2, foreach=True, fused=False)
        t = self.timer(opt.step)
        per_param = float(sum(step_bytes_per_param(state_bytes("fp32", "adamw"))))
        rate = n * per_param / t
        self.progress(f"  AdamW step over {n / 2**20:.0f} Mi fp32 parameters: {t * 1e3:.1f} ms, "
                      f"{rate / 1e9:.2f} GB/s of the update's {per_param:.0f} B/param")
        return float(rate), n, per_param

    def host_part(self) -> dict:
        cpu = torch.device("cpu")
        if self.device.type == "cpu" and "compute" in self.results:
            c = self.results["compute"]  # the CPU was already profiled as the compute device
        else:
            c = self.compute_part(cpu, torch.float32)
        return c


def _meminfo_bytes(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) * 1024
    raise ReplayError(f"/proc/meminfo has no {key}")


def _q(value: float, unit: str, scale: float, source: str, ref: str) -> dict:
    return {"value": f"{value / scale:.6g} {unit}", "source": source, "ref": ref}


def _curves(name: str, c: dict, ref: str) -> dict:
    def pts(points, unit_flop: bool):
        return [[f"{s:.6g} {'FLOP' if unit_flop else 'B'}", f"{v * 100:.6g} %"] for s, v in points]

    return {"name": name, "source": "fitted", "ref": ref,
            "compute": {k: pts(c["curves"][k], True) for k in ("gemm", "gemv", "attention", "elementwise")},
            "memory": pts(c["curves"]["memory"], False)}


def profile_machine(*, quick: bool = False, device: str | None = None, command: str = "tierplan profile",
                    progress: Callable[[str], None] = print, dtype: str | None = None,
                    cpu_link_bytes_per_s: float = 1e9) -> dict:
    """Run the micro-benchmarks and return a system profile mapping (``yaml.safe_dump``-able).

    Parameters
    ----------
    quick : bool
        Fewer sizes and repeats (under a minute on a GPU, a few on a 2-core CPU).
    device : str or None
        ``cuda`` or ``cpu`` (default: cuda when available).
    command : str
        The command line, recorded in every figure's ref.
    dtype : str or None
        ``fp16``, ``bf16`` or ``fp32`` for the compute device (default: fp16 under CUDA, fp32 on
        the CPU, where half-precision math is emulated on most x86 without AMX/AVX512-BF16). The
        replay runs in the dtype measured here.
    cpu_link_bytes_per_s : float
        Without CUDA: the rate the stand-in copier is paced to (bytes/s). Well below a memcpy, so
        that transfers cost what they cost over a link and policies differ.

    Raises
    ------
    ReplayError
        When a figure is impossible (:func:`check_profile`).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReplayError("--device cuda was asked for but torch sees no CUDA device")
    cuda = dev.type == "cuda"
    dtype = dtype or ("fp16" if cuda else "fp32")
    if dtype not in DTYPES:
        raise ReplayError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dev_name = machine_name(dev)
    driver = f"CUDA {torch.version.cuda}, driver {_driver_version()}" if cuda else "no CUDA"
    ref = f"{command} on {dev_name}, {driver}, torch {torch.__version__}, {date}"
    cores = _cores()
    threads_before, affinity_before = torch.get_num_threads(), None
    compute_threads = None
    if not cuda:
        # Compute on all cores but the last, which the copier threads get (as in the replay).
        compute_threads = max(1, len(cores) - 1)
        torch.set_num_threads(compute_threads)
        if len(cores) > 1:
            try:
                affinity_before = os.sched_getaffinity(0)
                os.sched_setaffinity(0, set(cores[:-1]))
            except (AttributeError, OSError):
                affinity_before = None
    prof = Profiler(dev, quick=quick, progress=progress, dtype=DTYPES[dtype], cpu_link_bytes_per_s=cpu_link_bytes_per_s,
                    copier_core=cores[-1] if len(cores) > 1 else None)
    try:
        progress(f"profiling {dev_name} with torch {torch.__version__} ({'quick' if quick else 'full'}, {dtype}"
                 + (f", compute on {compute_threads} of {len(cores)} cores" if compute_threads else "") + ")")
        progress("compute device:")
        prof.results["compute"] = comp = prof.compute_part(dev, prof.dtype)
        tf32 = prof.tf32_peak(dev)
        if tf32 is not None:
            progress(f"  TF32 GEMM peak: {tf32 / 1e12:.3f} TFLOP/s")
        progress("link:")
        link = prof.link_part()
        progress("host CPU:")
        host = prof.host_part()
        opt_rate, opt_params, opt_bytes = prof.optimizer_rate()
    finally:
        if not cuda:
            torch.set_num_threads(threads_before)
            if affinity_before is not None:
                os.sched_setaffinity(0, affinity_before)
    long = [sp for t, sp in prof.timer.spreads if t >= NOISE_MIN_S] or [sp for _, sp in prof.timer.spreads]
    median_spread = statistics.median(long) if long else 0.0
    noisy = median_spread > NOISY_SPREAD
    noise = (f"timings were noisy: the median spread of repeats was {median_spread * 100:.0f} % (above "
             f"{NOISY_SPREAD * 100:.0f} %): the machine was contended; rerun on an idle machine"
             if noisy else f"timings were steady: median spread of repeats {median_spread * 100:.1f} %")
    if noisy:
        progress(f"warning: {noise}")
    dram = _meminfo_bytes("MemTotal")
    if cuda:
        gpu_mem = float(torch.cuda.get_device_properties(dev).total_memory)
        gpu_mem_ref = f"torch.cuda.get_device_properties().total_memory; {ref}"
        host_mem, host_ref = dram, f"MemTotal in /proc/meminfo; {ref}"
    else:
        # CPU-as-GPU: the 'device' and the 'host' share one DRAM; give each half so plans that
        # offload are exercised, and say so.
        gpu_mem, host_mem = dram / 2, dram / 2
        gpu_mem_ref = host_ref = f"half of MemTotal ({dram / 2**30:.1f} GiB): CPU-as-GPU profile, DRAM split between the two roles; {ref}"
    gpu_dtype = dtype if cuda else f"{dtype} (CPU as the compute device, {compute_threads} of {len(cores)} cores)"
    tags = {"compute_dtype": dtype, "machine": dev_name, "noisy": "yes" if noisy else "no"}
    if not cuda:
        # get_cpu_capability names the vector ISA torch dispatches to (AVX2, AVX512...): on CPUs
        # without native bf16/fp16 math, half precision runs 30-60x slower than fp32.
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
        tags.update(compute_threads=compute_threads, link_throttle_bytes_per_s=f"{cpu_link_bytes_per_s:.6g}",
                    cpu_capability=capability)
    if cuda:
        link_desc = "pinned cudaMemcpy on copy streams"
        link_src, link_ref = "fitted", f"time = latency + bytes / bandwidth fit over sizes; {ref}"
    else:
        core = link.get("copier_core")
        link_desc = (f"throttled stand-in (no CUDA): a copier thread on core {core} paced to "
                     f"{cpu_link_bytes_per_s / 1e9:.3g} GB/s, as the replay runs it")
        link_src = "measured"
        link_ref = (f"throttled stand-in: copier thread paced to {cpu_link_bytes_per_s / 1e9:.3g} GB/s, measured over "
                    f"sizes and fitted time = latency + bytes / bandwidth; {ref}")
    fp32_rate = comp["peak_flop_per_s"] / (2 if cuda and dtype != "fp32" else 1)
    fp32_source = "estimate" if cuda and dtype != "fp32" else "measured"
    fp32_ref = "half the half-precision peak (not measured separately)" if cuda and dtype != "fp32" else "the GEMM peak"
    data = {
        "kind": "system",
        "name": "measured-" + ("cuda" if cuda else "cpu"),
        "description": f"Measured by {command}: {dev_name}; compute in {gpu_dtype}; {noise}; {ref} {format_tags(tags)}",
        "gpu": {
            "kind": "gpu", "name": part_name(dev_name), "description": dev_name,
            "memory": _q(gpu_mem, "GiB", 2**30, "measured", gpu_mem_ref),
            "memory_bandwidth": _q(comp["memory_bytes_per_s"], "GB/s", 1e9, "measured",
                                   f"peak of a tensor copy sweep (read + write bytes); {ref}"),
            "flops_fp16": _q(comp["peak_flop_per_s"], "TFLOP/s", 1e12, "measured",
                             f"peak of a {gpu_dtype} GEMM sweep (the field holds the plan dtype's peak); {ref}"),
            "flops_fp32": _q(fp32_rate, "TFLOP/s", 1e12, fp32_source, f"{fp32_ref}; {ref}"),
            "flops_tf32": (_q(tf32, "TFLOP/s", 1e12, "measured", f"peak of an fp32 GEMM sweep with TF32 matmuls allowed "
                              f"(torch.backends.cuda.matmul); {ref}") if tf32 is not None else
                           _q(fp32_rate, "TFLOP/s", 1e12, fp32_source,
                              f"no TF32 tensor cores ({'CUDA compute capability below 8.0' if cuda else 'CPU'}): equal to "
                              f"flops_fp32 ({fp32_ref}); {ref}")),
            "reserved_memory": _q(2**30 if cuda else 0.0, "GiB", 2**30, "estimate",
                                  "CUDA context and allocator slack" if cuda else "none on the CPU"),
            "launch_overhead": _q(comp["launch_overhead_s"], "us", 1e-6, "measured",
                                  f"median time of a one-element add; {ref}"),
            "efficiency": _curves("measured-device", comp, f"fitted from the sweeps of {ref}"),
        },
        "host": {
            "kind": "host", "name": "measured-host", "description": f"{platform.processor() or platform.machine()}",
            "memory": _q(host_mem, "GiB", 2**30, "measured", host_ref),
            "memory_bandwidth": _q(host["memory_bytes_per_s"], "GB/s", 1e9, "measured", f"CPU tensor copy sweep; {ref}"),
            "flops_fp32": _q(host["peak_flop_per_s"], "TFLOP/s", 1e12, "measured", f"CPU fp32 GEMM sweep; {ref}"),
            "optimizer_bandwidth": _q(opt_rate, "GB/s", 1e9, "measured",
                                      f"torch.optim.AdamW(foreach=True) step over {opt_params} fp32 parameters on the "
                                      f"CPU: {opt_bytes:.0f} B/param (the update's reads + writes) / median time; {ref}"),
            "reserved_memory": _q(0.0 if not cuda else 8 * 2**30, "GiB", 2**30, "estimate",
                                  "OS and framework share"),
            "efficiency": _curves("measured-host", host, f"fitted from the CPU sweeps of {ref}"),
        },
        "link": {
            "kind": "link", "name": "measured-link" if cuda else "throttled-copier",
            "description": link_desc,
            "h2d": _q(link["h2d"], "GB/s", 1e9, link_src, link_ref),
            "d2h": _q(link["d2h"], "GB/s", 1e9, link_src, link_ref),
            "latency": _q(link["latency"], "us", 1e-6, "fitted", f"intercept of the same fits; {ref}"),
            "pageable_factor": _q(link["pageable_factor"], "%", 0.01, "measured",
                                  f"pageable / pinned H2D; {ref}" if cuda else
                                  f"the stand-in copier has no pinned/pageable distinction; {ref}"),
            "bidirectional_factor": _q(link["bidirectional_factor"], "%", 0.01, "measured",
                                       f"both directions at once vs alone; {ref}"),
        },
    }
    check_profile(data)
    return data


def _number(data: Mapping, part: str, key: str, file: str) -> tuple[float, str]:
    """(SI value, text as written) of ``part.key``; a negative figure is refused with the rule."""
    entry = data[part][key]
    text = entry["value"] if isinstance(entry, Mapping) else entry
    field = f"{part}.{key}"
    head = str(text).strip().split()[0] if str(text).strip() else ""
    try:
        negative = float(head) < 0
    except ValueError:
        negative = False
    if negative:
        raise ReplayError(f"{field} must not be negative, got {text!r}: no time or rate is below zero; {CONTENDED} ({file})")
    value = parse_quantity(text, SCHEMA_DIMENSIONS[field], field=field, file=file, allow_zero=True)
    return value, str(text)


def check_profile(data: Mapping, *, file: str = "measured profile") -> None:
    """Refuse impossible figures in a measured profile mapping (as :func:`profile_machine` returns).

    Rules: every rate is finite and above zero; a link (H2D, D2H) is no faster than the compute
    device's memory (``gpu.memory_bandwidth``: the copy engine writes or reads that memory; the host
    side is not compared, as a copy sweep on a few host cores may understate the DRAM's rate); the
    fitted link latency and the launch overhead lie in ``[0, 1 ms]`` (:data:`MAX_LATENCY_S`).

    Raises
    ------
    ReplayError
        Naming the figure, the rule and the value, and that the machine was probably contended.

    Examples
    --------
    >>> bad = {"gpu": {"memory_bandwidth": "3350 GB/s", "launch_overhead": "4 us"},
    ...        "host": {"memory_bandwidth": "200 GB/s"},
    ...        "link": {"h2d": "25 GB/s", "d2h": "629838 GB/s", "latency": "10 us"}}
    >>> check_profile(bad)
    Traceback (most recent call last):
    ...
    validate.errors.ReplayError: link.d2h = '629838 GB/s' is faster than gpu.memory_bandwidth = '3350 GB/s': a link cannot move data faster than the memory it copies to or from; the timings were disturbed: the machine was probably contended (rerun on an idle machine) (measured profile)
    """
    for part, key in (("gpu", "memory_bandwidth"), ("host", "memory_bandwidth"), ("host", "optimizer_bandwidth")):
        if key == "optimizer_bandwidth" and key not in data[part]:
            continue  # optional: profiles written before it have none
        value, text = _number(data, part, key, file)
        if not (value > 0 and math.isfinite(value)):
            raise ReplayError(f"{part}.{key} must be a positive finite rate, got {text!r}; {CONTENDED} ({file})")
    device_bw, device_text = _number(data, "gpu", "memory_bandwidth", file)
    for key in ("h2d", "d2h"):
        value, text = _number(data, "link", key, file)
        if not (value > 0 and math.isfinite(value)):
            raise ReplayError(f"link.{key} must be a positive finite rate, got {text!r}; {CONTENDED} ({file})")
        if value > device_bw:
            raise ReplayError(f"link.{key} = {text!r} is faster than gpu.memory_bandwidth = {device_text!r}: a link "
                              f"cannot move data faster than the memory it copies to or from; {CONTENDED} ({file})")
    for part, key in (("link", "latency"), ("gpu", "launch_overhead")):
        value, text = _number(data, part, key, file)
        if value > MAX_LATENCY_S:
            raise ReplayError(f"{part}.{key} must be at most {format_quantity(MAX_LATENCY_S, Dimension.TIME)}, got "
                              f"{text!r}: far beyond any copy or launch cost (microseconds); {CONTENDED} ({file})")


def _driver_version() -> str:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_profile(data: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, width=200))
