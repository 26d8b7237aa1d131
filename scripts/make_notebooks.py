"""Write the notebooks in notebooks/ from the cells below and execute them, so they are committed
with real outputs. The tests execute them again (tests/test_notebooks.py).

    python scripts/make_notebooks.py                        # every notebook
    python scripts/make_notebooks.py 05_embeddings.ipynb    # only the named ones
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
print(d["units"][0])"""),
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


def embeddings_notebook() -> list[tuple[str, str]]:
    """Cells of notebooks/05_embeddings.ipynb: where DLRM's embedding tables live, and what it buys."""
    return [
        ("md", "# Embedding tables: GPU, cache, UVM or CPU\n\nA DLRM's embedding tables can be far larger than "
               "HBM: criteo-terabyte's 26 tables hold 85 GiB of fp32 rows. tierplan places each table `gpu` (whole "
               "in HBM), `cache` (its hottest rows in an HBM cache, every row in host memory), `uvm` (gathered over "
               "the link) or `cpu` (pooled on the host), and sizes each cache from the table's hit-rate curve. "
               "Every figure below is the cost model's prediction on bundled profiles, not a measurement."),
        ("code", SETUP),
        ("md", "## Hit-rate curves\n\nA cache of `C` rows of a table hits a share of its lookups: the mass of the "
               "`C` hottest rows for a static cache, less for an LRU cache (Che's approximation). The bundled "
               "presets give every table a Zipf access with exponent 1.45 (an assumption: no per-table skew is "
               "published), so a cache of a few percent of the rows already serves nearly every lookup. The four "
               "largest tables of criteo-terabyte:"),
        ("code", """import numpy as np
from costmodel.embeddings import load_rec_model

model = load_rec_model("criteo-terabyte")
largest = sorted(model.tables, key=lambda t: -t.rows)[:4]
fig, ax = plt.subplots(figsize=(8, 4))
for t, color in zip(largest, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
    rows = np.unique(np.round(np.geomspace(1, t.rows, 40)).astype(np.int64))
    ax.plot(rows / t.rows, t.access.static_hit_rate(rows), color=color, label=f"{t.name} ({t.rows:,} rows), static")
    ax.plot(rows / t.rows, t.access.lru_hit_rate(rows), color=color, ls="--", label=f"{t.name}, LRU")
ax.set_xscale("log"); ax.set_xlabel("cache rows / table rows (load factor)"); ax.set_ylabel("hit rate")
ax.set_title("criteo-terabyte: static and LRU hit rate against cache size", fontsize=10)
ax.legend(fontsize=7); plt.show()"""),
        ("md", "## The caches the planner picks against the HBM budget\n\nPlan criteo-terabyte at batch 16384 on an "
               "A100-80GB whose usable HBM is cut with `gpu.memory` (what `--set gpu.memory=16GiB` does on the "
               "command line). Each cell is a table's placement: a cache as its share of the table's rows, "
               "`+prefetch` where its cold rows are copied during the previous step's compute; tables placed "
               "the same way at every budget are left out. The large tables' caches grow with the budget."),
        ("code", """from costmodel.embeddings_cost import EmbWorkload
from hwprofiles import load_system
from solver.embeddings import plan_embeddings

wl = EmbWorkload(model=model, batch=16384)
budgets_gib = (4, 8, 16, 32, 64)
plans = {gib: plan_embeddings(wl, load_system("a100-80gb", [f"gpu.memory={gib}GiB"])) for gib in budgets_gib}

def describe(p, t):
    text = f"cache {p.cache_rows / t.rows:.1%}" if p.placement == "cache" else p.placement.value
    return text + (" +prefetch" if p.prefetched(wl) else "")

placement = pd.DataFrame({f"{gib} GiB": [describe(p, t) for p, t in zip(plan.policies, model.tables)]
                          for gib, plan in plans.items()},
                         index=[f"{t.name} ({t.rows:,} rows)" for t in model.tables])
placement[placement.nunique(axis=1) > 1]"""),
        ("md", "Where the HBM goes at each budget (the cost model's GPU memory terms), and the plan's throughput:"),
        ("code", """parts = {"gpu tables": ("tables", "table_state"), "cache rows": ("cache_rows",),
         "dense + activations": ("dense", "activations"), "ids, pooled, buffers": ("index_pooled", "prefetch_buffers")}
use = pd.DataFrame({gib: {name: sum(dict(plan.cost.memory.gpu_breakdown)[k] for k in keys) / 2**30
                          for name, keys in parts.items()} for gib, plan in plans.items()}).T
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
use.plot.bar(stacked=True, ax=ax1, rot=0)
ax1.set_xlabel("usable HBM (GiB)"); ax1.set_ylabel("GiB"); ax1.set_title("HBM use of the plan", fontsize=10)
ax2.plot(list(plans), [plan.samples_per_s / 1e3 for plan in plans.values()], marker="o")
ax2.set_xscale("log", base=2); ax2.set_xlabel("usable HBM (GiB)"); ax2.set_ylabel("thousand samples/s (predicted)")
ax2.set_title("plan throughput", fontsize=10)
plt.tight_layout(); plt.show()
use.round(2)"""),
        ("md", "## Speed-up over each baseline\n\nThe plan's samples/s over each baseline's, at each budget (each "
               "costed with the same model; `infeasible`: the baseline does not fit). `torchrec-uvm-cache` caches "
               "20 % of every table (TorchRec's default load factor) and needs 17 GiB of caches; "
               "`torchrec-proportional` deals the free HBM out to LRU caches in proportion to cacheability x "
               "expected lookups (TorchRec's `EmbeddingOffloadScaleupProposer`); `fae` keeps the globally hottest "
               "rows; `largest-to-cpu` is NVIDIA's rule. With fp32 MLPs the A100's 19.5 TFLOP/s dense compute "
               "bounds the step, so placements that keep the link off the critical path all land close together."),
        ("code", """speedups = pd.DataFrame({f"{gib} GiB": {b.name: (f"{b.speedup:.3f}x" if b.feasible else "infeasible")
                                        for b in plan.baselines} for gib, plan in plans.items()})
speedups.loc["plan samples/s"] = [f"{plan.samples_per_s:,.0f}" for plan in plans.values()]
speedups.loc["selected"] = [plan.selected for plan in plans.values()]
speedups"""),
        ("md", "## What if the link were PCIe 5, or NVLink-C2C?\n\nThe same 16 GiB budget on an A100-80GB with its "
               "PCIe 4 link, with the link swapped for PCIe 5 (`link=pcie5-x16`) or set to 100 GB/s each way "
               "(`link.h2d=100GB/s`), and on a GH200 (NVLink-C2C and a faster GPU). With fp32 MLPs the dense compute "
               "binds and the link barely matters; with the MLPs in fp16 (`dtype_bytes=2`) the step is over 10x "
               "shorter and the link starts to count: the baselines that read rows over it fall further behind "
               "the plan on PCIe 4 than on a faster link."),
        ("code", """systems = {"A100, PCIe 4": load_system("a100-80gb", ["gpu.memory=16GiB"]),
           "A100, PCIe 5": load_system("a100-80gb", ["gpu.memory=16GiB", "link=pcie5-x16"]),
           "A100, 100 GB/s": load_system("a100-80gb", ["gpu.memory=16GiB", "link.h2d=100GB/s", "link.d2h=100GB/s"]),
           "GH200, C2C": load_system("gh200", ["gpu.memory=16GiB"])}
rows = []
for dtype in (4, 2):
    for label, system in systems.items():
        plan = plan_embeddings(EmbWorkload(model=model, batch=16384, dtype_bytes=dtype), system)
        stage_ms = {f"{stage.value} ms": t * 1e3 for stage, t in plan.cost.stage_s}
        rows.append({"system": label, "MLP dtype bytes": dtype, "h2d GB/s": system.link.h2d_bytes_per_s / 1e9,
                     "plan samples/s": round(plan.samples_per_s), **stage_ms,
                     **{f"x {b.name}": b.speedup for b in plan.baselines if b.feasible}})
whatif = pd.DataFrame(rows)
fig, ax = plt.subplots(figsize=(8, 3.5))
whatif.pivot(index="system", columns="MLP dtype bytes", values="plan samples/s").loc[list(systems)].div(1e6).plot.bar(
    ax=ax, rot=0)
ax.set_ylabel("million samples/s (predicted)"); ax.set_title("criteo-terabyte, batch 16384, 16 GiB HBM", fontsize=10)
plt.show()
whatif.round(3)"""),
        ("md", "## TorchRec's hit-rate estimate beside tierplan's\n\nTorchRec's planner takes a cached table's hit "
               "rate to be its load factor (cache rows / rows: `kernel_bw_lookup` blends HBM and host bandwidth by "
               "it). Under a skewed access the LRU cache hits far more: for the 20 % caches here TorchRec counts 80 % "
               "of lookups as misses where the LRU cache misses under 0.2 %, so its own model overrates the link "
               "traffic of every cached table. `cacheability` is TorchRec's statistic (the area under the LRU "
               "miss-ratio curve over the load factor; 0 = trivially cacheable). The tables of over a million "
               "rows under two TorchRec-style placements at 32 GiB (where the 20 % caches fit):"),
        ("code", """from costmodel.embeddings_cost import baseline_policies, torchrec_cacheability, torchrec_estimated_hit_rate

system = load_system("a100-80gb", ["gpu.memory=32GiB"])
rows = []
for name in ("torchrec-uvm-cache", "torchrec-proportional"):
    for t, p in zip(model.tables, baseline_policies(name, wl, system)):
        if t.rows > 10**6:
            rows.append({"baseline": name, "table": t.name, "rows": t.rows, "placement": p.placement.value,
                         "cache rows": p.cache_rows, "cacheability": torchrec_cacheability(t),
                         "TorchRec hit rate (load factor)": torchrec_estimated_hit_rate(p, t),
                         "tierplan LRU hit rate": 1.0 if p.placement == "gpu" else t.access.lru_hit_rate(p.cache_rows)})
pd.DataFrame(rows).round(4)"""),
    ]


NOTEBOOKS["05_embeddings.ipynb"] = embeddings_notebook()


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout_s: int = 600) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(NB)}}).execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        print(f"unknown notebook {', '.join(unknown)}; the notebooks are {', '.join(NOTEBOOKS)}", file=sys.stderr)
        return 2
    NB.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        nb = execute(build(name, cells))
        nbformat.write(nb, NB / name)
        print(f"wrote {NB / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
