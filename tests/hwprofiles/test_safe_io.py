"""Bounded reading: size, text and UTF-8 before anything is parsed; YAML without aliases, with a bound
on nodes and nesting; a mapping at the top level; every failure the caller's own error class."""

from __future__ import annotations

import os
import re

import pytest

from hwprofiles.safe_io import MiB, load_json, load_yaml, read_text, sha256_text


class CallerError(ValueError):
    """Stands for the calling package's error class (ProfileError, WorkloadError, PlanError)."""


def _read(path, max_bytes=1024):
    return read_text(path, what="profile file", max_bytes=max_bytes, error=CallerError)


# The classic "billion laughs": 9 levels of 9 aliases each, ~390 million strings from ~340 bytes.
ALIAS_BOMB = "\n".join(
    [f'a0: &a0 [{", ".join(["lol"] * 9)}]']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"


# ---------------------------------------------------------------------------------------------
# read_text
# ---------------------------------------------------------------------------------------------


def test_a_text_file_is_read(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: ü\n", encoding="utf-8")
    assert _read(path) == "name: ü\n"


def test_a_missing_file_is_the_callers_error(tmp_path):
    with pytest.raises(CallerError, match=r"^profile file not found: .*absent\.yaml$"):
        _read(tmp_path / "absent.yaml")


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(CallerError, match=r"profile file .* is a directory; a file is needed here"):
        _read(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(CallerError, match="is not a regular file"):
        _read(fifo)


def test_a_file_over_the_limit_is_refused_before_reading_and_names_the_limit(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (4 * MiB + 1))
    with pytest.raises(CallerError) as err:
        _read(path, max_bytes=4 * MiB)
    msg = str(err.value)
    assert "big.yaml" in msg and "is 4 MiB" in msg and "the limit for a profile file is 4 MiB" in msg
    with pytest.raises(CallerError, match="is 11 bytes; the limit for a profile file is 10 bytes"):
        path.write_bytes(b"a: 1234567\n")
        _read(path, max_bytes=10)


def test_a_file_at_the_limit_is_read(tmp_path):
    path = tmp_path / "exact.yaml"
    path.write_bytes(b"a: 1234567")
    assert _read(path, max_bytes=10) == "a: 1234567"


def test_binary_content_is_refused(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"kind: system\n\x00\x01\x02\xff")
    with pytest.raises(CallerError, match=r"weights\.yaml is binary \(a NUL byte at offset 13\); it must be UTF-8 text"):
        _read(path)


def test_non_utf8_text_is_refused_with_its_offset_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("kind: system\ndescription: café\n".encode("latin-1"))
    with pytest.raises(CallerError) as err:
        _read(path)
    assert re.search(r"latin1\.yaml is not UTF-8 text: byte 0xe9 at offset 29 \(line 2\) is invalid", str(err.value))


def test_sha256_is_the_hash_of_the_files_bytes(tmp_path):
    import hashlib

    path = tmp_path / "x.yaml"
    raw = "\ufeffname: naïve ✓\r\n".encode()
    path.write_bytes(raw)
    assert sha256_text(_read(path)) == hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------
# load_yaml
# ---------------------------------------------------------------------------------------------


def _yaml(text, **kwargs):
    return load_yaml(text, file="f.yaml", error=CallerError, **kwargs)


def test_yaml_mapping_loads():
    assert _yaml("a: 1\nb: [x, 2.5]\n") == {"a": 1, "b": ["x", 2.5]}


def test_the_alias_bomb_is_refused_at_its_first_anchor():
    assert len(ALIAS_BOMB) < 600
    with pytest.raises(CallerError, match=r"^YAML anchors are not allowed \(&a0 at line 1, column 5\): "
                                          r"write the value out in full \(f\.yaml\)$"):
        _yaml(ALIAS_BOMB)


def test_the_alias_bomb_in_a_free_text_field_is_refused():
    text = "kind: system\ndescription:\n" + "".join(f"  {line}\n" for line in ALIAS_BOMB.splitlines())
    with pytest.raises(CallerError, match=r"anchors are not allowed \(&a0 at line 3"):
        _yaml(text)


@pytest.mark.parametrize("text", ["base: &b {x: 1}\nother:\n  <<: *b\n", "a: &s hello\nb: *s\n", "a: !!str &x v\n"])
def test_any_anchor_or_merge_key_is_refused(text):
    with pytest.raises(CallerError, match="anchors are not allowed"):
        _yaml(text)


def test_an_alias_without_its_anchor_is_malformed():
    with pytest.raises(CallerError, match=r"(aliases are not allowed|malformed YAML).*f\.yaml"):
        _yaml("a: *nowhere\n")


def test_the_node_count_is_bounded_before_building():
    text = "a: [" + ", ".join(["1"] * 50) + "]\n"
    assert len(_yaml(text, max_nodes=60)["a"]) == 50
    with pytest.raises(CallerError, match=r"more than 40 nodes \(the limit at line 1, column \d+\) \(f\.yaml\)"):
        _yaml(text, max_nodes=40)


def test_the_nesting_is_bounded():
    deep = "a: " + "[" * 100 + "]" * 100 + "\n"
    with pytest.raises(CallerError, match=r"nesting is deeper than 64 levels at line 1"):
        _yaml(deep)
    assert _yaml("a: " + "[" * 10 + "]" * 10)["a"] == [[[[[[[[[[]]]]]]]]]]


def test_malformed_yaml_names_the_line_and_column():
    with pytest.raises(CallerError, match=r"^malformed YAML at line 2, column 2: did not find expected .* \(f\.yaml\)$"):
        _yaml("a: [1, 2\nb: 3\n")


def test_two_documents_are_malformed():
    with pytest.raises(CallerError, match="expected a single document in the stream but found another document"):
        _yaml("a: 1\n---\nb: 2\n")


def test_python_tags_are_refused_by_the_safe_loader():
    with pytest.raises(CallerError, match=r"could not determine a constructor.*python/object"):
        _yaml("a: !!python/object/apply:os.system ['true']\n")


def test_an_integer_python_cannot_read_is_the_callers_error():
    with pytest.raises(CallerError, match=r"YAML holds a value that cannot be read: .*digits.* \(f\.yaml\)"):
        _yaml("a: " + "9" * 5000 + "\n")


@pytest.mark.parametrize(("text", "got"), [("- 1\n- 2\n", "list"), ("", "an empty document"), ("just text", "str")])
def test_the_top_level_must_be_a_mapping(text, got):
    with pytest.raises(CallerError, match=f"^a profile must be a YAML mapping at the top level, got {got} \\(f\\.yaml\\)$"):
        _yaml(text, what="a profile")


# ---------------------------------------------------------------------------------------------
# load_json
# ---------------------------------------------------------------------------------------------


def _json(text):
    return load_json(text, file="c.json", error=CallerError, what="a model config")


def test_json_object_loads_and_a_repeated_key_keeps_the_last():
    assert _json('{"a": 1, "b": {"c": [1, 2]}, "a": 3}') == {"a": 3, "b": {"c": [1, 2]}}


def test_malformed_json_names_the_line_and_column():
    with pytest.raises(CallerError, match=r"^malformed JSON at line 2, column 1: Expecting value \(c\.json\)$"):
        _json('{"a":\n')


def test_json_nested_too_deep_is_the_callers_error():
    with pytest.raises(CallerError, match=r"JSON holds a value that cannot be read.*\(c\.json\)"):
        _json("[" * 200_000 + "]" * 200_000)


def test_json_integer_python_cannot_read_is_the_callers_error():
    with pytest.raises(CallerError, match=r"JSON holds a value that cannot be read: .*digits"):
        _json('{"a": ' + "9" * 5000 + "}")


def test_the_json_top_level_must_be_an_object():
    with pytest.raises(CallerError, match=r"^a model config must be a JSON object at the top level, got list \(c\.json\)$"):
        _json("[1, 2]")


# ---------------------------------------------------------------------------------------------
# Each package's loader reads through it and raises its own class
# ---------------------------------------------------------------------------------------------


def _loaders():
    from costmodel import WorkloadError, load_model
    from hwprofiles import ProfileError, load_system
    from solver import Plan, PlanError

    return [(load_system, ProfileError, "profile file", ".yaml"), (load_model, WorkloadError, "model config", ".json"),
            (Plan.load, PlanError, "plan file", ".json")]


@pytest.mark.parametrize(("content", "needle"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is binary (a NUL byte at offset 8); it must be UTF-8 text"),
    ('{"name": "caf\xe9"}'.encode("latin-1"),
     "is not UTF-8 text: byte 0xe9 at offset 13 (line 1) is invalid; save it as UTF-8"),
])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_loader_refuses_binary_and_non_utf8_files_with_its_own_error(tmp_path, content, needle, index):
    load, error, what, suffix = _loaders()[index]
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(error) as err:
        load(path if index != 1 else str(path))
    assert type(err.value) is error
    assert str(err.value) == f"{what} {path if index != 0 else path.resolve()} {needle}"


def test_a_model_folder_without_config_json_is_named(tmp_path):
    from costmodel import WorkloadError, load_model

    with pytest.raises(WorkloadError, match=r"^model folder .* has no config\.json; give a Hugging Face config\.json"):
        load_model(str(tmp_path))


def test_a_weights_file_given_as_a_model_config_is_refused_by_its_size(tmp_path):
    from costmodel import WorkloadError, load_model

    path = tmp_path / "model.json"
    with open(path, "wb") as fh:  # sparse: 5 MiB that take no disk
        fh.truncate(5 * MiB)
    with pytest.raises(WorkloadError, match=r"model config .*model\.json is 5 MiB; the limit for a model config is 4 MiB"):
        load_model(str(path))


def test_a_model_config_that_is_not_an_object_is_refused(tmp_path):
    from costmodel import WorkloadError, load_model

    path = tmp_path / "config.json"
    path.write_text("[]")
    with pytest.raises(WorkloadError, match=r"a model config must be a JSON object at the top level, got list"):
        load_model(str(tmp_path))
    path.write_text('{"model_type": "llama",')
    with pytest.raises(WorkloadError, match=r"malformed JSON at line 1, column 24: .*config\.json"):
        load_model(str(path))
