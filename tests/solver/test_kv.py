"""The placement MIP and the planner: canonical problems with hand-checked optima, on every backend.

Toy system (tests/data/toy-system.yaml): 15 GiB usable GPU at 1 TB/s and 100 TFLOP/s, 128 GiB host
at 100 GB/s and 2 TFLOP/s, a 10 GB/s link with no latency and no bidirectional penalty, no disk,
flat 100 % efficiency curves. llama-2-7b numbers (derived in tests/costmodel/test_kv.py):
a layer's weights are 404_766_720 B, its dense decode work at batch 1 is 404_947_456 B of memory
traffic, KV is 16_384 B per token and layer, the head 524_296_192 B (262_232_576 B read per step).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel import KvWorkload, evaluate, load_model
from hwprofiles import apply_overrides, format_bytes, load_system
from solver import (
    BASELINES,
    PlanError,
    Restriction,
    available_backends,
    batch_candidates,
    evaluate_plan,
    evaluate_policy,
    parse_flexgen,
    plan_kv,
    solve_kv,
)
from solver.backends import SolveStatus
from solver.kv import _restriction

TOY = Path(__file__).resolve().parents[1] / "data" / "toy-system.yaml"
GIB = 2**30
BACKENDS = available_backends()
HYPO = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _offloaded_kv_share(pols) -> float:
    return sum(p.kv.offloaded for p in pols) / len(pols)


def test_backends_are_installed():
    assert BACKENDS, "neither HiGHS nor CBC is available"
    assert set(BACKENDS) <= {"highs", "cbc"}


# ---------------------------------------------------------------------------------------------
# Canonical problems, hand-checked, on every backend
# ---------------------------------------------------------------------------------------------

# llama-2-7b, batch 1, prompt 32, generate 8, on the toy system. Everything fits on the GPU:
# weights 13_476_831_232 B + KV 32 * 40 * 16_384 = 20_971_520 B + working 3_372_032 B < 15 GiB.
# Offloading anything only adds link or CPU work, so the optimum is all-GPU:
#   prefill = (32 layers * 412_106_752 B + head 262_232_576 B) / 1 TB/s = 0.01344964864 s
#   decode  = sum over c = 33..40 of (32 * (404_947_456 + 16_384 * (c + 1)) + 262_232_576) / 1 TB/s
#           = 105_921_695_744 B / 1 TB/s = 0.105921695744 s
FITS_OPTIMUM_S = 0.01344964864 + 0.105921695744  # 0.119371344384


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_that_fits_is_planned_all_gpu(toy, llama2, backend):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    sol = solve_kv(wl, toy, backend=backend)
    assert sol.result.status is SolveStatus.OPTIMAL
    assert sol.result.backend == backend
    # 1e-6: the solver's feasibility tolerance on rows scaled to milliseconds
    assert sol.result.objective == pytest.approx(FITS_OPTIMUM_S, rel=1e-6)
    assert len(sol.policies) == 32
    for pol in sol.policies:
        assert pol.weights.gpu == pytest.approx(1.0, abs=1e-6)
        assert pol.kv.gpu == pytest.approx(1.0, abs=1e-6)
    assert sol.head_on_gpu
    assert sum(n for _, n in sol.mode_counts) == 32
    # the exact cost model agrees with the MIP here (nothing is linearised for all-GPU layers)
    cost = evaluate(wl, toy, sol.policies, head_on_gpu=sol.head_on_gpu)
    assert cost.prefill_s + cost.decode_s == pytest.approx(FITS_OPTIMUM_S, rel=1e-9)


# The full-offload baseline (all weights and all KV on the host, KV transferred) on the same
# workload. Each layer is bound by its H2D copy:
#   prefill: 32 * 404_766_720 B / 10 GB/s + head 262_232_576 B / 1 TB/s = 1.295515736576 s
#   decode:  sum over c = 33..40 of 32 * (404_766_720 + 16_384 c) / 10 GB/s + 8 * 262_232_576 / 1 TB/s
#          = (8*32*404_766_720 + 32*16_384*292) / 1e10 + 0.002097860608 = 10.379435102208 s
FULL_OFFLOAD_S = 1.295515736576 + 10.379435102208  # 11.674950838784


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_offload_baseline_optimum_by_hand(toy, llama2, backend):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    sol = solve_kv(wl, toy, restriction=_restriction("full-offload", has_disk=False), backend=backend)
    assert sol.result.status is SolveStatus.OPTIMAL
    assert sol.result.objective == pytest.approx(FULL_OFFLOAD_S, rel=1e-6)
    for pol in sol.policies:
        assert pol.weights.host == pytest.approx(1.0, abs=1e-6)
        assert pol.kv.host == pytest.approx(1.0, abs=1e-6)
        assert all(s.transfer == pytest.approx(1.0, abs=1e-6) for s in pol.splits)
    assert sol.head_on_gpu  # 0.5 GB of head fits next to the double buffers
    cost = evaluate(wl, toy, sol.policies, head_on_gpu=sol.head_on_gpu)
    assert cost.prefill_s + cost.decode_s == pytest.approx(FULL_OFFLOAD_S, rel=1e-9)


# llama-2-7b, batch 8, prompt 1024, generate 16: the KV does not fit next to the weights.
#   weights 32 * 404_766_720 + 524_296_192 = 13_476_831_232 B
#   KV      32 * 8 * 1040 * 16_384         =  4_362_076_160 B
#   working 2*8192*4096*2 + 4096*84_992 + 8*32000*4 = 483_368_960 B
#   need 18_322_276_352 B, usable 15 GiB = 16_106_127_360 B: at least 2_216_148_992 B must leave.
# Freeing a byte of weights costs 1e-10 s per step (it crosses the 10 GB/s link every step); a byte
# of KV attended on the CPU costs 2e-11 s (read in fp32 at 100 GB/s), in parallel with the GPU, so
# the KV goes and the weights stay.
KV_MUST_LEAVE_BYTES = 18_322_276_352 - 15 * GIB


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_that_does_not_fit_is_offloaded(toy, llama2, backend):
    wl = KvWorkload(model=llama2, batch=8, prompt_len=1024, gen_len=16)
    assert KV_MUST_LEAVE_BYTES == 2_216_148_992
    sol = solve_kv(wl, toy, backend=backend)
    assert sol.result.status is SolveStatus.OPTIMAL
    kv_layer = 8 * 1040 * 16_384
    offloaded = sum(p.kv.offloaded for p in sol.policies) * kv_layer
    assert offloaded >= KV_MUST_LEAVE_BYTES
    assert all(p.weights.gpu == pytest.approx(1.0, abs=1e-6) for p in sol.policies)
    # every offloaded token is handled somehow, and the plan fits when costed exactly
    cost = evaluate(wl, toy, sol.policies, head_on_gpu=sol.head_on_gpu)
    assert cost.feasible
    assert cost.memory.gpu_bytes <= 15 * GIB
    # and it beats the all-GPU restriction, which is infeasible here
    gpu_only = solve_kv(wl, toy, restriction=_restriction("gpu-only", False), backend=backend)
    assert gpu_only.result.status is SolveStatus.INFEASIBLE
    assert gpu_only.policies == ()


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both HiGHS and CBC")
@pytest.mark.parametrize(
    ("model", "batch", "prompt", "gen", "gpu_gib"),
    [("llama-2-7b", 1, 32, 8, 16), ("llama-2-7b", 8, 1024, 16, 16), ("llama-3-8b", 4, 512, 8, 16),
     ("mistral-7b", 2, 128, 8, 12), ("opt-6.7b", 16, 256, 8, 14)],
)
def test_highs_and_cbc_agree(toy, model, batch, prompt, gen, gpu_gib):
    system = apply_overrides(toy, [f"gpu.memory={gpu_gib}GiB"])
    wl = KvWorkload(allow_long_context=True, model=load_model(model), batch=batch, prompt_len=prompt, gen_len=gen)
    # gap 1e-9 so that both prove optimality; then the optima agree to the feasibility tolerance.
    objs = [solve_kv(wl, system, backend=b, gap_rel=1e-9).result.objective for b in ("highs", "cbc")]
    assert objs[0] == pytest.approx(objs[1], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# GQA vs MHA: recompute from activations pays only when KV is wider than the layer input
# ---------------------------------------------------------------------------------------------


def _recompute_share(plan) -> float:
    moved = sum(sum(layer["tokens_per_step"].values()) for layer in plan.layers)
    recomputed = sum(layer["tokens_per_step"]["recomputed"] for layer in plan.layers)
    return recomputed / moved if moved else 0.0


@pytest.mark.parametrize(("model", "gqa"), [("opt-6.7b", False), ("llama-2-7b", False), ("llama-3-8b", True),
                                             ("mistral-7b", True), ("qwen2.5-7b", True)])
def test_recompute_is_chosen_for_mha_and_not_for_gqa(toy, model, gqa):
    # Long context, KV offloaded. Recomputing a token sends its layer input (hidden * 2 = 8192 B for
    # the 7B models; 7168 B for qwen2.5) over the link instead of its KV: 16_384 B for MHA but only
    # 4_096 B (llama-3, mistral) or 2_048 B (qwen2.5) for GQA, where it also costs GPU time. So for
    # GQA transferring the KV always beats recomputing it.
    spec = load_model(model)
    assert spec.is_gqa is gqa
    wl = KvWorkload(model=spec, batch=8, prompt_len=1024, gen_len=16)
    plan = plan_kv(wl, toy, objective="latency", baselines=())
    assert plan.status == "optimal"
    kv_off = sum(layer["kv"]["host"] + layer["kv"]["disk"] for layer in plan.layers) / len(plan.layers)
    # The KV does not fit, so part of it is offloaded (how much beyond the minimum is a tie: while
    # transfers hide under compute, optima differ only in how much more they offload).
    assert kv_off > 0.01
    share = _recompute_share(plan)
    if gqa:
        assert share < 1e-6
    else:
        assert share > 0.05


# ---------------------------------------------------------------------------------------------
# Properties of the optimum
# ---------------------------------------------------------------------------------------------

workloads = st.builds(
    lambda model, batch, prompt, pinned: KvWorkload(allow_long_context=True, model=load_model(model), batch=batch,
                                                    prompt_len=prompt, gen_len=8, pinned_weights=pinned),
    model=st.sampled_from(["llama-2-7b", "llama-3-8b", "mistral-7b", "opt-6.7b"]),
    batch=st.sampled_from([1, 2, 4, 8, 16]),
    prompt=st.sampled_from([32, 256, 1024, 2048]),
    pinned=st.sampled_from([True, True, False]),  # pageable weights: their copies hold the host thread
)


@HYPO
@given(wl=workloads, gpu_gib=st.sampled_from([8, 10, 12, 14, 16, 20]), extra_gib=st.sampled_from([2, 4, 8]))
def test_more_gpu_memory_never_makes_the_optimum_worse(toy, wl, gpu_gib, extra_gib):
    small = solve_kv(wl, apply_overrides(toy, [f"gpu.memory={gpu_gib}GiB"]), gap_rel=1e-7)
    big = solve_kv(wl, apply_overrides(toy, [f"gpu.memory={gpu_gib + extra_gib}GiB"]), gap_rel=1e-7)
    if small.result.status is not SolveStatus.OPTIMAL:
        return
    # a plan that fits in less memory fits in more
    assert big.result.status is SolveStatus.OPTIMAL
    # 1e-6: both are optimal to a 1e-7 gap and the feasibility tolerance
    assert big.result.objective <= small.result.objective * (1 + 1e-6)


@HYPO
@given(wl=workloads, gpu_gib=st.sampled_from([8, 12, 16]), gbps=st.sampled_from([4, 10, 25]),
       factor=st.sampled_from([1.5, 2.0, 4.0]), direction=st.sampled_from(["h2d", "d2h", "both"]))
def test_more_link_bandwidth_never_makes_the_optimum_worse(toy, wl, gpu_gib, gbps, factor, direction):
    def system(bw: float):
        sets = [f"gpu.memory={gpu_gib}GiB"]
        sets += [f"link.{d}={bw}GB/s" for d in (("h2d", "d2h") if direction == "both" else (direction,))]
        return apply_overrides(toy, sets)

    slow = solve_kv(wl, system(gbps), gap_rel=1e-7)
    fast = solve_kv(wl, system(gbps * factor), gap_rel=1e-7)
    if slow.result.status is not SolveStatus.OPTIMAL:
        return
    # Bandwidth changes no capacity, so the same plans are feasible, and each costs no more.
    assert fast.result.status is SolveStatus.OPTIMAL
    assert fast.result.objective <= slow.result.objective * (1 + 1e-6)


@HYPO
@given(wl=workloads, gpu_gib=st.sampled_from([10, 14, 16]))
def test_optimum_is_never_worse_than_any_baseline(toy, wl, gpu_gib):
    system = apply_overrides(toy, [f"gpu.memory={gpu_gib}GiB"])
    best = solve_kv(wl, system, gap_rel=1e-7)
    for name in BASELINES:
        base = solve_kv(wl, system, restriction=_restriction(name, has_disk=False), gap_rel=1e-7)
        if base.result.status is not SolveStatus.OPTIMAL:
            continue
        # every baseline is a restriction of the MIP's space: feasible there means feasible here
        assert best.result.status is SolveStatus.OPTIMAL, name
        assert best.result.objective <= base.result.objective * (1 + 1e-6), name


@HYPO
@given(wl=workloads, gpu_gib=st.sampled_from([8, 12, 16]), host_gib=st.sampled_from([16, 32, 128]),
       bidir=st.sampled_from(["60%", "100%"]), latency=st.sampled_from(["0us", "5us"]),
       kv_groups=st.sampled_from([0, 2]))
def test_mip_plans_fit_when_costed_exactly(toy, wl, gpu_gib, host_gib, bidir, latency, kv_groups):
    system = apply_overrides(toy, [f"gpu.memory={gpu_gib}GiB", f"host.memory={host_gib}GiB",
                                   f"link.bidirectional_factor={bidir}", f"link.latency={latency}"])
    sol = solve_kv(wl, system, kv_groups=kv_groups)
    if not sol.policies:
        assert sol.result.status in (SolveStatus.INFEASIBLE, SolveStatus.TIME_LIMIT)
        return
    cost = evaluate(wl, system, sol.policies, head_on_gpu=sol.head_on_gpu)
    # The MIP's memory bounds are conservative: capacities hold per tier (1 KiB slack for LP rounding).
    for tier in ("gpu_bytes", "host_bytes", "disk_bytes"):
        assert cost.memory.as_dict()[tier] <= cost.capacity[tier] + 1024, tier


@pytest.mark.parametrize(
    ("model", "batch", "prompt", "objective"),
    [("llama-2-7b", 8, 1024, "latency"), ("llama-3-8b", 16, 512, "throughput"), ("mistral-7b", 4, 2048, "throughput")],
)
def test_plan_respects_capacities_and_beats_every_baseline(toy, model, batch, prompt, objective):
    wl = KvWorkload(allow_long_context=True, model=load_model(model), batch=batch, prompt_len=prompt, gen_len=8)
    plan = plan_kv(wl, toy, objective=objective)
    assert plan.status in ("optimal", "feasible")
    for tier in ("gpu_bytes", "host_bytes", "disk_bytes"):
        assert plan.memory[tier] <= plan.capacity[tier] + 1024, tier  # 1 KiB: sums of LP fractions
    pred = plan.predicted
    assert pred["batch"] in batch_candidates(batch, objective)
    assert pred["total_s"] == pytest.approx(pred["prefill_s"] + pred["decode_s"], rel=1e-12)
    assert pred["tokens_per_s"] == pytest.approx(pred["batch"] * 8 / pred["total_s"], rel=1e-12)
    feasible = {n: b for n, b in plan.baselines.items() if b["status"] == "feasible"}
    assert set(plan.baselines) == set(BASELINES)
    assert feasible, "at least one baseline fits"
    for name, base in feasible.items():
        # the planner keeps a baseline's decisions when the exact model ranks it higher, so it is
        # never slower than a baseline under the objective (1e-9: float noise in the ratio)
        assert base["speedup"] >= 1 - 1e-9, name
        if objective == "throughput":
            assert base["speedup"] == pytest.approx(pred["tokens_per_s"] / base["predicted"]["tokens_per_s"])
        else:
            assert base["speedup"] == pytest.approx(base["predicted"]["total_s"] / pred["total_s"])
    for name, base in plan.baselines.items():
        if base["status"] == "infeasible":
            assert base["reason"], name


def test_throughput_objective_picks_the_fastest_candidate_batch(toy, llama2):
    wl = KvWorkload(model=llama2, batch=8, prompt_len=256, gen_len=8)
    plan = plan_kv(wl, toy, objective="throughput", baselines=())
    assert plan.solver["batch_candidates"] == [1, 2, 4, 8]
    best = plan.predicted["tokens_per_s"]
    # At a fixed batch, maximising throughput is minimising total time: no candidate batch's
    # latency-optimal plan has a higher throughput (1e-9: float noise).
    for b in (1, 2, 4, 8):
        other = plan_kv(wl.with_batch(b), toy, objective="latency", baselines=())
        assert other.predicted["tokens_per_s"] <= best * (1 + 1e-9)


def test_kv_groups_place_whole_head_groups(toy, llama2):
    wl = KvWorkload(model=llama2, batch=8, prompt_len=1024, gen_len=8)
    sol = solve_kv(wl, toy, kv_groups=4)
    assert sol.result.status is SolveStatus.OPTIMAL
    shares = [p.kv.gpu * 4 for p in sol.policies]
    # each layer keeps a whole number of its 4 head groups on the GPU
    assert all(abs(s - round(s)) < 1e-6 for s in shares)
    assert any(p.kv.offloaded > 0 for p in sol.policies)
    # a coarser decision space can only be as good as the continuous one
    free = solve_kv(wl, toy, kv_groups=0)
    assert free.result.objective <= sol.result.objective * (1 + 1e-4)  # 1e-4: the default MIP gap


# ---------------------------------------------------------------------------------------------
# Infeasible workloads
# ---------------------------------------------------------------------------------------------


def test_infeasible_workload_is_a_status_with_an_explanation(toy):
    # opt-175b on the toy system, no disk. By hand:
    #   weights: 174_604_468_224 params * 2 B = 349_208_936_448 B = 325.23 GiB
    #   KV: 96 layers * 40 tokens * 24_576 elements * 2 B = 188_743_680 B = 180 MiB
    #   GPU floor: working 11_997_568 B + 2 layers of weights 7_248_396_288 B + prompt KV buffer
    #              2 * 32 * 24_576 * 2 = 3_145_728 B -> 7_263_539_584 B
    #   usable: 15 GiB - floor + 128 GiB = 146_281_541_248 B
    #   short: 349_208_936_448 + 188_743_680 - 146_281_541_248 = 203_116_138_880 B = 189.17 GiB
    wl = KvWorkload(model=load_model("opt-175b"), batch=1, prompt_len=32, gen_len=8)
    plan = plan_kv(wl, toy, objective="latency")
    assert plan.status == "infeasible"
    assert plan.predicted is None and plan.layers == ()
    short = 349_208_936_448 + 188_743_680 - (143 * GIB - 7_263_539_584)
    assert short == 203_116_138_880
    msg = plan.explanation
    assert f"short by {format_bytes(short)}" in msg  # "189.17 GiB"
    assert format_bytes(349_208_936_448) in msg and format_bytes(188_743_680) in msg
    assert "GPU" in msg and "host" in msg
    assert "disk" in msg  # the fix it suggests: add a disk tier
    for name, base in plan.baselines.items():
        assert base["status"] == "infeasible", name
        assert "does not fit" in base["reason"]
    with pytest.raises(PlanError, match="no layer decisions"):
        plan.policies()


def test_infeasible_with_too_little_host_memory(toy):
    # llama-2-70b needs 68_976_648_192 * 2 = 137.95 GB of weights; GPU 15 GiB + host 64 GiB = 84.8 GB.
    wl = KvWorkload(model=load_model("llama-2-70b"), batch=1, prompt_len=32, gen_len=8)
    system = apply_overrides(toy, ["host.memory=64GiB"])
    plan = plan_kv(wl, system, objective="latency", baselines=())
    assert plan.status == "infeasible"
    match = re.search(r"short by ([\d.]+) GiB", plan.explanation)
    assert match and float(match.group(1)) > (137.95e9 - 79 * GIB) / GIB
    assert "host memory" in plan.explanation


def test_gpu_floor_shortfall_is_explained(toy, llama2):
    # A 1_200_000-token prompt cannot even be prefilled on a 15 GiB GPU with everything offloaded.
    # Prefill's GPU floor, by hand (layer inputs on the host, head on the host, no KV buffers):
    #   weight buffers, two whole layers:            2 * 404_766_720          =    809_533_440 B
    #   KV staging, the prompt plus one 4096-token chunk: 1_204_096 * 16_384  = 19_727_908_864 B
    #   layer inputs through chunk double buffers:   4 * 4096 * 4096 * 2      =    134_217_728 B
    #   one chunk's MLP intermediates 4096 * 82_432 + fp32 logits 32000 * 4   =    337_769_472 B
    floor = 809_533_440 + 19_727_908_864 + 134_217_728 + 337_769_472  # 21_009_429_504
    wl = KvWorkload(allow_long_context=True, model=llama2, batch=1, prompt_len=1_200_000, gen_len=4)
    plan = plan_kv(wl, toy, objective="latency", baselines=())
    assert plan.status == "infeasible"
    assert f"gpu memory (prefill peak) short by {format_bytes(floor - 15 * GIB)}" in plan.explanation  # 4.57 GiB
    for term in ("weight buffers", "prefill kv staging", "prefill hidden", "prefill working"):
        assert term in plan.explanation
    assert "--prompt" in plan.explanation


def test_a_long_prompt_names_every_gpu_term_not_just_the_weights():
    # The case: kv-offload of llama-3-8b on a 24 GiB card with a 1M-token prompt. Chunked
    # prefill holds one chunk of layer inputs, not all 1M of them; whatever the verdict, the
    # message names every term of the GPU's need.
    from solver import evaluate_policy

    wl = KvWorkload(allow_long_context=True, model=load_model("llama-3-8b"), batch=1, prompt_len=1_000_000, gen_len=8)
    res = evaluate_policy("kv-offload", wl, apply_overrides(load_system("rtx4090"), ["host.memory=512GiB"]))
    mem = dict(res.memory.gpu_breakdown)
    assert mem["prefill_hidden"] < 2 * GIB  # 1M x 4096 x 2 B = 7.6 GiB if all were kept
    if not res.feasible:
        for term in ("weights", "prefill kv staging", "prefill working"):
            assert term in res.reason


def test_latency_infeasibility_is_explained_at_the_requested_batch(toy, llama2):
    # batch 64 x 4104 tokens: KV 32 * 64 * 4104 * 16_384 B = 137.7 GB (128.25 GiB) + weights 12.55 GiB
    # exceed GPU 15 GiB + host 128 GiB; batch 1 would fit.
    wl = KvWorkload(allow_long_context=True, model=llama2, batch=64, prompt_len=4096, gen_len=8)
    plan = plan_kv(wl, toy, objective="latency", baselines=())
    assert plan.status == "infeasible"
    assert "short by" in plan.explanation
    assert "batch" in plan.explanation


# ---------------------------------------------------------------------------------------------
# Named policies and request checks
# ---------------------------------------------------------------------------------------------


def test_named_gpu_only_policy_matches_the_hand_optimum(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    res = evaluate_policy("gpu-only", wl, toy)
    assert res.status == "feasible" and res.reason == ""
    ev = res.evaluated
    assert ev.cost.prefill_s + ev.cost.decode_s == pytest.approx(FITS_OPTIMUM_S, rel=1e-9)


def test_flexgen_percentages_all_on_gpu_equal_gpu_only(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    ev = evaluate_policy("flexgen:100,0,100,0,100,0", wl, toy).evaluated
    assert all(p.weights.gpu == 1.0 and p.kv.gpu == 1.0 for p in ev.policies)
    assert ev.cost.prefill_s + ev.cost.decode_s == pytest.approx(FITS_OPTIMUM_S, rel=1e-9)


def test_flexgen_percentages_that_need_a_disk_are_refused_without_one(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    res = evaluate_policy("flexgen:20,30,100,0,100,0", wl, toy)  # 50 % of weights on disk
    assert res.status == "infeasible" and res.evaluated is None
    assert "disk" in res.reason and "toy" in res.reason


@pytest.mark.parametrize("batch", [64, 100_000])
def test_evaluate_costs_the_batch_asked_or_says_infeasible(toy, llama2, batch):
    # Evaluation never picks another batch: batch 100_000 does not fit and is answered so, with the
    # GPU's shortfall and its terms; batch 64 fits and is costed at 64.
    wl = KvWorkload(model=llama2, batch=batch, prompt_len=512, gen_len=32)
    for name in BASELINES:
        res = evaluate_policy(name, wl, apply_overrides(toy, ["host.memory=2TiB"]))
        assert res.workload.batch == batch
        if res.feasible:
            assert res.evaluated.workload.batch == batch
        else:
            assert res.shortfalls and f"at batch {batch}" in res.reason
    assert not evaluate_policy("gpu-only", wl, toy).feasible
    assert evaluate_policy("kv-offload", wl, toy).feasible == (batch == 64)


def test_parse_flexgen():
    assert parse_flexgen("flexgen:20,80,0,100,0,100") == (0.2, 0.8, 0.0, 1.0, 0.0, 1.0)
    for bad, needle in (("flexgen:1,2,3", "six numbers"), ("flexgen:a,0,0,0,0,0", "numbers"),
                        ("flexgen:120,0,0,0,0,0", "0..100"), ("flexgen:60,60,0,0,0,0", "wg\\+wc")):
        with pytest.raises(PlanError, match=needle):
            parse_flexgen(bad)


def test_unknown_policy_objective_and_kv_groups_are_errors(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=8, gen_len=4)
    with pytest.raises(PlanError, match="unknown policy 'deepspeed'"):
        evaluate_policy("deepspeed", wl, toy)
    with pytest.raises(PlanError, match="objective must be one of"):
        plan_kv(wl, toy, objective="fastest")
    with pytest.raises(PlanError, match="must divide the model's 32 KV heads, got 5"):
        plan_kv(wl, toy, kv_groups=5)
    with pytest.raises(PlanError, match="backend must be one of"):
        solve_kv(wl, toy, backend="gurobi")


def test_batch_candidates():
    assert batch_candidates(48, "throughput") == [1, 2, 4, 8, 16, 32, 48]
    assert batch_candidates(8, "throughput") == [1, 2, 4, 8]
    assert batch_candidates(1, "throughput") == [1]
    assert batch_candidates(48, "latency") == [48]


def test_restricted_head_placement_is_honoured(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    sol = solve_kv(wl, toy, restriction=Restriction(head_on_gpu=False))
    assert sol.result.status is SolveStatus.OPTIMAL and not sol.head_on_gpu
    # streaming the 524_296_192 B head over the link each step (9 times incl. prefill) costs
    # 9 * 0.0524296192 s more than keeping it, minus the 9 * 262_232_576 B reads it no longer does
    extra = 9 * (524_296_192 / 10e9 - 262_232_576 / 1e12)
    assert sol.result.objective == pytest.approx(FITS_OPTIMUM_S + extra, rel=1e-6)


def test_recosting_a_plan_on_a_faster_link_is_never_slower(toy, llama2):
    wl = KvWorkload(model=llama2, batch=8, prompt_len=1024, gen_len=8)
    plan = plan_kv(wl, toy, objective="latency", baselines=())
    _, same = evaluate_plan(plan, wl, toy)
    assert same["total_s"] == pytest.approx(plan.predicted["total_s"], rel=1e-12)
    _, faster = evaluate_plan(plan, wl, apply_overrides(toy, ["link=pcie5-x16", "link.latency=0us"]))
    assert faster["total_s"] <= plan.predicted["total_s"] * (1 + 1e-12)
    with pytest.raises(PlanError, match="has 32 layers but model"):
        evaluate_plan(plan, KvWorkload(model=load_model("llama-2-13b"), batch=8, prompt_len=1024, gen_len=8), toy)


def test_model_larger_than_gpu_plus_host_is_planned_onto_disk():
    # opt-175b: 96 layers x 12 x 12288^2 params x 2 B ~ 325 GiB of weights, more than the h100-sxm
    # system's 78 GiB usable GPU + 248 GiB usable host, so a feasible plan must put bytes on the disk.
    # (Regression: disk shares were once left out of the share equalities, so disk was never used.)
    from costmodel import load_model
    from hwprofiles import load_system
    from solver import plan_kv
    from costmodel import KvWorkload

    wl = KvWorkload(model=load_model("opt-175b"), batch=1, prompt_len=128, gen_len=4)
    plan = plan_kv(wl, load_system("h100-sxm"), objective="latency", baselines=("gpu-only", "full-offload"))
    assert plan.status == "optimal"
    assert plan.memory["disk_bytes"] > 0
    for tier in ("gpu_bytes", "host_bytes", "disk_bytes"):
        # 1 KiB, as in KvCost.shortfalls: byte totals are sums of products of LP fractions.
        assert plan.memory[tier] <= plan.capacity[tier] + 1024
    assert any(e["weights"]["disk"] > 0 or e["kv"]["disk"] > 0 for e in plan.layers)
    # Baselines that cannot fit name the tier and the bytes.
    assert "gpu memory (prefill peak) short by" in plan.baselines["gpu-only"]["reason"]
    assert "host memory short by" in plan.baselines["full-offload"]["reason"]


# ---------------------------------------------------------------------------------------------
# The pruned batch search finds what the exhaustive one finds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "system", "batch", "prompt", "overrides"), [
    ("llama-2-7b", "toy", 16, 1024, ()),                       # KV-bound: offloads at large batches
    ("llama-2-13b", "toy", 8, 256, ()),                        # weights do not fit: streamed
    ("llama-2-7b", "rtx4090", 16, 2048, ("link.h2d=8GB/s",)),  # a smaller batch wins
    ("llama-3-8b", "a100-40gb", 16, 2048, ()),                 # everything fits
])
def test_pruned_batch_search_matches_the_exhaustive_search(toy, monkeypatch, model, system, batch, prompt, overrides):
    import solver.kv as kv_module

    hw = apply_overrides(toy if system == "toy" else load_system(system), list(overrides))
    wl = KvWorkload(allow_long_context=True, model=load_model(model), batch=batch, prompt_len=prompt, gen_len=32)
    pruned = plan_kv(wl, hw, simulate=False)
    monkeypatch.setattr(kv_module, "_pruned", lambda *args, **kw: False)
    full = plan_kv(wl, hw, simulate=False)
    assert pruned.solver["solves"] < full.solver["solves"]
    assert pruned.predicted["tokens_per_s"] == pytest.approx(full.predicted["tokens_per_s"], rel=1e-12)
    assert pruned.predicted["batch"] == full.predicted["batch"]
    for name in BASELINES:
        assert pruned.baselines[name]["status"] == full.baselines[name]["status"], name
        if full.baselines[name]["status"] == "feasible":
            assert pruned.baselines[name]["predicted"]["tokens_per_s"] == pytest.approx(
                full.baselines[name]["predicted"]["tokens_per_s"], rel=1e-12), name


@pytest.mark.parametrize(("model", "system", "batch", "prompt", "overrides"), [
    ("llama-2-7b", "rtx4090", 8, 2048, ("link.h2d=8GB/s",)),  # the CPU mode alone came out 9 % slower
    ("llama-2-7b", "l4", 4, 1024, ()), ("llama-2-7b", "toy", 2, 256, ())])
def test_flexgen_baseline_is_never_worse_than_all_on_gpu(toy, model, system, batch, prompt, overrides):
    # All on the GPU is a FlexGen policy (100 % everywhere). The CPU-attention mode charges every layer
    # the CPU round trip even when no KV is offloaded, so the search also tries KV-on-GPU policies.
    hw = apply_overrides(toy if system == "toy" else load_system(system), list(overrides))
    wl = KvWorkload(allow_long_context=True, model=load_model(model), batch=batch, prompt_len=prompt, gen_len=128 if system != "toy" else 32)
    gpu_only = evaluate_policy("gpu-only", wl, hw).evaluated
    flexgen = evaluate_policy("flexgen", wl, hw).evaluated
    assert gpu_only is not None and flexgen is not None
    total = lambda ev: ev.cost.prefill_s + ev.cost.decode_s  # noqa: E731
    assert total(flexgen) <= total(gpu_only) * (1 + 1e-9)


def test_recompute_modes_are_left_out_only_where_recompute_cannot_pay(toy):
    from solver.kv import _useful_modes
    from solver.kv_formulation import all_modes

    mha = KvWorkload(allow_long_context=True, model=load_model("llama-2-7b"), batch=16, prompt_len=4096, gen_len=16)
    gqa = KvWorkload(allow_long_context=True, model=load_model("llama-3-8b"), batch=16, prompt_len=4096, gen_len=16)
    assert any(md.act for md in _useful_modes(mha, has_disk=False))
    assert not any(md.act for md in _useful_modes(gqa, has_disk=True))
    # The GQA model must offload KV here (weights 16 GB + KV 8.7 GB > 15 GiB), yet leaving the
    # recompute modes out changes nothing: they are dominated.
    every = solve_kv(gqa, toy, restriction=Restriction(modes=tuple(all_modes(False))), gap_rel=1e-7)
    useful = solve_kv(gqa, toy, restriction=Restriction(modes=_useful_modes(gqa, has_disk=False)), gap_rel=1e-7)
    assert _offloaded_kv_share(useful.policies) > 0.1
    assert useful.result.objective == pytest.approx(every.result.objective, rel=1e-6)
    assert useful.result.n_variables < every.result.n_variables
