"""Simulate a plan's schedule as a task graph and compute its exact makespan.

Each layer becomes tasks on five FIFO resources — the GPU compute stream, the H2D and D2H copy
engines, the disk and the CPU — with data dependencies (a layer computes after its inputs arrive)
and buffer dependencies (double buffering: the prefetch of layer l+1 may start only once layer l-1
has finished with its buffer). Tasks on one resource run in issue order, as CUDA streams and copy
engines do. The makespan is the longest path through the DAG, so unlike the LP's
per-layer max it sees when a transfer cannot hide behind the compute it was meant to overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from costmodel import KvWorkload, LayerPolicy, Processor, head_costs, prefill_costs, range_bounds, unit_costs
from costmodel.kv import dense_ops, ops_time_s
from hwprofiles import System

RESOURCES = ("gpu", "h2d", "d2h", "disk", "cpu")


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    name: str
    resource: str
    layer: int
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    tasks: tuple[Task, ...]
    makespan_s: float

    def busy_s(self) -> dict[str, float]:
        """Busy time per resource."""
        busy = dict.fromkeys(RESOURCES, 0.0)
        for t in self.tasks:
            busy[t.resource] += t.end_s - t.start_s
        return busy


class _Graph:
    """A task DAG built in dependency order: every task names only tasks added before it, and each
    resource runs its tasks first in, first out. Insertion order is therefore a topological order,
    and the schedule is one pass over it (importing networkx for its sort cost more than planning)."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str, int, float, list[str]]] = {}
        self.last: dict[str, str] = {}

    def task(self, name: str, resource: str, layer: int, duration: float, deps: Sequence[str | None]) -> str:
        preds = [d for d in deps if d is not None]
        if resource in self.last:  # FIFO order on the resource
            preds.append(self.last[resource])
        missing = [d for d in preds if d not in self.nodes]
        if missing or name in self.nodes:
            raise RuntimeError(f"internal: timeline task {name!r} added twice or before its dependencies {missing}")
        self.nodes[name] = (resource, layer, max(float(duration), 0.0), preds)
        self.last[resource] = name
        return name

    def schedule(self) -> Timeline:
        end: dict[str, float] = {}
        tasks = []
        for name, (resource, layer, duration, preds) in self.nodes.items():
            s = max((end[p] for p in preds), default=0.0)
            end[name] = s + duration
            tasks.append(Task(name=name, resource=resource, layer=layer, start_s=s, end_s=s + duration))
        makespan = max(end.values(), default=0.0)
        return Timeline(tasks=tuple(sorted(tasks, key=lambda t: t.start_s)), makespan_s=makespan)


def _dense_split(wl: KvWorkload, system: System) -> tuple[float, float]:
    """GPU time of one layer's ops before attention (norm, QKV, RoPE) and after it."""
    gpu = Processor.gpu(system.gpu)
    ops = dense_ops(wl.model, wl.micro_batch, wl.dtype_bytes)  # once per GPU batch
    return wl.gpu_batches * ops_time_s(ops[:3], gpu), wl.gpu_batches * ops_time_s(ops[3:], gpu)


def simulate_decode_step(wl: KvWorkload, system: System, layers: Sequence[LayerPolicy], *, step: int,
                         head_on_gpu: bool = True) -> Timeline:
    """The schedule of decode step ``step`` (0-based) of a per-layer policy."""
    c = float(wl.prompt_len + 1 + step)
    bounds = range_bounds(wl.gen_len, len(layers[0].splits))
    k = next(i for i, (a, b) in enumerate(bounds) if a <= step < b)
    pre_s, post_s = _dense_split(wl, system)
    gr = _Graph()
    ucs = []
    by_tokens: dict[tuple[float, float, float], object] = {}  # identical layers share their unit costs
    for pol in layers:
        split = pol.splits[k]
        off = pol.kv.offloaded
        toks = (c * off * split.transfer, c * off * split.recompute, c * off * split.cpu)
        if toks not in by_tokens:
            by_tokens[toks] = unit_costs(wl, system, context=c, gpu_attn_tokens=c - toks[2], recompute_tokens=toks[1],
                                         cpu_tokens=toks[2])
        ucs.append((toks, by_tokens[toks]))

    def prefetch(li: int, buffer_free: str | None) -> str:
        pol, ((x, r, _), uc) = layers[li], ucs[li]
        disk_bytes = pol.weights.disk * uc.weight_bytes + c * pol.kv.disk * uc.kv_bytes_per_token
        disk = gr.task(f"L{li}.disk_read", "disk", li,
                       (uc.disk_latency_s + disk_bytes / uc.disk_read_bytes_per_s) if disk_bytes else 0.0, [])
        h2d_bytes = pol.weights.offloaded * uc.weight_bytes + x * uc.kv_bytes_per_token + r * uc.act_bytes_per_token
        return gr.task(f"L{li}.h2d", "h2d", li,
                       (uc.link_latency_s + h2d_bytes / uc.h2d_bytes_per_s) if h2d_bytes else 0.0, [disk, buffer_free])

    h2d = [prefetch(0, None)]
    prev_out = None
    gpu_done: list[str] = []
    for li, pol in enumerate(layers):
        (x, r, ct), uc = ucs[li]
        off = pol.kv.offloaded
        pre = gr.task(f"L{li}.qkv", "gpu", li, pre_s, [prev_out, h2d[li]])
        if li + 1 < len(layers):  # prefetch the next layer once layer li-1 has freed its buffer
            h2d.append(prefetch(li + 1, gpu_done[li - 1] if li >= 1 else None))
        recompute_s = (uc.recompute_gpu_fixed_s + r * uc.recompute_gpu_s_per_token) if r > 0 else 0.0
        attn = gr.task(f"L{li}.attn", "gpu", li, (c - ct) * uc.attn_gpu_s_per_token + recompute_s, [pre])
        deps = [attn]
        if ct > 0:
            q = gr.task(f"L{li}.d2h_q", "d2h", li, uc.link_latency_s + uc.q_bytes / uc.d2h_bytes_per_s, [pre])
            cpu = gr.task(f"L{li}.cpu_attn", "cpu", li, uc.attn_cpu_fixed_s + ct * uc.attn_cpu_s_per_token,
                          [q, f"L{li}.disk_read"])
            deps.append(gr.task(f"L{li}.h2d_o", "h2d", li, uc.link_latency_s + uc.o_bytes / uc.h2d_bytes_per_s, [cpu]))
        post = gr.task(f"L{li}.mlp", "gpu", li, post_s, deps)
        d2h_bytes = off * uc.kv_bytes_per_token + (uc.act_bytes_per_token if pol.activations_on_host else 0.0)
        if d2h_bytes:
            gr.task(f"L{li}.d2h_kv", "d2h", li, uc.link_latency_s + d2h_bytes / uc.d2h_bytes_per_s, [pre])
        gpu_done.append(post)
        prev_out = post
    gr.task("head", "gpu", len(layers), head_costs(wl, system).step_s(head_on_gpu, system.link), [prev_out])
    return gr.schedule()


def simulate_prefill(wl: KvWorkload, system: System, layers: Sequence[LayerPolicy], *,
                     head_on_gpu: bool = True) -> Timeline:
    pc = prefill_costs(wl, system)
    uc = unit_costs(wl, system, context=wl.prompt_len, gpu_attn_tokens=1, recompute_tokens=1, cpu_tokens=1)
    gr = _Graph()
    prev = None
    gpu_done: list[str] = []
    d2h_done: list[str] = []
    for li, pol in enumerate(layers):
        w_disk = pol.weights.disk * pc.weight_bytes
        disk = gr.task(f"L{li}.disk_read", "disk", li,
                       (uc.disk_latency_s + w_disk / uc.disk_read_bytes_per_s) if w_disk else 0.0, [])
        w_bytes = pol.weights.offloaded * pc.weight_bytes
        h2d = gr.task(f"L{li}.h2d", "h2d", li, (uc.link_latency_s + w_bytes / uc.h2d_bytes_per_s) if w_bytes else 0.0,
                      [disk, gpu_done[li - 2] if li >= 2 else None])
        comp = gr.task(f"L{li}.compute", "gpu", li, pc.gpu_s, [prev, h2d, d2h_done[li - 2] if li >= 2 else None])
        out = pol.kv.offloaded * pc.kv_bytes + (pc.act_bytes if pol.activations_on_host else 0.0)
        d2h = gr.task(f"L{li}.d2h_kv", "d2h", li, (uc.link_latency_s + out / uc.d2h_bytes_per_s) if out else 0.0, [comp])
        if pol.kv.disk:
            gr.task(f"L{li}.disk_write", "disk", li, pol.kv.disk * pc.kv_bytes / uc.disk_write_bytes_per_s, [d2h])
        gpu_done.append(comp)
        d2h_done.append(d2h)
        prev = comp
    gr.task("head", "gpu", len(layers), head_costs(wl, system).step_s(head_on_gpu, system.link), [prev])
    return gr.schedule()


def simulated_total_s(wl: KvWorkload, system: System, layers: Sequence[LayerPolicy], *,
                      head_on_gpu: bool = True) -> tuple[float, float]:
    """Simulated prefill and decode seconds: each context range's first and last step are simulated
    and the steps between are interpolated linearly (step time is near-affine in context)."""
    prefill = simulate_prefill(wl, system, layers, head_on_gpu=head_on_gpu).makespan_s
    decode = 0.0
    for a, b in range_bounds(wl.gen_len, len(layers[0].splits)):
        first = simulate_decode_step(wl, system, layers, step=a, head_on_gpu=head_on_gpu).makespan_s
        last = simulate_decode_step(wl, system, layers, step=b - 1, head_on_gpu=head_on_gpu).makespan_s if b - 1 > a else first
        decode += float(np.mean([first, last])) * (b - a)
    return prefill, decode
