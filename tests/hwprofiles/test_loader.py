"""Profile loading: every bundled system and part, overrides, and malformed files."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from hwprofiles import (
    Curve,
    Disk,
    Gpu,
    Host,
    Link,
    OpClass,
    ProfileError,
    Source,
    apply_overrides,
    list_parts,
    list_systems,
    load_part,
    load_system,
)

TOY = Path(__file__).resolve().parents[1] / "data" / "toy-system.yaml"
PART_KINDS = ("gpu", "host", "link", "disk")

# Quantities that may legitimately be zero in a profile (a what-if), but no bundled profile uses zero.
ZERO_ALLOWED = {"reserved_bytes", "launch_overhead_s", "latency_s"}


def _float_fields(part) -> dict[str, float]:
    return {f.name: getattr(part, f.name) for f in dataclasses.fields(part) if isinstance(getattr(part, f.name), float)}


def _check_curves(curves) -> None:
    assert curves.provenance.ref.strip()
    for op_class in OpClass:
        curve = curves.compute_curve(op_class)
        _check_curve(curve)
    _check_curve(curves.memory)


def _check_curve(curve: Curve) -> None:
    assert len(curve.sizes) == len(curve.values) >= 1
    assert all(b > a for a, b in zip(curve.sizes, curve.sizes[1:]))
    assert all(0.0 < v <= 1.0 for v in curve.values)


# ---------------------------------------------------------------------------------------------
# Every bundled profile
# ---------------------------------------------------------------------------------------------


def test_there_are_bundled_systems_and_parts():
    assert len(list_systems()) >= 10
    for kind in PART_KINDS:
        assert list_parts(kind), kind


@pytest.mark.parametrize("name", list_systems())
def test_bundled_system_loads_with_positive_numbers_and_sources(name):
    system = load_system(name)
    assert system.name == name
    assert system.overrides == ()
    parts = [system.gpu, system.host, system.link] + ([system.disk] if system.disk else [])
    for part in parts:
        numbers = _float_fields(part)
        assert numbers, part.name
        for field, value in numbers.items():
            assert np.isfinite(value) and value > 0, f"{part.name}.{field} = {value}"
        # every YAML quantity has a provenance with a real citation
        assert len(part.provenance) == len(numbers)
        for key, prov in part.provenance:
            assert isinstance(prov.source, Source)
            assert prov.ref.strip(), f"{part.name}.{key} has an empty ref"
    _check_curves(system.gpu.curves)
    _check_curves(system.host.curves)
    # physical sanity: usable memory left after the reserve, tensor fp16 at least the fp32 rate,
    # link factors are fractions
    assert system.gpu.memory_bytes > system.gpu.reserved_bytes
    assert system.host.memory_bytes > system.host.reserved_bytes
    assert system.gpu.fp16_flop_per_s >= system.gpu.fp32_flop_per_s
    assert 0 < system.link.pageable_factor <= 1
    assert 0 < system.link.bidirectional_factor <= 1
    # a system summary is JSON-friendly and names its parts
    summary = system.summary()
    assert summary["gpu"] == system.gpu.name and summary["link"] == system.link.name


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k in PART_KINDS for n in list_parts(k)])
def test_every_bundled_part_loads(kind, name):
    part = load_part(kind, name)
    assert isinstance(part, {"gpu": Gpu, "host": Host, "link": Link, "disk": Disk}[kind])
    assert part.name == name
    for field, value in _float_fields(part).items():
        assert value >= 0 if field in ZERO_ALLOWED else value > 0, f"{name}.{field}"
    for key, prov in part.provenance:
        assert prov.ref.strip(), f"{name}.{key}"


# Dense fp16/bf16 tensor peaks must be the dense figure, never the "with sparsity" one that NVIDIA
# datasheets print first. Upper bounds: the datasheet's dense figure (half the sparse one) + 2 %.
DENSE_FP16_MAX = {
    "a100-40gb": 312e12,   # A100 datasheet: 312 dense / 624 sparse
    "a100-80gb": 312e12,
    "h100-sxm": 989.4e12,  # H100 SXM: 1979 sparse / 2 = 989.5
    "h100-pcie": 756.5e12,  # H100 PCIe: 1513 sparse / 2
    "h200": 989.5e12,      # same GH100 die and clocks as H100 SXM
    "gh200": 989.5e12,
    "l4": 121e12,          # 242 sparse / 2
    "l40s": 366.5e12,      # 733 sparse / 2
    "rtx3090": 71e12,      # GA102 whitepaper, FP32 accumulate: 71 dense / 142 sparse
    "rtx4090": 165.2e12,   # Ada whitepaper, FP32 accumulate: 165.2 dense / 330.4 sparse
    "t4": 65e12,           # Turing: no sparsity
    "v100-32gb": 125e12,   # Volta: no sparsity
    "a10g": 125e12,        # at most the A10's dense 125 (the A10G has less tensor throughput)
}


@pytest.mark.parametrize("name", list_parts("gpu"))
def test_gpu_fp16_is_the_dense_figure(name):
    gpu = load_part("gpu", name)
    assert name in DENSE_FP16_MAX, f"add {name}'s datasheet dense figure to this table"
    assert gpu.fp16_flop_per_s <= DENSE_FP16_MAX[name] * 1.02


def test_h100_sxm_fp16_is_dense_not_sparse():
    # 989 TFLOP/s dense; the sparse figure is 1979 TFLOP/s.
    assert load_system("h100-sxm").gpu.fp16_flop_per_s < 1.2e15


def test_toy_system_numbers_match_its_yaml():
    toy = load_system(TOY)
    assert toy.name == "toy"
    assert toy.gpu.memory_bytes == 16 * 2**30
    assert toy.gpu.reserved_bytes == 2**30
    assert toy.gpu.memory_bytes_per_s == 1e12
    assert toy.gpu.fp16_flop_per_s == 100e12
    assert toy.host.memory_bytes == 128 * 2**30
    assert toy.link.h2d_bytes_per_s == 10e9
    assert toy.link.latency_s == 0.0  # zero is allowed for latencies
    assert toy.link.pageable_factor == 0.5
    assert toy.disk is None
    # an inline curve set: flat 100 % at every size
    assert float(toy.gpu.curves.compute_curve(OpClass.GEMM)(1e12)) == 1.0
    assert float(toy.gpu.curves.memory(1.0)) == 1.0


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


def test_value_override_sets_the_number_and_its_provenance():
    system = load_system("a100-40gb", ["link.h2d=12GB/s", "host.memory=208GiB"])
    assert system.link.h2d_bytes_per_s == 12e9
    assert system.host.memory_bytes == 208 * 2**30
    prov = system.link.source_of("h2d")
    assert prov.source is Source.OVERRIDE
    assert "link.h2d=12GB/s" in prov.ref
    assert system.overrides == ("link.h2d=12GB/s", "host.memory=208GiB")
    assert system.summary()["overrides"] == ["link.h2d=12GB/s", "host.memory=208GiB"]
    # the fields not overridden keep their bundled values
    assert system.link.d2h_bytes_per_s == load_system("a100-40gb").link.d2h_bytes_per_s


def test_part_swap_override_replaces_the_whole_part():
    base = load_system("a100-40gb")
    swapped = load_system("a100-40gb", ["link=pcie5-x16"])
    assert base.link.name != "pcie5-x16"
    assert swapped.link == load_part("link", "pcie5-x16")
    assert swapped.gpu == base.gpu


def test_overrides_apply_in_order():
    # swap the link, then change one of the new link's numbers
    system = load_system("a100-40gb", ["link=pcie5-x16", "link.latency=0us"])
    assert system.link.name == "pcie5-x16"
    assert system.link.latency_s == 0.0


def test_overrides_do_not_mutate_the_original_system():
    base = load_system(TOY)
    before = dataclasses.replace(base)  # a shallow copy of the frozen value
    changed = apply_overrides(base, ["link.h2d=50GB/s", "gpu.memory=80GiB", "disk=nvme-gen4"])
    assert changed.link.h2d_bytes_per_s == 50e9 and changed.gpu.memory_bytes == 80 * 2**30
    assert changed.disk is not None and changed.disk.name == "nvme-gen4"
    assert base == before
    assert base.link.h2d_bytes_per_s == 10e9
    assert base.gpu.memory_bytes == 16 * 2**30
    assert base.disk is None
    assert base.overrides == ()
    assert base.link.source_of("h2d").source is Source.ESTIMATE


def test_a_disk_can_be_added_then_tuned():
    system = load_system(TOY, ["disk=nvme-gen4", "disk.capacity=1TB"])
    assert system.disk.capacity_bytes == 1e12


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("link.bandwidth=12GB/s", "no field 'bandwidth'"),   # unknown field
        ("cpu.memory=1GiB", "override part must be one of"),  # unknown part kind
        ("link.h2d=12GB", "must be in bytes/s"),              # wrong dimension
        ("link.h2d=12 furlongs", "unknown unit"),            # bad unit
        ("link.h2d=12", "needs a unit"),                    # bare number
        ("link.h2d=-12GB/s", "must be positive"),             # negative
        ("gpu.memory=0GiB", "must be positive"),              # zero capacity is never valid
        ("link.pageable_factor=150%", "at most 100 %"),       # ratio above one
        ("link=pcie9-x64", "unknown link 'pcie9-x64'"),       # missing part
        ("link.h2d", "must read 'part.field=value'"),          # no '='
        ("link.h2d=", "must read 'part.field=value'"),         # no value
        ("disk.capacity=1TB", "has no disk"),                 # field of an absent part
    ],
)
def test_bad_override_is_a_profile_error(override, needle):
    with pytest.raises(ProfileError, match=re.escape(needle)):
        load_system(TOY, [override])


def test_missing_part_error_lists_the_bundled_parts():
    with pytest.raises(ProfileError) as err:
        load_system(TOY, ["link=nope"])
    for name in list_parts("link"):
        assert name in str(err.value)


def test_zero_latency_override_is_allowed():
    assert load_system("h100-sxm", ["link.latency=0us"]).link.latency_s == 0.0


# ---------------------------------------------------------------------------------------------
# Malformed files
# ---------------------------------------------------------------------------------------------


def _toy_text() -> str:
    return TOY.read_text()


def test_unknown_system_name_lists_bundled_systems():
    with pytest.raises(ProfileError, match="unknown system 'nope'") as err:
        load_system("nope")
    assert "h100-sxm" in str(err.value)


def test_missing_file_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_system(tmp_path / "absent.yaml")


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("kind: system\nname: [unclosed\ngpu: x\n")
    with pytest.raises(ProfileError) as err:
        load_system(path)
    msg = str(err.value)
    assert "malformed YAML" in msg
    assert "broken.yaml" in msg
    assert "line" in msg


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ProfileError, match="must be a YAML mapping") as err:
        load_system(path)
    assert "list.yaml" in str(err.value)


def test_wrong_kind_is_an_error(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text(_toy_text().replace("kind: system", "kind: gpu", 1))
    with pytest.raises(ProfileError, match="kind must be 'system'"):
        load_system(path)


def test_missing_field_names_field_and_file(tmp_path):
    text = "\n".join(line for line in _toy_text().splitlines() if not line.strip().startswith("h2d:"))
    path = tmp_path / "no-h2d.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_system(path)
    assert str(err.value) == f"system.link.h2d is missing ({path.resolve()})"


def test_missing_part_of_a_system_is_an_error(tmp_path):
    path = tmp_path / "no-link.yaml"
    text = _toy_text()
    path.write_text(text[: text.index("link:")])
    with pytest.raises(ProfileError, match=r"system\.link is missing"):
        load_system(path)


def test_unknown_field_in_a_part_is_an_error(tmp_path):
    path = tmp_path / "extra.yaml"
    path.write_text(_toy_text().replace("  name: toy-link\n",
                                        "  name: toy-link\n  lanes: {value: \"16 B\", source: estimate, ref: x}\n"))
    with pytest.raises(ProfileError) as err:
        load_system(path)
    msg = str(err.value)
    assert "unknown fields ['lanes']" in msg
    assert "extra.yaml" in msg


def test_unknown_top_level_field_is_an_error(tmp_path):
    path = tmp_path / "extra-top.yaml"
    path.write_text(_toy_text() + "cooling: liquid\n")
    with pytest.raises(ProfileError, match=r"unknown fields \['cooling'\]"):
        load_system(path)


def test_bare_number_in_a_profile_is_an_error(tmp_path):
    path = tmp_path / "bare.yaml"
    text, n = re.subn(r'(h2d:\s*)\{value: "10 GB/s"', r"\1{value: 10", _toy_text())
    assert n == 1
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_system(path)
    msg = str(err.value)
    assert "system.link.h2d needs a unit" in msg
    assert "bare.yaml" in msg


def test_quantity_without_a_source_is_an_error(tmp_path):
    path = tmp_path / "nosource.yaml"
    path.write_text(_toy_text().replace('{value: "10 GB/s", source: estimate, ref: "test fixture"}',
                                        '{value: "10 GB/s", ref: "test fixture"}', 1))
    with pytest.raises(ProfileError, match=r"system\.link\.h2d\.source must be one of"):
        load_system(path)


def test_quantity_with_an_empty_ref_is_an_error(tmp_path):
    path = tmp_path / "noref.yaml"
    path.write_text(_toy_text().replace('{value: "10 GB/s", source: estimate, ref: "test fixture"}',
                                        '{value: "10 GB/s", source: estimate, ref: "  "}', 1))
    with pytest.raises(ProfileError, match=r"system\.link\.h2d\.ref must cite"):
        load_system(path)


def test_curve_sizes_must_increase(tmp_path):
    path = tmp_path / "curve.yaml"
    path.write_text(_toy_text().replace('memory: [["1 B", "100 %"]]', 'memory: [["1 MB", "50 %"], ["1 KB", "60 %"]]', 1))
    with pytest.raises(ProfileError, match="must increase strictly"):
        load_system(path)


def test_curve_ratio_above_one_is_an_error(tmp_path):
    path = tmp_path / "curve.yaml"
    path.write_text(_toy_text().replace('memory: [["1 B", "100 %"]]', 'memory: [["1 B", "120 %"]]', 1))
    with pytest.raises(ProfileError, match="at most 100 %"):
        load_system(path)


def test_parts_by_relative_path_resolve_next_to_the_system_file(tmp_path, monkeypatch):
    # The system file names its link by a path relative to itself, not to the working directory.
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "mylink.yaml").write_text(
        "kind: link\nname: mylink\n"
        'h2d: {value: "7 GB/s", source: measured, ref: "a test"}\n'
        'd2h: {value: "6 GB/s", source: measured, ref: "a test"}\n'
        'latency: {value: "2 us", source: measured, ref: "a test"}\n'
        'pageable_factor: {value: "50 %", source: measured, ref: "a test"}\n'
        'bidirectional_factor: {value: "80 %", source: measured, ref: "a test"}\n'
    )
    (tmp_path / "sys" / "mine.yaml").write_text(
        "kind: system\nname: mine\ngpu: a100-40gb\nhost: dgx-a100-gpu-share\nlink: mylink.yaml\n")
    monkeypatch.chdir(tmp_path)  # elsewhere than the system file
    system = load_system(tmp_path / "sys" / "mine.yaml")
    assert system.link.name == "mylink"
    assert system.link.h2d_bytes_per_s == 7e9
    assert system.link.latency_s == 2e-6
    assert system.disk is None


def test_load_part_rejects_unknown_kind_and_name():
    with pytest.raises(ProfileError, match="part kind must be one of"):
        load_part("cpu", "x")
    with pytest.raises(ProfileError, match="unknown gpu 'b200x'"):
        load_part("gpu", "b200x")
    with pytest.raises(ProfileError, match="part kind must be one of"):
        list_parts("nic")


def test_curve_that_makes_a_bigger_op_faster_is_rejected(tmp_path):
    # From 1 % at 1 MFLOP, linear-in-log10 interpolation may rise at most ln(10) * 1 % = 2.30 % per
    # decade before time = size / eff falls; 10 % one decade on would make a 2 MFLOP op faster than 1 MFLOP.
    from hwprofiles import parse_curves

    flat = [["1 FLOP", "100 %"]]
    data = {"source": "estimate", "ref": "test", "memory": [["1 B", "100 %"]],
            "compute": {"gemm": [["1 MFLOP", "1 %"], ["10 MFLOP", "10 %"]], "gemv": flat, "attention": flat,
                        "elementwise": flat}}
    with pytest.raises(ProfileError, match=r"curves.compute.gemm rises too fast before '10 MFLOP'.*x.yaml"):
        parse_curves(data, file="x.yaml")
    data["compute"]["gemm"] = [["1 MFLOP", "1 %"], ["10 MFLOP", "3.3 %"]]
    assert parse_curves(data, file="x.yaml").compute_curve(OpClass.GEMM)(1e7) == pytest.approx(0.033)
