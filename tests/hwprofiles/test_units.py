"""The one quantity parser: every dimension, decimal vs binary prefixes, and the error rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprofiles import Dimension, ProfileError, format_bytes, format_quantity, parse_quantity


@pytest.mark.parametrize(
    ("text", "dimension", "expected"),
    [
        # bytes: decimal prefixes are powers of 1000, binary ones powers of 1024
        ("512 B", Dimension.BYTES, 512.0),
        ("80 GB", Dimension.BYTES, 80e9),
        ("80 GiB", Dimension.BYTES, 80 * 2.0**30),  # 85_899_345_920
        ("1 KiB", Dimension.BYTES, 1024.0),
        ("3 MiB", Dimension.BYTES, 3 * 2.0**20),
        ("2 TiB", Dimension.BYTES, 2 * 2.0**40),
        ("1.5e3 MB", Dimension.BYTES, 1.5e9),  # 1500 * 1e6
        # bandwidth
        ("25 GB/s", Dimension.BANDWIDTH, 25e9),
        ("1 GiB/s", Dimension.BANDWIDTH, 2.0**30),
        ("10GB/s", Dimension.BANDWIDTH, 10e9),  # no space between number and unit
        ("  7 MB/s  ", Dimension.BANDWIDTH, 7e6),  # surrounding blanks
        # compute rate and work
        ("989 TFLOP/s", Dimension.COMPUTE, 989e12),
        ("1 PFLOP/s", Dimension.COMPUTE, 1e15),
        ("1 GFLOP", Dimension.FLOP, 1e9),
        ("100 MFLOP", Dimension.FLOP, 1e8),
        # time
        ("1 s", Dimension.TIME, 1.0),
        ("2 ms", Dimension.TIME, 2e-3),
        ("8 us", Dimension.TIME, 8e-6),
        ("5 ns", Dimension.TIME, 5e-9),
        # ratio
        ("70 %", Dimension.RATIO, 0.70),
        ("100 %", Dimension.RATIO, 1.0),
        ("+.5 %", Dimension.RATIO, 0.005),
    ],
)
def test_parses_each_dimension_to_si(text, dimension, expected):
    # rel 1e-12: one multiplication of a decimal literal by a power of ten or two.
    assert parse_quantity(text, dimension, field="f") == pytest.approx(expected, rel=1e-12)


def test_gb_and_gib_differ_by_the_binary_factor():
    gb = parse_quantity("1 GB", Dimension.BYTES, field="gpu.memory")
    gib = parse_quantity("1 GiB", Dimension.BYTES, field="gpu.memory")
    assert gb == 1_000_000_000
    assert gib == 1_073_741_824
    # 2**30 / 1e9 = 1.073741824
    assert gib / gb == pytest.approx(1.073741824, rel=1e-15)


@pytest.mark.parametrize("bare", [80, 80.0, "80", "2.5"])
def test_bare_number_is_an_error(bare):
    with pytest.raises(ProfileError) as err:
        parse_quantity(bare, Dimension.BYTES, field="gpu.memory", file="gpus/x.yaml")
    msg = str(err.value)
    assert "gpu.memory" in msg
    assert "gpus/x.yaml" in msg
    assert "80 GiB" in msg  # the message shows an example of the expected form


def test_bare_int_message_says_a_unit_is_needed():
    with pytest.raises(ProfileError, match="needs a unit"):
        parse_quantity(25, Dimension.BANDWIDTH, field="link.h2d")


@pytest.mark.parametrize("value", [None, True, ["1 GB"], {"value": "1 GB"}])
def test_non_string_values_are_errors(value):
    with pytest.raises(ProfileError, match="link.h2d"):
        parse_quantity(value, Dimension.BANDWIDTH, field="link.h2d")


@pytest.mark.parametrize("text", ["80 GB/h", "5 min", "1 kB", "1 gb", "1 GiFLOP/s", "1 Gbit/s"])
def test_unknown_unit_is_an_error_listing_valid_units(text):
    dimension = Dimension.BANDWIDTH if "/" in text else Dimension.BYTES
    with pytest.raises(ProfileError) as err:
        parse_quantity(text, dimension, field="link.h2d", file="links/x.yaml")
    msg = str(err.value)
    assert "unknown unit" in msg or "must be in" in msg
    assert "link.h2d" in msg and "links/x.yaml" in msg


def test_unknown_unit_message_lists_the_units_of_the_dimension():
    with pytest.raises(ProfileError) as err:
        parse_quantity("3 parsecs", Dimension.TIME, field="link.latency")
    msg = str(err.value)
    for unit in ("s", "ms", "us", "ns"):
        assert unit in msg


@pytest.mark.parametrize(
    ("text", "dimension"),
    [
        ("80 GB", Dimension.BANDWIDTH),  # bytes where bytes/s was meant
        ("25 GB/s", Dimension.BYTES),
        ("8 us", Dimension.BANDWIDTH),
        ("312 TFLOP/s", Dimension.FLOP),
        ("1 GFLOP", Dimension.COMPUTE),
        ("70 %", Dimension.TIME),
    ],
)
def test_wrong_dimension_is_an_error(text, dimension):
    with pytest.raises(ProfileError) as err:
        parse_quantity(text, dimension, field="x.y", file="f.yaml")
    msg = str(err.value)
    assert f"must be in {dimension.value}" in msg
    assert "x.y" in msg and "f.yaml" in msg


def test_negative_is_an_error_naming_field_rule_value_and_file():
    with pytest.raises(ProfileError) as err:
        parse_quantity("-3 GB/s", Dimension.BANDWIDTH, field="link.h2d", file="hwprofiles/systems/x.yaml")
    # STYLE.md's own example of the message.
    assert str(err.value) == "link.h2d must be positive, got '-3 GB/s' (hwprofiles/systems/x.yaml)"


def test_negative_is_an_error_even_where_zero_is_allowed():
    with pytest.raises(ProfileError, match="non-negative"):
        parse_quantity("-1 us", Dimension.TIME, field="link.latency", allow_zero=True)


def test_zero_needs_allow_zero():
    with pytest.raises(ProfileError, match="must be positive"):
        parse_quantity("0 GiB", Dimension.BYTES, field="gpu.memory")
    assert parse_quantity("0 us", Dimension.TIME, field="link.latency", allow_zero=True) == 0.0


def test_overflow_to_infinity_is_an_error():
    # 1e400 overflows a double: the value is not finite.
    with pytest.raises(ProfileError, match="gpu.memory"):
        parse_quantity("1e400 GB", Dimension.BYTES, field="gpu.memory")


def test_message_without_file_has_no_empty_parentheses():
    with pytest.raises(ProfileError) as err:
        parse_quantity("1 GB", Dimension.TIME, field="link.latency")
    assert "()" not in str(err.value)


@settings(max_examples=25, deadline=None)
@given(number=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False),
       prefix=st.sampled_from(["", "K", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"]))
def test_bytes_scale_by_the_prefix_factor(number, prefix):
    factor = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
              "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}[prefix]
    text = f"{number!r} {prefix}B"
    value = parse_quantity(text, Dimension.BYTES, field="f")
    # rel 1e-12: repr round-trips the float exactly; only the one multiplication rounds.
    assert value == pytest.approx(number * factor, rel=1e-12)
    # the same number as bandwidth gives the same SI value
    assert parse_quantity(f"{number!r} {prefix}B/s", Dimension.BANDWIDTH, field="f") == value


def test_format_bytes_uses_binary_units():
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    assert format_bytes(1536) == "1.50 KiB"  # 1536 / 1024
    assert format_bytes(12) == "12 B"


def test_format_quantity_round_trips_through_the_parser():
    for value, dimension in ((2.5e10, Dimension.BANDWIDTH), (9.89e14, Dimension.COMPUTE), (8e-6, Dimension.TIME),
                             (0.7, Dimension.RATIO)):
        text = format_quantity(value, dimension)
        # 3-4 significant digits are printed, so the round trip holds to 1e-3.
        assert math.isclose(parse_quantity(text, dimension, field="f"), value, rel_tol=1e-3)
