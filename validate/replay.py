"""Replay a plan's decode steps with real tensors and compare measured with predicted time.

Each replayed layer has weights of the model's real shapes, split as the plan says between the
compute device and host buffers (pinned under CUDA); its KV cache split between resident tokens and
offloaded ones; offloaded tokens are transferred, recomputed from host-stored layer inputs with the
layer's real K/V projection, or attended on the CPU, and partial attentions are merged by their
log-sum-exp. The next layer's copies are issued before the current layer computes (a copy stream
under CUDA, a copy thread on the CPU), as the cost model assumes. Data are random; only time and
memory are measured.

A slice (``layers``, ``steps``) replays the first layers of each distinct policy and a few decode
steps spread over the generation; the report compares the slice's measured time with the slice's
own prediction and says what share of the model it covers.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from costmodel import KvWorkload, LayerPolicy, range_bounds, unit_costs
from costmodel.kv import layer_step_times
from hwprofiles import System
from validate.errors import ReplayError

import torch
import torch.nn.functional as F


def _dtype(dtype_bytes: int, device: torch.device) -> torch.dtype:
    if dtype_bytes == 4:
        return torch.float32
    if dtype_bytes == 2:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    raise ReplayError(f"replay supports 2- or 4-byte elements, got dtype_bytes={dtype_bytes}")


def predicted_layer_step_s(wl: KvWorkload, system: System, pol: LayerPolicy, step: int) -> float:
    """The cost model's time of one layer in decode step ``step`` (the same formula as evaluate())."""
    c = wl.prompt_len + 1 + step
    bounds = range_bounds(wl.gen_len, len(pol.splits))
    split = pol.splits[next(i for i, (a, b) in enumerate(bounds) if a <= step < b)]
    off = pol.kv.offloaded
    uc = unit_costs(wl, system, context=c, gpu_attn_tokens=c * (1 - off * split.cpu),
                    recompute_tokens=c * off * split.recompute, cpu_tokens=c * off * split.cpu)
    times = layer_step_times(uc, pol.weights, pol.kv, pol.activations_on_host, split, np.array([float(c)]))
    return float(max(float(v[0]) for v in times.values()))


@dataclass(slots=True)
class _Split:
    """A weight matrix [k, n] split by rows: resident rows on the device, the rest streamed."""

    resident: torch.Tensor
    host: torch.Tensor | None
    k_resident: int


class _Layer:
    def __init__(self, wl: KvWorkload, pol: LayerPolicy, c_max: int, dev: torch.device, dtype: torch.dtype,
                 pinned: bool):
        m = wl.model
        if m.n_experts > 1:
            raise ReplayError("replay of MoE layers is not supported yet")
        if pol.weights.disk > 0 or pol.kv.disk > 0:
            raise ReplayError("the plan puts data on disk; replay covers the GPU and host tiers only")
        self.pol, self.m, self.dev, self.dtype = pol, m, dev, dtype
        b, h = wl.batch, m.hidden
        up = (2 if m.gated_mlp else 1) * m.intermediate
        shapes = {"qkv": (h, m.q_dim + 2 * m.kv_dim), "o": (m.q_dim, h), "up": (h, up), "down": (m.intermediate, h)}
        self.w: dict[str, _Split] = {}
        for name, (k, n) in shapes.items():
            k_res = int(round(pol.weights.gpu * k))
            res = torch.randn(k_res, n, device=dev, dtype=dtype) * 0.02
            host = torch.randn(k - k_res, n, dtype=dtype).pin_memory() if pinned and k_res < k else (
                torch.randn(k - k_res, n, dtype=dtype) if k_res < k else None)
            self.w[name] = _Split(resident=res, host=host, k_resident=k_res)
        self.kvh, self.d = m.n_kv_heads, m.head_dim
        self.c_gpu = int(round(pol.kv.gpu * c_max))
        c_off = c_max - self.c_gpu
        mk = (lambda *s: torch.randn(*s, dtype=dtype).pin_memory()) if pinned else (lambda *s: torch.randn(*s, dtype=dtype))
        self.k_dev = torch.randn(b, self.kvh, c_max, self.d, device=dev, dtype=dtype)
        self.v_dev = torch.randn_like(self.k_dev)
        self.k_host = mk(b, self.kvh, max(c_off, 1), self.d)
        self.v_host = mk(b, self.kvh, max(c_off, 1), self.d)
        self.k_host32 = self.k_host.float() if dtype != torch.float32 else self.k_host
        self.v_host32 = self.v_host.float() if dtype != torch.float32 else self.v_host
        self.act_host = mk(b, max(c_off, 1), h) if pol.activations_on_host else None
        self.new_kv_host = mk(b, 2 * m.kv_dim) if c_off > 0 or pol.activations_on_host else None


class Replayer:
    """Runs decode steps of a slice of layers and times each layer."""

    def __init__(self, wl: KvWorkload, layers: Sequence[LayerPolicy], c_max: int, device: torch.device):
        self.wl, self.dev = wl, device
        self.cuda = device.type == "cuda"
        self.dtype = _dtype(wl.dtype_bytes, device)
        self.layers = [_Layer(wl, p, c_max, device, self.dtype, self.cuda) for p in layers]
        m = wl.model
        # Double-buffered staging for streamed weights and for moved KV / activations.
        rows = {n: max((L.w[n].host.shape[0] for L in self.layers if L.w[n].host is not None), default=0)
                for n in self.layers[0].w}
        cols = {n: s.resident.shape[1] for n, s in self.layers[0].w.items()}
        self.w_slots = [{n: torch.empty(rows[n], cols[n], device=device, dtype=self.dtype) for n in rows}
                        for _ in range(2)] if any(rows.values()) else None
        self.act_slots = [torch.empty(wl.batch, c_max, m.hidden, device=device, dtype=self.dtype) for _ in range(2)] \
            if any(L.act_host is not None for L in self.layers) else None
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        # The copy thread stands in for the copy engine on the CPU; CPU attention gets its own
        # thread so it runs beside the device's attention, as the cost model assumes.
        self.pool = None if self.cuda else ThreadPoolExecutor(max_workers=1)
        self.cpu_attention = ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.cpu_attention.shutdown()

    # -- copies (one direction per engine, issued ahead) ---------------------------------------
    def _tokens(self, L: _Layer, c: int, split) -> tuple[int, int, int]:
        off = c - min(L.c_gpu, c)
        n_x = int(round(off * split.transfer))
        n_r = int(round(off * split.recompute))
        return n_x, n_r, off - n_x - n_r

    def _issue(self, li: int, c: int, split):
        """Start the H2D copies layer ``li`` needs; returns a handle to wait on."""
        L = self.layers[li]
        n_x, n_r, _ = self._tokens(L, c, split)
        slot = li % 2
        c_gpu = min(L.c_gpu, c)

        def copies():
            if self.w_slots is not None:
                for name, s in L.w.items():
                    if s.host is not None:
                        self.w_slots[slot][name][: s.host.shape[0]].copy_(s.host, non_blocking=self.cuda)
            if n_x:
                L.k_dev[:, :, c_gpu:c_gpu + n_x].copy_(L.k_host[:, :, :n_x], non_blocking=self.cuda)
                L.v_dev[:, :, c_gpu:c_gpu + n_x].copy_(L.v_host[:, :, :n_x], non_blocking=self.cuda)
            if n_r:
                self.act_slots[slot][:, :n_r].copy_(L.act_host[:, :n_r], non_blocking=self.cuda)

        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                copies()
                ev = torch.cuda.Event()
                ev.record(self.copy_stream)
            return ev
        return self.pool.submit(copies)

    def _wait(self, handle) -> None:
        if self.cuda:
            torch.cuda.current_stream(self.dev).wait_event(handle)
        else:
            handle.result()

    # -- compute -------------------------------------------------------------------------------
    def _matmul(self, x: torch.Tensor, s: _Split, slot_w: torch.Tensor | None, cols: slice = slice(None)) -> torch.Tensor:
        y = x[..., : s.k_resident] @ s.resident[:, cols] if s.k_resident else None
        if s.host is not None:
            part = x[..., s.k_resident:] @ slot_w[: s.host.shape[0], cols]
            y = part if y is None else y + part
        return y

    def _layer(self, li: int, x: torch.Tensor, c: int, split) -> torch.Tensor:
        L, m = self.layers[li], self.wl.model
        slot = li % 2
        slots = self.w_slots[slot] if self.w_slots is not None else {}
        b = x.shape[0]
        n_x, n_r, n_c = self._tokens(L, c, split)
        c_gpu = min(L.c_gpu, c)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        qkv = self._matmul(h, L.w["qkv"], slots.get("qkv"))
        q = qkv[:, : m.q_dim].view(b, m.n_heads, 1, m.head_dim)
        new_kv = qkv[:, m.q_dim:]
        if L.new_kv_host is not None:  # the new token's KV (and input) go to the host tier
            L.new_kv_host.copy_(new_kv, non_blocking=self.cuda)
        if n_r:
            act = self.act_slots[slot][:, :n_r].reshape(b * n_r, m.hidden)
            kv = self._matmul(act, L.w["qkv"], slots.get("qkv"), slice(m.q_dim, None))
            kv = kv.view(b, n_r, 2, L.kvh, L.d)
            at = c_gpu + n_x
            L.k_dev[:, :, at:at + n_r].copy_(kv[:, :, 0].transpose(1, 2))
            L.v_dev[:, :, at:at + n_r].copy_(kv[:, :, 1].transpose(1, 2))
        n_dev = c_gpu + n_x + n_r
        k, v = L.k_dev[:, :, :n_dev], L.v_dev[:, :, :n_dev]
        if n_c == 0:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=m.is_gqa)
        else:
            q_host = q.to("cpu", torch.float32, non_blocking=False)
            fut = self.cpu_attention.submit(_attention_lse, q_host, L.k_host32[:, :, :n_c], L.v_host32[:, :, :n_c])
            o_dev, lse_dev = _attention_lse(q, k, v) if n_dev else (None, None)
            o_cpu, lse_cpu = fut.result()
            o_cpu, lse_cpu = o_cpu.to(self.dev, self.dtype), lse_cpu.to(self.dev)
            out = o_cpu if o_dev is None else _merge(o_dev, lse_dev, o_cpu, lse_cpu)
        out = out.reshape(b, m.q_dim)
        x = x + self._matmul(out, L.w["o"], slots.get("o"))
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        up = self._matmul(h, L.w["up"], slots.get("up"))
        if m.gated_mlp:
            g, u = up.chunk(2, dim=-1)
            up = F.silu(g) * u
        else:
            up = F.relu(up)
        return x + self._matmul(up, L.w["down"], slots.get("down"))

    def step(self, step: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
        """One decode step over the slice; returns each layer's measured seconds."""
        c = self.wl.prompt_len + 1 + step
        bounds = range_bounds(self.wl.gen_len, len(self.layers[0].pol.splits))
        k = next(i for i, (a, b) in enumerate(bounds) if a <= step < b)
        splits = [L.pol.splits[k] for L in self.layers]
        x = torch.randn(self.wl.batch, self.wl.model.hidden, device=self.dev, dtype=self.dtype)
        if self.cuda:
            torch.cuda.synchronize(self.dev)
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(len(self.layers) + 1)]
            marks[0].record()
        else:
            t_prev = clock()
        times = []
        handle = self._issue(0, c, splits[0])
        for li in range(len(self.layers)):
            self._wait(handle)
            if li + 1 < len(self.layers):
                # Prefetch the next layer while this one computes. Its slot was last used by layer
                # li-1, which has finished on the compute stream (CUDA orders the copy after it).
                if self.cuda:
                    self.copy_stream.wait_stream(torch.cuda.current_stream(self.dev))
                handle = self._issue(li + 1, c, splits[li + 1])
            x = self._layer(li, x, c, splits[li])
            if self.cuda:
                marks[li + 1].record()
            else:
                now = clock()
                times.append(now - t_prev)
                t_prev = now
        if self.cuda:
            torch.cuda.synchronize(self.dev)
            times = [marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(len(self.layers))]
        return times


def _attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query position with its log-sum-exp, for merging partial attentions."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = (torch.exp(scores - lse).to(v.dtype) @ v)
    return out, lse


def _merge(o1, lse1, o2, lse2):
    """Combine two partial attentions over disjoint token sets (FlashAttention's rescaling)."""
    lse = torch.logaddexp(lse1, lse2)
    return (o1.float() * torch.exp(lse1 - lse) + o2.float() * torch.exp(lse2 - lse)).to(o1.dtype)


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


def replay_policies(wl: KvWorkload, system: System, policies: Sequence[LayerPolicy], *, layers: int | None = None,
                    steps: int | None = None, repeats: int = 5, warmup: int = 2, device: str | None = None,
                    progress: Callable[[str], None] = print) -> dict:
    """Replay decode steps of per-layer policies; returns the predicted-vs-measured report (JSON-able)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    idx = choose_slice(policies, layers)
    n_steps = wl.gen_len if steps is None else max(1, min(steps, wl.gen_len))
    step_ids = sorted({int(round(s)) for s in np.linspace(0, wl.gen_len - 1, n_steps)})
    c_max = wl.prompt_len + 1 + max(step_ids)
    sliced = [policies[i] for i in idx]
    progress(f"replaying layers {idx if len(idx) <= 8 else f'{len(idx)} of {len(policies)}'} at decode steps "
             f"{step_ids} on {dev.type} ({_dtype(wl.dtype_bytes, dev)})")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rep = Replayer(wl, sliced, c_max, dev)
    try:
        per_step = []
        for s in step_ids:
            for _ in range(warmup):
                rep.step(s)
            runs = [rep.step(s) for _ in range(repeats)]
            measured = [statistics.median(r[i] for r in runs) for i in range(len(sliced))]
            totals = [sum(r) for r in runs]
            predicted = [predicted_layer_step_s(wl, system, p, s) for p in sliced]
            per_step.append({"step": s, "context": wl.prompt_len + 1 + s,
                             "predicted_s": sum(predicted), "measured_s": statistics.median(totals),
                             "measured_min_s": min(totals), "measured_max_s": max(totals),
                             "layers": [{"index": i, "predicted_s": pr, "measured_s": me}
                                        for i, pr, me in zip(idx, predicted, measured)]})
            last = per_step[-1]
            progress(f"  step {s} (context {last['context']}): predicted {last['predicted_s'] * 1e3:.2f} ms, "
                     f"measured {last['measured_s'] * 1e3:.2f} ms ({_err(last):+.1f} %)")
    finally:
        rep.close()
    pred = sum(p["predicted_s"] for p in per_step)
    meas = sum(p["measured_s"] for p in per_step)
    layer_rows = []
    for j, i in enumerate(idx):
        pr = sum(p["layers"][j]["predicted_s"] for p in per_step)
        me = sum(p["layers"][j]["measured_s"] for p in per_step)
        layer_rows.append({"index": i, "predicted_s": pr, "measured_s": me, "error_pct": 100 * (pr - me) / me})
    out = {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(_dtype(wl.dtype_bytes, dev)),
        "slice": {"layers": idx, "of_layers": len(policies), "steps": step_ids, "of_steps": wl.gen_len,
                  "representative": ("every layer" if len(idx) == len(policies) else
                                     "each distinct layer policy keeps its share of the slice"),
                  "note": "predicted and measured cover the same layers and steps; the LM head is not replayed"},
        "predicted_s": pred, "measured_s": meas, "error_pct": 100 * (pred - meas) / meas,
        "steps": per_step, "layers": layer_rows,
    }
    if dev.type == "cuda":
        out["peak_gpu_bytes"] = float(torch.cuda.max_memory_allocated(dev))
    return out


def _err(row: dict) -> float:
    return 100 * (row["predicted_s"] - row["measured_s"]) / row["measured_s"]
