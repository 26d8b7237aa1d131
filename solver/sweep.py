"""What-if sweeps: plan a grid of (model, hardware, overrides, prompt, batch) points in parallel.

Points run on any ``concurrent.futures.Executor`` (a local process pool by default; a Dask
``client.get_executor()`` or Ray's for a cluster). Each finished point is appended at once to a
JSON-lines checkpoint beside the output, so an interrupted sweep loses nothing and ``resume``
skips every point already there (a point that errored runs again). The result is a pandas
DataFrame, one row per point; ``df.attrs["errors"]`` (or :func:`error_count`) counts the points whose
row has ``status == "error"``, with the reason in its ``error`` column.

Every input is checked before any point runs (:func:`check_points`, :func:`check_output`): an unknown
model or system, a bad override or a folder that cannot be written fails at once, not after the work.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from costmodel import KvWorkload, WorkloadError, load_model, load_rec_model
from costmodel.embeddings import Optimizer
from costmodel.embeddings_cost import MAX_BATCH as EMB_MAX_BATCH
from costmodel.kv import limits
from hwprofiles import SCHEMA_DIMENSIONS, ProfileError, load_system, parse_quantity
from solver.errors import PlanError
from solver.kv import BASELINES, OBJECTIVES, plan_kv

OUTPUT_SUFFIXES = (".parquet", ".csv")
# A bound on a sweep's size, so that a typo (``:1000000000``) is refused at once rather than after
# minutes of building points: a point plans in about 40 ms on one core, so this is days of work.
MAX_POINTS = 1_000_000
# The point fields bounded by the cost model's workload limits (``TIERPLAN_LIMITS``).
_LIMIT_OF = {"prompt": "prompt_len", "batch": "batch", "gen": "gen_len"}


FAMILIES = ("kv", "embeddings", "training")
# The options of an embeddings point (``params``), with what each accepts.
EMBEDDINGS_PARAMS = {"optimizer": tuple(o.value for o in Optimizer), "prefetch": (False, True),
                     "cache_kind": ("static", "lru")}


# The options of a training point (``params``): the TrainWorkload fields a sweep may set, with a check.
TRAINING_PARAMS = {"seq_len": int, "micro_batch": int, "grad_accum": int, "gpus": int, "zero_stage": int,
                   "precision": str, "optimizer": str, "overlap": str, "pin_memory": bool,
                   "grad_clip": bool, "fused_attention": bool, "dropout": bool, "interconnect_bytes_per_s": float, "kernels": str,
                   "snapshot_every": int}


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    """One point of a sweep: a family's workload on one system with its overrides.

    ``prompt`` and ``gen`` are the KV family's (0 for others); ``params`` holds a family's other
    options as sorted ``(name, value)`` pairs (embeddings: :data:`EMBEDDINGS_PARAMS`).
    """

    model: str
    hw: str
    overrides: tuple[str, ...] = ()
    prompt: int = 0
    batch: int
    gen: int = 0
    objective: str = "throughput"
    allow_long_context: bool = False
    family: str = "kv"
    params: tuple[tuple[str, object], ...] = ()

    def key(self) -> str:
        """A stable identity, used to skip finished points on resume (a KV point's is what it was
        before points had a family, so older checkpoints resume)."""
        d = asdict(self)
        if self.family == "kv" and not self.params:
            del d["family"], d["params"]
        return json.dumps(d, sort_keys=True)


_RANGE = re.compile(r"^(?P<a>[\d.eE+-]+)\s*(?P<ua>[A-Za-z/%]+)\.\.(?P<b>[\d.eE+-]+)\s*(?P<ub>[A-Za-z/%]+)(?::(?P<n>\d+))?$")


def parse_vary(text: str) -> tuple[str, list[str]]:
    """``part.field=a..b:n`` (n values evenly spaced from a to b, same unit) or ``part.field=v1,v2``.

    >>> parse_vary("link.h2d=8GB/s..64GB/s:8")
    ('link.h2d', ['8GB/s', '16GB/s', '24GB/s', '32GB/s', '40GB/s', '48GB/s', '56GB/s', '64GB/s'])
    >>> parse_vary("host.memory=64GiB,208GiB")
    ('host.memory', ['64GiB', '208GiB'])
    """
    field, sep, spec = text.partition("=")
    field, spec = field.strip(), spec.strip()
    if not sep or not field or not spec:
        raise PlanError(f"--vary must read 'part.field=a..b:n' or 'part.field=v1,v2', got {text!r}")
    if field not in SCHEMA_DIMENSIONS:
        raise PlanError(f"--vary field must be one of {sorted(SCHEMA_DIMENSIONS)}, got {field!r}")
    m = _RANGE.match(spec)
    if m:
        if m["ua"] != m["ub"]:
            raise PlanError(f"--vary range ends must share a unit, got {m['ua']!r} and {m['ub']!r} in {text!r}")
        n = int(m["n"] or 2)
        if n < 2:
            raise PlanError(f"--vary range needs at least 2 points, got {n} in {text!r}")
        if n > MAX_POINTS:
            raise PlanError(f"--vary range must have at most {MAX_POINTS:,} points, got {n:,} in {text!r}")
        a, b = float(m["a"]), float(m["b"])
        values = [f"{v:g}{m['ua']}" for v in np.linspace(a, b, n)]
    else:
        values = [v.strip() for v in spec.split(",") if v.strip()]
    for v in values:  # fail now, with the field named, not inside a worker
        parse_quantity(v, SCHEMA_DIMENSIONS[field], field=field, file=f"--vary {text}",
                       allow_zero=field.endswith("latency"))
    return field, values


def _duplicate(values: Iterable) -> object | None:
    seen: set = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _check_names(names: Sequence[str], what: str) -> None:
    if isinstance(names, str):
        raise PlanError(f"sweep {what}s must be a list of names, got the string {names!r}")
    names = list(names)
    if not names:
        raise PlanError(f"a sweep needs at least one {what}, got none")
    for name in names:
        if not isinstance(name, str):
            raise PlanError(f"sweep {what} names must be strings, got {name!r} in {names!r}")
        if not name.strip():
            raise PlanError(f"sweep {what} names must not be empty, got {names!r} (a trailing or doubled comma?)")
    dup = _duplicate(names)
    if dup is not None:
        raise PlanError(f"sweep {what} {dup!r} is listed twice in {names!r}")


def _check_count(value: object, what: str, *, numpy: bool = True) -> None:
    kinds = (int, np.integer) if numpy else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise PlanError(f"sweep {what} must be a positive integer, got {value!r}")


def _check_counts(values: Sequence[int], what: str) -> None:
    values = list(values)
    if not values:
        raise PlanError(f"a sweep needs at least one {what}, got none")
    for v in values:
        _check_count(v, what)
    dup = _duplicate(values)
    if dup is not None:
        raise PlanError(f"sweep {what} {dup!r} is listed twice in {values!r}")


def split_names(text: str, *, option: str) -> list[str]:
    """A comma-separated command-line list of names, refusing empty ones.

    Examples
    --------
    >>> split_names("llama-2-7b, gpt2", option="--model")
    ['llama-2-7b', 'gpt2']
    >>> split_names("llama-2-7b,", option="--model")
    Traceback (most recent call last):
    ...
    solver.errors.PlanError: --model must be comma-separated names, got an empty name in 'llama-2-7b,' ...
    """
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise PlanError(f"{option} must be comma-separated names, got an empty name in {text!r} "
                        "(a trailing or doubled comma?)")
    return names


def grid(models: Sequence[str], systems: Sequence[str], *, prompts: Sequence[int], batches: Sequence[int], gen: int,
         vary: Sequence[tuple[str, Sequence[str]]] = (), fixed: Sequence[str] = (),
         objective: str = "throughput", allow_long_context: bool = False) -> list[SweepPoint]:
    """Every combination of the inputs, as points.

    Only the shape of the inputs is checked here (no empty, repeated or non-positive values, no field
    set twice); :func:`check_points` loads each model and system, and :func:`sweep` calls it.

    Parameters
    ----------
    models, systems : sequence of str
        Bundled names or paths (a ``config.json``; a system YAML).
    prompts, batches : sequence of int
        Prompt lengths in tokens; the largest batch to consider, in sequences.
    gen : int
        Generated tokens per sequence.
    vary : sequence of (field, values)
        From :func:`parse_vary`; every combination of the values is a point.
    fixed : sequence of str
        ``part.field=value`` overrides applied to every point (``--set``).

    Raises
    ------
    PlanError
        An empty list or name, a value listed twice, a non-positive or non-integer length, or a field
        both fixed and varied (the later would silently win).

    Examples
    --------
    >>> len(grid(["llama-2-7b"], ["a100-40gb"], prompts=[128, 512], batches=[1], gen=8))
    2
    """
    _check_names(models, "model")
    _check_names(systems, "system")
    _check_counts(prompts, "prompt")
    _check_counts(batches, "batch")
    _check_count(gen, "gen")
    if objective not in OBJECTIVES:
        raise PlanError(f"sweep objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    combos, fields = _override_combos(vary, fixed)
    size = len(models) * len(systems) * len(prompts) * len(batches) * len(combos)
    if size > MAX_POINTS:
        raise PlanError(f"a sweep must have at most {MAX_POINTS:,} points, got {size:,} "
                        f"({len(models)} models x {len(systems)} systems x {len(prompts)} prompts x "
                        f"{len(batches)} batches x {' x '.join(str(len(v)) for _, v in vary) or 1} --vary values)")
    return [SweepPoint(model=m, hw=h, overrides=tuple(fixed) + tuple(f"{f}={v}" for f, v in zip(fields, combo)),
                       prompt=int(p), batch=int(b), gen=int(gen), objective=objective,
                       allow_long_context=allow_long_context)
            for m, h, combo, p, b in itertools.product(models, systems, combos, prompts, batches)]


def grid_embeddings(models: Sequence[str], systems: Sequence[str], *, batches: Sequence[int],
                    vary: Sequence[tuple[str, Sequence[str]]] = (), fixed: Sequence[str] = (),
                    params: Mapping[str, object] | None = None) -> list[SweepPoint]:
    """Every combination of recommendation models, systems, batches and ``--vary`` values, as points
    of the embeddings family; ``params`` (:data:`EMBEDDINGS_PARAMS`) apply to every point.

    Examples
    --------
    >>> pts = grid_embeddings(["criteo-kaggle"], ["a100-40gb"], batches=[4096, 16384],
    ...                       vary=[("gpu.memory", ["16GiB", "40GiB"])], params={"prefetch": True})
    >>> len(pts), pts[0].family, pts[0].params
    (4, 'embeddings', (('prefetch', True),))
    """
    _check_names(models, "model")
    _check_names(systems, "system")
    _check_counts(batches, "batch")
    params = dict(params or {})
    for name, value in params.items():
        if name not in EMBEDDINGS_PARAMS:
            raise PlanError(f"sweep embeddings option must be one of {', '.join(EMBEDDINGS_PARAMS)}, got {name!r}")
        if value not in EMBEDDINGS_PARAMS[name] or isinstance(value, bool) != isinstance(EMBEDDINGS_PARAMS[name][0], bool):
            raise PlanError(f"sweep embeddings {name} must be one of {list(EMBEDDINGS_PARAMS[name])}, got {value!r}")
    combos, fields = _override_combos(vary, fixed)
    size = len(models) * len(systems) * len(batches) * len(combos)
    if size > MAX_POINTS:
        raise PlanError(f"a sweep must have at most {MAX_POINTS:,} points, got {size:,}")
    pairs = tuple(sorted(params.items()))
    return [SweepPoint(model=m, hw=h, overrides=tuple(fixed) + tuple(f"{f}={v}" for f, v in zip(fields, combo)),
                       batch=int(b), family="embeddings", params=pairs)
            for m, h, combo, b in itertools.product(models, systems, combos, batches)]


def grid_training(models: Sequence[str], systems: Sequence[str], *, seqs: Sequence[int], micro_batches: Sequence[int],
                  vary: Sequence[tuple[str, Sequence[str]]] = (), fixed: Sequence[str] = (),
                  params: Mapping[str, object] | None = None) -> list[SweepPoint]:
    """Every combination of models, systems, sequence lengths, micro-batches and ``--vary`` values, as
    points of the training family; ``params`` (:data:`TRAINING_PARAMS`) apply to every point.

    Examples
    --------
    >>> pts = grid_training(["llama-2-7b"], ["a100-40gb"], seqs=[2048], micro_batches=[1, 4],
    ...                     vary=[("link.h2d", ["12GB/s", "64GB/s"])])
    >>> len(pts), pts[0].family, dict(pts[0].params)["micro_batch"]
    (4, 'training', 1)
    """
    _check_names(models, "model")
    _check_names(systems, "system")
    _check_counts(seqs, "seq")
    _check_counts(micro_batches, "micro-batch")
    params = dict(params or {})
    for name, value in params.items():
        if name not in TRAINING_PARAMS or name in ("seq_len", "micro_batch"):
            raise PlanError(f"sweep training option must be one of "
                            f"{', '.join(k for k in TRAINING_PARAMS if k not in ('seq_len', 'micro_batch'))}, got {name!r}")
        _check_training_param(name, value, "sweep training")
    combos, fields = _override_combos(vary, fixed)
    size = len(models) * len(systems) * len(seqs) * len(micro_batches) * len(combos)
    if size > MAX_POINTS:
        raise PlanError(f"a sweep must have at most {MAX_POINTS:,} points, got {size:,}")
    return [SweepPoint(model=m, hw=h, overrides=tuple(fixed) + tuple(f"{f}={v}" for f, v in zip(fields, combo)),
                       batch=int(mb), family="training",
                       params=tuple(sorted({**params, "seq_len": int(sq), "micro_batch": int(mb)}.items())))
            for m, h, combo, sq, mb in itertools.product(models, systems, combos, seqs, micro_batches)]


def _check_training_param(name: str, value: object, what: str) -> None:
    kind = TRAINING_PARAMS[name]
    zero_ok = name == "snapshot_every"  # 0: no snapshot
    ok = (isinstance(value, bool) if kind is bool else isinstance(value, str) if kind is str
          else (isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if zero_ok else value > 0)
                and (kind is float or float(value).is_integer())))
    if not ok:
        rule = ("true or false" if kind is bool else "text" if kind is str
                else "0 or a positive integer" if zero_ok else "positive")
        raise PlanError(f"{what} {name} must be {rule}, got {value!r}")


def _override_combos(vary: Sequence[tuple[str, Sequence[str]]], fixed: Sequence[str]) -> tuple[list[tuple], list[str]]:
    """The ``--vary`` value combinations and their fields, once both are checked."""
    for f, vals in vary:
        if not list(vals):
            raise PlanError(f"sweep --vary {f} has no values")
        dup = _duplicate(vals)
        if dup is not None:
            raise PlanError(f"sweep --vary {f} lists {dup!r} twice in {list(vals)!r}")
    for ov in fixed:
        if not isinstance(ov, str) or "=" not in ov:
            raise PlanError(f"sweep --set must read 'part.field=value' or 'part=name', got {ov!r}")
    set_fields = [ov.partition("=")[0].strip() for ov in fixed] + [f for f, _ in vary]
    dup = _duplicate(set_fields)
    if dup is not None:
        raise PlanError(f"sweep sets {dup!r} more than once (--set {list(fixed)!r}, --vary {[f for f, _ in vary]!r}); "
                        "the later would silently win")
    n_combos = int(np.prod([len(v) for _, v in vary]))
    if n_combos > MAX_POINTS:
        raise PlanError(f"a sweep must have at most {MAX_POINTS:,} points, got {n_combos:,} --vary combinations")
    return list(itertools.product(*[vals for _, vals in vary])) or [()], [f for f, _ in vary]


def check_points(points: Sequence[SweepPoint]) -> None:
    """Refuse a sweep that would fail before its work, not inside it.

    Loads each distinct model once and each distinct (system, overrides) once: milliseconds each.
    A point that is valid but cannot be planned (a prompt past the model's context, no plan that
    fits) is not refused here; its row says why.

    Raises
    ------
    PlanError
        No points; a point with an empty name, a non-positive or non-integer prompt, batch or gen, an
        unknown objective; two identical points; a model that does not load (the message lists the
        bundled ones); a system or override that does not load (the ProfileError's message).

    Examples
    --------
    >>> check_points(grid(["llama-9"], ["a100-40gb"], prompts=[128], batches=[1], gen=8))
    Traceback (most recent call last):
    ...
    solver.errors.PlanError: sweep model: unknown model 'llama-9'; bundled models are: ...
    """
    points = list(points)
    if not points:
        raise PlanError("the sweep has no points: it needs at least one model, system, prompt, batch and --vary value")
    if len(points) > MAX_POINTS:
        raise PlanError(f"a sweep must have at most {MAX_POINTS:,} points, got {len(points):,}")
    try:
        bounds = limits()
    except WorkloadError as err:
        raise PlanError(f"sweep: {err}") from err
    seen: dict[str, int] = {}
    for i, p in enumerate(points):
        if not isinstance(p, SweepPoint):
            raise PlanError(f"sweep point {i} must be a SweepPoint, got {type(p).__name__}")
        for what in ("model", "hw"):
            value = getattr(p, what)
            if not isinstance(value, str) or not value.strip():
                raise PlanError(f"sweep point {i} {what} must be a non-empty name, got {value!r}")
        if p.family not in FAMILIES:
            raise PlanError(f"sweep point {i} family must be one of {', '.join(FAMILIES)}, got {p.family!r}")
        if p.family == "kv":
            for what, limit in _LIMIT_OF.items():
                value = getattr(p, what)
                _check_count(value, f"point {i} {what}", numpy=False)
                if value > bounds[limit]:
                    raise PlanError(f"sweep point {i} {what} must be at most {bounds[limit]:,} (a bound on the "
                                    f"planner's work), got {value:,}; raise it with TIERPLAN_LIMITS=\"{limit}=...\"")
            if p.params:
                raise PlanError(f"sweep point {i} is a kv point; params are for other families, got {p.params!r}")
        elif p.family == "training":
            if not isinstance(p.params, tuple) or not all(isinstance(kv, tuple) and len(kv) == 2 for kv in p.params):
                raise PlanError(f"sweep point {i} params must be a tuple of (name, value) pairs, got {p.params!r}")
            given = dict(p.params)
            for name in ("seq_len", "micro_batch"):
                if name not in given:
                    raise PlanError(f"sweep point {i} is a training point without {name} in its params")
            for name, value in p.params:
                if name not in TRAINING_PARAMS:
                    raise PlanError(f"sweep point {i} option {name!r} is not one of {', '.join(TRAINING_PARAMS)}")
                _check_training_param(name, value, f"sweep point {i}")
        else:
            _check_count(p.batch, f"point {i} batch", numpy=False)
            if p.batch > EMB_MAX_BATCH:
                raise PlanError(f"sweep point {i} batch must be at most {EMB_MAX_BATCH:,}, got {p.batch:,}")
            if p.prompt or p.gen:
                raise PlanError(f"sweep point {i} is an embeddings point: prompt and gen must be 0, got "
                                f"{p.prompt} and {p.gen}")
            if not isinstance(p.params, tuple) or not all(isinstance(kv, tuple) and len(kv) == 2 for kv in p.params):
                raise PlanError(f"sweep point {i} params must be a tuple of (name, value) pairs, got {p.params!r}")
            for name, value in p.params:
                if name not in EMBEDDINGS_PARAMS or value not in EMBEDDINGS_PARAMS[name]:
                    raise PlanError(f"sweep point {i} option {name}={value!r} is not one of "
                                    f"{', '.join(f'{k} in {list(v)}' for k, v in EMBEDDINGS_PARAMS.items())}")
        if not isinstance(p.overrides, tuple) or not all(isinstance(o, str) for o in p.overrides):
            raise PlanError(f"sweep point {i} overrides must be a tuple of 'part.field=value' strings, "
                            f"got {p.overrides!r}")
        if p.objective not in OBJECTIVES:
            raise PlanError(f"sweep point {i} objective must be one of {list(OBJECTIVES)}, got {p.objective!r}")
        key = p.key()
        if key in seen:
            raise PlanError(f"sweep points {seen[key]} and {i} are the same point: {key}")
        seen[key] = i
    for family, model in dict.fromkeys((p.family, p.model) for p in points):
        try:
            (load_rec_model if family == "embeddings" else load_model)(model)
        except WorkloadError as err:
            raise PlanError(f"sweep model: {err}") from err
    for hw, overrides in dict.fromkeys((p.hw, p.overrides) for p in points):
        try:
            load_system(hw, overrides)
        except ProfileError as err:
            with_ = f" with {', '.join(overrides)}" if overrides else ""
            raise PlanError(f"sweep system {hw!r}{with_}: {err}") from err


def _check_writable(path: Path, what: str) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise PlanError(f"{what} folder {str(folder)!r} does not exist or is not a folder ({path})")
    if path.is_dir():
        raise PlanError(f"{what} {str(path)!r} is a folder, not a file")
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(folder, os.W_OK | os.X_OK):
        raise PlanError(f"{what} {str(path)!r} is not writable by this user")


def check_output(path: str | Path, *, suffixes: Sequence[str] | None = OUTPUT_SUFFIXES,
                 what: str = "sweep output") -> Path:
    """Refuse an output that could not be written, before any work: an unknown suffix, a folder that
    does not exist, a path that is a folder, or one this user cannot write.

    Parameters
    ----------
    path : path
        The file to be written.
    suffixes : sequence of str or None
        The accepted suffixes, lower case (default ``.parquet`` and ``.csv``; pass ``(".png",)`` for a
        plot; None accepts any).
    what : str
        How the message names the file (``"--plot"``).

    Returns
    -------
    Path

    Examples
    --------
    >>> check_output("study.xlsx")
    Traceback (most recent call last):
    ...
    solver.errors.PlanError: sweep output must end in .parquet or .csv, got 'study.xlsx'
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise PlanError(f"{what} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    _check_writable(path, what)
    return path


def _base_row(point: SweepPoint) -> dict:
    if point.family == "kv":
        row: dict = {"model": point.model, "hw": point.hw, "prompt": point.prompt, "max_batch": point.batch,
                     "gen": point.gen, "objective": point.objective, "overrides": ",".join(point.overrides)}
    elif point.family == "training":
        row = {"family": point.family, "model": point.model, "hw": point.hw, **dict(point.params),
               "overrides": ",".join(point.overrides)}
    else:
        row = {"family": point.family, "model": point.model, "hw": point.hw, "batch": point.batch,
               **dict(point.params), "overrides": ",".join(point.overrides)}
    for ov in point.overrides:
        field, _, value = ov.partition("=")
        row[field] = value
    return row


def _bug_message(err: Exception) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    at = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return f"internal error {type(err).__name__}: {err}{at} (a bug; please report it)"


def run_point(point: SweepPoint) -> dict:
    """Plan one point and flatten the plan into a row (module-level so process pools can pickle it).

    Never raises for one point's failure: the row gets ``status: "error"`` and ``error``, our error
    classes' message, or for any other exception (a bug) its type, message and where it was raised.
    """
    row = _base_row(point)
    start = time.perf_counter()
    try:
        for ov in point.overrides:  # kept on an error row too: a plot's x axis reads them
            field, _, value = ov.partition("=")
            if field in SCHEMA_DIMENSIONS:
                row[f"{field}_si"] = parse_quantity(value, SCHEMA_DIMENSIONS[field], field=field,
                                                    allow_zero=field.endswith("latency"))
        row.update(_plan_columns(point))  # all of a plan's columns or none
    except (ProfileError, WorkloadError, PlanError) as err:
        row.update({"status": "error", "error": str(err)})
    except Exception as err:  # a bug in one point must not kill the sweep: the row keeps what broke
        row.update({"status": "error", "error": _bug_message(err)})
    row["plan_time_s"] = time.perf_counter() - start
    row["key"] = point.key()
    return row


def _plan_columns(point: SweepPoint) -> dict:
    if point.family == "embeddings":
        return _embeddings_columns(point)
    if point.family == "training":
        return _training_columns(point)
    system = load_system(point.hw, point.overrides)
    wl = KvWorkload(model=load_model(point.model), batch=point.batch, prompt_len=point.prompt, gen_len=point.gen,
                    allow_long_context=point.allow_long_context)
    plan = plan_kv(wl, system, objective=point.objective, simulate=False)
    row: dict = {"status": plan.status,
                 "solve_time_s": plan.solver["solve_time_s"], "backend": plan.solver["backend"],
                 "solves": plan.solver["solves"], "lp_solves": plan.solver["lp_solves"],
                 "batches_pruned": plan.solver["batches_pruned"],
                 "explanation": plan.explanation}
    if plan.predicted:
        p = plan.predicted
        row.update({k: p[k] for k in ("batch", "prefill_s", "step_time_s", "decode_s", "tokens_per_s",
                                      "decode_tokens_per_s")})
        row.update({k: plan.memory[k] for k in ("gpu_bytes", "host_bytes", "disk_bytes")})
        n = len(plan.layers)
        for what in ("weights", "kv"):
            for tier in ("gpu", "host", "disk"):
                row[f"{what}_{tier}_share"] = sum(e[what][tier] for e in plan.layers) / n
        tok = [e["tokens_per_step"] for e in plan.layers]
        total = sum(t["transferred"] + t["recomputed"] + t["cpu_attended"] for t in tok)
        # Shares of the offloaded KV tokens (kv_host_share + kv_disk_share say how much is offloaded).
        for name, key in (("transfer", "transferred"), ("recompute", "recomputed"), ("cpu", "cpu_attended")):
            row[f"offloaded_{name}_share"] = sum(t[key] for t in tok) / total if total else 0.0
        row["activations_on_host_share"] = sum(e["activations_on_host"] for e in plan.layers) / n
    for name in BASELINES:
        b = plan.baselines.get(name, {})
        row[f"speedup_{name}"] = b.get("speedup", float("nan"))
        row[f"{name}_tokens_per_s"] = b["predicted"]["tokens_per_s"] if b.get("status") == "feasible" else float("nan")
    return row


def _embeddings_columns(point: SweepPoint) -> dict:
    """An embeddings point's plan as columns: the envelope's (status, solver, memory per tier,
    ``speedup_<baseline>``) and the family's (samples/s, stages, placement counts, cached rows)."""
    import dataclasses as _dc

    from costmodel.embeddings_cost import BASELINES as EMB_BASELINES, EmbWorkload
    from solver.embeddings import plan_embeddings
    from solver.embeddings_plan import to_plan

    params = dict(point.params)
    system = load_system(point.hw, point.overrides)
    model = load_rec_model(point.model)
    if "optimizer" in params:
        model = _dc.replace(model, table_optimizer=Optimizer(params["optimizer"]))
    wl = EmbWorkload(model=model, batch=point.batch, prefetch=bool(params.get("prefetch", False)))
    kind = params.get("cache_kind", "static")
    plan = to_plan(wl, system, plan_embeddings(wl, system, cache_kind=kind), cache_kind=kind)
    row: dict = {"status": plan.status, "selected_from": plan.solver["selected_from"],
                 "solve_time_s": plan.solver["solve_time_s"], "explanation": plan.explanation}
    if plan.predicted:
        p = plan.predicted
        row.update({"samples_per_s": p["samples_per_s"], "iteration_s": p["iteration_s"],
                    **{f"{k}_s": v for k, v in p["stage_s"].items()}})
        row.update({k: plan.memory[k] for k in ("gpu_bytes", "host_bytes", "disk_bytes")})
        for placement in ("gpu", "cache", "uvm", "cpu"):
            row[f"tables_{placement}"] = sum(u["placement"] == placement for u in plan.units)
        row["cache_rows"] = sum(u["cache_rows"] for u in plan.units)
        row["cpu_updated_tables"] = sum(u["update_on"] == "cpu" for u in plan.units)
        row["prefetched_tables"] = sum(bool(u["prefetched"]) for u in plan.units)
    for name in EMB_BASELINES:
        b = plan.baselines.get(name, {})
        row[f"speedup_{name}"] = b.get("speedup", float("nan"))
        row[f"{name}_samples_per_s"] = (b["predicted"]["samples_per_s"] if b.get("status") == "feasible"
                                        else float("nan"))
    return row


def _training_columns(point: SweepPoint) -> dict:
    """A training point's plan as columns: the envelope's and the family's (tokens/s, MFU, phases, how
    many layers step on the CPU, keep or recompute their activations, keep states off the GPU)."""
    from costmodel.training import BASELINES as TRAIN_BASELINES, TrainWorkload
    from solver.training import plan_training
    from solver.training_plan import to_plan

    system = load_system(point.hw, point.overrides)
    params = dict(point.params)
    stages = None if "zero_stage" in params else (2, 3)
    wl = TrainWorkload(model=load_model(point.model), **{"zero_stage": 2, **params})
    plan = to_plan(wl, system, plan_training(wl, system, zero_stages=stages))
    row: dict = {"status": plan.status, "selected_from": plan.solver["selected_from"], "zero_stage": plan.workload["zero_stage"],
                 "solve_time_s": plan.solver["solve_time_s"], "explanation": plan.explanation}
    if plan.predicted:
        p = plan.predicted
        row.update({k: p[k] for k in ("tokens_per_s", "mfu", "iteration_s", "forward_s", "backward_s", "step_s")})
        row.update({k: plan.memory[k] for k in ("gpu_bytes", "host_bytes", "disk_bytes")})
        n = len(plan.units)
        row["cpu_step_share"] = sum(u["step"] == "cpu" for u in plan.units) / n
        for action in ("keep", "recompute", "selective", "offload"):
            row[f"act_{action}_share"] = sum(u["activations"] == action for u in plan.units) / n
        for what in ("params", "master", "moments"):
            row[f"{what}_off_gpu_share"] = sum(u[what] != "gpu" for u in plan.units) / n
    names = set(TRAIN_BASELINES) - {"twin-flow"}
    for name, b in plan.baselines.items():
        if name.partition(":")[0] in names or "+" in name:
            row[f"speedup_{name}"] = b.get("speedup", float("nan"))
    return row


def run_points(points: Sequence[SweepPoint]) -> list[dict]:
    """Several points in one task: a process pool's per-task cost (pickling, scheduling) is about a
    tenth of a point's own, so points travel in small chunks."""
    return [run_point(p) for p in points]


def error_count(df) -> int:
    """How many rows of a sweep table have ``status == "error"`` (also ``df.attrs["errors"]``)."""
    return int((df["status"] == "error").sum()) if "status" in df.columns else 0


def checkpoint_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial.jsonl")


def _read_table(output: Path) -> list[dict]:
    """The rows of a finished sweep table, or a PlanError naming the file."""
    import pandas as pd

    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise PlanError(f"sweep output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {str(output)!r}")
    ck = checkpoint_path(output)
    redo = (f"delete it to rebuild it from its checkpoint {ck}" if ck.exists() else "delete it to rerun the sweep")
    try:
        df = pd.read_parquet(output) if suffix == ".parquet" else pd.read_csv(output)
    except ImportError as err:
        raise PlanError(f"reading sweep output {output} needs pyarrow ({err})") from None
    except pd.errors.EmptyDataError:
        raise PlanError(f"sweep output {output} is empty, not a sweep table; {redo}") from None
    except (OSError, ValueError, TypeError) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        detail = (str(err).splitlines() or [""])[0][:200]
        raise PlanError(f"sweep output {output} cannot be read as {suffix[1:]} "
                        f"({type(err).__name__}: {detail}); {redo}") from None
    for column in ("key", "status"):
        if column not in df.columns:
            raise PlanError(f"sweep output {output} has no {column!r} column, so it is not a sweep table "
                            f"(columns: {list(df.columns)[:8]}); {redo}")
    rows = df.to_dict("records")
    for n, row in enumerate(rows, 1):
        for column in ("key", "status"):
            if not isinstance(row[column], str):
                raise PlanError(f"sweep output {output} row {n}: {column!r} must be a string, "
                                f"got {row[column]!r}; {redo}")
    return rows


def _parse_line(raw: bytes) -> tuple[dict | None, str | None, bool]:
    """(row, why it is not a row, whether it parsed as JSON)."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text", False
    except json.JSONDecodeError as err:
        return None, f"is not JSON ({err.msg} at column {err.colno})", False
    if not isinstance(value, dict):
        return None, f"is a JSON {type(value).__name__}, not a row mapping", True
    for column in ("key", "status"):
        if not isinstance(value.get(column), str):
            return None, f"has no {column!r} string", True
    return value, None, True


def _read_checkpoint(ck: Path, *, skip_corrupt: bool, notes: list[str]) -> tuple[list[dict], bytes, bytes]:
    """The checkpoint's rows, its bytes as read, and the bytes of its good lines."""
    try:
        data = ck.read_bytes()
    except OSError as err:
        raise PlanError(f"cannot read sweep checkpoint {ck}: {err.strerror}") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: empty unless a write was cut short
    rows: list[dict] = []
    good: list[bytes] = []
    skipped: list[int] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        row, why, _ = _parse_line(raw)
        if why:
            if not skip_corrupt:
                raise PlanError(f"sweep checkpoint {ck} line {n} {why}; delete that line (its point runs again) "
                                "or resume skipping corrupt lines (skip_corrupt=True; tierplan sweep --skip-corrupt)")
            skipped.append(n)
            continue
        rows.append(row)
        good.append(raw)
    if tail.strip():
        n = len(lines) + 1
        row, why, parsed = _parse_line(tail)
        if not parsed:  # the interrupted write of the last point: it runs again
            notes.append(f"dropped line {n} of {ck}, cut short by an interrupted write ({len(tail)} bytes, "
                         "no newline); its point runs again")
        elif why:
            if not skip_corrupt:
                raise PlanError(f"sweep checkpoint {ck} line {n} {why}; delete that line (its point runs again) "
                                "or resume skipping corrupt lines (skip_corrupt=True; tierplan sweep --skip-corrupt)")
            skipped.append(n)
        else:
            rows.append(row)
            good.append(tail)
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        notes.append(f"skipped {len(skipped)} corrupt line(s) of {ck} (line {shown}); their points run again")
    return rows, data, b"".join(line + b"\n" for line in good)


def load_rows(output: str | Path, *, skip_corrupt: bool = False, notes: list[str] | None = None) -> list[dict]:
    """Rows already finished for ``output``: the final file (if written) and its checkpoint.

    Parameters
    ----------
    output : path
        The sweep's ``.parquet`` or ``.csv``; its checkpoint is ``<output>.partial.jsonl``.
    skip_corrupt : bool
        Skip checkpoint lines that are not rows (their points run again) instead of refusing them.
    notes : list of str, optional
        Receives a line for each thing dropped: a last line cut short by an interruption, skipped lines.

    Raises
    ------
    PlanError
        The output cannot be read as a sweep table, or a checkpoint line other than an interrupted last
        one is not a row (with the file and line number), unless ``skip_corrupt``.
    """
    return _load(Path(output), skip_corrupt=skip_corrupt, notes=[] if notes is None else notes)[0]


def _load(output: Path, *, skip_corrupt: bool, notes: list[str]) -> tuple[list[dict], bytes | None, bytes | None]:
    rows: dict[str, dict] = {}
    if output.exists():
        for row in _read_table(output):
            rows[row["key"]] = row
    ck = checkpoint_path(output)
    data = clean = None
    if ck.exists():
        ck_rows, data, clean = _read_checkpoint(ck, skip_corrupt=skip_corrupt, notes=notes)
        for row in ck_rows:  # a later line of the same point (a rerun) wins
            rows[row["key"]] = row
    return list(rows.values()), data, clean


class _Progress:
    def __init__(self, total: int, done: int, stream=None) -> None:
        # sys.stderr as it is now, not as it was when this module was first imported (a default
        # argument would keep a stream that a test or notebook has since closed).
        self.total, self.done, self.stream = total, done, stream or sys.stderr
        self.start = time.perf_counter()
        self.new = 0

    def update(self) -> None:
        self.done += 1
        self.new += 1
        rate = self.new / max(time.perf_counter() - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate else float("inf")
        self.stream.write(f"\rsweep: {self.done}/{self.total} points, {rate:.1f} points/s, ~{left:.0f} s left ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")


def _chunk_rows(future, chunk: Sequence[SweepPoint]) -> list[dict]:
    """A chunk's rows; if the executor lost the task (a worker died, a pickling failure), one error row
    per point, so the sweep goes on and a resume runs them again."""
    try:
        return future.result()
    except Exception as err:
        message = f"the executor lost this point: {type(err).__name__}: {err}"
        return [{**_base_row(p), "status": "error", "error": message, "plan_time_s": float("nan"), "key": p.key()}
                for p in chunk]


def _write_atomically(path: Path, write: Callable[[Path], None], ck: Path | None) -> None:
    """Write to a temporary file beside ``path`` and rename it, so an interruption never leaves half a table."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = f"; every finished point is in {ck}, resume to write it again" if ck else ""
        raise PlanError(f"cannot write {path}: {err.strerror or err}{kept}") from None


def sweep(points: Iterable[SweepPoint], *, output: str | Path | None = None, resume: bool = True,
          executor: Executor | None = None, workers: int | None = None, progress: bool = True,
          on_row: Callable[[dict], None] | None = None, skip_corrupt: bool = False):
    """Plan every point; return a pandas DataFrame with one row per point.

    Every input is checked first (:func:`check_output`, :func:`check_points`): a bad one raises
    before any point runs. A point that fails while planning is a row with ``status: "error"`` and
    its reason in ``error``; the sweep goes on, and ``df.attrs["errors"]`` counts them.

    Parameters
    ----------
    points : iterable of SweepPoint
        See :func:`grid`.
    output : path, optional
        ``.parquet`` or ``.csv``. Each finished point is appended to ``<output>.partial.jsonl`` as it
        completes; the table is written when the sweep ends.
    resume : bool
        Skip points already finished in ``output`` or its checkpoint (points that errored run again).
        False starts a new checkpoint.
    executor : concurrent.futures.Executor, optional
        Where points run; default a local process pool of ``workers`` (default: all cores), or this
        process when ``workers`` is 1 or one point is left. For a cluster, pass a Dask ``client.get_executor()``.
    workers : int, optional
        Local processes.
    progress : bool
        A progress line on stderr.
    on_row : callable, optional
        Called with each new row as it finishes.
    skip_corrupt : bool
        On resume, skip checkpoint lines that are not rows (with a note) instead of refusing them.

    Returns
    -------
    pandas.DataFrame
        One row per point, in the points' order; ``attrs["errors"]`` (int) and ``attrs["notes"]``
        (what was dropped on resume, also printed to stderr).

    Raises
    ------
    PlanError
        A bad point or output (see :func:`check_points`, :func:`check_output`), an unreadable output
        or corrupt checkpoint on resume (see :func:`load_rows`), or an output that cannot be written.
    """
    import pandas as pd

    points = list(points)
    ck = None
    if output is not None:
        output = check_output(output)
        ck = checkpoint_path(output)
        _check_writable(ck, "sweep checkpoint")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0):
        raise PlanError(f"sweep workers must be a positive integer, got {workers!r}")
    check_points(points)
    order = {p.key(): i for i, p in enumerate(points)}
    notes: list[str] = []
    done_rows: list[dict] = []
    if output is not None and resume:
        if not output.exists() and not ck.exists():
            notes.append(f"nothing to resume: neither {output} nor {ck} exists; every point runs")
        done_rows, data, clean = _load(output, skip_corrupt=skip_corrupt, notes=notes)
        if data is not None and clean != data:  # drop the cut-short or skipped lines before appending
            _write_atomically(ck, lambda tmp: tmp.write_bytes(clean), None)
    rows = [r for r in done_rows if r["key"] in order and r["status"] != "error"]
    stale = sum(1 for r in done_rows if r["key"] not in order)
    retry = sum(1 for r in done_rows if r["key"] in order and r["status"] == "error")
    if stale:
        notes.append(f"{stale} finished row(s) of {output} are not points of this sweep and are left out of it")
    if retry:
        notes.append(f"{retry} point(s) that errored before run again")
    for note in notes:
        print(f"sweep: {note}", file=sys.stderr)
    done_keys = {r["key"] for r in rows}
    todo = [p for p in points if p.key() not in done_keys]
    n_workers = workers or os.cpu_count() or 1
    in_process = executor is None and (len(todo) <= 1 or n_workers == 1)
    own = executor is None and not in_process
    bar = _Progress(len(points), len(points) - len(todo)) if progress else None
    try:
        ck_file = open(ck, "a" if resume else "w") if ck else None  # noqa: SIM115 - closed in finally
    except OSError as err:
        raise PlanError(f"cannot open sweep checkpoint {ck}: {err.strerror}") from None
    pool = ProcessPoolExecutor(max_workers=n_workers) if own else executor
    # Chunks of up to 8 points, at least 4 chunks per worker so that the workers finish together.
    chunk = max(1, min(8, len(todo) // (4 * n_workers)))
    try:
        if in_process:
            results = ([run_point(p)] for p in todo)
        else:
            futures = {pool.submit(run_points, todo[i:i + chunk]): todo[i:i + chunk]
                       for i in range(0, len(todo), chunk)}
            results = (_chunk_rows(f, futures[f]) for f in as_completed(futures))
        for row in itertools.chain.from_iterable(results):
            rows.append(row)
            if ck_file:
                ck_file.write(json.dumps(row, default=float) + "\n")
                ck_file.flush()
            if on_row:
                on_row(row)
            if bar:
                bar.update()
    finally:
        if bar:
            bar.close()
        if ck_file:
            ck_file.close()
        if own:
            pool.shutdown(cancel_futures=True)
    df = pd.DataFrame(sorted(rows, key=lambda r: order[r["key"]]))
    df.attrs["errors"] = error_count(df)
    df.attrs["notes"] = notes
    if output is not None:
        if output.suffix.lower() == ".parquet":
            _write_atomically(output, lambda tmp: df.to_parquet(tmp, index=False), ck)
        else:
            _write_atomically(output, lambda tmp: df.to_csv(tmp, index=False), ck)
    return df
