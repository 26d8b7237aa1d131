"""Predicted-vs-measured reports: text tables, JSON on disk, and a plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def replay_table(result: dict) -> str:
    rows = [f"{'layer':>5s}  {'predicted ms':>12s}  {'measured ms':>11s}  {'error %':>7s}"]
    for r in result["layers"]:
        rows.append(f"{r['index']:5d}  {r['predicted_s'] * 1e3:12.2f}  {r['measured_s'] * 1e3:11.2f}  "
                    f"{r['error_pct']:+7.1f}")
    sl = result["slice"]
    rows.append(f"{'total':>5s}  {result['predicted_s'] * 1e3:12.2f}  {result['measured_s'] * 1e3:11.2f}  "
                f"{result['error_pct']:+7.1f}")
    rows.append(f"slice: {len(sl['layers'])} of {sl['of_layers']} layers, {len(sl['steps'])} of {sl['of_steps']} "
                f"decode steps ({sl['representative']}; {sl['note']}); device {result['device_name']}, "
                f"torch {result['torch']}, {result['dtype']}")
    if "peak_gpu_bytes" in result and "predicted_gpu_bytes" in result:
        rows.append(f"peak GPU memory: measured {result['peak_gpu_bytes'] / 2**30:.2f} GiB for the slice")
    return "\n".join(rows)


def suite_table(cases: list[dict]) -> str:
    lines = [f"{'case':34s} {'predicted ms':>12s} {'measured ms':>11s} {'error %':>8s}"]
    errors = []
    for c in cases:
        if c.get("status") != "replayed":
            lines.append(f"{c['case']:34s} {c.get('status', ''):>12s}  {c.get('reason', '')[:80]}")
            continue
        errors.append(abs(c["error_pct"]))
        lines.append(f"{c['case']:34s} {c['predicted_s'] * 1e3:12.2f} {c['measured_s'] * 1e3:11.2f} "
                     f"{c['error_pct']:+8.1f}")
    if errors:
        lines.append(f"mean |error| {statistics.mean(errors):.1f} %, max |error| {max(errors):.1f} % "
                     f"over {len(errors)} cases")
    return "\n".join(lines)


def summary(cases: list[dict]) -> dict:
    errors = [abs(c["error_pct"]) for c in cases if c.get("status") == "replayed"]
    return {"cases": len(errors), "mean_abs_error_pct": statistics.mean(errors) if errors else None,
            "max_abs_error_pct": max(errors) if errors else None}


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def plot(result_or_cases, path: str | Path, title: str) -> Path | None:
    """Predicted vs measured bar chart (per layer of a replay, or per case of a suite)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional; the JSON and the table carry the numbers
        return None
    if isinstance(result_or_cases, dict):
        labels = [str(r["index"]) for r in result_or_cases["layers"]]
        pred = [r["predicted_s"] * 1e3 for r in result_or_cases["layers"]]
        meas = [r["measured_s"] * 1e3 for r in result_or_cases["layers"]]
        xlabel = "layer"
    else:
        done = [c for c in result_or_cases if c.get("status") == "replayed"]
        labels = [c["case"] for c in done]
        pred = [c["predicted_s"] * 1e3 for c in done]
        meas = [c["measured_s"] * 1e3 for c in done]
        xlabel = "case"
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels) + 2), 4))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], pred, width=0.4, label="predicted")
    ax.bar([i + 0.2 for i in x], meas, width=0.4, label="measured")
    ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("time (ms)")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
