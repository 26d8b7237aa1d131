"""The rerunnable KV validation suite: plan fixed cases, replay them, tabulate the error.

Cases: an MHA model (llama-2-7b) and a GQA model (llama-3-8b); for each, the planner's plan with
ample and with tight device memory, and every named baseline (each KV strategy: resident, transfer,
recompute, CPU attention, streamed weights). Each case is replayed on a slice of layers and steps
and compared with its own prediction on the same profile. The planner's plan is also compared,
measured, with every baseline measured the same way.
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Callable

import torch

from costmodel import KvWorkload, load_model
from hwprofiles import System, apply_overrides
from solver import BASELINES, evaluate_policy, plan_kv
from validate.errors import ReplayError
from validate.replay import replay_policies
from validate.report import summary

MODELS = ("llama-2-7b", "llama-3-8b")


def suite_workloads(device: torch.device) -> dict[str, KvWorkload]:
    """Sizes a run of the suite can afford: real sizes on a GPU, small ones on the CPU (fp32)."""
    if device.type == "cuda":
        return {m: KvWorkload(model=load_model(m), batch=16, prompt_len=4096, gen_len=64) for m in MODELS}
    return {m: KvWorkload(model=load_model(m), batch=4, prompt_len=256, gen_len=16, dtype_bytes=4) for m in MODELS}


def _git_commit() -> str | None:
    """The checkout's commit, so a record says which code produced it (None outside a git checkout)."""
    import subprocess
    from pathlib import Path

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_suite(system: System, *, layers: int = 2, steps: int = 2, repeats: int = 3, device: str | None = None,
              progress: Callable[[str], None] = print, command: str = "") -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cases = []
    compare = {}
    for name, wl in suite_workloads(dev).items():
        weights = wl.model.total_params() * wl.dtype_bytes
        kv = wl.model.n_layers * wl.batch * wl.max_context * wl.model.kv_elements_per_token() * wl.dtype_bytes
        # Ample: every policy fits, so each strategy is exercised. Tight: the planner must offload.
        # Only a slice is replayed, so capacities may exceed this machine's: they shape the plans.
        host = f"host.memory={(weights + kv) * 1.5 / 2**30 + system.host.reserved_bytes / 2**30:.3f}GiB"
        ample = apply_overrides(system, [host, f"gpu.memory={(weights + kv) * 1.5 / 2**30 + system.gpu.reserved_bytes / 2**30:.3f}GiB"])
        tight = apply_overrides(system, [host, f"gpu.memory={weights * 0.6 / 2**30 + system.gpu.reserved_bytes / 2**30:.3f}GiB"])
        runs = []
        for label, sysm in (("plan (ample memory)", ample), ("plan (tight memory)", tight)):
            plan = plan_kv(wl, sysm, objective="latency", baselines=(), simulate=False)
            runs.append((f"{name} {label}", sysm, plan.policies()[0] if plan.predicted else None, plan.explanation))
        for base in BASELINES:
            ev, reason = evaluate_policy(base, wl, ample, objective="latency")
            runs.append((f"{name} {base}", ample, ev.policies if ev else None, reason))
        measured = {}
        for case, sysm, pols, reason in runs:
            progress(f"{case}:")
            if pols is None:
                cases.append({"case": case, "status": "infeasible", "reason": reason})
                continue
            try:
                r = replay_policies(wl, sysm, pols, layers=layers, steps=steps, repeats=repeats, device=str(dev),
                                    progress=lambda m: progress("  " + m))
            except ReplayError as err:
                cases.append({"case": case, "status": "not replayed", "reason": str(err)})
                continue
            measured[case] = r["measured_s"]
            cases.append({"case": case, "status": "replayed", "model": name, "workload": wl.summary(),
                          "predicted_s": r["predicted_s"], "measured_s": r["measured_s"], "error_pct": r["error_pct"],
                          "slice": r["slice"], "layers": r["layers"]})
        plan_case = f"{name} plan (ample memory)"
        if plan_case in measured:
            compare[name] = {b: measured[f"{name} {b}"] / measured[plan_case]
                             for b in BASELINES if f"{name} {b}" in measured}
    return {
        "suite": "kv",
        "command": command or " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tierplan_commit": _git_commit(),
        "profile": system.summary(),
        "cases": cases,
        "summary": summary(cases),
        "baseline_time_over_plan_time": compare,
    }
