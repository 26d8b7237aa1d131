"""Plots of sweeps (matplotlib, imported lazily: planning never needs it)."""

from __future__ import annotations

from pathlib import Path

from solver.errors import PlanError


def _plt():
    try:  # no backend is forced: Jupyter keeps its inline backend, headless runs fall back to Agg
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlanError("plots need matplotlib: pip install matplotlib") from None
    return plt


def sweep_lines(df, x: str, path: str | Path, *, y: str | None = None, title: str = "") -> Path:
    """One line per point group of ``y`` against the varied field ``x``: (model, hw, prompt, max_batch)
    for a KV sweep, (model, hw, batch) for an embeddings sweep, (model, hw, seq_len, micro_batch) for
    a training sweep.

    ``x`` is a varied field such as ``link.h2d``; its SI values (column ``<x>_si``) set the axis.
    ``y`` defaults to the family's throughput (``tokens_per_s``, ``samples_per_s`` for embeddings).
    """
    family = df["family"].iloc[0] if "family" in df.columns and len(df) else "kv"
    embeddings = family == "embeddings"
    y = y or ("samples_per_s" if embeddings else "tokens_per_s")
    groups = {"embeddings": ["model", "hw", "batch"], "training": ["model", "hw", "seq_len", "micro_batch"]}.get(
        family, ["model", "hw", "prompt", "max_batch"])
    plt = _plt()
    xcol = f"{x}_si" if f"{x}_si" in df.columns else x
    if xcol not in df.columns:
        raise PlanError(f"the sweep has no column {x!r} to plot against; varied fields: "
                        f"{[c[:-3] for c in df.columns if c.endswith('_si')]}")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ok = df[df["status"].isin(["optimal", "feasible"])]
    for keys, part in ok.groupby(groups):
        part = part.sort_values(xcol)
        scale = 1e9 if x.endswith(("h2d", "d2h", "bandwidth")) else 1.0
        label = {"embeddings": f"{keys[0]} {keys[1]} b{keys[2]}",
                 "training": f"{keys[0]} {keys[1]} s{keys[2]} mb{keys[3]}"}.get(
            family, f"{keys[0]} {keys[1]} p{keys[2]} b{keys[3]}")
        ax.plot(part[xcol] / scale, part[y], marker="o", label=label)
    ax.set_xlabel(f"{x} ({'GB/s' if x.endswith(('h2d', 'd2h', 'bandwidth')) else 'SI units'})")
    ax.set_ylabel(y.replace("_", " ").replace("tokens per s", "tokens/s").replace("samples per s", "samples/s"))
    ax.set_title(title or f"{y} vs {x} (predicted)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


RESOURCE_COLORS = {"gpu": "#4C72B0", "h2d": "#DD8452", "d2h": "#55A868", "disk": "#8172B3", "cpu": "#C44E52",
                   "cpu_chain": "#937860"}


def layer_breakdown(plan, ax=None):
    """Each layer's decode-step time per resource (the layer takes the longest; its binding resource)."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    resources = [r for r in RESOURCE_COLORS if any(e["decode_resource_s"].get(r, 0) > 0 for e in plan.layers)]
    width = 0.8 / max(len(resources), 1)
    for j, r in enumerate(resources):
        xs = [e["index"] + (j - len(resources) / 2) * width for e in plan.layers]
        ax.bar(xs, [e["decode_resource_s"][r] * 1e3 for e in plan.layers], width=width, color=RESOURCE_COLORS[r],
               label=r)
    ax.plot([e["index"] for e in plan.layers], [e["step_time_s"] * 1e3 for e in plan.layers], "k.-", lw=1,
            label="layer step time")
    ax.set_xlabel("layer")
    ax.set_ylabel("ms per decode step")
    ax.set_title(f"{plan.workload['model']} on {plan.hardware['system']}: time by resource per layer (mean step)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=len(resources) + 1)
    return ax


def gantt(timeline, ax=None, *, title: str = ""):
    """The simulated schedule: one row per resource, one bar per task."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 2.8))
    rows = ["gpu", "h2d", "d2h", "cpu", "disk"]
    used = [r for r in rows if any(t.resource == r for t in timeline.tasks)]
    for y, r in enumerate(used):
        spans = [(t.start_s * 1e3, (t.end_s - t.start_s) * 1e3) for t in timeline.tasks if t.resource == r and t.end_s > t.start_s]
        ax.broken_barh(spans, (y - 0.35, 0.7), facecolors=RESOURCE_COLORS[r], edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(used)), used)
    ax.set_xlabel("ms")
    ax.set_title(title or f"simulated timeline, makespan {timeline.makespan_s * 1e3:.2f} ms", fontsize=9)
    return ax


def roofline_chart(wl, system, ax=None):
    """A decode step's ops on the GPU's roofline: achieved FLOP/s against arithmetic intensity."""
    import numpy as np

    from costmodel import Processor, roofline_time_s
    from costmodel.kv import attention_op, dense_ops

    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.2))
    gpu = Processor.gpu(system.gpu)
    ops = [(op.name, op.flop, op.bytes, op.op_class) for op in dense_ops(wl.model, wl.batch, wl.dtype_bytes)]
    from hwprofiles import OpClass

    f, b = attention_op(wl.model, wl.batch, 1, wl.prompt_len, wl.dtype_bytes, causal=False)
    ops.append(("attention", float(f), float(b), OpClass.ATTENTION))
    xs = np.logspace(-1, 4, 200)
    ax.loglog(xs, np.minimum(gpu.peak_flop_per_s, xs * gpu.memory_bytes_per_s) / 1e12, "k-", lw=1.5,
              label="peak roofs")
    for name, flop, nbytes, cls in ops:
        t = float(roofline_time_s(flop, nbytes, cls, gpu, launches=0))
        ax.loglog(flop / nbytes, flop / t / 1e12, "o")
        ax.annotate(name, (flop / nbytes, flop / t / 1e12), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(gpu.ridge_flop_per_byte, color="grey", ls=":", lw=1, label=f"ridge {gpu.ridge_flop_per_byte:.0f} FLOP/B")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("TFLOP/s (predicted, with efficiency curves)")
    ax.set_title(f"decode ops of {wl.model.name}, batch {wl.batch}, context {wl.prompt_len} on {system.gpu.name}",
                 fontsize=9)
    ax.legend(fontsize=7)
    return ax


STRATEGIES = ("resident", "transfer", "recompute", "cpu")


def dominant_strategy(row) -> str:
    """Which way a plan mostly serves its KV: kept on the GPU, or (of the offloaded tokens) the
    largest of transferred, recomputed and attended on the CPU."""
    if row.get("status") not in ("optimal", "feasible"):
        return "infeasible"
    if row["kv_gpu_share"] >= 0.5:
        return "resident"
    shares = {s: row[f"offloaded_{s}_share"] for s in ("transfer", "recompute", "cpu")}
    return max(shares, key=shares.get)


def strategy_map(df, x: str, y: str, ax=None, *, title: str = ""):
    """Heat map of the dominant KV strategy over two sweep axes (e.g. link.h2d_si and prompt)."""
    import numpy as np

    plt = _plt()
    from matplotlib.colors import ListedColormap

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    labels = list(STRATEGIES) + ["infeasible"]
    xs, ys = sorted(df[x].unique()), sorted(df[y].unique())
    grid = np.full((len(ys), len(xs)), len(labels) - 1)
    for _, row in df.iterrows():
        grid[ys.index(row[y]), xs.index(row[x])] = labels.index(dominant_strategy(row))
    cmap = ListedColormap(["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#BBBBBB"])
    ax.imshow(grid, origin="lower", cmap=cmap, vmin=0, vmax=len(labels) - 1, aspect="auto")
    scale = 1e9 if x.endswith("_si") else 1
    ax.set_xticks(range(len(xs)), [f"{v / scale:g}" for v in xs], fontsize=7)
    ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
    ax.set_xlabel(x.replace("_si", " (GB/s)") if scale != 1 else x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(labels))]
    ax.legend(handles, labels, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def share_map(df, x: str, y: str, column: str, ax=None, *, title: str = ""):
    """Heat map of one share column (0..1), e.g. offloaded_recompute_share, over two sweep axes."""
    import numpy as np

    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    xs, ys = sorted(df[x].unique()), sorted(df[y].unique())
    grid = np.full((len(ys), len(xs)), np.nan)
    for _, row in df.iterrows():
        if row.get("status") in ("optimal", "feasible"):
            grid[ys.index(row[y]), xs.index(row[x])] = row[column]
    im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    scale = 1e9 if x.endswith("_si") else 1
    ax.set_xticks(range(len(xs)), [f"{v / scale:g}" for v in xs], fontsize=7)
    ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
    ax.set_xlabel(x.replace("_si", " (GB/s)") if scale != 1 else x)
    ax.set_ylabel(y)
    ax.set_title(title or column, fontsize=9)
    plt.colorbar(im, ax=ax, fraction=0.046)
    return ax
