"""Write the notebooks in notebooks/ from the cells below and execute them, so they are committed
with real outputs. The tests execute them again (tests/test_notebooks.py).

    python scripts/make_notebooks.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks"

SETUP = """%matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
pd.set_option("display.width", 160)"""

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        ("md", "# Quick start: plan one model on one GPU\n\nLlama-2-13B in fp16 needs 24 GiB for its weights "
               "alone, more than an RTX 4090 has. Plan a batch at nearly its whole 4096-token context, read the "
               "plan, and look at it."),
        ("code", SETUP),
        ("code", """from tierplan import KvWorkload, load_model, load_system, plan_kv
from tierplan.cli import render_plan

system = load_system("rtx4090")
wl = KvWorkload(model=load_model("llama-2-13b"), batch=8, prompt_len=4000, gen_len=64)
plan = plan_kv(wl, system, objective="latency")
print(render_plan(plan))"""),
        ("md", "Each layer takes as long as its busiest resource. The planner balances GPU compute, the "
               "link and CPU attention layer by layer:"),
        ("code", """from solver.plots import layer_breakdown
ax = layer_breakdown(plan)
plt.show()"""),
        ("md", "The simulated schedule of the first decode step (copies for the next layer run while this "
               "layer computes; CPU attention runs beside GPU attention):"),
        ("code", """from solver import simulate_decode_step
from solver.plots import gantt
policies, head_on_gpu = plan.policies()
timeline = simulate_decode_step(wl, system, policies, step=0, head_on_gpu=head_on_gpu)
gantt(timeline)
plt.show()
print(f"simulated step {timeline.makespan_s * 1e3:.1f} ms; cost model {plan.predicted['step_time_s'] * 1e3:.1f} ms (mean step)")"""),
        ("md", "Decode ops on the GPU's roofline: at batch 8 every op is memory-bound."),
        ("code", """from solver.plots import roofline_chart
roofline_chart(wl, system)
plt.show()"""),
        ("md", "The plan is a versioned JSON document; the CLI, notebooks and `tierplan replay` share it."),
        ("code", """d = plan.to_dict()
print(sorted(d))
print(d["layers"][0])"""),
    ],
    "02_whatif_pcie_and_gpus.ipynb": [
        ("md", "# What if the link were faster, or the GPU different?\n\nSweep host-to-device bandwidth on "
               "three GPUs for an MHA and a GQA model and see which strategy each plan uses."),
        ("code", SETUP),
        ("code", """from solver.sweep import grid, parse_vary, sweep

points = grid(["llama-2-13b", "llama-3-8b"], ["rtx4090", "l4", "a100-40gb"], prompts=[4000], batches=[32], gen=64,
              vary=[parse_vary("link.h2d=8GB/s..56GB/s:4")])
df = sweep(points, progress=False)
df[["model", "hw", "link.h2d", "batch", "tokens_per_s", "kv_gpu_share", "offloaded_transfer_share",
    "offloaded_recompute_share", "offloaded_cpu_share", "speedup_flexgen"]].round(3)"""),
        ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
for ax, model in zip(axes, ["llama-2-13b", "llama-3-8b"]):
    for hw, part in df[df.model == model].groupby("hw"):
        ax.plot(part["link.h2d_si"] / 1e9, part["tokens_per_s"], marker="o", label=hw)
    ax.set_title(model, fontsize=10); ax.set_xlabel("H2D GB/s"); ax.set_ylabel("tokens/s (predicted)"); ax.legend()
plt.tight_layout(); plt.show()"""),
        ("md", "Which strategy dominates each point (resident KV, or of the offloaded tokens: transferred, "
               "recomputed, attended on the CPU)?"),
        ("code", """from solver.plots import dominant_strategy
df["strategy"] = df.apply(dominant_strategy, axis=1)
df.pivot_table(index=["model", "hw"], columns="link.h2d_si", values="strategy", aggfunc="first")"""),
    ],
    "03_mha_vs_gqa_recompute.ipynb": [
        ("md", "# Why KVPR-style recompute helps OPT and not Llama-3\n\nRecomputing a token's K and V from its "
               "stored layer input moves `hidden` values per token instead of `2 x kv_heads x head_dim`."),
        ("code", SETUP),
        ("code", """from costmodel import load_model
for name in ["opt-6.7b", "llama-2-7b", "llama-3-8b", "mistral-7b"]:
    m = load_model(name)
    print(f"{name:12s} KV per token per layer {m.kv_elements_per_token():6d} values, layer input {m.hidden:6d} "
          f"-> recompute moves {m.hidden / m.kv_elements_per_token():.2f}x the bytes of a transfer")"""),
        ("md", "Sweep link bandwidth and prompt length on an RTX 4090 with room for only part of the KV cache "
               "(host memory is plentiful). The planner decides per layer; the maps show each plan's dominant strategy. "
               "Contexts past a model's trained length (OPT: 2048 tokens, Llama-3: 8192) are what-ifs about the "
               "architecture, so the grid passes `allow_long_context=True`; without it they are refused."),
        ("code", """from solver.sweep import grid, parse_vary, sweep
points = grid(["opt-6.7b", "llama-3-8b"], ["rtx4090"], prompts=[2048, 8192, 16384], batches=[16], gen=64,
              vary=[parse_vary("link.h2d=8GB/s..56GB/s:4")], objective="latency", allow_long_context=True)
df = sweep(points, progress=False)
df[["model", "prompt", "link.h2d", "kv_gpu_share", "offloaded_transfer_share", "offloaded_recompute_share",
    "offloaded_cpu_share", "speedup_kvpr", "speedup_kv-offload"]].round(3)"""),
        ("md", "The share of offloaded tokens each plan recomputes: the MHA model recomputes up to ~40 % "
               "where host memory can hold the layer inputs beside the KV (at 16k tokens x batch 16 it "
               "cannot: 69 GB of activations on top of 138 GB of KV); the GQA model never recomputes."),
        ("code", """from solver.plots import share_map, strategy_map
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, model in zip(axes, ["opt-6.7b", "llama-3-8b"]):
    share_map(df[df.model == model], "link.h2d_si", "prompt", "offloaded_recompute_share", ax=ax,
              title=f"{model}: recomputed share of offloaded tokens")
plt.tight_layout(); plt.show()
print(df.groupby("model")["offloaded_recompute_share"].max().rename("largest recomputed share"))"""),
        ("md", "Which way each plan serves most of its KV (the largest share):"),
        ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, model in zip(axes, ["opt-6.7b", "llama-3-8b"]):
    strategy_map(df[df.model == model], "link.h2d_si", "prompt", ax=ax, title=model)
plt.tight_layout(); plt.show()"""),
        ("md", "For the MHA model the planner recomputes part of the offloaded tokens when memory allows; for "
               "the GQA model it never does, because recompute would move more bytes than it saves."),
    ],
    "04_validation.ipynb": [
        ("md", "# Predicted versus measured\n\nThe committed results of `tierplan validate --suite kv` "
               "(`validate/records/`). Each says on which device, with which torch, and by which command."),
        ("code", SETUP),
        ("code", """import json
from pathlib import Path
records = sorted((Path("..") / "validate" / "records").glob("*.json"))
rows = []
for path in records:
    data = json.loads(path.read_text())
    print(f"{path.name}: {data['device_name']}, torch {data['torch']}, {data['date']}\\n  {data['command']}")
    for case in data["cases"]:
        rows.append({"record": path.stem, "case": case["case"], "status": case["status"],
                     "predicted_ms": case.get("predicted_s", float("nan")) * 1e3,
                     "measured_ms": case.get("measured_s", float("nan")) * 1e3, "error_pct": case.get("error_pct")})
df = pd.DataFrame(rows)
df.round(1)"""),
        ("code", """ok = df[df.status == "replayed"]
fig, ax = plt.subplots(figsize=(5, 4.5))
ax.scatter(ok.predicted_ms, ok.measured_ms)
lim = [0, max(ok.predicted_ms.max(), ok.measured_ms.max()) * 1.1]
ax.plot(lim, lim, "k:", lw=1, label="exact")
ax.fill_between(lim, [0.8 * v for v in lim], [1.2 * v for v in lim], alpha=0.1, label="±20 %")
ax.set_xlabel("predicted ms"); ax.set_ylabel("measured ms"); ax.legend(); plt.show()
print(f"mean |error| {ok.error_pct.abs().mean():.1f} %, max {ok.error_pct.abs().max():.1f} % over {len(ok)} cases")"""),
        ("md", "No GPU record exists yet: these are CPU-as-GPU runs, where a throttled copier stands in for "
               "the link. GPU records will appear here when `tierplan validate --suite kv --quick` has run on one."),
        ("md", "## Published runs\n\nThe other exam: measurements that FlexGen, Hugging Face Accelerate and "
               "DeepSpeed ZeRO-Inference published, each predicted with the bundled profile of the machine "
               "that ran it (`tierplan validate --published`)."),
        ("code", """from validate.published import predict_published, summary
results = predict_published()
pub = pd.DataFrame([r.as_dict() for r in results if r.status == "predicted"])
print(summary(results))
pub[["id", "hardware", "workload", "measured", "predicted", "error_pct"]].round(2)"""),
    ],
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout_s: int = 600) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(NB)}}).execute()
    return nb


def main() -> int:
    NB.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = execute(build(name, cells))
        nbformat.write(nb, NB / name)
        print(f"wrote {NB / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
