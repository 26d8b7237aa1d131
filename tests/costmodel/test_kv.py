"""The KV-inference cost model on the toy system, where every number can be derived by hand.

Toy system (tests/data/toy-system.yaml): GPU 16 GiB (1 GiB reserved), 1 TB/s, 100 TFLOP/s fp16;
host 128 GiB, 100 GB/s, 2 TFLOP/s fp32; link 10 GB/s each way, 0 latency, no bidirectional
penalty; no disk; every efficiency curve flat at 100 %; launch overhead 0. So every op time is
max(FLOP / peak, bytes / bandwidth) exactly.

llama-2-7b: hidden 4096, 32 layers, 32 heads x 128 (MHA), intermediate 11008, vocab 32000, fp16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from costmodel import (
    Fractions,
    KvAction,
    KvWorkload,
    LayerPolicy,
    Resource,
    TokenSplit,
    WorkloadError,
    capacity,
    evaluate,
    load_model,
    range_bounds,
    time_lower_bound_s,
    unit_costs,
    working_bytes,
)
from costmodel.kv import layer_step_times
from hwprofiles import apply_overrides, load_system

TOY = Path(__file__).resolve().parents[1] / "data" / "toy-system.yaml"
GIB = 2**30

# Hand-derived constants of llama-2-7b (see test_transformer.py for the parameter arithmetic).
LAYER_WEIGHT_BYTES = 202_383_360 * 2  # 404_766_720 B per decoder layer in fp16
HEAD_BYTES = 262_148_096 * 2  # embeddings + LM head + final norm: 524_296_192 B
KV_BYTES_PER_TOKEN_LAYER = 2 * 32 * 128 * 2  # 16_384 B per sequence, token and layer
ACT_BYTES_PER_TOKEN_LAYER = 4096 * 2  # 8_192 B: one layer input (hidden) per token


def _policies(n_layers: int, n_ranges: int = 4, **kw) -> tuple[LayerPolicy, ...]:
    splits = kw.pop("splits", (TokenSplit(),) * n_ranges)
    return (LayerPolicy(splits=splits, **kw),) * n_layers


# ---------------------------------------------------------------------------------------------
# Per-unit costs
# ---------------------------------------------------------------------------------------------


def test_unit_costs_byte_counts(toy, llama2):
    wl = KvWorkload(model=llama2, batch=4, prompt_len=32, gen_len=8)
    uc = unit_costs(wl, toy, context=36, gpu_attn_tokens=36, recompute_tokens=36, cpu_tokens=36)
    assert uc.weight_bytes == LAYER_WEIGHT_BYTES == 404_766_720
    assert uc.kv_bytes_per_token == 4 * KV_BYTES_PER_TOKEN_LAYER  # batch 4: 65_536 B
    assert uc.act_bytes_per_token == 4 * ACT_BYTES_PER_TOKEN_LAYER  # 32_768 B
    assert uc.q_bytes == 4 * 4096 * 2  # the queries of 4 sequences: 32_768 B
    assert uc.o_bytes == 4 * 4096 * 2 + 4 * 32 * 4  # partial outputs + fp32 log-sum-exp per head: 33_280 B
    assert uc.h2d_bytes_per_s == uc.d2h_bytes_per_s == 10e9
    assert uc.link_latency_s == 0.0
    assert uc.bidir_penalty == 0.0  # 1 / 100 % - 1
    assert uc.disk_read_bytes_per_s == float("inf")  # no disk: never the bottleneck


def test_dense_decode_time_by_hand(toy, llama2):
    # Batch 1: every op is memory-bound (a GEMV does 2 FLOP per 2 B of weight; ridge is 100 FLOP/B).
    # Weight bytes: (layer params - 2 norm vectors) * 2 = (202_383_360 - 8_192) * 2 = 404_750_336.
    # Activation bytes: norm1 2*4096*2 = 16_384; qkv (4096 + 12288)*2 = 32_768; rope 2*8192*2 = 32_768;
    # o_proj (4096 + 4096)*2 = 16_384; norm2 16_384; mlp_up (4096 + 22016)*2 = 52_224;
    # mlp_down (11008 + 4096)*2 = 30_208; sum 197_120.
    dense_bytes = 404_750_336 + 197_120  # 404_947_456
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    uc = unit_costs(wl, toy, context=36, gpu_attn_tokens=36, recompute_tokens=36, cpu_tokens=36)
    # rel 1e-12: a sum of a dozen float divisions.
    assert uc.dense_gpu_s == pytest.approx(dense_bytes / 1e12, rel=1e-12)


def test_gpu_attention_time_per_token_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    uc = unit_costs(wl, toy, context=1000, gpu_attn_tokens=1000, recompute_tokens=1, cpu_tokens=1)
    # Decode attention over 1000 tokens reads K and V (1000 * 16_384 B) plus the query and output
    # (2 * 4096 * 2 = 16_384 B): 16_400_384 B at 1 TB/s. FLOPs 4 * 1000 * 4096 = 16.4 MFLOP take
    # 1.6e-7 s at 100 TFLOP/s, far under the memory time, so per token:
    assert uc.attn_gpu_s_per_token == pytest.approx((1000 * 16_384 + 16_384) / 1000 / 1e12, rel=1e-12)
    # For long contexts it tends to KV bytes / bandwidth.
    uc_long = unit_costs(wl, toy, context=1e7, gpu_attn_tokens=1e7, recompute_tokens=1, cpu_tokens=1)
    assert uc_long.attn_gpu_s_per_token == pytest.approx(KV_BYTES_PER_TOKEN_LAYER / 1e12, rel=1e-6)


def test_cpu_attention_tangent_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    uc = unit_costs(wl, toy, context=1000, gpu_attn_tokens=1000, recompute_tokens=1000, cpu_tokens=1000)
    # CPU attention in fp32 over t tokens: bytes 2*4096*4*t + 2*4096*4 = 32_768 (t + 1) at 100 GB/s;
    # FLOPs 4*4096*t = 16_384 t at 2 TFLOP/s is 8.2e-9 t s, under the memory time 3.3e-7 t s.
    # Affine in t: slope 32_768 / 1e11 s per token, intercept 32_768 / 1e11 s (query + output).
    # rel 1e-6: the tangent is a 1 % finite difference of an affine function (exact up to rounding).
    assert uc.attn_cpu_s_per_token == pytest.approx(32_768 / 1e11, rel=1e-6)
    assert uc.attn_cpu_fixed_s == pytest.approx(32_768 / 1e11, rel=1e-6)


def test_recompute_tangent_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    uc = unit_costs(wl, toy, context=1000, gpu_attn_tokens=1000, recompute_tokens=1000, cpu_tokens=1000)
    # K and V projections of t tokens: 2 * t * 4096 * 8192 FLOP at 100 TFLOP/s = 6.7108864e-7 t s,
    # compute-bound (bytes (4096 + 8192) * 2 * t = 24_576 t take 2.5e-8 t s).
    # RoPE on K: bytes 2 * 4096 * 2 * t = 16_384 t at 1 TB/s = 1.6384e-8 t s (memory-bound).
    assert uc.recompute_gpu_s_per_token == pytest.approx(6.7108864e-7 + 1.6384e-8, rel=1e-6)
    # Linear through zero: no fixed part (within the finite-difference rounding).
    assert uc.recompute_gpu_fixed_s == pytest.approx(0.0, abs=1e-12)


def test_gqa_layer_input_is_wider_than_kv_only_for_gqa(toy, llama2):
    llama3 = load_model("llama-3-8b")
    for model, kv_wider in ((llama2, True), (llama3, False)):
        wl = KvWorkload(model=model, batch=2, prompt_len=32, gen_len=8)
        uc = unit_costs(wl, toy, context=36, gpu_attn_tokens=36, recompute_tokens=36, cpu_tokens=36)
        # activation per token: 2 * 4096 * 2 = 16_384 B for both (batch 2)
        assert uc.act_bytes_per_token == 2 * 4096 * 2
        # KV per token: llama-2-7b 2 * (2*32*128) * 2 = 32_768 B; llama-3-8b 2 * (2*8*128) * 2 = 8_192 B
        assert (uc.kv_bytes_per_token > uc.act_bytes_per_token) is kv_wider


# ---------------------------------------------------------------------------------------------
# Exact evaluation
# ---------------------------------------------------------------------------------------------


def test_gpu_only_times_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    cost = evaluate(wl, toy, _policies(32, n_ranges=8))  # one range per step: per-step exact
    dense = 404_947_456  # B per layer per step, from test_dense_decode_time_by_hand
    # LM head at batch 1: final norm 2*4096*2 = 16_384 B, GEMV 4096*32000*2 + (4096 + 32000)*2
    # = 262_216_192 B; 262_232_576 B at 1 TB/s.
    head = 262_232_576
    for j, step_s in enumerate(cost.step_times_s):
        c = 32 + 1 + j  # tokens attended at step j
        # attention reads 16_384 B per token + 16_384 B of query and output
        expected = (32 * (dense + 16_384 * (c + 1)) + head) / 1e12
        assert step_s == pytest.approx(expected, rel=1e-12)
    # decode: 8 steps, sum of (c + 1) over c = 33..40 is 300:
    # 8*32*404_947_456 + 32*16_384*300 + 8*262_232_576 = 105_921_695_744 B
    assert cost.decode_s == pytest.approx(105_921_695_744 / 1e12, rel=1e-12)
    assert cost.step_time_s == pytest.approx(cost.decode_s / 8, rel=1e-15)
    # prefill of 32 tokens per layer: weights 404_750_336 B + activations 6_307_840 B (32 rows:
    # norm1 524_288, qkv 1_048_576, rope 1_048_576, o 524_288, norm2 524_288, up 1_671_168,
    # down 966_656) + flash attention 32*(2*4096 + 2*4096)*2 = 1_048_576 B; all memory-bound
    # (32 FLOP per B of weight < ridge 100). Plus the head once: 32*412_106_752 + 262_232_576.
    assert cost.prefill_s == pytest.approx((32 * 412_106_752 + 262_232_576) / 1e12, rel=1e-12)
    # every layer is GPU-bound
    assert all(layer.binding is Resource.GPU for layer in cost.layers)
    # same total with 4 ranges: the per-token attention cost is affine, so ranges do not change the sum
    cost4 = evaluate(wl, toy, _policies(32, n_ranges=4))
    assert cost4.decode_s == pytest.approx(cost.decode_s, rel=1e-12)


def test_offloaded_weights_stream_at_link_speed(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    pols = _policies(32, weights=Fractions(gpu=0.0, host=1.0))
    cost = evaluate(wl, toy, pols)
    # One layer's weights over the link: 404_766_720 B / 10 GB/s = 0.040476672 s; no D2H traffic,
    # so no bidirectional penalty, and the GPU work (~0.4 ms) hides under the transfer.
    transfer_s = 404_766_720 / 10e9
    layer = cost.layers[0]
    decode = dict(layer.decode)
    assert decode[Resource.H2D] == pytest.approx(transfer_s, rel=1e-12)
    assert decode[Resource.D2H] == 0.0
    assert layer.binding is Resource.H2D
    assert layer.step_s == pytest.approx(transfer_s, rel=1e-12)
    assert dict(layer.prefill)[Resource.H2D] == pytest.approx(transfer_s, rel=1e-12)
    # decode: 8 steps of 32 streamed layers + the head on the GPU (262_232_576 B at 1 TB/s)
    assert cost.decode_s == pytest.approx(8 * (32 * transfer_s + 262_232_576 / 1e12), rel=1e-12)


def test_transferred_kv_and_its_write_back_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=2, prompt_len=1000, gen_len=1)
    pols = _policies(32, n_ranges=1, kv=Fractions(gpu=0.5, host=0.5))
    layer = evaluate(wl, toy, pols).layers[0]
    decode = dict(layer.decode)
    # The single step attends 1001 tokens; half of them live on the host and are transferred:
    # 0.5 * 1001 * 2 * 16_384 B = 16_400_384 B at 10 GB/s.
    assert decode[Resource.H2D] == pytest.approx(0.5 * 1001 * 2 * 16_384 / 10e9, rel=1e-12)
    # The host half of the new token's KV goes back: 0.5 * 2 * 16_384 B = 16_384 B.
    assert decode[Resource.D2H] == pytest.approx(0.5 * 2 * 16_384 / 10e9, rel=1e-12)
    # prefill writes the host half of the prompt's KV: 0.5 * 2 * 1000 * 16_384 B
    assert dict(layer.prefill)[Resource.D2H] == pytest.approx(0.5 * 2000 * 16_384 / 10e9, rel=1e-12)


def test_every_copy_pays_the_link_latency_by_hand(toy, llama2):
    # A 5 us link latency. Weights half on the host (streamed) and KV half on the host (transferred):
    # two H2D copies per step (weights, KV), one D2H (the new token's KV), over 4 decode steps in
    # 2 ranges, so each range's split goes through the evaluator's per-step arrays.
    hw = apply_overrides(toy, ["link.latency=5us"])
    wl = KvWorkload(model=llama2, batch=2, prompt_len=100, gen_len=4)
    pols = _policies(32, n_ranges=2, weights=Fractions(gpu=0.5, host=0.5), kv=Fractions(gpu=0.5, host=0.5))
    decode = dict(evaluate(wl, hw, pols).layers[0].decode)
    contexts = np.arange(101, 105)  # attended tokens per step
    h2d = 2 * 5e-6 + (0.5 * LAYER_WEIGHT_BYTES + 0.5 * contexts * 2 * KV_BYTES_PER_TOKEN_LAYER) / 10e9
    assert decode[Resource.H2D] == pytest.approx(h2d.mean(), rel=1e-12)
    assert decode[Resource.D2H] == pytest.approx(5e-6 + 0.5 * 2 * KV_BYTES_PER_TOKEN_LAYER / 10e9, rel=1e-12)


def test_cpu_attention_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=999, gen_len=1)
    pols = _policies(32, n_ranges=1, kv=Fractions(gpu=0.0, host=1.0), splits=(TokenSplit(transfer=0.0, cpu=1.0),))
    layer = evaluate(wl, toy, pols).layers[0]
    decode = dict(layer.decode)
    # 1000 tokens attended on the CPU in fp32: 32_768 * (1000 + 1) B at 100 GB/s = 3.2800768e-4 s
    assert decode[Resource.CPU] == pytest.approx(32_768 * 1001 / 1e11, rel=1e-6)
    # The chain: dense GPU work, queries down (8_192 B), CPU attention, outputs up (8_192 + 32*4 B).
    chain = 404_947_456 / 1e12 + 8_192 / 10e9 + 32_768 * 1001 / 1e11 + 8_320 / 10e9
    assert decode[Resource.CPU_CHAIN] == pytest.approx(chain, rel=1e-6)
    # nothing is attended on the GPU but the dense work remains
    assert decode[Resource.GPU] == pytest.approx(404_947_456 / 1e12, rel=1e-12)
    assert layer.binding is Resource.CPU_CHAIN


def test_pageable_weight_copies_occupy_the_host_thread_cpu_attention_runs_on(toy, llama2):
    # Weights on the host, not page-locked: the copy crosses at the pageable rate (50 % of 10 GB/s on
    # the toy link) and, as a copy from pageable memory returns only once the buffer is staged, it
    # holds the host thread that also runs CPU attention: the two add up on the CPU.
    wl_pin = KvWorkload(model=llama2, batch=1, prompt_len=999, gen_len=1)
    wl_page = KvWorkload(model=llama2, batch=1, prompt_len=999, gen_len=1, pinned_weights=False)
    cpu_att = _policies(32, n_ranges=1, weights=Fractions(gpu=0.0, host=1.0), kv=Fractions(gpu=0.0, host=1.0),
                        splits=(TokenSplit(transfer=0.0, cpu=1.0),))
    pinned = dict(evaluate(wl_pin, toy, cpu_att).layers[0].decode)
    pageable = dict(evaluate(wl_page, toy, cpu_att).layers[0].decode)
    staging = LAYER_WEIGHT_BYTES / (10e9 * toy.link.pageable_factor)
    assert pageable[Resource.H2D] - pinned[Resource.H2D] == pytest.approx(staging - LAYER_WEIGHT_BYTES / 10e9, rel=1e-9)
    assert pageable[Resource.CPU] - pinned[Resource.CPU] == pytest.approx(staging, rel=1e-9)
    # without CPU attention the host thread has nothing else to do: the copy costs the link only
    gpu_att = _policies(32, n_ranges=1, weights=Fractions(gpu=0.0, host=1.0))
    assert dict(evaluate(wl_page, toy, gpu_att).layers[0].decode)[Resource.CPU] == 0.0


def test_cpu_attention_that_repeats_kv_reads_the_copies(toy):
    # llama-3-8b (32 query heads, 8 KV heads): repeat_kv writes K and V at every query head in fp32 and
    # the matmuls read the copies: 2 x 4 x kept x 4 B more per position than attending the cache.
    m = load_model("llama-3-8b")
    plain = KvWorkload(model=m, batch=1, prompt_len=999, gen_len=1)
    rep = KvWorkload(model=m, batch=1, prompt_len=999, gen_len=1, cpu_attention_repeat_kv=True)
    pols = _policies(32, n_ranges=1, kv=Fractions(gpu=0.0, host=1.0), splits=(TokenSplit(transfer=0.0, cpu=1.0),))
    cpu0 = dict(evaluate(plain, toy, pols).layers[0].decode)[Resource.CPU]
    cpu1 = dict(evaluate(rep, toy, pols).layers[0].decode)[Resource.CPU]
    kept = m.kv_elements_per_token()  # 2 x 8 x 128 = 2048 elements per token
    assert cpu1 - cpu0 == pytest.approx(1000 * 2 * 4 * kept * 4 / 100e9, rel=1e-3)  # toy host: 100 GB/s, flat
    # an MHA model repeats nothing (Hugging Face's repeat_kv returns the cache itself)
    mha = load_model("llama-2-7b")
    assert evaluate(KvWorkload(model=mha, batch=1, prompt_len=999, gen_len=1, cpu_attention_repeat_kv=True), toy,
                    pols).decode_s == evaluate(KvWorkload(model=mha, batch=1, prompt_len=999, gen_len=1), toy,
                                                  pols).decode_s


def test_memory_accounting_gpu_only_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    cost = evaluate(wl, toy, _policies(32))
    gpu = dict(cost.memory.gpu_breakdown)
    assert gpu["weights"] == 32 * LAYER_WEIGHT_BYTES  # 12_952_535_040
    assert gpu["kv"] == 32 * 1 * 40 * KV_BYTES_PER_TOKEN_LAYER  # 40 tokens: 20_971_520
    assert gpu["head"] == HEAD_BYTES
    assert gpu["weight_buffers"] == 0 and gpu["kv_buffers"] == 0 and gpu["prefill_kv_staging"] == 0
    # Prefill's layer inputs on the GPU: 1 x 32 x 4096 x 2 = 262_144
    assert gpu["prefill_hidden"] == 262_144
    # Per token row, the MLP sub-layer is the peak: (2 x 4096 + 3 x 11008) x 2 = 82_432 B (attention:
    # (2 x 4096 + 2 x 4096 + 2 x 4096) x 2 = 49_152 B). One chunk = the 32 prompt tokens: 2_637_824,
    # plus fp32 logits 32000 x 4 = 128_000.
    assert gpu["prefill_working"] == 32 * 82_432 + 128_000 == 2_765_824
    # Decode: input and output 2 x 4096 x 2, one row 82_432, the batch's layer inputs 4096 x 2, logits.
    assert gpu["decode_working"] == 16_384 + 82_432 + 8_192 + 128_000 == 235_008
    resident = gpu["weights"] + gpu["kv"] + gpu["head"]
    assert cost.memory.gpu_prefill_bytes == resident + 262_144 + 2_765_824
    assert cost.memory.gpu_decode_bytes == resident + 235_008
    assert cost.memory.gpu_bytes == cost.memory.gpu_prefill_bytes and cost.memory.peak_phase == "prefill"
    # The floor any placement needs: prefill with its layer inputs on the host (two chunk-sized double
    # buffers, 4 x 32 x 4096 x 2 = 1_048_576) and its working set.
    assert working_bytes(wl) == 2_765_824 + 1_048_576
    assert cost.memory.host_bytes == 0 and cost.memory.disk_bytes == 0
    assert cost.capacity == capacity(toy) == {"gpu_bytes": 15 * GIB, "host_bytes": 128 * GIB, "disk_bytes": 0.0}
    assert cost.feasible and cost.shortfalls() == {}


def test_memory_accounting_offloaded_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    pols = _policies(32, weights=Fractions(gpu=0.0, host=1.0), kv=Fractions(gpu=0.0, host=1.0),
                     activations_on_host=True, splits=(TokenSplit(transfer=0.5, recompute=0.5),) * 4)
    cost = evaluate(wl, toy, pols, head_on_gpu=False)
    gpu, host = dict(cost.memory.gpu_breakdown), dict(cost.memory.host_breakdown)
    kv_layer = 1 * 40 * KV_BYTES_PER_TOKEN_LAYER  # 655_360
    act_layer = 1 * 40 * ACT_BYTES_PER_TOKEN_LAYER  # 327_680
    assert gpu["weights"] == 0 and gpu["kv"] == 0 and gpu["head"] == 0
    assert gpu["weight_buffers"] == 2 * LAYER_WEIGHT_BYTES  # whole layers, double buffered: 809_533_440
    # Decode KV buffers: 2 * (0.5 * kv_layer + 0.5 * (kv_layer + act_layer)) = 1_638_400
    assert gpu["kv_buffers"] == pytest.approx(2 * (0.5 * kv_layer + 0.5 * (kv_layer + act_layer)), rel=1e-15)
    # Prefill KV staging: the prompt's KV (32 tokens) plus one chunk (32 tokens) x 16_384 B
    assert gpu["prefill_kv_staging"] == 64 * KV_BYTES_PER_TOKEN_LAYER == 1_048_576
    assert host["weights"] == 32 * LAYER_WEIGHT_BYTES
    assert host["kv"] == 32 * kv_layer
    assert host["activations"] == 32 * act_layer
    assert host["head"] == HEAD_BYTES
    assert cost.memory.host_bytes == pytest.approx(sum(host.values()), rel=1e-15)


def test_memory_of_gpu_batches_and_flexgen_style_streaming_by_hand(toy, llama2):
    # Batch 8 as 4 GPU batches of 2, each GPU batch's 32-token prompt prefilled at once (chunk 64
    # tokens), attention and MLP weights streamed separately, an unfused attention kernel, half the
    # weights on the host, all the KV on the host attended on the CPU, layer inputs on the host.
    wl = KvWorkload(model=llama2, batch=8, gpu_batch=2, prompt_len=32, gen_len=8, prefill_chunk_tokens=0,
                    stream_granularity="sublayer", fused_attention=False)
    assert (wl.micro_batch, wl.gpu_batches, wl.chunk_tokens) == (2, 4, 64)
    pols = _policies(32, weights=Fractions(gpu=0.5, host=0.5), kv=Fractions(gpu=0.0, host=1.0),
                     splits=(TokenSplit(transfer=0.0, cpu=1.0),) * 4)
    cost = evaluate(wl, toy, pols, hidden_on_gpu=0.0)
    gpu, host = dict(cost.memory.gpu_breakdown), dict(cost.memory.host_breakdown)
    assert gpu["weights"] == 16 * LAYER_WEIGHT_BYTES
    # Sub-layer streaming: the attention piece in use while the MLP piece arrives: one layer's share.
    assert gpu["weight_buffers"] == 0.5 * LAYER_WEIGHT_BYTES
    # One GPU batch's prompt KV (2 x 32) plus one chunk (64) x 16_384 B
    assert gpu["prefill_kv_staging"] == 128 * KV_BYTES_PER_TOKEN_LAYER == 2_097_152
    # Layer inputs on the host (8 x 32 x 4096 x 2); on the GPU, in and out double buffered: 4 x 64 x 4096 x 2
    assert host["hidden"] == 2_097_152 and gpu["prefill_hidden"] == 2_097_152
    # Prefill working: attention 64 x 49_152 + scores and softmax 2 x 64 x 32 heads x 32 x 2 = 3_407_872;
    # MLP 64 x 82_432 = 5_275_648 is the peak; logits of one GPU batch 2 x 32000 x 4.
    assert gpu["prefill_working"] == 5_275_648 + 256_000
    # CPU attention needs no KV buffer; decode working: 2 x 2 x 4096 x 2 + MLP 2 x 82_432 +
    # 8 x 4096 x 2 (every GPU batch's layer input) + 2 x 32000 x 4
    assert gpu["kv_buffers"] == 0
    assert gpu["decode_working"] == 32_768 + 164_864 + 65_536 + 256_000
    # Time: the dense work runs once per GPU batch at batch 2; the weights cross once per layer.
    one = KvWorkload(model=llama2, batch=2, prompt_len=32, gen_len=8)
    assert unit_costs(wl, toy, context=40, gpu_attn_tokens=40, recompute_tokens=1, cpu_tokens=40).dense_gpu_s == \
        pytest.approx(4 * unit_costs(one, toy, context=40, gpu_attn_tokens=40, recompute_tokens=1,
                                     cpu_tokens=40).dense_gpu_s, rel=1e-12)


def test_flexgen_places_weights_tensor_by_tensor():
    # FlexGen puts a tensor on the tier its size midpoint falls in (disk, CPU, GPU stacked): at
    # wg=20, wc=80 the OPT attention's out_proj (midpoint 87.5 %) and the small tensors after it
    # stay on the GPU, the MLP's fc2 (midpoint 75 %) does not. GPU per layer: h^2 + 6h of 12h^2 + 13h.
    from solver.kv import flexgen_policies

    opt = load_model("opt-30b")
    h = opt.hidden
    wl = KvWorkload(model=opt, batch=1, prompt_len=8, gen_len=2)
    pol = flexgen_policies(wl, (0.2, 0.8, 0.0, 1.0, 0.0, 1.0), 1)[0]
    assert 12 * h * h + 13 * h == opt.layer_params()
    assert pol.weights.gpu == pytest.approx((h * h + 6 * h) / (12 * h * h + 13 * h), rel=1e-12)
    assert pol.weights.host == pytest.approx(1 - pol.weights.gpu, rel=1e-12)


def test_shortfall_names_the_tier_and_bytes(toy, llama2):
    # batch 64 x 4104 tokens of KV: 32 * 64 * 4104 * 16_384 B = 137.7 GB cannot sit on a 15 GiB GPU.
    wl = KvWorkload(allow_long_context=True, model=llama2, batch=64, prompt_len=4096, gen_len=8)
    cost = evaluate(wl, toy, _policies(32))
    short = cost.shortfalls()
    assert set(short) == {"gpu_bytes"}
    assert short["gpu_bytes"] == pytest.approx(cost.memory.gpu_bytes - 15 * GIB, rel=1e-12)
    assert short["gpu_bytes"] > 32 * 64 * 4104 * 16_384 - 15 * GIB
    assert not cost.feasible


@pytest.mark.parametrize("n_ranges", [1, 3])
def test_step_times_grow_with_context(toy, llama2, n_ranges):
    wl = KvWorkload(model=llama2, batch=8, prompt_len=256, gen_len=24)
    cost = evaluate(wl, toy, _policies(32, n_ranges=n_ranges))
    assert len(cost.step_times_s) == 24
    assert np.all(np.diff(cost.step_times_s) >= 0)
    assert cost.decode_s == pytest.approx(float(cost.step_times_s.sum()), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["batch", "prompt_len", "gen_len"])
@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_workload_fields_must_be_positive_integers(llama2, field, bad):
    kw = {"batch": 1, "prompt_len": 8, "gen_len": 4, field: bad}
    with pytest.raises(WorkloadError, match=f"{field} must be a positive integer"):
        KvWorkload(allow_long_context=True, model=llama2, **kw)


def test_workload_contexts_and_with_batch(llama2):
    wl = KvWorkload(model=llama2, batch=3, prompt_len=10, gen_len=3)
    assert list(wl.contexts()) == [11, 12, 13]  # step j attends prompt + j + 1 tokens
    assert wl.max_context == 13
    wl2 = wl.with_batch(7)
    assert wl2.batch == 7 and wl2.prompt_len == 10 and wl.batch == 3


@settings(max_examples=25, deadline=None)
@given(gen_len=st.integers(1, 200), n_ranges=st.integers(1, 12))
def test_range_bounds_cover_every_step_once(gen_len, n_ranges):
    bounds = range_bounds(gen_len, n_ranges)
    assert len(bounds) == min(n_ranges, gen_len)
    assert bounds[0][0] == 0 and bounds[-1][1] == gen_len
    assert all(a < b for a, b in bounds)
    assert all(b == a2 for (_, b), (a2, _) in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1  # near-equal


def test_evaluate_rejects_malformed_policies(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=8, gen_len=4)
    with pytest.raises(WorkloadError, match=r"one entry per layer \(32\), got 31"):
        evaluate(wl, toy, _policies(31))
    mixed = _policies(31) + (LayerPolicy(splits=(TokenSplit(),) * 2),)
    with pytest.raises(WorkloadError, match="same number of context ranges"):
        evaluate(wl, toy, mixed)
    with pytest.raises(WorkloadError, match="has no disk"):
        evaluate(wl, toy, _policies(32, kv=Fractions(gpu=0.5, disk=0.5)))


def test_fractions_and_splits_must_sum_to_one():
    with pytest.raises(WorkloadError, match="sum to 1"):
        Fractions(gpu=0.5, host=0.4)
    with pytest.raises(WorkloadError, match="non-negative"):
        Fractions(gpu=1.5, host=-0.5)
    with pytest.raises(WorkloadError, match="sum to 1"):
        TokenSplit(transfer=0.5, cpu=0.6)
    # LP solutions are exact only to 1e-6: such rounding is accepted
    assert Fractions(gpu=0.5, host=0.5 + 5e-7).offloaded == pytest.approx(0.5, abs=1e-6)


def test_recompute_needs_stored_activations():
    with pytest.raises(WorkloadError, match="activations_on_host"):
        LayerPolicy(kv=Fractions(gpu=0.0, host=1.0), splits=(TokenSplit(transfer=0.5, recompute=0.5),))


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

fractions = st.tuples(st.integers(0, 4), st.integers(0, 4)).filter(lambda t: t[0] + t[1] > 0).map(
    lambda t: Fractions(gpu=t[0] / (t[0] + t[1]), host=t[1] / (t[0] + t[1])))
splits = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)).filter(lambda t: sum(t) > 0).map(
    lambda t: TokenSplit(transfer=t[0] / sum(t), recompute=t[1] / sum(t), cpu=t[2] / sum(t)))


@st.composite
def policies(draw, n_layers: int = 32, n_ranges: int = 2):
    sp = tuple(draw(splits) for _ in range(n_ranges))
    act = any(s.recompute > 0 for s in sp) or draw(st.booleans())
    pol = LayerPolicy(weights=draw(fractions), kv=draw(fractions), activations_on_host=act, splits=sp)
    other = LayerPolicy(weights=draw(fractions), kv=draw(fractions), activations_on_host=True, splits=sp)
    k = draw(st.integers(0, n_layers))
    return (pol,) * k + (other,) * (n_layers - k)


@settings(max_examples=20, deadline=None)
@given(pols=policies(), bw=st.floats(1.0, 100.0), factor=st.floats(1.0, 8.0), head=st.booleans(),
       bidir=st.sampled_from(["50%", "100%"]))
def test_time_is_non_increasing_in_link_bandwidth(toy, llama2, pols, bw, factor, head, bidir):
    wl = KvWorkload(model=llama2, batch=4, prompt_len=128, gen_len=8)

    def total(gbps: float) -> tuple[float, float]:
        system = load_system(TOY, [f"link.h2d={gbps}GB/s", f"link.d2h={gbps}GB/s",
                                   f"link.bidirectional_factor={bidir}"])
        cost = evaluate(wl, system, pols, head_on_gpu=head)
        return cost.prefill_s, cost.decode_s

    slow, fast = total(bw), total(bw * factor)
    # 1e-12 relative: the same sums with smaller terms; only rounding can differ.
    assert fast[0] <= slow[0] * (1 + 1e-12)
    assert fast[1] <= slow[1] * (1 + 1e-12)


@settings(max_examples=15, deadline=None)
@given(pols=policies(), factor=st.floats(1.0, 8.0),
       field=st.sampled_from(["gpu.flops_fp16", "gpu.memory_bandwidth", "host.memory_bandwidth",
                              "host.flops_fp32"]))
def test_time_is_non_increasing_in_flops_and_memory_bandwidth(toy, llama2, pols, factor, field):
    wl = KvWorkload(model=llama2, batch=4, prompt_len=128, gen_len=8)
    base = {"gpu.flops_fp16": 100.0, "gpu.memory_bandwidth": 1000.0, "host.memory_bandwidth": 100.0,
            "host.flops_fp32": 2.0}[field]
    unit = "TFLOP/s" if "flops" in field else "GB/s"

    def total(value: float) -> float:
        cost = evaluate(wl, apply_overrides(toy, [f"{field}={value}{unit}"]), pols)
        return cost.prefill_s + cost.decode_s

    assert total(base * factor) <= total(base) * (1 + 1e-9)  # 1e-9: tangent finite differences round


def test_prefill_gets_faster_with_more_flops(toy, llama2):
    # 8 x 512 prompt tokens: GEMMs of 4096 rows do 4096 FLOP per weight byte, above the ridge
    # (100 FLOP/B), so prefill is compute-bound and doubling FLOP/s nearly halves it.
    wl = KvWorkload(model=llama2, batch=8, prompt_len=512, gen_len=1)
    slow = evaluate(wl, toy, _policies(32)).prefill_s
    fast = evaluate(wl, apply_overrides(toy, ["gpu.flops_fp16=200TFLOP/s"]), _policies(32)).prefill_s
    assert 0.5 * slow <= fast < 0.6 * slow


@settings(max_examples=20, deadline=None)
@given(pols=policies(n_ranges=1))
def test_step_time_is_non_decreasing_in_context_for_any_policy(toy, llama2, pols):
    wl = KvWorkload(model=llama2, batch=2, prompt_len=64, gen_len=12)
    steps = evaluate(wl, toy, pols).step_times_s
    # every resource time is affine with a non-negative slope in the context
    assert np.all(np.diff(steps) >= -1e-15)


@settings(max_examples=20, deadline=None)
@given(pols=policies())
def test_memory_breakdowns_add_up(toy, llama2, pols):
    wl = KvWorkload(model=llama2, batch=2, prompt_len=64, gen_len=12)
    mem = evaluate(wl, toy, pols).memory
    # The GPU peak is the larger phase: the resident terms plus that phase's own.
    terms = dict(mem.gpu_breakdown)
    resident = sum(terms[k] for k in ("weights", "kv", "head", "weight_buffers"))
    prefill = resident + sum(terms[k] for k in ("prefill_kv_staging", "prefill_hidden", "prefill_working"))
    decode = resident + terms["kv_buffers"] + terms["decode_working"]
    assert mem.gpu_bytes == pytest.approx(max(prefill, decode), rel=1e-12)
    assert (mem.gpu_prefill_bytes, mem.gpu_decode_bytes) == pytest.approx((prefill, decode), rel=1e-12)
    assert mem.host_bytes == pytest.approx(sum(v for _, v in mem.host_breakdown), rel=1e-12)
    # every weight and KV byte is somewhere: GPU + host shares = all layers
    gpu, host = dict(mem.gpu_breakdown), dict(mem.host_breakdown)
    kv_layer = 2 * 76 * KV_BYTES_PER_TOKEN_LAYER  # batch 2, 64 + 12 tokens
    assert gpu["weights"] + host["weights"] == pytest.approx(32 * LAYER_WEIGHT_BYTES, rel=1e-12)
    assert gpu["kv"] + host["kv"] == pytest.approx(32 * kv_layer, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Mixture of experts
# ---------------------------------------------------------------------------------------------


def test_moe_expert_bytes_reach_all_experts_at_large_batch():
    from costmodel.kv import dense_ops

    mixtral = load_model("mixtral-8x7b")
    # 4096 tokens x top-2 routing hit every one of the 8 experts (1 - (1 - 2/8)^4096 ~ 1):
    # gate+up weights 8 * 4096 * 2 * 14336 * 2 B = 1_879_048_192 B are all read.
    up = {op.name: op for op in dense_ops(mixtral, 4096, 2)}["experts_up"]
    weight_bytes = up.bytes - (4096 * 2 * 4096 + 4096 * 2 * 2 * 14336) * 2  # minus activations
    assert weight_bytes == pytest.approx(8 * 4096 * 2 * 14336 * 2, rel=1e-9)


def test_moe_single_token_reads_exactly_top_k_experts():
    from costmodel.kv import dense_ops

    mixtral = load_model("mixtral-8x7b")
    ops = {op.name: op for op in dense_ops(mixtral, 1, 2)}
    up = ops["experts_up"]
    # One token, top-2: exactly 2 experts' gate+up weights, 2 * 4096 * (2 * 14336) * 2 B = 469_762_048 B,
    # plus activations of 2 routed rows: (2*4096 + 2*28672) * 2 = 131_072 B.
    assert up.flop == 2 * 2 * 4096 * 2 * 14336  # 2 rows x 2 FLOP x 4096 x 28672: already 2 experts
    assert up.bytes == 2 * 4096 * 2 * 14336 * 2 + (2 * 4096 + 2 * 2 * 14336) * 2


# ---------------------------------------------------------------------------------------------
# The time bound that prunes the batch search
# ---------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(pols=policies(), gpu_gib=st.sampled_from([8, 11, 14, 40]), batch=st.sampled_from([1, 4, 16]),
       system=st.sampled_from(["toy", "l4", "rtx4090"]), head=st.booleans(),
       lengths=st.sampled_from([(512, 16), (32, 512), (2048, 256)]))
def test_time_lower_bound_never_exceeds_an_evaluated_time(toy, llama2, pols, gpu_gib, batch, system, head, lengths):
    """No feasible policy beats the bound, including the restricted bounds of the policy's own kind
    (which actions its offloaded KV takes, whether all its KV or weights are off the GPU). Long
    generations from short prompts stretch the context within each range, where the evaluator
    costs CPU attention by a tangent."""
    base = toy if system == "toy" else load_system(system)
    hw = apply_overrides(base, [f"gpu.memory={gpu_gib}GiB", "gpu.reserved_memory=0GiB"])
    wl = KvWorkload(allow_long_context=True, model=llama2, batch=batch, prompt_len=lengths[0], gen_len=lengths[1])
    cost = evaluate(wl, hw, pols, head_on_gpu=head)
    assume(cost.feasible)
    total = cost.prefill_s + cost.decode_s
    used = [a for a in KvAction if any(p.kv.offloaded > 0 and getattr(s, a.value) > 0 for p in pols for s in p.splits)]
    assert time_lower_bound_s(wl, hw) <= total * (1 + 1e-9)
    own = time_lower_bound_s(wl, hw, kv_actions=used, kv_offloaded=all(p.kv.gpu == 0 for p in pols),
                             weights_offloaded=all(p.weights.gpu == 0 for p in pols))
    assert own <= total * (1 + 1e-9)


def test_time_lower_bound_counts_weights_that_cannot_fit(toy):
    # llama-2-13b: 40 layers of 212_336_640 params in fp16 = 16_986_931_200 B of layer weights; the
    # toy GPU has 15 GiB usable. What does not fit crosses the 10 GB/s link every decode step.
    wl = KvWorkload(model=load_model("llama-2-13b"), batch=1, prompt_len=64, gen_len=8)
    weights = wl.model.n_layers * wl.model.layer_params() * 2
    excess = weights - (capacity(toy)["gpu_bytes"] - working_bytes(wl))
    assert excess > 1e9
    assert time_lower_bound_s(wl, toy) >= (wl.gen_len + 1) * excess / 10e9
    # Forcing every weight off the GPU raises it to all the weights, every step.
    forced = time_lower_bound_s(wl, toy, weights_offloaded=True)
    assert forced >= (wl.gen_len + 1) * weights / 10e9 > time_lower_bound_s(wl, toy)


def test_time_lower_bound_of_an_all_gpu_plan_is_its_dense_work(toy, llama2):
    # Everything fits (the hand-checked case of test_gpu_only_times_by_hand): the bound is the dense
    # GPU work alone, below the exact time by the attention and the head's share only.
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=8)
    exact = evaluate(wl, toy, _policies(32))
    bound = time_lower_bound_s(wl, toy)
    assert bound <= exact.prefill_s + exact.decode_s
    assert bound >= 0.9 * (exact.prefill_s + exact.decode_s)


@settings(max_examples=30, deadline=None)
@given(pols=policies(n_ranges=3), head=st.booleans())
def test_evaluate_equals_layer_step_times_range_by_range(llama2, pols, head):
    """evaluate() costs all ranges of a layer in one vectorised pass; summing the public per-range
    layer_step_times gives the same steps (a system with link latency, so copy counts matter)."""
    hw = load_system("l4")
    wl = KvWorkload(model=llama2, batch=4, prompt_len=128, gen_len=12)
    cost = evaluate(wl, hw, pols, head_on_gpu=head)
    contexts = wl.contexts().astype(float)
    expected = np.full(wl.gen_len, cost.head_step_s)
    for pol in pols:
        for (a, b), split in zip(range_bounds(wl.gen_len, 3), pol.splits):
            mid, off = float(contexts[a:b].mean()), pol.kv.offloaded
            uc = unit_costs(wl, hw, context=mid, gpu_attn_tokens=mid * (1 - off * split.cpu),
                            recompute_tokens=mid * off * split.recompute, cpu_tokens=mid * off * split.cpu)
            times = layer_step_times(uc, pol.weights, pol.kv, pol.activations_on_host, split, contexts[a:b])
            expected[a:b] += np.max(np.stack(list(times.values())), axis=0)
    assert hw.link.latency_s > 0
    np.testing.assert_allclose(cost.step_times_s, expected, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(["llama-2-7b", "llama-3-8b"]), system=st.sampled_from(["toy", "l4", "a100-40gb"]),
       recompute=st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), min_size=1, max_size=4),
       weights_gpu=st.sampled_from([1.0, 0.5, 0.0]), batch=st.sampled_from([1, 8, 32]),
       lengths=st.sampled_from([(512, 16), (32, 256), (4096, 64)]), h2d=st.sampled_from([4, 32]))
def test_time_lower_bound_of_policies_that_move_all_their_kv(toy, model, system, recompute, weights_gpu, batch,
                                                             lengths, h2d):
    """KV all on the host, each range splitting it between transfer and recompute (KVPR's space): the
    bound that balances recompute's GPU work against the link never exceeds the evaluated time."""
    base = toy if system == "toy" else load_system(system)
    hw = apply_overrides(base, [f"link.h2d={h2d}GB/s"])
    spec = load_model(model)
    wl = KvWorkload(allow_long_context=True, model=spec, batch=batch, prompt_len=lengths[0], gen_len=lengths[1])
    pol = LayerPolicy(weights=Fractions(gpu=weights_gpu, host=1 - weights_gpu), kv=Fractions(gpu=0.0, host=1.0),
                      activations_on_host=True, splits=tuple(TokenSplit(transfer=1 - r, recompute=r) for r in recompute))
    cost = evaluate(wl, hw, (pol,) * spec.n_layers)
    assume(cost.feasible)
    bound = time_lower_bound_s(wl, hw, kv_actions=(KvAction.TRANSFER, KvAction.RECOMPUTE), kv_offloaded=True,
                               weights_offloaded=weights_gpu == 0.0)
    assert bound <= (cost.prefill_s + cost.decode_s) * (1 + 1e-9)


def test_mla_caches_the_latent_not_per_head_kv():
    # DeepSeek-V2-Lite: kv_lora_rank 512 + rope key 64 = 576 cached elements per token per layer,
    # not 2 x 16 heads x 192 = 6144.
    wl = KvWorkload(model=load_model("deepseek-v2-lite"), batch=1, prompt_len=100, gen_len=1)
    assert wl.kv_token_bytes == 576 * 2
    from costmodel.kv import attention_op

    flop, nbytes = attention_op(wl.model, 1, 1, 1000, 2, causal=False, kv_token_bytes=wl.kv_token_bytes)
    # absorbed decode: 2 x 16 heads x (576 + 512) FLOPs per cached token; reads 1000 x 1152 B + the query
    assert flop == 1000 * 2 * 16 * (576 + 512)
    assert nbytes == 1000 * 1152 + 2 * wl.model.q_dim * 2


def test_quantized_weights_are_costed_at_their_stored_bytes(toy):
    gptq = KvWorkload(model=load_model("llama-2-7b-gptq"), batch=1, prompt_len=32, gen_len=4)
    fp16 = KvWorkload(model=load_model("llama-2-7b"), batch=1, prompt_len=32, gen_len=4)
    assert gptq.layer_weight_bytes < 0.3 * fp16.layer_weight_bytes
    gpu = dict(evaluate(gptq, toy, _policies(32)).memory.gpu_breakdown)
    assert gpu["weights"] == pytest.approx(32 * gptq.layer_weight_bytes, rel=1e-12)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("kv_keep", 0.0, "kv_keep"), ("kv_keep", 1.5, "kv_keep"), ("kv_dtype", "fp7", "kv_dtype"),
    ("gpu_batch", 3, "multiple of gpu_batch"), ("stream_granularity", "tensor", "stream_granularity")])
def test_bad_workload_options_are_refused(llama2, field, value, needle):
    with pytest.raises(WorkloadError, match=needle):
        KvWorkload(model=llama2, batch=8, prompt_len=32, gen_len=4, **{field: value})
