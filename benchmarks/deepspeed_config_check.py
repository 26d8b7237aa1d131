"""Parse tierplan's exported DeepSpeed configs with DeepSpeed's own config code.

    pip install deepspeed            # optional: not a tierplan dependency, not in CI
    python benchmarks/deepspeed_config_check.py [--json]

For a set of training plans and baselines that between them take every branch of
``tierplan export deepspeed`` (ZeRO-2 optimizer offload, Twin-Flow's ``ratio`` at ZeRO-3, ZeRO-Infinity
to NVMe with ``aio``, several GPUs, bf16, ``deepspeed.checkpointing`` activation checkpointing), the
script exports the config (:func:`solver.export_deepspeed.export_deepspeed`) and hands it to
``deepspeed.runtime.config.DeepSpeedConfig`` -- the parser ``deepspeed.initialize`` runs, whose
pydantic models refuse unknown keys and bad values -- in a one-process gloo group on the CPU. It
prints, per config, what DeepSpeed read back (ZeRO stage, offload devices and ratio, batch sizes,
precision, activation checkpointing, gradient clipping) next to what the export meant, and whether they agree.

It checks the config files, not a training run: the exported configs ask for fp16 or bf16 on a
GPU, and this repository's machines have none. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from costmodel import load_model
from costmodel.training import TrainWorkload, baseline_policies
from hwprofiles import load_system
from solver.export_deepspeed import export_deepspeed
from solver.training import plan_training


@dataclass(frozen=True)
class Case:
    label: str
    model: str
    hw: str
    workload: dict[str, Any]
    policy: str  # "plan" (plan_training's decisions) or a baseline name
    model_code: str = "hf"


CASES = (
    Case("plan llama-2-7b a100-40gb", "llama-2-7b", "a100-40gb",
         {"seq_len": 2048, "micro_batch": 4, "grad_accum": 8}, "plan"),
    Case("zero-offload gpt2-10b v100", "gpt2-10b", "dgx2-v100-32gb-1gpu-full-host",
         {"seq_len": 1024, "micro_batch": 10, "optimizer": "adam", "fused_attention": False, "dropout": True},
         "zero-offload+full-recompute", "deepspeed"),
    Case("twin-flow:0.6 llama-2-7b h100", "llama-2-7b", "h100-sxm",
         {"seq_len": 2048, "micro_batch": 1, "zero_stage": 3}, "twin-flow:0.6+full-recompute"),
    Case("zero-infinity-nvme llama-2-70b h100", "llama-2-70b", "h100-sxm",
         {"seq_len": 2048, "micro_batch": 1, "zero_stage": 3, "pin_memory": True}, "zero-infinity-nvme"),
    Case("plan llama-2-13b 4x h100 bf16", "llama-2-13b", "h100-sxm",
         {"seq_len": 2048, "micro_batch": 1, "gpus": 4, "precision": "bf16"}, "plan"),
    Case("selective-recompute llama-3-8b a100-80gb", "llama-3-8b", "a100-80gb",
         {"seq_len": 4096, "micro_batch": 1, "grad_accum": 4, "precision": "bf16"},
         "zero-offload+selective-recompute", "deepspeed"),
)


def exported(case: Case) -> tuple[dict[str, Any], Any]:
    """The case's ds_config (as ``tierplan export deepspeed`` writes it) and its export."""
    system = load_system(case.hw)
    wl = TrainWorkload(model=load_model(case.model), **{"zero_stage": 2, **case.workload})
    if case.policy == "plan":
        tp = plan_training(wl, system, zero_stages=(wl.zero_stage,) if "zero_stage" in case.workload else (2, 3))
        if tp.cost is None:
            raise SystemExit(f"{case.label}: no plan ({tp.status.value})")
        wl, pols, head = tp.workload, tp.policies, tp.head
    else:
        pols, head = baseline_policies(case.policy, wl, system), None
    ex = export_deepspeed(wl, pols, system=system, head=head, model_code=case.model_code)
    return ex.to_dict(), ex


def _init_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        dist.init_process_group("gloo", rank=0, world_size=1)


def read_back(cfg: dict[str, Any]) -> dict[str, Any]:
    """What DeepSpeed's DeepSpeedConfig parses ``cfg`` into (raises on a config it refuses)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    # The config is for cfg's GPU count; the parser checks the batch identity against the world size
    # of this one-process group, so it reads the one-GPU share of the batch.
    one = dict(cfg)
    gpus = cfg["train_batch_size"] // (cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"])
    one["train_batch_size"] = cfg["train_batch_size"] // gpus
    c = DeepSpeedConfig(one)
    z = c.zero_config
    fp16, bf16 = c.float16_config, c.bfloat16_config
    opt, par = z.offload_optimizer, z.offload_param
    act = c.activation_checkpointing_config
    return {
        "stage": int(z.stage),
        "offload_optimizer": None if opt is None else str(opt.device.value if hasattr(opt.device, "value") else opt.device),
        "ratio": None if opt is None else float(opt.ratio),
        "offload_param": None if par is None else str(par.device.value if hasattr(par.device, "value") else par.device),
        "micro_batch": int(c.train_micro_batch_size_per_gpu), "grad_accum": int(c.gradient_accumulation_steps),
        "fp16": bool(fp16.enabled), "bf16": bool(bf16.enabled), "optimizer": c.optimizer_name,
        "partition_activations": bool(act.partition_activations), "cpu_checkpointing": bool(act.cpu_checkpointing),
        "gradient_clipping": float(c.gradient_clipping), "gpus": gpus,
    }


def intended(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same fields as the export wrote them (DeepSpeed's defaults where the export leaves a key out)."""
    z = cfg["zero_optimization"]
    opt, par = z.get("offload_optimizer"), z.get("offload_param")
    act = cfg.get("activation_checkpointing", {})
    gpus = cfg["train_batch_size"] // (cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"])
    return {
        "stage": z["stage"], "offload_optimizer": None if opt is None else opt["device"],
        "ratio": None if opt is None else float(opt.get("ratio", 1.0)),
        "offload_param": None if par is None else par["device"],
        "micro_batch": cfg["train_micro_batch_size_per_gpu"], "grad_accum": cfg["gradient_accumulation_steps"],
        "fp16": bool(cfg.get("fp16", {}).get("enabled", False)), "bf16": bool(cfg.get("bf16", {}).get("enabled", False)),
        "optimizer": cfg.get("optimizer", {}).get("type", "").lower() or None,
        "partition_activations": bool(act.get("partition_activations", False)),
        "cpu_checkpointing": bool(act.get("cpu_checkpointing", False)),
        "gradient_clipping": float(cfg.get("gradient_clipping", 0.0)), "gpus": gpus,
    }


def check_all() -> list[dict[str, Any]]:
    _init_group()
    rows = []
    for case in CASES:
        cfg, ex = exported(case)
        row: dict[str, Any] = {"case": case.label, "intended": intended(cfg), "cannot_express": len(ex.cannot_express)}
        try:
            row["deepspeed"] = read_back(cfg)
            row["error"] = None
        except (ValueError, AssertionError) as err:  # DeepSpeed's refusal (pydantic's ValidationError is a ValueError)
            row["deepspeed"], row["error"] = None, f"{type(err).__name__}: {err}"
        row["agree"] = row["error"] is None and row["deepspeed"] == row["intended"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    # DeepSpeed logs to stdout (its logger's handler takes sys.stdout when it is imported): its lines go
    # to stderr, so stdout holds this script's report (and --json its JSON) only
    with contextlib.redirect_stdout(sys.stderr):
        try:
            import deepspeed
        except ImportError:
            deepspeed = None
        rows = check_all() if deepspeed is not None else []
    if deepspeed is None:
        print("deepspeed is not installed (pip install deepspeed): nothing to check")
        return 0
    if args.json:
        print(json.dumps({"deepspeed": deepspeed.__version__, "rows": rows}, indent=1))
        return 0
    print(f"DeepSpeed {deepspeed.__version__}: DeepSpeedConfig on each exported ds_config")
    for r in rows:
        got = r["deepspeed"]
        if got is None:
            print(f"  {r['case']:45s} REFUSED: {r['error']}")
            continue
        off = f"{got['offload_optimizer'] or '-'}" + (f" ratio {got['ratio']:g}" if got["offload_optimizer"] else "")
        print(f"  {r['case']:45s} stage {got['stage']}  optimizer offload {off:14s} param offload "
              f"{got['offload_param'] or '-':5s} micro {got['micro_batch']} x accum {got['grad_accum']} x "
              f"{got['gpus']} GPU  {'bf16' if got['bf16'] else 'fp16' if got['fp16'] else 'fp32'}  "
              f"{'agrees' if r['agree'] else 'DIFFERS: ' + json.dumps(r['intended'])}")
    print(f"{sum(r['agree'] for r in rows)} of {len(rows)} configs parsed by DeepSpeed as exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
