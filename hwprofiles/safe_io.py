"""Bounded reading of the text files tierplan is given: profiles, model configs and plans.

Every file a user names goes through :func:`read_text` (a size limit before anything is read, text
only, UTF-8 only) and then :func:`load_yaml` or :func:`load_json` (a mapping at the top level; in
YAML no anchors or aliases, and a bound on the nodes and the nesting before anything is built).
A 562-byte YAML "billion laughs" document in a free-text field expands to billions of nodes through
aliases: refusing aliases keeps the work in proportion to the bytes, and the byte limit bounds it.

This module imports nothing of tierplan's other packages: each caller passes its own error class
(``ProfileError``, ``WorkloadError``, ``PlanError``), so the CLI reports it as that package's error.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import yaml

MiB = 2**20
# A hand-written profile is a few KiB and a measured one some tens; a config.json a few KiB.
PROFILE_MAX_BYTES = 4 * MiB
CONFIG_MAX_BYTES = 4 * MiB
# A plan of an 80-layer model is ~120 KiB of JSON (its hardware record ~11 KiB of that).
PLAN_MAX_BYTES = 16 * MiB  # 13.5 MiB of plan JSON parsed to a 73 MiB peak (tracemalloc): far under 1 GiB
# YAML nodes are built as Python objects: a few hundred bytes and ~4 us each with libyaml (~20 us
# without). A measured profile has ~1,000 nodes, a YAML plan of an 80-layer model ~10,000.
DEFAULT_MAX_NODES = 100_000
DEFAULT_MAX_DEPTH = 64

ErrorClass = type[Exception]  # the caller's error class, built from one message

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: ~7x faster


def _size(n_bytes: float) -> str:
    return f"{n_bytes / MiB:.3g} MiB" if n_bytes >= MiB else f"{n_bytes:.0f} bytes"


def read_bytes(path: str | Path, *, what: str, max_bytes: int, error: ErrorClass) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, refused by its size before it is read
    (a missing file, a directory, a device or pipe, an oversize file each raise ``error`` naming the
    file and the rule). :func:`read_text` adds the text checks; binary inputs (``.npy``, ``.parquet``)
    use this directly."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {path} is a directory; a file is needed here")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file (a device, pipe or socket); a file is needed here")
    limit = f"the limit for a {what} is {_size(max_bytes)}"
    if info.st_size > max_bytes:
        raise error(f"{what} {path} is {_size(info.st_size)}; {limit}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} is over {_size(max_bytes)}; {limit}")
    return data


def read_text(path: str | Path, *, what: str, max_bytes: int, error: ErrorClass) -> str:
    """The text of a file, read only if it is a regular UTF-8 text file of at most ``max_bytes``.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        What the file is, for messages (``"profile file"``, ``"plan file"``, ``"model config"``).
    max_bytes : int
        The largest size accepted, in bytes; a larger file is refused before it is read.
    error : type
        The exception class to raise (the calling package's error class).

    Returns
    -------
    str
        The decoded text.

    Raises
    ------
    error
        The file is missing, not a regular file, unreadable, over ``max_bytes``, binary (holds a NUL
        byte) or not UTF-8; the message names the file and the rule.

    Examples
    --------
    >>> read_text("/nonexistent.yaml", what="profile file", max_bytes=1024, error=ValueError)
    Traceback (most recent call last):
    ...
    ValueError: profile file not found: /nonexistent.yaml
    """
    data = read_bytes(path, what=what, max_bytes=max_bytes, error=error)
    path = Path(path)
    nul = data.find(b"\0")
    if nul >= 0:
        raise error(f"{what} {path} is binary (a NUL byte at offset {nul}); it must be UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{what} {path} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
                    f"(line {line}) is invalid; save it as UTF-8") from None


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _check_events(text: str, *, file: str, error: ErrorClass, max_nodes: int, max_depth: int) -> None:
    """Walk the parser's events (nothing is built) and refuse anchors, aliases, too many nodes and
    too deep a nesting, at the first event that breaks the rule."""
    nodes = depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            raise error(f"YAML aliases are not allowed (*{event.anchor}{_where(event.start_mark)}): "
                        f"write the value out in full ({file})")
        if isinstance(event, yaml.NodeEvent):
            if event.anchor is not None:
                raise error(f"YAML anchors are not allowed (&{event.anchor}{_where(event.start_mark)}): "
                            f"write the value out in full ({file})")
            nodes += 1
            if nodes > max_nodes:
                raise error(f"YAML document has more than {max_nodes:,} nodes (the limit{_where(event.start_mark)}) "
                            f"({file})")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise error(f"YAML nesting is deeper than {max_depth} levels{_where(event.start_mark)} ({file})")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _mapping(data: Any, *, what: str, kind: str, file: str, error: ErrorClass) -> dict[str, Any]:
    if not isinstance(data, dict):
        got = "an empty document" if data is None else type(data).__name__
        raise error(f"{what} must be a {kind} at the top level, got {got} ({file})")
    return data


def load_yaml(text: str, *, file: str, error: ErrorClass, what: str = "a file",
              max_nodes: int = DEFAULT_MAX_NODES, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """Parse YAML text with the safe loader, refusing anchors and aliases, into a mapping.

    Parameters
    ----------
    text : str
        The YAML document (one).
    file : str
        The file it came from, for messages.
    error : type
        The exception class to raise.
    what : str
        What the document is, for the top-level message (``"a profile"``).
    max_nodes : int
        The most scalars, sequences and mappings accepted (checked before anything is built).
    max_depth : int
        The deepest nesting of sequences and mappings accepted.

    Returns
    -------
    dict
        The top-level mapping.

    Raises
    ------
    error
        Malformed YAML (with its line and column), an anchor or alias, too many nodes, too deep a
        nesting, a value Python cannot hold, or a top level that is not a mapping.

    Examples
    --------
    >>> load_yaml("a: 1", file="x.yaml", error=ValueError)
    {'a': 1}
    >>> load_yaml("a: &x [1]\\nb: *x", file="x.yaml", error=ValueError)
    Traceback (most recent call last):
    ...
    ValueError: YAML anchors are not allowed (&x at line 1, column 4): write the value out in full (x.yaml)
    """
    try:
        _check_events(text, file=file, error=error, max_nodes=max_nodes, max_depth=max_depth)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        if context and problem.startswith("but "):  # "expected a single document ... but found another"
            problem = f"{context} {problem}"
        raise error(f"malformed YAML{_where(mark)}: {problem} ({file})") from None
    except error:
        raise
    except (ValueError, OverflowError, RecursionError) as err:
        # e.g. an integer of more than 4300 digits (Python's int-from-text limit)
        raise error(f"YAML holds a value that cannot be read: {err} ({file})") from None
    return _mapping(data, what=what, kind="YAML mapping", file=file, error=error)


def load_json(text: str, *, file: str, error: ErrorClass, what: str = "a file") -> dict[str, Any]:
    """Parse JSON text into a mapping (a repeated key keeps its last value, as :func:`json.loads` does).

    Parameters
    ----------
    text : str
        The JSON document.
    file : str
        The file it came from, for messages.
    error : type
        The exception class to raise.
    what : str
        What the document is, for the top-level message (``"a model config"``).

    Returns
    -------
    dict
        The top-level object.

    Raises
    ------
    error
        Malformed JSON (with its line and column), nesting too deep to decode, a number Python cannot
        hold, or a top level that is not an object.

    Examples
    --------
    >>> load_json('{"a": 1, "a": 2}', file="x.json", error=ValueError)
    {'a': 2}
    >>> load_json('{"a": ', file="x.json", error=ValueError)
    Traceback (most recent call last):
    ...
    ValueError: malformed JSON at line 1, column 7: Expecting value (x.json)
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg} ({file})") from None
    except (ValueError, RecursionError) as err:
        # RecursionError: thousands of nested brackets; ValueError: an integer over 4300 digits
        raise error(f"JSON holds a value that cannot be read: {err} ({file})") from None
    return _mapping(data, what=what, kind="JSON object", file=file, error=error)


def sha256_text(text: str) -> str:
    """The SHA-256 of text as its UTF-8 bytes: for text from :func:`read_text`, the file's own hash
    (UTF-8 decoding and encoding are inverse), what ``sha256sum`` prints.

    >>> sha256_text("")
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = ["read_bytes", "CONFIG_MAX_BYTES", "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_NODES", "PLAN_MAX_BYTES", "PROFILE_MAX_BYTES",
           "load_json", "load_yaml", "read_text", "sha256_text"]
