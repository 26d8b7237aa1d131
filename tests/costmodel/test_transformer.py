"""Transformer specs from Hugging Face configs: parameter counts, KV bytes, and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodel import TransformerSpec, WorkloadError, list_models, load_model, model_info, spec_from_hf_config
from costmodel.transformer import AttentionKind, QuantMethod, QuantScheme


def test_there_are_bundled_models():
    assert {"llama-2-7b", "llama-3-8b", "opt-6.7b", "mixtral-8x7b"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_param_count_matches_the_published_figure(name):
    spec = load_model(name)
    info = model_info(name)
    published = info["published_params"]
    counted = spec.total_params()
    if "published_params_rounded_to" in info:
        # OPT sizes are published as "6.7B", "13B": the count must round to the published figure.
        assert abs(counted - published) <= info["published_params_rounded_to"] / 2, (counted, published)
    else:
        # Exact figures (safetensors totals): within 0.5 %.
        assert abs(counted - published) <= 0.005 * published, (counted, published)


@pytest.mark.parametrize("name", list_models())
def test_bundled_spec_is_self_consistent(name):
    spec = load_model(name)
    assert spec.name == name
    assert spec.n_heads % spec.n_kv_heads == 0
    assert spec.q_dim == spec.n_heads * spec.head_dim
    if spec.attention_kind is AttentionKind.MLA:
        assert spec.kv_elements_per_token() == spec.kv_lora_rank + spec.qk_rope_head_dim
    else:
        assert spec.kv_elements_per_token() == 2 * spec.n_kv_heads * spec.head_dim
    assert spec.is_gqa == (spec.n_kv_heads < spec.n_heads)
    # Exact for every bundled model, the float mean of unequal layers included.
    assert spec.total_params() == spec.n_layers * spec.layer_params() + spec.head_params()
    assert spec.total_params() == spec.layer_params_total() + spec.head_params()
    assert 0 <= spec.sliding_window_layers <= spec.n_layers
    assert (spec.sliding_window is None) == (spec.sliding_window_layers == 0)
    assert spec.max_context_tokens >= spec.max_positions
    assert spec.weight_bytes_per_param(2) <= 2 and spec.head_weight_bytes_per_param(2) == 2
    summary = spec.summary()
    assert summary["kv_bytes_per_token"] == summary["kv_bytes_per_token_per_layer"] * spec.n_layers
    json.dumps(summary)  # `tierplan models show --json` prints it


def test_llama_2_7b_param_count_by_hand():
    spec = load_model("llama-2-7b")
    # hidden 4096, 32 layers, 32 heads (MHA), intermediate 11008, vocab 32000, untied head, RMSNorm.
    attention = 4 * 4096 * 4096  # q, k, v, o: 67_108_864
    mlp = 3 * 4096 * 11008  # gate, up, down: 135_266_304
    norms = 2 * 4096  # two RMSNorm weights: 8_192
    layer = attention + mlp + norms  # 202_383_360
    head = 2 * 32000 * 4096 + 4096  # embeddings + LM head + final norm: 262_148_096
    assert spec.layer_params() == layer == 202_383_360
    assert spec.head_params() == head
    assert spec.total_params() == 32 * layer + head == 6_738_415_616


def test_kv_bytes_per_token_mha_llama_2_7b():
    spec = load_model("llama-2-7b")
    assert not spec.is_gqa
    # MHA: K and V for 32 heads of 128 dims = 2 * 32 * 128 = 8192 elements per token per layer
    assert spec.kv_elements_per_token() == 2 * 32 * 128 == 8192
    summary = spec.summary(dtype_bytes=2)
    assert summary["kv_bytes_per_token_per_layer"] == 8192 * 2  # fp16: 16_384 B
    assert summary["kv_bytes_per_token"] == 8192 * 2 * 32  # 32 layers: 524_288 B = 0.5 MiB


def test_kv_bytes_per_token_gqa_llama_3_8b():
    spec = load_model("llama-3-8b")
    assert spec.is_gqa
    assert (spec.n_heads, spec.n_kv_heads, spec.head_dim) == (32, 8, 128)
    # GQA: only the 8 KV heads are cached: 2 * 8 * 128 = 2048 elements per token per layer
    assert spec.kv_elements_per_token() == 2 * 8 * 128 == 2048
    assert spec.summary()["kv_bytes_per_token_per_layer"] == 2048 * 2  # 4096 B, a quarter of llama-2-7b's


def test_activation_vs_kv_bytes_per_token_gqa_fact():
    # The layer input of one token is hidden * 2 B = 8192 B for both models. Recomputing KV from it
    # moves fewer bytes than the KV itself only when KV is wider than hidden (MHA, not GQA).
    llama2, llama3 = load_model("llama-2-7b"), load_model("llama-3-8b")
    for spec in (llama2, llama3):
        assert spec.summary()["activation_bytes_per_token_per_layer"] == 4096 * 2
    assert llama2.summary()["kv_bytes_per_token_per_layer"] > 8192  # 16384
    assert llama3.summary()["kv_bytes_per_token_per_layer"] < 8192  # 4096


def test_mixtral_counts_all_experts_and_two_active():
    spec = load_model("mixtral-8x7b")
    assert (spec.n_experts, spec.experts_per_token) == (8, 2)
    # per expert: gate, up, down = 3 * 4096 * 14336 = 176_160_768; router 4096 * 8 = 32_768
    per_expert = 3 * 4096 * 14336
    assert spec.mlp_params() == 8 * per_expert + 4096 * 8
    assert spec.active_mlp_params_per_token() == 2 * per_expert + 4096 * 8
    # Active per token, the "12.9B" Mistral publishes (to 0.1B): 32 layers x (attention 41_943_040
    # + active MLP 352_354_304 + norms 8_192) + head 262_148_096 = 12_879_925_248.
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    active = 32 * (attention + spec.active_mlp_params_per_token() + 2 * 4096) + spec.head_params()
    assert active == 12_879_925_248
    assert abs(active - 12.9e9) <= 0.05e9


# ---------------------------------------------------------------------------------------------
# Configs from a path
# ---------------------------------------------------------------------------------------------

OPT_125M = {
    "model_type": "opt", "num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
    "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 768,
    "enable_bias": True, "tie_word_embeddings": True,
}

PYTHIA_70M = {
    "model_type": "gpt_neox", "num_hidden_layers": 6, "hidden_size": 512, "num_attention_heads": 8,
    "intermediate_size": 2048, "vocab_size": 50304, "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def _write(tmp_path, name: str, cfg) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(cfg) if not isinstance(cfg, str) else cfg)
    return str(path)


def test_opt_125m_from_a_config_path(tmp_path):
    spec = load_model(_write(tmp_path, "opt-125m.json", OPT_125M))
    assert spec.name == "opt-125m"
    assert spec.family == "opt" and spec.layer_norm and spec.linear_bias and spec.tied_embeddings
    # per layer: attention 4*768^2 + 4*768 biases = 2_362_368; MLP 2*768*3072 + 3072 + 768 = 4_722_432;
    # two LayerNorms 2*2*768 = 3_072  -> 7_087_872
    assert spec.layer_params() == 7_087_872
    # head: embeddings 50272*768 = 38_608_896 (tied LM head), learned positions (2048+2)*768 = 1_574_400,
    # final LayerNorm 1_536 -> 40_184_832
    assert spec.head_params() == 40_184_832
    # 12 * 7_087_872 + 40_184_832 = 125_239_296, the published OPT-125m count
    assert spec.total_params() == 125_239_296


def test_gpt_neox_pythia_70m_from_a_folder(tmp_path):
    folder = tmp_path / "pythia-70m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PYTHIA_70M))
    spec = load_model(folder)
    assert spec.name == "pythia-70m"  # a folder's name names the model
    # per layer: attention 4*512^2 + 4*512 = 1_050_624; MLP 2*512*2048 + 2048 + 512 = 2_099_712;
    # norms 2*2*512 = 2_048 -> 3_152_384
    assert spec.layer_params() == 3_152_384
    # head: embed_in + embed_out 2*50304*512 = 51_511_296, final LayerNorm 1_024
    # total 6*3_152_384 + 51_512_320 = 70_426_624 (Pythia paper, 70M row)
    assert spec.total_params() == 70_426_624


def test_a_config_json_given_relative_to_its_folder_is_named_by_that_folder(tmp_path, monkeypatch):
    # `tierplan plan training --model ./config.json` (issue 11's example): Path("./config.json").parent
    # has no name, which left the model nameless and its plan file unloadable
    folder = tmp_path / "pythia-70m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PYTHIA_70M))
    monkeypatch.chdir(folder)
    assert load_model("./config.json").name == "pythia-70m"
    assert load_model("config.json").name == "pythia-70m"
    assert load_model(".").name == "pythia-70m"


def test_gqa_head_dim_from_config(tmp_path):
    cfg = {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100}
    spec = load_model(_write(tmp_path, "tiny.json", cfg))
    # head_dim 64/4 = 16; KV elements 2*2*16 = 64
    assert spec.head_dim == 16 and spec.kv_elements_per_token() == 64
    assert spec.qkv_bias  # qwen2 has q, k, v biases
    # attention: 64*64 (q) + 2*64*32 (k, v) + 64*64 (o) + biases 64 + 2*32 = 12_416
    assert spec.attention_params() == 64 * 64 + 2 * 64 * 32 + 64 * 64 + 64 + 2 * 32
    assert spec.max_positions == 2048  # the default when the config has none


def test_unsupported_model_type_names_type_and_file(tmp_path):
    path = _write(tmp_path, "bert.json", {"model_type": "bert", "num_hidden_layers": 12})
    with pytest.raises(WorkloadError) as err:
        load_model(path)
    msg = str(err.value)
    assert "'bert'" in msg and "not supported" in msg
    assert path in msg
    assert "llama" in msg  # lists the supported families


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write(tmp_path, "broken.json", '{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(WorkloadError) as err:
        load_model(path)
    msg = str(err.value)
    assert "malformed JSON" in msg and "line 2" in msg
    assert path in msg


def test_missing_field_names_field_and_file(tmp_path):
    cfg = {k: v for k, v in PYTHIA_70M.items() if k != "hidden_size"}
    path = _write(tmp_path, "nohidden.json", cfg)
    with pytest.raises(WorkloadError) as err:
        load_model(path)
    assert "'hidden_size' is missing" in str(err.value)
    assert path in str(err.value)


@pytest.mark.parametrize("bad", [0, -4, 4.5, True, "32"])
def test_non_positive_integer_field_is_an_error(tmp_path, bad):
    path = _write(tmp_path, "bad.json", {**PYTHIA_70M, "num_hidden_layers": bad})
    with pytest.raises(WorkloadError, match="num_hidden_layers.*must be a positive integer"):
        load_model(path)


def test_heads_must_be_a_multiple_of_kv_heads(tmp_path):
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 96, "num_attention_heads": 6,
           "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 100}
    with pytest.raises(WorkloadError, match=r"multiple of num_key_value_heads \(4\)"):
        load_model(_write(tmp_path, "odd.json", cfg))


def test_projected_opt_embeddings_are_rejected(tmp_path):
    # OPT-350m projects 512-wide embeddings to 1024; the spec does not model that.
    with pytest.raises(WorkloadError, match="word_embed_proj_dim"):
        load_model(_write(tmp_path, "opt-350m.json", {**OPT_125M, "word_embed_proj_dim": 512}))


def test_config_must_be_an_object():
    with pytest.raises(WorkloadError, match="must be a JSON object"):
        spec_from_hf_config([1, 2], name="x", file="x.json")


def test_unknown_bundled_name_lists_models():
    with pytest.raises(WorkloadError) as err:
        load_model("llama-9-9000b")
    assert "unknown model 'llama-9-9000b'" in str(err.value)
    assert "llama-2-7b" in str(err.value)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        load_model(tmp_path / "absent.json")


def test_opt_index_entries_say_how_they_are_rounded():
    for name in list_models():
        if name.startswith("opt-"):
            assert model_info(name)["published_params_rounded_to"] > 0


def test_spec_is_a_frozen_value():
    spec = load_model("llama-2-7b")
    with pytest.raises(AttributeError):
        spec.hidden = 1  # type: ignore[misc]
    assert isinstance(spec, TransformerSpec)


# ---------------------------------------------------------------------------------------------
# New families: hand-derived counts (every figure matches the published one in index.yaml)
# ---------------------------------------------------------------------------------------------


def test_gemma_2b_by_hand_tied_embeddings_and_independent_head_dim():
    spec = load_model("gemma-2b")
    # 8 heads of head_dim 256 (= 2048 = hidden here, but read from the config), 1 KV head (MQA).
    assert (spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.tied_embeddings) == (8, 1, 256, True)
    attention = 2048 * 2048 + 2 * 2048 * 256 + 2048 * 2048  # q, k, v, o: 9_437_184
    mlp = 3 * 2048 * 16384  # gate, up, down: 100_663_296
    layer = attention + mlp + 2 * 2048  # two RMSNorms: 110_104_576
    head = 256000 * 2048 + 2048  # one (tied) embedding + final norm: 524_290_048
    assert spec.layer_params() == layer == 110_104_576
    assert spec.total_params() == 18 * layer + head == 2_506_172_416


def test_gemma2_9b_by_hand_four_norms_and_alternating_sliding_window():
    spec = load_model("gemma-2-9b")
    # q: 16 heads x 256 = 4096 wide, wider than hidden 3584; k, v: 8 x 256 = 2048.
    attention = 3584 * 4096 + 2 * 3584 * 2048 + 4096 * 3584  # 44_040_192
    mlp = 3 * 3584 * 14336  # 154_140_672
    norms = 4 * 3584  # input, post-attention, pre- and post-feedforward: 14_336
    assert spec.norms_per_layer == 4
    assert spec.layer_params() == attention + mlp + norms == 198_195_200
    assert spec.total_params() == 42 * 198_195_200 + 256000 * 3584 + 3584 == 9_241_705_984
    # Layers 0, 2, ..., 40 use the 4096-token window: 21 of 42.
    assert (spec.sliding_window, spec.sliding_window_layers) == (4096, 21)


def test_gemma3_1b_by_hand_qk_norms_and_five_to_one_sliding_pattern():
    spec = load_model("gemma-3-1b")
    assert spec.family == "gemma3_text" and spec.qk_norm
    attention = 1152 * 1024 + 2 * 1152 * 256 + 1024 * 1152 + 2 * 256  # q, k, v, o + q_norm, k_norm: 2_949_632
    mlp = 3 * 1152 * 6912  # 23_887_872
    layer = attention + mlp + 4 * 1152  # 26_842_112
    assert spec.layer_params() == layer == 26_842_112
    assert spec.total_params() == 26 * layer + 262144 * 1152 + 1152 == 999_885_952
    # sliding_window_pattern 6: layers 5, 11, 17, 23 are global, the other 22 slide over 512 tokens.
    assert (spec.sliding_window, spec.sliding_window_layers) == (512, 22)


def test_gemma3_multimodal_counts_the_text_model_with_its_defaults():
    spec = load_model("gemma-3-4b")
    assert spec.family == "gemma3"
    # text_config gives hidden 2560, intermediate 10240, 34 layers; Gemma3TextConfig defaults give
    # 8 heads, 4 KV heads, head_dim 256, vocab 262208, tied embeddings.
    assert (spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.vocab) == (8, 4, 256, 262208)
    attention = 2560 * 2048 + 2 * 2560 * 1024 + 2048 * 2560 + 2 * 256  # 15_729_152
    layer = attention + 3 * 2560 * 10240 + 4 * 2560  # 94_382_592
    assert spec.total_params() == 34 * layer + 262208 * 2560 + 2560 == 3_880_263_168
    # The linear rope factor 8 is already in max_position_embeddings 131072 (Gemma 3: 128K context).
    assert spec.max_context_tokens == 131072
    assert spec.sliding_window_layers == 34 - 5 and spec.sliding_window == 1024


def test_gemma3_wrapper_equals_the_text_config_alone():
    text = json.loads(Path(load_model("gemma-3-1b").source).read_text())
    wrapped = spec_from_hf_config({"model_type": "gemma3", "text_config": text, "vision_config": {}}, name="w")
    assert wrapped.total_params() == load_model("gemma-3-1b").total_params()
    with pytest.raises(WorkloadError, match="'text_config' must be an object"):
        spec_from_hf_config({"model_type": "gemma3"}, name="w", file="g.json")


def test_phi3_mini_by_hand_fused_projections_count_the_same():
    spec = load_model("phi-3-mini-4k")
    # qkv_proj 3072 -> 3 * 3072 and o_proj; gate_up_proj 3072 -> 2 * 8192 and down_proj.
    layer = 3072 * 3 * 3072 + 3072 * 3072 + 3072 * 2 * 8192 + 8192 * 3072 + 2 * 3072  # 113_252_352
    head = 2 * 32064 * 3072 + 3072  # untied: 197_004_288
    assert spec.layer_params() == layer == 113_252_352
    assert spec.total_params() == 32 * layer + head == 3_821_079_552
    assert (spec.sliding_window, spec.sliding_window_layers) == (2047, 32)


def test_qwen3_8b_by_hand_qk_norms():
    spec = load_model("qwen3-8b")
    attention = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 2 * 128  # q_norm, k_norm of head_dim: 41_943_296
    layer = attention + 3 * 4096 * 12288 + 2 * 4096  # 192_946_432
    assert spec.layer_params() == layer
    assert spec.total_params() == 36 * layer + 2 * 151936 * 4096 + 4096 == 8_190_735_360
    assert spec.sliding_window_layers == 0  # use_sliding_window false


def test_qwen3_30b_a3b_by_hand_experts():
    spec = load_model("qwen3-30b-a3b")
    assert (spec.n_experts, spec.experts_per_token, spec.intermediate, spec.n_dense_layers) == (128, 8, 768, 0)
    assert spec.expert_intermediate == 768
    attention = 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048 + 2 * 128  # 18_874_624
    expert = 3 * 2048 * 768  # 4_718_592
    mlp = 128 * expert + 2048 * 128  # experts + router: 604_241_920
    assert spec.mlp_params() == mlp
    layer = attention + mlp + 2 * 2048  # 623_120_640
    assert spec.total_params() == 48 * layer + 2 * 151936 * 2048 + 2048 == 30_532_122_624
    assert spec.active_mlp_params_per_token() == 8 * expert + 2048 * 128 == 38_010_880


def test_qwen3_moe_mlp_only_layers_and_sparse_step_make_layers_differ():
    cfg = {"model_type": "qwen3_moe", "num_hidden_layers": 4, "hidden_size": 8, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 4, "intermediate_size": 32, "moe_intermediate_size": 2,
           "num_experts": 4, "num_experts_per_tok": 2, "vocab_size": 10, "mlp_only_layers": [0]}
    spec = spec_from_hf_config(cfg, name="tiny")
    # attention 8*8 + 2*8*4 + 8*8 + 2*4 = 200; norms 16 -> 216 a layer
    # dense MLP (layer 0): 3*8*32 = 768; MoE MLP (layers 1-3): 4 experts x 3*8*2 + router 8*4 = 224
    assert (spec.n_dense_layers, spec.dense_intermediate, spec.intermediate) == (1, 32, 2)
    assert spec.layer_params_total() == 4 * 216 + 768 + 3 * 224 == 2304
    assert spec.layer_params() == 576  # 2304 / 4 divides: an int
    cfg["mlp_only_layers"], cfg["decoder_sparse_step"] = [], 2  # layers 0 and 2 dense: (i + 1) % 2 != 0
    spec = spec_from_hf_config(cfg, name="tiny")
    assert spec.n_dense_layers == 2
    assert spec.layer_params_total() == 4 * 216 + 2 * 768 + 2 * 224 == 2848
    cfg["intermediate_size"] = 33  # dense MLP 3*8*33 = 792: total 2896 is not a multiple of 4
    spec = spec_from_hf_config(cfg, name="tiny")
    assert spec.layer_params() == 2896 / 4 == 724.0
    assert spec.n_layers * spec.layer_params() + spec.head_params() == spec.total_params()


def test_deepseek_v2_lite_by_hand_mla_and_shared_experts():
    spec = load_model("deepseek-v2-lite")
    assert spec.attention_kind is AttentionKind.MLA and spec.q_lora_rank is None
    q_proj = 2048 * 16 * (128 + 64)  # no q compression in V2-Lite: 6_291_456
    kv_a = 2048 * (512 + 64) + 512  # kv_a_proj_with_mqa + kv_a_layernorm: 1_180_160
    kv_b = 512 * 16 * (128 + 128)  # 2_097_152
    o_proj = 16 * 128 * 2048  # 4_194_304
    attention = q_proj + kv_a + kv_b + o_proj  # 13_763_072
    assert spec.attention_params() == attention == 13_763_072
    dense_mlp = 3 * 2048 * 10944  # layer 0 (first_k_dense_replace 1): 67_239_936
    expert = 3 * 2048 * 1408  # 8_650_752
    moe_mlp = 64 * expert + 2 * expert + 2048 * 64  # routed + 2 shared + router: 571_080_704
    assert (spec.dense_mlp_params(), spec.mlp_params()) == (dense_mlp, moe_mlp)
    assert (spec.n_dense_layers, spec.shared_experts, spec.dense_intermediate) == (1, 2, 10944)
    layers = 27 * (attention + 2 * 2048) + dense_mlp + 26 * moe_mlp  # 15_287_051_776
    assert spec.layer_params_total() == layers
    assert spec.layer_params() == layers / 27  # unequal layers: the float mean
    assert spec.total_params() == layers + 2 * 102400 * 2048 + 2048 == 15_706_484_224
    # Active per token in a MoE layer: 6 routed + the 2 shared experts + router.
    assert spec.active_mlp_params_per_token() == 6 * expert + 2 * expert + 2048 * 64 == 69_337_088


def test_deepseek_v2_lite_mla_kv_cache_and_attention_dims_by_hand():
    spec = load_model("deepseek-v2-lite")
    # The cache holds the 512-wide latent and the 64-wide decoupled rope key, shared by all 16 heads
    assert spec.kv_elements_per_token() == 512 + 64 == 576
    assert spec.summary(dtype_bytes=2)["kv_bytes_per_token"] == 576 * 2 * 27  # 31_104 B a token
    # vs 2 * 16 heads * (128 + 64) = 6144 elements for materialised K and V: 10.7x more.
    assert 2 * spec.kv_dim == 6144
    assert (spec.attention_score_dim, spec.attention_value_dim) == (576, 512)
    assert (spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim) == (128, 64, 128)
    # Absorbed decode: 2 * 16 heads * (576 + 512); prefill over materialised K/V: 2 * 16 * (192 + 128).
    assert spec.attention_flop_per_query_key() == 2 * 16 * (576 + 512) == 34_816
    assert spec.attention_flop_per_query_key(absorbed=False) == 2 * 16 * (192 + 128) == 10_240
    assert spec.max_context_tokens == 4096 * 40  # yarn: original_max_position_embeddings x factor


def test_deepseek_v3_by_hand_main_model_without_mtp_and_fp8_blocks():
    spec = load_model("deepseek-v3")
    attention = (7168 * 1536 + 1536 + 1536 * 128 * 192  # q_a_proj, q_a_layernorm, q_b_proj
                 + 7168 * 576 + 512 + 512 * 128 * 256 + 128 * 128 * 7168)  # kv_a(+norm), kv_b, o_proj
    assert spec.attention_params() == attention == 187_107_328
    expert = 3 * 7168 * 2048  # 44_040_192
    moe_mlp = 256 * expert + expert + 7168 * 256 + 256  # + shared, router, e_score_correction_bias
    dense_mlp = 3 * 7168 * 18432  # first_k_dense_replace 3
    layers = 61 * (attention + 2 * 7168) + 3 * dense_mlp + 58 * moe_mlp
    assert spec.total_params() == layers + 2 * 129280 * 7168 + 7168 == 671_026_419_200
    assert spec.mtp_layers == 1  # in the checkpoint, not counted (README_WEIGHTS: 671B main model)
    # fp8 with 128x128 blocks: one fp32 scale per block of every layer matrix; norms, router and
    # score bias stay at dtype_bytes; embeddings and head unquantised.
    assert spec.quant.method is QuantMethod.FP8 and spec.quantization == "fp8 block 128x128"
    assert spec.quant.linear_bytes(7168, 2048) == 7168 * 2048 + 16 * 56 * 4  # 14_683_648
    assert 1.0 < spec.weight_bytes_per_param(2) < 1.001
    assert spec.head_weight_bytes_per_param(2) == 2.0


def test_gpt2_by_hand_conv1d_biases_learned_positions_tied_head():
    spec = load_model("gpt2")
    attention = 768 * 3 * 768 + 3 * 768 + 768 * 768 + 768  # c_attn, c_proj with biases: 2_362_368
    mlp = 768 * 3072 + 3072 + 3072 * 768 + 768  # n_inner null -> 4 * 768: 4_722_432
    layer = attention + mlp + 2 * 2 * 768  # ln_1, ln_2 (weight + bias): 7_087_872
    head = 50257 * 768 + 1024 * 768 + 2 * 768  # wte (tied head), wpe, ln_f: 39_385_344
    assert spec.layer_params() == layer == 7_087_872 and spec.head_params() == head
    assert spec.total_params() == 12 * layer + head == 124_439_808
    assert spec.max_context_tokens == 1024


def test_falcon_7b_by_hand_multi_query_parallel_attention():
    spec = load_model("falcon-7b")
    assert (spec.n_kv_heads, spec.head_dim, spec.norms_per_layer) == (1, 64, 1)
    qkv = 4544 * (4544 + 2 * 64)  # one K and one V head: 21_229_568
    layer = qkv + 4544 * 4544 + 2 * 4544 * 18176 + 2 * 4544  # dense, MLP, one LayerNorm: 207_070_080
    assert spec.layer_params() == layer
    assert spec.total_params() == 32 * layer + 65024 * 4544 + 2 * 4544 == 6_921_720_704


def test_falcon_rw_1b_by_hand_alibi_biases_sequential_attention():
    spec = load_model("falcon-rw-1b")
    assert (spec.n_kv_heads, spec.norms_per_layer, spec.linear_bias) == (32, 2, True)
    attention = 2048 * 3 * 2048 + 3 * 2048 + 2048 * 2048 + 2048  # 16_785_408
    mlp = 2048 * 8192 + 8192 + 8192 * 2048 + 2048  # 33_564_672
    layer = attention + mlp + 2 * 2 * 2048  # input and post-attention LayerNorms: 50_358_272
    assert spec.total_params() == 24 * layer + 50304 * 2048 + 2 * 2048 == 1_311_625_216


def test_falcon_new_decoder_architecture_groups_kv_heads():
    cfg = {"model_type": "falcon", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 8,
           "num_kv_heads": 2, "new_decoder_architecture": True, "vocab_size": 100}
    spec = spec_from_hf_config(cfg, name="f")
    # query_key_value: 64 -> (8 + 2 * 2) * 8 = 96; ln_attn and ln_mlp
    assert (spec.n_kv_heads, spec.norms_per_layer) == (2, 2)
    assert spec.attention_params() == 64 * 96 + 64 * 64
    assert spec.layer_params() == 64 * 96 + 64 * 64 + 2 * 64 * 256 + 2 * 2 * 64
    with pytest.raises(WorkloadError, match=r"multiple of num_kv_heads \(3\)"):
        spec_from_hf_config({**cfg, "num_kv_heads": 3}, name="f")
    with pytest.raises(WorkloadError, match="num_ln_in_parallel_attn"):
        spec_from_hf_config({**cfg, "num_ln_in_parallel_attn": 3}, name="f")


def test_starcoder2_7b_by_hand_gqa_biases_layernorm():
    spec = load_model("starcoder2-7b")
    attention = 4608 * 4608 + 2 * 4608 * 512 + 4608 * 4608 + (4608 + 2 * 512) + 4608  # + q/k/v and o biases
    mlp = 4608 * 18432 + 18432 + 18432 * 4608 + 4608  # c_fc, c_proj with biases
    layer = attention + mlp + 2 * 2 * 4608  # 217_106_944
    assert spec.layer_params() == layer == 217_106_944
    assert spec.total_params() == 32 * layer + 49152 * 4608 + 2 * 4608 == 7_173_923_840
    assert (spec.sliding_window, spec.sliding_window_layers) == (4096, 32)


def test_sliding_window_layers_of_the_older_families():
    assert load_model("mistral-7b").sliding_window_layers == 32  # every layer, window 4096
    assert load_model("qwen2.5-7b").sliding_window_layers == 0  # use_sliding_window false
    assert load_model("llama-2-7b").sliding_window is None
    cfg = {"model_type": "qwen2", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
           "intermediate_size": 128, "vocab_size": 100, "use_sliding_window": True, "sliding_window": 256,
           "max_window_layers": 1}
    assert spec_from_hf_config(cfg, name="q").sliding_window_layers == 3  # layers >= max_window_layers
    types = ["sliding_attention", "full_attention"] * 2
    assert spec_from_hf_config({**cfg, "layer_types": types}, name="q").sliding_window_layers == 2
    with pytest.raises(WorkloadError, match="layer_types"):
        spec_from_hf_config({**cfg, "layer_types": types[:3]}, name="q")


# ---------------------------------------------------------------------------------------------
# Quantised weights
# ---------------------------------------------------------------------------------------------


def test_gptq_llama_2_7b_layer_bytes_by_hand():
    spec = load_model("llama-2-7b-gptq")
    assert spec.quantization == "gptq 4-bit g128" and spec.total_params() == load_model("llama-2-7b").total_params()

    def gptq(k, n):  # qweight int4 + per-group (fp16 scale, int4 zero) per column + int32 g_idx per row
        return k * n // 2 + (k // 128) * n * 2 + (k // 128) * n // 2 + 4 * k

    assert gptq(4096, 4096) == 8_388_608 + 262_144 + 65_536 + 16_384 == 8_732_672
    layer = 4 * gptq(4096, 4096) + 2 * gptq(4096, 11008) + gptq(11008, 4096) + 2 * 4096 * 2  # + fp16 norms
    assert spec.layers_weight_bytes(2) == 32 * layer == 32 * 105_298_944
    assert spec.summary()["weight_bytes_per_layer"] == layer
    assert spec.weight_bytes_per_param(2) == layer / spec.layer_params()
    assert spec.head_weight_bytes_per_param(2) == 2.0  # embeddings and lm_head stay fp16


def _quantised(quantization_config):
    cfg = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 4096, "num_attention_heads": 32,
           "intermediate_size": 4096, "vocab_size": 100, "quantization_config": quantization_config}
    return spec_from_hf_config(cfg, name="q", file="q.json")


def test_awq_bnb_and_fp8_bytes_per_weight_by_hand():
    n = 4096 * 4096  # 16_777_216 weights
    awq = _quantised({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}).quant
    assert awq.linear_bytes(4096, 4096) == n // 2 + 32 * 4096 * 2 + 32 * 4096 // 2 == 8_716_288  # no g_idx
    assert awq.bytes_per_weight(4096, 4096) == 0.5 + 2.5 / 128
    nf4 = _quantised({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}).quant
    assert nf4.linear_bytes(4096, 4096) == n // 2 + (n // 64) * 4 == 9_437_184  # 0.5 + 4/64 B a weight
    dq = _quantised({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True})
    assert dq.quantization == "bnb nf4 double-quant"
    assert dq.quant.linear_bytes(4096, 4096) == n // 2 + n // 64 + (n // 64 // 256) * 4 == 8_654_848
    int8 = _quantised({"quant_method": "bitsandbytes", "load_in_8bit": True}).quant
    assert int8.linear_bytes(4096, 4096) == n + 4096 * 4  # int8 + an fp32 scale per output row
    fp8 = _quantised({"quant_method": "fp8", "weight_block_size": [128, 128]}).quant
    assert fp8.linear_bytes(4096, 4096) == n + 32 * 32 * 4
    per_tensor = QuantScheme(method=QuantMethod.FP8, bits=8, static_activation_scale=True)
    assert per_tensor.linear_bytes(4096, 4096) == n + 2 * 4  # weight scale + static input scale
    # Per layer, norms stay at dtype_bytes: 1 layer of 4 attention + 3 MLP 4096x4096 matrices.
    spec = _quantised({"quant_method": "fp8", "weight_block_size": [128, 128]})
    assert spec.layers_weight_bytes(2) == 7 * (n + 32 * 32 * 4) + 2 * 4096 * 2
    assert _quantised(None).weight_bytes_per_param(2) == 2.0


@pytest.mark.parametrize("qc, field", [
    ({"quant_method": "hqq"}, "quantization_config.quant_method"),
    ({"quant_method": "gptq", "bits": 5, "group_size": 128}, "quantization_config.bits"),
    ({"quant_method": "gptq", "bits": "4", "group_size": 128}, "quantization_config.bits"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, "quantization_config.group_size"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "lm_head": True}, "quantization_config.lm_head"),
    ({"quant_method": "awq", "bits": 8, "group_size": 128}, "quantization_config.bits"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "quantization_config.version"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, "quantization_config.weight_block_size"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": True}, "quantization_config.load_in_4bit"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "int4"},
     "quantization_config.bnb_4bit_quant_type"),
    ([4], "quantization_config"),
])
def test_bad_quantization_config_names_field_value_and_file(qc, field):
    with pytest.raises(WorkloadError) as err:
        _quantised(qc)
    msg = str(err.value)
    assert repr(field) in msg and "q.json" in msg


# ---------------------------------------------------------------------------------------------
# Context limit from rope_scaling
# ---------------------------------------------------------------------------------------------

LLAMA_TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 4096}


@pytest.mark.parametrize("rope, tokens", [
    (None, 4096),
    ({"type": "linear", "factor": 4.0}, 16384),  # positions interpolated 4x
    ({"rope_type": "dynamic", "factor": 2.0}, 8192),
    ({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, 8192),  # original x factor
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 512}, 4096),  # already in it
    ({"type": "longrope", "short_factor": [1.0], "long_factor": [4.0]}, 4096),
])
def test_max_context_tokens_follows_rope_scaling(rope, tokens):
    spec = spec_from_hf_config({**LLAMA_TINY, "rope_scaling": rope}, name="t")
    assert spec.max_context_tokens == tokens and spec.max_positions == 4096


@pytest.mark.parametrize("rope, match", [
    ({"type": "ntk-by-parts", "factor": 2.0}, "rope_scaling.rope_type"),
    ({"type": "linear", "factor": 0}, "rope_scaling.factor.*positive number"),
    ({"type": "linear", "factor": "2"}, "rope_scaling.factor"),
    ({"type": "linear"}, "'rope_scaling.factor' is missing"),
    ("linear", "'rope_scaling' must be an object"),
])
def test_bad_rope_scaling_is_an_error(rope, match):
    with pytest.raises(WorkloadError, match=match):
        spec_from_hf_config({**LLAMA_TINY, "rope_scaling": rope}, name="t", file="t.json")


# ---------------------------------------------------------------------------------------------
# Config errors: every count is a positive integer, and the rules between fields hold
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -8, 4.5, "8", True])
def test_bad_num_key_value_heads_is_an_error_not_multi_head(bad):
    with pytest.raises(WorkloadError, match=r"'num_key_value_heads' must be a positive integer") as err:
        spec_from_hf_config({**LLAMA_TINY, "num_key_value_heads": bad}, name="t", file="t.json")
    assert repr(bad) in str(err.value) and "t.json" in str(err.value)


@pytest.mark.parametrize("bad", [64.5, -64, 0, "64"])
def test_bad_head_dim_is_an_error(bad):
    with pytest.raises(WorkloadError, match=r"'head_dim' must be a positive integer"):
        spec_from_hf_config({**LLAMA_TINY, "head_dim": bad}, name="t")


def test_head_dim_is_never_truncated_from_hidden_over_heads():
    cfg = {**LLAMA_TINY, "hidden_size": 2048, "num_attention_heads": 48}
    with pytest.raises(WorkloadError, match=r"'hidden_size' must be a multiple of num_attention_heads \(48\)"):
        spec_from_hf_config(cfg, name="t")
    # With an explicit head_dim the query width may differ from hidden (o_proj maps it back).
    spec = spec_from_hf_config({**cfg, "head_dim": 64}, name="t")
    assert spec.q_dim == 3072 and spec.attention_params() == 2048 * 3072 * 2 + 2 * 2048 * 3072
    with pytest.raises(WorkloadError, match="'hidden_size' must be a multiple"):  # phi3 has no head_dim
        spec_from_hf_config({**cfg, "model_type": "phi3", "head_dim": 64}, name="t")
    with pytest.raises(WorkloadError, match="'n_embd' must be a multiple of n_head"):
        spec_from_hf_config({"model_type": "gpt2", "n_layer": 2, "n_embd": 100, "n_head": 3, "n_positions": 8,
                             "vocab_size": 10}, name="t")


@pytest.mark.parametrize("field, bad, match", [
    ("num_experts_per_tok", 9, r"'num_experts_per_tok' must be <= the number of experts \(8\)"),
    ("num_local_experts", 0, "'num_local_experts' must be a positive integer"),
])
def test_moe_fields_are_checked(field, bad, match):
    cfg = {**LLAMA_TINY, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, field: bad}
    with pytest.raises(WorkloadError, match=match):
        spec_from_hf_config(cfg, name="t")


@pytest.mark.parametrize("bad", [[4], [-1], ["0"], [1, 1], "0"])
def test_bad_mlp_only_layers_is_an_error(bad):
    cfg = {**LLAMA_TINY, "model_type": "qwen3_moe", "num_hidden_layers": 4, "num_experts": 4,
           "num_experts_per_tok": 2, "moe_intermediate_size": 8, "mlp_only_layers": bad}
    with pytest.raises(WorkloadError, match=r"'mlp_only_layers' must be a list of distinct layer indices in \[0, 4\)"):
        spec_from_hf_config(cfg, name="t")


DEEPSEEK_TINY = {"model_type": "deepseek_v3", "num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
                 "intermediate_size": 128, "vocab_size": 100, "q_lora_rank": 16, "kv_lora_rank": 32,
                 "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": 4,
                 "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                 "first_k_dense_replace": 1, "moe_layer_freq": 1}


@pytest.mark.parametrize("field, bad", [
    ("first_k_dense_replace", -1), ("n_shared_experts", "1"), ("kv_lora_rank", 0), ("qk_rope_head_dim", 4.0),
    ("moe_layer_freq", 0), ("num_experts_per_tok", 5), ("num_key_value_heads", 3),
])
def test_bad_deepseek_fields_are_errors(field, bad):
    with pytest.raises(WorkloadError, match=field):
        spec_from_hf_config({**DEEPSEEK_TINY, field: bad}, name="t")


def test_deepseek_tiny_by_hand_with_q_compression_and_moe_layer_freq():
    spec = spec_from_hf_config(DEEPSEEK_TINY, name="t")
    # q_a 64*16 + norm 16 + q_b 16*4*12; kv_a 64*36 + norm 32; kv_b 32*4*16; o 4*8*64
    attention = 64 * 16 + 16 + 16 * 48 + 64 * 36 + 32 + 32 * 64 + 32 * 64
    assert spec.attention_params() == attention == 8_240
    moe_mlp = 4 * 3 * 64 * 16 + 3 * 64 * 16 + 64 * 4 + 4  # routed, shared, router, e_score bias
    assert spec.mlp_params() == moe_mlp and spec.dense_mlp_params() == 3 * 64 * 128
    assert spec.layer_params_total() == 3 * (attention + 2 * 64) + 3 * 64 * 128 + 2 * moe_mlp
    # moe_layer_freq 2: MoE only where layer_idx >= 1 and layer_idx % 2 == 0 -> layer 2
    assert spec_from_hf_config({**DEEPSEEK_TINY, "moe_layer_freq": 2}, name="t").n_dense_layers == 2
    assert spec_from_hf_config({**DEEPSEEK_TINY, "n_routed_experts": None}, name="t").n_experts == 1


@pytest.mark.parametrize("field, bad", [("tie_word_embeddings", "yes"), ("attention_bias", 1)])
def test_bad_boolean_field_is_an_error(field, bad):
    with pytest.raises(WorkloadError, match=f"'{field}' must be true or false"):
        spec_from_hf_config({**LLAMA_TINY, field: bad}, name="t")


def test_gpt2_cross_attention_is_rejected():
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 8, "vocab_size": 10,
           "add_cross_attention": True}
    with pytest.raises(WorkloadError, match="add_cross_attention"):
        spec_from_hf_config(cfg, name="t")


def test_attention_kind_of_each_cache_layout():
    assert load_model("llama-2-7b").attention_kind is AttentionKind.MHA
    assert load_model("llama-3-8b").attention_kind is AttentionKind.GQA
    assert load_model("falcon-7b").attention_kind is AttentionKind.GQA  # multi-query: 1 KV head
    assert load_model("deepseek-v3").attention_kind is AttentionKind.MLA
    assert load_model("deepseek-v3").summary()["attention_kind"] == "mla"
