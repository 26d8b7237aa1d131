"""Transformer specs from Hugging Face ``config.json`` files, and their exact parameter and byte counts.

Supported ``model_type`` values (:data:`FAMILIES`):

* llama, mistral, qwen2, mixtral: rotary, RMSNorm, gated MLP, GQA/MQA, MoE (mixtral).
* gemma, gemma2, gemma3_text, gemma3 (the text model of the multimodal config): tied embeddings,
  ``head_dim`` independent of hidden/heads, four norms per layer (gemma2/3), q/k norms (gemma3),
  sliding-window layers (gemma2/3).
* phi3 (fused qkv and gate/up projections: same counts as separate ones), qwen3 (q/k norms),
  qwen3_moe (routed experts, ``mlp_only_layers``, ``decoder_sparse_step``).
* deepseek_v2, deepseek_v3: multi-head latent attention (MLA) and DeepSeekMoE (shared experts,
  dense first layers).
* opt, gpt_neox, gpt2 (learned positions, LayerNorm, biases), falcon (multi-query / grouped KV,
  parallel attention, ALiBi), starcoder2 (GQA, LayerNorm, biases, non-gated MLP).

Every count follows the module structure of the Hugging Face ``transformers`` modeling code of the
family (``modeling_<family>.py``); the bundled configs are checked against published parameter
counts in ``tests/costmodel/test_transformer.py``.

Layers that differ
------------------
The planner treats layers as identical. DeepSeek's dense first layers and qwen3_moe's
``mlp_only_layers`` make them differ in size: :meth:`TransformerSpec.layer_params_total` is the exact
integer sum over the decoder layers, :meth:`TransformerSpec.layer_params` its mean (an ``int`` when
the layers are equal, else a ``float``), and :meth:`TransformerSpec.total_params` the exact integer
total. Sliding-window layers (gemma2/3, mistral, phi3, starcoder2) have the same weights as full
layers; :attr:`TransformerSpec.sliding_window` and :attr:`TransformerSpec.sliding_window_layers` say
which would cache at most ``sliding_window`` tokens, but :meth:`TransformerSpec.kv_elements_per_token`
and the KV accounting built on it treat every layer as a full-context layer for now (an upper bound).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmodel.errors import WorkloadError
from hwprofiles.safe_io import CONFIG_MAX_BYTES, load_json, load_yaml, read_text

MODELS_DIR = Path(__file__).parent / "models"

FAMILIES = (
    "llama", "mistral", "qwen2", "mixtral", "opt", "gpt_neox", "gemma", "gemma2", "gemma3_text", "gemma3",
    "phi3", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt2", "falcon", "starcoder2",
)

# Storage of the quantisation formats, per their reference implementations (see QuantScheme).
INT32_BYTES = 4  # GPTQ/AWQ pack low-bit integers into int32 words
FP16_BYTES = 2  # GPTQ/AWQ scales are float16
FP32_BYTES = 4  # fp8 block scales (weight_scale_inv), bitsandbytes absmax and int8 row scales
BNB_4BIT_BLOCKSIZE = 64  # bitsandbytes Params4bit default blocksize (QLoRA, arXiv:2305.14314, §3)
BNB_NESTED_BLOCKSIZE = 256  # double quantisation: 8-bit absmax in blocks of 256 (QLoRA §3)

# Gemma3TextConfig defaults (transformers/models/gemma3/configuration_gemma3.py); the multimodal
# gemma-3 configs on the Hub leave most text fields at these defaults.
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131_072,
    "tie_word_embeddings": True, "attention_bias": False, "sliding_window": 4096, "sliding_window_pattern": 6,
}

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "su", "llama3", "mrope")


class AttentionKind(enum.StrEnum):
    """How keys and values are cached: per head (MHA), per KV-head group (GQA/MQA), or as a latent (MLA)."""

    MHA = "mha"
    GQA = "gqa"
    MLA = "mla"


class QuantMethod(enum.StrEnum):
    """Weight storage formats read from ``quantization_config``."""

    GPTQ = "gptq"
    AWQ = "awq"
    FP8 = "fp8"
    BNB_4BIT = "bnb-4bit"
    BNB_8BIT = "bnb-8bit"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantScheme:
    """The storage of one quantised weight matrix, from a config's ``quantization_config``.

    Exact bytes of one ``in_features x out_features`` matrix (``K x N``), see :meth:`linear_bytes`;
    per weight element that is, with ``g`` the group size (``K`` when ``group_size`` is -1) and
    ``b`` the bits:

    * GPTQ (AutoGPTQ ``QuantLinear``: ``qweight`` int32 ``[K*b/32, N]``, ``qzeros`` int32
      ``[K/g, N*b/32]``, ``scales`` fp16 ``[K/g, N]``, ``g_idx`` int32 ``[K]``):
      ``b/8 + (2 + b/8)/g + 4/N`` bytes.
    * AWQ (AutoAWQ ``WQLinear_GEMM``: ``qweight`` int32 ``[K, N/8]``, ``qzeros`` int32
      ``[K/g, N/8]``, ``scales`` fp16 ``[K/g, N]``): ``b/8 + (2 + b/8)/g`` bytes (``2/g`` without
      zero points).
    * fp8 (DeepSeek-V3 ``README_WEIGHTS.md``: e4m3 weights, one fp32 ``weight_scale_inv`` per
      ``weight_block_size`` block): ``1 + 4/(block_n * block_k)`` bytes; one fp32 scale per matrix
      without blocks, plus one fp32 input scale with ``activation_scheme: static``.
    * bitsandbytes 4-bit (nf4/fp4, ``Params4bit``, blocksize 64 with an fp32 absmax per block):
      ``1/2 + 4/64`` bytes; with double quantisation (QLoRA, arXiv:2305.14314, §3) the absmax is
      8-bit with an fp32 constant per 256 blocks: ``1/2 + 1/64 + 4/(64*256)`` bytes. Per-tensor
      constants (the 16-entry code table, the offset) are left out: under 1.1 kB a matrix.
    * bitsandbytes 8-bit (LLM.int8(), arXiv:2208.07339: int8 weights and an fp32 scale per output
      row): ``1 + 4/K`` bytes.

    Examples
    --------
    >>> gptq = QuantScheme(method=QuantMethod.GPTQ, bits=4, group_size=128)
    >>> gptq.linear_bytes(4096, 4096)  # 8 MiB of int4 + 32 groups x 4096 x (2 B scale + 0.5 B zero) + 16 KiB g_idx
    8732672
    >>> gptq.bytes_per_weight(4096, 4096) == 4 / 8 + (2 + 4 / 8) / 128 + 4 / 4096
    True
    """

    method: QuantMethod
    bits: int
    group_size: int = 0  # 0: one group per column (GPTQ/AWQ group_size -1)
    zero_point: bool = True
    block: tuple[int, int] | None = None  # fp8 weight_block_size (out, in)
    static_activation_scale: bool = False
    double_quant: bool = False
    bnb_type: str = ""

    def summary(self) -> str:
        """A one-line description, e.g. ``'gptq 4-bit g128'``."""
        if self.method in (QuantMethod.GPTQ, QuantMethod.AWQ):
            group = f"g{self.group_size}" if self.group_size else "per-channel"
            return f"{self.method.value} {self.bits}-bit {group}"
        if self.method is QuantMethod.FP8:
            return "fp8 " + (f"block {self.block[0]}x{self.block[1]}" if self.block else "per-tensor")
        if self.method is QuantMethod.BNB_4BIT:
            return f"bnb {self.bnb_type}" + (" double-quant" if self.double_quant else "")
        return "bnb int8"

    def linear_bytes(self, in_features: int, out_features: int) -> int:
        """Stored bytes of one quantised ``in_features x out_features`` weight matrix (formulas above)."""
        k, n = in_features, out_features
        if self.method in (QuantMethod.GPTQ, QuantMethod.AWQ):
            groups = math.ceil(k / (self.group_size or k))
            if self.method is QuantMethod.GPTQ:
                qweight = math.ceil(k * self.bits / 32) * n * INT32_BYTES
                qzeros = groups * math.ceil(n * self.bits / 32) * INT32_BYTES
                return qweight + qzeros + groups * n * FP16_BYTES + k * INT32_BYTES
            per_word = 32 // self.bits
            qzeros = groups * math.ceil(n / per_word) * INT32_BYTES if self.zero_point else 0
            return k * math.ceil(n / per_word) * INT32_BYTES + qzeros + groups * n * FP16_BYTES
        if self.method is QuantMethod.FP8:
            scales = math.ceil(n / self.block[0]) * math.ceil(k / self.block[1]) if self.block else 1
            return k * n + (scales + self.static_activation_scale) * FP32_BYTES
        if self.method is QuantMethod.BNB_4BIT:
            elements = k * n
            blocks = math.ceil(elements / BNB_4BIT_BLOCKSIZE)
            absmax = (blocks + math.ceil(blocks / BNB_NESTED_BLOCKSIZE) * FP32_BYTES if self.double_quant
                      else blocks * FP32_BYTES)
            return math.ceil(elements / 2) + absmax
        return k * n + n * FP32_BYTES

    def bytes_per_weight(self, in_features: int, out_features: int) -> float:
        """Stored bytes per weight element of an ``in_features x out_features`` matrix."""
        return self.linear_bytes(in_features, out_features) / (in_features * out_features)


# Shapes of the quantisable (linear) weights of a layer: (in_features, out_features, count).
Linears = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformerSpec:
    """The architecture numbers that decide FLOPs and bytes; all counts are element counts.

    ``intermediate`` is the MLP width of a dense model and, in a MoE model, the width of one routed
    expert (Mixtral ``intermediate_size``, Qwen3-MoE and DeepSeek ``moe_intermediate_size``): the
    width the per-expert cost code multiplies by. A MoE model's dense MLP layers (DeepSeek's first
    ``first_k_dense_replace`` layers, Qwen3-MoE ``mlp_only_layers``) have width
    ``dense_intermediate`` and number ``n_dense_layers``. Each MoE layer also holds
    ``shared_experts`` always-active experts of width ``intermediate`` (DeepSeek stores them as one
    MLP of width ``shared_experts * intermediate``: the same count).

    For MLA (``attention_kind == "mla"``) ``n_kv_heads == n_heads`` and ``head_dim`` is the
    per-head query/key width ``qk_nope_head_dim + qk_rope_head_dim``, so ``q_dim`` is the query
    projection width; ``kv_dim`` is then the width of the *materialised* keys, which are not what
    is cached: use :meth:`kv_elements_per_token` and :attr:`attention_score_dim` /
    :attr:`attention_value_dim` for cache bytes and attention FLOPs.
    """

    name: str
    family: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_positions: int
    gated_mlp: bool
    n_experts: int = 1
    experts_per_token: int = 1
    shared_experts: int = 0
    dense_intermediate: int = 0  # MLP width of the dense layers of a MoE model
    n_dense_layers: int = 0  # layers of a MoE model with a dense MLP
    expert_score_bias: bool = False  # DeepSeek-V3 e_score_correction_bias: one value per routed expert
    tied_embeddings: bool = False
    layer_norm: bool = False  # LayerNorm (weight + bias) instead of RMSNorm (weight)
    norms_per_layer: int = 2  # hidden-wide norms in a layer (gemma2/3: 4; falcon parallel attention: 1)
    qk_norm: bool = False  # q_norm and k_norm of head_dim weights (qwen3, gemma3)
    qkv_bias: bool = False
    o_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False
    linear_bias: bool = False  # biases on every linear layer (OPT, GPT-NeoX, GPT-2, StarCoder2)
    learned_positions: int = 0  # rows of a learned position table (OPT: max_positions + 2; GPT-2: n_positions)
    q_lora_rank: int | None = None  # MLA query compression rank; None: a full-rank q_proj
    kv_lora_rank: int = 0  # MLA latent width; 0: not MLA
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    mtp_layers: int = 0  # DeepSeek-V3 multi-token-prediction modules: in the checkpoint, not counted
    sliding_window: int | None = None  # tokens a sliding-window layer attends to
    sliding_window_layers: int = 0  # how many layers use the sliding window
    context_tokens: int = 0  # longest supported context; 0: max_positions
    quantization: str = "none"  # summary of quantization_config, e.g. "gptq 4-bit g128"
    quant: QuantScheme | None = None
    source: str = ""

    # ---------------------------------------------------------------- attention shape

    @property
    def q_dim(self) -> int:
        """Width of the queries of one token: ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V) per token: ``n_kv_heads * head_dim`` (for MLA, of the materialised K)."""
        return self.n_kv_heads * self.head_dim

    @property
    def is_gqa(self) -> bool:
        return self.n_kv_heads < self.n_heads

    @property
    def attention_kind(self) -> AttentionKind:
        """``mla`` with a latent KV cache, else ``gqa`` when KV heads are shared (MQA included), else ``mha``."""
        if self.kv_lora_rank:
            return AttentionKind.MLA
        return AttentionKind.GQA if self.is_gqa else AttentionKind.MHA

    @property
    def attention_score_dim(self) -> int:
        """Per-head width of the query-key dot product at decode, in elements.

        ``head_dim`` for MHA/GQA; for MLA with the up-projections absorbed into the query and output
        (DeepSeek-V2, arXiv:2405.04434, §2.1.2) ``kv_lora_rank + qk_rope_head_dim``.
        """
        return self.kv_lora_rank + self.qk_rope_head_dim if self.kv_lora_rank else self.head_dim

    @property
    def attention_value_dim(self) -> int:
        """Per-head width of the weighted value sum at decode: ``head_dim``, or ``kv_lora_rank`` for absorbed MLA."""
        return self.kv_lora_rank or self.head_dim

    def attention_flop_per_query_key(self, *, absorbed: bool = True) -> int:
        """FLOPs of one layer's attention for one (query token, cached token) pair.

        ``2 * n_heads * (score_dim + value_dim)`` (a multiply-add per element of QK^T and of PV).
        For MLA, ``absorbed=True`` is the decode form over the latent cache; ``absorbed=False`` the
        prefill form over materialised keys (``qk_nope + qk_rope``) and values (``v_head_dim``).

        >>> llama3 = TransformerSpec(name="x", family="llama", n_layers=32, hidden=4096, n_heads=32,
        ...     n_kv_heads=8, head_dim=128, intermediate=14336, vocab=128256, max_positions=8192,
        ...     gated_mlp=True)
        >>> llama3.attention_flop_per_query_key() == 4 * llama3.q_dim
        True
        """
        if self.kv_lora_rank and not absorbed:
            return 2 * self.n_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)
        return 2 * self.n_heads * (self.attention_score_dim + self.attention_value_dim)

    def kv_elements_per_token(self) -> int:
        """Cached elements per token per layer: ``2 * n_kv_heads * head_dim`` (K and V), or for MLA
        ``kv_lora_rank + qk_rope_head_dim`` (the latent and the decoupled rope key, shared by all heads).

        >>> llama3 = TransformerSpec(name="x", family="llama", n_layers=32, hidden=4096, n_heads=32,
        ...     n_kv_heads=8, head_dim=128, intermediate=14336, vocab=128256, max_positions=8192,
        ...     gated_mlp=True)
        >>> llama3.kv_elements_per_token(), llama3.hidden
        (2048, 4096)
        """
        if self.kv_lora_rank:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_dim

    @property
    def max_context_tokens(self) -> int:
        """Longest context the config supports, in tokens.

        ``max_position_embeddings`` times the ``rope_scaling`` factor for ``linear`` and ``dynamic``
        scaling, ``original_max_position_embeddings * factor`` for ``yarn`` (vLLM's
        ``_get_and_verify_max_len`` rule), and ``max_position_embeddings`` itself for ``llama3``,
        ``longrope``/``su`` and gemma3 (whose configs already give the extended length: Llama 3.1
        131072, Gemma 3 4B+ "128K"). Not enforced here: the workload should refuse longer contexts.
        """
        return self.context_tokens or self.max_positions

    @property
    def expert_intermediate(self) -> int:
        """Width of one routed (or shared) expert's MLP; 0 for a dense model."""
        return self.intermediate if self.n_experts > 1 else 0

    # ---------------------------------------------------------------- parameter counts

    def attention_linears(self) -> Linears:
        """The attention projections of one layer as ``(in_features, out_features, count)``."""
        h = self.hidden
        if self.kv_lora_rank:
            heads, qk = self.n_heads, self.qk_nope_head_dim + self.qk_rope_head_dim
            r = self.q_lora_rank
            q = ((h, r, 1), (r, heads * qk, 1)) if r else ((h, heads * qk, 1),)
            return (*q, (h, self.kv_lora_rank + self.qk_rope_head_dim, 1),
                    (self.kv_lora_rank, heads * (self.qk_nope_head_dim + self.v_head_dim), 1),
                    (heads * self.v_head_dim, h, 1))
        return (h, self.q_dim, 1), (h, self.kv_dim, 2), (self.q_dim, h, 1)

    def _attention_other_params(self) -> int:
        """Attention parameters outside the projection matrices: biases and norms."""
        h = self.hidden
        if self.kv_lora_rank:
            # q_a_layernorm and kv_a_layernorm; attention_bias adds biases to q_a, kv_a and o projections.
            params = (self.q_lora_rank or 0) + self.kv_lora_rank
            if self.qkv_bias:
                params += (self.q_lora_rank or 0) + self.kv_lora_rank + self.qk_rope_head_dim
            return params + (h if self.o_bias else 0)
        params = self.q_dim + 2 * self.kv_dim if self.qkv_bias or self.linear_bias else 0
        params += h if self.o_bias or self.linear_bias else 0
        return params + (2 * self.head_dim if self.qk_norm else 0)

    def attention_params(self) -> int:
        """Parameters of one layer's attention block (projections, biases, q/k and latent norms)."""
        return sum(i * o * c for i, o, c in self.attention_linears()) + self._attention_other_params()

    def _mlp_linears(self, width: int, experts: int) -> Linears:
        h, up = self.hidden, 2 if self.gated_mlp else 1
        return (h, width, up * experts), (width, h, experts)

    def _mlp_bias_params(self, width: int) -> int:
        if not (self.linear_bias or self.mlp_bias):
            return 0
        return (2 if self.gated_mlp else 1) * width + self.hidden

    def mlp_linears(self) -> Linears:
        """The MLP matrices of one (MoE) layer as ``(in_features, out_features, count)``; the router is not listed."""
        if self.n_experts == 1:
            return self._mlp_linears(self.intermediate, 1)
        shared = self._mlp_linears(self.shared_experts * self.intermediate, 1) if self.shared_experts else ()
        return (*self._mlp_linears(self.intermediate, self.n_experts), *shared)

    def mlp_params(self) -> int:
        """Parameters of the MLP block of one layer: all experts, shared experts and the router for MoE."""
        params = sum(i * o * c for i, o, c in self.mlp_linears())
        if self.n_experts == 1:
            return params + self._mlp_bias_params(self.intermediate)
        params += self.n_experts * self._mlp_bias_params(self.intermediate)
        params += self._mlp_bias_params(self.shared_experts * self.intermediate) if self.shared_experts else 0
        return params + self.hidden * self.n_experts + (self.n_experts if self.expert_score_bias else 0)

    def dense_mlp_params(self) -> int:
        """Parameters of the MLP of one dense layer of a MoE model (0 when it has none)."""
        if not self.n_dense_layers:
            return 0
        return sum(i * o * c for i, o, c in self._mlp_linears(self.dense_intermediate, 1)) + \
            self._mlp_bias_params(self.dense_intermediate)

    def norm_params(self) -> int:
        """Parameters of one hidden-wide norm: ``hidden`` (RMSNorm) or ``2 * hidden`` (LayerNorm)."""
        return (2 if self.layer_norm else 1) * self.hidden

    def _shared_layer_params(self) -> int:
        return self.attention_params() + self.norms_per_layer * self.norm_params()

    def layer_params_total(self) -> int:
        """Exact parameter count of all decoder layers together."""
        moe_layers = self.n_layers - self.n_dense_layers
        return (self.n_layers * self._shared_layer_params() + moe_layers * self.mlp_params()
                + self.n_dense_layers * self.dense_mlp_params())

    def layer_params(self) -> int | float:
        """Parameters of one decoder layer: the exact mean over layers.

        An ``int`` when every layer has the same count; a ``float`` when they differ (DeepSeek's
        dense first layers, Qwen3-MoE ``mlp_only_layers``), so that
        ``n_layers * layer_params() + head_params()`` is ``total_params()`` up to float rounding
        (exact for the bundled models); :meth:`layer_params_total` is the exact integer.
        """
        quotient, remainder = divmod(self.layer_params_total(), self.n_layers)
        return quotient if remainder == 0 else self.layer_params_total() / self.n_layers

    def head_params(self) -> int:
        """Embeddings, position table, final norm and the LM head (if not tied)."""
        embed = self.vocab * self.hidden
        lm_head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return embed + lm_head + self.learned_positions * self.hidden + self.norm_params()

    def total_params(self) -> int:
        """Exact parameter count (for DeepSeek-V3 without the MTP module, see ``mtp_layers``)."""
        return self.layer_params_total() + self.head_params()

    def active_mlp_params_per_token(self) -> int:
        """MLP parameters one token multiplies with in a MoE layer: top-k routed experts, the shared
        experts and the router (all of the MLP for a dense model)."""
        if self.n_experts == 1:
            return self.mlp_params()
        per_expert = sum(i * o * c for i, o, c in self._mlp_linears(self.intermediate, 1))
        per_expert += self._mlp_bias_params(self.intermediate)
        shared = self.mlp_params() - self.n_experts * per_expert - self.hidden * self.n_experts
        shared -= self.n_experts if self.expert_score_bias else 0
        return self.experts_per_token * per_expert + shared + self.hidden * self.n_experts

    # ---------------------------------------------------------------- bytes

    def _layers_linears(self) -> tuple[tuple[int, Linears], ...]:
        moe = (self.n_layers - self.n_dense_layers, self.attention_linears() + self.mlp_linears())
        if not self.n_dense_layers:
            return (moe,)
        dense = (self.n_dense_layers, self.attention_linears() + self._mlp_linears(self.dense_intermediate, 1))
        return moe, dense

    def layers_weight_bytes(self, dtype_bytes: int) -> int:
        """Exact stored bytes of all decoder layers' weights.

        Linear weights at the ``quantization_config`` format (:class:`QuantScheme`); everything else
        (norms, biases, the MoE router, DeepSeek's expert score bias) at ``dtype_bytes``.

        Parameters
        ----------
        dtype_bytes : int
            Bytes per element of the unquantised weights (2 for fp16/bf16).
        """
        if self.quant is None:
            return self.layer_params_total() * dtype_bytes
        linear_elements = quant_bytes = 0
        for layers, linears in self._layers_linears():
            for k, n, count in linears:
                linear_elements += layers * count * k * n
                quant_bytes += layers * count * self.quant.linear_bytes(k, n)
        return quant_bytes + (self.layer_params_total() - linear_elements) * dtype_bytes

    def weight_bytes_per_param(self, dtype_bytes: int) -> float:
        """Mean stored bytes per decoder-layer parameter.

        ``dtype_bytes`` without a ``quantization_config``; else the quantised linear weights plus the
        unquantised rest, so ``layer_params() * weight_bytes_per_param(dt)`` is one layer's bytes.

        Parameters
        ----------
        dtype_bytes : int
            Bytes per element of the unquantised weights (2 for fp16/bf16).

        Examples
        --------
        >>> round(load_model("llama-2-7b-gptq").weight_bytes_per_param(2), 4)
        0.5203
        """
        if self.quant is None:
            return float(dtype_bytes)
        return self.layers_weight_bytes(dtype_bytes) / self.layer_params_total()

    def head_weight_bytes_per_param(self, dtype_bytes: int) -> float:
        """Stored bytes per parameter of the embeddings and LM head: ``dtype_bytes``.

        AWQ, GPTQ and bitsandbytes skip ``lm_head`` and embeddings by default, and DeepSeek's fp8
        checkpoints keep them in bf16; a config that quantises them is not supported.
        """
        return float(dtype_bytes)

    def summary(self, dtype_bytes: int = 2) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "params": self.total_params(),
            "layers": self.n_layers,
            "hidden": self.hidden,
            "heads": self.n_heads,
            "kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "attention_kind": self.attention_kind.value,
            "intermediate": self.intermediate,
            "vocab": self.vocab,
            "experts": self.n_experts,
            "experts_per_token": self.experts_per_token,
            "shared_experts": self.shared_experts,
            "max_context_tokens": self.max_context_tokens,
            "sliding_window": self.sliding_window,
            "sliding_window_layers": self.sliding_window_layers,
            "quantization": self.quantization,
            "dtype_bytes": dtype_bytes,
            "kv_bytes_per_token_per_layer": self.kv_elements_per_token() * dtype_bytes,
            "kv_bytes_per_token": self.kv_elements_per_token() * dtype_bytes * self.n_layers,
            "activation_bytes_per_token_per_layer": self.hidden * dtype_bytes,
            "weight_bytes_per_layer": self.layer_params() * self.weight_bytes_per_param(dtype_bytes),
        }


# ---------------------------------------------------------------------------------------------
# Reading and validating config fields
# ---------------------------------------------------------------------------------------------

_REQUIRED = object()


class _Fields:
    """Typed, validated reads from one config mapping; errors name the field, rule, value and file."""

    def __init__(self, cfg: dict[str, Any], file: str, prefix: str = ""):
        self.cfg, self.file, self.prefix = cfg, file, prefix

    def error(self, key: str, rule: str, value: Any) -> WorkloadError:
        return WorkloadError(f"config field {self.prefix + key!r} {rule}, got {value!r} ({self.file})")

    def _value(self, key: str, default: Any, aliases: tuple[str, ...] = ()) -> tuple[str, Any, bool]:
        """(the name found, its value, whether the config gave it); absent and null read as ``default``."""
        for name in (key, *aliases):
            if name in self.cfg and self.cfg[name] is not None:
                return name, self.cfg[name], True
        if default is _REQUIRED:
            raise WorkloadError(f"config field {self.prefix + key!r} is missing ({self.file})")
        return key, default, False

    def int(self, key: str, default: Any = _REQUIRED, *, minimum: int = 1, aliases: tuple[str, ...] = ()) -> Any:
        """A count: an integer ``>= minimum`` (not a JSON bool or float); ``default`` when absent or null."""
        name, value, found = self._value(key, default, aliases)
        if found and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            rule = "must be a positive integer" if minimum == 1 else f"must be an integer >= {minimum}"
            raise self.error(name, rule, value)
        return value

    def bool(self, key: str, default: bool) -> bool:
        name, value, _ = self._value(key, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false", value)
        return value

    def number(self, key: str, default: Any = _REQUIRED) -> float:
        """A positive real number."""
        name, value, _ = self._value(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise self.error(name, "must be a positive number", value)
        return float(value)

    def str(self, key: str, default: Any, choices: tuple[str, ...]) -> Any:
        name, value, _ = self._value(key, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}", value)
        return value

    def int_list(self, key: str, *, below: int) -> tuple[int, ...]:
        """A list of distinct integers in ``[0, below)`` (layer indices); empty when absent."""
        name, value, _ = self._value(key, [])
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < below
                                              for v in value) or len(set(value)) != len(value):
            raise self.error(name, f"must be a list of distinct layer indices in [0, {below})", value)
        return tuple(value)


def _heads(f: _Fields, hidden: int, heads: int, *, kv_default: int, head_dim_key: str | None = "head_dim",
           head_dim_default: int | None = None) -> tuple[int, int]:
    """KV heads and head_dim, validated; head_dim from hidden/heads only when that divides exactly."""
    kv_heads = f.int("num_key_value_heads", kv_default)
    if heads % kv_heads:
        raise WorkloadError(
            f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads}) ({f.file})")
    if head_dim_key is not None and (f.cfg.get(head_dim_key) is not None or head_dim_default is not None):
        return kv_heads, f.int(head_dim_key, head_dim_default)
    return kv_heads, _divided_head_dim(f, hidden, heads)


def _divided_head_dim(f: _Fields, hidden: int, heads: int) -> int:
    if hidden % heads:
        raise WorkloadError(f"config field {f.prefix + 'hidden_size'!r} must be a multiple of num_attention_heads "
                            f"({heads}) to give head_dim, got {hidden} ({f.file})")
    return hidden // heads


def _sliding_layers(f: _Fields, family: str, layers: int) -> tuple[int | None, int]:
    """(sliding_window, number of sliding-window layers), per the family's modeling code."""
    if f.cfg.get("layer_types") is not None:
        types = f.cfg["layer_types"]
        allowed = ("full_attention", "sliding_attention")
        if not isinstance(types, list) or len(types) != layers or any(t not in allowed for t in types):
            raise f.error("layer_types", f"must list one of {', '.join(allowed)} per layer ({layers})", types)
        count = types.count("sliding_attention")
    elif family == "gemma2":
        count = (layers + 1) // 2  # layers 0, 2, 4, ... slide (Gemma2DecoderLayer: not layer_idx % 2)
    elif family == "gemma3_text":
        pattern = f.int("sliding_window_pattern", 6)
        count = layers - layers // pattern  # every pattern-th layer (1-based) is global
    elif family in ("qwen2", "qwen3", "qwen3_moe"):
        use = f.bool("use_sliding_window", False)
        count = max(0, layers - f.int("max_window_layers", layers, minimum=0)) if use else 0
    elif family in ("mistral", "mixtral", "phi3", "starcoder2"):
        count = layers if f.cfg.get("sliding_window") is not None else 0
    else:
        count = 0
    if not count:
        return None, 0
    default = 4096 if family in ("gemma2", "gemma3_text") else _REQUIRED
    return f.int("sliding_window", default), count


def _context_tokens(f: _Fields, family: str, max_pos: int) -> int:
    """The context limit implied by ``rope_scaling`` (see TransformerSpec.max_context_tokens)."""
    rope = f.cfg.get("rope_scaling")
    if rope is None:
        return max_pos
    if not isinstance(rope, dict):
        raise f.error("rope_scaling", "must be an object or null", rope)
    r = _Fields(rope, f.file, f.prefix + "rope_scaling.")
    kind = r.str("rope_type", rope.get("type", "default"), ROPE_TYPES)
    needs_factor = kind in ("linear", "dynamic", "yarn", "llama3")
    factor = r.number("factor") if needs_factor or rope.get("factor") is not None else 1.0
    if kind in ("linear", "dynamic") and family != "gemma3_text":
        return int(max_pos * factor)
    if kind == "yarn":
        return int(r.int("original_max_position_embeddings", max_pos) * factor)
    return max_pos


def _quantization(cfg: dict[str, Any], file: str) -> tuple[str, QuantScheme | None]:
    qc = cfg.get("quantization_config")
    if qc is None:
        return "none", None
    if not isinstance(qc, dict):
        raise WorkloadError(f"config field 'quantization_config' must be an object, got {qc!r} ({file})")
    q = _Fields(qc, file, "quantization_config.")
    method = qc.get("quant_method")
    if method is None and (qc.get("load_in_4bit") or qc.get("load_in_8bit")):
        method = "bitsandbytes"  # older bitsandbytes configs carry only the load_in_* flags
    methods = ("gptq", "awq", "fp8", "bitsandbytes")
    if method not in methods:
        raise q.error("quant_method", f"must be one of {', '.join(methods)}", method)
    if method in ("gptq", "awq"):
        allowed = (2, 3, 4, 8) if method == "gptq" else (4,)
        bits = q.int("bits", aliases=("w_bit",))
        if bits not in allowed:
            raise q.error("bits", f"must be one of {', '.join(map(str, allowed))} for {method}", bits)
        group = qc.get("group_size", qc.get("q_group_size", 128))
        if group != -1:
            group = q.int("group_size", 128, aliases=("q_group_size",))
        if q.bool("lm_head", False):
            raise q.error("lm_head", "must be false (a quantised LM head is not supported)", True)
        if method == "awq":
            q.str("version", "gemm", ("gemm", "GEMM", "exllama", "ipex"))
        scheme = QuantScheme(method=QuantMethod(method), bits=bits, group_size=max(group, 0),
                             zero_point=q.bool("zero_point", True) if method == "awq" else True)
    elif method == "fp8":
        block = qc.get("weight_block_size")
        if block is not None and (not isinstance(block, list) or len(block) != 2 or any(
                isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in block)):
            raise q.error("weight_block_size", "must be null or two positive integers", block)
        static = q.str("activation_scheme", "dynamic", ("dynamic", "static")) == "static"
        scheme = QuantScheme(method=QuantMethod.FP8, bits=8, block=tuple(block) if block else None,
                             static_activation_scale=static)
    else:
        four, eight = q.bool("load_in_4bit", False), q.bool("load_in_8bit", False)
        if four == eight:
            raise q.error("load_in_4bit", "must be true for exactly one of load_in_4bit and load_in_8bit",
                          qc.get("load_in_4bit"))
        if eight:
            scheme = QuantScheme(method=QuantMethod.BNB_8BIT, bits=8)
        else:
            scheme = QuantScheme(method=QuantMethod.BNB_4BIT, bits=4,
                                 bnb_type=q.str("bnb_4bit_quant_type", "fp4", ("nf4", "fp4")),
                                 double_quant=q.bool("bnb_4bit_use_double_quant", False))
    return scheme.summary(), scheme


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------


def _common(f: _Fields) -> dict[str, int]:
    return {"layers": f.int("num_hidden_layers"), "hidden": f.int("hidden_size"),
            "heads": f.int("num_attention_heads"), "vocab": f.int("vocab_size")}


def _llama_like(f: _Fields, family: str) -> dict[str, Any]:
    """llama, mistral, qwen2, mixtral, gemma*, phi3, qwen3, qwen3_moe: rotary, RMSNorm, gated MLP."""
    c = _common(f)
    layers, hidden, heads = c["layers"], c["hidden"], c["heads"]
    gemma = family in ("gemma", "gemma2", "gemma3_text")
    head_dim_default = 256 if gemma else 128 if family in ("qwen3", "qwen3_moe") else None
    kv_heads, head_dim = _heads(f, hidden, heads, kv_default=heads, head_dim_default=head_dim_default,
                                head_dim_key=None if family == "phi3" else "head_dim")
    # attention_bias: llama/gemma/qwen3 put it on q, k, v and o; qwen2 has q/k/v biases only.
    attention_bias = family in ("llama", "gemma", "gemma2", "gemma3_text", "qwen3", "qwen3_moe") and \
        f.bool("attention_bias", False)
    out: dict[str, Any] = dict(
        n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
        intermediate=f.int("intermediate_size"), vocab=c["vocab"], gated_mlp=True,
        tied_embeddings=f.bool("tie_word_embeddings", gemma),
        qkv_bias=family == "qwen2" or attention_bias, o_bias=attention_bias,
        mlp_bias=family == "llama" and f.bool("mlp_bias", False),
        norms_per_layer=4 if family in ("gemma2", "gemma3_text") else 2,
        qk_norm=family in ("gemma3_text", "qwen3", "qwen3_moe"),
    )
    if family == "mixtral":
        experts = f.int("num_local_experts", 8)
        out.update(n_experts=experts, experts_per_token=_top_k(f, experts, 2))
    elif family == "qwen3_moe":
        experts = f.int("num_experts")
        dense_only = set(f.int_list("mlp_only_layers", below=layers))
        step = f.int("decoder_sparse_step", 1)
        # Qwen3MoeDecoderLayer: a sparse MoE block unless the layer is in mlp_only_layers or
        # (layer_idx + 1) is not a multiple of decoder_sparse_step.
        dense = sum(1 for i in range(layers) if i in dense_only or (i + 1) % step)
        out.update(n_experts=experts, experts_per_token=_top_k(f, experts),
                   dense_intermediate=out["intermediate"] if dense else 0, n_dense_layers=dense,
                   intermediate=f.int("moe_intermediate_size"))
        if dense == layers:
            out.update(n_experts=1, experts_per_token=1, intermediate=out["dense_intermediate"],
                       dense_intermediate=0, n_dense_layers=0)
    return out


def _top_k(f: _Fields, experts: int, default: Any = _REQUIRED) -> int:
    k = f.int("num_experts_per_tok", default)
    if k > experts:
        raise f.error("num_experts_per_tok", f"must be <= the number of experts ({experts})", k)
    return k


def _deepseek(f: _Fields, family: str) -> dict[str, Any]:
    """deepseek_v2/v3: MLA attention, DeepSeekMoE with shared experts and dense first layers."""
    c = _common(f)
    layers, hidden, heads = c["layers"], c["hidden"], c["heads"]
    kv_heads = f.int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise WorkloadError(
            f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads}) ({f.file})")
    nope, rope = f.int("qk_nope_head_dim"), f.int("qk_rope_head_dim")
    attention_bias = f.bool("attention_bias", False)
    out: dict[str, Any] = dict(
        n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=heads, head_dim=nope + rope,
        intermediate=f.int("intermediate_size"), vocab=c["vocab"], gated_mlp=True,
        tied_embeddings=f.bool("tie_word_embeddings", False), qkv_bias=attention_bias, o_bias=attention_bias,
        q_lora_rank=f.int("q_lora_rank", None), kv_lora_rank=f.int("kv_lora_rank"),
        qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=f.int("v_head_dim"),
        mtp_layers=f.int("num_nextn_predict_layers", 0, minimum=0),
    )
    experts = f.int("n_routed_experts", None)
    if experts is None:
        return out
    first_dense, freq = f.int("first_k_dense_replace", 0, minimum=0), f.int("moe_layer_freq", 1)
    # DeepseekV2/V3DecoderLayer (DeepSeek's modeling_deepseek.py): MoE when
    # layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0.
    moe = sum(1 for i in range(layers) if i >= first_dense and i % freq == 0)
    if not moe:
        return out
    out.update(n_experts=experts, experts_per_token=_top_k(f, experts),
               shared_experts=f.int("n_shared_experts", 0, minimum=0),
               dense_intermediate=out["intermediate"] if moe < layers else 0, n_dense_layers=layers - moe,
               intermediate=f.int("moe_intermediate_size"), expert_score_bias=family == "deepseek_v3")
    return out


def _gpt2(f: _Fields) -> dict[str, Any]:
    """gpt2: Conv1D projections with biases, learned positions, LayerNorm, tied LM head."""
    layers, hidden, heads = f.int("n_layer"), f.int("n_embd"), f.int("n_head")
    if hidden % heads:
        raise f.error("n_embd", f"must be a multiple of n_head ({heads}) to give head_dim", hidden)
    if f.bool("add_cross_attention", False):
        raise f.error("add_cross_attention", "must be false (cross-attention is not modelled)", True)
    positions = f.int("n_positions")
    return dict(n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=heads, head_dim=hidden // heads,
                intermediate=f.int("n_inner", 4 * hidden), vocab=f.int("vocab_size"), gated_mlp=False,
                tied_embeddings=f.bool("tie_word_embeddings", True), layer_norm=True, linear_bias=True,
                learned_positions=positions, max_positions=positions)


def _falcon(f: _Fields) -> dict[str, Any]:
    """falcon (FalconConfig attribute_map: n_layer, n_head, n_head_kv are aliases)."""
    layers = f.int("num_hidden_layers", aliases=("n_layer",))
    heads = f.int("num_attention_heads", aliases=("n_head",))
    hidden, vocab = f.int("hidden_size"), f.int("vocab_size")
    if hidden % heads:
        raise f.error("hidden_size", f"must be a multiple of num_attention_heads ({heads}) to give head_dim", hidden)
    new_arch, parallel = f.bool("new_decoder_architecture", False), f.bool("parallel_attn", True)
    # FalconAttention: grouped KV with new_decoder_architecture, one KV head with multi_query, else MHA.
    if new_arch:
        kv_heads = f.int("num_kv_heads", heads, aliases=("n_head_kv",))
        if heads % kv_heads:
            raise WorkloadError(
                f"num_attention_heads ({heads}) must be a multiple of num_kv_heads ({kv_heads}) ({f.file})")
    else:
        kv_heads = 1 if f.bool("multi_query", True) else heads
    # FalconDecoderLayer: ln_attn + ln_mlp (new architecture, num_ln_in_parallel_attn 2), one
    # input_layernorm for parallel attention, else input + post-attention layernorms.
    if new_arch:
        norms = f.int("num_ln_in_parallel_attn", 2)
        if norms not in (1, 2):
            raise f.error("num_ln_in_parallel_attn", "must be 1 or 2", norms)
    else:
        norms = 1 if parallel else 2
    f.bool("alibi", False)  # ALiBi biases are computed, not learned: no parameters
    return dict(n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=kv_heads, head_dim=hidden // heads,
                intermediate=f.int("ffn_hidden_size", 4 * hidden), vocab=vocab, gated_mlp=False,
                tied_embeddings=f.bool("tie_word_embeddings", True), layer_norm=True, norms_per_layer=norms,
                linear_bias=f.bool("bias", False))


def _layer_norm_family(f: _Fields, family: str) -> dict[str, Any]:
    """opt, gpt_neox, starcoder2: LayerNorm, non-gated MLP, biases."""
    c = _common(f)
    hidden, heads = c["hidden"], c["heads"]
    out: dict[str, Any] = dict(n_layers=c["layers"], hidden=hidden, n_heads=heads, vocab=c["vocab"],
                               gated_mlp=False, layer_norm=True)
    if family == "opt":
        proj = f.int("word_embed_proj_dim", hidden)
        if proj != hidden:
            raise WorkloadError(f"word_embed_proj_dim {proj} != hidden_size {hidden} (projected OPT embeddings) "
                                f"is not supported ({f.file})")
        out.update(n_kv_heads=heads, head_dim=_divided_head_dim(f, hidden, heads), intermediate=f.int("ffn_dim"),
                   tied_embeddings=f.bool("tie_word_embeddings", True), linear_bias=f.bool("enable_bias", True))
    elif family == "gpt_neox":
        out.update(n_kv_heads=heads, head_dim=_divided_head_dim(f, hidden, heads),
                   intermediate=f.int("intermediate_size"), tied_embeddings=f.bool("tie_word_embeddings", False),
                   linear_bias=True)
    else:  # starcoder2: head_dim = hidden // heads (Starcoder2Attention)
        kv_heads, head_dim = _heads(f, hidden, heads, kv_default=heads, head_dim_key=None)
        out.update(n_kv_heads=kv_heads, head_dim=head_dim, intermediate=f.int("intermediate_size"),
                   tied_embeddings=f.bool("tie_word_embeddings", True), linear_bias=f.bool("use_bias", True))
    return out


def spec_from_hf_config(cfg: dict[str, Any], *, name: str, file: str = "") -> TransformerSpec:
    """Build a spec from a Hugging Face ``config.json`` mapping.

    For a multimodal ``gemma3`` config only the text model (``text_config``, with the
    ``Gemma3TextConfig`` defaults for absent fields) is counted: the vision tower and projector
    are left out.

    Parameters
    ----------
    cfg : dict
        The parsed ``config.json``.
    name : str
        The model's name in the spec.
    file : str
        Where the config came from, for error messages.

    Raises
    ------
    WorkloadError
        For an unsupported ``model_type``, or a missing or invalid field: the message names the
        field, the rule, the value and the file.

    Examples
    --------
    >>> spec = spec_from_hf_config({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
    ...     "n_positions": 1024, "vocab_size": 50257}, name="gpt2")
    >>> spec.total_params(), spec.max_context_tokens
    (124439808, 1024)
    """
    if not isinstance(cfg, dict):
        raise WorkloadError(f"a model config must be a JSON object, got {type(cfg).__name__} ({file})")
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise WorkloadError(
            f"model_type {family!r} is not supported; supported families are {', '.join(FAMILIES)} ({file})"
        )
    if family == "gemma3":
        text = cfg.get("text_config")
        if not isinstance(text, dict):
            raise WorkloadError(f"config field 'text_config' must be an object for model_type 'gemma3', "
                                f"got {text!r} ({file})")
        text_cfg = {**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
        f, family = _Fields(text_cfg, file, "text_config."), "gemma3_text"
    else:
        f = _Fields(cfg, file)
    if family in ("deepseek_v2", "deepseek_v3"):
        fields = _deepseek(f, family)
    elif family == "gpt2":
        fields = _gpt2(f)
    elif family == "falcon":
        fields = _falcon(f)
    elif family in ("opt", "gpt_neox", "starcoder2"):
        fields = _layer_norm_family(f, family)
    else:
        fields = _llama_like(f, family)
    if "max_positions" not in fields:
        fields["max_positions"] = f.int("max_position_embeddings", 2048)
    if family == "opt":
        fields["learned_positions"] = fields["max_positions"] + 2  # OPTLearnedPositionalEmbedding offset 2
    window, sliding = _sliding_layers(f, family, fields["n_layers"])
    quantization, quant = _quantization(cfg, file)
    return TransformerSpec(
        name=name, family=cfg["model_type"], **fields, sliding_window=window, sliding_window_layers=sliding,
        context_tokens=_context_tokens(f, family, fields["max_positions"]), quantization=quantization, quant=quant,
        source=file,
    )


# ---------------------------------------------------------------------------------------------
# Bundled models
# ---------------------------------------------------------------------------------------------


def _index() -> dict[str, dict[str, Any]]:
    path = MODELS_DIR / "index.yaml"
    if not path.exists():
        return {}
    # Parsed once per modification time: a sweep looks up a model for every point (~50 ms a parse).
    return dict(_index_cached(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _index_cached(name: str, _stamp: int) -> dict[str, dict[str, Any]]:
    text = read_text(name, what="model index", max_bytes=CONFIG_MAX_BYTES, error=WorkloadError)
    models = load_yaml(text, file=name, error=WorkloadError, what="the model index").get("models", {})
    if not isinstance(models, dict):
        raise WorkloadError(f"models must map model names to entries, got {type(models).__name__} ({name})")
    return dict(models)


def list_models() -> list[str]:
    """Names of the bundled models (``tierplan models list``)."""
    return sorted(_index())


def model_info(name: str) -> dict[str, Any]:
    """The index entry of a bundled model: config file, hub id, published parameter count and source."""
    index = _index()
    if name not in index:
        raise WorkloadError(f"unknown model {name!r}; bundled models are: {', '.join(sorted(index))}")
    return dict(index[name])


def load_model(name_or_path: str | Path) -> TransformerSpec:
    """A bundled model by name, or a Hugging Face ``config.json`` (or a folder holding one) by path.

    Examples
    --------
    >>> load_model("llama-2-7b").total_params()
    6738415616
    """
    text = str(name_or_path)
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise WorkloadError(f"model folder {path} has no config.json; give a Hugging Face config.json, "
                                f"a folder holding one, or a bundled model name (tierplan models list)")
        path = path / "config.json"
    if text.endswith(".json") or path.exists():
        # a config.json is named by its folder (resolved: ./config.json is named by the current folder)
        name = (path.resolve().parent.name or path.stem) if path.name == "config.json" else path.stem
    else:
        info = model_info(text)
        path, name = MODELS_DIR / info["config"], text
    # Bounded: a weights file given by mistake is refused by its size before it is read.
    config = read_text(path, what="model config", max_bytes=CONFIG_MAX_BYTES, error=WorkloadError)
    cfg = load_json(config, file=str(path), error=WorkloadError, what="a model config")
    return spec_from_hf_config(cfg, name=name, file=str(path))
