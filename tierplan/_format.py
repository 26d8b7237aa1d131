"""Text formatting shared by the command-line modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def eval_record(label: str, kind: str, system: Any, cost: Any, *, workload: dict, memory: dict, units: dict,
                predicted: Callable[[Any], dict]) -> dict:
    """The record ``tierplan evaluate FAMILY --policy`` prints for the embeddings and training families: the
    policy, the plan kind, feasible or not, the hardware, workload, memory, capacity and per-unit entries
    (``units``), then ``predicted(cost)`` if it fits, else the shortfall's text and bytes per tier."""
    from solver.plan import shortfall_bytes

    out = {"policy": label, "kind": kind, "status": "feasible" if cost.feasible else "infeasible",
           "hardware": system.name, "workload": workload, "memory": memory, "capacity": dict(cost.capacity), **units}
    if cost.feasible:
        out["predicted"] = predicted(cost)
    else:
        out["reason"] = cost.explain_shortfall()
        out["shortfall_bytes"] = shortfall_bytes(cost.shortfalls())
    return out
