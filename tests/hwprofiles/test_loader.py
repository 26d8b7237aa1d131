"""Profile loading: every bundled system and part, overrides, and malformed files."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from hwprofiles import (
    Curve,
    Disk,
    Gpu,
    Host,
    Link,
    OpClass,
    ProfileError,
    Source,
    Dimension,
    apply_overrides,
    list_parts,
    list_systems,
    load_part,
    load_system,
    parse_quantity,
)
from hwprofiles.loader import exact_quantity, system_from_dict

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


# Dense TF32 tensor-core peaks (no sparsity), as each GPU file cites them; GPUs without TF32 tensor
# cores (Turing, Volta) and the A10G (no datasheet figure found) state their FP32 peak.
DENSE_TF32 = {
    "a100-40gb": 156e12, "a100-80gb": 156e12,  # A100 datasheet: 156 | 312 sparse
    "h100-sxm": 494.7e12, "h200": 494.7e12, "gh200": 494.7e12,  # H100 SXM: 989 sparse, "1/2 lower without"
    "h100-pcie": 378e12,  # 756 sparse
    "l4": 60e12,  # 120 sparse
    "l40s": 183e12,  # 183 | 366 sparse
    "rtx3090": 35.6e12, "rtx4090": 82.6e12,  # GA102 / Ada whitepapers: 35.6/71.2, 82.6/165.2
    "a10g": 35e12, "t4": 8.1e12, "v100-32gb": 15.7e12,  # = flops_fp32
}


@pytest.mark.parametrize("name", list_parts("gpu"))
def test_every_bundled_gpu_states_its_tf32_peak(name):
    from hwprofiles.loader import DATA_DIR

    raw = yaml.safe_load((DATA_DIR / "gpus" / f"{name}.yaml").read_text())
    assert "flops_tf32" in raw, f"{name}.yaml must state flops_tf32 with its source, not rely on the default"
    gpu = load_part("gpu", name)
    assert name in DENSE_TF32, f"add {name}'s dense TF32 figure to this table"
    assert gpu.tf32_flop_per_s == pytest.approx(DENSE_TF32[name], rel=1e-12)
    # TF32 tensor cores are never slower than the CUDA cores' FP32, never faster than FP16 tensor cores
    assert gpu.fp32_flop_per_s <= gpu.tf32_flop_per_s <= gpu.fp16_flop_per_s
    assert gpu.source_of("flops_tf32").ref.strip()


def test_a_gpu_without_flops_tf32_takes_its_fp32_peak_and_says_so(tmp_path):
    toy = load_system(TOY)  # the fixture states no flops_tf32
    assert toy.gpu.tf32_flop_per_s == toy.gpu.fp32_flop_per_s == 10e12
    prov = toy.gpu.source_of("flops_tf32")
    assert prov.source is toy.gpu.source_of("flops_fp32").source
    assert prov.ref.startswith("flops_tf32 not given: taken equal to flops_fp32")
    # and the record round-trips, flops_tf32 now written out
    d = toy.to_dict()
    assert d["gpu"]["flops_tf32"]["value"] == "10 TFLOP/s"
    assert system_from_dict(d, file="x") == toy
    # an override of it is a value like any other
    fast = apply_overrides(toy, ["gpu.flops_tf32=80TFLOP/s"])
    assert fast.gpu.tf32_flop_per_s == 80e12 and fast.gpu.fp32_flop_per_s == 10e12
    assert fast.gpu.source_of("flops_tf32").source is Source.OVERRIDE


def test_a_stated_flops_tf32_is_read(tmp_path):
    data = yaml.safe_load(TOY.read_text())
    data["gpu"]["flops_tf32"] = {"value": "40 TFLOP/s", "source": "estimate", "ref": "test"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    s = load_system(path)
    assert s.gpu.tf32_flop_per_s == 40e12
    assert [k for k, _ in s.gpu.provenance][:5] == ["memory", "memory_bandwidth", "flops_fp16", "flops_fp32",
                                                    "flops_tf32"]


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


# ---------------------------------------------------------------------------------------------
# Bounded reading of every profile file (hwprofiles.safe_io)
# ---------------------------------------------------------------------------------------------

ALIAS_BOMB = "\n".join(
    ["description: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"


def test_an_alias_bomb_in_a_system_file_is_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_toy_text().replace("description: made-up 16 GiB GPU on a 10 GB/s link, for tests\n", ALIAS_BOMB))
    with pytest.raises(ProfileError, match=r"YAML anchors are not allowed \(&a0 at line \d+, column \d+\).*bomb\.yaml"):
        load_system(path)


def test_an_alias_in_a_part_file_is_refused_and_names_the_part_file(tmp_path):
    (tmp_path / "link.yaml").write_text(
        "kind: link\nname: l\n"
        'h2d: &bw {value: "7 GB/s", source: measured, ref: "a test"}\nd2h: *bw\n'
        'latency: {value: "2 us", source: measured, ref: "a test"}\n'
        'pageable_factor: {value: "50 %", source: measured, ref: "a test"}\n'
        'bidirectional_factor: {value: "80 %", source: measured, ref: "a test"}\n')
    (tmp_path / "sys.yaml").write_text("kind: system\nname: s\ngpu: a100-40gb\nhost: dgx-a100-gpu-share\nlink: link.yaml\n")
    with pytest.raises(ProfileError, match=r"anchors are not allowed \(&bw at line 3.*link\.yaml\)"):
        load_system(tmp_path / "sys.yaml")


def test_a_binary_system_file_is_refused(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ProfileError, match=r"profile file .*weights\.yaml is binary \(a NUL byte at offset 8\)"):
        load_system(path)


def test_a_non_utf8_system_file_is_refused(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(_toy_text().replace("made-up 16 GiB", "Café 16 GiB").encode("latin-1"))
    with pytest.raises(ProfileError, match=r"latin1\.yaml is not UTF-8 text: byte 0xe9 at offset \d+ \(line 4\)"):
        load_system(path)


def test_a_directory_given_as_the_system_is_refused(tmp_path):
    (tmp_path / "profiles").mkdir()
    with pytest.raises(ProfileError, match=r"profile file .*profiles is a directory; a file is needed here"):
        load_system(str(tmp_path / "profiles"))


def test_an_oversized_system_file_is_refused_with_the_limit(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(_toy_text() + "#" * (4 * 2**20))
    with pytest.raises(ProfileError, match=r"huge\.yaml is 4 MiB; the limit for a profile file is 4 MiB"):
        load_system(path)


def test_a_curve_set_name_cannot_be_a_path():
    data = yaml.safe_load(_toy_text())
    data["gpu"]["efficiency"] = "../../../etc/passwd"
    with pytest.raises(ProfileError, match=r"names unknown curve set '\.\./\.\./\.\./etc/passwd'; known: generic-cpu"):
        system_from_dict(data, file="x.yaml")


def test_a_part_name_cannot_be_a_path_out_of_the_bundled_folder():
    with pytest.raises(ProfileError, match=r"unknown gpu '\.\./systems/t4'"):
        load_part("gpu", "../systems/t4")


# ---------------------------------------------------------------------------------------------
# Reserved memory must leave memory to plan with
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpu", "host"])
def test_reserved_memory_at_least_the_memory_is_an_error_naming_both(tmp_path, kind):
    data = yaml.safe_load(_toy_text())
    data[kind]["memory"]["value"] = "40 GiB"
    data[kind]["reserved_memory"]["value"] = "116.36 GiB"
    path = tmp_path / "reserve.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as err:
        load_system(path)
    assert str(err.value) == (
        f"system.{kind}.reserved_memory must be less than system.{kind}.memory, got reserved_memory '116.36 GiB' "
        f">= memory '40 GiB' (usable memory would be -76.36 GiB) ({path.resolve()})")
    data[kind]["reserved_memory"]["value"] = "40 GiB"  # equal: nothing left either
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=r"usable memory would be 0 B"):
        load_system(path)


def test_an_override_that_reserves_all_the_memory_is_an_error():
    with pytest.raises(ProfileError, match=r"gpu.reserved_memory must be less than gpu.memory, got reserved_memory "
                                           r"'50GiB' >= memory '40.00 GiB' .*after '--set gpu.reserved_memory=50GiB'"):
        load_system("a100-40gb", ["gpu.reserved_memory=50GiB"])
    with pytest.raises(ProfileError, match=r"got reserved_memory '.*' >= memory '1GiB'"):
        load_system("a100-40gb", ["host.memory=1GiB"])


def test_a_part_swap_to_a_part_file_with_no_usable_memory_is_an_error(tmp_path):
    data = yaml.safe_load(_toy_text())["gpu"]
    data["reserved_memory"]["value"] = "20 GiB"
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=r"gpu.reserved_memory must be less than gpu.memory.*g\.yaml"):
        load_system(TOY, [f"gpu={tmp_path / 'g.yaml'}"])


# ---------------------------------------------------------------------------------------------
# System.to_dict and system_from_dict: a plan carries its hardware
# ---------------------------------------------------------------------------------------------

RECORDED_PROFILE = Path(__file__).resolve().parents[2] / "validate" / "records" / "cpu-2core-2026-12-01-profile.yaml"


def _round_trips(system, via):
    data = system.to_dict()
    text = json.dumps(data) if via == "json" else yaml.safe_dump(data)
    again = system_from_dict(json.loads(text) if via == "json" else yaml.safe_load(text), file="record")
    assert again == system
    assert hash(again) == hash(system)
    assert again.to_dict() == data


@pytest.mark.parametrize("via", ["json", "yaml"])
@pytest.mark.parametrize("name", list_systems())
def test_every_bundled_system_round_trips_through_to_dict(name, via):
    _round_trips(load_system(name), via)


@pytest.mark.parametrize("via", ["json", "yaml"])
def test_toy_measured_and_overridden_systems_round_trip(via):
    _round_trips(load_system(TOY), via)
    if RECORDED_PROFILE.exists():
        _round_trips(load_system(RECORDED_PROFILE, ["link.h2d=1.234567GB/s"]), via)
    _round_trips(load_system("a100-40gb", ["link=pcie5-x16", "link.latency=0us", "disk=nvme-gen4",
                                           "gpu.memory=39.5GiB", "link.pageable_factor=33.3%"]), via)
    _round_trips(load_system("a100-40gb", ["host.optimizer_bandwidth=12.5GB/s"]), via)


def test_link_uplink_share_defaults_to_a_link_of_its_own():
    link = load_system("a100-40gb").link
    assert link.uplink_share == 1.0 and link.source_of("uplink_share").ref.startswith("uplink_share not given")
    assert load_system("a100-40gb", ["link.uplink_share=50%"]).link.uplink_share == 0.5
    with pytest.raises(ProfileError, match="link.uplink_share must be at most 100 %"):
        load_system("a100-40gb", ["link.uplink_share=150%"])


def test_host_optimizer_bandwidth_is_optional_and_stays_unset():
    # Not measured: None (the cost model then uses the memory roof), and absent from the YAML layout, so
    # that a plan file's hardware reads back the same; given: a bandwidth with its source, checked as one.
    plain = load_system("a100-40gb")
    assert plain.host.optimizer_bytes_per_s is None and "optimizer_bandwidth" not in plain.to_dict()["host"]
    given = load_system("a100-40gb", ["host.optimizer_bandwidth=12.5GB/s"])
    assert given.host.optimizer_bytes_per_s == 12.5e9
    assert given.host.source_of("optimizer_bandwidth").source.value == "override"
    for bad, match in (("-1GB/s", "must be positive"), ("3s", "must be in bytes/s")):
        with pytest.raises(ProfileError, match=f"host.optimizer_bandwidth {match}"):
            load_system("a100-40gb", [f"host.optimizer_bandwidth={bad}"])


def test_to_dict_values_are_unit_strings_with_sources():
    system = load_system("a100-40gb", ["link.h2d=12GB/s"])
    d = system.to_dict()
    assert d["kind"] == "system" and d["name"] == "a100-40gb" and d["overrides"] == ["link.h2d=12GB/s"]
    assert d["gpu"]["memory"] == {"value": "40 GiB", "source": "measured", "ref": system.gpu.source_of("memory").ref}
    assert d["link"]["h2d"] == {"value": "12 GB/s", "source": "override", "ref": "--set link.h2d=12GB/s"}
    assert d["link"]["pageable_factor"]["value"].endswith(" %")
    assert d["gpu"]["efficiency"]["name"] == system.gpu.curves.name  # curves inline, not by name
    assert isinstance(d["gpu"]["efficiency"]["compute"]["gemm"][0][0], str)
    assert d["disk"]["file"] == system.disk.file
    assert load_system(TOY).to_dict()["disk"] is None


def test_exact_quantity_reads_back_as_the_same_float():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.floats(min_value=1e-12, max_value=1e18, allow_nan=False, allow_infinity=False),
           st.sampled_from([d for d in Dimension if d is not Dimension.RATIO]))
    def exact(value, dimension):
        assert parse_quantity(exact_quantity(value, dimension), dimension, field="x") == value

    @settings(max_examples=300, deadline=None)
    @given(st.decimals(min_value="0.001", max_value="100", places=4))
    def ratio(percent):  # every ratio a profile can hold was parsed from "<number> %"
        value = parse_quantity(f"{percent} %", Dimension.RATIO, field="x")
        assert parse_quantity(exact_quantity(value, Dimension.RATIO), Dimension.RATIO, field="x") == value

    exact()
    ratio()


def test_summary_records_source_hash_overrides_and_resolved(tmp_path):
    bundled = load_system("t4", ["link.h2d=3GB/s"])
    s = bundled.summary()
    assert s["source"] == "t4" and s["content_sha256"] is None and s["overrides"] == ["link.h2d=3GB/s"]
    assert s["resolved"] == bundled.to_dict()
    path = tmp_path / "mine.yaml"
    path.write_bytes(TOY.read_bytes())
    s = load_system(path).summary()
    assert s["source"] == str(path.resolve())
    assert s["content_sha256"] == hashlib.sha256(TOY.read_bytes()).hexdigest()
    assert s["system"] == "toy" and s["gpu"] == "toy-gpu"
    json.dumps(s)  # JSON-friendly as it is


def test_source_and_hash_are_a_record_not_part_of_equality():
    a = load_system(TOY)
    b = dataclasses.replace(a, source="elsewhere", content_sha256="0" * 64)
    assert a == b and hash(a) == hash(b)


def test_system_from_dict_refuses_malformed_records():
    data = load_system(TOY).to_dict()
    with pytest.raises(ProfileError, match=r"system has unknown fields \['extra'\].*\(in plan\.json\)"):
        system_from_dict({**data, "extra": 1}, file="in plan.json")
    with pytest.raises(ProfileError, match=r"system.overrides must be a list of strings, got 'x'"):
        system_from_dict({**data, "overrides": "x"}, file="p")
    with pytest.raises(ProfileError, match=r"system.link is missing \(p\)"):
        system_from_dict({k: v for k, v in data.items() if k != "link"}, file="p")
    broken = copy.deepcopy(data)
    broken["gpu"]["memory"]["value"] = "lots"
    with pytest.raises(ProfileError, match=r"system.gpu.memory must look like '<number> <unit>'.*got 'lots' \(p\)"):
        system_from_dict(broken, file="p")
    with pytest.raises(ProfileError, match="a system must be a mapping, got list"):
        system_from_dict([], file="p")  # type: ignore[arg-type]
