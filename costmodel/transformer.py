"""Transformer specs from Hugging Face ``config.json`` files, and their exact byte counts.

Supported families: llama, mistral, qwen2, mixtral (rotary, RMSNorm, gated MLP, GQA/MQA, MoE),
opt (learned positions, LayerNorm, biases, ReLU MLP) and gpt-neox (parallel attention, biases).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from costmodel.errors import WorkloadError

MODELS_DIR = Path(__file__).parent / "models"

FAMILIES = ("llama", "mistral", "qwen2", "mixtral", "opt", "gpt_neox")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformerSpec:
    """The architecture numbers that decide FLOPs and bytes; counts are element counts."""

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
    tied_embeddings: bool = False
    layer_norm: bool = False  # LayerNorm (weight + bias) instead of RMSNorm (weight)
    qkv_bias: bool = False
    linear_bias: bool = False  # biases on every linear layer (OPT, GPT-NeoX)
    learned_positions: int = 0  # rows of a learned position table (OPT: max_positions + 2)
    source: str = ""

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V) per token: n_kv_heads * head_dim."""
        return self.n_kv_heads * self.head_dim

    @property
    def is_gqa(self) -> bool:
        return self.n_kv_heads < self.n_heads

    def kv_elements_per_token(self) -> int:
        """K and V elements per token per layer: 2 * n_kv_heads * head_dim.

        >>> llama3 = TransformerSpec(name="x", family="llama", n_layers=32, hidden=4096, n_heads=32,
        ...     n_kv_heads=8, head_dim=128, intermediate=14336, vocab=128256, max_positions=8192,
        ...     gated_mlp=True)
        >>> llama3.kv_elements_per_token(), llama3.hidden
        (2048, 4096)
        """
        return 2 * self.kv_dim

    def attention_params(self) -> int:
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        params = h * q + 2 * h * kv + q * h
        if self.qkv_bias or self.linear_bias:
            params += q + 2 * kv
        if self.linear_bias:
            params += h
        return params

    def mlp_params(self) -> int:
        h, i = self.hidden, self.intermediate
        per_expert = (3 if self.gated_mlp else 2) * h * i
        if self.linear_bias:
            per_expert += i + h
        router = h * self.n_experts if self.n_experts > 1 else 0
        return self.n_experts * per_expert + router

    def norm_params(self) -> int:
        return (2 if self.layer_norm else 1) * self.hidden

    def layer_params(self) -> int:
        """Parameters of one decoder layer."""
        return self.attention_params() + self.mlp_params() + 2 * self.norm_params()

    def head_params(self) -> int:
        """Embeddings, position table, final norm and the LM head (if not tied)."""
        embed = self.vocab * self.hidden
        lm_head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return embed + lm_head + self.learned_positions * self.hidden + self.norm_params()

    def total_params(self) -> int:
        return self.n_layers * self.layer_params() + self.head_params()

    def active_mlp_params_per_token(self) -> int:
        """MLP parameters one token multiplies with (top-k experts for MoE)."""
        if self.n_experts == 1:
            return self.mlp_params()
        per_expert = (self.mlp_params() - self.hidden * self.n_experts) // self.n_experts
        return self.experts_per_token * per_expert + self.hidden * self.n_experts

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
            "intermediate": self.intermediate,
            "vocab": self.vocab,
            "experts": self.n_experts,
            "experts_per_token": self.experts_per_token,
            "dtype_bytes": dtype_bytes,
            "kv_bytes_per_token_per_layer": self.kv_elements_per_token() * dtype_bytes,
            "kv_bytes_per_token": self.kv_elements_per_token() * dtype_bytes * self.n_layers,
            "activation_bytes_per_token_per_layer": self.hidden * dtype_bytes,
            "weight_bytes_per_layer": self.layer_params() * dtype_bytes,
        }


def _get(cfg: dict[str, Any], key: str, file: str, *, default: Any = None, kind: type = int) -> Any:
    if key not in cfg:
        if default is not None:
            return default
        raise WorkloadError(f"config field {key!r} is missing ({file})")
    value = cfg[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise WorkloadError(f"config field {key!r} must be a positive integer, got {value!r} ({file})")
    if kind is bool and not isinstance(value, bool):
        raise WorkloadError(f"config field {key!r} must be true or false, got {value!r} ({file})")
    return value


def spec_from_hf_config(cfg: dict[str, Any], *, name: str, file: str = "") -> TransformerSpec:
    """Build a spec from a Hugging Face ``config.json`` mapping.

    Raises
    ------
    WorkloadError
        For an unsupported ``model_type`` or a missing/invalid field, naming both and the file.
    """
    if not isinstance(cfg, dict):
        raise WorkloadError(f"a model config must be a JSON object, got {type(cfg).__name__} ({file})")
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise WorkloadError(
            f"model_type {family!r} is not supported; supported families are {', '.join(FAMILIES)} ({file})"
        )
    layers = _get(cfg, "num_hidden_layers", file)
    hidden = _get(cfg, "hidden_size", file)
    heads = _get(cfg, "num_attention_heads", file)
    vocab = _get(cfg, "vocab_size", file)
    max_pos = _get(cfg, "max_position_embeddings", file, default=2048)
    if family == "opt":
        proj = cfg.get("word_embed_proj_dim", hidden)
        if proj != hidden:
            raise WorkloadError(
                f"word_embed_proj_dim {proj} != hidden_size {hidden} (projected OPT embeddings) is not supported ({file})"
            )
        spec = TransformerSpec(
            name=name, family=family, n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=heads,
            head_dim=hidden // heads, intermediate=_get(cfg, "ffn_dim", file), vocab=vocab,
            max_positions=max_pos, gated_mlp=False,
            tied_embeddings=_get(cfg, "tie_word_embeddings", file, default=True, kind=bool),
            layer_norm=True, linear_bias=_get(cfg, "enable_bias", file, default=True, kind=bool),
            learned_positions=max_pos + 2, source=file,
        )
    elif family == "gpt_neox":
        spec = TransformerSpec(
            name=name, family=family, n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=heads,
            head_dim=hidden // heads, intermediate=_get(cfg, "intermediate_size", file), vocab=vocab,
            max_positions=max_pos, gated_mlp=False,
            tied_embeddings=_get(cfg, "tie_word_embeddings", file, default=False, kind=bool),
            layer_norm=True, linear_bias=True, source=file,
        )
    else:
        kv_heads = cfg.get("num_key_value_heads") or heads
        head_dim = cfg.get("head_dim") or hidden // heads
        if heads % kv_heads:
            raise WorkloadError(
                f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads}) ({file})"
            )
        experts = _get(cfg, "num_local_experts", file, default=1) if family == "mixtral" else 1
        spec = TransformerSpec(
            name=name, family=family, n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=kv_heads,
            head_dim=head_dim, intermediate=_get(cfg, "intermediate_size", file), vocab=vocab,
            max_positions=max_pos, gated_mlp=True, n_experts=experts,
            experts_per_token=_get(cfg, "num_experts_per_tok", file, default=2) if experts > 1 else 1,
            tied_embeddings=_get(cfg, "tie_word_embeddings", file, default=False, kind=bool),
            qkv_bias=family == "qwen2", source=file,
        )
    if hidden % heads and family in ("opt", "gpt_neox"):
        raise WorkloadError(f"hidden_size {hidden} must be a multiple of num_attention_heads {heads} ({file})")
    return spec


def _index() -> dict[str, dict[str, Any]]:
    path = MODELS_DIR / "index.yaml"
    if not path.exists():
        return {}
    # Parsed once per modification time: a sweep looks up a model for every point (~50 ms a parse).
    return dict(_index_cached(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _index_cached(name: str, _stamp: int) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(Path(name).read_text())
    return dict((data or {}).get("models", {}))


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
        path = path / "config.json"
    if text.endswith(".json") or path.exists():
        name = path.parent.name if path.name == "config.json" else path.stem
    else:
        info = model_info(text)
        path, name = MODELS_DIR / info["config"], text
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkloadError(f"model config not found: {path}") from None
    except json.JSONDecodeError as err:
        raise WorkloadError(f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg} ({path})") from None
    return spec_from_hf_config(cfg, name=name, file=str(path))
