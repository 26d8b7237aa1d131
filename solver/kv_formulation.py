"""The KV-cache and weight placement MIP: formulate, solve, extract per-layer policies.

Decoder layers are identical, so per-layer binaries would be symmetric and slow branch-and-bound.
Instead each *mode* (which tiers a layer uses for weights and KV, whether it keeps activations on
the host to recompute from, and which actions its offloaded KV may take) gets an integer layer
count ``n_m``, and every continuous decision of the mode is an *aggregate* over its layers (e.g.
``Wg_m`` = sum of the GPU weight shares of its layers). Each per-layer cost is affine in the
per-layer decisions, so the perspective ``n_m * a + b * aggregate`` of the cost is exact for an
equal split, and equal splits are optimal for identical layers. Overlap of compute and transfers is
modelled with one epigraph variable per mode and context range: T >= GPU, H2D, D2H, disk, CPU.
GPU memory is counted per phase, with the exact evaluator's terms (:func:`costmodel.kv.memory_use`):
what stays resident, plus prefill's KV staging, layer inputs and working set, or decode's KV buffers
and working set. The MIP sizes each buffer for a whole streamed unit of any mode that needs it (an
upper bound: a layer's streamed share is an aggregate over its mode's layers); the LP re-solves that
follow it, with the layer counts fixed, size each buffer by the mode's per-layer shares exactly as the
evaluator does. A plan the MIP accepts fits when evaluated exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from costmodel import (
    Fractions,
    KvWorkload,
    LayerPolicy,
    TokenSplit,
    capacity,
    head_costs,
    prefill_costs,
    range_bounds,
    unit_costs,
)
from costmodel.kv import (
    act_layer_bytes,
    decode_working_bytes,
    kv_layer_bytes,
    prefill_hidden_bytes,
    prefill_kv_staging_bytes,
    prefill_working_bytes,
    weight_buffer_bytes,
)
from hwprofiles import System
from solver.backends import EQ, GE, LE, MipModel, SolveResult, SolveStatus, solve
from solver.errors import PlanError

MOVE, CPU, MIXED = "move", "cpu", "mixed"


@dataclass(frozen=True, slots=True)
class Mode:
    """A class of layer: weight tiers, KV tiers, whether activations are kept, and KV actions."""

    w: str  # "gpu" (all weights on GPU), "host" (GPU + host shares), "disk" (GPU + host + disk)
    kv: str  # same tiers for the KV cache
    action: str = ""  # for offloaded KV: "move" (transfer/recompute), "cpu" (CPU attention), "mixed"
    act: bool = False  # activations kept on the host (enables recompute)

    @property
    def name(self) -> str:
        if self.kv == "gpu":
            return f"w:{self.w}/kv:gpu"
        return f"w:{self.w}/kv:{self.kv}/{self.action}{'+act' if self.act else ''}"

    @property
    def offloads_kv(self) -> bool:
        return self.kv != "gpu"

    @property
    def streams_weights(self) -> bool:
        return self.w != "gpu"

    @property
    def moves(self) -> bool:
        return self.action in (MOVE, MIXED)

    @property
    def uses_cpu(self) -> bool:
        return self.action in (CPU, MIXED)


def all_modes(has_disk: bool) -> list[Mode]:
    tiers = ("gpu", "host", "disk") if has_disk else ("gpu", "host")
    modes = []
    for w in tiers:
        modes.append(Mode(w, "gpu"))
        for kv in tiers[1:]:
            for action in (MOVE, CPU, MIXED):
                for act in (False, True):
                    if act and action == CPU:
                        continue
                    modes.append(Mode(w, kv, action, act))
    return modes


@dataclass(frozen=True, slots=True, kw_only=True)
class Restriction:
    """Limits that turn the general MIP into a named policy (a baseline)."""

    modes: tuple[Mode, ...] | None = None
    weights_all_offloaded: bool = False
    kv_all_offloaded: bool = False
    head_on_gpu: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MipSolution:
    result: SolveResult
    policies: tuple[LayerPolicy, ...] = ()
    head_on_gpu: bool = True
    mode_counts: tuple[tuple[str, int], ...] = ()
    lp_estimate_s: float | None = None  # the MIP's objective: prefill + decode seconds
    lp_prefill_s: float | None = None
    # range -> mean per-layer tokens recomputed and CPU-attended by the layers that do so
    operating: dict[int, tuple[float, float]] = field(default_factory=dict)
    # range -> the sizes this solve's tangents were taken at (the argument, defaults filled in)
    linearised_at: dict[int, tuple[float, float]] = field(default_factory=dict)
    integers: dict[str, float] = field(default_factory=dict)  # the integer columns' values, by name


# Row and unit scales. HiGHS drops matrix entries below 1e-9 and uses absolute tolerances, so rows
# of bytes are scaled to GB, time rows to milliseconds, and token variables count thousands of tokens.
GB = 1e-9
MS = 1e3
KTOK = 1e3


def solve_kv(wl: KvWorkload, system: System, *, n_ranges: int = 4, kv_groups: int = 0,
             restriction: Restriction = Restriction(), backend: str | None = None,
             time_limit_s: float = 10.0, gap_rel: float = 1e-4,
             operating: dict[int, tuple[float, float]] | None = None,
             fixed: dict[str, float] | None = None, hidden_on_gpu: bool = True) -> MipSolution:
    """Formulate and solve the placement MIP for one batch size.

    Parameters
    ----------
    n_ranges : int
        Context ranges with their own token split (decode context grows each step).
    kv_groups : int
        0: KV GPU shares are continuous (by tokens); g > 0: KV is placed in g groups of heads per
        layer (g must divide the KV heads), so each layer's GPU share is an integer count of groups.
    fixed : dict, optional
        Integer columns (by name) held at these values: with every one of a previous solution's
        :attr:`MipSolution.integers` fixed, only the continuous shares are re-solved (an LP).
    operating : dict, optional
        range -> tokens per sequence one layer recomputes and attends on the CPU: where the tangents
        of the size-dependent recompute and CPU-attention times are taken. Default: the whole
        context (``solver.kv`` re-solves at the sizes of the previous solution).
    hidden_on_gpu : bool
        Keep prefill's layer inputs on the GPU between layers (else on the host, copied each layer).
    """
    m = wl.model
    if not wl.overlap:
        raise PlanError("the placement MIP models engines that overlap copies with compute (overlap=True); "
                        "a serial engine's fixed policies are costed by costmodel.evaluate")
    L = m.n_layers
    has_disk = system.disk is not None
    modes = list(restriction.modes) if restriction.modes is not None else all_modes(has_disk)
    modes = [md for md in modes if has_disk or (md.w != "disk" and md.kv != "disk")]
    bounds = range_bounds(wl.gen_len, n_ranges)
    contexts = wl.contexts().astype(float)
    ctx = [float(contexts[a:b].mean()) for a, b in bounds]
    steps = [b - a for a, b in bounds]
    operating = {k: (operating or {}).get(k, (c, c)) for k, c in enumerate(ctx)}
    ucs = []
    for k, c in enumerate(ctx):
        rec, cpu = operating[k]
        ucs.append(unit_costs(wl, system, context=c, gpu_attn_tokens=c, recompute_tokens=rec, cpu_tokens=cpu))
    pc = prefill_costs(wl, system)
    hc = head_costs(wl, system)
    cap = capacity(system)
    dt = wl.dtype_bytes
    wb = wl.layer_weight_bytes
    unit = weight_buffer_bytes(wl)
    kv_layer, act_layer = kv_layer_bytes(wl), act_layer_bytes(wl)
    kv_mb, act_mb = kv_layer_bytes(wl, micro=True), act_layer_bytes(wl, micro=True)
    staging_need = prefill_kv_staging_bytes(wl, 1.0)
    hidden_gpu, hidden_host = prefill_hidden_bytes(wl, 1.0 if hidden_on_gpu else 0.0)
    nb = wl.gpu_batches
    counts = {i: fixed[f"n{i}"] for i in range(len(modes))} if fixed else None  # LP rounds: counts known

    bld = MipModel("kv_placement")
    V = bld.var
    objective: list[tuple[int, float]] = []
    gpu_mem: list[tuple[int, float]] = []
    host_mem: list[tuple[int, float]] = []
    disk_mem: list[tuple[int, float]] = []
    bw_buf = V("buf_w")  # streamed weights, both phases
    bk_buf = V("buf_kv")  # decode: moved KV (and the activations it is recomputed from)
    bs_buf = V("buf_prefill_kv")  # prefill: KV staging before it is copied out
    staging = V("staging")  # host: disk reads of weights
    exact: list[tuple[int, list[tuple[int, float]]]] = []  # (buffer, terms): buffer >= terms, in LP rounds
    count_terms = []
    mode_vars: dict[int, tuple] = {}  # mode -> (n, weight shares, KV shares, prefill time)
    token_vars: dict[tuple[int, int], tuple] = {}  # (mode, range) -> (transfer, recompute, CPU) tokens
    # (buffer variable, bytes it needs) -> layer counts of the modes that need it. Binaries go per
    # distinct need of each buffer, not per mode: few binaries keep branch-and-bound short.
    buffer_users: dict[tuple[int, float], list[int]] = {}
    for i, md in enumerate(modes):
        n = V(f"n{i}", ub=L, integer=True)
        count_terms.append((n, 1.0))
        # Weight shares (aggregated over the mode's layers).
        if md.w == "gpu":
            wg, wh, wd = None, None, None
        else:
            wg = V(f"wg{i}")
            wh = V(f"wh{i}")
            wd = V(f"wd{i}") if md.w == "disk" else None
            bld.add([(wg, 1.0), (wh, 1.0)] + ([(wd, 1.0)] if wd is not None else []) + [(n, -1.0)], EQ, 0.0)
            if restriction.weights_all_offloaded:
                bld.add([(wg, 1.0)], EQ, 0.0)
        # KV shares.
        if md.kv == "gpu":
            kg, kh, kd = None, None, None
        else:
            if kv_groups:
                g = V(f"kgroups{i}", ub=L * kv_groups, integer=True)
                kg = V(f"kg{i}")
                bld.add([(kg, float(kv_groups)), (g, -1.0)], EQ, 0.0)
            else:
                kg = V(f"kg{i}")
            kh = V(f"kh{i}")
            kd = V(f"kd{i}") if md.kv == "disk" else None
            bld.add([(kg, 1.0), (kh, 1.0)] + ([(kd, 1.0)] if kd is not None else []) + [(n, -1.0)], EQ, 0.0)
            if restriction.kv_all_offloaded:
                bld.add([(kg, 1.0)], EQ, 0.0)

        # Memory.
        gpu_mem += [(n, wb)] if wg is None else [(wg, wb)]
        gpu_mem += [(n, kv_layer)] if kg is None else [(kg, kv_layer)]
        n_fixed = counts[i] if counts is not None else 0.0
        if wh is not None:
            host_mem.append((wh, wb))
            buffer_users.setdefault((bw_buf, unit), []).append(n)
            if n_fixed:  # per layer: streamed share x unit
                exact.append((bw_buf, [(v, unit / n_fixed) for v in (wh, wd) if v is not None]))
        if wd is not None:
            disk_mem.append((wd, wb))
            buffer_users.setdefault((staging, unit), []).append(n)
            if n_fixed:
                exact.append((staging, [(wd, unit / n_fixed)]))
        if kh is not None:
            host_mem.append((kh, kv_layer))
            if md.act:
                host_mem.append((n, act_layer))
            buffer_users.setdefault((bs_buf, staging_need), []).append(n)
            if n_fixed:
                exact.append((bs_buf, [(v, staging_need / n_fixed) for v in (kh, kd) if v is not None]))
            if md.moves:
                buffer_users.setdefault((bk_buf, 2 * (kv_mb + (act_mb if md.act else 0.0))), []).append(n)
        if kd is not None:
            disk_mem.append((kd, kv_layer))

        off = [v for v in (kh, kd) if v is not None]
        streamed = [v for v in (wh, wd) if v is not None]
        # Decode, per context range.
        for k, (c, uc) in enumerate(zip(ctx, ucs)):
            t = V(f"t{i}_{k}")
            objective.append((t, float(steps[k])))
            x = V(f"x{i}_{k}") if md.offloads_kv and md.moves else None
            r = V(f"r{i}_{k}") if md.offloads_kv and md.moves and md.act else None
            cc = V(f"cpu{i}_{k}") if md.offloads_kv and md.uses_cpu else None
            toks = [v for v in (x, r, cc) if v is not None]
            if off:
                bld.add([(v, 1.0) for v in toks] + [(v, -c / KTOK) for v in off], EQ, 0.0)
            if n_fixed and md.moves:
                # Decode KV buffer, per layer: 2 x positions brought in at the last step. x / (n c) is a
                # layer's transferred share of its context (the evaluator's offloaded x transfer share).
                terms = [(x, 2.0 * KTOK * kv_mb / (n_fixed * c))]
                if r is not None:
                    terms.append((r, 2.0 * KTOK * (kv_mb + act_mb) / (n_fixed * c)))
                exact.append((bk_buf, terms))
            # GPU stream: dense ops + attention over every token not attended on the CPU + recompute.
            gpu_fixed_s = uc.dense_gpu_s + c * uc.attn_gpu_s_per_token + (uc.recompute_gpu_fixed_s if r is not None else 0.0)
            gpu_terms = []
            if cc is not None:
                gpu_terms.append((cc, -uc.attn_gpu_s_per_token * KTOK))
            if r is not None:
                gpu_terms.append((r, uc.recompute_gpu_s_per_token * KTOK))
            bld.add([(t, 1.0), (n, -gpu_fixed_s)] + [(v, -a) for v, a in gpu_terms], GE, 0.0, MS)
            # D2H bytes: the new token's KV for offloaded shares, the new activation, CPU-attention queries.
            d2h = [(v, uc.kv_bytes_per_token) for v in off]
            d2h_fixed = (uc.act_bytes_per_token if md.act else 0.0) + (uc.q_bytes if md.uses_cpu else 0.0)
            # A layer's weights cross once; KV, activations, queries and outputs once per GPU batch.
            n_d2h = nb * ((1 if md.offloads_kv else 0) + md.act + md.uses_cpu)
            n_h2d = md.streams_weights + nb * ((x is not None) + (r is not None) + md.uses_cpu)
            if n_h2d:
                h2d = [(t, 1.0), (n, -(n_h2d * uc.link_latency_s
                                       + ((uc.o_bytes if md.uses_cpu else 0.0)
                                          + d2h_fixed * uc.bidir_penalty) / uc.h2d_bytes_per_s))]
                h2d += [(v, -wb / uc.weight_h2d_bytes_per_s) for v in streamed]
                if x is not None:
                    h2d.append((x, -uc.kv_bytes_per_token * KTOK / uc.h2d_bytes_per_s))
                if r is not None:
                    h2d.append((r, -uc.act_bytes_per_token * KTOK / uc.h2d_bytes_per_s))
                h2d += [(v, -uc.kv_bytes_per_token * uc.bidir_penalty / uc.h2d_bytes_per_s) for v in off]
                bld.add(h2d, GE, 0.0, MS)
            if n_d2h:
                scale = (1.0 + uc.bidir_penalty) / uc.d2h_bytes_per_s
                bld.add([(t, 1.0), (n, -(n_d2h * uc.link_latency_s + d2h_fixed * scale))]
                        + [(v, -b * scale) for v, b in d2h], GE, 0.0, MS)
            if wd is not None or kd is not None:
                disk = [(t, 1.0), (n, -2 * uc.disk_latency_s)]
                if wd is not None:
                    disk.append((wd, -wb / uc.disk_read_bytes_per_s))
                if kd is not None:
                    disk.append((kd, -uc.kv_bytes_per_token * (c / uc.disk_read_bytes_per_s
                                                               + 1.0 / uc.disk_write_bytes_per_s)))
                bld.add(disk, GE, 0.0, MS)
            if cc is not None:
                # One GPU batch's chain, then the others pipelined at the slower of GPU and CPU
                # (costmodel.kv._step_times): two rows for the max.
                chain = (uc.dense_gpu_s / nb + 2 * uc.link_latency_s + uc.q_bytes / nb / uc.d2h_bytes_per_s
                         + uc.o_bytes / nb / uc.h2d_bytes_per_s + uc.attn_cpu_fixed_s / nb)
                cpu_slope = uc.attn_cpu_s_per_token * KTOK
                tail = (nb - 1) / nb
                # pageable weight copies occupy the host thread CPU attention runs on (costmodel.kv._step_times)
                stg = wb / uc.weight_h2d_bytes_per_s if uc.pageable_weights else 0.0
                bld.add([(t, 1.0), (n, -(chain + tail * uc.attn_cpu_fixed_s)), (cc, -(cpu_slope / nb + tail * cpu_slope))]
                        + [(v, -stg * (1.0 / nb + tail)) for v in streamed if stg], GE, 0.0, MS)
                if nb > 1:
                    bld.add([(t, 1.0), (n, -(chain + tail * gpu_fixed_s)), (cc, -cpu_slope / nb)]
                            + [(v, -tail * a) for v, a in gpu_terms] + [(v, -stg / nb) for v in streamed if stg],
                            GE, 0.0, MS)
            token_vars[(i, k)] = (x, r, cc)

        # Prefill.
        pt = V(f"pt{i}")
        objective.append((pt, 1.0))
        uc = ucs[0]
        bld.add([(pt, 1.0), (n, -pc.gpu_s)], GE, 0.0, MS)
        # Layer inputs on the host: copied up before and down after every layer, once per GPU batch
        # (costmodel.kv.layer_prefill_times).
        hid = 0.0 if hidden_on_gpu else pc.hidden_bytes
        pd2h = [(v, pc.kv_bytes) for v in off] + ([(n, pc.act_bytes)] if md.act else []) + ([(n, hid)] if hid else [])
        if streamed or hid:
            n_up = (1 if streamed else 0) + (nb if hid else 0)
            bld.add([(pt, 1.0), (n, -(n_up * uc.link_latency_s + hid / uc.h2d_bytes_per_s))]
                    + [(v, -pc.weight_bytes / uc.weight_h2d_bytes_per_s) for v in streamed]
                    + [(v, -b * uc.bidir_penalty / uc.h2d_bytes_per_s) for v, b in pd2h], GE, 0.0, MS)
        if pd2h:
            scale = (1.0 + uc.bidir_penalty) / uc.d2h_bytes_per_s
            n_down = nb * ((1 if off else 0) + md.act + (1 if hid else 0))
            bld.add([(pt, 1.0), (n, -n_down * uc.link_latency_s)] + [(v, -b * scale) for v, b in pd2h],
                    GE, 0.0, MS)
        if wd is not None or kd is not None:
            disk = [(pt, 1.0), (n, -2 * uc.disk_latency_s)]
            if wd is not None:
                disk.append((wd, -pc.weight_bytes / uc.disk_read_bytes_per_s))
            if kd is not None:
                disk.append((kd, -pc.kv_bytes / uc.disk_write_bytes_per_s))
            bld.add(disk, GE, 0.0, MS)
        mode_vars[i] = (n, (wg, wh, wd), (kg, kh, kd), pt)

    bld.add(count_terms, EQ, float(L))
    # A buffer must hold the largest need of any mode in use. With its distinct needs sorted,
    # d1 < d2 < ..., binary y_j says "a mode needing d_j or more is used" and the buffer is
    # sum_j (d_j - d_{j-1}) y_j. Nested like this, the LP relaxation pays the whole base size as
    # soon as any layer streams (one binary per need, y_j = n_j / L, paid about half of it when two
    # modes split the layers, and HiGHS spent most of its time closing that gap).
    for buf in sorted({b for b, _ in buffer_users}):
        needs = sorted(need for b, need in buffer_users if b == buf)
        size: list[tuple[int, float]] = [(buf, 1 / GB)]
        prev, prev_y = 0.0, None
        for j, need in enumerate(needs):
            y = bld.binary(f"buffer{buf}_{j}")
            users = [n for (b, d), ns in buffer_users.items() if b == buf and d >= need for n in ns]
            bld.add([(n, 1.0) for n in users] + [(y, -float(L))], LE, 0.0)
            if prev_y is not None:
                bld.add([(y, 1.0), (prev_y, -1.0)], LE, 0.0)
            size.append((y, -(need - prev)))
            prev, prev_y = need, y
        if counts is None:  # LP rounds: the buffers are sized exactly below
            bld.add(size, GE, 0.0, GB)
    for buf, terms in exact:
        bld.add([(buf, 1 / GB)] + [(v, -a) for v, a in terms], GE, 0.0, GB)

    # Head (embeddings + LM head): on the GPU, or on the host and streamed each step.
    z = bld.binary("head_gpu")
    if restriction.head_on_gpu is not None:
        bld.add([(z, 1.0)], EQ, 1.0 if restriction.head_on_gpu else 0.0)
    head_gpu_s = hc.step_s(True, system.link)
    head_host_s = hc.step_s(False, system.link)
    head_const = (wl.gen_len + 1) * head_host_s
    objective.append((z, -(wl.gen_len + 1) * (head_host_s - head_gpu_s)))
    # GPU memory per phase (costmodel.kv.memory_use): resident + weight buffers + the phase's own.
    gpu_mem += [(z, hc.bytes), (bw_buf, 1 / GB)]
    bld.add(gpu_mem + [(bs_buf, 1 / GB)], LE,
            cap["gpu_bytes"] - hidden_gpu - prefill_working_bytes(wl), GB)
    bld.add(gpu_mem + [(bk_buf, 1 / GB)], LE, cap["gpu_bytes"] - decode_working_bytes(wl), GB)
    host_mem += [(z, -hc.bytes), (staging, 1 / GB)]
    bld.add(host_mem, LE, cap["host_bytes"] - hc.bytes - hidden_host, GB)
    if disk_mem:
        bld.add(disk_mem, LE, cap["disk_bytes"], GB)

    bld.minimize(objective, head_const)
    for name, value in (fixed or {}).items():
        bld.fix(name, value)
    result = solve(bld, backend=backend, time_limit_s=time_limit_s, gap_rel=gap_rel)
    if result.status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return MipSolution(result=result, linearised_at=operating)
    integers = {bld.col_names[c]: round(result.value(c)) for c in range(bld.n_variables) if bld.col_integer[c]}
    return replace(_extract(modes, mode_vars, token_vars, ctx, z, kv_groups, result), linearised_at=operating,
                   integers=integers)


def _fractions(values: Sequence[float], n: float) -> Fractions:
    vals = [max(v / n, 0.0) for v in values]
    vals = [0.0 if v < 1e-9 else v for v in vals]
    total = sum(vals)
    g, h, d = (v / total for v in vals)
    return Fractions(gpu=g, host=h, disk=d)


def _extract(modes, mode_vars, token_vars, ctx, z, kv_groups, result: SolveResult) -> MipSolution:
    _val = result.value
    tokens = {key: tuple(_val(v) for v in vs) for key, vs in token_vars.items()}
    info = {i: (round(_val(n)), w, kv, pt) for i, (n, w, kv, pt) in mode_vars.items()}
    policies: list[LayerPolicy] = []
    counts = []
    operating = {}
    lp_prefill = 0.0
    for i, md in enumerate(modes):
        n, (wg, wh, wd), (kg, kh, kd), pt = info[i]
        lp_prefill += _val(pt)
        if n == 0:
            continue
        counts.append((md.name, n))
        weights = Fractions() if wg is None else _fractions([_val(wg), _val(wh), _val(wd)], n)
        splits = []
        for k in range(len(ctx)):
            x, r, cc = tokens[(i, k)]
            acc = operating.setdefault(k, [0.0, 0, 0.0, 0])
            if r > 0:
                acc[0] += r * KTOK
                acc[1] += n
            if cc > 0:
                acc[2] += cc * KTOK
                acc[3] += n
            total = x + r + cc
            splits.append(TokenSplit() if total <= 1e-9 else TokenSplit(transfer=x / total, recompute=r / total,
                                                                           cpu=cc / total))
        if kg is None:
            kvs = [Fractions()] * n
        elif kv_groups:
            # Spread the integer head groups over the mode's layers as evenly as possible.
            groups = round(_val(kg) * kv_groups)
            base, extra = divmod(groups, n)
            off_share = [_val(kh), _val(kd)]
            off_total = sum(off_share) or 1.0
            kvs = []
            for j in range(n):
                gpu_share = (base + (j < extra)) / kv_groups
                rest = 1.0 - gpu_share
                kvs.append(Fractions(gpu=gpu_share, host=rest * off_share[0] / off_total,
                                     disk=rest * off_share[1] / off_total))
        else:
            kvs = [_fractions([_val(kg), _val(kh), _val(kd)], n)] * n
        made: dict[int, LayerPolicy] = {}  # one object per distinct share: evaluation groups layers by identity
        for kvf in kvs:
            if id(kvf) not in made:
                made[id(kvf)] = LayerPolicy(weights=weights, kv=kvf, activations_on_host=md.act, splits=tuple(splits))
            policies.append(made[id(kvf)])
    points = {k: (a[0] / a[1] if a[1] else ctx[k], a[2] / a[3] if a[3] else ctx[k]) for k, a in operating.items()}
    return MipSolution(result=result, policies=tuple(policies), head_on_gpu=_val(z) > 0.5,
                       mode_counts=tuple(counts), lp_estimate_s=result.objective, lp_prefill_s=lp_prefill,
                       operating=points)
