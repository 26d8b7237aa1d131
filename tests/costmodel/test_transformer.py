"""Transformer specs from Hugging Face configs: parameter counts, KV bytes, and config errors."""

from __future__ import annotations

import json

import pytest

from costmodel import TransformerSpec, WorkloadError, list_models, load_model, model_info, spec_from_hf_config


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
    assert spec.kv_elements_per_token() == 2 * spec.n_kv_heads * spec.head_dim
    assert spec.is_gqa == (spec.n_kv_heads < spec.n_heads)
    assert spec.total_params() == spec.n_layers * spec.layer_params() + spec.head_params()
    summary = spec.summary()
    assert summary["kv_bytes_per_token"] == summary["kv_bytes_per_token_per_layer"] * spec.n_layers


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
