"""The rerunnable embeddings validation suite: fixed cases replayed, their error and their order tabulated.

Cases: two models, each with the baselines :data:`SUITE_BASELINES` (every table ``gpu``; every
table pooled on the CPU; every table over UVM; TorchRec's LRU UVM cache at load factor 0.2) and the
planner's plan (:func:`solver.embeddings.plan_embeddings`) made with tight device memory, so that
it must place tables off the GPU. Every case is replayed (:func:`validate.replay_embeddings.replay_embeddings`)
and compared with its own prediction on the same profile; the report checks that measured times
order each model's cases as predicted (:func:`validate.report.ordering`: pairs predicted more than
:data:`~validate.report.ORDER_MARGIN` apart must be measured in that order, near ties measured near
the predicted ratio), which is what a planner relies on, and gives each baseline's measured time
over the plan's.

Workloads (:func:`suite_workloads`) are chosen so that placements differ measurably:

* ``synthetic`` -- four tables of 1 KiB rows (dim 256), 4 Zipf(1.0) lookups per sample at batch
  1024: on the CPU stand-in a table's distinct rows are ~3.5 MB a batch, 35 ms over its link
  (:data:`CPU_LINK_BYTES_PER_S`, 0.1 GB/s) each way, so all-GPU, cached, CPU-pooled and UVM
  placements are predicted 4-170 ms apart;
* ``criteo-kaggle`` -- DLRM's Criteo Kaggle model (dim 16, one lookup per table) on four of its 26
  tables (chosen by :func:`~validate.replay_embeddings.choose_tables`, largest to smallest), its
  10M-row table cut to the CPU budget: the dense part dominates and placements are near ties,
  which the ordering check treats as ties.

Under CUDA the synthetic model is larger (2^22-row tables, dim 128, 8 lookups, batch 8192) and
Criteo Kaggle is replayed whole at batch 8192, over the real link.

:func:`run_embeddings_validation` is what ``tierplan validate --suite embeddings`` runs: profile
this machine unless a profile is given, run the suite, write the results and keep a record in
``validate/records/`` (``embeddings-<device>-<date>.json``, the KV suite's record format).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from costmodel.embeddings import RecModel, Table, ZipfAccess, load_rec_model
from costmodel.embeddings_cost import (
    EmbWorkload,
    TablePolicy,
    all_gpu,
    baseline_policies,
    evaluate_embeddings,
)
from costmodel.errors import WorkloadError
from hwprofiles import System, apply_overrides
from solver.embeddings import plan_embeddings
from validate.errors import ReplayError
from validate.replay_embeddings import (
    CPU_TABLE_BYTES,
    CUDA_TABLE_BYTES,
    choose_tables,
    replay_embeddings,
    scale_slice,
)
from validate.replay import resolve_device
from validate.report import ORDER_MARGIN, ordering, summary
from validate.suite import RECORDS_DIR, record_header, record_name, validation_system

SUITE_BASELINES = ("all-gpu", "cpu-hybrid", "uvm", "torchrec-uvm-cache:0.2")
# The CPU stand-in's link for this suite (prediction and copiers alike). One CPU core runs the
# replay's indexed row ops at 2-7 GB/s (torch 2.13, one thread, on the 2-core machine of
# validate/records/cpu-2core-2026-12-01-profile.yaml: index_select / index_copy_ of 10,000 rows of
# 256 B from a 64 MiB table took 1.1 / 1.2 ms, of 3,500 rows of 1 KiB from a 64 MiB table 0.53 /
# 0.82 ms), so at the profile's 1 GB/s the link is only a few times slower than the stand-in's
# "HBM", while PCIe is ~64x slower than HBM on an H100 host (3.35 TB/s, hwprofiles/data/gpus/
# h100-sxm.yaml, NVIDIA datasheet; 52 GB/s H2D, hwprofiles/data/links/pcie5-x16.yaml, nvbandwidth
# on Azure ND H100 v5): placements would differ mostly by device work the cost model prices at
# the memory roof. At 0.1 GB/s they differ by their traffic over the link, as on a GPU.
CPU_LINK_BYTES_PER_S = 0.1e9
# The plan's device memory: the all-GPU placement's need less this share of the table bytes.
TIGHT_TABLE_SHARE = 0.6
CRITEO_TABLES = 4


def synthetic_model(device: torch.device) -> RecModel:
    """The suite's synthetic DLRM: four identical Zipf tables, a one-layer bottom MLP, a small top MLP.

    >>> m = synthetic_model(torch.device("cpu"))
    >>> len(m.tables), m.tables[0].rows, m.tables[0].dim, m.total_table_bytes() // 2**20
    (4, 65536, 256, 256)
    """
    rows, dim, pooling = (1 << 22, 128, 8) if device.type == "cuda" else (1 << 16, 256, 4)
    source = "synthetic: tierplan's embeddings validation suite (validate/suite_embeddings.py)"
    tables = tuple(Table(name=f"syn_{i}", rows=rows, dim=dim, pooling=pooling,
                         access=ZipfAccess(rows=rows, alpha=1.0, source=source)) for i in range(4))
    return RecModel(name="synthetic", tables=tables, dense_features=13, bottom_mlp=(dim,), top_mlp=(64, 1),
                    source=source)


def suite_workloads(device: torch.device) -> dict[str, EmbWorkload]:
    """The suite's workloads for this device: the synthetic model, and Criteo Kaggle (four tables,
    cut to the CPU budget, on the CPU stand-in; whole under CUDA)."""
    if device.type == "cuda":
        return {"synthetic": EmbWorkload(model=synthetic_model(device), batch=8192),
                "criteo-kaggle": EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=8192)}
    criteo = EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=1024)
    pols = all_gpu(criteo)
    idx = choose_tables(pols, CRITEO_TABLES, sizes=[t.bytes for t in criteo.model.tables])
    criteo, _, _ = scale_slice(criteo, pols, idx, CPU_TABLE_BYTES)
    return {"synthetic": EmbWorkload(model=synthetic_model(device), batch=1024), "criteo-kaggle": criteo}


def suite_settings(device: torch.device, *, quick: bool = False, iterations: int | None = None,
                   repeats: int | None = None, warmup: int | None = None) -> dict[str, int]:
    """Iterations, repeats and warm-up of a suite run (explicit values win).

    >>> suite_settings(torch.device("cpu"), quick=True)
    {'iterations': 4, 'repeats': 2, 'warmup': 2}
    """
    default = {"iterations": 4 if quick else 8, "repeats": 2 if quick else 3, "warmup": 2}
    given = {"iterations": iterations, "repeats": repeats, "warmup": warmup}
    return {k: (v if v is not None else default[k]) for k, v in given.items()}


def tight_system(wl: EmbWorkload, system: System) -> System:
    """``system`` with device memory for the all-GPU placement less :data:`TIGHT_TABLE_SHARE` of the
    table bytes (the plan must move tables off the GPU); times are not changed by capacity."""
    need = evaluate_embeddings(wl, system, all_gpu(wl)).memory.gpu_bytes
    gpu = need - TIGHT_TABLE_SHARE * wl.model.total_table_bytes() + system.gpu.reserved_bytes
    return apply_overrides(system, [f"gpu.memory={gpu / 2**30:.6f}GiB"])


def _case_row(case: str, model: str, wl: EmbWorkload, r: dict) -> dict:
    keep = ("predicted_s", "measured_s", "error_pct", "mean_abs_error_pct", "max_abs_error_pct", "policy_digest",
            "link", "memory", "warnings", "slice", "stages", "tables", "predicted_full_model_s", "row_dtype",
            "dense_dtype")
    return {"case": case, "status": "replayed", "model": model, "workload": wl.summary(), **{k: r[k] for k in keep}}


def run_embeddings_suite(system: System, *, quick: bool = False, device: str | None = None,
                         iterations: int | None = None, repeats: int | None = None, warmup: int | None = None,
                         models: Sequence[str] | None = None, workloads: dict[str, EmbWorkload] | None = None,
                         baselines: Sequence[str] = SUITE_BASELINES, link_bytes_per_s: float | None = None,
                         progress: Callable[[str], None] = print, command: str = "") -> dict:
    """Plan, replay and compare every case; returns the record (JSON-able).

    Parameters
    ----------
    system : System
        The profile that predicts (measured on this machine, for the errors to mean something).
    quick : bool
        The short command: fewer iterations and repeats (:func:`suite_settings`).
    device : str or None
        ``cuda`` or ``cpu`` (default: cuda when available).
    iterations, repeats, warmup : int or None
        The timing (default: :func:`suite_settings`).
    models : sequence of str or None
        Which of the workloads to run (default: all).
    workloads : dict of str to EmbWorkload, or None
        Other cases than :func:`suite_workloads` (each replayed whole).
    baselines : sequence of str
        Named baselines (:func:`costmodel.embeddings_cost.baseline_policies`) replayed beside the plan.
    link_bytes_per_s : float or None
        CPU stand-in only: the link's rate, both ways, for the copiers *and* the prediction (the
        profile's ``link.h2d``/``link.d2h`` are overridden, its latency kept); default
        :data:`CPU_LINK_BYTES_PER_S`.
    command : str
        The command line, kept in the record.

    Returns
    -------
    dict
        ``cases`` (each with ``predicted_s``, ``measured_s``, ``error_pct`` per iteration, its stages
        and tables), ``summary`` (``mean_abs_error_pct``, ``max_abs_error_pct`` over cases and
        ``ordering``: ``pairs``, ``agree``, disagreements), ``baseline_time_over_plan_time``, and the
        record's identification (``device``, ``device_name``, ``driver``, ``torch``, ``cuda``, ``host``,
        ``tierplan_commit``, ``profile``, ``command``, ``date``).
    """
    dev = resolve_device(device)
    settings = suite_settings(dev, quick=quick, iterations=iterations, repeats=repeats, warmup=warmup)
    workloads = dict(workloads) if workloads is not None else suite_workloads(dev)
    if models is not None:
        unknown = [m for m in models if m not in workloads]
        if unknown:
            raise ReplayError(f"suite models must be among {sorted(workloads)}, got {unknown}")
        workloads = {m: workloads[m] for m in models}
    budget = CUDA_TABLE_BYTES if dev.type == "cuda" else CPU_TABLE_BYTES
    link_note = "the profile's link (CUDA copy streams)"
    if dev.type == "cuda":
        if link_bytes_per_s is not None:
            raise ReplayError("link_bytes_per_s paces the CPU stand-in's copiers; under CUDA the link is real")
    else:
        if link_bytes_per_s is None:
            link_bytes_per_s = CPU_LINK_BYTES_PER_S
        if isinstance(link_bytes_per_s, bool) or not isinstance(link_bytes_per_s, (int, float)) or \
                not (0 < link_bytes_per_s < float("inf")):
            raise ReplayError(f"link_bytes_per_s must be a positive finite rate, got {link_bytes_per_s!r}")
        gbs = f"{link_bytes_per_s / 1e9:.6g}GB/s"
        system = apply_overrides(system, [f"link.h2d={gbs}", f"link.d2h={gbs}"])
        link_note = (f"CPU stand-in: copiers paced to {gbs} both ways and predicted with link.h2d = link.d2h = "
                     f"{gbs} (the profile's latency kept); see CPU_LINK_BYTES_PER_S")
    cases: list[dict] = []
    compare: dict[str, dict[str, float]] = {}
    plan_cases: dict[str, str] = {}
    for name, wl in workloads.items():
        runs: list[tuple[str, System, tuple[TablePolicy, ...] | None, str]] = []
        progress(f"{name}: planning with tight device memory")
        tight = tight_system(wl, system)
        plan = plan_embeddings(wl, tight)
        plan_case = f"{name} plan (tight memory)"
        runs.append((plan_case, tight, plan.policies or None,
                     "" if plan.policies else f"no placement fits ({plan.status.value})"))
        for base in baselines:
            try:
                runs.append((f"{name} {base}", system, baseline_policies(base, wl, system), ""))
            except WorkloadError as err:
                runs.append((f"{name} {base}", system, None, str(err)))
        measured = {}
        for case, sysm, pols, reason in runs:
            progress(f"{case}:")
            if pols is None:
                cases.append({"case": case, "status": "infeasible", "model": name, "reason": reason})
                continue
            try:
                r = replay_embeddings(wl, sysm, pols, iterations=settings["iterations"], repeats=settings["repeats"],
                                      warmup=settings["warmup"], device=str(dev), max_table_bytes=budget,
                                      link_bytes_per_s=link_bytes_per_s, progress=lambda m: progress("  " + m))
            except ReplayError as err:
                cases.append({"case": case, "status": "not replayed", "model": name, "reason": str(err)})
                continue
            row = _case_row(case, name, wl, r)
            if case == plan_case:
                row["plan"] = {"selected": plan.selected, "status": plan.status.value,
                               "placements": [p.placement.value for p in pols],
                               "gpu_memory_bytes": tight.gpu.memory_bytes}
            cases.append(row)
            measured[case] = r["measured_s"]
        if plan_case in measured:
            plan_cases[name] = plan_case
            compare[name] = {b: measured[f"{name} {b}"] / measured[plan_case]
                             for b in baselines if f"{name} {b}" in measured}
    return {
        **record_header("embeddings", quick=quick, settings=settings, command=command, dev=dev, system=system),
        "cases": cases,
        "summary": summary(cases, margin=ORDER_MARGIN),
        "baseline_time_over_plan_time": compare,
        "plan_case": plan_cases,
        "link": link_note,
    }


def ordering_check(cases: list[dict], margin: float = ORDER_MARGIN) -> dict:
    """Whether measured times order each model's cases as predicted (:func:`validate.report.ordering`)."""
    return ordering(cases, margin)


def write_embeddings_record(result: dict, records_dir: str | Path = RECORDS_DIR,
                            profile: str | Path | None = None, *, prefix: str = "embeddings") -> Path:
    """Keep a suite result as ``<records_dir>/<prefix>-<record_name>.json`` (``-2``, ``-3``... if
    taken), with the profile YAML it was predicted with beside it (``<name>-profile.yaml``); the
    training suite keeps its records the same way (``prefix="training"``)."""
    from validate.report import write_json

    records_dir = Path(records_dir)
    base = f"{prefix}-{record_name(result)}"
    name, n = base, 1
    while (records_dir / f"{name}.json").exists():
        n += 1
        name = f"{base}-{n}"
    kept = {k: v for k, v in result.items() if k not in ("output_json", "plot", "record")}
    if profile is not None:
        records_dir.mkdir(parents=True, exist_ok=True)
        copy = records_dir / f"{name}-profile.yaml"
        shutil.copyfile(profile, copy)
        kept["profile"] = {**kept["profile"], "file": os.path.relpath(copy.resolve(), Path.cwd())}
    return write_json(kept, records_dir / f"{name}.json")


def run_embeddings_validation(*, hw: str | None = None, overrides: Sequence[str] = (), quick: bool = False,
                              device: str | None = None, iterations: int | None = None, repeats: int | None = None,
                              output: str | Path = "validate-out", records_dir: str | Path | None = RECORDS_DIR,
                              command: str = "tierplan validate --suite embeddings",
                              workloads: dict[str, EmbWorkload] | None = None,
                              progress: Callable[[str], None] = print) -> dict:
    """``tierplan validate --suite embeddings``: profile (``--quick``) unless ``hw`` is given, run the
    suite, write ``validate-embeddings.json`` (and a plot) in ``output`` and a record in ``records_dir``.

    Returns the suite result with ``output_json``, ``plot`` and ``record`` (paths or None) added.
    """
    from validate.report import plot, write_json

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    system, profile_path = validation_system(hw, overrides, device=device, command=command, out=out, progress=progress)
    result = run_embeddings_suite(system, quick=quick, device=device, iterations=iterations, repeats=repeats,
                                  workloads=workloads, progress=progress, command=command)
    result["output_json"] = str(write_json(result, out / "validate-embeddings.json"))
    png = plot(result["cases"], out / "validate-embeddings.png", f"embeddings suite on {result['device_name']}")
    result["plot"] = str(png) if png else None
    result["record"] = (str(write_embeddings_record(result, records_dir, profile_path))
                        if records_dir is not None else None)
    return result


__all__ = ["SUITE_BASELINES", "ordering_check", "run_embeddings_suite", "run_embeddings_validation",
           "suite_settings", "suite_workloads", "synthetic_model", "tight_system", "write_embeddings_record"]
