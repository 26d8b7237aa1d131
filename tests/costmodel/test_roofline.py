"""Roofline times: the max of the compute and memory roofs, with size-dependent efficiency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel import Op, Processor, Roof, binding_roof, op_time_s, roofline_time_s
from costmodel.roofline import compute_time_s, memory_time_s
from hwprofiles import OpClass, list_systems, load_system

TOY = Path(__file__).resolve().parents[1] / "data" / "toy-system.yaml"


def _processors() -> list[Processor]:
    procs = []
    for name in ("h100-sxm", "t4"):
        system = load_system(name)
        procs += [Processor.gpu(system.gpu), Processor.cpu(system.host)]
    toy = load_system(TOY)
    return procs + [Processor.gpu(toy.gpu), Processor.cpu(toy.host)]


PROCESSORS = _processors()


def test_toy_gemm_by_hand():
    gpu = Processor.gpu(load_system(TOY).gpu)
    # 4096^3 GEMM: 2 * 4096^3 = 137_438_953_472 FLOP at 100 TFLOP/s = 1.37438953472e-3 s;
    # it reads/writes 3 * 4096^2 * 2 = 100_663_296 B at 1 TB/s = 1.0e-4 s: compute-bound.
    op = Op(name="gemm", op_class=OpClass.GEMM, flop=2 * 4096**3, bytes=3 * 4096**2 * 2)
    assert op_time_s(op, gpu) == pytest.approx(2 * 4096**3 / 100e12, rel=1e-12)
    assert binding_roof(op, gpu) is Roof.COMPUTE
    assert op.intensity_flop_per_byte == pytest.approx(4096 / 3, rel=1e-12)  # 2n^3 / 6n^2
    assert gpu.ridge_flop_per_byte == pytest.approx(100.0, rel=1e-12)  # 100 TFLOP/s / 1 TB/s


def test_toy_gemv_is_memory_bound_by_hand():
    gpu = Processor.gpu(load_system(TOY).gpu)
    # 4096 x 4096 GEMV: 2 * 4096^2 FLOP, 4096^2 * 2 B of weights: intensity 1 < ridge 100.
    op = Op(name="gemv", op_class=OpClass.GEMV, flop=2 * 4096**2, bytes=4096**2 * 2)
    assert op_time_s(op, gpu) == pytest.approx(4096**2 * 2 / 1e12, rel=1e-12)
    assert binding_roof(op, gpu) is Roof.MEMORY


def test_cpu_processor_uses_fp32_peak_and_no_launch_overhead():
    system = load_system("h100-sxm")
    cpu = Processor.cpu(system.host)
    assert cpu.peak_flop_per_s == system.host.fp32_flop_per_s
    assert cpu.launch_overhead_s == 0.0
    gpu = Processor.gpu(system.gpu)
    assert gpu.peak_flop_per_s == system.gpu.fp16_flop_per_s
    assert gpu.launch_overhead_s == system.gpu.launch_overhead_s > 0


def test_launch_overhead_is_added_per_launch():
    gpu = Processor.gpu(load_system("h100-sxm").gpu)
    one = float(roofline_time_s(1e9, 1e6, OpClass.GEMM, gpu, launches=1))
    three = float(roofline_time_s(1e9, 1e6, OpClass.GEMM, gpu, launches=3))
    # two more launches of 5 us each
    assert three - one == pytest.approx(2 * gpu.launch_overhead_s, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(proc=st.sampled_from(PROCESSORS), op_class=st.sampled_from(list(OpClass)),
       flop=st.floats(1.0, 1e15), nbytes=st.floats(1.0, 1e12), launches=st.integers(0, 3))
def test_roofline_is_the_max_of_its_roofs(proc, op_class, flop, nbytes, launches):
    t = float(roofline_time_s(flop, nbytes, op_class, proc, launches=launches))
    compute = float(compute_time_s(flop, op_class, proc))
    memory = float(memory_time_s(nbytes, proc))
    overhead = launches * proc.launch_overhead_s
    assert t == pytest.approx(max(compute, memory) + overhead, rel=1e-12)
    # efficiencies are at most 100 %: never faster than either peak
    assert compute >= flop / proc.peak_flop_per_s * (1 - 1e-12)
    assert memory >= nbytes / proc.memory_bytes_per_s * (1 - 1e-12)
    op = Op(name="x", op_class=op_class, flop=flop, bytes=nbytes)
    assert binding_roof(op, proc) is (Roof.COMPUTE if compute >= memory else Roof.MEMORY)


@settings(max_examples=15, deadline=None)
@given(proc=st.sampled_from(PROCESSORS), op_class=st.sampled_from(list(OpClass)),
       flop=st.lists(st.floats(1.0, 1e14), min_size=1, max_size=6),
       nbytes=st.floats(1.0, 1e11))
def test_roofline_accepts_arrays(proc, op_class, flop, nbytes):
    arr = np.asarray(flop)
    out = roofline_time_s(arr, nbytes, op_class, proc)
    assert out.shape == arr.shape
    for f, t in zip(flop, out):
        assert t == pytest.approx(float(roofline_time_s(f, nbytes, op_class, proc)), rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(proc=st.sampled_from(PROCESSORS), op_class=st.sampled_from(list(OpClass)),
       flop=st.floats(1.0, 1e14), nbytes=st.floats(1.0, 1e11), factor=st.floats(1.0, 10.0))
def test_roofline_is_non_increasing_in_peak_rates(proc, op_class, flop, nbytes, factor):
    from dataclasses import replace

    base = float(roofline_time_s(flop, nbytes, op_class, proc))
    faster_compute = replace(proc, peak_flop_per_s=proc.peak_flop_per_s * factor)
    faster_memory = replace(proc, memory_bytes_per_s=proc.memory_bytes_per_s * factor)
    assert float(roofline_time_s(flop, nbytes, op_class, faster_compute)) <= base * (1 + 1e-12)
    assert float(roofline_time_s(flop, nbytes, op_class, faster_memory)) <= base * (1 + 1e-12)


def _bundled_processors() -> list[tuple[str, Processor]]:
    out = []
    for name in list_systems():
        system = load_system(name)
        out += [(f"{name}.gpu", Processor.gpu(system.gpu)), (f"{name}.host", Processor.cpu(system.host))]
    return out


def test_time_is_non_decreasing_in_op_size_for_bundled_curves():
    sizes = np.logspace(3, 13, 401)  # 1 kFLOP / 1 kB .. 10 TFLOP / 10 TB, 40 points per decade
    bad = []
    for label, proc in _bundled_processors():
        for op_class in OpClass:
            t = compute_time_s(sizes, op_class, proc)
            if np.any(np.diff(t) < 0):
                bad.append(f"{label} {op_class.value}")
        if np.any(np.diff(memory_time_s(sizes, proc)) < 0):
            bad.append(f"{label} memory")
    assert not bad, bad
