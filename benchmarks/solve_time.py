"""Solve time of the KV placement MIP for 32-, 80- and 96-layer models, per backend, with
continuous KV shares and with per-head-group KV placement (one MIP over every mode, disk included),
then the wall time of a whole ``plan_kv`` (batch search, re-linearisation, baselines, simulation),
which is what ``tierplan plan kv`` costs. Prints tables; asserts nothing.

    python benchmarks/solve_time.py
"""

from __future__ import annotations

import statistics
import time

from costmodel import KvWorkload, load_model, spec_from_hf_config
from hwprofiles import load_system
from solver import available_backends, plan_kv, solve_kv

# A 126-layer model for the solve-time benchmark only (not bundled: no exact published parameter
# count to check it against). Architecture of Llama 3.1 405B from "The Llama 3 Herd of Models"
# (Meta, 2024, arXiv:2407.21783, Table 3): 126 layers, model dimension 16,384, FFN dimension 53,248,
# 128 attention heads, 8 key/value heads, vocabulary 128,256.
LLAMA_405B = {"model_type": "llama", "num_hidden_layers": 126, "hidden_size": 16384, "intermediate_size": 53248,
              "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072, "tie_word_embeddings": False}

CASES = [  # (model, system, batch, prompt, gen)
    ("llama-2-7b", "a100-40gb", 32, 2048, 256),
    ("llama-2-70b", "h100-sxm", 16, 4096, 256),
    ("opt-175b", "h100-sxm", 8, 2048, 128),  # 96 layers; the largest bundled model
    ("llama-3.1-405b", "h200", 4, 2048, 128),  # 126 layers
]


def model(name: str):
    return spec_from_hf_config(LLAMA_405B, name=name) if name == "llama-3.1-405b" else load_model(name)
REPEATS = 3


def main() -> None:
    print(f"{'model':14s} {'layers':>6s} {'kv groups':>9s} {'backend':>7s} {'vars':>5s} {'status':>9s} "
          f"{'median solve ms':>15s} {'build+solve ms':>14s}")
    for name, hw, batch, prompt, gen in CASES:
        m = model(name)
        system = load_system(hw)
        wl = KvWorkload(model=m, batch=batch, prompt_len=prompt, gen_len=gen)
        for groups in (0, m.n_kv_heads):
            for backend in available_backends():
                solve_ms, total_ms = [], []
                for _ in range(REPEATS if backend == "highs" else 1):
                    t = time.perf_counter()
                    sol = solve_kv(wl, system, kv_groups=groups, backend=backend, time_limit_s=20)
                    total_ms.append((time.perf_counter() - t) * 1e3)
                    solve_ms.append(sol.result.solve_time_s * 1e3)
                print(f"{name:14s} {m.n_layers:6d} {groups or '-':>9} {backend:>7s} {sol.result.n_variables:5d} "
                      f"{sol.result.status.value:>9s} {statistics.median(solve_ms):15.1f} {statistics.median(total_ms):14.1f}")


    print(f"\n{'model':14s} {'system':10s} {'plan_kv wall s':>14s} {'MIP solves':>10s} {'solver s':>9s} {'status':>10s}")
    for name, hw, batch, prompt, gen in CASES:
        t = time.perf_counter()
        plan = plan_kv(KvWorkload(model=model(name), batch=batch, prompt_len=prompt, gen_len=gen), load_system(hw))
        wall = time.perf_counter() - t
        print(f"{name:14s} {hw:10s} {wall:14.2f} {plan.solver['solves']:10d} {plan.solver['solve_time_s']:9.2f} "
              f"{plan.status:>10s}")


if __name__ == "__main__":
    main()
