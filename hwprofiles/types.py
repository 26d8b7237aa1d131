"""Every shared type of hwprofiles: sources, efficiency curves, and the parts of a system.

All floats are SI base units and the unit is in the field name.
"""

from __future__ import annotations

import bisect
import enum
import math
from dataclasses import dataclass, field

import numpy as np


class Source(enum.StrEnum):
    DATASHEET = "datasheet"
    MEASURED = "measured"
    FITTED = "fitted"
    ESTIMATE = "estimate"
    OVERRIDE = "override"


class OpClass(enum.StrEnum):
    """Shape classes with their own compute-efficiency curve."""

    GEMM = "gemm"
    GEMV = "gemv"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    """Where a number came from: a datasheet, a measurement, a fit, an estimate or an override."""

    source: Source
    ref: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Curve:
    """A ratio that depends on an operation's size, piecewise linear in log10(size).

    Outside the measured range the end values hold (no extrapolation).

    Examples
    --------
    >>> c = Curve(sizes=(1e6, 1e9), values=(0.1, 0.7))
    >>> round(float(c(10**7.5)), 3)
    0.4
    >>> float(c(1.0)), float(c(1e12))
    (0.1, 0.7)
    """

    sizes: tuple[float, ...]
    values: tuple[float, ...]
    _log_sizes: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_log_sizes", tuple(math.log10(s) for s in self.sizes))

    def __call__(self, size: float | np.ndarray) -> float | np.ndarray:
        if isinstance(size, (int, float)):
            # Scalars (most calls: one op's size) without numpy's per-call overhead; same as np.interp.
            x, xs, ys = math.log10(max(size, 1.0)), self._log_sizes, self.values
            if x <= xs[0]:
                return ys[0]
            if x >= xs[-1]:
                return ys[-1]
            i = bisect.bisect_right(xs, x)
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        x = np.log10(np.maximum(np.asarray(size, dtype=float), 1.0))
        return np.interp(x, self._log_sizes, self.values)

    @classmethod
    def flat(cls, value: float) -> Curve:
        return cls(sizes=(1.0,), values=(value,))


@dataclass(frozen=True, slots=True, kw_only=True)
class CurveSet:
    """Compute efficiency by op class (over FLOPs) and memory efficiency (over bytes)."""

    name: str
    compute: tuple[tuple[OpClass, Curve], ...]
    memory: Curve
    provenance: Provenance

    def compute_curve(self, op_class: OpClass) -> Curve:
        for cls, curve in self.compute:  # a scan of four, cheaper than building a dict per call
            if cls is op_class:
                return curve
        return dict(self.compute)[op_class]  # equal but not identical (e.g. a plain str): KeyError if absent


@dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """Fields common to every part of a system."""

    name: str
    description: str
    file: str
    provenance: tuple[tuple[str, Provenance], ...] = field(default=())

    def source_of(self, key: str) -> Provenance:
        return dict(self.provenance)[key]


@dataclass(frozen=True, slots=True, kw_only=True)
class Gpu(Part):
    """A GPU. ``tf32_flop_per_s`` is the dense TF32 tensor-core peak (no sparsity) that fp32 GEMMs reach
    when the framework allows TF32 (NVIDIA Ampere and later); on a GPU without TF32 tensor cores it
    equals ``fp32_flop_per_s``."""

    memory_bytes: float
    memory_bytes_per_s: float
    fp16_flop_per_s: float
    fp32_flop_per_s: float
    tf32_flop_per_s: float
    reserved_bytes: float
    launch_overhead_s: float
    curves: CurveSet


@dataclass(frozen=True, slots=True, kw_only=True)
class Host(Part):
    """A host (CPUs and memory). ``node_share`` is the fraction of the node's host the figures
    describe: 1 for a whole host; 1/8 for one GPU's share of an 8-GPU node (``*-gpu-share``), so that
    a job on N of its GPUs gets N shares (:func:`costmodel.training_units.node_host`).

    ``optimizer_bytes_per_s`` (optional, ``None`` when not measured) is the rate a CPU optimizer
    update sustains, counted in the cost model's bytes of that update per parameter (28 B for fp32
    Adam: :func:`costmodel.training_states.step_bytes_per_param`'s update pass) over states far beyond
    the caches: ``tierplan profile`` times ``torch.optim.AdamW(foreach=True)``. Without it the update
    runs on the memory roof and its efficiency curve, as every other elementwise pass does. The rate
    measured with AdamW is taken for every optimizer's update (SGD's moves fewer bytes per parameter
    at the same rate per byte)."""

    memory_bytes: float
    memory_bytes_per_s: float
    fp32_flop_per_s: float
    reserved_bytes: float
    node_share: float
    curves: CurveSet
    optimizer_bytes_per_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Link(Part):
    """The GPU-host link; bandwidths are what pinned copies achieve for large transfers.

    ``uplink_share`` is the share of those bandwidths each GPU keeps when every GPU behind the same
    host uplink copies at once: 1 for a GPU with its own link to the CPU, 1/2 for two GPUs behind
    one PCIe switch whose uplink is as wide as each GPU's link. A job on N GPUs of the node gets
    ``max(uplink_share, 1/N)`` of the rates per GPU (:func:`costmodel.training_units.unit_costs`:
    with fewer GPUs than share an uplink, only N of them copy); single-GPU plans keep the full rates.
    """

    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    latency_s: float
    pageable_factor: float
    bidirectional_factor: float
    uplink_share: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Disk(Part):
    capacity_bytes: float
    read_bytes_per_s: float
    write_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Interconnect(Part):
    """The GPU-to-GPU fabric of a node: ``bus_bytes_per_s`` is the bus bandwidth a ring
    reduce-scatter or all-gather reaches per GPU on large messages (nccl-tests' ``busbw``), the rate
    the data-parallel gradient and parameter collectives run at."""

    bus_bytes_per_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class System:
    """One GPU, its host, the link between them, optionally a disk, and optionally the interconnect
    to the node's other GPUs (for data-parallel training).

    ``source`` (the bundled name, or the absolute path it was loaded from) and ``content_sha256``
    (of that file; ``None`` for a bundled system) say where it came from; they are a record, not
    part of what the system is, so they take no part in equality or hashing.
    """

    name: str
    description: str
    file: str
    gpu: Gpu
    host: Host
    link: Link
    disk: Disk | None
    interconnect: Interconnect | None = None
    overrides: tuple[str, ...] = ()
    source: str = field(default="", compare=False)
    content_sha256: str | None = field(default=None, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed once: the cost model caches per (workload, system), and hashing the nested parts
        # on every lookup cost more than the lookups saved.
        object.__setattr__(self, "_hash", hash((self.name, self.description, self.file, self.gpu, self.host,
                                                self.link, self.disk, self.interconnect, self.overrides)))

    def __hash__(self) -> int:
        return self._hash

    def to_dict(self) -> dict[str, object]:
        """The system in its YAML layout, parts and curves inline, overrides already applied.

        Every number is a unit string that parses back to exactly the same float, with its source
        and ref; ``file`` (of the system and of each part) and ``overrides`` are kept as a record.
        :func:`hwprofiles.loader.system_from_dict` rebuilds an equal System from it.

        Examples
        --------
        >>> from hwprofiles import load_system
        >>> d = load_system("a100-40gb").to_dict()
        >>> d["gpu"]["memory"]["value"], d["link"]["h2d"]["source"]
        ('40 GiB', 'measured')
        """
        # The schema (YAML key, field, dimension) lives with the loader, which imports these types.
        from hwprofiles.loader import system_to_dict

        return system_to_dict(self)

    def summary(self) -> dict[str, object]:
        """A JSON-friendly identification of the hardware (a plan's ``hardware``).

        ``source`` is the bundled name or the absolute path loaded, ``content_sha256`` that file's
        hash (``None`` for a bundled system), and ``resolved`` every value as :meth:`to_dict` gives
        it, so that a plan can be re-costed on its own hardware after the file has gone.
        """
        return {
            "system": self.name,
            "source": self.source or self.file,
            "file": self.file,
            "content_sha256": self.content_sha256,
            "gpu": self.gpu.name,
            "host": self.host.name,
            "link": self.link.name,
            "disk": self.disk.name if self.disk else None,
            "interconnect": self.interconnect.name if self.interconnect else None,
            "overrides": list(self.overrides),
            "gpu_memory_bytes": self.gpu.memory_bytes,
            "host_memory_bytes": self.host.memory_bytes,
            "h2d_bytes_per_s": self.link.h2d_bytes_per_s,
            "d2h_bytes_per_s": self.link.d2h_bytes_per_s,
            "resolved": self.to_dict(),
        }
