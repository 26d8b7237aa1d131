"""Hardware profiles: GPUs, hosts, links, disks and GPU interconnects as YAML with units and sources.

The public API: :func:`load_system`, :func:`list_systems`, :func:`load_part`,
:func:`list_parts`, :func:`parse_quantity`, and the types in :mod:`hwprofiles.types`.
"""

from hwprofiles.errors import ProfileError
from hwprofiles.loader import (
    SCHEMA_DIMENSIONS,
    apply_overrides,
    list_parts,
    list_systems,
    load_curves,
    load_part,
    load_system,
    parse_curves,
    parse_part,
)
from hwprofiles.types import (Curve, CurveSet, Disk, Gpu, Host, Interconnect, Link, OpClass, Provenance, Source,
                              System)
from hwprofiles.units import Dimension, format_bytes, format_quantity, parse_quantity

__all__ = [
    "SCHEMA_DIMENSIONS", "Curve", "CurveSet", "Dimension", "Disk", "Gpu", "Host", "Interconnect", "Link", "OpClass", "ProfileError",
    "Provenance", "Source", "System", "apply_overrides", "format_bytes", "format_quantity",
    "list_parts", "list_systems", "load_curves", "load_part", "load_system", "parse_curves",
    "parse_part", "parse_quantity",
]
