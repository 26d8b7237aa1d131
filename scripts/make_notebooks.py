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


def training_notebook() -> list[tuple[str, str]]:
    """Cells of notebooks/06_training.ipynb: where training's model states and activations live, and what it buys."""
    return [
        ("md", "# Training with offload: states, step and activations per layer\n\nMixed-precision AdamW keeps "
               "16-bit weights, 16-bit gradients, an fp32 gradient copy, fp32 master weights and two fp32 moments: "
               "20 B per parameter before any activations (DeepSpeed's accounting, `costmodel.training_states`), "
               "134 GB for Llama-2-7B. tierplan decides per decoder layer where the weights (`w`), the gradients "
               "the step reads (`g`), the master weights (`m`) and the moments (`o`) live (GPU, host, NVMe), "
               "whether the layer's optimizer step runs on the GPU or the CPU, and whether its activations are "
               "kept, recomputed (fully or selectively) or offloaded to the host. Every figure below is the cost "
               "model's prediction on bundled profiles, not a measurement."),
        ("code", SETUP),
        ("md", "The plan of a workload is the faster of the plans at ZeRO stage 2 and stage 3 (stage 3 may "
               "take the 16-bit weights off the GPU too, at the price of gathering them). Each baseline is "
               "costed at the stage DeepSpeed runs it at (`baseline_workload`: ZeRO-Offload at 2, ZeRO-Infinity "
               "and Twin-Flow at 3), so the plan is never slower than a feasible baseline."),
        ("code", """from dataclasses import replace

import costmodel
from hwprofiles import load_system
from solver.training import BASELINES_TO_REPORT, plan_training
from solver.training_plan import baseline_workload, to_plan

def best_plan(wl, system):
    \"\"\"(workload, TrainPlan): the faster feasible plan at ZeRO stage 2 and 3 (stage 3's if none fits).\"\"\"
    plans = [(w, plan_training(w, system)) for w in (replace(wl, zero_stage=2), replace(wl, zero_stage=3))]
    feasible = [(w, tp) for w, tp in plans if tp.cost is not None]
    return max(feasible, key=lambda p: p[1].tokens_per_s) if feasible else plans[-1]

def baseline_cost(name, wl, system):
    \"\"\"A baseline costed at the ZeRO stage it runs at; None where it cannot run or does not fit.\"\"\"
    bwl = baseline_workload(name, wl)
    try:
        cost = costmodel.evaluate_training(bwl, system, costmodel.train_baseline_policies(name, bwl, system))
    except costmodel.WorkloadError:  # e.g. a disk the system lacks
        return None
    return cost if cost.feasible else None

llama7 = costmodel.load_model("llama-2-7b")
wl7 = costmodel.TrainWorkload(model=llama7, seq_len=2048, micro_batch=4, grad_accum=8)
print(f"{llama7.name}: {wl7.tokens_per_iteration} tokens per iteration, "
      f"{wl7.state.total:g} B/param of model states")"""),
        ("md", "## 1. Where each state lives as GPU memory shrinks\n\nLlama-2-7B, sequence 2048, micro-batch 4, "
               "8 micro-steps of gradient accumulation, on an A100-80GB (PCIe 4 link, 128 GiB host, NVMe) whose "
               "HBM (79.26 GiB in its profile: `full`) is cut with `gpu.memory` (what `--set gpu.memory=24GiB` "
               "does on the command line; 1 GiB of it is reserved for the CUDA context). The per-layer "
               "decisions are read from the plan's JSON envelope (`to_plan(...).units`), the object the CLI "
               "writes. Each row of the map is one budget, each column one decoder layer."),
        ("code", """budgets = {"full": []} | {str(g): [f"gpu.memory={g}GiB"] for g in (64, 48, 40, 32, 24, 16, 12)}
plans, rows = {}, []
for label, overrides in budgets.items():
    system = load_system("a100-80gb", overrides)
    wl, tp = best_plan(wl7, system)
    plan = to_plan(wl, system, tp)
    plans[label] = plan
    c = tp.cost
    rows.append({"gpu.memory GiB": label, "zero stage": wl.zero_stage, "status": plan.status, "selected": tp.selected,
                 "tokens/s": c.tokens_per_s, "iteration s": c.iteration_s, "forward s": c.forward_s,
                 "backward s": c.backward_s, "step s": c.step_s, "MFU": c.mfu,
                 "GPU GiB used": c.memory.gpu_bytes / 2**30, "host GiB used": c.memory.host_bytes / 2**30,
                 "disk GiB used": c.memory.disk_bytes / 2**30})
sweep = pd.DataFrame(rows).set_index("gpu.memory GiB")
sweep.round(3)"""),
        ("code", """import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

def states(u):
    return f"w {u['params']} · g {u['grads']} · m {u['master']} · o {u['moments']}"

def mode(u):
    act = u["activations"] + (f"@{u['offload_share']:g}" if u["activations"] == "offload" else "")
    return f"{states(u)} · step {u['step']} · act {act}"

modes = sorted({mode(u) for p in plans.values() for u in p.units})
grid = np.array([[modes.index(mode(u)) for u in p.units] for p in plans.values()])
colors = plt.get_cmap("tab20").colors
fig, ax = plt.subplots(figsize=(11, 3.8))
ax.imshow(grid, cmap=ListedColormap(colors[:len(modes)]), vmin=-0.5, vmax=len(modes) - 0.5, aspect="auto")
ax.set_yticks(range(len(plans)), [k if k == "full" else f"{k} GiB" for k in plans]); ax.set_xlabel("decoder layer")
ax.set_title("llama-2-7b on a100-80gb: each layer's placement at each HBM budget", fontsize=10)
ax.legend(handles=[Patch(color=colors[i], label=m) for i, m in enumerate(modes)], fontsize=7,
          loc="upper left", bbox_to_anchor=(1.01, 1.0))
plt.show()"""),
        ("md", "The same decisions counted by facet: where the states live, where the step runs, what the "
               "activations do; and the plan's throughput at each budget."),
        ("code", """facets = {"states (w · g · m · o)": states, "step device": lambda u: u["step"],
          "activations": lambda u: u["activations"]}
fig, axes = plt.subplots(1, 4, figsize=(15, 4.6))
for ax, (title, key) in zip(axes, facets.items()):
    counts = pd.DataFrame({k: pd.Series([key(u) for u in p.units]).value_counts()
                           for k, p in plans.items()}).T.fillna(0)
    counts.plot.bar(stacked=True, ax=ax, rot=0, width=0.8)
    ax.set_title(title, fontsize=10); ax.set_xlabel("gpu.memory (GiB)"); ax.set_ylabel("layers")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18))
axes[3].plot(range(len(sweep)), sweep["tokens/s"], marker="o")
axes[3].set_xticks(range(len(sweep)), sweep.index); axes[3].set_ylim(0, None)
axes[3].set_xlabel("gpu.memory (GiB)"); axes[3].set_ylabel("tokens/s (predicted)")
axes[3].set_title("plan throughput", fontsize=10)
plt.tight_layout(); plt.show()
for label, p in plans.items():
    print(f"{label:>4s}{'' if label == 'full' else ' GiB'}: {p.predicted['tokens_per_s']:7.0f} tokens/s, "
          f"binding {p.predicted['binding']}, "
          f"{sum(u['step'] == 'cpu' for u in p.units)} layers stepped on the CPU, "
          f"{sum(u['activations'] != 'keep' for u in p.units)} not keeping their activations")"""),
        ("md", "With the whole HBM the plan already moves the optimizer of about half the layers to the CPU and "
               "streams the others' master weights and moments from the host (all on the GPU, the states and "
               "activations would need 160 GiB); as HBM shrinks more layers step on the CPU and recompute their "
               "activations; "
               "below about 20 GiB the 12.6 GiB of 16-bit weights no longer fit beside the activations at "
               "ZeRO stage 2, and stage 3 sends some layers' weights to the host (and, at the smallest budget, "
               "some gradients to NVMe)."),
        ("md", "## 2. The plan against ZeRO-Offload and the other baselines\n\nFor a few models and GPUs (each "
               "with its bundled host), the plan's tokens/s over each baseline's at the same workload (sequence "
               "2048, micro-batch 4, 8 micro-steps). `zero-offload+full-recompute` is DeepSpeed ZeRO-Offload as "
               "its tutorial runs it (ZeRO-2, CPU Adam, activation checkpointing). A missing bar: the baseline "
               "does not fit (GPU or host memory) or cannot run there."),
        ("code", """cases = [("llama-2-7b", "rtx4090"), ("llama-2-7b", "a100-40gb"), ("llama-2-7b", "a100-80gb"),
         ("llama-2-7b", "h100-sxm"), ("llama-3-8b", "h100-sxm"), ("llama-2-13b", "h100-sxm")]
speedup, plan_rate = {}, {}
for model_name, hw in cases:
    system = load_system(hw)
    wl = costmodel.TrainWorkload(model=costmodel.load_model(model_name), seq_len=2048, micro_batch=4, grad_accum=8)
    _, tp = best_plan(wl, system)
    key = f"{model_name}\\n{hw}"
    plan_rate[key] = tp.tokens_per_s
    speedup[key] = {}
    for name in BASELINES_TO_REPORT:
        cost = baseline_cost(name, wl, system)
        speedup[key][name] = None if cost is None else tp.tokens_per_s / cost.tokens_per_s
speedups = pd.DataFrame(speedup).astype(float)
speedups = speedups[speedups.notna().any(axis=1)]  # baselines that fit somewhere
fig, ax = plt.subplots(figsize=(12, 4))
speedups.T.plot.bar(ax=ax, rot=0, width=0.85)
ax.axhline(1, color="k", lw=0.8, ls=":")
ax.set_yscale("log"); ax.set_ylabel("plan tokens/s / baseline tokens/s")
ax.set_title("speed-up of the plan over each feasible baseline (log scale)", fontsize=10); ax.legend(fontsize=7)
plt.show()
table = speedups.map(lambda v: "does not fit" if np.isnan(v) else f"{v:.2f}x")
table.loc["plan tokens/s"] = [f"{v:,.0f}" for v in plan_rate.values()]
table.columns = [c.replace("\\n", " on ") for c in table.columns]
print(f"smallest speed-up over any feasible baseline: {np.nanmin(speedups.values):.3f}x (>= 1 by construction)")
table"""),
        ("md", "The gain over ZeRO-Offload comes from not offloading what need not be: layers keep their step "
               "on the GPU where memory and the link allow (Twin-Flow's idea, chosen per layer rather than by one "
               "ratio; their master weights and moments may be streamed from the host), and only the layers that "
               "must, recompute their activations. Where GPU memory is short (RTX 4090, A100-40GB) there is little "
               "left to keep, and the plan comes close to ZeRO-Offload."),
        ("md", "## 3. What if the link were PCIe 5, or NVLink-C2C?\n\nThe same Llama-2-7B workload on an A100-80GB "
               "with its PCIe 4 link, with the link swapped for PCIe 5 (`link=pcie5-x16`), and on a GH200 "
               "(NVLink-C2C to a 480 GB Grace host, and a faster GPU), each at its full HBM and cut to 40 GiB. "
               "DeepSpeed's host buffers are pageable by default, so copies run at the link's pageable rate."),
        ("code", """systems = {"A100, PCIe 4": ("a100-80gb", []), "A100, PCIe 5": ("a100-80gb", ["link=pcie5-x16"]),
           "GH200, C2C": ("gh200", [])}
rows = []
for hbm in (None, 40):
    for label, (hw, overrides) in systems.items():
        system = load_system(hw, overrides + ([f"gpu.memory={hbm}GiB"] if hbm else []))
        wl, tp = best_plan(wl7, system)
        c = tp.cost
        z = baseline_cost("zero-offload+full-recompute", wl7, system)
        rows.append({"system": label, "HBM": "full" if hbm is None else f"{hbm} GiB",
                     "h2d GB/s (pinned)": system.link.h2d_bytes_per_s / 1e9, "zero stage": wl.zero_stage,
                     "tokens/s": c.tokens_per_s, "forward s": c.forward_s, "backward s": c.backward_s,
                     "step s": c.step_s, "layers stepped on CPU": sum(p.step == "cpu" for p in tp.policies),
                     "activations": ", ".join(f"{n} {a}" for a, n in pd.Series(
                         [p.activations.value for p in tp.policies]).value_counts().items()),
                     "layers with weights on host": sum(p.params == "host" for p in tp.policies),
                     "h2d busy s": c.busy_s("h2d"), "cpu busy s": c.busy_s("cpu"),
                     "x zero-offload+full-recompute": None if z is None else c.tokens_per_s / z.tokens_per_s})
whatif = pd.DataFrame(rows)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
whatif.pivot(index="system", columns="HBM", values="tokens/s").loc[list(systems), ["full", "40 GiB"]].plot.bar(
    ax=ax1, rot=0)
ax1.set_ylabel("tokens/s (predicted)"); ax1.set_title("llama-2-7b, s2048, micro-batch 4 x 8", fontsize=10)
cpu_layers = whatif.pivot(index="system", columns="HBM", values="layers stepped on CPU")
cpu_layers.loc[list(systems), ["full", "40 GiB"]].plot.bar(ax=ax2, rot=0)
ax2.set_ylabel(f"of {llama7.n_layers} layers")
ax2.set_title("layers whose optimizer step runs on the CPU", fontsize=10)
plt.tight_layout(); plt.show()
whatif.round(3)"""),
        ("md", "On the A100 the forward and backward are the GPU's compute, with the copies hidden under it, on "
               "either link; only the step, which DeepSpeed runs after the backward, shrinks with the faster link, "
               "so PCIe 5 buys a few percent. The GH200's GPU has about 3x the A100's fp16 peak and its link over "
               "10x the bandwidth: at ZeRO stage 3 the plan sends nearly every layer's 16-bit weights and "
               "activations to the host over NVLink-C2C, keeps most optimizer steps on the GPU, and the step "
               "nearly vanishes from the iteration."),
        ("md", "## 4. The DeepSpeed ZeRO-Offload tutorial, predicted\n\nThe tutorial trains a 10B-parameter "
               "Megatron GPT-2 (50 layers, hidden 4096) on one V100 32GB with ZeRO-Offload: fp16, CPU Adam, "
               "ZeRO-2, activation checkpointing, micro-batch 10 of 1024 tokens, Megatron's unfused attention "
               "with dropout 0.1. The machine is a DGX-2 GPU with the whole 1.5 TB host "
               "(`dgx2-v100-32gb-1gpu-full-host`). Its training log shows forward 6.1-6.4 s, backward 11.8-12.6 s "
               "and optimizer step 7.6-8.0 s per iteration (DeepSpeed ZeRO-Offload tutorial, "
               "https://www.deepspeed.ai/tutorials/zero-offload/, log screenshot; transcribed in "
               "`validate/data/published_training.yaml`, read below). The prediction uses the bundled profiles "
               "as they are: nothing is tuned to these figures, and the differences are the model's current error."),
        ("code", """from validate.published_training import load_training_rows, training_workload

system = load_system("dgx2-v100-32gb-1gpu-full-host")
wl = costmodel.TrainWorkload(model=costmodel.load_model("gpt2-10b"), seq_len=1024, micro_batch=10, precision="fp16",
                             optimizer="adam", zero_stage=2, fused_attention=False, dropout=True, kernels="fused",
                             pin_memory=True)
tutorial_policies = costmodel.train_baseline_policies("zero-offload+full-recompute", wl, system)
cost = costmodel.evaluate_training(wl, system, tutorial_policies)
published = {r.metric.value: r for r in load_training_rows() if r.id.startswith("dso-tutorial-gpt2-10b")}
assert all(training_workload(r) == wl for r in published.values())  # the rows state this very workload
rows = []
for metric in ("forward_s", "backward_s", "step_s", "iteration_s"):
    r, predicted = published[metric], getattr(cost, metric)
    rows.append({"phase": metric.removesuffix("_s"), "predicted s": predicted, "published low s": r.low,
                 "published high s": r.high, "error vs midpoint %": 100 * (predicted - r.value) / r.value})
tutorial = pd.DataFrame(rows).set_index("phase")
fig, ax = plt.subplots(figsize=(7, 3.5))
x = np.arange(len(tutorial))
mid = (tutorial["published low s"] + tutorial["published high s"]) / 2
ax.bar(x - 0.2, mid, 0.4, yerr=(tutorial["published high s"] - tutorial["published low s"]) / 2, capsize=4,
       label="published (range)")
ax.bar(x + 0.2, tutorial["predicted s"], 0.4, label="predicted")
ax.set_xticks(x, tutorial.index); ax.set_ylabel("seconds"); ax.legend()
ax.set_title("gpt2-10b, ZeRO-Offload + full recompute, one V100 32GB", fontsize=10)
plt.show()
from costmodel.training import head_ops, layer_ops

fwd_flop = wl.model.n_layers * sum(op.flop for op in layer_ops(wl)) + sum(op.flop for op in head_ops(wl))
peak = system.gpu.fp16_flop_per_s
rate_predicted, rate_published = fwd_flop / cost.forward_s, fwd_flop / published["forward_s"].value
print(f"forward: {fwd_flop / 1e12:.0f} TFLOP per micro-batch; predicted at {rate_predicted / 1e12:.0f} TFLOP/s "
      f"({rate_predicted / peak:.0%} of the V100's {peak / 1e12:.0f} TFLOP/s fp16 peak), published at "
      f"{rate_published / 1e12:.0f} TFLOP/s ({rate_published / peak:.0%})")
print(f"feasible {cost.feasible}: GPU {cost.memory.gpu_bytes / 2**30:.1f} of "
      f"{cost.capacity['gpu_bytes'] / 2**30:.1f} GiB "
      f"usable, host {cost.memory.host_bytes / 1e9:.0f} GB; predicted busy per resource: "
      + ", ".join(f"{r} {v:.2f} s" for r, v in cost.busy))
tutorial.round(2)"""),
        ("md", "Where the error sits. The forward runs on the GPU alone (the weights are resident and only each "
               "layer's input is kept), yet the log's forward is not all forward compute: with full recompute the "
               "backward timer runs the forward again plus a backward of about twice its FLOPs, so the forward's "
               "compute is at most 12.2 / 3 = 4.07 s of the 6.25 s logged -- about 2 s of the forward timer is "
               "something the model does not know of. The rest is the GPU's achieved rate: the bundled V100 "
               "profile's generic efficiency curve (`generic-gpu`: 72-75 % of the tensor peak for GEMMs of 0.1-1 "
               "TFLOP, an estimate) credits Megatron's 2020 kernels, unfused attention and dropout with more than "
               "the log shows (the rates printed above). The backward adds the recompute and the fp32 gradients' "
               "copy to pinned host memory; the step is three CPU passes -- the unscale of the fp32 gradients, the "
               "Adam update and the fp32 to fp16 copy, 42 B per parameter on the host's theoretical, unmeasured "
               "255.9 GB/s of DRAM bandwidth -- and the copy of the updated fp16 weights over PCIe 3. Measured "
               "profiles of this GPU and host (`tierplan profile`) would replace the generic curves; nothing here "
               "is fitted to the tutorial (the row notes in `validate/data/published_training.yaml` say what was "
               "checked in DeepSpeed's 2020 code)."),
        ("md", "Could the planner do better on this machine? At ZeRO stage 2, with the 16-bit weights resident, it "
               "can only choose per layer among ZeRO-Offload-like modes; at stage 3 it may also move weights to "
               "the host, freeing HBM for a cheaper activation policy (selective recompute) on some layers. Both "
               "are the cost model's figures, with the under-prediction shown above."),
        ("code", """for stage in (2, 3):
    tp = plan_training(replace(wl, zero_stage=stage), system)
    print(f"ZeRO stage {stage}: plan {tp.tokens_per_s:,.0f} tokens/s ({tp.selected}; "
          f"{', '.join(f'{n} x {m}' for m, n in tp.mode_counts)}); "
          f"{tp.tokens_per_s / cost.tokens_per_s:.3f}x the tutorial's configuration "
          f"({cost.tokens_per_s:,.0f} tokens/s)")"""),
    ]


NOTEBOOKS["06_training.ipynb"] = training_notebook()


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
