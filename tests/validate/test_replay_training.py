"""The training replay on the CPU: the same code paths a GPU runs, for real, with the paced link.

Byte counts are derived by hand from the replayed units' parameter counts P (fp32 on the CPU: 4 B
per weight, gradient and master value, 8 B of Adam moments); orderings are asserted only where the
cost of the difference is large by construction (a whole extra forward, or every gradient and
weight crossing a 0.1 GB/s link).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from costmodel import load_model
from costmodel.training import (
    LayerTrainPolicy,
    TrainWorkload,
    activation_bytes,
    baseline_policies,
    evaluate_training,
)
from hwprofiles import apply_overrides, load_system
from solver.errors import PlanError
from solver.plan import Plan
from solver.training_plan import policy_record, workload_record
from validate import ReplayError
from validate.replay_training import (
    UNSCALE,
    FileLink,
    TrainReplayer,
    replay_plan,
    replay_table,
    replay_training,
    scale_workload,
)

PROFILE = Path(__file__).resolve().parents[2] / "validate" / "records" / "cpu-2core-2026-12-01-profile.yaml"
QUIET = {"progress": lambda m: None}
# The suites' CPU link (validate/suite_embeddings.py, CPU_LINK_BYTES_PER_S): copiers and prediction alike.
LINK = 0.1e9
CPU_STEP = {"grads": "host", "master": "host", "moments": "host", "step": "cpu"}


@pytest.fixture(scope="module")
def system():
    """The profile tierplan measured on the repo's 2-core CPU machine (predictions only need a profile;
    the orderings asserted below are of measured times)."""
    return load_system(PROFILE)


def _gpt(layers=2, hidden=128, heads=2, ffn=4, vocab=256):
    """A GPT-2 block (LayerNorm, learned positions, GELU, biases, tied head), narrowed."""
    return dataclasses.replace(load_model("gpt2"), n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=heads,
                               head_dim=hidden // heads, intermediate=ffn * hidden, vocab=vocab)


def _llama(layers=2):
    """A LLaMA-3 block (RMSNorm, rotary, GQA 4:2, SwiGLU, untied head), narrowed."""
    return dataclasses.replace(load_model("llama-3-8b"), n_layers=layers, hidden=128, n_heads=4, n_kv_heads=2,
                               head_dim=32, intermediate=384, vocab=256)


def _wl(model, *, seq_len=64, micro_batch=2, **kw):
    return TrainWorkload(model=model, seq_len=seq_len, micro_batch=micro_batch, precision="fp32", **kw)


def _replay(wl, system, pols, **kw):
    args = {"device": "cpu", "iterations": 2, "repeats": 1, "warmup": 1, "link_bytes_per_s": LINK, **QUIET, **kw}
    return replay_training(wl, system, list(pols), **args)


def _paced(system):
    gbs = f"{LINK / 1e9:g}GB/s"
    return apply_overrides(system, [f"link.h2d={gbs}", f"link.d2h={gbs}"])


# ------------------------------------------------------------------------------------ a replay
def test_replay_of_mixed_policies_gives_finite_phases_and_predicts_what_ran(system):
    pols = [LayerTrainPolicy(), LayerTrainPolicy(activations="recompute"),
            LayerTrainPolicy(activations="offload", offload_share=0.5), LayerTrainPolicy(**CPU_STEP)]
    wl = _wl(_gpt(layers=4))
    r = _replay(wl, system, pols)
    assert set(r["phases"]) == {"forward", "backward", "step"}
    for ph in r["phases"].values():
        assert math.isfinite(ph["predicted_s"]) and ph["predicted_s"] > 0
        assert math.isfinite(ph["measured_s"]) and ph["measured_s"] > 0
        assert ph["measured_min_s"] <= ph["measured_s"] <= ph["measured_max_s"]
        assert ph["error_pct"] == pytest.approx(100 * (ph["predicted_s"] - ph["measured_s"]) / ph["measured_s"])
    assert len(r["iterations"]) == 2
    # every layer replayed, nothing cut (the model is within the CPU budget): the prediction is the cost
    # model's for exactly this workload, with the link the copiers were paced to
    assert r["slice"]["layers"] == [0, 1, 2, 3] and r["slice"]["scaled"] == []
    cost = evaluate_training(wl, _paced(system), pols)
    assert r["predicted_s"] == pytest.approx(cost.iteration_s)
    assert r["phases"]["step"]["predicted_s"] == pytest.approx(cost.step_s)
    assert r["memory"]["measured_peak_gpu_bytes"] is None and r["memory"]["predicted_gpu_bytes"] > 0
    # the step ran where each policy says, in the backward's order (the head first)
    assert r["stepped"] == {"cpu": ["layer 3"], "gpu": ["head", "layer 2", "layer 1", "layer 0"]}
    assert r["link"]["h2d_bytes_per_s"] == LINK
    table = replay_table(r)
    assert all(word in table for word in ("forward", "backward", "step", "iteration", "slice"))


def test_a_bundled_model_is_scaled_and_the_scaled_slice_is_what_is_predicted(system):
    wl = TrainWorkload(model=load_model("gpt2"), seq_len=1024, micro_batch=4)  # 12 layers of 7.1M, fp16
    pols = baseline_policies("all-gpu", wl, system)
    r = _replay(wl, system, pols, layers=1, seq_len=64)
    cut = {c["field"]: (c["value"], c["of"]) for c in r["slice"]["scaled"]}
    assert cut["n_layers"] == (1, 12) and cut["seq_len"] == (64, 1024) and cut["vocab"] == (2048, 50257)
    assert cut["hidden"][1] == 768 and cut["hidden"][0] < 768
    run, _ = scale_workload(wl, 1, "cpu", seq_len=64)
    run = dataclasses.replace(run, precision="fp32")  # the CPU replays fp32 (and says so)
    assert r["workload"] == run.summary() | {"model": run.model.name}
    assert r["predicted_s"] == pytest.approx(evaluate_training(run, _paced(system), pols[:1]).iteration_s)
    assert r["predicted_full_model_s"] > r["predicted_s"]
    assert any("replayed and re-predicted in fp32" in w for w in r["warnings"])


def test_scale_workload_keeps_a_square_block_square_and_fits_the_budget():
    for name in ("gpt2", "llama-3-8b", "falcon-7b"):
        m = load_model(name)
        run, _ = scale_workload(TrainWorkload(model=m, seq_len=2048, micro_batch=2, allow_long_context=True), 2)
        s = run.model
        assert s.layer_params() <= 1 << 20 and s.n_heads % s.n_kv_heads == 0
        assert run.micro_batch * run.seq_len <= 512
        if m.hidden == m.q_dim:
            assert s.hidden == s.q_dim


# ------------------------------------------------------------------------------------ orderings
def test_full_recompute_is_measured_slower_in_backward_than_keep(system):
    # a layer of 0.79M parameters over 256 tokens: its forward (~0.4 GFLOP) is what recompute adds
    wl = _wl(_gpt(layers=2, hidden=256, heads=4), seq_len=128)
    keep = _replay(wl, system, baseline_policies("all-gpu", wl, system), iterations=1, repeats=3)
    rec = _replay(wl, system, baseline_policies("all-gpu+full-recompute", wl, system), iterations=1, repeats=3)
    assert rec["phases"]["backward"]["predicted_s"] > keep["phases"]["backward"]["predicted_s"]
    assert rec["phases"]["backward"]["measured_s"] > keep["phases"]["backward"]["measured_s"]


def test_zero_offload_is_measured_slower_than_all_gpu_and_moves_every_gradient_and_weight(system):
    m = _gpt(layers=2, hidden=256, heads=4)
    wl = _wl(m, seq_len=128)
    gpu = _replay(wl, system, baseline_policies("all-gpu", wl, system))
    off = _replay(wl, system, baseline_policies("zero-offload", wl, system))
    assert off["predicted_s"] > gpu["predicted_s"]
    assert off["measured_s"] > gpu["measured_s"]
    # P = 2 layers + the head (which follows the first layer's placement); fp32: every gradient goes
    # down (4 P bytes) and every updated weight comes up (4 P) once an iteration, over the paced link
    p = 2 * m.layer_params() + m.head_params()
    assert off["link"]["moved_per_iteration"]["d2h_bytes"] == 4 * p
    assert off["link"]["moved_per_iteration"]["h2d_bytes"] == 4 * p
    assert gpu["link"]["moved_per_iteration"] == {"h2d_bytes": 0, "d2h_bytes": 0, "disk_bytes": None}
    assert off["stepped"] == {"cpu": ["head", "layer 1", "layer 0"], "gpu": []}


def test_gradient_accumulation_copies_as_deepspeed_does(system):
    # DeepSpeed (stage_1_and_2.py, async_accumulate_grad_in_cpu_via_gpu): micro-step 0 copies the
    # gradients down; each later one fetches the host sum, adds, and (before the boundary) copies it
    # back; the boundary sends the fp32 gradient down. Then the step sends the weights up.
    m = _gpt()
    p = 2 * m.layer_params() + m.head_params()
    for accum, down, up in ((2, 2, 2), (3, 3, 3)):
        wl = _wl(m, grad_accum=accum)
        r = _replay(wl, system, baseline_policies("zero-offload", wl, system), iterations=1)
        assert r["link"]["moved_per_iteration"]["d2h_bytes"] == down * 4 * p
        assert r["link"]["moved_per_iteration"]["h2d_bytes"] == up * 4 * p


def test_accumulated_gradients_on_the_reduction_stream_sum_the_micro_steps():
    # The reduction chain (fetch the host sum, add, copy back; at the boundary copy the step's gradient
    # down) leaves on the host the sum of the micro-steps' gradients: the same batch twice gives exactly
    # twice one micro-step's gradient, for every unit, the head (whose buffer spans the backward) too.
    m = _gpt()
    pols = [LayerTrainPolicy(**CPU_STEP)] * m.n_layers
    grads = {}
    for accum in (1, 2):
        wl = _wl(m, grad_accum=accum)
        rep = TrainReplayer(wl, pols, LayerTrainPolicy(**CPU_STEP), torch.device("cpu"), link_bytes_per_s=(1e10, 1e10))
        try:
            for micro in (("last",) if accum == 1 else ("first", "last")):
                rep.micro = micro
                rep._micro_count += 1
                rep.micro_id = rep._micro_count
                rep._backward(rep._forward())
            grads[accum] = {u.name: u.g32_host.clone() for u in (rep.head, *rep.layers)}
        finally:
            rep.close()
    assert grads[1].keys() == grads[2].keys() and len(grads[1]) == m.n_layers + 1
    for name, g in grads[1].items():
        assert torch.count_nonzero(g) > 0
        torch.testing.assert_close(grads[2][name], 2 * g, rtol=1e-6, atol=0.0)


# ------------------------------------------------------------------------------------ mechanics
def test_the_cpu_adamw_step_updates_exactly_the_cpu_stepped_layers():
    m = _gpt(layers=3)
    wl = _wl(m)
    pols = [LayerTrainPolicy(**CPU_STEP), LayerTrainPolicy(), LayerTrainPolicy(**CPU_STEP)]
    rep = TrainReplayer(wl, pols, LayerTrainPolicy(), torch.device("cpu"), link_bytes_per_s=(1e10, 1e10))
    try:
        rep.iteration()  # the optimizers' state exists
        loss = rep._forward()
        rep._backward(loss)  # the CPU-stepped layers' fp32 gradients are on the host
        before = rep.weights()
        units = [rep.head, *reversed(rep.layers)]
        cpu = [u for u in units if u.cpu_step]
        assert [u.name for u in cpu] == ["layer 2", "layer 0"]
        ref = {}
        assert wl.unscales  # fp16: the step first divides the loss scale out of the gradient
        for u in cpu:  # torch.optim.AdamW on copies of the same master, unscaled gradient and moments
            p, n = u.m_host.clone(), u.numel
            p.grad = u.g32_host.clone() * UNSCALE
            opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=1e-2, foreach=True, fused=False)
            opt.state[p] = {"step": u.step_t.clone(), "exp_avg": u.mom_host[:n].clone(),
                            "exp_avg_sq": u.mom_host[n:].clone()}
            opt.step()
            ref[u.name] = p.detach()
        rep._cpu_chain(cpu)
        after = rep.weights()
    finally:
        rep.close()
    for name in ("head", "layer 1"):
        assert torch.equal(after[name], before[name])  # not touched by the host's optimizer
    for name, expected in ref.items():
        assert not torch.equal(after[name], before[name])
        assert torch.equal(after[name], expected)  # the device copy is the host's updated master


@pytest.mark.parametrize("model,kernels", [(_gpt, "eager"), (_llama, "eager"), (_llama, "fused")],
                         ids=["gpt", "llama", "llama-fused"])
def test_where_tensors_live_does_not_change_what_is_computed(model, kernels):
    # keep / recompute / selective / offload of activations and weights fetched from the host
    # (saved as references, fetched again in the backward) give bit-identical gradients
    wl = _wl(model(), kernels=kernels)
    variants = {
        "keep": LayerTrainPolicy(), "recompute": LayerTrainPolicy(activations="recompute"),
        "selective": LayerTrainPolicy(activations="selective"), "offload": LayerTrainPolicy(activations="offload"),
        "host weights": LayerTrainPolicy(params="host"),
        "host weights, recompute": LayerTrainPolicy(params="host", activations="recompute"),
        "gradients to the host": LayerTrainPolicy(**CPU_STEP),
    }
    grads = {}
    for name, pol in variants.items():
        rep = TrainReplayer(wl, [pol, pol], LayerTrainPolicy(), torch.device("cpu"), link_bytes_per_s=(1e10, 1e10))
        try:
            loss = rep._forward()
            rep._backward(loss)
            grads[name] = torch.cat([u.g_dev if u.grads_gpu else u.g32_host for u in (*rep.layers, rep.head)])
        finally:
            rep.close()
    for name, g in grads.items():
        assert torch.equal(g, grads["keep"]), name


def test_offloaded_activations_go_through_the_copier_and_come_back(system):
    m = _gpt()
    wl = _wl(m)
    r = _replay(wl, system, baseline_policies("all-gpu+activation-offload", wl, system))
    off = r["activation_offload"]
    assert off["layers"] == 2 and off["pack_calls"] >= off["offloaded_tensors"] > 0
    assert off["unpack_calls"] == off["offloaded_tensors"]  # every offloaded tensor is fetched back once
    assert off["offloaded_bytes"] == off["saved_bytes_offload_layers"]  # share 1: all of it
    # the only traffic of an all-GPU plan is the activations: down in the forward, up in the backward
    moved = r["link"]["moved_per_iteration"]
    assert moved["d2h_bytes"] == moved["h2d_bytes"] == off["offloaded_bytes"]
    # what a GPT-2 layer saves is the cost model's count (Korthikanti's, plus each LayerNorm's fp32 mean
    # and rstd per token), exactly
    assert off["saved_bytes_offload_layers"] == 2 * activation_bytes(wl)
    half = _replay(wl, system, baseline_policies("all-gpu+activation-offload:0.5", wl, system))["activation_offload"]
    assert 0.3 < half["offloaded_bytes"] / half["saved_bytes_offload_layers"] < 0.7


def _narrow(name, kv_heads):
    """A one-layer slice of a bundled model's structure (its norms, MLP, attention, positions)."""
    return dataclasses.replace(load_model(name), n_layers=1, hidden=128, n_heads=4, n_kv_heads=kv_heads,
                               head_dim=32, intermediate=384, vocab=256)


@pytest.mark.parametrize("kernels", ["eager", "fused"])
@pytest.mark.parametrize("fused_attention", [True, False])
@pytest.mark.parametrize("name,kv_heads", [("gpt2", 4), ("llama-3-8b", 2), ("qwen3-8b", 2), ("gemma-2-9b", 2),
                                           ("falcon-7b", 4), ("phi-3-mini-4k", 4), ("starcoder2-7b", 2)])
def test_a_layer_saves_exactly_what_the_cost_model_counts(name, kv_heads, fused_attention, kernels):
    # Every storage autograd keeps for one replayed layer's backward, as the pack hook sees it, against
    # costmodel.training.activation_bytes: norms (LayerNorm; Hugging Face's eager or a fused RMSNorm), q/k
    # norms, GQA, rotary, flash or eager attention, GELU or SwiGLU (eager or fused), parallel attention.
    # No dropout: on the CPU torch keeps dropout masks in the activation dtype (1 byte on CUDA) and flash
    # attention with dropout falls back to the math kernel.
    wl = _wl(_narrow(name, kv_heads), fused_attention=fused_attention, kernels=kernels)
    rep = TrainReplayer(wl, [LayerTrainPolicy(activations="offload")], LayerTrainPolicy(), torch.device("cpu"),
                        link_bytes_per_s=(1e10, 1e10))
    try:
        rep.phase = "forward"
        rep._forward()
        assert rep.stats["saved_bytes_offload_layers"] == activation_bytes(wl)
    finally:
        rep.close()


def test_fused_kernels_give_the_eager_gradients():
    # The fused RMSNorm and SwiGLU keep less for the backward; their gradients are the eager ones.
    grads = {}
    for kernels in ("eager", "fused"):
        wl = _wl(_llama(layers=1), kernels=kernels)
        rep = TrainReplayer(wl, [LayerTrainPolicy()], LayerTrainPolicy(), torch.device("cpu"),
                            link_bytes_per_s=(1e10, 1e10))
        try:
            loss = rep._forward()
            rep._backward(loss)
            grads[kernels] = torch.cat([u.g_dev for u in (*rep.layers, rep.head)])
        finally:
            rep.close()
    assert grads["eager"].abs().max() > 0
    torch.testing.assert_close(grads["fused"], grads["eager"], rtol=1e-4, atol=1e-6)


def test_the_pack_hook_copies_each_saved_storage_once_to_a_host_buffer():
    wl = _wl(_gpt(layers=1))
    rep = TrainReplayer(wl, [LayerTrainPolicy(activations="offload")], LayerTrainPolicy(), torch.device("cpu"),
                        link_bytes_per_s=(1e10, 1e10))
    jobs = []
    submit = rep.d2h.submit
    rep.d2h.submit = lambda pairs, **kw: jobs.append(pairs) or submit(pairs, **kw)
    try:
        rep.phase = "forward"
        loss = rep._forward()
        u = rep.layers[0]
        assert len(jobs) == len(u.act.entries) > 0
        sources = [p[0][1] for p in jobs]
        assert len({s.untyped_storage().data_ptr() for s in sources}) == len(sources)  # each storage once
        for e in u.act.entries:  # a host copy of its own, not a view of the device storage
            assert e.dev is None and e.host.untyped_storage().data_ptr() not in {
                s.untyped_storage().data_ptr() for s in sources}
        rep._backward(loss)
    finally:
        rep.close()
    assert rep.stats["unpack_calls"] == rep.stats["offloaded_tensors"] > 0


def test_states_on_disk_go_through_files_at_the_disks_pace(system):
    disk_system = apply_overrides(system, ["disk=nvme-gen4"])
    m = _gpt()
    wl = _wl(m, zero_stage=3)
    r = _replay(wl, disk_system, baseline_policies("zero-infinity-nvme", wl, disk_system), iterations=1)
    # per unit, fp32: the weights read in the forward and again in the backward (4 + 4 B/param); the
    # step reads master and moments (4 + 8) and writes them and the weights back (4 + 8 + 4): 36 B/param
    p = 2 * m.layer_params() + m.head_params()
    assert r["link"]["moved_per_iteration"]["disk_bytes"] == 36 * p
    assert r["disk"]["read_bytes_per_s"] == disk_system.disk.read_bytes_per_s
    assert r["stepped"]["cpu"] == ["head", "layer 1", "layer 0"]
    assert all(math.isfinite(ph["measured_s"]) for ph in r["phases"].values())


def test_the_file_link_paces_reads_and_writes_at_their_own_rates():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    disk = FileLink(1e9, 0.25e9, clock=lambda: now[0], sleep=sleep)
    a, b = torch.ones(1 << 18), torch.zeros(1 << 18)  # 1 MiB
    try:
        disk.wait_host(disk.write([(b, a)]))
        assert sum(slept) == pytest.approx(2**20 / 0.25e9)
        slept.clear()
        disk.wait_host(disk.read([(a, b)]))
        assert sum(slept) == pytest.approx(2**20 / 1e9)
    finally:
        disk.close()
    assert disk.bytes_moved == 2 * 2**20


def test_other_blocks_and_schedules_replay(system):
    # eager attention with dropout and selective recompute; SwiGLU/RoPE/GQA with serial copies and a
    # GPU step streaming its moments from the host beside a CPU step (Twin-Flow)
    wl = _wl(_gpt(), fused_attention=False, dropout=True)
    r = _replay(wl, system, baseline_policies("all-gpu+selective-recompute", wl, system), iterations=1)
    assert all(math.isfinite(ph["measured_s"]) and ph["measured_s"] > 0 for ph in r["phases"].values())
    wl = _wl(_llama(), overlap="none", grad_accum=2, zero_stage=3)
    pols = [LayerTrainPolicy(**CPU_STEP), LayerTrainPolicy(moments="host")]
    r = _replay(wl, system, pols, iterations=1)
    assert r["stepped"] == {"cpu": ["head", "layer 0"], "gpu": ["layer 1"]}
    assert all(math.isfinite(ph["measured_s"]) and ph["measured_s"] > 0 for ph in r["phases"].values())


# ------------------------------------------------------------------------------------ plans
def test_replay_plan_reads_a_training_plan(system):
    m = _gpt(layers=3)
    wl = _wl(m, zero_stage=2)
    pols = baseline_policies("zero-offload", wl, system)
    plan = Plan(kind="training", status="optimal", objective="throughput", workload=workload_record(wl),
                hardware=system.summary(), units=tuple(policy_record(p) for p in pols),
                extras={"head": policy_record(LayerTrainPolicy())})
    plan = Plan.from_dict(plan.to_dict())  # the training plan's checks pass
    r = replay_plan(plan, system, model=m, layers=2, device="cpu", iterations=1, repeats=1,
                    link_bytes_per_s=LINK, **QUIET)
    assert r["slice"]["layers"] == [0, 1] and r["slice"]["of_layers"] == 3
    assert r["slice"]["head"]["step"] == "gpu" and r["stepped"]["gpu"] == ["head"]
    kv = dataclasses.replace(plan, kind="kv")
    with pytest.raises(PlanError, match="not a training plan"):
        replay_plan(kv, system, model=m)


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("kwargs, match", [
    ({"iterations": 0}, r"iterations must be a positive integer, got 0"),
    ({"repeats": "2"}, r"repeats must be a positive integer, got '2'"),
    ({"warmup": -1}, r"warmup must be an integer >= 0, got -1"),
    ({"layers": 0}, r"layers must be a positive integer, got 0"),
    ({"seq_len": 2.5}, r"seq_len must be a positive integer, got 2.5"),
    ({"seed": True}, r"seed must be an integer >= 0, got True"),
    ({"device": "tpu"}, r"device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ({"link_bytes_per_s": -1.0}, r"link_bytes_per_s must be a positive finite number of bytes/s, got -1.0"),
    ({"link_bytes_per_s": float("inf")}, r"link_bytes_per_s must be a positive finite .* got inf"),
    ({"head": "gpu"}, r"head must be a LayerTrainPolicy or None, got str"),
    ({"progress": None}, r"progress must be callable, got None"),
])
def test_bad_arguments_raise_replay_error_naming_field_and_value(system, kwargs, match):
    wl = _wl(_gpt())
    args = {"device": "cpu", **QUIET, **kwargs}
    with pytest.raises(ReplayError, match=match):
        replay_training(wl, system, [LayerTrainPolicy()] * 2, **args)


@pytest.mark.parametrize("case, match", [
    ("short", r"policies must be one LayerTrainPolicy per layer of 'gpt2' \(2\), got 1"),
    ("type", r"policies\[1\] must be a LayerTrainPolicy, got dict"),
    ("workload", r"wl must be a TrainWorkload, got dict"),
    ("gpus", r"replay runs one GPU; the workload has gpus=2"),
    ("overlap", r"overlap must be 'deepspeed' or 'none' to be replayed .* got 'full'"),
    ("moe", r"replay of MoE layers is not supported yet .* n_experts=8"),
    ("disk", r"the replayed slice cannot be costed: .* has no disk"),
])
def test_workloads_and_policies_that_cannot_be_replayed_raise_replay_error(system, case, match):
    wl, pols = _wl(_gpt()), [LayerTrainPolicy()] * 2
    if case == "short":
        pols = pols[:1]
    elif case == "type":
        pols = [LayerTrainPolicy(), {"params": "gpu"}]
    elif case == "workload":
        wl = {"model": "gpt2"}
    elif case == "gpus":
        wl = dataclasses.replace(wl, gpus=2, interconnect_bytes_per_s=1e11)
    elif case == "overlap":
        wl = dataclasses.replace(wl, overlap="full")
    elif case == "moe":
        wl = _wl(dataclasses.replace(load_model("mixtral-8x7b"), n_layers=2))
    else:
        wl = _wl(_gpt(), zero_stage=3)
        pols = baseline_policies("zero-infinity-nvme", wl, None)
    with pytest.raises(ReplayError, match=match):
        replay_training(wl, system, pols, device="cpu", **QUIET)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_raises(system):
    with pytest.raises(ReplayError, match="no CUDA device"):
        replay_training(_wl(_gpt()), system, [LayerTrainPolicy()] * 2, device="cuda", **QUIET)


# ------------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["all-gpu", "zero-offload+full-recompute", "all-gpu+activation-offload",
                                  "zero-infinity-cpu"])
def test_replay_on_cuda_measures_phases_and_peak_memory(system, name):  # pragma: no cover - runs where a GPU is
    # the CUDA path: copy streams, pinned buffers, events; the CPU profile predicts (a warning says so),
    # so only the mechanics and the memory measurement are checked here
    m = _gpt(layers=4, hidden=512, heads=8)
    wl = TrainWorkload(model=m, seq_len=256, micro_batch=4, precision="bf16", pin_memory=True,
                       zero_stage=3 if name.startswith("zero-infinity") else 2)
    r = replay_training(wl, system, list(baseline_policies(name, wl, system)), layers=2, iterations=2, repeats=1,
                        device="cuda", **QUIET)
    assert r["memory"]["measured_peak_gpu_bytes"] > 0
    assert all(math.isfinite(ph["measured_s"]) and ph["measured_s"] > 0 for ph in r["phases"].values())
    assert r["dtype"] == "bfloat16"
    assert any("not on this machine" in w for w in r["warnings"])
