"""The Plan: the one artifact shared by the CLI, notebooks and validate. Versioned, JSON/YAML on disk.

Field names are stable (later tools read them); see ``Plan.to_dict`` for the layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from costmodel import Fractions, LayerPolicy, TokenSplit
from solver.errors import PlanError

SCHEMA_VERSION = 1


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
        where = f" ({file})" if file else ""
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a mapping, got {type(data).__name__}{where}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PlanError(f"schema_version must be {SCHEMA_VERSION}, got {version!r}{where}")
        for key in ("kind", "status", "workload", "hardware", "layers"):
            if key not in data:
                raise PlanError(f"plan field {key!r} is missing{where}")
        return cls(
            kind=data["kind"], status=data["status"], objective=data.get("objective", "throughput"),
            workload=data["workload"], hardware=data["hardware"], predicted=data.get("predicted"),
            memory=data.get("memory", {}), capacity=data.get("capacity", {}), layers=tuple(data["layers"]),
            head=data.get("head", {}), activations=data.get("activations", {}), context_ranges=tuple(data.get("context_ranges", ())),
            baselines=data.get("baselines", {}), solver=data.get("solver", {}),
            explanation=data.get("explanation", ""),
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (yaml.safe_dump(self.to_dict(), sort_keys=False) if path.suffix in (".yaml", ".yml")
                else json.dumps(self.to_dict(), indent=1))
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise PlanError(f"plan file not found: {path}") from None
        try:
            data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise PlanError(f"malformed plan file: {err} ({path})") from None
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
        except (KeyError, TypeError) as err:
            raise PlanError(f"layer entry is malformed: missing or bad field {err}") from None
        head = self.head.get("on_gpu", True)
        return tuple(pols), head if isinstance(head, bool) else float(head)
