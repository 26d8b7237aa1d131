"""Published runs as the exam: predict each cited measurement with the shipped profiles, report the error.

``validate/data/published_kv.yaml`` holds measurements of offloading systems (FlexGen, HF
Accelerate, DeepSpeed ZeRO-Inference) with the paper or repository, the table, the machine, the
workload and the policy that ran. Each row is predicted with the bundled system it names, by the
same cost model that plans (no fitting: a profile number changes only with a cited measurement of
that hardware), and printed with its error. Plain Python: no torch.

Rows the cost model cannot express are listed as skipped, with the reason (4-bit compression, a
model that is not bundled).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from costmodel import KvWorkload, WorkloadError, list_models, load_model
from hwprofiles import ProfileError, load_system
from solver import evaluate_policy
from solver.kv import FLEXGEN_ENGINE
from validate.errors import ReplayError

PUBLISHED_KV = Path(__file__).resolve().parent / "data" / "published_kv.yaml"
PUBLISHED_EMBEDDINGS = Path(__file__).resolve().parent / "data" / "published_embeddings.yaml"
# The Zipf exponent every Criteo table is assumed to follow (no public per-table skew exists): the one
# NVIDIA's synthetic Criteo generator uses (see costmodel/recmodels/criteo-kaggle.yaml).
CRITEO_ZIPF_ALPHA = 1.45
METRICS = ("throughput_tokens_per_s", "decode_throughput_tokens_per_s", "outcome")


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedResult:
    """One published measurement and its prediction."""

    id: str
    citation: str
    hardware: str
    workload: str
    policy: str
    metric: str
    measured: float | str
    predicted: float | str | None = None
    error_pct: float | None = None
    status: str = "predicted"  # predicted | skipped
    note: str = ""
    family: str = "kv"

    def as_dict(self) -> dict:
        return {"id": self.id, "citation": self.citation, "hardware": self.hardware, "workload": self.workload,
                "policy": self.policy, "metric": self.metric, "measured": self.measured,
                "predicted": self.predicted, "error_pct": self.error_pct, "status": self.status, "note": self.note,
                "family": self.family}


def load_rows(path: str | Path = PUBLISHED_KV) -> list[dict]:
    """The rows of a published-runs file (YAML, loaded safely)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ReplayError(f"cannot read published runs: {err} ({path})") from None
    rows = (data or {}).get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ReplayError(f"published runs must be a mapping with a 'rows' list ({path})")
    return rows


def policy_name(policy: dict) -> tuple[str, bool]:
    """The tierplan policy a published row ran, and whether its attention over offloaded KV was on
    the CPU. FlexGen rows give ``--percent``; Accelerate / ZeRO-Inference rows give the tiers."""
    if policy.get("kind") == "flexgen":
        pct = policy["percent"]
        return "flexgen:" + ",".join(str(int(p)) for p in pct), bool(policy.get("cpu_attention", False))
    if policy.get("kind") == "all-offload":
        w = {"gpu": (100, 0), "cpu": (0, 100), "disk": (0, 0)}[policy.get("weights", "cpu")]
        kv = {"gpu": (100, 0), "cpu": (0, 100), "disk": (0, 0)}[policy.get("kv", "gpu")]
        return f"flexgen:{w[0]},{w[1]},{kv[0]},{kv[1]},100,0", policy.get("attention", "gpu") == "cpu"
    raise WorkloadError(f"policy kind {policy.get('kind')!r} is not modelled")


def workload_of(row: dict) -> KvWorkload:
    """The row's workload as the engine that ran it allocates and runs it: FlexGen's GPU batches, a
    GPU batch's whole prompt prefilled at once, unfused (batched-matmul) attention as both FlexGen's
    and Transformers' OPT of the time compute it; attention and MLP weights streamed separately in
    FlexGen (``sep_layer``), whole decoder layers in Accelerate and ZeRO-3; overlap, pinned weights
    and FlexGen's fp32 CPU-attention workspace as the row's policy states (see KvWorkload)."""
    w, policy = row["workload"], row["policy"]
    flexgen = policy.get("kind") == "flexgen"
    gpu_batch = int(w.get("gpu_batch") or w["batch"])
    batch = int(w["batch"])
    # Accelerate's hooks copy a module's weights to the GPU in its forward pre-hook and wait for them;
    # FlexGen with --overlap False runs its serial loop; ZeRO-3 prefetches and FlexGen overlaps.
    accelerate = "accelerate" in str(row.get("system_measured", "")).lower()
    pinned = policy.get("pin_weight", policy.get("pin_weights", True))
    engine = dict(FLEXGEN_ENGINE) if flexgen else {"prefill_chunk_tokens": 0, "fused_attention": False}
    if flexgen and not policy.get("sep_layer", True):
        engine["stream_granularity"] = "layer"
    if policy.get("cpu_repeat_kv"):
        engine["cpu_attention_repeat_kv"] = True
    return KvWorkload(model=load_model(row["model"]), batch=batch, prompt_len=int(w["prompt"]), gen_len=int(w["gen"]),
                      gpu_batch=gpu_batch if gpu_batch != batch else 0, overlap=bool(policy.get("overlap", not accelerate)),
                      pinned_weights=bool(pinned), **engine)


def _describe_workload(row: dict) -> str:
    w = row["workload"]
    split = f" ({w['gpu_batch']}x{w['gpu_batches']})" if w.get("gpu_batches", 1) > 1 else ""
    return f"{row['model']} p{w['prompt']} g{w['gen']} b{w['batch']}{split}"


def predict_row(row: dict) -> PublishedResult:
    """Predict one published measurement (or say why it is skipped)."""
    measured = row["measured"]
    policy = row.get("policy", {})
    base = dict(id=row["id"], citation=f"{row.get('paper', '').split('.')[0][:40]}; {row.get('table', '')[:40]}",
                hardware=row.get("hw_profile", ""), workload=_describe_workload(row),
                policy=row.get("system_measured", ""), metric=measured["metric"], measured=measured["value"])
    if row.get("compressed"):
        return PublishedResult(**base, status="skipped", note="4-bit compression is not modelled")
    if row["model"] not in list_models():
        return PublishedResult(**base, status="skipped", note=f"model {row['model']} is not bundled")
    try:
        name, cpu_attention = policy_name(policy)
        wl = workload_of(row)
        system = load_system(row["hw_profile"], list(row.get("hw_overrides") or []))
    except (WorkloadError, ProfileError, KeyError) as err:
        return PublishedResult(**base, status="skipped", note=str(err))
    res = evaluate_policy(name if cpu_attention else name + ":gpu-attention", wl, system)
    base["policy"] = f"{base['policy']} {name}{'' if cpu_attention else ' (gpu attention)'}"
    if measured["metric"] == "outcome":
        predicted = "fits" if res.feasible else "OOM"
        agree = (str(measured["value"]).upper() == "OOM") == (not res.feasible)
        return PublishedResult(**base, predicted=predicted, note="agrees" if agree else "disagrees")
    if not res.feasible:
        return PublishedResult(**base, predicted="infeasible", note=res.reason)
    cost, gen = res.evaluated.cost, wl.gen_len
    # The harnesses time prefill (which yields the first token) and gen - 1 decode steps.
    decode_s = cost.decode_s * (gen - 1) / gen
    if measured["metric"] == "throughput_tokens_per_s":
        predicted = wl.batch * gen / (cost.prefill_s + decode_s)
    else:
        predicted = wl.batch * (gen - 1) / decode_s
    value = float(measured["value"])
    return PublishedResult(**base, predicted=predicted, error_pct=100.0 * (predicted - value) / value)


def _rec_model(spec: dict, row_id: str):
    """The row's DLRM as the cost model's RecModel: its stated tables, width, MLPs and interaction,
    fp32 rows (every row's tables are fp32), SGD, each table Zipf(:data:`CRITEO_ZIPF_ALPHA`)."""
    from costmodel import rec_model_from_dict

    return rec_model_from_dict({
        "name": row_id, "dense_features": int(spec["num_dense_features"]), "bottom_mlp": list(spec["bottom_mlp"]),
        "top_mlp": list(spec["top_mlp"]), "interaction": {"kind": spec.get("interaction", "dot")},
        "defaults": {"dim": int(spec["embedding_dim"]), "dtype_bytes": 4, "pooling": 1},
        "access": {"kind": "zipf", "alpha": CRITEO_ZIPF_ALPHA},
        "tables": [{"name": f"cat_{i}", "rows": int(r)} for i, r in enumerate(spec["cardinalities"])]},
        file=f"{PUBLISHED_EMBEDDINGS.name}:{row_id}")


def _emb_policy(policy: dict, rows: int) -> tuple[str | None, str]:
    """The cost model's policy and runtime for a row's placement: all in HBM (FBGEMM); ColossalAI's
    frequency-aware cache with its stated ratio (``colossalai-cache:RATIO`` on runtime ``colossalai``,
    which must give the stated ``cache_rows``). None where the source does not say where the tables
    were (e.g. TorchRec "with UVM": which kernel its planner chose per table is not stated)."""
    kind = policy.get("kind")
    if kind == "all-hbm":
        return "all-gpu", "fbgemm"
    if kind == "freq-aware-cache":
        ratio, stated = float(policy["cache_ratio"]), int(policy["cache_rows"])
        if math.floor(ratio * rows + 1e-9) != stated:
            raise WorkloadError(f"policy.cache_rows {stated:,} is not floor(cache_ratio {ratio} x {rows:,} rows)")
        return f"colossalai-cache:{ratio!r}", "colossalai"
    return None, "fbgemm"


def predict_embeddings_row(row: dict) -> PublishedResult:
    """Predict one published DLRM training measurement (or say why it is skipped)."""
    from costmodel import EmbWorkload, baseline_policies, evaluate_embeddings
    from hwprofiles import parse_quantity
    from hwprofiles.units import Dimension

    measured, w, spec = row["measured"], row["workload"], row["model"]
    base = dict(id=row["id"], citation=str(row.get("table", ""))[:40], hardware=row.get("hw_profile", ""),
                workload=f"{spec.get('dataset')} b{w['batch']} {w.get('precision')}", policy=row.get("system_measured", ""),
                metric=measured["metric"], measured=measured["value"], family="embeddings")
    if w.get("gpus", 1) != 1:
        return PublishedResult(**base, status="skipped", note="multi-GPU")
    if not spec.get("cardinalities"):
        return PublishedResult(**base, status="skipped", note="no table list")
    try:
        model = _rec_model(spec, row["id"])
        # amp: fp16 MLPs; tf32: fp32 tensors with matmuls on TF32 tensor cores (the rows' PyTorch, 20.06-21.10
        # NGC containers, allowed TF32 matmuls by default: torch 1.7-1.11); fp32: plain fp32.
        precision = w.get("precision")
        name, runtime = _emb_policy(row.get("policy", {}), sum(t.rows for t in model.tables))
        wl = EmbWorkload(model=model, batch=int(w["batch"]), dtype_bytes=2 if precision == "amp" else 4,
                         tf32=precision == "tf32", runtime=runtime)
        system = load_system(row["hw_profile"])
    except (WorkloadError, ProfileError, KeyError) as err:
        return PublishedResult(**base, status="skipped", note=str(err))
    if name is None:
        return PublishedResult(**base, status="skipped",
                               note=f"placement not stated ({row['policy'].get('kind')}), not guessed")
    cost = evaluate_embeddings(wl, system, baseline_policies(name, wl, system))
    base["policy"] = (f"{base['policy']} as {name}" + ("" if runtime == "fbgemm" else f" on runtime {runtime}")
                      + ("" if row.get("policy_certain", True) else " (policy not certain)"))
    if not cost.feasible:
        return PublishedResult(**base, predicted="infeasible", note=cost.explain_shortfall())
    if measured["metric"] == "samples_per_s":
        predicted, value = cost.samples_per_s, float(measured["value"])
    elif measured["metric"] == "iterations_per_s":
        predicted, value = cost.samples_per_s / wl.batch, float(measured["value"])
    elif measured["metric"] == "gpu_memory_bytes" and measured.get("unit_stated", row.get("unit_stated", True)):
        # allocated between iterations (after an epoch) or the iteration's peak, as the harness logged it
        point = measured.get("point", "peak")
        if point not in ("peak", "between-iterations"):
            return PublishedResult(**base, status="skipped", note=f"measured.point {point!r} is not peak or "
                                                                  f"between-iterations")
        predicted = cost.gpu_between_iterations_bytes if point == "between-iterations" else cost.memory.gpu_bytes
        value = parse_quantity(str(measured["value"]), Dimension.BYTES, field="measured.value", file=row["id"])
    else:
        return PublishedResult(**base, status="skipped", note="a memory figure without its unit")
    return PublishedResult(**base, predicted=predicted, error_pct=100.0 * (predicted - value) / value)


def predict_published(path: str | Path = PUBLISHED_KV) -> list[PublishedResult]:
    """Every published row predicted: the KV family's file, the embeddings family's and the training
    family's (:mod:`validate.published_training`)."""
    out = [predict_row(row) for row in load_rows(path)]
    if Path(path) == PUBLISHED_KV and PUBLISHED_EMBEDDINGS.exists():
        out += [predict_embeddings_row(row) for row in load_rows(PUBLISHED_EMBEDDINGS)]
    if Path(path) == PUBLISHED_KV:
        from validate.published_training import PUBLISHED_TRAINING, predict_published_training

        if PUBLISHED_TRAINING.exists():
            out += predict_published_training()
    return out


def summary(results: list[PublishedResult], family: str | None = None) -> dict:
    """Counts and |error| figures, over every row or one family's."""
    results = [r for r in results if family is None or r.family == family]
    errors = [abs(r.error_pct) for r in results if r.error_pct is not None]
    return {"rows": len(results), "predicted": len(errors),
            "skipped": sum(r.status == "skipped" for r in results),
            "mean_abs_error_pct": statistics.fmean(errors) if errors else None,
            "max_abs_error_pct": max(errors) if errors else None,
            "within_25pct": sum(e <= 25 for e in errors)}


def table(results: list[PublishedResult], *, skipped: bool = False) -> str:
    """The published-runs table: measured, predicted, error; then the mean and max |error|."""
    rows = [r for r in results if skipped or r.status != "skipped"]
    head = ["id", "hardware", "workload", "measured", "predicted", "error %"]
    body = []
    for r in rows:
        pred = f"{r.predicted:.3g}" if isinstance(r.predicted, float) else str(r.predicted or "-")
        if r.metric == "gpu_memory_bytes" and isinstance(r.predicted, float):
            pred = f"{r.predicted / 2**30:.3g} GiB"
        err = (f"{r.error_pct:+.1f}" if r.error_pct is not None
               else r.note if r.status == "skipped" or r.metric == "outcome" else "-")
        body.append([r.id, r.hardware, r.workload, f"{r.measured}", pred, err])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    for family in sorted({r.family for r in results}):
        s = summary(results, family)
        if s["predicted"]:
            lines.append(f"{family}: mean |error| {s['mean_abs_error_pct']:.1f} %, max |error| "
                         f"{s['max_abs_error_pct']:.1f} % over {s['predicted']} measurements ({s['within_25pct']} within "
                         f"25 %); {s['skipped']} rows skipped (--skipped lists them with the reason)")
    return "\n".join(lines)
