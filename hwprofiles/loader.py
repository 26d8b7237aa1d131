"""Load hardware profiles from YAML: parts (gpu, host, link, disk), curve sets and systems.

A system file names its parts by bundled name, by a path relative to itself (``*.yaml``), or
defines them inline as mappings. Overrides such as ``link.h2d=12GB/s`` or ``link=pcie5-x16``
replace one number or one part, so a what-if study changes exactly what it says.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hwprofiles.errors import ProfileError
from hwprofiles.safe_io import PROFILE_MAX_BYTES, load_yaml, read_text, sha256_text
from hwprofiles.types import (
    Curve,
    CurveSet,
    Disk,
    Gpu,
    Host,
    Interconnect,
    Link,
    OpClass,
    Part,
    Provenance,
    Source,
    System,
)
from hwprofiles.units import UNITS, Dimension, format_bytes, parse_quantity

DATA_DIR = Path(__file__).parent / "data"
CURVES_DIR = Path(__file__).parent / "curves"

PART_DIRS = {"gpu": "gpus", "host": "hosts", "link": "links", "disk": "disks", "interconnect": "interconnects",
             "system": "systems"}
# A system's parts, in file order; disk and interconnect are optional.
SYSTEM_PARTS = ("gpu", "host", "link", "disk", "interconnect")

# yaml key -> (dataclass field, dimension) for each part kind; every key is required but those in DEFAULTS,
# CONSTANT_DEFAULTS and UNSET_OK.
SCHEMA: dict[str, dict[str, tuple[str, Dimension]]] = {
    "gpu": {
        "memory": ("memory_bytes", Dimension.BYTES),
        "memory_bandwidth": ("memory_bytes_per_s", Dimension.BANDWIDTH),
        "flops_fp16": ("fp16_flop_per_s", Dimension.COMPUTE),
        "flops_fp32": ("fp32_flop_per_s", Dimension.COMPUTE),
        "flops_tf32": ("tf32_flop_per_s", Dimension.COMPUTE),
        "reserved_memory": ("reserved_bytes", Dimension.BYTES),
        "launch_overhead": ("launch_overhead_s", Dimension.TIME),
    },
    "host": {
        "memory": ("memory_bytes", Dimension.BYTES),
        "memory_bandwidth": ("memory_bytes_per_s", Dimension.BANDWIDTH),
        "flops_fp32": ("fp32_flop_per_s", Dimension.COMPUTE),
        "reserved_memory": ("reserved_bytes", Dimension.BYTES),
        "node_share": ("node_share", Dimension.RATIO),
        "optimizer_bandwidth": ("optimizer_bytes_per_s", Dimension.BANDWIDTH),
    },
    "link": {
        "h2d": ("h2d_bytes_per_s", Dimension.BANDWIDTH),
        "d2h": ("d2h_bytes_per_s", Dimension.BANDWIDTH),
        "latency": ("latency_s", Dimension.TIME),
        "pageable_factor": ("pageable_factor", Dimension.RATIO),
        "bidirectional_factor": ("bidirectional_factor", Dimension.RATIO),
        "uplink_share": ("uplink_share", Dimension.RATIO),
    },
    "disk": {
        "capacity": ("capacity_bytes", Dimension.BYTES),
        "read_bandwidth": ("read_bytes_per_s", Dimension.BANDWIDTH),
        "write_bandwidth": ("write_bytes_per_s", Dimension.BANDWIDTH),
        "latency": ("latency_s", Dimension.TIME),
    },
    "interconnect": {
        "bus_bandwidth": ("bus_bytes_per_s", Dimension.BANDWIDTH),
    },
}
# Optional keys: (part kind, key) -> the key whose value (and source) it takes when absent, and why.
# gpu.flops_tf32 is optional so that GPU files written before it existed (measured profiles, systems with an
# inline GPU, test fixtures) still load: without it a GPU is taken to have no TF32 tensor cores, so an
# fp32 GEMM runs at its fp32 peak, which is the rate a GPU without TF32 reaches and a lower bound on one with it.
# Every bundled GPU file states it (tests/hwprofiles/test_loader.py checks).
DEFAULTS: dict[tuple[str, str], tuple[str, str]] = {
    ("gpu", "flops_tf32"): ("flops_fp32", "flops_tf32 not given: taken equal to flops_fp32 (no TF32 tensor-core "
                                          "rate stated)"),
}
# Optional keys with a fixed value when absent: (part kind, key) -> (value, why).
# host.node_share: files written before it existed describe a whole host; link.uplink_share: a link not
# shared with other GPUs.
CONSTANT_DEFAULTS: dict[tuple[str, str], tuple[float, str]] = {
    ("host", "node_share"): (1.0, "node_share not given: the profile is the whole host"),
    ("link", "uplink_share"): (1.0, "uplink_share not given: each GPU has this link to the host to itself"),
}
# Optional keys that stay unset (the dataclass field's None) when absent: the figure was not measured,
# and the cost model says what it uses instead. host.optimizer_bandwidth: `tierplan profile` measures
# it; without it a CPU optimizer update runs on the host's memory roof (costmodel.training_units).
UNSET_OK: dict[tuple[str, str], str] = {
    ("host", "optimizer_bandwidth"): "not measured: a CPU optimizer update runs on the memory roof and its efficiency "
                                     "curve (`tierplan profile` measures an AdamW step)",
}
# "part.field" -> dimension, for overrides and sweeps given on the command line.
SCHEMA_DIMENSIONS: dict[str, Dimension] = {
    f"{kind}.{key}": dim for kind, fields in SCHEMA.items() for key, (_, dim) in fields.items()
}
# Quantities that may be zero (a zero latency is a valid what-if; zero capacity is not).
ZERO_OK = {"reserved_memory", "launch_overhead", "latency"}
RATIO_MAX = {"pageable_factor", "bidirectional_factor", "node_share", "uplink_share"}
PART_CLASSES: dict[str, type[Part]] = {"gpu": Gpu, "host": Host, "link": Link, "disk": Disk,
                                       "interconnect": Interconnect}


def _read_yaml(path: Path) -> dict[str, Any]:
    """Parse a profile file (bounded: see :mod:`hwprofiles.safe_io`); each caller gets its own copy."""
    return _read_yaml_hashed(path)[0]


def _read_yaml_hashed(path: Path) -> tuple[dict[str, Any], str]:
    """A profile file's mapping and the SHA-256 of its bytes. Parsed files are cached by path,
    modification time and size (a sweep reads the same bundled files for every point)."""
    try:
        info = path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
    except OSError:
        stamp = (-1, -1)  # read_text below raises the ProfileError (errors are not cached)
    data, sha = _read_yaml_cached(str(path), stamp)
    return copy.deepcopy(data), sha


@functools.lru_cache(maxsize=256)
def _read_yaml_cached(name: str, _stamp: tuple[int, int]) -> tuple[dict[str, Any], str]:
    text = read_text(name, what="profile file", max_bytes=PROFILE_MAX_BYTES, error=ProfileError)
    return load_yaml(text, file=name, error=ProfileError, what="a profile"), sha256_text(text)


def list_parts(kind: str) -> list[str]:
    """Names of the bundled parts of one kind (``gpu``, ``host``, ``link``, ``disk``, ``system``)."""
    if kind not in PART_DIRS:
        raise ProfileError(f"part kind must be one of {sorted(PART_DIRS)}, got {kind!r}")
    return sorted(p.stem for p in (DATA_DIR / PART_DIRS[kind]).glob("*.yaml"))


def list_systems() -> list[str]:
    """Names of the bundled systems, usable as ``--hw NAME``."""
    return list_parts("system")


_BUNDLED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _is_bundled(kind: str, name: str) -> bool:
    # A name, never a path: "../x" must not reach outside the bundled folder.
    return bool(_BUNDLED_NAME.fullmatch(name)) and (DATA_DIR / PART_DIRS[kind] / f"{name}.yaml").is_file()


def _bundled_path(kind: str, name: str) -> Path:
    path = DATA_DIR / PART_DIRS[kind] / f"{name}.yaml"
    if not _is_bundled(kind, name):
        raise ProfileError(
            f"unknown {kind} {name!r}; bundled {kind}s are: {', '.join(list_parts(kind))}"
        )
    return path


def _provenance(entry: Mapping[str, Any], field: str, file: str) -> Provenance:
    raw = entry.get("source")
    try:
        source = Source(raw)
    except ValueError:
        raise ProfileError(
            f"{field}.source must be one of {[s.value for s in Source]}, got {raw!r} ({file})"
        ) from None
    ref = entry.get("ref")
    if not isinstance(ref, str) or not ref.strip():
        raise ProfileError(f"{field}.ref must cite where the number comes from, got {ref!r} ({file})")
    return Provenance(source=source, ref=ref.strip())


def _quantity(entry: Any, key: str, dimension: Dimension, field: str, file: str) -> tuple[float, Provenance]:
    if not isinstance(entry, Mapping) or "value" not in entry:
        raise ProfileError(
            f"{field} must be a mapping {{value: '<number> <unit>', source: ..., ref: ...}}, "
            f"got {entry!r} ({file})"
        )
    unknown = set(entry) - {"value", "source", "ref"}
    if unknown:
        raise ProfileError(f"{field} has unknown keys {sorted(unknown)} ({file})")
    value = parse_quantity(entry["value"], dimension, field=field, file=file, allow_zero=key in ZERO_OK)
    if key in RATIO_MAX and value > 1.0:
        raise ProfileError(f"{field} must be at most 100 %, got {entry['value']!r} ({file})")
    return value, _provenance(entry, field, file)


def load_curves(name: str, *, field: str = "efficiency", file: str = "") -> CurveSet:
    """Load a bundled efficiency curve set by name."""
    path = CURVES_DIR / f"{name}.yaml"
    if not _BUNDLED_NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in CURVES_DIR.glob("*.yaml")))
        raise ProfileError(f"{field} names unknown curve set {name!r}; known: {known} ({file})")
    return parse_curves(_read_yaml(path), file=str(path))


def parse_curves(data: Mapping[str, Any], *, file: str) -> CurveSet:
    """Build a CurveSet from its YAML mapping (bundled file or inline in a measured profile)."""

    def curve(points: Any, field: str, dimension: Dimension) -> Curve:
        if not isinstance(points, list) or not points:
            raise ProfileError(f"{field} must be a non-empty list of [size, ratio] pairs ({file})")
        sizes, values = [], []
        for i, point in enumerate(points):
            if not isinstance(point, list) or len(point) != 2:
                raise ProfileError(f"{field}[{i}] must be a [size, ratio] pair, got {point!r} ({file})")
            sizes.append(parse_quantity(point[0], dimension, field=f"{field}[{i}]", file=file))
            values.append(parse_quantity(point[1], Dimension.RATIO, field=f"{field}[{i}]", file=file))
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ProfileError(f"{field} sizes must increase strictly, got {[p[0] for p in points]} ({file})")
        if any(v > 1.0 for v in values):
            raise ProfileError(f"{field} ratios must be at most 100 % ({file})")
        # Time = size / (peak * eff(size)) with eff linear in log10(size) must not fall as size grows:
        # on each segment eff may rise at most ln(10) * eff(segment start) per decade.
        for (s0, v0), (s1, v1), p1 in zip(zip(sizes, values), zip(sizes[1:], values[1:]), points[1:]):
            limit = v0 + math.log(10) * v0 * math.log10(s1 / s0)
            if v1 > limit * (1 + 1e-9):
                raise ProfileError(
                    f"{field} rises too fast before {p1[0]!r}: a larger op would take less time; "
                    f"at most {100 * limit:.3g} % is allowed there, got {p1[1]!r} ({file})")
        return Curve(sizes=tuple(sizes), values=tuple(values))

    compute = data.get("compute")
    if not isinstance(compute, Mapping):
        raise ProfileError(f"curves.compute must map op classes to curves ({file})")
    missing = [c.value for c in OpClass if c.value not in compute]
    if missing:
        raise ProfileError(f"curves.compute is missing op classes {missing} ({file})")
    return CurveSet(
        name=str(data.get("name", Path(file).stem)),
        compute=tuple(
            (c, curve(compute[c.value], f"curves.compute.{c.value}", Dimension.FLOP)) for c in OpClass
        ),
        memory=curve(data.get("memory"), "curves.memory", Dimension.BYTES),
        provenance=_provenance(data, "curves", file),
    )


def parse_part(kind: str, data: Mapping[str, Any], *, file: str, prefix: str = "") -> Part:
    """Validate one part mapping and build its dataclass. ``prefix`` names it in errors."""
    prefix = prefix or kind
    if data.get("kind", kind) != kind:
        raise ProfileError(f"{prefix}.kind must be {kind!r}, got {data.get('kind')!r} ({file})")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{prefix}.name must be a non-empty string, got {name!r} ({file})")
    schema = SCHEMA[kind]
    allowed = set(schema) | {"kind", "name", "description"} | ({"efficiency"} if kind in ("gpu", "host") else set())
    unknown = set(data) - allowed
    if unknown:
        raise ProfileError(f"{prefix} has unknown fields {sorted(unknown)}; allowed: {sorted(allowed)} ({file})")
    kwargs: dict[str, Any] = {"name": name, "description": str(data.get("description", "")), "file": file}
    provenance = []
    for key, (attr, dimension) in schema.items():
        if key not in data:
            if (kind, key) in CONSTANT_DEFAULTS:
                value, why = CONSTANT_DEFAULTS[kind, key]
                kwargs[attr] = value
                provenance.append((key, Provenance(source=Source.ESTIMATE, ref=why)))
            elif (kind, key) not in DEFAULTS and (kind, key) not in UNSET_OK:
                raise ProfileError(f"{prefix}.{key} is missing ({file})")
            continue
        kwargs[attr], prov = _quantity(data[key], key, dimension, f"{prefix}.{key}", file)
        provenance.append((key, prov))
    for (k, key), (other, why) in DEFAULTS.items():
        if k == kind and key not in data:
            kwargs[schema[key][0]] = kwargs[schema[other][0]]
            base = dict(provenance)[other]
            provenance.append((key, Provenance(source=base.source, ref=f"{why}; {other}: {base.ref}")))
    order = list(schema)  # schema order, whether a key was given or defaulted (equal parts compare equal)
    provenance.sort(key=lambda kv: order.index(kv[0]))
    if kind in ("gpu", "host"):
        eff = data.get("efficiency")
        if isinstance(eff, str):
            kwargs["curves"] = load_curves(eff, field=f"{prefix}.efficiency", file=file)
        elif isinstance(eff, Mapping):
            kwargs["curves"] = parse_curves(eff, file=file)
        else:
            raise ProfileError(f"{prefix}.efficiency must name a curve set or define one, got {eff!r} ({file})")
        _check_reserve(kwargs["memory_bytes"], kwargs["reserved_bytes"], prefix,
                       data["memory"]["value"], data["reserved_memory"]["value"], f"({file})")
    return PART_CLASSES[kind](provenance=tuple(provenance), **kwargs)


def _check_reserve(memory_bytes: float, reserved_bytes: float, prefix: str, memory: object, reserved: object,
                   where: str) -> None:
    """The reserve (CUDA context, allocator slack, the OS) must leave some memory to plan with."""
    if reserved_bytes >= memory_bytes:
        raise ProfileError(
            f"{prefix}.reserved_memory must be less than {prefix}.memory, got reserved_memory {reserved!r} "
            f">= memory {memory!r} (usable memory would be {format_bytes(memory_bytes - reserved_bytes)}) {where}")


def _resolve_part(kind: str, ref: Any, base: Path, file: str) -> Part:
    if isinstance(ref, Mapping):
        return parse_part(kind, ref, file=file, prefix=f"system.{kind}")
    if not isinstance(ref, str) or not ref:
        raise ProfileError(f"system.{kind} must name a bundled {kind}, a .yaml path or a mapping, got {ref!r} ({file})")
    if ref.endswith((".yaml", ".yml")):
        return _file_part(kind, (base / ref).resolve())
    return _file_part(kind, _bundled_path(kind, ref))


def _file_part(kind: str, path: Path) -> Part:
    """A part from its own file, parsed once per modification time (parts are immutable, and a sweep
    loads the same few for every point)."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return parse_part(kind, _read_yaml(path), file=str(path))  # _read_yaml raises the ProfileError
    return _file_part_cached(kind, str(path), stamp)


@functools.lru_cache(maxsize=256)
def _file_part_cached(kind: str, name: str, _stamp: int) -> Part:
    return parse_part(kind, _read_yaml(Path(name)), file=name)


def load_part(kind: str, name_or_path: str) -> Part:
    """Load one bundled part by name, or a part file by path."""
    if kind not in SCHEMA:
        raise ProfileError(f"part kind must be one of {sorted(SCHEMA)}, got {kind!r}")
    return _resolve_part(kind, name_or_path, Path.cwd(), "<command line>")


def load_system(name_or_path: str | Path, overrides: Iterable[str] = ()) -> System:
    """Load a system by bundled name or YAML path and apply ``--set`` style overrides.

    Parameters
    ----------
    name_or_path : str or Path
        A bundled system name (``tierplan hw list``) or a path to a system YAML file.
    overrides : iterable of str
        ``part.field=quantity`` (``link.h2d=12GB/s``) or ``part=name`` (``link=pcie5-x16``).

    Returns
    -------
    System
        Its ``source`` is the bundled name or the file's absolute path, and for a path
        ``content_sha256`` is the SHA-256 of the file as read (a plan records both).

    Examples
    --------
    >>> s = load_system("a100-40gb", ["link.h2d=12GB/s"])
    >>> s.link.h2d_bytes_per_s
    12000000000.0
    >>> s.source, s.content_sha256
    ('a100-40gb', None)
    """
    text = str(name_or_path)
    candidate = Path(text)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or candidate.is_file() \
            or (candidate.is_dir() and not _is_bundled("system", text)):  # read_text says "is a directory"
        path = candidate.resolve()
        data, sha = _read_yaml_hashed(path)
        source: str = str(path)
    else:
        path = _bundled_path("system", text)
        data, sha, source = _read_yaml(path), None, text
    if data.get("kind") != "system":
        raise ProfileError(f"kind must be 'system' in a system file, got {data.get('kind')!r} ({path})")
    system = _build_system(data, file=str(path), base=path.parent, default_name=path.stem, record=False)
    system = dataclasses.replace(system, source=source, content_sha256=sha)
    return apply_overrides(system, overrides)


def system_from_dict(data: Mapping[str, Any], *, file: str) -> System:
    """Rebuild a system from :meth:`System.to_dict` (as a plan records it in ``hardware.resolved``).

    Parameters
    ----------
    data : mapping
        A system file's layout, parts inline or by name, plus the record fields ``file`` (the
        system's and each part's) and ``overrides`` (already applied to the values; kept as a record).
    file : str
        Where ``data`` came from, for messages (e.g. ``"hardware.resolved in plan.json"``).

    Returns
    -------
    System
        Equal to the system ``data`` was made from (same numbers, sources, files and overrides).

    Examples
    --------
    >>> s = load_system("t4", ["link.h2d=3GB/s"])
    >>> system_from_dict(s.to_dict(), file="example") == s
    True
    """
    if not isinstance(data, Mapping):
        raise ProfileError(f"a system must be a mapping, got {type(data).__name__} ({file})")
    if data.get("kind", "system") != "system":
        raise ProfileError(f"system.kind must be 'system', got {data.get('kind')!r} ({file})")
    recorded = data.get("file")
    if recorded is not None and not isinstance(recorded, str):
        raise ProfileError(f"system.file must be a string, got {recorded!r} ({file})")
    base = Path(recorded).parent if recorded else Path.cwd()
    system = _build_system(data, file=file, base=base, default_name="", record=True)
    return dataclasses.replace(system, file=recorded or file)


def _build_system(data: Mapping[str, Any], *, file: str, base: Path, default_name: str, record: bool) -> System:
    """A system from its mapping; ``record`` also accepts the fields :meth:`System.to_dict` adds."""
    allowed = {"kind", "name", "description", *SYSTEM_PARTS} | ({"file", "overrides"} if record else set())
    unknown = set(data) - allowed
    if unknown:
        raise ProfileError(f"system has unknown fields {sorted(map(str, unknown))}; allowed: {sorted(allowed)} ({file})")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ProfileError(f"system.name must be a non-empty string, got {name!r} ({file})")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ProfileError(f"system.description must be a string, got {type(description).__name__} ({file})")
    parts: dict[str, Part | None] = {}
    for kind in ("gpu", "host", "link"):
        if kind not in data:
            raise ProfileError(f"system.{kind} is missing ({file})")
        parts[kind] = _system_part(kind, data[kind], base, file, record)
    for kind in ("disk", "interconnect"):
        parts[kind] = _system_part(kind, data[kind], base, file, record) if data.get(kind) else None
    overrides = data.get("overrides", []) if record else []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ProfileError(f"system.overrides must be a list of strings, got {overrides!r} ({file})")
    return System(name=name, description=description, file=file, overrides=tuple(overrides),
                  **parts)  # type: ignore[arg-type]


def _system_part(kind: str, ref: Any, base: Path, file: str, record: bool) -> Part:
    if record and isinstance(ref, Mapping) and "file" in ref:
        part_file = ref["file"]
        if not isinstance(part_file, str):
            raise ProfileError(f"system.{kind}.file must be a string, got {part_file!r} ({file})")
        part = _resolve_part(kind, {k: v for k, v in ref.items() if k != "file"}, base, file)
        return dataclasses.replace(part, file=part_file)
    return _resolve_part(kind, ref, base, file)


# ---------------------------------------------------------------------------------------------
# Back to YAML's terms: System.to_dict
# ---------------------------------------------------------------------------------------------


def exact_quantity(value: float, dimension: Dimension) -> str:
    """The shortest ``"<number> <unit>"`` that :func:`parse_quantity` reads back as exactly ``value``.

    Examples
    --------
    >>> exact_quantity(40 * 2**30, Dimension.BYTES)
    '40 GiB'
    >>> exact_quantity(1.555e12, Dimension.BANDWIDTH)
    '1555 GB/s'
    >>> exact_quantity(0.07, Dimension.RATIO)
    '7 %'
    """
    found: list[str] = []
    for unit, (dim, factor) in UNITS.items():
        if dim is not dimension:
            continue
        number = value / factor
        # number * factor may round to a neighbour of value: the decimal wanted is within a few ulps.
        for candidate in (number, *(math.nextafter(number, d) for d in (math.inf, -math.inf)),
                          math.nextafter(math.nextafter(number, math.inf), math.inf),
                          math.nextafter(math.nextafter(number, -math.inf), -math.inf)):
            text = repr(candidate).removesuffix(".0")
            if float(text) * factor == value:
                found.append(f"{text} {unit}")
    if not found:  # no decimal is exact with this dimension's units (only possible for '%'): the nearest
        return f"{repr(value / UNITS['%'][1]).removesuffix('.0')} %"
    return min(found, key=len)


def _curve_pairs(curve: Curve, dimension: Dimension) -> list[list[str]]:
    return [[exact_quantity(size, dimension), exact_quantity(value, Dimension.RATIO)]
            for size, value in zip(curve.sizes, curve.values)]


def curves_to_dict(curves: CurveSet) -> dict[str, Any]:
    """A curve set in its YAML layout, every point an exact unit string."""
    return {
        "name": curves.name,
        "source": curves.provenance.source.value,
        "ref": curves.provenance.ref,
        "compute": {cls.value: _curve_pairs(curve, Dimension.FLOP) for cls, curve in curves.compute},
        "memory": _curve_pairs(curves.memory, Dimension.BYTES),
    }


def part_to_dict(kind: str, part: Part) -> dict[str, Any]:
    """A part in its YAML layout plus its ``file``: every number an exact unit string with its
    source and ref, the efficiency curves inline."""
    out: dict[str, Any] = {"kind": kind, "name": part.name, "description": part.description, "file": part.file}
    for key, (attr, dimension) in SCHEMA[kind].items():
        if getattr(part, attr) is None:  # an optional figure not measured (UNSET_OK): absent, as in its file
            continue
        prov = part.source_of(key)
        out[key] = {"value": exact_quantity(getattr(part, attr), dimension), "source": prov.source.value,
                    "ref": prov.ref}
    curves = getattr(part, "curves", None)
    if curves is not None:
        out["efficiency"] = curves_to_dict(curves)
    return out


def system_to_dict(system: System) -> dict[str, Any]:
    """See :meth:`System.to_dict`."""
    out: dict[str, Any] = {"kind": "system", "name": system.name, "description": system.description,
                           "file": system.file, "overrides": list(system.overrides)}
    for kind in SYSTEM_PARTS:
        part = getattr(system, kind)
        out[kind] = part_to_dict(kind, part) if part is not None else None
    return out


def apply_overrides(system: System, overrides: Iterable[str]) -> System:
    """Return ``system`` with each override applied in order (the system is not changed)."""
    applied = list(system.overrides)
    for text in overrides:
        where = f"--set {text}"
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ProfileError(f"an override must read 'part.field=value' or 'part=name', got {text!r}")
        kind, dot, field = key.partition(".")
        if kind not in SCHEMA:
            raise ProfileError(f"override part must be one of {sorted(SCHEMA)}, got {kind!r} in {where!r}")
        if not dot:
            part = _resolve_part(kind, value, Path.cwd(), where)
            system = dataclasses.replace(system, **{kind: part})
        else:
            current = getattr(system, kind)
            if current is None:
                raise ProfileError(f"system {system.name!r} has no {kind}; add one with '--set {kind}=NAME' first")
            if field not in SCHEMA[kind]:
                raise ProfileError(f"{kind} has no field {field!r}; fields are {sorted(SCHEMA[kind])} (in {where!r})")
            attr, dimension = SCHEMA[kind][field]
            number = parse_quantity(value, dimension, field=key, file=where, allow_zero=field in ZERO_OK)
            if field in RATIO_MAX and number > 1.0:
                raise ProfileError(f"{key} must be at most 100 %, got {value!r} (in {where!r})")
            provenance = dict(current.provenance)
            provenance[field] = Provenance(source=Source.OVERRIDE, ref=where)
            part = dataclasses.replace(current, **{attr: number, "provenance": tuple(provenance.items())})
            if kind in ("gpu", "host"):
                _check_reserve(part.memory_bytes, part.reserved_bytes, kind,
                               value if field == "memory" else format_bytes(part.memory_bytes),
                               value if field == "reserved_memory" else format_bytes(part.reserved_bytes),
                               f"(after {where!r})")
            system = dataclasses.replace(system, **{kind: part})
        applied.append(text)
    return dataclasses.replace(system, overrides=tuple(applied))
