"""Published training-with-offload runs as the exam: predict each cited figure with the shipped profiles.

``validate/data/published_training.yaml`` holds measurements of transformer training with model
states offloaded (DeepSpeed ZeRO-Offload / ZeRO-Infinity, recompute) with the source, the machine,
the workload and the baseline policy of :func:`costmodel.training.baseline_policies` that names
what ran. Each row is one figure (a run's iteration, forward, backward and step are four rows),
predicted by :func:`costmodel.training.evaluate_training` with the bundled system it names and no
fitting. A figure given as a range is compared with its midpoint.

Rows the cost model cannot express are returned as skipped with every reason: model-parallel runs
(tensor, pipeline or sequence parallelism, or many nodes), a model that is not bundled, setup
fields the source does not state (``unstated``), several GPUs without the interconnect's bandwidth.

The results are :class:`validate.published.PublishedResult` objects of family ``"training"``, the
type the KV and embeddings predictors return, so ``published.table`` and ``published.summary``
print them unchanged. Plain Python: no torch.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from costmodel import WorkloadError, list_models, load_model
from costmodel.training import (
    ACTIVATION_BASELINES,
    STATE_BASELINES,
    Precision,
    TrainCost,
    TrainWorkload,
    baseline_policies,
    evaluate_training,
)
from hwprofiles import ProfileError, System, list_systems, load_system, parse_quantity
from hwprofiles.units import Dimension
from validate.errors import ReplayError

if TYPE_CHECKING:
    from validate.published import PublishedResult

PUBLISHED_TRAINING = Path(__file__).resolve().parent / "data" / "published_training.yaml"
FAMILY = "training"


class TrainingMetric(enum.StrEnum):
    """What a published training figure measures (the YAML's ``measured.metric``)."""

    ITERATION_S = "iteration_s"
    FORWARD_S = "forward_s"
    BACKWARD_S = "backward_s"
    STEP_S = "step_s"
    TOKENS_PER_S = "tokens_per_s"
    SAMPLES_PER_S = "samples_per_s"
    TFLOPS_PER_GPU = "tflops_per_gpu"
    MFU = "mfu"
    RUN_S = "run_s"
    OUTCOME = "outcome"  # the run fit (or ran out of memory) on the stated machine: value "fits" or "OOM"


# The unit each metric's value is stated in (``measured.unit`` must match: no conversions here).
METRIC_UNITS = {
    TrainingMetric.ITERATION_S: "s", TrainingMetric.FORWARD_S: "s", TrainingMetric.BACKWARD_S: "s",
    TrainingMetric.STEP_S: "s", TrainingMetric.TOKENS_PER_S: "tokens/s", TrainingMetric.SAMPLES_PER_S: "samples/s",
    TrainingMetric.TFLOPS_PER_GPU: "TFLOP/s", TrainingMetric.MFU: "%", TrainingMetric.RUN_S: "s",
    TrainingMetric.OUTCOME: "outcome",
}
OUTCOMES = ("fits", "OOM")
_FLOP_METRICS = (TrainingMetric.TFLOPS_PER_GPU, TrainingMetric.MFU)
PARALLELISMS = ("tensor", "pipeline", "sequence", "expert")
_TEXT_FIELDS = ("paper", "table", "url", "system_measured", "hardware", "model", "policy", "notes")
_ROW_FIELDS = {"id", *_TEXT_FIELDS, "hw_profile", "hw_overrides", "workload", "measured", "unstated"}
_MEASURED_FIELDS = {"metric", "value", "unit", "definition", "iterations", "flop_count"}
_INT_FIELDS = ("seq_len", "micro_batch", "grad_accum", "gpus")
_BOOL_FIELDS = ("fused_attention", "dropout", "pin_memory", "fp32_grad_copy", "grad_clip")
_STR_FIELDS = ("precision", "optimizer", "moments_dtype", "overlap", "kernels")
_WORKLOAD_FIELDS = {*_INT_FIELDS, *_BOOL_FIELDS, *_STR_FIELDS, "zero_stage", "snapshot_every", "interconnect_bytes_per_s",
                    "parallelism"}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingRow:
    """One published training figure, validated (see the YAML header for every field).

    ``low``/``high``: the figure, equal unless the source gives a range; ``workload``: the
    :class:`~costmodel.training.TrainWorkload` keyword arguments the row states (``parallelism``
    kept apart); ``unstated``: setup fields the source leaves out.

    Examples
    --------
    >>> row = next(r for r in load_training_rows() if r.id == "dso-tutorial-gpt2-10b-v100-iteration")
    >>> row.low, row.high, row.value, row.metric.value
    (25.7, 26.8, 26.25, 'iteration_s')
    """

    id: str
    paper: str
    table: str
    url: str
    system_measured: str
    hardware: str
    model: str
    policy: str
    notes: str
    metric: TrainingMetric
    low: float
    high: float
    unit: str
    definition: str
    hw_profile: str | None = None
    hw_overrides: tuple[str, ...] = ()
    workload: dict[str, object] = field(default_factory=dict, hash=False)
    parallelism: tuple[str, ...] = ()
    unstated: tuple[str, ...] = ()
    iterations: int | None = None
    flop_count: str | None = None
    outcome: str | None = None  # metric outcome: "fits" or "OOM" (low = high = 0)

    @property
    def value(self) -> float:
        """The figure compared with the prediction: the midpoint of a range, else the figure (0 for an
        outcome row, whose ``outcome`` is compared instead)."""
        return (self.low + self.high) / 2.0

    @property
    def is_range(self) -> bool:
        return self.high > self.low

    def _profile_has_interconnect(self) -> bool:
        if self.hw_profile is None:
            return False
        try:
            return load_system(self.hw_profile, self.hw_overrides).interconnect is not None
        except ProfileError:
            return False

    def skip_reasons(self) -> tuple[str, ...]:
        """Why the cost model cannot predict this row (empty when it can)."""
        reasons = []
        if self.parallelism:
            reasons.append(f"{'/'.join(self.parallelism)} parallelism is not modelled (the cost model runs data "
                           "parallel on one node)")
        if self.model not in list_models():
            reasons.append(f"model {self.model!r} is not bundled")
        if int(self.workload.get("gpus", 1)) > 1 and self.workload.get("interconnect_bytes_per_s") is None \
                and not self._profile_has_interconnect():
            reasons.append(f"gpus={self.workload['gpus']} needs the GPU interconnect's bus bandwidth, which is not "
                           "stated (workload.interconnect_bytes_per_s) and not in the hardware profile")
        if self.unstated:
            reasons.append(f"not stated in the source: {', '.join(self.unstated)}")
        if self.metric in _FLOP_METRICS and self.flop_count != "model" and "flop_count" not in self.unstated:
            reasons.append("the FLOP count behind the figure is not stated as the model's (measured.flop_count: model)")
        if self.hw_profile is None:
            reasons.append("no bundled hardware profile (hw_profile not stated)")
        return tuple(reasons)


def _fail(row_id: str, field_name: str, rule: str, value: object, path: Path) -> ReplayError:
    return ReplayError(f"published training row {row_id!r}: {field_name} {rule}, got {value!r} ({path})")


def _text(raw: dict, key: str, row_id: str, path: Path, *, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(row_id, key, "must be non-empty text", value, path)
    return value.strip()


def _positive(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def _workload(raw: object, row_id: str, path: Path) -> tuple[dict[str, object], tuple[str, ...]]:
    if raw is None:
        return {}, ()
    if not isinstance(raw, dict):
        raise _fail(row_id, "workload", "must be a mapping of TrainWorkload fields", raw, path)
    unknown = sorted(set(raw) - _WORKLOAD_FIELDS)
    if unknown:
        raise _fail(row_id, f"workload.{unknown[0]}", f"is not a workload field (one of {', '.join(sorted(_WORKLOAD_FIELDS))})",
                    raw[unknown[0]], path)
    wl: dict[str, object] = {}
    for key, value in raw.items():
        name = f"workload.{key}"
        if key in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(row_id, name, "must be a positive integer", value, path)
        elif key == "zero_stage":
            if isinstance(value, bool) or value not in (0, 1, 2, 3):
                raise _fail(row_id, name, "must be 0, 1, 2 or 3", value, path)
        elif key == "snapshot_every":  # 0: no snapshot
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _fail(row_id, name, "must be 0 or a positive integer", value, path)
        elif key in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise _fail(row_id, name, "must be true or false", value, path)
        elif key in _STR_FIELDS:
            if not isinstance(value, str) or not value:
                raise _fail(row_id, name, "must be text", value, path)
        elif key == "interconnect_bytes_per_s":
            if isinstance(value, str):
                try:
                    value = parse_quantity(value, Dimension.BANDWIDTH, field=name, file=f"{path}: {row_id}")
                except ProfileError as err:
                    raise _fail(row_id, name, f"must be a bandwidth quantity ({err})", value, path) from None
            if not _positive(value):
                raise _fail(row_id, name, "must be a positive bandwidth ('300 GB/s')", value, path)
        elif key == "parallelism":
            if not isinstance(value, list) or not value or any(p not in PARALLELISMS for p in value):
                raise _fail(row_id, name, f"must be a non-empty list of {', '.join(PARALLELISMS)}", value, path)
            continue
        wl[key] = value
    return wl, tuple(raw.get("parallelism") or ())


def _measured(raw: object, row_id: str, path: Path) -> dict[str, object]:
    if not isinstance(raw, dict):
        raise _fail(row_id, "measured", "must be a mapping with metric, value, unit and definition", raw, path)
    unknown = sorted(set(raw) - _MEASURED_FIELDS)
    if unknown:
        raise _fail(row_id, f"measured.{unknown[0]}", f"is not a measured field (one of {', '.join(sorted(_MEASURED_FIELDS))})",
                    raw[unknown[0]], path)
    try:
        metric = TrainingMetric(raw.get("metric"))
    except ValueError:
        raise _fail(row_id, "measured.metric", f"must be one of {', '.join(m.value for m in TrainingMetric)}",
                    raw.get("metric"), path) from None
    unit = raw.get("unit")
    if unit != METRIC_UNITS[metric]:
        raise _fail(row_id, "measured.unit", f"must be {METRIC_UNITS[metric]!r} for metric {metric.value!r}", unit, path)
    value = raw.get("value")
    outcome = None
    if metric is TrainingMetric.OUTCOME:
        if value not in OUTCOMES:
            raise _fail(row_id, "measured.value", f"must be one of {', '.join(OUTCOMES)} for metric 'outcome'", value,
                        path)
        low = high = 0.0
        outcome = value
    elif _positive(value):
        low = high = float(value)
    elif isinstance(value, list) and len(value) == 2 and all(_positive(v) for v in value) and value[0] <= value[1]:
        low, high = float(value[0]), float(value[1])
    else:
        raise _fail(row_id, "measured.value", "must be a positive number or a range [low, high] with "
                    "0 < low <= high", value, path)
    definition = raw.get("definition")
    if not isinstance(definition, str) or not definition.strip():
        raise _fail(row_id, "measured.definition", "must be non-empty text (how the source computes the figure)",
                    definition, path)
    iterations = raw.get("iterations")
    if metric is TrainingMetric.RUN_S and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                           or iterations < 1):
        raise _fail(row_id, "measured.iterations", "must be a positive integer for metric 'run_s'", iterations, path)
    flop_count = raw.get("flop_count")
    if flop_count is not None and flop_count not in ("model", "hardware"):
        raise _fail(row_id, "measured.flop_count", "must be 'model' (forward + backward, no recompute) or "
                    "'hardware' (with recompute)", flop_count, path)
    return {"metric": metric, "low": low, "high": high, "unit": unit, "definition": definition.strip(),
            "iterations": iterations, "flop_count": flop_count, "outcome": outcome}


def _policy(name: str, row: TrainingRow, path: Path) -> None:
    """Check the policy names baselines; for a predicted row, that the workload runs it."""
    for part in name.split("+"):
        base = part.strip().partition(":")[0]
        if base not in (*STATE_BASELINES, *ACTIVATION_BASELINES):
            raise _fail(row.id, "policy", f"must name baselines of costmodel.training ({', '.join(STATE_BASELINES)}, "
                        f"{', '.join(ACTIVATION_BASELINES)}, joined by '+')", name, path)
    if not row.skip_reasons():
        try:
            baseline_policies(name, training_workload(row), None)
        except WorkloadError as err:
            raise _fail(row.id, "policy", f"must run on the row's workload ({err})", name, path) from None


def parse_training_row(raw: object, index: int, path: str | Path = PUBLISHED_TRAINING) -> TrainingRow:
    """Validate one YAML row; a bad one raises :class:`ReplayError` naming the row, the field and the file."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise ReplayError(f"published training row {index} must be a mapping, got {type(raw).__name__} ({path})")
    row_id = raw.get("id")
    if not isinstance(row_id, str) or not row_id.strip():
        raise ReplayError(f"published training row {index}: id must be non-empty text, got {row_id!r} ({path})")
    unknown = sorted(set(raw) - _ROW_FIELDS)
    if unknown:
        raise _fail(row_id, unknown[0], f"is not a row field (one of {', '.join(sorted(_ROW_FIELDS))})", raw[unknown[0]],
                    path)
    texts = {key: _text(raw, key, row_id, path) for key in _TEXT_FIELDS}
    hw_profile = _text(raw, "hw_profile", row_id, path, required=False)
    if hw_profile is not None and hw_profile not in list_systems():
        raise _fail(row_id, "hw_profile", f"must be a bundled system ({', '.join(list_systems())})", hw_profile, path)
    overrides = raw.get("hw_overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and o for o in overrides):
        raise _fail(row_id, "hw_overrides", "must be a list of --set strings ('host.memory=1.5TB')", overrides, path)
    unstated = raw.get("unstated") or []
    if not isinstance(unstated, list) or not all(isinstance(u, str) and u.strip() for u in unstated):
        raise _fail(row_id, "unstated", "must be a list of the setup fields the source does not state", unstated, path)
    workload, parallelism = _workload(raw.get("workload"), row_id, path)
    row = TrainingRow(id=row_id, **texts, hw_profile=hw_profile, hw_overrides=tuple(overrides), workload=workload,
                      parallelism=parallelism, unstated=tuple(unstated), **_measured(raw.get("measured"), row_id, path))
    if not row.skip_reasons():
        for key in ("seq_len", "micro_batch"):
            if key not in workload:
                raise _fail(row_id, f"workload.{key}", "is required for a predicted row (or list it in unstated)",
                            None, path)
    _policy(row.policy, row, path)
    return row


def load_training_rows(path: str | Path = PUBLISHED_TRAINING) -> list[TrainingRow]:
    """Every row of a published training file, validated; ids must be unique."""
    from validate.published import load_rows

    rows = [parse_training_row(raw, i, path) for i, raw in enumerate(load_rows(path))]
    seen: set[str] = set()
    for row in rows:
        if row.id in seen:
            raise _fail(row.id, "id", "must be unique in the file", row.id, Path(path))
        seen.add(row.id)
    return rows


def training_workload(row: TrainingRow) -> TrainWorkload:
    """The row's :class:`TrainWorkload`: the bundled model and the fields the row states (the rest
    are TrainWorkload's defaults)."""
    return TrainWorkload(model=load_model(row.model), **row.workload)


def peak_flop_per_s(wl: TrainWorkload, system: System) -> float:
    """The GPU's dense peak at the workload's precision: the tensor fp16/bf16 figure, or fp32."""
    return system.gpu.fp32_flop_per_s if wl.precision is Precision.FP32 else system.gpu.fp16_flop_per_s


def predicted_figure(metric: TrainingMetric, cost: TrainCost, wl: TrainWorkload, row: TrainingRow,
                     peak: float) -> float:
    """The prediction of one metric from a TrainCost (see the YAML header's table).

    ``mfu`` = ``TrainCost.mfu`` in percent: model FLOPs (forward + backward, no recompute) per GPU
    over iteration x ``peak``; ``tflops_per_gpu`` = ``mfu x peak / 1e12``, the model FLOP/s of one
    GPU; ``samples_per_s`` = micro_batch x grad_accum x gpus / iteration_s; ``run_s`` =
    ``measured.iterations x iteration_s``.
    """
    return {
        TrainingMetric.ITERATION_S: lambda: cost.iteration_s,
        TrainingMetric.FORWARD_S: lambda: cost.forward_s,
        TrainingMetric.BACKWARD_S: lambda: cost.backward_s,
        TrainingMetric.STEP_S: lambda: cost.step_s,
        TrainingMetric.TOKENS_PER_S: lambda: cost.tokens_per_s,
        TrainingMetric.SAMPLES_PER_S: lambda: wl.micro_batch * wl.grad_accum * wl.gpus / cost.iteration_s,
        TrainingMetric.TFLOPS_PER_GPU: lambda: cost.mfu * peak / 1e12,
        TrainingMetric.MFU: lambda: 100.0 * cost.mfu,
        TrainingMetric.RUN_S: lambda: float(row.iterations or 0) * cost.iteration_s,
    }[metric]()


def _describe(row: TrainingRow) -> str:
    w = row.workload
    parts = [row.model]
    if "seq_len" in w:
        parts.append(f"s{w['seq_len']}")
    if "micro_batch" in w:
        accum = int(w.get("grad_accum", 1))
        parts.append(f"b{w['micro_batch']}" + (f"x{accum}" if accum > 1 else ""))
    parts.append(f"{w.get('gpus', 1)}gpu")
    if "precision" in w:
        parts.append(str(w["precision"]))
    return " ".join(parts)


def predict_training_row(row: TrainingRow) -> PublishedResult:
    """Predict one published training figure (or say why it is skipped)."""
    from validate.published import PublishedResult

    note = (f"published {row.low:g}-{row.high:g} {row.unit}; compared with the midpoint" if row.is_range else "")
    base = {"id": row.id, "citation": f"{row.paper.split('.')[0][:40]}; {row.table[:40]}",
            "hardware": row.hw_profile or "", "workload": _describe(row),
            "policy": f"{row.system_measured} as {row.policy}", "metric": row.metric.value,
            "measured": row.outcome if row.metric is TrainingMetric.OUTCOME else row.value, "family": FAMILY}
    reasons = row.skip_reasons()
    if reasons:
        return PublishedResult(**base, status="skipped", note="; ".join(reasons))
    try:
        system = load_system(row.hw_profile, list(row.hw_overrides))
    except ProfileError as err:
        raise ReplayError(f"published training row {row.id!r}: hw_profile/hw_overrides cannot be loaded: {err}") from None
    wl = training_workload(row)
    cost = evaluate_training(wl, system, baseline_policies(row.policy, wl, system))
    if row.metric is TrainingMetric.OUTCOME:  # does the memory model admit (or refuse) what the source ran?
        predicted = "fits" if cost.feasible else "OOM"
        return PublishedResult(**base, predicted=predicted, note="agrees" if predicted == row.outcome else "disagrees")
    if not cost.feasible:
        return PublishedResult(**base, predicted="infeasible", note="; ".join(filter(None, [cost.explain_shortfall(), note])))
    predicted = predicted_figure(row.metric, cost, wl, row, peak_flop_per_s(wl, system))
    return PublishedResult(**base, predicted=predicted, error_pct=100.0 * (predicted - row.value) / row.value,
                           note=note)


def predict_published_training(path: str | Path = PUBLISHED_TRAINING) -> list[PublishedResult]:
    """Every row of the published training file, predicted or skipped, in file order.

    Returns :class:`validate.published.PublishedResult` objects with ``family="training"`` (their
    ``as_dict()`` has the KV and embeddings rows' keys); ``measured`` is the compared figure (a
    range's midpoint, with the range in ``note``).
    """
    return [predict_training_row(row) for row in load_training_rows(path)]


__all__ = [
    "FAMILY", "METRIC_UNITS", "OUTCOMES", "PARALLELISMS", "PUBLISHED_TRAINING", "TrainingMetric", "TrainingRow",
    "load_training_rows", "parse_training_row", "peak_flop_per_s", "predict_published_training",
    "predict_training_row", "predicted_figure", "training_workload",
]
