"""The training planner: its modes are the evaluator's legal policies, its group screen and MIP cost a plan
exactly as evaluate_training does, a hand-checked optimum on the toy system, and the properties a plan keeps
(never slower than a feasible baseline, more GPU memory never slower, capacities respected, infeasible
answered with an explanation, backends agree, the ZeRO-Offload tutorial case).

Toy system (tests/data/toy-system.yaml): GPU 16 GiB (1 GiB reserved), 1 TB/s HBM, 100 TFLOP/s fp16, flat
100 % efficiency and no launch overhead, so a memory-bound op takes bytes / 1 TB/s; link 10 GB/s, pageable 50 %.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel import WorkloadError, load_model
from costmodel.training import (
    ActAction,
    LayerTrainPolicy,
    StepDevice,
    Tier,
    TrainWorkload,
    baseline_policies,
    evaluate_training,
    unit_costs,
)
from costmodel.training_units import Phase, gpu_step_job, unit_phase_times
from hwprofiles import apply_overrides, load_system
from solver.backends import SolveStatus, available_backends
from solver.errors import PlanError
from solver.training import (
    BASELINES_TO_REPORT,
    TrainPlan,
    explain_infeasible,
    plan_training,
)
from solver.training_formulation import (
    GroupScreen,
    _all_policies,
    layer_modes,
    legal,
    mode_label,
    solve_training,
)

# The two-layer GPT-2-style model of the cost model's tests: per layer 49,984 parameters, the head (tied
# embeddings, 128 positions, final norm) 72,320.
from tests.costmodel.test_training import P_ALL, P_HEAD, P_LAYER, TINY, tiny_wl  # noqa: E402,F401


def _exact(plan: TrainPlan, wl: TrainWorkload, system):
    return evaluate_training(wl, system, plan.policies, head=plan.head)


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage,disk", list(itertools.product((0, 1, 2, 3), (False, True))))
def test_modes_are_exactly_the_policies_the_evaluator_accepts(toy, stage, disk):
    system = apply_overrides(toy, ["disk=nvme-gen4"]) if disk else toy
    wl = tiny_wl(zero_stage=stage)
    for pol in _all_policies(False, (0.5, 1.0)):
        try:
            evaluate_training(wl, system, (pol,) * TINY.n_layers, head=dataclasses.replace(pol, activations="keep"))
            accepted = True
        except WorkloadError:
            accepted = False
        assert legal(wl, system, pol) == accepted, mode_label(pol)


def test_mode_counts_by_hand(toy):
    disk = apply_overrides(toy, ["disk=nvme-gen4"])
    # ZeRO-2: weights on the GPU; a GPU step with master and moments each on GPU or host (4), a CPU step with
    # gradients, master and moments each on host or disk (8); activations keep, recompute, selective and
    # offload at 4 shares (7): 12 x 7 = 84. Without a disk: 4 + 1 = 5 placements, 35.
    assert len(layer_modes(tiny_wl(), disk, space="full", prune=False)) == 84
    assert len(layer_modes(tiny_wl(), toy, space="full", prune=False)) == 35
    # ZeRO-3: weights on GPU, host or disk too: 3 x 12 = 36 placements, 252 modes; the head keeps its activations.
    assert len(layer_modes(tiny_wl(zero_stage=3), disk, space="full", prune=False)) == 252
    assert len(layer_modes(tiny_wl(zero_stage=3), disk, head=True, space="full", prune=False)) == 36
    # The MIP's subset at ZeRO-2: GPU step (gpu, gpu) or (host, host), CPU step 3 mixes; 4 activation modes.
    assert len(layer_modes(tiny_wl(), disk, prune=False)) == 20
    # ZeRO-0: no CPU step at all.
    assert all(p.step is StepDevice.GPU for p in layer_modes(tiny_wl(zero_stage=0), disk, space="full"))


def test_dominated_modes_are_dropped(toy):
    # With a fused attention kernel selective recompute keeps as much as keep and costs the core's forward:
    # dominated by keep.
    wl = tiny_wl(fused_attention=True)
    acts = {p.activations for p in layer_modes(wl, toy, space="full")}
    assert ActAction.SELECTIVE not in acts and ActAction.KEEP in acts
    assert ActAction.SELECTIVE in {p.activations for p in layer_modes(tiny_wl(), toy, space="full")}


# ---------------------------------------------------------------------------------------------
# The group screen and the MIP cost a plan as the evaluator does
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overlap=st.sampled_from(["deepspeed", "none", "full"]), accum=st.sampled_from([1, 2, 4]),
       pin=st.booleans(), stage=st.sampled_from([0, 1, 2, 3]), gpus=st.sampled_from([1, 2]), seed=st.integers(0, 10**6),
       snapshot=st.sampled_from([0, 0, 1, 7]))
def test_screen_is_the_evaluator(toy, overlap, accum, pin, stage, gpus, seed, snapshot):
    system = apply_overrides(toy, ["disk=nvme-gen4"])
    wl = tiny_wl(model=dataclasses.replace(TINY, n_layers=6), overlap=overlap, grad_accum=accum, pin_memory=pin,
                 zero_stage=stage, gpus=gpus, interconnect_bytes_per_s=50e9 if gpus > 1 else None,
                 snapshot_every=snapshot)
    layer, head = layer_modes(wl, system, space="full", prune=False), layer_modes(wl, system, head=True, prune=False,
                                                                                   space="full")
    screen = GroupScreen(wl, system, layer, head)
    rng = np.random.default_rng(seed)
    counts = np.bincount(rng.integers(0, len(layer), size=6), minlength=len(layer))
    first, h = int(rng.choice(np.flatnonzero(counts))), int(rng.integers(len(head)))
    it, gpu, host, disk = (float(x[0]) for x in screen.cost(counts[None], np.array([first]), np.array([h])))
    pols, hp = screen.policies(counts, first, h)
    cost = evaluate_training(wl, system, pols, head=hp)
    # The screen sums the same terms in another order: 1e-9 relative covers the float rounding.
    assert gpu == pytest.approx(cost.memory.gpu_bytes, rel=1e-9)
    assert host == pytest.approx(cost.memory.host_bytes, rel=1e-9, abs=1e-3)
    assert disk == pytest.approx(cost.memory.disk_bytes, rel=1e-9, abs=1e-3)
    if overlap == "full":  # a lower bound: the four-stage flow shop and deferred copies are the evaluator's
        assert it <= cost.iteration_s * (1 + 1e-9)
    else:
        assert it == pytest.approx(cost.iteration_s, rel=1e-9)


@pytest.mark.parametrize("overlap,accum,stage", [("deepspeed", 1, 2), ("deepspeed", 3, 3), ("none", 2, 3),
                                                 ("full", 1, 2)])
def test_the_mip_objective_is_the_exact_cost_of_its_plan(overlap, accum, stage):
    system = load_system("a100-40gb", ["gpu.memory=12GiB"])
    wl = small_wl(stage, overlap=overlap, grad_accum=accum)
    plan = plan_training(wl, system, baselines=(), local_search=False)
    assert plan.selected == "mip" and plan.mip_cost is plan.cost and plan.cost.feasible
    assert plan.lp_estimate_s <= plan.cost.iteration_s * (1 + 1e-7)  # never above: every bound is valid
    if overlap == "full" or _gpu_step_kinds(wl, system, plan) > 1:
        return  # the step's four-stage flow shops are bounded, left exact to the screen and the local search
    # HiGHS's primal tolerance (1e-7 on rows of milliseconds) bounds the difference
    assert plan.lp_estimate_s == pytest.approx(plan.cost.iteration_s, rel=1e-7)


def _gpu_step_kinds(wl, system, plan) -> int:
    """Distinct GPU-step jobs of the plan's layers that are more than an update (stream, or send weights back)."""
    uc = unit_costs(wl, system)
    jobs = {gpu_step_job(unit_phase_times(uc, p)[Phase.STEP]) for p in plan.policies if p.step is StepDevice.GPU}
    return sum(1 for j in jobs if sum(x > 0 for x in j) > 1)


def test_the_mip_is_exact_for_one_kind_of_streamed_step():
    # ZeRO-2 with 12 GiB: the MIP streams the states of a GPU step (m:host o:host step:gpu) for some layers
    # and steps the rest on the CPU; one kind of streamed job, so the MIP's flow-shop bound is the flow shop.
    system = load_system("a100-40gb", ["gpu.memory=12GiB"])
    wl = small_wl(2)
    plan = plan_training(wl, system, baselines=(), local_search=False)
    assert _gpu_step_kinds(wl, system, plan) == 1
    assert plan.lp_estimate_s == pytest.approx(plan.cost.iteration_s, rel=1e-7)


def test_the_first_backward_job_is_the_lists_last_layer(toy):
    wl = tiny_wl(model=dataclasses.replace(TINY, n_layers=4))
    keep, rec = LayerTrainPolicy(), LayerTrainPolicy(activations="recompute")
    screen = GroupScreen(wl, toy, (keep, rec), (keep,))
    pols, head = screen.policies([2, 2], 1, 0)
    assert pols[-1] == rec and pols.count(rec) == 2 and head == keep


# ---------------------------------------------------------------------------------------------
# A hand-checked optimum
# ---------------------------------------------------------------------------------------------


def test_canonical_case_by_hand(toy):
    wl = tiny_wl()
    all_gpu = evaluate_training(wl, toy, baseline_policies("all-gpu", wl, toy))
    # All on the GPU: 2 + 2 + 4 + 4 + 8 = 20 B/param of states, 20 x 172,288 = 3,445,760, and the activations at the
    # start of the backward, 2 x 1,216,512 (Korthikanti s b h (34 + 5 a s / h) + the LayerNorms' fp32 mean and
    # rstd) + the head's 1,107,968 kept and 1,536,000 of dlogits = 5,076,992 (tests/costmodel/test_training.py):
    # 8,522,752 bytes.
    assert all_gpu.memory.gpu_bytes == 20 * P_ALL + 2 * 1_216_512 + 1_107_968 + 1_536_000 == 8_522_752
    # 100,000 bytes too few. Selective recompute of one layer drops its 5 a s^2 b = 5 x 4 x 128^2 x 2 = 655,360
    # bytes of softmax, dropout mask and dropout output, and recomputes the attention core: QK^T and PV read
    # 327,680 B each, the softmax 524,288 B, the dropout 655,360 B: 1,835,008 B at 1 TB/s = 1.835008 us. Full
    # recompute (the whole forward) costs more, and any state off the GPU crosses a 5 GB/s link.
    small = apply_overrides(toy, [f"gpu.memory={2**30 + 8_522_752 - 100_000}B"])
    plan = plan_training(wl, small)
    assert plan.status is SolveStatus.OPTIMAL and plan.selected == "mip"
    assert sorted(p.activations.value for p in plan.policies) == ["keep", "selective"]
    assert all((p.params, p.grads, p.master, p.moments, p.step) == (Tier.GPU,) * 4 + (StepDevice.GPU,)
               for p in (*plan.policies, plan.head))
    assert unit_costs(wl, toy).selective_gpu_s == pytest.approx(1.835008e-6, rel=1e-12)
    assert plan.iteration_s == pytest.approx(all_gpu.iteration_s + 1.835008e-6, rel=1e-12)
    assert plan.cost.memory.gpu_bytes == 8_522_752 - 655_360
    by = {b.name: b for b in plan.baselines}
    assert not by["all-gpu"].feasible and "gpu memory" in by["all-gpu"].reason
    assert by["selective-recompute"].speedup > 1 and by["zero-offload"].speedup > 1


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def small_wl(stage: int, **kw) -> TrainWorkload:
    """Falcon-RW-1B (24 layers, 1.3B parameters: 26 GB of states at 20 B/param), 2 x 1024 tokens."""
    return TrainWorkload(model=load_model("falcon-rw-1b"), seq_len=1024, micro_batch=2, zero_stage=stage, **kw)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gib=st.sampled_from([4, 6, 8, 12, 20, 40]), h2d=st.sampled_from([8, 16, 32, 64]), stage=st.sampled_from([2, 3]))
def test_never_slower_than_a_feasible_baseline_and_capacities_respected(gib, h2d, stage):
    system = load_system("a100-40gb", [f"gpu.memory={gib}GiB", f"link.h2d={h2d}GB/s", f"link.d2h={h2d}GB/s"])
    wl = small_wl(stage)
    plan = plan_training(wl, system, zero_stages=(2, 3))  # every baseline's stage is one the plan may choose
    feasible = [b for b in plan.baselines if b.feasible]
    if plan.cost is None:
        assert not feasible and plan.status is SolveStatus.INFEASIBLE
        return
    assert plan.workload == dataclasses.replace(wl, zero_stage=plan.workload.zero_stage)
    exact = _exact(plan, plan.workload, system)
    assert exact.feasible and exact.iteration_s == plan.iteration_s
    for tier, need in exact.memory.as_dict().items():
        assert need <= exact.capacity[tier]
    for b in feasible:
        assert plan.iteration_s <= b.iteration_s * (1 + 1e-12), b.name
        assert b.speedup == pytest.approx(plan.tokens_per_s / b.tokens_per_s, rel=1e-12)
    assert sum(n for _, n in plan.mode_counts) == wl.model.n_layers


@pytest.mark.parametrize("stage", [2, 3])
def test_more_gpu_memory_is_never_slower(stage):
    wl = small_wl(stage)
    times = []
    for gib in (4, 6, 8, 12, 20, 40):
        plan = plan_training(wl, load_system("a100-40gb", [f"gpu.memory={gib}GiB"]))
        times.append(plan.iteration_s if plan.cost is not None else float("inf"))
    # Each MIP is optimal to its relative gap of 1e-4; more memory only enlarges what it may choose.
    for small, big in itertools.pairwise(times):
        assert big <= small * (1 + 1e-4)
    assert times[-1] < times[0]


def test_infeasible_gpu_is_a_status_with_an_explanation():
    wl = TrainWorkload(model=load_model("llama-2-70b"), seq_len=4096, micro_batch=4, zero_stage=2)
    plan = plan_training(wl, load_system("rtx4090"))
    assert plan.status is SolveStatus.INFEASIBLE and plan.cost is None and plan.policies == () and plan.selected == ""
    # 69B 16-bit weights alone are 128 GiB of a 24 GB card; at ZeRO-2 they cannot leave it.
    assert plan.explanation.startswith("no placement fits the GPU") and "weights 128.48 GiB" in plan.explanation
    assert "zero_stage=3" in plan.explanation and "smaller micro-batch" in plan.explanation
    assert all(not b.feasible and b.reason for b in plan.baselines)


def test_infeasible_host_names_the_host_and_the_disk_fix():
    # A DGX-1 GPU's share of the host (55.6 GiB usable) and no disk: 6.7B params need 16 B/param off the GPU.
    wl = TrainWorkload(model=load_model("llama-2-7b"), seq_len=2048, micro_batch=1, zero_stage=3)
    plan = plan_training(wl, load_system("dgx1-v100-32gb"))
    assert plan.status is SolveStatus.INFEASIBLE
    assert "host memory (the node) short by" in plan.explanation and "--set disk=nvme-gen4" in plan.explanation
    assert plan.explanation == explain_infeasible(wl, load_system("dgx1-v100-32gb"))
    # ... and with the disk it asks for, it plans.
    with_disk = plan_training(wl, load_system("dgx1-v100-32gb", ["disk=nvme-gen4"]))
    assert with_disk.cost is not None and with_disk.cost.memory.disk_bytes > 0


def test_backends_agree():
    system = load_system("a100-40gb", ["gpu.memory=12GiB"])
    wl = small_wl(3)
    plans = {b: plan_training(wl, system, backend=b, baselines=(), local_search=False) for b in available_backends()}
    assert plans
    # The MIPs' objectives: at ZeRO-3 the plan mixes kinds of streamed GPU steps, whose flow shop the MIP
    # bounds, so two optimal solutions of the MIP may cost differently when evaluated exactly.
    times = [p.lp_estimate_s for p in plans.values()]
    assert all(p.status is SolveStatus.OPTIMAL for p in plans.values())
    assert max(times) <= min(times) * (1 + 1e-4)  # both optimal to the 1e-4 gap


def test_grad_accumulation_and_data_parallel_plans():
    system = load_system("a100-40gb", ["gpu.memory=12GiB"])
    wl = small_wl(2, grad_accum=4, gpus=2, interconnect_bytes_per_s=100e9)
    plan = plan_training(wl, system)
    assert plan.cost is not None and plan.cost.tokens_per_s == pytest.approx(4 * 2 * 2 * 1024 / plan.iteration_s)
    for b in plan.baselines:
        if b.feasible and b.zero_stage == plan.workload.zero_stage:
            assert plan.iteration_s <= b.iteration_s * (1 + 1e-12)


# The tutorial runs one GPU with the whole DGX-2 host (tests/costmodel/test_training.py): the bundled host is its
# 1/16 share; hwprofiles/data/hosts/dgx2-gpu-share.yaml: 1.5 TB DDR4, 2 x 6 x DDR4-2666 x 8 B = 255.9 GB/s,
# 2 x 24 cores x 2.7 GHz x 64 FLOP/cycle = 8.29 TFLOP/s.
WHOLE_DGX2_HOST = ["host.memory=1.5TB", "host.memory_bandwidth=255.9GB/s", "host.flops_fp32=8.29TFLOP/s"]


def test_zero_offload_tutorial_case_plans_at_least_as_fast_as_zero_offload():
    # DeepSpeed's ZeRO-Offload tutorial (https://www.deepspeed.ai/tutorials/zero-offload/): 10B GPT-2 (Megatron,
    # unfused attention, dropout), fp16, Adam, ZeRO-2 with cpu_offload and activation checkpointing, micro-batch 10.
    system = load_system("dgx2-v100-32gb", WHOLE_DGX2_HOST)
    wl = TrainWorkload(model=load_model("gpt2-10b"), seq_len=1024, micro_batch=10, precision="fp16", optimizer="adam",
                       zero_stage=2, fused_attention=False, dropout=True)
    plan = plan_training(wl, system)
    base = {b.name: b for b in plan.baselines}["zero-offload+full-recompute"]
    assert plan.cost is not None and base.feasible
    assert plan.iteration_s <= base.iteration_s * (1 + 1e-12) and base.speedup >= 1 - 1e-12


def test_overlap_full_plans_are_never_slower_than_baselines():
    system = load_system("a100-40gb", ["gpu.memory=12GiB"])
    wl = small_wl(2, overlap="full")
    plan = plan_training(wl, system)
    assert plan.cost is not None and plan.lp_estimate_s <= plan.mip_cost.iteration_s * (1 + 1e-9)
    for b in plan.baselines:
        if b.feasible and b.zero_stage == 2:
            assert plan.iteration_s <= b.iteration_s * (1 + 1e-12)


def test_baselines_run_at_their_own_stage_and_only_allowed_stages_are_chosen():
    # 8 GiB: ZeRO-Infinity (stage 3) fits, but a stage-2 plan must keep the 16-bit weights on the GPU.
    system = load_system("a100-40gb", ["gpu.memory=8GiB"])
    names = ("zero-infinity-cpu+full-recompute", "zero-offload+full-recompute", "all-gpu")
    plan = plan_training(small_wl(2), system, baselines=names)
    inf, off, allg = plan.baselines
    assert (inf.zero_stage, off.zero_stage, allg.zero_stage) == (3, 2, 2)
    assert inf.feasible and plan.workload.zero_stage == 2 and not plan.selected.startswith("baseline:zero-inf")
    assert off.feasible and plan.iteration_s <= off.iteration_s * (1 + 1e-12)
    both = plan_training(small_wl(2), system, baselines=names, zero_stages=(2, 3))
    assert both.iteration_s <= min(plan.iteration_s, inf.iteration_s) * (1 + 1e-12)
    assert "zero-offload+full-recompute" in BASELINES_TO_REPORT


def test_a_baseline_that_cannot_run_gives_its_reason():
    plan = plan_training(small_wl(3), load_system("dgx1-v100-32gb"), baselines=("zero-infinity-nvme",))
    (b,) = plan.baselines
    assert not b.feasible and "needs a disk" in b.reason


def test_plan_fields():
    wl = small_wl(3)
    plan = plan_training(wl, load_system("a100-40gb", ["gpu.memory=8GiB"]))
    # "+local" may follow: with two kinds of GPU-stepped job the MIP's step chain is a lower bound
    assert plan.selected in ("mip", "mip+local") or plan.selected.startswith("baseline:")
    assert len(plan.policies) == wl.model.n_layers and plan.head.activations is ActAction.KEEP
    assert plan.tokens_per_s == plan.cost.tokens_per_s and 0 < plan.mfu < 1
    assert plan.n_variables > 0 and plan.n_constraints > 0 and plan.backend in available_backends()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.selected = "x"


@pytest.mark.parametrize("kw,match", [
    ({"time_limit_s": 0}, "time_limit_s must be a positive number"),
    ({"time_limit_s": float("nan")}, "time_limit_s must be a positive number"),
    ({"baselines": "all-gpu"}, "baselines must be a sequence of baseline names"),
    ({"backend": "gurobi"}, "backend must be one of"),
    ({"zero_stages": (2, 4)}, "zero_stages must be a non-empty sequence"),
    ({"zero_stages": ()}, "zero_stages must be a non-empty sequence"),
])
def test_bad_requests(kw, match):
    with pytest.raises(PlanError, match=match):
        plan_training(small_wl(2), load_system("a100-40gb"), **kw)


def test_bad_workload_and_system_types():
    with pytest.raises(PlanError, match="workload must be a TrainWorkload"):
        plan_training("gpt2", load_system("a100-40gb"))
    with pytest.raises(PlanError, match="system must be a hwprofiles System"):
        plan_training(small_wl(2), "a100-40gb")


def test_a_time_limit_is_a_status_not_an_exception():
    system = load_system("a100-40gb", ["gpu.memory=12GiB"])
    plan = plan_training(small_wl(3), system, time_limit_s=1e-6)
    assert plan.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE, SolveStatus.TIME_LIMIT)
    if plan.cost is None:
        assert plan.status is SolveStatus.TIME_LIMIT and "time_limit_s" in plan.explanation
    else:
        assert plan.cost.feasible
    alone = plan_training(small_wl(3), system, time_limit_s=1e-6, baselines=())
    assert alone.cost is not None or alone.status is SolveStatus.TIME_LIMIT


def test_solve_reports_infeasible_as_a_status():
    wl = TrainWorkload(model=load_model("llama-2-70b"), seq_len=4096, micro_batch=4, zero_stage=2)
    system = load_system("rtx4090")
    sol = solve_training(GroupScreen(wl, system, layer_modes(wl, system), layer_modes(wl, system, head=True)))
    assert sol.result.status is SolveStatus.INFEASIBLE and not sol.found


def test_a_snapshot_costs_busy_time_and_host_memory_and_the_plan_makes_room(toy):
    # Snapshots every iteration need one more copy of the master weights and moments in host memory
    # and their copies' busy time: the plan is never faster than without, and it still fits.
    system = apply_overrides(toy, ["disk=nvme-gen4"])
    plain = plan_training(tiny_wl(), system)
    snap = plan_training(tiny_wl(snapshot_every=1), system)
    assert snap.cost.feasible and snap.iteration_s >= plain.iteration_s * (1 - 1e-9)
    assert dict(snap.cost.memory.host_breakdown)["snapshot"] == 12 * P_ALL
    for b in snap.baselines:
        if b.feasible:
            assert snap.iteration_s <= b.iteration_s * (1 + 1e-9), b.name
