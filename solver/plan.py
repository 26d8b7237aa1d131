"""The Plan: the one artifact shared by the CLI, notebooks and validate, for every family. Versioned,
JSON/YAML on disk.

A plan is an envelope that names no family's fields (schema version 2):

``kind``
    The family: ``"kv"`` (KV cache and weights for LLM inference) or ``"embeddings"`` (embedding
    tables for DLRM training); :func:`plan_kinds`. Every other field's contents are checked by
    that family's checker (:func:`register_kind`).
``status``, ``objective``, ``explanation``
    The solve's status (``optimal``, ``feasible``, ``infeasible``, ``time_limit``), what was
    optimised, and for an infeasible plan what is short and what would fix it.
``workload``
    Enough to rebuild the family's workload (its ``summary()``): model name and file, batch, ...
``hardware``
    The system's name, source, overrides and every resolved value (:func:`plan_system`).
``predicted``
    The plan's predicted figures (family keys, e.g. ``tokens_per_s`` or ``samples_per_s``), or null.
``memory``, ``capacity``
    Bytes per tier (``gpu_bytes``, ``host_bytes``, ``disk_bytes``) with each tier's
    ``<tier>_breakdown`` by component; the capacities they were checked against.
``units``
    The per-unit decisions: one entry per layer (KV) or per table (embeddings), in model order.
``extras``
    The family's plan-wide decisions (KV: ``head``, ``activations``, ``context_ranges``).
``baselines``, ``solver``
    Every baseline costed on the same model, by name; the solver's statistics.

Version 1 files (KV only: ``layers``, ``head``, ``activations``, ``context_ranges`` at the top) are
read and migrated to version 2 (:func:`migrate_v1`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from costmodel import Fractions, LayerPolicy, TokenSplit, WorkloadError
from hwprofiles import ProfileError, System, apply_overrides, list_systems, load_system
from hwprofiles.loader import system_from_dict
from hwprofiles.safe_io import PLAN_MAX_BYTES, PROFILE_MAX_BYTES, load_json, load_yaml, read_text, sha256_text
from solver.errors import PlanError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
PLAN_FIELDS = ("kind", "status", "objective", "workload", "hardware", "predicted", "memory", "capacity", "units",
               "extras", "baselines", "solver", "explanation")
V1_FIELDS = ("kind", "status", "objective", "workload", "hardware", "predicted", "memory", "capacity", "layers",
             "head", "activations", "context_ranges", "baselines", "solver", "explanation")
KV_EXTRAS = ("head", "activations", "context_ranges")
# A YAML plan of an 80-layer model with 4 context ranges has ~10,000 nodes: 50x that is ample.
PLAN_MAX_NODES = 500_000
# Tier shares and token splits are LP solutions: they sum to one within the solver's feasibility
# tolerance (the same 1e-6 as costmodel's Fractions and TokenSplit).
SHARE_TOLERANCE = 1e-6
OBJECTIVES_BY_KIND = {"kv": ("throughput", "latency"), "embeddings": ("throughput",)}


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a dict that appears twice out in full: plan files are read without anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A plan of any family; the fields are described in this module's docstring.

    ``layers``, ``head``, ``activations`` and ``context_ranges`` are the KV family's names for
    ``units`` and the ``extras`` entries (read-only views, kept for KV code and notebooks).
    """

    kind: str
    status: str
    objective: str
    workload: dict[str, Any]
    hardware: dict[str, Any]
    predicted: dict[str, float] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, float] = field(default_factory=dict)
    units: tuple[dict[str, Any], ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    solver: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    file: str = field(default="", compare=False)  # where it was loaded from (for messages); not saved

    @property
    def layers(self) -> tuple[dict[str, Any], ...]:
        """A KV plan's per-layer decisions (its ``units``)."""
        return self.units

    @property
    def head(self) -> dict[str, Any]:
        return self.extras.get("head", {})

    @property
    def activations(self) -> dict[str, Any]:
        return self.extras.get("activations", {})

    @property
    def context_ranges(self) -> tuple[dict[str, int], ...]:
        return tuple(self.extras.get("context_ranges", ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "status": self.status,
            "objective": self.objective,
            "workload": self.workload,
            "hardware": self.hardware,
            "predicted": self.predicted,
            "memory": self.memory,
            "capacity": self.capacity,
            "units": list(self.units),
            "extras": self.extras,
            "baselines": self.baselines,
            "solver": self.solver,
            "explanation": self.explanation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str = "") -> Plan:
        """A plan from its dict (:meth:`to_dict`, or a version-1 KV plan), every field later code reads
        checked first.

        Raises
        ------
        PlanError
            A field is missing or of the wrong type or value; the message names its path
            (``units[3].kv.gpu``) and ``file``. A plan of a kind this tierplan does not plan is refused.
        """
        where = f" ({file})" if file else ""
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a mapping, got {type(data).__name__}{where}")
        version = data.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise PlanError(f"schema_version must be one of {', '.join(map(str, READABLE_VERSIONS))} "
                            f"(this tierplan writes {SCHEMA_VERSION}), got {version!r}{where}")
        # Plan.save writes every field: one missing means a truncated or hand-cut file (a YAML file
        # cut at a line boundary still parses), so none is taken as its default.
        for key in (V1_FIELDS if version == 1 else PLAN_FIELDS):
            if key not in data:
                raise PlanError(f"plan field {key!r} is missing{where}")
        if version == 1:
            data = migrate_v1(data, where)
        _check_plan(data, where)
        return cls(
            kind=data["kind"], status=data["status"], objective=data["objective"],
            workload=data["workload"], hardware=data["hardware"], predicted=data["predicted"],
            memory=data["memory"], capacity=data["capacity"], units=tuple(data["units"]),
            extras=data["extras"], baselines=data["baselines"], solver=data["solver"],
            explanation=data["explanation"], file=file,
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (yaml.dump(self.to_dict(), Dumper=_NoAliasDumper, sort_keys=False) if path.suffix in (".yaml", ".yml")
                else json.dumps(self.to_dict(), indent=1))
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan file (``.json``, or ``.yaml``/``.yml``): at most 16 MiB of UTF-8 text, YAML
        without anchors or aliases; every error is a :class:`PlanError` naming the file."""
        path = Path(path)
        text = read_text(path, what="plan file", max_bytes=PLAN_MAX_BYTES, error=PlanError)
        if path.suffix in (".yaml", ".yml"):
            data = load_yaml(text, file=str(path), error=PlanError, what="a plan", max_nodes=PLAN_MAX_NODES)
        else:
            data = load_json(text, file=str(path), error=PlanError, what="a plan")
        return cls.from_dict(data, file=str(path))

    def policies(self) -> tuple[tuple[LayerPolicy, ...], bool]:
        """A KV plan's per-layer policies and head placement (for re-costing or replay)."""
        where = f" ({self.file})" if self.file else ""
        if self.kind != "kv":
            raise PlanError(f"plan kind {self.kind!r} has no KV layer policies{where}")
        if not self.units:
            raise PlanError(f"plan has no layer decisions (status {self.status!r}): nothing to evaluate{where}")
        pols = []
        try:
            for entry in self.units:
                splits = tuple(TokenSplit(transfer=a["transfer"], recompute=a["recompute"], cpu=a["cpu"])
                               for a in entry["kv_actions"])
                pols.append(LayerPolicy(weights=Fractions(**entry["weights"]), kv=Fractions(**entry["kv"]),
                                        activations_on_host=bool(entry["activations_on_host"]), splits=splits))
        except (KeyError, TypeError, WorkloadError) as err:
            raise PlanError(f"layer entry is malformed: missing or bad field {err}{where}") from None
        head = self.head.get("on_gpu", True)
        return tuple(pols), head if isinstance(head, bool) else float(head)


def shortfall_bytes(shortfalls: Mapping[str, float]) -> dict[str, float]:
    """Bytes missing per tier as plans and answers report them (``gpu``, ``host``, ``disk``), from a
    cost's ``shortfalls()`` (keyed ``gpu_bytes``, ...).

    >>> shortfall_bytes({"gpu_bytes": 2.0})
    {'gpu': 2.0}
    """
    return {k.removesuffix("_bytes"): v for k, v in shortfalls.items()}


def migrate_v1(data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """A version-1 plan (KV only) as version 2: ``layers`` become ``units``; ``head``,
    ``activations`` and ``context_ranges`` move into ``extras``.

    Examples
    --------
    >>> v1 = {"kind": "kv", "layers": [{"weights": {}}], "head": {"on_gpu": True}, "activations": {},
    ...       "context_ranges": [], "schema_version": 1}
    >>> v2 = migrate_v1(v1)
    >>> v2["schema_version"], v2["units"], v2["extras"]["head"]
    (2, [{'weights': {}}], {'on_gpu': True})
    """
    if data.get("kind") != "kv":
        raise PlanError(f"a schema_version 1 plan must be of kind 'kv' (the only kind version 1 had), "
                        f"got {data.get('kind')!r}{where}")
    out = {k: v for k, v in data.items() if k not in ("layers", *KV_EXTRAS)}
    out.update(schema_version=2, units=data["layers"], extras={k: data[k] for k in KV_EXTRAS})
    return out


# ---------------------------------------------------------------------------------------------
# Checking a plan read from a file
# ---------------------------------------------------------------------------------------------

_INT_FIELDS = {"batch": 1, "prompt_len": 1, "gen_len": 1}  # required, with their minimum
_OPTIONAL_INTS = {"prefill_chunk_tokens": 0, "gpu_batch": 0, "gpu_batches": 1, "max_batch": 1}
_OPTIONAL_BOOLS = ("fused_attention", "overlap", "pinned_weights", "cpu_attention_upcast", "cpu_attention_repeat_kv",
                   "allow_long_context")
_OPTIONAL_STRS = ("stream_granularity", "kv_dtype")
_TIERS = ("gpu", "host", "disk")
_SPLIT = ("transfer", "recompute", "cpu")


class _Checker:
    """Raises a PlanError naming the field path, the rule, the value (shortened) and the file."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, rule: str, value: Any) -> PlanError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return PlanError(f"plan field {path} {rule}, got {shown}{self.where}")

    def missing(self, path: str) -> PlanError:
        return PlanError(f"plan field {path} is missing{self.where}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, "must be a mapping", value)
        return value

    def sequence(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(path, "must be a list", value)
        return list(value)

    def string(self, value: Any, path: str, *, empty: bool = True) -> str:
        if not isinstance(value, str) or (not empty and not value):
            raise self.fail(path, "must be a string" if empty else "must be a non-empty string", value)
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, "must be true or false", value)
        return value

    def integer(self, value: Any, path: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            rule = "must be a positive integer" if minimum == 1 else f"must be an integer of at least {minimum}"
            raise self.fail(path, rule, value)
        return value

    def number(self, value: Any, path: str, low: float = -math.inf, high: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(path, "must be a finite number", value)
        if not low <= value <= high:
            raise self.fail(path, f"must be in [{low:g}, {high:g}]", value)
        return float(value)

    def shares(self, value: Any, path: str, keys: tuple[str, ...], *, required: bool) -> dict[str, float]:
        """Non-negative shares that sum to one (costmodel's Fractions and TokenSplit)."""
        entry = self.mapping(value, path)
        unknown = sorted(map(str, set(entry) - set(keys)))
        if unknown:
            raise self.fail(path, f"may hold only {', '.join(keys)}", unknown)
        if required:
            for key in keys:
                if key not in entry:
                    raise self.missing(f"{path}.{key}")
        out = {k: self.number(entry[k], f"{path}.{k}", -SHARE_TOLERANCE, 1 + SHARE_TOLERANCE)
               for k in keys if k in entry}
        defaults = {"gpu": 1.0, "transfer": 1.0}  # what Fractions and TokenSplit take for an absent key
        total = sum(out.get(k, defaults.get(k, 0.0)) for k in keys)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise self.fail(path, f"must sum to 1 ({' + '.join(keys)})", dict(out))
        return out


# The families' checkers of their workload, units and extras, by kind (register_kind).
_KIND_CHECKERS: dict[str, Callable[[_Checker, Mapping[str, Any]], None]] = {}


def register_kind(kind: str, checker: Callable[[_Checker, Mapping[str, Any]], None]) -> None:
    """Make plans of ``kind`` readable: ``checker(c, data)`` checks the family's ``workload``,
    ``units`` and ``extras`` with the :class:`_Checker` ``c`` (which raises the PlanError)."""
    _KIND_CHECKERS[kind] = checker


def plan_kinds() -> tuple[str, ...]:
    """The kinds of plan this tierplan reads, costs and replays."""
    return tuple(_KIND_CHECKERS)


def _check_plan(data: Mapping[str, Any], where: str) -> None:
    """The envelope's fields, then the family's (its registered checker)."""
    c = _Checker(where)
    kind = c.string(data["kind"], "kind")
    if kind not in _KIND_CHECKERS:
        raise PlanError(f"plan kind {kind!r} is not supported; this tierplan plans "
                        f"{', '.join(repr(k) for k in _KIND_CHECKERS)}{where}")
    c.string(data["status"], "status")
    objectives = OBJECTIVES_BY_KIND.get(kind, ("throughput",))
    if data["objective"] not in objectives:
        raise c.fail("objective", f"must be {' or '.join(repr(o) for o in objectives)} for a plan of kind {kind!r}",
                     data["objective"])
    c.string(data["explanation"], "explanation")
    w = c.mapping(data["workload"], "workload")
    if "model" not in w:
        raise c.missing("workload.model")
    c.string(w["model"], "workload.model", empty=False)
    if w.get("model_file") is not None:
        c.string(w["model_file"], "workload.model_file")
    h = c.mapping(data["hardware"], "hardware")
    if "system" not in h:
        raise c.missing("hardware.system")
    c.string(h["system"], "hardware.system", empty=False)
    for key in ("source", "file", "gpu", "host", "link"):
        if h.get(key) is not None:
            c.string(h[key], f"hardware.{key}")
    if h.get("content_sha256") is not None:
        c.string(h["content_sha256"], "hardware.content_sha256")
    for i, text in enumerate(c.sequence(h.get("overrides", []), "hardware.overrides")):
        c.string(text, f"hardware.overrides[{i}]")
    if h.get("resolved") is not None:
        c.mapping(h["resolved"], "hardware.resolved")  # its contents: system_from_dict, when it is used
    if data["predicted"] is not None:
        c.mapping(data["predicted"], "predicted")
    for key in ("memory", "capacity", "baselines", "solver", "extras"):
        c.mapping(data[key], key)
    for i, entry in enumerate(c.sequence(data["units"], "units")):
        c.mapping(entry, f"units[{i}]")
    _KIND_CHECKERS[kind](c, data)


def _check_kv(c: _Checker, data: Mapping[str, Any]) -> None:
    """A KV plan's workload, layer units and extras (every field evaluate, replay and
    ``Plan.policies`` read), with its type and range."""
    w = data["workload"]
    for key, minimum in _INT_FIELDS.items():
        if key not in w:
            raise c.missing(f"workload.{key}")
        c.integer(w[key], f"workload.{key}", minimum)
    if "dtype_bytes" in w and (isinstance(w["dtype_bytes"], bool) or w["dtype_bytes"] not in (2, 4)):
        raise c.fail("workload.dtype_bytes", "must be 2 (fp16/bf16) or 4 (fp32)", w["dtype_bytes"])
    for key, minimum in _OPTIONAL_INTS.items():
        if key in w:
            c.integer(w[key], f"workload.{key}", minimum)
    for key in _OPTIONAL_BOOLS:
        if key in w:
            c.boolean(w[key], f"workload.{key}")
    for key in _OPTIONAL_STRS:
        if key in w:
            c.string(w[key], f"workload.{key}")
    if "kv_keep" in w:
        c.number(w["kv_keep"], "workload.kv_keep", 0.0, 1.0)

    n_ranges = None
    for i, entry in enumerate(data["units"]):
        at = f"units[{i}]"
        for key in ("weights", "kv", "activations_on_host", "kv_actions"):
            if key not in entry:
                raise c.missing(f"{at}.{key}")
        c.shares(entry["weights"], f"{at}.weights", _TIERS, required=False)
        c.shares(entry["kv"], f"{at}.kv", _TIERS, required=False)
        on_host = c.boolean(entry["activations_on_host"], f"{at}.activations_on_host")
        actions = c.sequence(entry["kv_actions"], f"{at}.kv_actions")
        if not actions:
            raise c.fail(f"{at}.kv_actions", "must hold one token split per context range", actions)
        if n_ranges is None:
            n_ranges = len(actions)
        elif len(actions) != n_ranges:
            raise c.fail(f"{at}.kv_actions", f"must hold {n_ranges} token splits, as units[0] does",
                         f"{len(actions)} splits")
        for j, action in enumerate(actions):
            action = c.mapping(action, f"{at}.kv_actions[{j}]")
            split = c.shares({k: action[k] for k in _SPLIT if k in action}, f"{at}.kv_actions[{j}]", _SPLIT,
                             required=True)
            if split["recompute"] > SHARE_TOLERANCE and not on_host:
                raise c.fail(f"{at}.kv_actions[{j}].recompute",
                             f"must be 0 when {at}.activations_on_host is false (recompute needs the layer inputs)",
                             split["recompute"])

    # A plan with layer decisions placed its head and prefill's layer inputs too: no silent defaults.
    extras = data["extras"]
    unknown = sorted(map(str, set(extras) - set(KV_EXTRAS)))
    if unknown:
        raise c.fail("extras", f"of a kv plan may hold only {', '.join(KV_EXTRAS)}", unknown)
    decided = bool(data["units"])
    head = c.mapping(extras.get("head", {}), "extras.head")
    if decided and "on_gpu" not in head:
        raise c.missing("extras.head.on_gpu")
    if "on_gpu" in head and not isinstance(head["on_gpu"], bool):
        c.number(head["on_gpu"], "extras.head.on_gpu", 0.0, 1.0)
    activations = c.mapping(extras.get("activations", {}), "extras.activations")
    if decided and "prefill_hidden_on_gpu" not in activations:
        raise c.missing("extras.activations.prefill_hidden_on_gpu")
    if "prefill_hidden_on_gpu" in activations:
        c.number(activations["prefill_hidden_on_gpu"], "extras.activations.prefill_hidden_on_gpu", 0.0, 1.0)
    c.sequence(extras.get("context_ranges", []), "extras.context_ranges")


register_kind("kv", _check_kv)


# ---------------------------------------------------------------------------------------------
# The hardware a plan was made on
# ---------------------------------------------------------------------------------------------


def plan_system(plan: Plan, *, hw: str | Path | None = None,
                overrides: Iterable[str] = ()) -> tuple[System, str | None]:
    """The system to re-cost or replay ``plan`` on, and a note when it is not simply the plan's own.

    Parameters
    ----------
    plan : Plan
        A plan (usually from :meth:`Plan.load`).
    hw : str or Path, optional
        A bundled system name or a system YAML path to use instead of the plan's hardware.
    overrides : iterable of str
        ``--set`` overrides, applied after the plan's own (which are already in its hardware).

    Returns
    -------
    system : System
        ``hw`` with ``overrides`` when given. Else the plan's own system: a bundled one by name with
        the plan's overrides; a file that still has the hash the plan recorded, loaded again with
        them; a file that is gone or changed, rebuilt from the values the plan recorded
        (``hardware.resolved``). Then ``overrides`` on top.
    note : str or None
        What the caller should tell the user: the file is gone or changed and the recorded values
        were used, a profile now differs from what the plan recorded, or an older plan named only
        its bundled system. ``None`` when the plan's hardware was found as recorded (or ``hw``).

    Raises
    ------
    PlanError
        An older plan (no ``hardware.resolved``) made on a system that is not bundled.
    ProfileError
        ``hw``, an override, or the recorded values are malformed.

    Examples
    --------
    >>> from hwprofiles import load_system
    >>> from solver import plan_kv
    >>> from costmodel import KvWorkload, load_model
    >>> wl = KvWorkload(model=load_model("opt-6.7b"), batch=1, prompt_len=64, gen_len=2)
    >>> plan = plan_kv(wl, load_system("a100-40gb", ["link.h2d=12GB/s"]), baselines=())
    >>> system, note = plan_system(plan)
    >>> system.link.h2d_bytes_per_s, system.overrides, note
    (12000000000.0, ('link.h2d=12GB/s',), None)
    """
    overrides = list(overrides)
    if hw is not None:
        return load_system(hw, overrides), None
    h = plan.hardware
    where = f" ({plan.file})" if plan.file else ""
    name, recorded = h["system"], list(h.get("overrides", []))
    resolved, source = h.get("resolved"), h.get("source")
    if resolved is None or source is None:  # a plan from before plans carried their hardware
        try:
            system = load_system(name, recorded) if _bundled(name) else None
        except ProfileError as err:
            raise PlanError(f"cannot rebuild the plan's system {name!r}: {err}; pass --hw{where}") from None
        if system is None:
            raise PlanError(f"the plan does not carry its hardware: system {name!r} is not bundled and the plan "
                            f"(from an older tierplan) records no profile values; pass --hw with the profile it "
                            f"was made on{where}")
        note = (f"the plan records only its system's name (an older plan): re-costed on the bundled "
                f"{name!r} as this tierplan ships it")
        return apply_overrides(system, overrides), note

    def recorded_system() -> System:
        built = system_from_dict(resolved, file=f"hardware.resolved in {plan.file or 'the plan'}")
        return dataclasses.replace(built, source=source, content_sha256=h.get("content_sha256"))

    note = None
    if not Path(source).is_absolute():  # a bundled name
        try:
            system = load_system(source, recorded)
        except ProfileError as err:
            system, note = recorded_system(), (f"the plan's bundled system {source!r} cannot be loaded ({err}): "
                                               f"re-costed on the values the plan recorded")
    else:
        why = _file_unchanged(Path(source), h.get("content_sha256"))
        if not why:
            try:
                system = load_system(source, recorded)
            except ProfileError as err:
                why = f"it no longer loads with the plan's overrides ({err})"
        if why:
            system, note = recorded_system(), (f"the plan's hardware file {source} is not as recorded: {why}; "
                                               f"re-costed on the values the plan recorded (hardware.resolved)")
    if note is None:
        difference = _first_difference(_values(resolved), _values(system.to_dict()))
        if difference:
            note = (f"the profile {source} now differs from the values the plan recorded ({difference}): "
                    f"re-costed on the profile as it is now; pass --hw to choose")
    return apply_overrides(system, overrides), note


def _bundled(name: str) -> bool:
    return name in list_systems()


def _file_unchanged(path: Path, sha256: str | None) -> str:
    """Empty if the file still has the recorded SHA-256, else why not."""
    if not path.exists():
        return "it is gone"
    try:
        text = read_text(path, what="profile file", max_bytes=PROFILE_MAX_BYTES, error=ProfileError)
    except ProfileError as err:
        return str(err)
    return "" if sha256_text(text) == sha256 else "it has changed since the plan was made (its SHA-256 differs)"


def _values(d: Any) -> Any:
    """A system dict without its ``file`` records: where a profile lives is not what it is."""
    if isinstance(d, Mapping):
        return {k: _values(v) for k, v in d.items() if k != "file"}
    if isinstance(d, (list, tuple)):
        return [_values(v) for v in d]
    return d


def _first_difference(recorded: Any, now: Any, path: str = "") -> str:
    if isinstance(recorded, Mapping) and isinstance(now, Mapping):
        for key in list(recorded) + [k for k in now if k not in recorded]:
            found = _first_difference(recorded.get(key), now.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return ""
    if recorded != now:
        shorten = lambda v: (r if len(r := repr(v)) <= 60 else r[:57] + "...")  # noqa: E731
        return f"{path or 'system'}: {shorten(recorded)} recorded, {shorten(now)} now"
    return ""
