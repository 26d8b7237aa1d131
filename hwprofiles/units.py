"""The one parser of quantities with units, and the display helpers.

Inside Python every quantity is a float in SI base units (bytes, seconds, FLOP,
bytes/s, FLOP/s, and plain ratios). In YAML and on the command line a quantity
is a string with its unit: ``"80 GiB"``, ``"25 GB/s"``, ``"989 TFLOP/s"``,
``"8 us"``, ``"70 %"``. A bare number is an error, so a forgotten unit can never
be read as bytes when seconds were meant.
"""

from __future__ import annotations

import enum
import math
import re

from hwprofiles.errors import ProfileError


class Dimension(enum.StrEnum):
    BYTES = "bytes"
    BANDWIDTH = "bytes/s"
    COMPUTE = "FLOP/s"
    FLOP = "FLOP"
    TIME = "s"
    RATIO = "ratio"


_DECIMAL = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def _table() -> dict[str, tuple[Dimension, float]]:
    units: dict[str, tuple[Dimension, float]] = {}
    for prefix, factor in {**_DECIMAL, **_BINARY}.items():
        units[f"{prefix}B"] = (Dimension.BYTES, factor)
        units[f"{prefix}B/s"] = (Dimension.BANDWIDTH, factor)
    for prefix, factor in _DECIMAL.items():
        units[f"{prefix}FLOP/s"] = (Dimension.COMPUTE, factor)
        units[f"{prefix}FLOP"] = (Dimension.FLOP, factor)
    units.update(
        {
            "s": (Dimension.TIME, 1.0),
            "ms": (Dimension.TIME, 1e-3),
            "us": (Dimension.TIME, 1e-6),
            "ns": (Dimension.TIME, 1e-9),
            "%": (Dimension.RATIO, 1e-2),
        }
    )
    return units


UNITS = _table()
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z%/]+)\s*$")


def parse_quantity(
    text: object,
    dimension: Dimension,
    *,
    field: str,
    file: str = "",
    allow_zero: bool = False,
) -> float:
    """Parse ``"<number> <unit>"`` into SI base units.

    Parameters
    ----------
    text : str
        The quantity as written, e.g. ``"25 GB/s"``.
    dimension : Dimension
        What the field measures; a unit of another dimension is an error.
    field : str
        The field's dotted name, for the error message.
    file : str
        The file the value came from, for the error message.
    allow_zero : bool
        Whether zero is a valid value (negative values never are).

    Returns
    -------
    float
        The value in SI base units (bytes, bytes/s, FLOP/s, s, or a ratio).

    Examples
    --------
    >>> parse_quantity("25 GB/s", Dimension.BANDWIDTH, field="link.h2d")
    25000000000.0
    >>> parse_quantity("1 GiB", Dimension.BYTES, field="gpu.memory")
    1073741824.0
    >>> parse_quantity("8 us", Dimension.TIME, field="link.latency")
    8e-06
    """
    where = f" ({file})" if file else ""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ProfileError(
            f"{field} must be a quantity string with a unit such as '{_example(dimension)}', "
            f"got {text!r}{where}"
        )
    if isinstance(text, (int, float)) or re.fullmatch(r"\s*[-+]?[\d.eE+-]+\s*", text):
        raise ProfileError(
            f"{field} needs a unit (a bare number is ambiguous), e.g. '{_example(dimension)}', "
            f"got {text!r}{where}"
        )
    match = _QUANTITY.match(text)
    if not match:
        raise ProfileError(
            f"{field} must look like '<number> <unit>', e.g. '{_example(dimension)}', "
            f"got {text!r}{where}"
        )
    number, unit = float(match.group(1)), match.group(2)
    if unit not in UNITS:
        raise ProfileError(
            f"{field} has unknown unit {unit!r} in {text!r}; units for {dimension.value} are "
            f"{', '.join(u for u, (d, _) in UNITS.items() if d is dimension)}{where}"
        )
    unit_dimension, factor = UNITS[unit]
    if unit_dimension is not dimension:
        raise ProfileError(
            f"{field} must be in {dimension.value}, got {text!r} which is "
            f"{unit_dimension.value}{where}"
        )
    value = number * factor
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = "non-negative" if allow_zero else "positive"
        raise ProfileError(f"{field} must be {rule}, got {text!r}{where}")
    return value


def _example(dimension: Dimension) -> str:
    return {
        Dimension.BYTES: "80 GiB",
        Dimension.BANDWIDTH: "25 GB/s",
        Dimension.COMPUTE: "312 TFLOP/s",
        Dimension.FLOP: "1 GFLOP",
        Dimension.TIME: "10 us",
        Dimension.RATIO: "70 %",
    }[dimension]


def format_bytes(value_bytes: float) -> str:
    """Human form of a byte count in binary units (display only).

    >>> format_bytes(3 * 2**30)
    '3.00 GiB'
    """
    for unit, factor in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if abs(value_bytes) >= factor:
            return f"{value_bytes / factor:.2f} {unit}"
    return f"{value_bytes:.0f} B"


def format_quantity(value: float, dimension: Dimension) -> str:
    """Human form of an SI value with decimal prefixes (display only).

    >>> format_quantity(2.5e10, Dimension.BANDWIDTH)
    '25 GB/s'
    """
    if dimension is Dimension.BYTES:
        return format_bytes(value)
    if dimension is Dimension.RATIO:
        return f"{value * 100:.3g} %"
    if dimension is Dimension.TIME:
        for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if value >= factor:
                return f"{value / factor:.3g} {unit}"
        return f"{value / 1e-9:.3g} ns"
    base = {Dimension.BANDWIDTH: "B/s", Dimension.COMPUTE: "FLOP/s", Dimension.FLOP: "FLOP"}[dimension]
    for prefix in ("P", "T", "G", "M", "K"):
        if value >= _DECIMAL[prefix]:
            return f"{value / _DECIMAL[prefix]:.4g} {prefix}{base}"
    return f"{value:.4g} {base}"
