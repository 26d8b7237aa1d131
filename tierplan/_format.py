"""Text formatting shared by the command-line modules."""

from __future__ import annotations


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
