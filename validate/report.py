"""Predicted-vs-measured reports: text tables, JSON on disk, and a plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


ORDER_MARGIN = 0.10  # stated in every report: predictions closer than this are "the same time"


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def memory_line(memory: dict) -> str:
    """Predicted (with its breakdown) vs measured peak device memory of a replay."""
    pred = memory["predicted_gpu_bytes"]
    parts = ", ".join(f"{k} {_gib(v)}" for k, v in memory.get("predicted_gpu_breakdown", {}).items() if v)
    peak = memory.get("measured_peak_gpu_bytes")
    measured = (f"measured {_gib(peak)} ({memory['error_pct']:+.1f} %)" if peak
                else f"measured: {memory.get('measured', 'not measured')}")
    return f"peak GPU memory of the slice: predicted {_gib(pred)} ({parts}); {measured}"


def replay_table(result: dict) -> str:
    rows = [f"{'layer':>5s}  {'predicted ms':>12s}  {'measured ms':>11s}  {'error %':>7s}  binding"]
    for r in result["layers"]:
        rows.append(f"{r['index']:5d}  {r['predicted_s'] * 1e3:12.2f}  {r['measured_s'] * 1e3:11.2f}  "
                    f"{r['error_pct']:+7.1f}  {r.get('binding', '')}")
    sl = result["slice"]
    rows.append(f"{'total':>5s}  {result['predicted_s'] * 1e3:12.2f}  {result['measured_s'] * 1e3:11.2f}  "
                f"{result['error_pct']:+7.1f}")
    rows.append(f"slice: {len(sl['layers'])} of {sl['of_layers']} layers, {len(sl['steps'])} of {sl['of_steps']} "
                f"decode steps ({sl['representative']}; {sl['note']}); device {result['device_name']}, "
                f"torch {result['torch']}, {result['dtype']}, attention {result.get('attention_kernel', '?')}")
    link = result.get("link")
    if link and "h2d_bytes_per_s" in link:
        rows.append(f"link: {link['kind']}, {link['h2d_bytes_per_s'] / 1e9:.3g} GB/s H2D, "
                    f"{link['d2h_bytes_per_s'] / 1e9:.3g} GB/s D2H")
    elif link:
        rows.append(f"link: {link['kind']}")
    if "memory" in result:
        rows.append(memory_line(result["memory"]))
    for w in result.get("warnings", []):
        rows.append(f"warning: {w}")
    return "\n".join(rows)


def _relation(a: float, b: float, margin: float) -> int:
    """1 if ``a`` is more than ``margin`` above ``b``, -1 if more than ``margin`` below, else 0."""
    if a > b * (1 + margin):
        return 1
    if b > a * (1 + margin):
        return -1
    return 0


def ordering(cases: list[dict], margin: float = ORDER_MARGIN) -> dict:
    """Whether measured times order the cases of each model as predicted.

    Every pair of replayed cases of one model with different decisions counts once (cases with
    the same layer policies, e.g. a plan that is the all-GPU baseline, are one case: their
    difference is noise). A pair whose predictions differ by more than ``margin`` agrees when the
    measured times are in the same order. A pair predicted within ``margin`` (a near tie, whose
    order the prediction does not claim) agrees when the measured ratio is within ``margin`` of
    the predicted ratio: a mis-costed link predicts a tie where the measurement shows a gap.

    Examples
    --------
    >>> cs = [{"case": n, "model": "m", "status": "replayed", "predicted_s": p, "measured_s": t}
    ...       for n, p, t in (("a", 1.0, 1.0), ("b", 2.0, 1.9), ("c", 1.02, 3.0), ("d", 1.095, 1.11))]
    >>> o = ordering(cs)  # a-d: predicted 0.91x, measured 0.90x: a near tie, measured as predicted
    >>> o["agree"], o["pairs"], o["predicted_apart"], o["predicted_ties"]
    (3, 6, {'pairs': 3, 'agree': 2}, {'pairs': 3, 'agree': 1})
    """
    done = [c for c in cases if c.get("status") == "replayed"]
    distinct: dict[tuple, dict] = {}
    for c in done:
        distinct.setdefault((c.get("model"), c.get("policy_digest") or c["case"]), c)
    by_model: dict[str, list[dict]] = {}
    for (model, _), c in distinct.items():
        by_model.setdefault(model, []).append(c)
    apart = {"pairs": 0, "agree": 0}
    ties = {"pairs": 0, "agree": 0}
    disagreements = []
    for model, cs in by_model.items():
        for i, a in enumerate(cs):
            for b in cs[i + 1:]:
                p = _relation(a["predicted_s"], b["predicted_s"], margin)
                if p:
                    ok = (a["measured_s"] - b["measured_s"]) * p > 0
                    counter = apart
                else:
                    ratio_p = a["predicted_s"] / b["predicted_s"]
                    ok = _relation(a["measured_s"], b["measured_s"] * ratio_p, margin) == 0
                    counter = ties
                counter["pairs"] += 1
                counter["agree"] += ok
                if not ok:
                    disagreements.append({
                        "model": model, "a": a["case"], "b": b["case"],
                        "predicted_ratio": a["predicted_s"] / b["predicted_s"],
                        "measured_ratio": a["measured_s"] / b["measured_s"],
                        "why": ("predicted apart, measured in the other order" if p else
                                f"predicted within {margin * 100:.0f} %, measured more than {margin * 100:.0f} % "
                                f"from the predicted ratio")})
    return {"margin_pct": 100 * margin, "pairs": apart["pairs"] + ties["pairs"], "agree": apart["agree"] + ties["agree"],
            "predicted_apart": apart, "predicted_ties": ties, "disagreements": disagreements}


def ordering_line(order: dict) -> str:
    """``ordering: k of n pairs agree (...)``, the suite's one-line verdict on the order."""
    m = order["margin_pct"]
    a, t = order["predicted_apart"], order["predicted_ties"]
    line = (f"ordering: {order['agree']} of {order['pairs']} pairs agree ({a['agree']} of {a['pairs']} predicted more "
            f"than {m:.0f} % apart are measured in that order; {t['agree']} of {t['pairs']} predicted within "
            f"{m:.0f} % are measured within {m:.0f} % of the predicted ratio)")
    for d in order["disagreements"]:
        line += (f"\n  disagree: {d['a']} / {d['b']}: predicted {d['predicted_ratio']:.2f}x, measured "
                 f"{d['measured_ratio']:.2f}x ({d['why']})")
    return line


def suite_table(cases: list[dict], summary_: dict | None = None) -> str:
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
    order = (summary_ or {}).get("ordering") or ordering(cases)
    if order["pairs"]:
        lines.append(ordering_line(order))
    warned = sorted({w for c in cases for w in c.get("warnings", [])})
    lines += [f"warning: {w}" for w in warned]
    return "\n".join(lines)


def summary(cases: list[dict], margin: float = ORDER_MARGIN) -> dict:
    errors = [abs(c["error_pct"]) for c in cases if c.get("status") == "replayed"]
    return {"cases": len(errors), "mean_abs_error_pct": statistics.mean(errors) if errors else None,
            "max_abs_error_pct": max(errors) if errors else None, "ordering": ordering(cases, margin)}


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
