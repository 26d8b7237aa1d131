"""The rerunnable KV validation suite: plan fixed cases, replay them, tabulate the error and the order.

Cases: an MHA model (llama-2-7b) and a GQA model (llama-3-8b); for each, the planner's plan with
ample and with tight device memory, and every named baseline (each KV strategy: resident, transfer,
recompute, CPU attention, streamed weights). Each case is replayed on a slice of layers and steps
and compared with its own prediction on the same profile. Besides each case's error, the report
checks that measured times order the cases of a model as predicted (:func:`validate.report.ordering`),
which is what a planner relies on; and the planner's plan is compared, measured, with every
baseline measured the same way.

Workloads are chosen so that predictions spread: on a GPU, real sizes (fp16, prompt 4096); on the
CPU stand-in (fp32, the copier paced to about 1 GB/s), prompts and batches that make a layer's KV
(268 MB) cost more to move than to attend, so resident, transferred and streamed policies differ
by 1.5-8x per layer while each case replays in a few seconds on 2 cores.

:func:`run_validation` is what ``tierplan validate`` runs: profile this machine unless a profile
is given, run the suite, write the results and keep a record in ``validate/records/``.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from costmodel import KvWorkload, load_model
from hwprofiles import System, apply_overrides, load_system
from solver import BASELINES, evaluate_policy, plan_kv
from validate.errors import ReplayError
from validate.replay import _cores, cpu_model, machine_name, part_name, replay_policies
from validate.report import ORDER_MARGIN, summary

MODELS = ("llama-2-7b", "llama-3-8b")
RECORDS_DIR = Path(__file__).resolve().parent / "records"


def suite_workloads(device: torch.device) -> dict[str, KvWorkload]:
    """Sizes a run of the suite can afford: real sizes on a GPU, smaller ones on the CPU (fp32).

    On the CPU stand-in a layer's KV is 268 MB for both models at batch 4 (llama-2-7b: 2049 tokens
    x 32 KiB; llama-3-8b, GQA with a quarter of the KV heads: 8185 tokens x 8 KiB, its longest
    context), 0.27 s over the 1 GB/s copier against ~0.12 s of compute, and its weights 0.8-0.9 GB
    (0.8-0.9 s when streamed). Batch 4 is the row count the profile's GEMV sweep measures: the
    cost model reads one GEMV efficiency curve by FLOPs for every batch up to GEMV_MAX_ROWS, so a
    memory-bound GEMV of 8 rows would be predicted twice as slow as it runs (a costmodel limit,
    not the replay's).
    """
    if device.type == "cuda":
        return {m: KvWorkload(model=load_model(m), batch=16, prompt_len=4096, gen_len=64) for m in MODELS}
    prompts = {"llama-2-7b": 2048, "llama-3-8b": 8184}
    return {m: KvWorkload(model=load_model(m), batch=4, prompt_len=prompts[m], gen_len=8, dtype_bytes=4)
            for m in MODELS}


def suite_settings(device: torch.device, *, quick: bool = False, layers: int | None = None, steps: int | None = None,
                   repeats: int | None = None, warmup: int | None = None) -> dict[str, int]:
    """Slice and repeats of a suite run (explicit values win). ``quick`` is the short GPU command's:
    one step, two repeats."""
    default = {"layers": 2, "steps": 1 if quick or device.type != "cuda" else 2, "repeats": 2 if quick else 3,
               "warmup": 1}
    given = {"layers": layers, "steps": steps, "repeats": repeats, "warmup": warmup}
    return {k: (v if v is not None else default[k]) for k, v in given.items()}


def _git_commit() -> str | None:
    """The checkout's commit, so a record says which code produced it (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _driver() -> str | None:
    if not torch.cuda.is_available():
        return None
    from validate.profile import _driver_version

    return _driver_version()


def baseline_policies(name: str, wl: KvWorkload, system: System) -> tuple[tuple | None, str]:
    """A named baseline's layer policies at exactly ``wl`` (None and the reason when infeasible).

    Works with :func:`solver.evaluate_policy` returning ``(Evaluated | None, reason)`` or a result
    object with ``status``, ``reason`` and ``policies``.
    """
    kwargs = {"objective": "latency"} if "objective" in inspect.signature(evaluate_policy).parameters else {}
    res = evaluate_policy(name, wl, system, **kwargs)
    if isinstance(res, tuple):
        ev, reason = res
        return (ev.policies if ev is not None else None), reason
    if getattr(res, "status", "feasible") != "feasible":
        return None, getattr(res, "reason", "") or f"{name} is {res.status}"
    return res.policies, ""


def run_suite(system: System, *, layers: int | None = None, steps: int | None = None, repeats: int | None = None,
              warmup: int | None = None, quick: bool = False, device: str | None = None,
              models: Sequence[str] | None = None, workloads: dict[str, KvWorkload] | None = None,
              link_bytes_per_s: float | None = None, progress: Callable[[str], None] = print,
              command: str = "") -> dict:
    """Plan, replay and compare every case; returns the record (JSON-able).

    Parameters
    ----------
    system : System
        The profile that predicts (measured on this machine, for the errors to mean something).
    layers, steps, repeats, warmup : int or None
        The slice and the timing (default: :func:`suite_settings`).
    quick : bool
        The short command: the plans with tight memory and the baselines only (the ample-memory plan
        is the all-GPU baseline whenever that fits), one step, two repeats.
    models : sequence of str or None
        Bundled model names (default: :data:`MODELS`).
    workloads : dict of str to KvWorkload, or None
        Other cases than :func:`suite_workloads` (a small model in tests, a model of your own).
    link_bytes_per_s : float or None
        CPU stand-in only: pace the copiers to this rate instead of the profile's.
    command : str
        The command line, kept in the record.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = suite_settings(dev, quick=quick, layers=layers, steps=steps, repeats=repeats, warmup=warmup)
    workloads = dict(workloads) if workloads is not None else suite_workloads(dev)
    if models is not None:
        unknown = [m for m in models if m not in workloads]
        if unknown:
            raise ReplayError(f"suite models must be among {sorted(workloads)}, got {unknown}")
        workloads = {m: workloads[m] for m in models}
    cases = []
    compare: dict[str, dict[str, float]] = {}
    plan_cases: dict[str, str] = {}
    for name, wl in workloads.items():
        weights = wl.model.total_params() * wl.dtype_bytes
        kv = wl.model.n_layers * wl.batch * wl.max_context * wl.model.kv_elements_per_token() * wl.dtype_bytes
        # Ample: every policy fits, so each strategy is exercised. Tight: the planner must offload.
        # Only a slice is replayed, so capacities may exceed this machine's: they shape the plans.
        host = f"host.memory={(weights + kv) * 1.5 / 2**30 + system.host.reserved_bytes / 2**30:.3f}GiB"
        ample = apply_overrides(system, [host, f"gpu.memory={(weights + kv) * 1.5 / 2**30 + system.gpu.reserved_bytes / 2**30:.3f}GiB"])
        tight = apply_overrides(system, [host, f"gpu.memory={weights * 0.6 / 2**30 + system.gpu.reserved_bytes / 2**30:.3f}GiB"])
        runs = []
        plans = (("plan (tight memory)", tight),) if quick else (("plan (ample memory)", ample), ("plan (tight memory)", tight))
        for label, sysm in plans:
            progress(f"{name} {label}: planning")
            plan = plan_kv(wl, sysm, objective="latency", baselines=(), simulate=False)
            runs.append((f"{name} {label}", sysm, plan.policies()[0] if plan.predicted else None, plan.explanation))
        for base in BASELINES:
            pols, reason = baseline_policies(base, wl, ample)
            runs.append((f"{name} {base}", ample, pols, reason))
        measured = {}
        for case, sysm, pols, reason in runs:
            progress(f"{case}:")
            if pols is None:
                cases.append({"case": case, "status": "infeasible", "model": name, "reason": reason})
                continue
            try:
                r = replay_policies(wl, sysm, pols, layers=settings["layers"], steps=settings["steps"],
                                    repeats=settings["repeats"], warmup=settings["warmup"], device=str(dev),
                                    link_bytes_per_s=link_bytes_per_s, progress=lambda m: progress("  " + m))
            except ReplayError as err:
                cases.append({"case": case, "status": "not replayed", "model": name, "reason": str(err)})
                continue
            measured[case] = r["measured_s"]
            cases.append({"case": case, "status": "replayed", "model": name, "workload": wl.summary(),
                          "predicted_s": r["predicted_s"], "measured_s": r["measured_s"], "error_pct": r["error_pct"],
                          "policy_digest": r["policy_digest"], "dtype": r["dtype"],
                          "attention_kernel": r["attention_kernel"], "link": r["link"], "memory": r["memory"],
                          "warnings": r["warnings"], "slice": r["slice"], "layers": r["layers"]})
        plan_case = next((f"{name} {label}" for label, _ in plans if f"{name} {label}" in measured), None)
        if plan_case is not None:
            plan_cases[name] = plan_case
            compare[name] = {b: measured[f"{name} {b}"] / measured[plan_case]
                             for b in BASELINES if f"{name} {b}" in measured}
    return {
        **record_header("kv", quick=quick, settings=settings, command=command, dev=dev, system=system),
        "cases": cases,
        "summary": summary(cases, margin=ORDER_MARGIN),
        "baseline_time_over_plan_time": compare,
        "plan_case": plan_cases,  # which plan each model's ratios divide by
    }


def record_name(result: dict) -> str:
    """``<device>-<date>``: ``nvidia-h100-80gb-hbm3-2026-11-23`` or ``cpu-2core-2026-11-23``.

    >>> record_name({"device": "cpu", "device_name": "CPU x86_64 (2 cores)", "date": "2026-11-23 12:35 UTC"})
    'cpu-2core-2026-11-23'
    """
    date = result["date"].split()[0]
    if result["device"].startswith("cuda"):
        device = re.sub(r"[^a-z0-9]+", "-", part_name(result["device_name"])).strip("-")
    else:
        cores = re.search(r"\((\d+) cores\)", result["device_name"])
        device = f"cpu-{cores.group(1)}core" if cores else "cpu"
    return f"{device}-{date}"


def write_record(result: dict, records_dir: str | Path = RECORDS_DIR, profile: str | Path | None = None) -> Path:
    """Keep a suite result as ``<records_dir>/<record_name>.json`` (``-2``, ``-3``... if taken), with
    the profile YAML it was predicted with beside it (``<name>-profile.yaml``)."""
    from validate.report import write_json

    records_dir = Path(records_dir)
    base = record_name(result)
    name, n = base, 1
    while (records_dir / f"{name}.json").exists():
        n += 1
        name = f"{base}-{n}"
    path = records_dir / f"{name}.json"
    kept = {k: v for k, v in result.items() if k not in ("output_json", "plot", "record")}  # this run's paths
    if profile is not None:
        records_dir.mkdir(parents=True, exist_ok=True)
        copy = records_dir / f"{name}-profile.yaml"
        shutil.copyfile(profile, copy)
        kept["profile"] = {**kept["profile"], "file": os.path.relpath(copy.resolve(), Path.cwd())}
    write_json(kept, path)
    return path


def record_header(suite: str, *, quick: bool, settings: dict, command: str, dev: torch.device,
                  system: System) -> dict:
    """What identifies a suite's record, for every family: the suite, its settings and command, the
    date, the device (name, driver, torch, CUDA), the host, tierplan's commit and the profile."""
    return {
        "suite": suite,
        "quick": quick,
        "settings": settings,
        "command": command or " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(dev),
        "device_name": machine_name(dev),
        "driver": _driver() if dev.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": f"{cpu_model()}, {platform.machine()}, {len(_cores())} cores, {platform.platform()}",
        "tierplan_commit": _git_commit(),
        "profile": system.summary(),
    }


def validation_system(hw: str | None, overrides: Sequence[str], *, device: str | None, command: str, out: Path,
                      progress: Callable[[str], None]) -> tuple[System, Path | None]:
    """The system a ``tierplan validate --suite`` run predicts with, and its profile file: ``hw``
    with ``overrides``, or (no ``hw``) this machine profiled with ``--quick`` into ``out/profile.yaml``."""
    from validate.profile import profile_machine, write_profile

    if hw:
        system = load_system(hw, list(overrides))
        return system, (Path(system.file) if system.file and Path(system.file).is_file() else None)
    progress("no --hw: profiling this machine first (quick)")
    data = profile_machine(quick=True, device=device, command=f"{command} (profile --quick)", progress=progress)
    profile_path = out / "profile.yaml"
    write_profile(data, profile_path)
    return load_system(profile_path, list(overrides)), profile_path


def run_validation(*, hw: str | None = None, overrides: Sequence[str] = (), quick: bool = False,
                   device: str | None = None, layers: int | None = None, steps: int | None = None,
                   repeats: int | None = None, output: str | Path = "validate-out",
                   records_dir: str | Path | None = RECORDS_DIR, command: str = "tierplan validate",
                   workloads: dict[str, KvWorkload] | None = None, progress: Callable[[str], None] = print) -> dict:
    """``tierplan validate --suite kv``: profile (``--quick``) unless ``hw`` is given, run the suite,
    write ``validate-kv.json`` (and a plot) in ``output`` and a record in ``records_dir``.

    Returns the suite result with ``output_json``, ``plot`` and ``record`` (paths or None) added.
    """
    from validate.report import plot, write_json

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    system, profile_path = validation_system(hw, overrides, device=device, command=command, out=out, progress=progress)
    result = run_suite(system, layers=layers, steps=steps, repeats=repeats, quick=quick, device=device,
                       workloads=workloads, progress=progress, command=command)
    result["output_json"] = str(write_json(result, out / "validate-kv.json"))
    png = plot(result["cases"], out / "validate-kv.png", f"kv suite on {result['device_name']}")
    result["plot"] = str(png) if png else None
    result["record"] = str(write_record(result, records_dir, profile_path)) if records_dir is not None else None
    return result
