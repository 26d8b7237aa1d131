"""export_deepspeed: a training plan as the nearest DeepSpeed ds_config, and what it cannot express."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.training import (
    ActAction,
    LayerTrainPolicy,
    StepDevice,
    TrainWorkload,
    baseline_policies,
    evaluate_training,
)
from costmodel.training_units import Tier
from costmodel.transformer import load_model
from hwprofiles import load_system
from solver.errors import PlanError
from solver.export_deepspeed import (
    ACT_CKPT_KEYS,
    AIO_DEFAULTS,
    AIO_KEYS,
    BF16_KEYS,
    FP16_KEYS,
    NVME_PATH_DEFAULT,
    OFFLOAD_DEVICES,
    OFFLOAD_OPTIMIZER_KEYS,
    OFFLOAD_PARAM_KEYS,
    OPTIMIZER_KEYS,
    OPTIMIZER_PARAM_KEYS,
    OPTIMIZER_TYPES,
    TOP_LEVEL_KEYS,
    ZERO_KEYS,
    DeepSpeedExport,
    ModelCode,
    Unexpressed,
    export_deepspeed,
    schema_violations,
)

SYSTEM = load_system("a100-40gb")
GPT2_10B = load_model("gpt2-10b")  # 50 layers
LLAMA_7B = load_model("llama-2-7b")  # 32 layers

G = LayerTrainPolicy()
C = LayerTrainPolicy(grads="host", master="host", moments="host", step="cpu")
N = LayerTrainPolicy(grads="host", master="disk", moments="disk", step="cpu")
S = LayerTrainPolicy(grads="gpu", master="host", moments="host", step="gpu")  # GPU step streaming host states

# The cited field sets, by nesting path (written out here, not imported, so a key added to the
# module's sets without a test change is caught by test_schema_sets_hold_the_cited_names).
SCHEMA = {
    "": TOP_LEVEL_KEYS, "optimizer": OPTIMIZER_KEYS, "optimizer.params": OPTIMIZER_PARAM_KEYS, "fp16": FP16_KEYS,
    "bf16": BF16_KEYS, "zero_optimization": ZERO_KEYS, "zero_optimization.offload_param": OFFLOAD_PARAM_KEYS,
    "zero_optimization.offload_optimizer": OFFLOAD_OPTIMIZER_KEYS, "activation_checkpointing": ACT_CKPT_KEYS,
    "aio": AIO_KEYS,
}

BASELINE_STAGES = [("all-gpu", 2), ("zero-offload", 2), ("zero-infinity-cpu", 3), ("zero-infinity-nvme", 3),
                   ("twin-flow:0.6", 3), ("twin-flow:0.25", 3), ("all-gpu+full-recompute", 2),
                   ("zero-offload+selective-recompute", 2), ("zero-infinity-cpu+activation-offload", 3),
                   ("twin-flow:0.5+activation-offload:0.5", 3), ("zero-infinity-nvme+full-recompute", 3)]


def _wl(model=GPT2_10B, **kw) -> TrainWorkload:
    base = {"model": model, "seq_len": 1024, "micro_batch": 2, "zero_stage": 2}
    base.update(kw)
    return TrainWorkload(**base)


def _walk(node, path=""):
    """(path, dict) for every mapping in a ds_config."""
    yield path, node
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{path}.{key}" if path else key)


def _assert_in_schema(cfg):
    for path, node in _walk(cfg):
        assert path in SCHEMA, f"{path} is a section the cited schema does not describe"
        assert set(node) <= SCHEMA[path], f"{path}: {sorted(set(node) - SCHEMA[path])} not in the cited fields"
    assert schema_violations(cfg) == []


def _runs_from_config(cfg, n_layers):
    """What a ds_config runs, per layer, re-derived from the config alone: (params tier, stepped on the CPU,
    states on NVMe) — DeepSpeed's whole-model offload plus Twin-Flow's first-ratio-share rule."""
    zero = cfg["zero_optimization"]
    params = {"cpu": Tier.HOST, "nvme": Tier.DISK}.get(zero.get("offload_param", {}).get("device"), Tier.GPU)
    oo = zero.get("offload_optimizer")
    if oo is None:
        cpu_layers, nvme = 0, False
    else:
        cpu_layers, nvme = round(oo.get("ratio", 1.0) * n_layers), oo["device"] == "nvme"
    return [(params, i < cpu_layers, nvme and i < cpu_layers) for i in range(n_layers)]


def _assert_consistent(ex: DeepSpeedExport, n_layers: int):
    """The nearest policies are what the config runs."""
    runs = _runs_from_config(ex.to_dict(), n_layers)
    pols = ex.nearest_policies()
    assert len(pols) == n_layers
    for (params, cpu, nvme), p in zip(runs, pols, strict=True):
        assert p.params is params
        assert (p.step is StepDevice.CPU) == cpu
        assert (p.master is Tier.DISK) == nvme and (p.moments is Tier.DISK) == nvme


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


def test_schema_sets_hold_the_cited_names():
    # A few names per set copied from the cited files, so a typo in a set fails here.
    assert {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16",
            "optimizer", "zero_optimization", "activation_checkpointing", "aio",
            "zero_allow_untested_optimizer"} <= TOP_LEVEL_KEYS
    assert {"stage", "offload_param", "offload_optimizer", "sub_group_size", "overlap_comm", "contiguous_gradients",
            "reduce_bucket_size", "stage3_max_live_parameters", "stage3_prefetch_bucket_size"} <= ZERO_KEYS
    assert OFFLOAD_PARAM_KEYS == {"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"}
    assert OFFLOAD_OPTIMIZER_KEYS == {"device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read",
                                      "pipeline_write", "fast_init", "ratio"}
    assert ACT_CKPT_KEYS == {"partition_activations", "cpu_checkpointing", "contiguous_memory_optimization",
                             "number_checkpoints", "synchronize_checkpoint_boundary", "profile"}
    assert set(AIO_DEFAULTS) <= AIO_KEYS and OFFLOAD_DEVICES == ("none", "cpu", "nvme")


@pytest.mark.parametrize("path,bad", [
    ("", "train_batch"), ("zero_optimization", "offload_optimiser"), ("zero_optimization.offload_param", "devices"),
    ("zero_optimization.offload_optimizer", "ratios"), ("activation_checkpointing", "cpu_checkpoint"),
    ("aio", "blocksize"), ("fp16", "enable"), ("bf16", "enable"), ("optimizer", "param"),
    ("optimizer.params", "adamw_mode"),
])
def test_schema_violations_catch_an_unknown_key_at_every_level(path, bad):
    ex = export_deepspeed(_wl(zero_stage=3, precision="fp16"), baseline_policies(
        "zero-infinity-nvme+full-recompute", _wl(zero_stage=3), None), model_code="deepspeed")
    cfg = ex.to_dict()
    cfg.setdefault("bf16", {"enabled": False})
    cfg["optimizer"]["params"] = {}
    node = cfg
    for part in filter(None, path.split(".")):
        node = node[part]
    node[bad] = 1
    assert schema_violations(cfg) == [f"{path}.{bad}" if path else bad]


def test_schema_violations_check_enums_and_shapes():
    assert schema_violations({"zero_optimization": {"stage": 4}}) == [
        "zero_optimization.stage (must be one of 0, 1, 2, 3, got 4)"]
    bad = schema_violations({"zero_optimization": {"stage": 3, "offload_param": {"device": "gpu"}}})
    assert bad == ["zero_optimization.offload_param.device (must be one of none, cpu, nvme, got 'gpu')"]
    assert schema_violations({"fp16": True}) == ["fp16 (must be a mapping, got bool)"]
    assert schema_violations({"train_batch_size": {"x": 1}}) == ["train_batch_size (must not be a mapping)"]
    assert schema_violations({"optimizer": {"type": "Lamb"}})[0].startswith("optimizer.type")
    with pytest.raises(PlanError, match="mapping"):
        schema_violations([("stage", 1)])


@pytest.mark.parametrize("model", [GPT2_10B, LLAMA_7B], ids=lambda m: m.name)
@pytest.mark.parametrize("name,stage", BASELINE_STAGES)
@pytest.mark.parametrize("code", list(ModelCode))
def test_every_emitted_key_is_in_the_cited_schema(model, name, stage, code):
    wl = _wl(model, zero_stage=stage, pin_memory=True)
    ex = export_deepspeed(wl, baseline_policies(name, wl, None), model_code=code)
    _assert_in_schema(ex.to_dict())
    _assert_consistent(ex, model.n_layers)
    json.dumps(ex.report())  # JSON-able


@pytest.mark.parametrize("precision,optimizer,moments", [
    ("fp16", "adamw", "fp32"), ("bf16", "adam", "fp32"), ("fp32", "sgd", "fp32"), ("bf16", "sgd-momentum", "bf16"),
])
def test_precision_and_optimizer_keys(precision, optimizer, moments):
    wl = _wl(precision=precision, optimizer=optimizer, moments_dtype=moments)
    cfg = export_deepspeed(wl, baseline_policies("zero-offload", wl, None)).to_dict()
    _assert_in_schema(cfg)
    assert ("fp16" in cfg) == (precision == "fp16") and ("bf16" in cfg) == (precision == "bf16")
    if precision == "fp16":
        assert cfg["fp16"] == {"enabled": True, "loss_scale": 0}  # 0: dynamic loss scaling
    assert cfg["optimizer"]["type"] in OPTIMIZER_TYPES
    expect = {"adamw": {"type": "AdamW"}, "adam": {"type": "Adam", "params": {"adam_w_mode": False}},
              "sgd": {"type": "SGD"}, "sgd-momentum": {"type": "SGD", "params": {"momentum": 0.9}}}[optimizer]
    assert cfg["optimizer"] == expect
    # torch.optim.SGD is not a ZeRO-tested optimizer: DeepSpeed asserts without the flag.
    assert cfg.get("zero_allow_untested_optimizer", False) == optimizer.startswith("sgd")


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pin", [False, True])
def test_zero_offload_exports_stage_2_with_cpu_optimizer_offload(pin):
    wl = _wl(zero_stage=2, pin_memory=pin, grad_accum=3)
    pols = baseline_policies("zero-offload", wl, None)
    ex = export_deepspeed(wl, pols)
    zero = ex.to_dict()["zero_optimization"]
    assert zero["stage"] == 2
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": pin}
    assert "offload_param" not in zero and "sub_group_size" not in zero
    assert zero["reduce_bucket_size"] == math.ceil(GPT2_10B.layer_params())
    assert ex.cannot_express == ()  # ZeRO-Offload is exactly expressible
    assert ex.nearest_policies() == pols and ex.nearest_head() == pols[0]
    assert ex.nearest_workload() == wl


def test_zero_infinity_nvme_exports_stage_3_nvme_for_both_with_aio():
    wl = _wl(zero_stage=3, pin_memory=True)
    ex = export_deepspeed(wl, baseline_policies("zero-infinity-nvme", wl, None), nvme_path="/mnt/nvme0")
    cfg = ex.to_dict()
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"]["device"] == "nvme" and zero["offload_optimizer"]["device"] == "nvme"
    assert zero["offload_param"]["nvme_path"] == zero["offload_optimizer"]["nvme_path"] == "/mnt/nvme0"
    assert zero["offload_optimizer"]["pipeline_read"] and zero["offload_optimizer"]["pipeline_write"]
    assert zero["offload_optimizer"]["buffer_count"] == 16  # max(4+4+4, 2*4+4+4) for both pipelines
    assert zero["offload_param"]["max_in_cpu"] == 0
    # gpt2-10b's largest tensor is the embedding, 50257 x 4096 = 205,852,672 elements; the swapper asserts
    # numel < buffer_size, so one more.
    m = GPT2_10B
    assert m.vocab * m.hidden == 205_852_672
    assert zero["offload_param"]["buffer_size"] == 205_852_673
    assert cfg["aio"] == dict(AIO_DEFAULTS)
    assert zero["sub_group_size"] == math.ceil(m.layer_params())  # one GPU: one layer per sub-group
    # DeepSpeed swaps the fp32 gradients to NVMe with the states; the baseline keeps them on the host.
    (lost,) = ex.cannot_express
    assert (lost.decision, lost.instead) == ("grads=host", "grads=disk")
    assert lost.layers == tuple(range(m.n_layers)) and lost.head
    assert all(p.grads is Tier.DISK for p in ex.nearest_policies())


def test_nvme_path_defaults_to_deepspeeds_example():
    wl = _wl(zero_stage=3)
    ex = export_deepspeed(wl, baseline_policies("zero-infinity-nvme", wl, None))
    assert ex.to_dict()["zero_optimization"]["offload_param"]["nvme_path"] == NVME_PATH_DEFAULT == "/local_nvme"


@pytest.mark.parametrize("model,k", [(GPT2_10B, 30), (LLAMA_7B, 19)], ids=lambda v: getattr(v, "name", v))
def test_twin_flow_ratio_is_the_share_of_cpu_stepped_layers(model, k):
    # twin-flow:0.6 puts round(0.6 L) layers on the CPU: 0.6 x 50 = 30 exactly; 0.6 x 32 = 19.2 -> 19, so the
    # exported ratio is 19/32 = 0.59375, within half a layer (0.5/32 = 0.015625) of 0.6.
    wl = _wl(model, zero_stage=3)
    pols = baseline_policies("twin-flow:0.6", wl, None)
    ex = export_deepspeed(wl, pols)
    zero = ex.to_dict()["zero_optimization"]
    assert zero["stage"] == 3
    oo = zero["offload_optimizer"]
    assert oo["device"] == "cpu"
    assert oo["ratio"] == k / model.n_layers
    assert abs(oo["ratio"] - 0.6) <= 0.5 / model.n_layers
    assert zero["sub_group_size"] == math.ceil(model.layer_params())
    assert ex.cannot_express == ()  # the baseline's CPU layers are the first k: exactly Twin-Flow
    assert ex.nearest_policies() == pols
    assert [p.step for p in ex.nearest_policies()].count(StepDevice.CPU) == k


@settings(max_examples=25, deadline=None)
@given(ratio=st.floats(min_value=0.0, max_value=1.0))
def test_twin_flow_ratio_within_half_a_layer(ratio):
    wl = _wl(LLAMA_7B, zero_stage=3)
    ex = export_deepspeed(wl, baseline_policies(f"twin-flow:{ratio!r}", wl, None))
    zero = ex.to_dict()["zero_optimization"]
    n = LLAMA_7B.n_layers
    k = round(ratio * n)
    if k == 0:
        assert "offload_optimizer" not in zero
    elif k == n:
        assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}  # no ratio: all offloaded
    else:
        assert zero["offload_optimizer"]["ratio"] == k / n
        assert abs(zero["offload_optimizer"]["ratio"] - ratio) <= 0.5 / n + 1e-12
    _assert_consistent(ex, n)
    assert ex.cannot_express == ()


def test_cpu_layers_not_a_prefix_run_as_the_first_layers():
    n = LLAMA_7B.n_layers
    pols = [G] * 10 + [C] * 8 + [G] * (n - 18)  # CPU-stepped layers 10-17
    ex = export_deepspeed(_wl(LLAMA_7B, zero_stage=3), pols, head=G)
    assert ex.to_dict()["zero_optimization"]["offload_optimizer"]["ratio"] == 8 / n
    steps = [p.step for p in ex.nearest_policies()]
    assert steps[:8] == [StepDevice.CPU] * 8 and steps[8:].count(StepDevice.CPU) == 0
    lost = {(u.decision, u.instead): u for u in ex.cannot_express}
    to_cpu = lost["grads=gpu, master=gpu, moments=gpu, step=gpu", "grads=host, master=host, moments=host, step=cpu"]
    to_gpu = lost["grads=host, master=host, moments=host, step=cpu", "grads=gpu, master=gpu, moments=gpu, step=gpu"]
    assert to_cpu.layers == tuple(range(8)) and to_cpu.head  # the embeddings are Twin-Flow's first sub-group
    assert to_gpu.layers == (10, 11, 12, 13, 14, 15, 16, 17) and not to_gpu.head
    assert "Twin-Flow" in to_cpu.why


def test_gpu_step_from_host_states_runs_on_the_cpu():
    n = GPT2_10B.n_layers
    ex = export_deepspeed(_wl(), [S] * n)
    assert ex.to_dict()["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    (lost,) = ex.cannot_express
    assert (lost.decision, lost.instead) == ("grads=gpu, step=gpu", "grads=host, step=cpu")
    assert lost.layers == tuple(range(n)) and lost.head
    assert "no GPU step from host-resident states" in lost.why


def test_only_the_head_off_the_gpu_keeps_the_optimizer_on_the_gpu():
    ex = export_deepspeed(_wl(), [G] * GPT2_10B.n_layers, head=C)
    assert "offload_optimizer" not in ex.to_dict()["zero_optimization"]
    (lost,) = ex.cannot_express
    assert lost.head and lost.layers == () and lost.instead == "grads=gpu, master=gpu, moments=gpu, step=gpu"


@pytest.mark.parametrize("nvme_layers,device,ratio", [(30, "nvme", None), (10, "cpu", 10 / 50)])
def test_nvme_for_all_only_when_it_holds_most_parameters(nvme_layers, device, ratio):
    # gpt2-10b: 50 layers of 201,379,840 parameters and a 210,055,168-parameter head that follows layer 0.
    # 30 NVMe layers + the head hold (30 x 201.4M + 210.1M) / 10,279M = 61% -> NVMe for the whole model;
    # 10 + the head hold 22% -> the NVMe layers step from host memory and Twin-Flow keeps the mix (10/50).
    n = GPT2_10B.n_layers
    pols = [N] * nvme_layers + [G] * (n - nvme_layers)
    ex = export_deepspeed(_wl(zero_stage=3), pols)
    oo = ex.to_dict()["zero_optimization"]["offload_optimizer"]
    assert oo["device"] == device and oo.get("ratio") == ratio
    _assert_consistent(ex, n)
    if device == "cpu":
        lost = {(u.decision, u.instead): u for u in ex.cannot_express}
        moved = lost["master=disk, moments=disk", "master=host, moments=host"]
        assert moved.layers == tuple(range(10)) and moved.head and "ratio works with device cpu only" in moved.why


def test_max_live_parameters_is_two_of_the_largest_unit():
    # llama-2-7b: head 262,148,096 (embeddings + untied LM head) > layer 202,383,360 -> 2 x 262,148,096.
    wl = _wl(LLAMA_7B, zero_stage=3)
    zero = export_deepspeed(wl, baseline_policies("zero-infinity-cpu", wl, None)).to_dict()["zero_optimization"]
    assert (LLAMA_7B.head_params(), math.ceil(LLAMA_7B.layer_params())) == (262_148_096, 202_383_360)
    assert zero["stage3_max_live_parameters"] == 524_296_192
    assert zero["stage3_prefetch_bucket_size"] == 202_383_360


def test_train_batch_size_is_micro_times_accum_times_gpus():
    wl = _wl(micro_batch=3, grad_accum=5, gpus=2, interconnect_bytes_per_s=150e9)
    cfg = export_deepspeed(wl, baseline_policies("zero-offload", wl, None)).to_dict()
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (
        3 * 5 * 2, 3, 5)


def test_sub_group_size_is_one_layer_per_gpu():
    wl = _wl(zero_stage=3, gpus=4, interconnect_bytes_per_s=150e9)
    zero = export_deepspeed(wl, baseline_policies("zero-infinity-cpu", wl, None)).to_dict()["zero_optimization"]
    assert zero["sub_group_size"] == math.ceil(GPT2_10B.layer_params() / 4)  # 201,379,840 / 4 = 50,344,960
    assert zero["sub_group_size"] == 50_344_960
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


def test_full_recompute_hf_is_gradient_checkpointing_in_model_code():
    wl = _wl()
    ex = export_deepspeed(wl, baseline_policies("all-gpu+full-recompute", wl, None))
    assert "activation_checkpointing" not in ex.to_dict()
    assert any("model.gradient_checkpointing_enable()" in s for s in ex.model_code_steps)
    assert ex.cannot_express == ()
    assert all(p.activations is ActAction.RECOMPUTE for p in ex.nearest_policies())


def test_full_recompute_deepspeed_is_activation_checkpointing():
    wl = _wl()
    ex = export_deepspeed(wl, baseline_policies("all-gpu+full-recompute", wl, None), model_code="deepspeed")
    assert ex.to_dict()["activation_checkpointing"]["cpu_checkpointing"] is False
    (step,) = ex.model_code_steps
    assert "deepspeed.checkpointing.checkpoint" in step and "every decoder layer" in step
    assert ex.cannot_express == ()


def test_per_layer_recompute_is_exact_with_deepspeed_checkpointing_only():
    n = GPT2_10B.n_layers
    pols = [replace(G, activations="recompute")] * 20 + [G] * (n - 20)
    ds = export_deepspeed(_wl(), pols, model_code="deepspeed")
    assert ds.cannot_express == () and ds.nearest_policies() == tuple(pols)
    assert "decoder layers 0-19 only" in ds.model_code_steps[0]
    hf = export_deepspeed(_wl(), pols)  # whole model: 30 keep vs 20 recompute -> keep
    (lost,) = hf.cannot_express
    assert (lost.decision, lost.instead, lost.layers) == ("activations=recompute", "activations=keep",
                                                          tuple(range(20)))


def test_activation_offload_deepspeed_is_cpu_checkpointing_with_recompute():
    wl = _wl()
    ex = export_deepspeed(wl, baseline_policies("all-gpu+activation-offload", wl, None), model_code="deepspeed")
    ac = ex.to_dict()["activation_checkpointing"]
    assert ac["cpu_checkpointing"] is True and ac["partition_activations"] is True
    assert all(p.activations is ActAction.RECOMPUTE for p in ex.nearest_policies())
    (lost,) = ex.cannot_express
    assert lost.decision == "activations=offload, offload_share=1" and lost.instead == "activations=recompute"
    assert "cpu_checkpointing" in lost.why and "save_on_cpu" in lost.why


def test_activation_offload_hf_is_save_on_cpu_with_the_whole_share():
    wl = _wl()
    ex = export_deepspeed(wl, baseline_policies("all-gpu+activation-offload:0.4", wl, None))
    assert any("torch.autograd.graph.save_on_cpu(pin_memory=False)" in s for s in ex.model_code_steps)
    (lost,) = ex.cannot_express
    assert (lost.decision, lost.instead) == ("activations=offload, offload_share=0.4",
                                             "activations=offload, offload_share=1")
    assert all(p.offload_share == 1.0 for p in ex.nearest_policies())


def test_selective_recompute_is_lost_and_points_at_megatron():
    wl = _wl()
    ex = export_deepspeed(wl, baseline_policies("all-gpu+selective-recompute", wl, None))
    (lost,) = ex.cannot_express
    assert (lost.decision, lost.instead) == ("activations=selective", "activations=recompute")
    assert "--recompute-granularity selective" in lost.why and lost.layers == tuple(range(GPT2_10B.n_layers))


# ---------------------------------------------------------------------------------------------
# A mixed per-layer plan
# ---------------------------------------------------------------------------------------------


def _mixed() -> list[LayerTrainPolicy]:
    n = LLAMA_7B.n_layers  # 32
    return ([replace(N, activations="recompute")] * 4 + [replace(C, activations="selective")] * 6
            + [replace(G, params="host")] * 2 + [S] * 2
            + [replace(G, activations="offload", offload_share=0.3)] * (n - 14))


def test_mixed_plan_lists_every_lost_decision_with_its_layers():
    wl = _wl(LLAMA_7B, zero_stage=3, precision="bf16", grad_accum=4)
    pols = _mixed()
    ex = export_deepspeed(wl, pols)
    cfg = ex.to_dict()
    _assert_in_schema(cfg)
    zero = cfg["zero_optimization"]
    # Off-GPU optimizer placements: layers 0-9 (NVMe or CPU) and 12-13 (GPU step from host states) = 12 of 32.
    # NVMe holds 4 layers (< half the parameters): they step from host memory, Twin-Flow ratio 12/32.
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False, "ratio": 12 / 32}
    assert "offload_param" not in zero  # 2 of 32 layers' weights on the host: the rest win
    lost = {(u.decision, u.instead): u for u in ex.cannot_express}
    assert lost["params=host", "params=gpu"].layers == (10, 11)
    assert lost["master=disk, moments=disk", "master=host, moments=host"].layers == (0, 1, 2, 3)
    assert lost["master=disk, moments=disk", "master=host, moments=host"].head  # the head followed layer 0
    assert lost["grads=gpu, master=gpu, moments=gpu, step=gpu",
                "grads=host, master=host, moments=host, step=cpu"].layers == (10, 11)
    s_entry = lost["master=host, moments=host", "master=gpu, moments=gpu"]
    assert s_entry.layers == (12, 13) and "no GPU step from host-resident states" in s_entry.why
    # HF: one activation setting; offload (18 layers) outnumbers recompute + selective (10) and keep (4).
    assert lost["activations=recompute", "activations=offload, offload_share=1"].layers == (0, 1, 2, 3)
    assert lost["activations=selective", "activations=offload, offload_share=1"].layers == tuple(range(4, 10))
    assert lost["activations=keep", "activations=offload, offload_share=1"].layers == (10, 11, 12, 13)
    assert lost["activations=offload, offload_share=0.3",
                "activations=offload, offload_share=1"].layers == tuple(range(14, 32))
    assert all(u.why and u.instead for u in ex.cannot_express)
    _assert_consistent(ex, 32)


def test_every_changed_unit_is_listed_and_no_other():
    wl = _wl(LLAMA_7B, zero_stage=3)
    pols = _mixed()
    head = C
    for code in ModelCode:
        ex = export_deepspeed(wl, pols, head=head, model_code=code)
        units = list(zip(pols, ex.nearest_policies())) + [(head, ex.nearest_head())]
        for i, (p, q) in enumerate(units):
            listed = [u for u in ex.cannot_express if (u.head if i == len(pols) else i in u.layers)]
            if p == q:
                assert not listed, (code, i)
            else:
                for field in ("params", "grads", "master", "moments", "step", "activations"):
                    if getattr(p, field) != getattr(q, field):
                        text = f"{field}={getattr(p, field).value}"
                        assert any(text in u.decision for u in listed), (code, i, field)


def test_with_a_system_the_export_is_the_fastest_fitting_and_no_slower_than_the_rule():
    wl = _wl(LLAMA_7B, seq_len=2048, micro_batch=2, zero_stage=3, precision="bf16", grad_accum=4)
    pols = _mixed()
    ruled = export_deepspeed(wl, pols)
    chosen = export_deepspeed(wl, pols, system=SYSTEM)
    cost = evaluate_training(chosen.nearest_workload(), SYSTEM, chosen.nearest_policies(), head=chosen.nearest_head())
    assert chosen.predicted_fits is True and cost.feasible
    assert chosen.predicted_iteration_s == cost.iteration_s
    ruled_cost = evaluate_training(ruled.nearest_workload(), SYSTEM, ruled.nearest_policies(),
                                   head=ruled.nearest_head())
    if ruled_cost.feasible:
        assert chosen.predicted_iteration_s <= ruled_cost.iteration_s
    assert chosen.plan_iteration_s == evaluate_training(wl, SYSTEM, pols).iteration_s
    assert chosen.report()["predicted_as_exported"]["fits"] is True


# ---------------------------------------------------------------------------------------------
# The nearest policies cost
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [GPT2_10B, LLAMA_7B], ids=lambda m: m.name)
@pytest.mark.parametrize("name,stage", BASELINE_STAGES)
def test_nearest_policies_are_valid_and_cost_on_a100(model, name, stage):
    wl = _wl(model, zero_stage=stage)
    ex = export_deepspeed(wl, baseline_policies(name, wl, SYSTEM), system=SYSTEM)
    pols = ex.nearest_policies()
    assert isinstance(pols, tuple) and all(isinstance(p, LayerTrainPolicy) for p in pols)
    cost = evaluate_training(ex.nearest_workload(), SYSTEM, pols, head=ex.nearest_head())
    assert math.isfinite(cost.iteration_s) and cost.iteration_s > 0
    assert cost.iteration_s == ex.predicted_iteration_s or not ex.predicted_fits


def test_report_holds_config_losses_notes_and_policies():
    wl = _wl(LLAMA_7B, zero_stage=3)
    ex = export_deepspeed(wl, _mixed(), system=SYSTEM)
    rep = json.loads(json.dumps(ex.report()))
    assert rep["ds_config"] == ex.to_dict() == json.loads(ex.to_json())
    assert rep == ex.to_dict_with_report()
    assert len(rep["nearest_policies"]) == 32
    assert [LayerTrainPolicy(**p) for p in rep["nearest_policies"]] == list(ex.nearest_policies())
    assert LayerTrainPolicy(**rep["nearest_head"]) == ex.nearest_head()
    assert rep["cannot_express"] == [u.to_dict() for u in ex.cannot_express]
    assert rep["notes"] and rep["nearest_workload"]["zero_stage"] == 3


def test_to_dict_is_a_copy_and_the_export_is_frozen():
    wl = _wl()
    ex = export_deepspeed(wl, baseline_policies("zero-offload", wl, None))
    cfg = ex.to_dict()
    cfg["zero_optimization"]["stage"] = 0
    assert ex.to_dict()["zero_optimization"]["stage"] == 2
    with pytest.raises(FrozenInstanceError):
        ex.config_json = "{}"


# ---------------------------------------------------------------------------------------------
# Workload-level decisions
# ---------------------------------------------------------------------------------------------


def test_workload_settings_deepspeed_cannot_run_are_listed():
    wl = _wl(zero_stage=2, overlap="full", moments_dtype="bf16", fp32_grad_copy=False, snapshot_every=5)
    pols = [replace(C, params="host")] * GPT2_10B.n_layers  # weights on the host need stage 3
    ex = export_deepspeed(wl, pols)
    lost = {u.decision: u for u in ex.cannot_express}
    assert lost["workload.snapshot_every=5"].instead == "workload.snapshot_every=0"
    assert ex.nearest_workload().snapshot_every == 0
    assert lost["workload.zero_stage=2"].instead == "workload.zero_stage=3"
    assert lost["workload.moments_dtype=bf16"].instead == "workload.moments_dtype=fp32"
    assert lost["workload.fp32_grad_copy=False"].instead == "workload.fp32_grad_copy=True"
    assert lost["workload.overlap=full"].instead == "workload.overlap=deepspeed"
    nwl = ex.nearest_workload()
    assert (nwl.zero_stage, nwl.moments_dtype, nwl.fp32_grad_copy, nwl.overlap.value) == (3, "fp32", True, "deepspeed")
    assert ex.to_dict()["zero_optimization"]["overlap_comm"] is True


def test_overlap_none_turns_overlap_comm_off():
    wl = _wl(overlap="none")
    assert export_deepspeed(wl, baseline_policies("zero-offload", wl, None)).to_dict()[
        "zero_optimization"]["overlap_comm"] is False


def test_cpu_step_at_stage_0_raises_the_stage_to_1():
    wl = _wl(zero_stage=0)
    ex = export_deepspeed(wl, [C] * GPT2_10B.n_layers)
    assert ex.to_dict()["zero_optimization"]["stage"] == 1
    assert ex.nearest_workload().zero_stage == 1
    assert [u.decision for u in ex.cannot_express] == ["workload.zero_stage=0"]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_policy_count_must_match_the_layers():
    with pytest.raises(PlanError, match=r"policies must have one LayerTrainPolicy per layer of model 'gpt2-10b' "
                                        r"\(50 layers\), got 49"):
        export_deepspeed(_wl(), [G] * 49)


def test_non_policy_entry_is_named():
    pols = [G] * GPT2_10B.n_layers
    pols[3] = {"params": "gpu"}
    with pytest.raises(PlanError, match=r"policies\[3\] must be a LayerTrainPolicy, got dict"):
        export_deepspeed(_wl(), pols)


@pytest.mark.parametrize("kwargs,match", [
    ({"wl": "gpt2"}, "wl must be a TrainWorkload, got str"),
    ({"policies": G}, "policies must be a list or tuple of LayerTrainPolicy"),
    ({"model_code": "megatron"}, "model_code must be one of hf, deepspeed, got 'megatron'"),
    ({"head": "gpu"}, "head must be a LayerTrainPolicy or None, got str"),
    ({"system": "a100-40gb"}, "system must be a System or None, got str"),
    ({"nvme_path": ""}, "nvme_path must be a directory path"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = {"wl": _wl(), "policies": [G] * GPT2_10B.n_layers}
    args.update(kwargs)
    wl, pols = args.pop("wl"), args.pop("policies")
    with pytest.raises(PlanError, match=match):
        export_deepspeed(wl, pols, **args)


def test_disk_on_a_system_without_one():
    diskless = replace(SYSTEM, disk=None)
    wl = _wl(zero_stage=3)
    with pytest.raises(PlanError, match=r"policies\[0\]\.params is 'disk' but system 'a100-40gb' has no disk"):
        export_deepspeed(wl, baseline_policies("zero-infinity-nvme", wl, None), system=diskless)


def test_export_object_validates_its_config():
    wl = _wl()
    ex = export_deepspeed(wl, baseline_policies("zero-offload", wl, None))
    with pytest.raises(PlanError, match="zero_optimization.offload_optimiser"):
        replace(ex, config_json=json.dumps({"zero_optimization": {"offload_optimiser": {}}}))
    with pytest.raises(PlanError, match="policies must have one LayerTrainPolicy per layer"):
        replace(ex, policies=ex.policies[:-1])
    with pytest.raises(PlanError, match="layers must be layer indices"):
        Unexpressed(decision="params=host", layers=(-1,), head=False, why="x", instead="params=gpu")


def test_deepspeed_itself_parses_the_exported_configs(check_rows):
    # Where DeepSpeed is installed (not in CI: it is not a dependency), its own DeepSpeedConfig -- the parser
    # deepspeed.initialize runs, which refuses unknown keys -- reads every exported config of
    # benchmarks/deepspeed_config_check.py back as the export meant it. A subprocess: the check starts a
    # one-process gloo group.
    pytest.importorskip("deepspeed")
    rows = check_rows("deepspeed_config_check.py")
    assert len(rows) >= 6
    for r in rows:
        assert r["error"] is None and r["agree"], r
    assert {r["deepspeed"]["offload_optimizer"] for r in rows} >= {"cpu", "nvme", None}
    assert any(0 < r["deepspeed"]["ratio"] < 1 for r in rows if r["deepspeed"]["offload_optimizer"])
