"""tierplan: plan where every layer's weights and KV cache live (GPU, host, NVMe) and what is moved,
recomputed or computed on the CPU. The public API for notebooks, re-exported from the packages.

``validate`` (torch) is imported lazily so that planning never loads torch.
"""

from costmodel import KvWorkload, LayerPolicy, evaluate, list_models, load_model
from hwprofiles import list_systems, load_system
from solver import Plan, evaluate_plan, evaluate_policy, plan_kv, simulate_decode_step, simulated_total_s

__all__ = [
    "KvWorkload", "LayerPolicy", "Plan", "evaluate", "evaluate_plan", "evaluate_policy", "list_models",
    "list_systems", "load_model", "load_system", "plan_kv", "simulate_decode_step", "simulated_total_s",
]
