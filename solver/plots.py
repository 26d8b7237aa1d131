"""Plots of sweeps (matplotlib, imported lazily: planning never needs it)."""

from __future__ import annotations

from pathlib import Path

from solver.errors import PlanError


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlanError("plots need matplotlib: pip install matplotlib") from None
    return plt


def sweep_lines(df, x: str, path: str | Path, *, y: str = "tokens_per_s", title: str = "") -> Path:
    """One line per (model, hw, prompt, max_batch) of ``y`` against the varied field ``x``.

    ``x`` is a varied field such as ``link.h2d``; its SI values (column ``<x>_si``) set the axis.
    """
    plt = _plt()
    xcol = f"{x}_si" if f"{x}_si" in df.columns else x
    if xcol not in df.columns:
        raise PlanError(f"the sweep has no column {x!r} to plot against; varied fields: "
                        f"{[c[:-3] for c in df.columns if c.endswith('_si')]}")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ok = df[df["status"].isin(["optimal", "feasible"])]
    for keys, part in ok.groupby(["model", "hw", "prompt", "max_batch"]):
        part = part.sort_values(xcol)
        scale = 1e9 if x.endswith(("h2d", "d2h", "bandwidth")) else 1.0
        ax.plot(part[xcol] / scale, part[y], marker="o", label=f"{keys[0]} {keys[1]} p{keys[2]} b{keys[3]}")
    ax.set_xlabel(f"{x} ({'GB/s' if x.endswith(('h2d', 'd2h', 'bandwidth')) else 'SI units'})")
    ax.set_ylabel(y.replace("_", " ").replace("tokens per s", "tokens/s"))
    ax.set_title(title or f"{y} vs {x} (predicted)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
