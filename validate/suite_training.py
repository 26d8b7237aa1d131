"""The rerunnable training validation suite: fixed cases replayed, their error and their order tabulated.

Cases: one workload (:func:`suite_workload`), replayed with each baseline of :data:`SUITE_BASELINES`
(every state on the GPU with activations kept; the same with full recompute; ZeRO-Offload with
full recompute; ZeRO-Offload keeping activations) and the planner's plan
(:func:`solver.training.plan_training`) made with tight GPU memory, so that it must move states or
activations off the GPU. Each case is replayed with torch (:func:`validate.replay_training.replay_training`,
a slice of :data:`SUITE_LAYERS` layers) and compared with its own prediction on the same profile; the
report checks that measured times order the cases as predicted (:func:`validate.report.ordering`),
which is what a planner relies on.

On the CPU stand-in the layers are scaled down by the replay (it says how) and the copiers are paced
to :data:`CPU_LINK_BYTES_PER_S` both ways, with the prediction's ``link.h2d``/``link.d2h`` set to
the same rate: at the profile's own copier rate a transfer costs little beside one core's compute,
and the policies would differ mostly by compute (the embeddings suite paces its link for the same
reason, :data:`validate.suite_embeddings.CPU_LINK_BYTES_PER_S`).

:func:`run_training_validation` is what ``tierplan validate --suite training`` runs: profile this
machine unless a profile is given, run the suite, write the results and keep a record in
``validate/records/`` (``training-<device>-<date>.json``, the KV suite's record format).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from costmodel import TrainWorkload, evaluate_training, load_model, train_baseline_policies
from costmodel.errors import WorkloadError
from hwprofiles import System, apply_overrides
from solver.training import plan_training
from solver.training_plan import baseline_workload
from validate.errors import ReplayError
from validate.replay import resolve_device
from validate.replay_training import replay_training
from validate.report import ORDER_MARGIN, summary
from validate.suite import RECORDS_DIR, record_header, validation_system
from validate.suite_embeddings import write_embeddings_record

SUITE_BASELINES = ("all-gpu", "full-recompute", "zero-offload+full-recompute", "zero-offload")
SUITE_LAYERS = 2
# The CPU stand-in's link (prediction and copiers alike): see the module docstring.
CPU_LINK_BYTES_PER_S = 0.1e9
# The plan's GPU memory: the all-GPU need less this share of the model states (weights, gradients,
# master, moments), so the planner must move some off the GPU.
TIGHT_STATE_SHARE = 0.5


def suite_workload(device: torch.device) -> TrainWorkload:
    """GPT-2 (124M) at sequence 256, micro-batch 2, 2 micro-steps, fp16 with Adam (fp32 under the CPU
    replay, which says so), ZeRO stage 2; under CUDA sequence 1024, micro-batch 8."""
    seq, mb = (1024, 8) if device.type == "cuda" else (256, 2)
    return TrainWorkload(model=load_model("gpt2"), seq_len=seq, micro_batch=mb, grad_accum=2, zero_stage=2)


def suite_settings(device: torch.device, *, quick: bool = False, iterations: int | None = None,
                   repeats: int | None = None) -> dict[str, int]:
    """Iterations and repeats per case.

    >>> suite_settings(torch.device("cpu"), quick=True)
    {'iterations': 2, 'repeats': 2, 'warmup': 1}
    """
    default = {"iterations": 2 if quick else 3, "repeats": 2, "warmup": 1}
    given = {"iterations": iterations, "repeats": repeats, "warmup": None}
    return {k: (v if v is not None else default[k]) for k, v in given.items()}


def tight_system(wl: TrainWorkload, system: System) -> System:
    """``system`` with GPU memory cut so all-GPU does not fit: its need less :data:`TIGHT_STATE_SHARE`
    of the model states."""
    cost = evaluate_training(wl, system, train_baseline_policies("all-gpu", wl, system))
    terms = dict(cost.memory.gpu_breakdown)
    states = sum(terms.get(k, 0.0) for k in ("weights", "grads", "grad32", "master", "moments"))
    need = cost.memory.gpu_bytes - TIGHT_STATE_SHARE * states
    return apply_overrides(system, [f"gpu.memory={(need + system.gpu.reserved_bytes) / 2**30:.6f}GiB"])


def run_training_suite(system: System, *, quick: bool = False, device: str | None = None,
                       iterations: int | None = None, repeats: int | None = None,
                       baselines: Sequence[str] = SUITE_BASELINES, link_bytes_per_s: float | None = None,
                       progress: Callable[[str], None] = print, command: str = "") -> dict:
    """Plan, replay and compare every case; returns the record (JSON-able): ``cases`` (each with
    ``predicted_s``, ``measured_s``, ``error_pct`` and its phases), ``summary`` (mean and max
    |error| over cases, ``ordering``) and the record's identification (device, driver, torch, commit,
    profile, command, date)."""
    dev = resolve_device(device)
    settings = suite_settings(dev, quick=quick, iterations=iterations, repeats=repeats)
    wl = suite_workload(dev)
    link_note = "the profile's link (CUDA copy streams)"
    if dev.type != "cuda":
        rate = CPU_LINK_BYTES_PER_S if link_bytes_per_s is None else link_bytes_per_s
        gbs = f"{rate / 1e9:.6g}GB/s"
        system = apply_overrides(system, [f"link.h2d={gbs}", f"link.d2h={gbs}"])
        link_bytes_per_s = rate
        link_note = (f"CPU stand-in: copiers paced to {gbs} both ways and predicted with link.h2d = link.d2h = {gbs}")
    elif link_bytes_per_s is not None:
        raise ReplayError("link_bytes_per_s paces the CPU stand-in's copiers; under CUDA the link is real")
    runs = []
    tight = tight_system(wl, system)
    progress("training: planning with tight GPU memory")
    tp = plan_training(wl, tight, zero_stages=(2,))
    runs.append(("plan (tight memory)", tp.workload if tp.policies else wl, tight, tp.policies or None,
                 tp.head, "" if tp.policies else f"no plan fits ({tp.status.value})"))
    for base in baselines:
        try:
            bwl = baseline_workload(base, wl)
            runs.append((base, bwl, system, train_baseline_policies(base, bwl, system), None, ""))
        except WorkloadError as err:
            runs.append((base, wl, system, None, None, str(err)))
    cases = []
    for case, cwl, sysm, pols, head, reason in runs:
        progress(f"{case}:")
        if pols is None:
            cases.append({"case": case, "status": "infeasible", "model": cwl.model.name, "reason": reason})
            continue
        try:
            r = replay_training(cwl, sysm, pols, head=head, layers=SUITE_LAYERS, iterations=settings["iterations"],
                                repeats=settings["repeats"], warmup=settings["warmup"], device=str(dev),
                                link_bytes_per_s=link_bytes_per_s, progress=lambda m: progress("  " + m))
        except ReplayError as err:
            cases.append({"case": case, "status": "not replayed", "model": cwl.model.name, "reason": str(err)})
            continue
        cases.append({"case": case, "status": "replayed", "model": cwl.model.name, "workload": cwl.summary(),
                      **{k: r[k] for k in ("predicted_s", "measured_s", "error_pct", "phases", "slice", "warnings",
                                           "link") if k in r}})
    return {
        **record_header("training", quick=quick, settings=settings, command=command, dev=dev, system=system),
        "cases": cases,
        "summary": summary(cases, margin=ORDER_MARGIN), "link": link_note,
        "plan": {"selected": tp.selected, "status": tp.status.value, "mode_counts": [list(m) for m in tp.mode_counts]},
    }


def run_training_validation(*, hw: str | None = None, overrides: Sequence[str] = (), quick: bool = False,
                            device: str | None = None, iterations: int | None = None, repeats: int | None = None,
                            output: str | Path = "validate-out", records_dir: str | Path | None = RECORDS_DIR,
                            command: str = "tierplan validate --suite training",
                            progress: Callable[[str], None] = print) -> dict:
    """``tierplan validate --suite training``: profile (quick) unless ``hw`` is given, run the suite,
    write ``validate-training.json`` (and a plot) in ``output`` and a record in ``records_dir``."""
    from validate.report import plot, write_json

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    system, profile_path = validation_system(hw, overrides, device=device, command=command, out=out, progress=progress)
    result = run_training_suite(system, quick=quick, device=device, iterations=iterations, repeats=repeats,
                                progress=progress, command=command)
    result["output_json"] = str(write_json(result, out / "validate-training.json"))
    png = plot(result["cases"], out / "validate-training.png", f"training suite on {result['device_name']}")
    result["plot"] = str(png) if png else None
    result["record"] = (str(write_embeddings_record(result, records_dir, profile_path, prefix="training"))
                        if records_dir is not None else None)
    return result


__all__ = ["SUITE_BASELINES", "run_training_suite", "run_training_validation", "suite_settings", "suite_workload",
           "tight_system"]
