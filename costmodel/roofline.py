"""Roofline time of an operation on a processor, with size-dependent efficiency.

time(op) = max(FLOPs / (peak * eff_c(FLOPs, class)), bytes / (bw * eff_m(bytes))) + launch overhead
(Williams, Waterman, Patterson, "Roofline", CACM 2009; efficiencies from the profile's curves).
All functions accept numpy arrays for FLOPs and bytes, so a sweep over sizes is one call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from hwprofiles import CurveSet, Gpu, Host, OpClass


class Roof(enum.StrEnum):
    COMPUTE = "compute"
    MEMORY = "memory"


@dataclass(frozen=True, slots=True, kw_only=True)
class Processor:
    """What the roofline needs of a GPU or a CPU."""

    name: str
    peak_flop_per_s: float
    memory_bytes_per_s: float
    launch_overhead_s: float
    curves: CurveSet

    @classmethod
    def gpu(cls, gpu: Gpu) -> Processor:
        return cls(name=gpu.name, peak_flop_per_s=gpu.fp16_flop_per_s, memory_bytes_per_s=gpu.memory_bytes_per_s,
                   launch_overhead_s=gpu.launch_overhead_s, curves=gpu.curves)

    @classmethod
    def cpu(cls, host: Host) -> Processor:
        # CPU attention runs in fp32 (fp16 math on CPUs is emulated or no faster).
        return cls(name=host.name, peak_flop_per_s=host.fp32_flop_per_s, memory_bytes_per_s=host.memory_bytes_per_s,
                   launch_overhead_s=0.0, curves=host.curves)

    @property
    def ridge_flop_per_byte(self) -> float:
        """Arithmetic intensity above which the compute roof binds (at peak efficiencies)."""
        return self.peak_flop_per_s / self.memory_bytes_per_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One kernel: its FLOPs and the bytes it reads and writes in the memory it runs next to."""

    name: str
    op_class: OpClass
    flop: float
    bytes: float

    @property
    def intensity_flop_per_byte(self) -> float:
        return self.flop / self.bytes if self.bytes else float("inf")


def compute_time_s(flop, op_class: OpClass, proc: Processor):
    """Time on the compute roof: FLOPs / (peak * efficiency(FLOPs))."""
    if not isinstance(flop, (int, float)):
        flop = np.asarray(flop, dtype=float)
    eff = proc.curves.compute_curve(op_class)(flop)
    return flop / (proc.peak_flop_per_s * eff)


def memory_time_s(nbytes, proc: Processor):
    """Time on the memory roof: bytes / (bandwidth * efficiency(bytes))."""
    if not isinstance(nbytes, (int, float)):
        nbytes = np.asarray(nbytes, dtype=float)
    return nbytes / (proc.memory_bytes_per_s * proc.curves.memory(nbytes))


def roofline_time_s(flop, nbytes, op_class: OpClass, proc: Processor, *, launches: int = 1):
    """Roofline time of an op (or an array of ops of one class) plus launch overhead.

    Examples
    --------
    >>> from hwprofiles import load_system
    >>> gpu = Processor.gpu(load_system("a100-40gb").gpu)
    >>> t = roofline_time_s(2 * 4096**3, 3 * 4096**2 * 2, OpClass.GEMM, gpu)
    >>> bool(t > 2 * 4096**3 / gpu.peak_flop_per_s)   # never faster than the peak
    True
    """
    c, m = compute_time_s(flop, op_class, proc), memory_time_s(nbytes, proc)
    t = max(c, m) if isinstance(c, float) and isinstance(m, float) else np.maximum(c, m)
    return t + launches * proc.launch_overhead_s


def op_time_s(op: Op, proc: Processor) -> float:
    return float(roofline_time_s(op.flop, op.bytes, op.op_class, proc))


def binding_roof(op: Op, proc: Processor) -> Roof:
    """Which roof limits this op on this processor."""
    c = float(compute_time_s(op.flop, op.op_class, proc))
    m = float(memory_time_s(op.bytes, proc))
    return Roof.COMPUTE if c >= m else Roof.MEMORY
