"""The Plan: the one artifact shared by the CLI, notebooks and validate. Versioned, JSON/YAML on disk.

Field names are stable (later tools read them); see ``Plan.to_dict`` for the layout.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from costmodel import Fractions, LayerPolicy, TokenSplit, WorkloadError
from hwprofiles import ProfileError, System, apply_overrides, list_systems, load_system
from hwprofiles.loader import system_from_dict
from hwprofiles.safe_io import PLAN_MAX_BYTES, PROFILE_MAX_BYTES, load_json, load_yaml, read_text, sha256_text
from solver.errors import PlanError

SCHEMA_VERSION = 1
PLAN_FIELDS = ("kind", "status", "objective", "workload", "hardware", "predicted", "memory", "capacity", "layers",
               "head", "activations", "context_ranges", "baselines", "solver", "explanation")
PLAN_KINDS = ("kv",)  # the kinds this tierplan can cost; a plan of another kind is refused, never re-costed as KV
# A YAML plan of an 80-layer model with 4 context ranges has ~10,000 nodes: 50x that is ample.
PLAN_MAX_NODES = 500_000
# Tier shares and token splits are LP solutions: they sum to one within the solver's feasibility
# tolerance (the same 1e-6 as costmodel's Fractions and TokenSplit).
SHARE_TOLERANCE = 1e-6


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a dict that appears twice out in full: plan files are read without anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    kind: str
    status: str
    objective: str
    workload: dict[str, Any]
    hardware: dict[str, Any]
    predicted: dict[str, float] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, float] = field(default_factory=dict)
    layers: tuple[dict[str, Any], ...] = ()
    head: dict[str, Any] = field(default_factory=dict)
    activations: dict[str, Any] = field(default_factory=dict)  # prefill_hidden_on_gpu: share of layer inputs
    context_ranges: tuple[dict[str, int], ...] = ()
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    solver: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    file: str = field(default="", compare=False)  # where it was loaded from (for messages); not saved

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
            "layers": list(self.layers),
            "head": self.head,
            "activations": self.activations,
            "context_ranges": list(self.context_ranges),
            "baselines": self.baselines,
            "solver": self.solver,
            "explanation": self.explanation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str = "") -> Plan:
        """A plan from its dict (:meth:`to_dict`), every field later code reads checked first.

        Raises
        ------
        PlanError
            A field is missing or of the wrong type or value; the message names its path
            (``layers[3].kv.gpu``) and ``file``. A plan of a kind other than ``"kv"`` is refused.
        """
        where = f" ({file})" if file else ""
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a mapping, got {type(data).__name__}{where}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PlanError(f"schema_version must be {SCHEMA_VERSION}, got {version!r}{where}")
        # Plan.save writes every field: one missing means a truncated or hand-cut file (a YAML file
        # cut at a line boundary still parses), so none is taken as its default.
        for key in PLAN_FIELDS:
            if key not in data:
                raise PlanError(f"plan field {key!r} is missing{where}")
        _check_plan(data, where)
        return cls(
            kind=data["kind"], status=data["status"], objective=data.get("objective", "throughput"),
            workload=data["workload"], hardware=data["hardware"], predicted=data.get("predicted"),
            memory=data.get("memory", {}), capacity=data.get("capacity", {}), layers=tuple(data["layers"]),
            head=data.get("head", {}), activations=data.get("activations", {}), context_ranges=tuple(data.get("context_ranges", ())),
            baselines=data.get("baselines", {}), solver=data.get("solver", {}),
            explanation=data.get("explanation", ""), file=file,
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
        """The per-layer policies and head placement this plan decided (for re-costing or replay)."""
        if not self.layers:
            raise PlanError(f"plan has no layer decisions (status {self.status!r}): nothing to evaluate")
        pols = []
        try:
            for entry in self.layers:
                splits = tuple(TokenSplit(transfer=a["transfer"], recompute=a["recompute"], cpu=a["cpu"])
                               for a in entry["kv_actions"])
                pols.append(LayerPolicy(weights=Fractions(**entry["weights"]), kv=Fractions(**entry["kv"]),
                                        activations_on_host=bool(entry["activations_on_host"]), splits=splits))
        except (KeyError, TypeError, WorkloadError) as err:
            where = f" ({self.file})" if self.file else ""
            raise PlanError(f"layer entry is malformed: missing or bad field {err}{where}") from None
        head = self.head.get("on_gpu", True)
        return tuple(pols), head if isinstance(head, bool) else float(head)


# ---------------------------------------------------------------------------------------------
# Checking a plan read from a file
# ---------------------------------------------------------------------------------------------

_INT_FIELDS = {"batch": 1, "prompt_len": 1, "gen_len": 1}  # required, with their minimum
_OPTIONAL_INTS = {"prefill_chunk_tokens": 0, "gpu_batch": 0, "gpu_batches": 1, "max_batch": 1}
_OPTIONAL_BOOLS = ("fused_attention", "overlap", "pinned_weights", "cpu_attention_upcast", "allow_long_context")
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


def _check_plan(data: Mapping[str, Any], where: str) -> None:
    """Every field that evaluate, replay and ``Plan.policies`` read, with its type and range."""
    c = _Checker(where)
    kind = c.string(data["kind"], "kind")
    if kind not in PLAN_KINDS:
        raise PlanError(f"plan kind {kind!r} is not supported yet; this tierplan plans "
                        f"{', '.join(repr(k) for k in PLAN_KINDS)}{where}")
    c.string(data["status"], "status")
    objective = data.get("objective", "throughput")
    if objective not in ("throughput", "latency"):
        raise c.fail("objective", "must be 'throughput' or 'latency'", objective)
    if not isinstance(data.get("explanation", ""), str):
        raise c.fail("explanation", "must be a string", data["explanation"])

    w = c.mapping(data["workload"], "workload")
    if "model" not in w:
        raise c.missing("workload.model")
    c.string(w["model"], "workload.model", empty=False)
    if w.get("model_file") is not None:
        c.string(w["model_file"], "workload.model_file")
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

    n_ranges = None
    for i, entry in enumerate(c.sequence(data["layers"], "layers")):
        at = f"layers[{i}]"
        entry = c.mapping(entry, at)
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
            raise c.fail(f"{at}.kv_actions", f"must hold {n_ranges} token splits, as layers[0] does",
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
    decided = bool(data["layers"])
    head = c.mapping(data.get("head", {}), "head")
    if decided and "on_gpu" not in head:
        raise c.missing("head.on_gpu")
    if "on_gpu" in head and not isinstance(head["on_gpu"], bool):
        c.number(head["on_gpu"], "head.on_gpu", 0.0, 1.0)
    activations = c.mapping(data.get("activations", {}), "activations")
    if decided and "prefill_hidden_on_gpu" not in activations:
        raise c.missing("activations.prefill_hidden_on_gpu")
    if "prefill_hidden_on_gpu" in activations:
        c.number(activations["prefill_hidden_on_gpu"], "activations.prefill_hidden_on_gpu", 0.0, 1.0)
    if data.get("predicted") is not None:
        c.mapping(data["predicted"], "predicted")
    for key in ("memory", "capacity", "baselines", "solver"):
        c.mapping(data.get(key, {}), key)
    c.sequence(data.get("context_ranges", []), "context_ranges")


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
