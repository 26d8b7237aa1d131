"""Export a training plan as the nearest DeepSpeed config (``ds_config`` JSON) DeepSpeed can run.

A training plan decides per decoder layer (:class:`~costmodel.training.LayerTrainPolicy`) where the
16-bit weights, gradients, fp32 master weights and moments live, where the step runs and what the
layer keeps of its activations. DeepSpeed applies each offload setting to the whole model, so the
export picks one whole-model setting per decision and lists, per decision and layer, what the plan
chose that the config does not run (:attr:`DeepSpeedExport.cannot_express`):

===================================  =================================================================
plan (every unit alike)              ``ds_config``
===================================  =================================================================
weights on the host / disk           ``zero_optimization.stage`` 3, ``offload_param.device`` cpu / nvme
states + step on the CPU, host       ``offload_optimizer.device`` cpu (ZeRO-Offload; stage >= 1)
states + step on the CPU, disk       ``offload_optimizer.device`` nvme (stage 3; fp32 gradients are
                                     swapped to NVMe too), ``pipeline_read``/``pipeline_write``, ``aio``
the first k of L layers on the CPU,  Twin-Flow: ``offload_optimizer.ratio`` k / L (stage 3, device cpu)
the rest on the GPU
recompute                            Hugging Face: ``model.gradient_checkpointing_enable()``;
                                     ``model_code="deepspeed"``: ``activation_checkpointing`` and
                                     ``deepspeed.checkpointing.checkpoint`` around those layers
activations offloaded                Hugging Face: ``torch.autograd.graph.save_on_cpu``;
                                     ``model_code="deepspeed"``: ``cpu_checkpointing`` (which
                                     recomputes: listed as not expressed)
===================================  =================================================================

The export also returns the per-layer policies the exported config actually runs
(:meth:`DeepSpeedExport.nearest_policies`, :meth:`~DeepSpeedExport.nearest_head`) and the workload
it runs at (:meth:`~DeepSpeedExport.nearest_workload`: the ZeRO stage raised where DeepSpeed needs
it, fp32 moments, ...), so :func:`costmodel.training.evaluate_training` can cost the config as
exported. Where the plan mixes settings DeepSpeed cannot mix, the export chooses: with a
``system`` it costs every combination of the whole-model settings the plan uses and takes the
fastest that fits; without one it takes, per decision, the setting that holds most of the plan's
parameters (or layers), ties going to the one that keeps less on the GPU.

Sources (every emitted key is checked against these field sets by :func:`schema_violations`; the
field names are copied from the files):

* top-level keys: microsoft/DeepSpeed@9fd8d7be9518a0d88f15c5b959b85ac520c5b90a
  ``deepspeed/runtime/constants.py``;
* ``zero_optimization``: microsoft/DeepSpeed@50c6d6f244ea2f1237cfd580cd759233d469cdd3
  ``deepspeed/runtime/zero/config.py`` (``DeepSpeedZeroConfig``, its JSON aliases);
* ``offload_param``/``offload_optimizer``: microsoft/DeepSpeed@b1cb0dfc4623fc44e9931d1481c246bd8a59b778
  ``deepspeed/runtime/zero/offload_config.py`` (the keys kept are also in the newest stored version);
* ``activation_checkpointing``: microsoft/DeepSpeed@077e6740178eba4ccff1b3ea9a7981578d3d42e4
  ``deepspeed/runtime/activation_checkpointing/config.py``; its behaviour:
  microsoft/DeepSpeed@2ef4fd579f6482646fd2908534972ddb622599c2
  ``deepspeed/runtime/activation_checkpointing/checkpointing.py``;
* ``aio``: microsoft/DeepSpeed@077e6740178eba4ccff1b3ea9a7981578d3d42e4
  ``deepspeed/runtime/swap_tensor/constants.py``;
* optimizers: microsoft/DeepSpeed@2ef4fd579f6482646fd2908534972ddb622599c2 ``deepspeed/runtime/engine.py``
  (``_configure_basic_optimizer``, ``_do_optimizer_sanity_check``) and
  microsoft/DeepSpeed@da7f21a2516a693f973a5f4b26affcce1de6d38d ``docs/_pages/config-json.md``.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import product
from types import MappingProxyType
from typing import Any

from costmodel.errors import WorkloadError
from costmodel.training import (
    ActAction,
    LayerTrainPolicy,
    OptimizerKind,
    Overlap,
    Precision,
    StepDevice,
    TrainWorkload,
    evaluate_training,
)
from costmodel.training_units import Tier
from hwprofiles import System
from solver.errors import PlanError

FORMAT = "deepspeed-config"

# ---------------------------------------------------------------------------------------------
# DeepSpeed's config schema (field names copied from the cited files)
# ---------------------------------------------------------------------------------------------

TOP_LEVEL_SOURCE = ("microsoft/DeepSpeed@9fd8d7be9518a0d88f15c5b959b85ac520c5b90a "
                    "deepspeed/runtime/constants.py")
# The top-level keys of deepspeed/runtime/constants.py (TOP_LEVEL_SOURCE), plus the three sections
# whose names live in their own modules: ZERO_OPTIMIZATION (ZERO_SOURCE), ACT_CHKPT (ACT_CKPT_SOURCE)
# and AIO (AIO_SOURCE).
TOP_LEVEL_KEYS = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "sparse_attention",
    "optimizer", "scheduler", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "steps_per_print",
    "sparse_gradients", "bf16", "bfloat16", "fp16", "amp", "gradient_clipping", "communication_data_type",
    "prescale_gradients", "gradient_predivide_factor", "disable_allgather", "dump_state", "vocabulary_size",
    "wall_clock_breakdown", "memory_breakdown", "eigenvalue", "progressive_layer_drop", "checkpoint", "data_types",
    "dataloader_drop_last",
    "zero_optimization", "activation_checkpointing", "aio",
})
# OPTIMIZER's keys: TYPE, OPTIMIZER_PARAMS, LEGACY_FUSION (TOP_LEVEL_SOURCE).
OPTIMIZER_KEYS = frozenset({"type", "params", "legacy_fusion"})
ENGINE_SOURCE = ("microsoft/DeepSpeed@2ef4fd579f6482646fd2908534972ddb622599c2 deepspeed/runtime/engine.py")
DOCS_SOURCE = ("microsoft/DeepSpeed@da7f21a2516a693f973a5f4b26affcce1de6d38d docs/_pages/config-json.md")
# optimizer.type values the export writes: "Adam" and "AdamW" are DeepSpeed's own (DOCS_SOURCE,
# "Optimizer Parameters"; ENGINE_SOURCE lower-cases them to ADAM_OPTIMIZER / ADAMW_OPTIMIZER), any
# other name is getattr(torch.optim, name) (ENGINE_SOURCE, _configure_basic_optimizer).
OPTIMIZER_TYPES = frozenset({"Adam", "AdamW", "SGD"})
# optimizer.params keys the export writes: Adam's DeepSpeed-only "adam_w_mode" (DOCS_SOURCE: "The Adam
# optimizer also supports ... torch_adam, adam_w_mode"; ENGINE_SOURCE: "Optimizer name of Adam forces
# AdamW logic unless adam_w_mode is explicitly set"), and torch.optim.SGD's "momentum".
OPTIMIZER_PARAM_KEYS = frozenset({"torch_adam", "adam_w_mode", "momentum"})
# FP16's keys (TOP_LEVEL_SOURCE: FP16_ENABLED ... FP16_MASTER_WEIGHTS_AND_GRADS) and BFLOAT16's.
FP16_KEYS = frozenset({"enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
                       "consecutive_hysteresis", "min_loss_scale", "fp16_master_weights_and_grads"})
BF16_KEYS = frozenset({"enabled"})

ZERO_SOURCE = ("microsoft/DeepSpeed@50c6d6f244ea2f1237cfd580cd759233d469cdd3 deepspeed/runtime/zero/config.py")
# Every field of DeepSpeedZeroConfig as a JSON key (its alias where it has one), ZERO_SOURCE.
ZERO_KEYS = frozenset({
    "stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size", "use_multi_rank_bucket_allreduce",
    "allgather_partitions", "allgather_bucket_size", "overlap_comm", "load_from_fp32_weights", "elastic_checkpoint",
    "offload_param", "offload_optimizer", "sub_group_size", "cpu_offload_param", "cpu_offload_use_pin_memory",
    "cpu_offload", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
    "stage3_model_persistence_threshold", "stage3_max_live_parameters", "stage3_max_reuse_distance",
    "stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save",
    "ignore_unused_parameters", "legacy_stage1", "round_robin_gradients", "zero_hpz_partition_size",
    "zero_quantized_weights", "zero_quantized_nontrainable_weights", "zero_quantized_gradients", "mics_shard_size",
    "mics_hierarchical_params_gather", "memory_efficient_linear", "pipeline_loading_checkpoint",
    "override_module_apply",
})
ZERO_STAGES = (0, 1, 2, 3)  # ZeroStageEnum (ZERO_SOURCE)

OFFLOAD_SOURCE = ("microsoft/DeepSpeed@b1cb0dfc4623fc44e9931d1481c246bd8a59b778 "
                  "deepspeed/runtime/zero/offload_config.py")
# DeepSpeedZeroOffloadParamConfig and DeepSpeedZeroOffloadOptimizerConfig fields (OFFLOAD_SOURCE).
OFFLOAD_PARAM_KEYS = frozenset({"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"})
OFFLOAD_OPTIMIZER_KEYS = frozenset({"device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read",
                                    "pipeline_write", "fast_init", "ratio"})
OFFLOAD_DEVICES = ("none", "cpu", "nvme")  # OffloadDeviceEnum (OFFLOAD_SOURCE)

ACT_CKPT_SOURCE = ("microsoft/DeepSpeed@077e6740178eba4ccff1b3ea9a7981578d3d42e4 "
                   "deepspeed/runtime/activation_checkpointing/config.py")
ACT_CKPT_KEYS = frozenset({"partition_activations", "number_checkpoints", "contiguous_memory_optimization",
                           "synchronize_checkpoint_boundary", "profile", "cpu_checkpointing"})
CHECKPOINTING_SOURCE = ("microsoft/DeepSpeed@2ef4fd579f6482646fd2908534972ddb622599c2 "
                        "deepspeed/runtime/activation_checkpointing/checkpointing.py")

AIO_SOURCE = ("microsoft/DeepSpeed@077e6740178eba4ccff1b3ea9a7981578d3d42e4 deepspeed/runtime/swap_tensor/constants.py")
AIO_KEYS = frozenset({"block_size", "queue_depth", "thread_count", "single_submit", "overlap_events"})
# AIO's documented defaults (AIO_SOURCE: AIO_BLOCK_SIZE_DEFAULT ... AIO_OVERLAP_EVENTS_DEFAULT); thread_count
# is left out: the newest stored constants.py renames it intra_op_parallelism (it still reads thread_count).
AIO_DEFAULTS = MappingProxyType({"block_size": 1048576, "queue_depth": 8, "single_submit": False,
                                 "overlap_events": True})

# Twin-Flow and the optimizer's sub-groups: deepspeed/runtime/zero/stage3.py (microsoft/DeepSpeed, the stored
# copy has no commit recorded), DeepSpeedZeroOptimizer_Stage3._create_fp16_sub_groups (a sub-group closes once
# its params' partition_numel() reach sub_group_size) and _create_fp32_partitions ("Assign portion of subgroup
# to cpu, the other to gpu": sub-group i is stepped on the CPU iff i < int(ratio * number of sub-groups));
# introduced by https://github.com/deepspeedai/DeepSpeed/pull/4636.
TWIN_FLOW_SOURCE = ("microsoft/DeepSpeed deepspeed/runtime/zero/stage3.py _create_fp32_partitions, "
                    "_create_fp16_sub_groups (https://github.com/deepspeedai/DeepSpeed/pull/4636)")
TWIN_FLOW_BLOG = ("microsoft/DeepSpeed@fd5deed1bfbb4e2a111c1c9737eec719f6170606 blogs/deepspeed-offloadpp/README.md")
# "device should be cpu, not nvme" for a ratio (GuanhuaWang, https://github.com/deepspeedai/DeepSpeed/issues/4872).
TWIN_FLOW_DEVICE_SOURCE = "https://github.com/deepspeedai/DeepSpeed/issues/4872"
# With a pipelined NVMe optimizer swap the newest stored offload_config.py requires buffer_count >=
# _minimum_pipeline_buffer_count() = max(4 + 4 + 4, 2*4 + 4 + 4) = 16 with both pipeline_read and pipeline_write
# (ADAM_OPTIMIZER_STATE_BUFFER_COUNT = 4); older versions accept any buffer_count >= 0. The stored copy has no
# commit recorded (microsoft/DeepSpeed deepspeed/runtime/zero/offload_config.py,
# DeepSpeedZeroOffloadOptimizerConfig.set_pipeline).
NVME_PIPELINED_BUFFER_COUNT = 16
# The parameter swapper asserts "numel < self.elements_per_buffer" for each parameter partition it swaps in
# (microsoft/DeepSpeed@e81c70fdddba557c5f6e2f3f875dbdf72565b9f0
# deepspeed/runtime/swap_tensor/partitioned_param_swapper.py, get_buffer); buffer_size's default is 1e8
# elements (OFFLOAD_SOURCE).
PARAM_SWAPPER_SOURCE = ("microsoft/DeepSpeed@e81c70fdddba557c5f6e2f3f875dbdf72565b9f0 "
                        "deepspeed/runtime/swap_tensor/partitioned_param_swapper.py")
OFFLOAD_PARAM_BUFFER_SIZE_DEFAULT = 100_000_000
# DeepSpeed's documented example NVMe directory (DOCS_SOURCE, "Parameter offloading": "nvme_path": "/local_nvme").
NVME_PATH_DEFAULT = "/local_nvme"
# NVMe optimizer offload also swaps each swappable sub-group's fp32 gradients out (stage3.py partition_grads:
# "self.optimizer_swapper.swap_out_gradients(...)", microsoft/DeepSpeed, no commit recorded).
NVME_GRADS_SOURCE = "microsoft/DeepSpeed deepspeed/runtime/zero/stage3.py partition_grads (swap_out_gradients)"
HF_CHECKPOINTING_SOURCE = ("huggingface/transformers@83b507b780f4d46fcab18cb429fb7439599821c5 "
                           "docs/source/en/deepspeed.md (Activation/gradient checkpointing)")
SAVE_ON_CPU_SOURCE = "pytorch/pytorch torch/autograd/graph.py save_on_cpu (torch 2.13 as installed)"
MEGATRON_DS_SOURCE = ("microsoft/Megatron-DeepSpeed@bb4ac1ccbf50e3daa4493b6a4865150e76d6c8fe megatron/arguments.py "
                      "(--checkpoint-activations, --deepspeed-activation-checkpointing, --checkpoint-in-cpu)")
MEGATRON_SELECTIVE_SOURCE = ("NVIDIA/Megatron-LM@307dcf37f03d44da131ba21999278abe4112d2ad "
                             "megatron/training/arguments.py (--recompute-granularity selective)")
# torch.optim.SGD's docstring example: "torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)".
SGD_MOMENTUM_PLACEHOLDER = 0.9

SOURCES = MappingProxyType({
    "top_level": TOP_LEVEL_SOURCE, "zero_optimization": ZERO_SOURCE, "offload": OFFLOAD_SOURCE,
    "activation_checkpointing": ACT_CKPT_SOURCE, "checkpointing": CHECKPOINTING_SOURCE, "aio": AIO_SOURCE,
    "engine": ENGINE_SOURCE, "docs": DOCS_SOURCE, "twin_flow": TWIN_FLOW_SOURCE, "twin_flow_blog": TWIN_FLOW_BLOG,
    "twin_flow_device": TWIN_FLOW_DEVICE_SOURCE, "nvme_grads": NVME_GRADS_SOURCE,
    "param_swapper": PARAM_SWAPPER_SOURCE, "hf_checkpointing": HF_CHECKPOINTING_SOURCE,
    "save_on_cpu": SAVE_ON_CPU_SOURCE, "megatron_deepspeed": MEGATRON_DS_SOURCE,
    "megatron_selective": MEGATRON_SELECTIVE_SOURCE,
})

# Nested sections: path -> allowed keys (None: the section's keys are free-form, checked elsewhere).
_SCHEMA: Mapping[str, frozenset[str]] = MappingProxyType({
    "": TOP_LEVEL_KEYS, "optimizer": OPTIMIZER_KEYS, "optimizer.params": OPTIMIZER_PARAM_KEYS, "fp16": FP16_KEYS,
    "bf16": BF16_KEYS, "zero_optimization": ZERO_KEYS, "zero_optimization.offload_param": OFFLOAD_PARAM_KEYS,
    "zero_optimization.offload_optimizer": OFFLOAD_OPTIMIZER_KEYS, "activation_checkpointing": ACT_CKPT_KEYS,
    "aio": AIO_KEYS,
})


def schema_violations(config: Mapping[str, Any]) -> list[str]:
    """Every key of a ds_config (at every nesting level) that is not in the cited DeepSpeed field sets,
    as ``"path.key"``; also a dict where DeepSpeed expects a value, or a value where it expects a dict,
    and an offload ``device`` or ZeRO ``stage`` outside DeepSpeed's enums. Empty: the config uses only
    DeepSpeed's keys.

    DeepSpeed's pydantic config models forbid unknown keys (``DeepSpeedConfigModel``, ``extra =
    'forbid'``), so a violation here is a config DeepSpeed refuses.

    Examples
    --------
    >>> schema_violations({"train_batch_size": 8, "zero_optimization": {"stage": 2, "offload_optimiser": {}}})
    ['zero_optimization.offload_optimiser']
    """
    if not isinstance(config, Mapping):
        raise PlanError(f"a ds_config must be a mapping, got {type(config).__name__}")
    out: list[str] = []

    def walk(node: Mapping[str, Any], path: str) -> None:
        allowed = _SCHEMA[path]
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in allowed:
                out.append(where)
            elif where in _SCHEMA:
                if isinstance(value, Mapping):
                    walk(value, where)
                else:
                    out.append(f"{where} (must be a mapping, got {type(value).__name__})")
            elif isinstance(value, Mapping):
                out.append(f"{where} (must not be a mapping)")

    walk(config, "")
    zero = config.get("zero_optimization")
    if isinstance(zero, Mapping):
        if zero.get("stage", 0) not in ZERO_STAGES:
            out.append(f"zero_optimization.stage (must be one of 0, 1, 2, 3, got {zero.get('stage')!r})")
        for section in ("offload_param", "offload_optimizer"):
            dev = zero.get(section, {}).get("device", "none") if isinstance(zero.get(section), Mapping) else "none"
            if dev not in OFFLOAD_DEVICES:
                out.append(f"zero_optimization.{section}.device (must be one of {', '.join(OFFLOAD_DEVICES)}, "
                           f"got {dev!r})")
    opt = config.get("optimizer")
    if isinstance(opt, Mapping) and "type" in opt and opt["type"] not in OPTIMIZER_TYPES:
        out.append(f"optimizer.type (the export writes {', '.join(sorted(OPTIMIZER_TYPES))}, got {opt['type']!r})")
    return out


# ---------------------------------------------------------------------------------------------
# Value objects
# ---------------------------------------------------------------------------------------------


class ModelCode(enum.StrEnum):
    """Whose activation checkpointing the training script uses: a Hugging Face model's
    (``gradient_checkpointing_enable``, whole model) or DeepSpeed's
    (``deepspeed.checkpointing.checkpoint`` around chosen layers, configured by the ds_config's
    ``activation_checkpointing``: Megatron-DeepSpeed and hand-written models)."""

    HF = "hf"
    DEEPSPEED = "deepspeed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Unexpressed:
    """A plan decision the exported config does not run: ``decision`` (``field=value``) for the
    ``layers`` (decoder layer indices) and/or the head, ``why`` DeepSpeed cannot express it, and
    ``instead``, what the export runs there (``field=value``). Workload-level decisions name the
    ``workload.<field>`` and no layers."""

    decision: str
    layers: tuple[int, ...]
    head: bool
    why: str
    instead: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        for name in ("decision", "why", "instead"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise PlanError(f"{name} must be non-empty text, got {getattr(self, name)!r}")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers):
            raise PlanError(f"layers must be layer indices (integers >= 0), got {self.layers!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "layers": list(self.layers), "head": self.head, "why": self.why,
                "instead": self.instead}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeepSpeedExport:
    """A training plan as a DeepSpeed config, with what it could not express.

    ``config_json``: the ds_config (:meth:`to_dict`); ``workload``, ``policies`` and ``head``: what
    the config runs (:meth:`nearest_workload`, :meth:`nearest_policies`, :meth:`nearest_head`);
    ``model_code_steps``: what the training script must do beside passing the config (activation
    checkpointing or offload lives in the model code); ``predicted_*``: the exported config's
    predicted iteration on the ``system`` given to :func:`export_deepspeed` (None without one).
    """

    model: str
    model_code: ModelCode
    config_json: str
    workload: TrainWorkload
    policies: tuple[LayerTrainPolicy, ...]
    head: LayerTrainPolicy
    cannot_express: tuple[Unexpressed, ...]
    notes: tuple[str, ...]
    model_code_steps: tuple[str, ...]
    system: str | None = None
    predicted_iteration_s: float | None = None
    predicted_tokens_per_s: float | None = None
    predicted_fits: bool | None = None
    plan_iteration_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_code", _enum(ModelCode, "model_code", self.model_code))
        for name in ("policies", "cannot_express", "notes", "model_code_steps"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.workload, TrainWorkload):
            raise PlanError(f"workload must be a TrainWorkload, got {type(self.workload).__name__}")
        _check_policies(self.workload, self.policies, "policies")
        if not isinstance(self.head, LayerTrainPolicy):
            raise PlanError(f"head must be a LayerTrainPolicy, got {type(self.head).__name__}")
        if not all(isinstance(u, Unexpressed) for u in self.cannot_express):
            raise PlanError("cannot_express must hold Unexpressed entries only")
        try:
            cfg = json.loads(self.config_json)
        except (TypeError, ValueError) as err:
            raise PlanError(f"config_json must be a JSON object, got {self.config_json!r:.80} ({err})") from None
        if not isinstance(cfg, dict):
            raise PlanError(f"config_json must be a JSON object, got {type(cfg).__name__}")
        bad = schema_violations(cfg)
        if bad:
            raise PlanError(f"config_json must use only DeepSpeed's keys ({ZERO_SOURCE} et al.), got {', '.join(bad)}")

    # -- what DeepSpeed reads --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The ds_config: only DeepSpeed's keys (a fresh copy; :func:`schema_violations` is empty)."""
        return json.loads(self.config_json)

    def to_json(self, indent: int | None = 2) -> str:
        """The ds_config as JSON text, to pass as ``deepspeed.initialize(config=...)`` or ``--deepspeed``."""
        return json.dumps(self.to_dict(), indent=indent) + ("\n" if indent is not None else "")

    # -- what it runs ------------------------------------------------------------------------------

    def nearest_policies(self) -> tuple[LayerTrainPolicy, ...]:
        """One policy per decoder layer: what the exported config runs (cost it with
        ``evaluate_training(ex.nearest_workload(), system, ex.nearest_policies(), head=ex.nearest_head())``)."""
        return self.policies

    def nearest_head(self) -> LayerTrainPolicy:
        """The embeddings' and LM head's placement under the exported config."""
        return self.head

    def nearest_workload(self) -> TrainWorkload:
        """The workload the config runs at: the plan's, with ``zero_stage``, ``moments_dtype``,
        ``fp32_grad_copy`` and ``overlap`` as DeepSpeed runs them (each change is in ``cannot_express``)."""
        return self.workload

    # -- for people --------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """JSON-able: ``ds_config``, ``cannot_express``, ``notes``, ``model_code`` (what the training
        script must do), ``nearest_policies`` (one ``LayerTrainPolicy.summary()`` per layer),
        ``nearest_head``, ``nearest_workload`` and, with a system, ``predicted_as_exported``."""
        out: dict[str, Any] = {
            "format": FORMAT, "model": self.model, "model_code_kind": self.model_code.value,
            "ds_config": self.to_dict(), "cannot_express": [u.to_dict() for u in self.cannot_express],
            "notes": list(self.notes), "model_code": list(self.model_code_steps),
            "nearest_policies": [p.summary() for p in self.policies], "nearest_head": self.head.summary(),
            "nearest_workload": self.workload.summary(), "sources": dict(SOURCES),
        }
        if self.system is not None:
            out["predicted_as_exported"] = {"system": self.system, "iteration_s": self.predicted_iteration_s,
                                            "tokens_per_s": self.predicted_tokens_per_s, "fits": self.predicted_fits,
                                            "plan_iteration_s": self.plan_iteration_s}
        return out

    def to_dict_with_report(self) -> dict[str, Any]:
        """Alias of :meth:`report` (the ds_config is its ``ds_config`` key)."""
        return self.report()


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _enum(cls: type[enum.StrEnum], name: str, value: object) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise PlanError(f"{name} must be one of {', '.join(m.value for m in cls)}, got {value!r}") from None


def _check_policies(wl: TrainWorkload, policies: Any, name: str) -> tuple[LayerTrainPolicy, ...]:
    if not isinstance(policies, (list, tuple)):
        raise PlanError(f"{name} must be a list or tuple of LayerTrainPolicy (one per layer), got "
                        f"{type(policies).__name__}")
    n = wl.model.n_layers
    if len(policies) != n:
        raise PlanError(f"{name} must have one LayerTrainPolicy per layer of model {wl.model.name!r} ({n} layers), "
                        f"got {len(policies)}")
    for i, p in enumerate(policies):
        if not isinstance(p, LayerTrainPolicy):
            raise PlanError(f"{name}[{i}] must be a LayerTrainPolicy, got {type(p).__name__}: {p!r:.80}")
    return tuple(policies)


def _check_inputs(wl: Any, policies: Any, head: Any, system: Any, model_code: Any,
                  nvme_path: Any) -> tuple[TrainWorkload, tuple[LayerTrainPolicy, ...], LayerTrainPolicy, ModelCode]:
    if not isinstance(wl, TrainWorkload):
        raise PlanError(f"wl must be a TrainWorkload, got {type(wl).__name__}")
    pols = _check_policies(wl, policies, "policies")
    if head is None:  # as evaluate_training: the first layer's placement, activations kept
        head = replace(pols[0], activations=ActAction.KEEP, offload_share=1.0)
    elif not isinstance(head, LayerTrainPolicy):
        raise PlanError(f"head must be a LayerTrainPolicy or None, got {type(head).__name__}: {head!r:.80}")
    if system is not None and not isinstance(system, System):
        raise PlanError(f"system must be a System or None, got {type(system).__name__}")
    code = _enum(ModelCode, "model_code", model_code)
    if not isinstance(nvme_path, str) or not nvme_path.strip():
        raise PlanError(f"nvme_path must be a directory path (text), got {nvme_path!r}")
    if system is not None and system.disk is None:
        for i, p in enumerate((*pols, head)):
            for f in ("params", "grads", "master", "moments"):
                if getattr(p, f) is Tier.DISK:
                    where = "head" if i == len(pols) else f"policies[{i}]"
                    raise PlanError(f"{where}.{f} is 'disk' but system {system.name!r} has no disk")
    return wl, pols, head, code


# ---------------------------------------------------------------------------------------------
# Whole-model settings
# ---------------------------------------------------------------------------------------------


class _Opt(enum.StrEnum):
    """The optimizer placements DeepSpeed runs for the whole model."""

    NONE = "none"  # states and step on the GPU
    CPU = "cpu"  # offload_optimizer.device cpu
    NVME = "nvme"  # offload_optimizer.device nvme
    TWIN = "twin"  # device cpu with ratio k / L: the first k layers on the CPU


class _Cls(enum.StrEnum):
    """Where one unit's optimizer states and step are, as DeepSpeed can place them."""

    GPU = "gpu"
    CPU = "cpu"
    NVME = "nvme"


_CLASS_FIELDS = {
    _Cls.GPU: {"grads": Tier.GPU, "master": Tier.GPU, "moments": Tier.GPU, "step": StepDevice.GPU},
    _Cls.CPU: {"grads": Tier.HOST, "master": Tier.HOST, "moments": Tier.HOST, "step": StepDevice.CPU},
    # ZeRO-Infinity: the fp32 gradients of a swappable sub-group are swapped to NVMe with its states
    # (NVME_GRADS_SOURCE).
    _Cls.NVME: {"grads": Tier.DISK, "master": Tier.DISK, "moments": Tier.DISK, "step": StepDevice.CPU},
}
_TIER_ORDER = {Tier.GPU: 0, Tier.HOST: 1, Tier.DISK: 2}
# Ties between activation settings go to the one that keeps less on the GPU.
_ACT_ORDER = {ActAction.RECOMPUTE: 0, ActAction.OFFLOAD: 1, ActAction.SELECTIVE: 2, ActAction.KEEP: 3}


def _cls(p: LayerTrainPolicy) -> _Cls:
    """A unit's nearest DeepSpeed placement class: GPU-resident states stepped on the GPU; states on disk
    (a CPU step: disk states with a GPU step are not valid policies) -> NVMe; anything else off the GPU
    (a CPU step from host states, or a GPU step streaming host states) -> CPU."""
    if p.step is StepDevice.GPU and p.master is Tier.GPU and p.moments is Tier.GPU:
        return _Cls.GPU
    if Tier.DISK in (p.master, p.moments):
        return _Cls.NVME
    return _Cls.CPU


@dataclass(frozen=True, slots=True, kw_only=True)
class _Choice:
    params: Tier
    opt: _Opt
    cpu_layers: int  # layers stepped on the CPU (TWIN: the first cpu_layers)
    acts: tuple[tuple[ActAction, float], ...]  # per layer, as run
    cpu_checkpointing: bool = False


def _majority(weights: Mapping[Any, float], order: Mapping[Any, int]) -> Any:
    """The key with the largest weight; ties to the smallest ``order``."""
    return min(weights, key=lambda k: (-weights[k], order[k]))


def _param_options(pols: Sequence[LayerTrainPolicy], head: LayerTrainPolicy, layer_p: float,
                   head_p: float) -> tuple[list[Tier], Tier]:
    weights: dict[Tier, float] = {}
    for p in pols:
        weights[p.params] = weights.get(p.params, 0.0) + layer_p
    weights[head.params] = weights.get(head.params, 0.0) + head_p
    return sorted(weights, key=_TIER_ORDER.__getitem__), _majority(weights, {t: -_TIER_ORDER[t] for t in weights})


def _opt_options(pols: Sequence[LayerTrainPolicy], head: LayerTrainPolicy, layer_p: float,
                 head_p: float) -> tuple[list[tuple[_Opt, int]], tuple[_Opt, int]]:
    n = len(pols)
    classes = [_cls(p) for p in pols]
    head_cls = _cls(head)
    present = set(classes) | {head_cls}
    off = sum(c is not _Cls.GPU for c in classes)
    options: list[tuple[_Opt, int]] = []
    if _Cls.GPU in present:
        options.append((_Opt.NONE, 0))
    if 0 < off < n:
        options.append((_Opt.TWIN, off))
    if present - {_Cls.GPU}:
        options.append((_Opt.CPU, n))
    if _Cls.NVME in present:
        options.append((_Opt.NVME, n))
    # The rule without a system: NVMe for everything if NVMe holds at least half the parameters, else the
    # NVMe units count as CPU-stepped and the GPU/CPU mix is Twin-Flow's (exact in count).
    nvme_p = sum(layer_p for c in classes if c is _Cls.NVME) + (head_p if head_cls is _Cls.NVME else 0.0)
    total = n * layer_p + head_p
    if _Cls.NVME in present and nvme_p >= total / 2:
        rule = (_Opt.NVME, n)
    elif off == n:
        rule = (_Opt.CPU, n)
    elif off == 0:  # only the head off the GPU: the layers hold most parameters
        rule = (_Opt.NONE, 0)
    else:
        rule = (_Opt.TWIN, off)
    return options, rule


def _act_options(pols: Sequence[LayerTrainPolicy], code: ModelCode) -> tuple[list[tuple[tuple[tuple[ActAction, float],
                                                                                            ...], bool]],
                                                                            tuple[tuple[tuple[ActAction, float], ...],
                                                                                  bool]]:
    """(per-layer actions as run, cpu_checkpointing) options, and the rule's choice."""
    acts = [p.activations for p in pols]
    n = len(pols)
    if code is ModelCode.HF:  # whole model: gradient_checkpointing_enable() or save_on_cpu or nothing
        mapped = {ActAction.KEEP: ActAction.KEEP, ActAction.RECOMPUTE: ActAction.RECOMPUTE,
                  ActAction.SELECTIVE: ActAction.RECOMPUTE, ActAction.OFFLOAD: ActAction.OFFLOAD}
        counts: dict[ActAction, float] = {}
        for a in acts:
            counts[mapped[a]] = counts.get(mapped[a], 0.0) + 1.0
        options = [(tuple((a, 1.0) for _ in range(n)), False) for a in sorted(counts, key=_ACT_ORDER.__getitem__)]
        rule_a = _majority(counts, _ACT_ORDER)
        return options, (tuple((rule_a, 1.0) for _ in range(n)), False)
    # DeepSpeed checkpointing: per layer (the script checkpoints the chosen layers); offload becomes
    # cpu_checkpointing (recompute, input on the host); selective becomes recompute, or keep (a system decides).
    cpu = ActAction.OFFLOAD in acts

    def run(selective_as: ActAction) -> tuple[tuple[ActAction, float], ...]:
        out = []
        for a in acts:
            if a is ActAction.SELECTIVE:
                a = selective_as
            elif a is ActAction.OFFLOAD:
                a = ActAction.RECOMPUTE
            out.append((a, 1.0))
        return tuple(out)

    rule = (run(ActAction.RECOMPUTE), cpu)
    options = [rule]
    if ActAction.SELECTIVE in acts:
        options.append((run(ActAction.KEEP), cpu))
    return options, rule


def _stage(wl: TrainWorkload, choice: _Choice) -> int:
    """ZeRO stage the choice needs: 3 for off-GPU weights (offload_param is "Valid only with stage 3",
    OFFLOAD_SOURCE), for NVMe optimizer offload ("NVMe offloading is available only with ZeRO stage 3",
    DOCS_SOURCE) and for a ratio ("Partial offloading only supported for ZeRO Stage 3", ZERO_SOURCE); at
    least 1 for CPU optimizer offload ("Valid with stage 1, 2, and 3"); else the workload's."""
    if choice.params is not Tier.GPU or choice.opt in (_Opt.TWIN, _Opt.NVME):
        return 3
    if choice.opt is _Opt.CPU:
        return max(wl.zero_stage, 1)
    return wl.zero_stage


def _unit_cls(choice: _Choice, i: int | None) -> _Cls:
    """The class the choice runs unit ``i`` (None: the head) with. Under Twin-Flow the head follows the
    first layers: the embeddings are the model's first sub-group, stepped on the CPU (TWIN_FLOW_SOURCE)."""
    if choice.opt is _Opt.NONE:
        return _Cls.GPU
    if choice.opt is _Opt.NVME:
        return _Cls.NVME
    if choice.opt is _Opt.CPU:
        return _Cls.CPU
    return _Cls.CPU if i is None or i < choice.cpu_layers else _Cls.GPU


def _nearest(choice: _Choice, n: int) -> tuple[tuple[LayerTrainPolicy, ...], LayerTrainPolicy]:
    pols = tuple(LayerTrainPolicy(params=choice.params, **_CLASS_FIELDS[_unit_cls(choice, i)],
                                  activations=choice.acts[i][0], offload_share=choice.acts[i][1]) for i in range(n))
    head = LayerTrainPolicy(params=choice.params, **_CLASS_FIELDS[_unit_cls(choice, None)])
    return pols, head


def _nearest_workload(wl: TrainWorkload, choice: _Choice) -> TrainWorkload:
    mixed = wl.precision is not Precision.FP32
    return replace(wl, zero_stage=_stage(wl, choice), moments_dtype="fp32",
                   fp32_grad_copy=True if mixed else wl.fp32_grad_copy,
                   overlap=Overlap.DEEPSPEED if wl.overlap is Overlap.FULL else wl.overlap, snapshot_every=0)


# ---------------------------------------------------------------------------------------------
# The ds_config
# ---------------------------------------------------------------------------------------------


def _largest_tensor(wl: TrainWorkload) -> int:
    """An upper bound on the elements of the model's largest single parameter: the embedding or LM head
    (vocab x hidden), a fused QKV projection (hidden x (q + 2 kv)), a fused gate/up projection
    (2 x hidden x width), DeepSeek's shared-experts MLP, and for MoE models all routed experts fused in
    one tensor (recent Hugging Face MoE code stores them so)."""
    m = wl.model
    width = max(m.intermediate, m.dense_intermediate)
    cands = [m.vocab * m.hidden, m.hidden * (m.q_dim + 2 * m.kv_dim), 2 * m.hidden * width,
             m.hidden * m.intermediate * max(m.shared_experts, 1), m.learned_positions * m.hidden]
    if m.n_experts > 1:
        cands.append(m.n_experts * 2 * m.hidden * m.intermediate)
    return int(max(cands))


def _ds_config(wl: TrainWorkload, nwl: TrainWorkload, choice: _Choice, code: ModelCode,
               nvme_path: str) -> dict[str, Any]:
    n_gpus, stage = wl.gpus, nwl.zero_stage
    layer_elems = math.ceil(wl.model.layer_params())
    cfg: dict[str, Any] = {
        "train_batch_size": wl.micro_batch * wl.grad_accum * wl.gpus,
        "train_micro_batch_size_per_gpu": wl.micro_batch,
        "gradient_accumulation_steps": wl.grad_accum,
        # clipping is costed (the step's unscale pass), its threshold is not: 1.0 is Megatron's
        # --clip-grad and Hugging Face Trainer's max_grad_norm default; 0 turns clipping off
        "gradient_clipping": 1.0 if wl.grad_clip else 0.0,
    }
    if wl.precision is Precision.FP16:
        cfg["fp16"] = {"enabled": True, "loss_scale": 0}  # 0: dynamic loss scaling (DOCS_SOURCE)
    elif wl.precision is Precision.BF16:
        cfg["bf16"] = {"enabled": True}
    opt = wl.optimizer
    if opt is OptimizerKind.ADAMW:
        cfg["optimizer"] = {"type": "AdamW"}
    elif opt is OptimizerKind.ADAM:
        cfg["optimizer"] = {"type": "Adam", "params": {"adam_w_mode": False}}
    elif opt is OptimizerKind.SGD_MOMENTUM:
        cfg["optimizer"] = {"type": "SGD", "params": {"momentum": SGD_MOMENTUM_PLACEHOLDER}}
    else:
        cfg["optimizer"] = {"type": "SGD"}
    if opt in (OptimizerKind.SGD, OptimizerKind.SGD_MOMENTUM) and stage >= 1:
        # torch.optim.SGD is not in ZERO_SUPPORTED_OPTIMIZERS: "You are using an untested ZeRO Optimizer.
        # Please add <"zero_allow_untested_optimizer": true>" (ENGINE_SOURCE, _do_optimizer_sanity_check).
        cfg["zero_allow_untested_optimizer"] = True
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": wl.overlap is not Overlap.NONE,
                            "contiguous_gradients": True}
    if stage >= 1:
        # One layer's gradients per bucket: the cost model's GPU "grad_buffers" term holds two layers'
        # (the one being written and the one being drained), costmodel/training_memory.py memory_use.
        zero["reduce_bucket_size"] = layer_elems
    if stage == 3:
        # The cost model's "param_buffers": two of the largest unit (a layer, or the embeddings and LM head)
        # gathered at once, the one in use and the prefetched next one; prefetch one layer ahead.
        zero["stage3_prefetch_bucket_size"] = layer_elems
        zero["stage3_max_live_parameters"] = 2 * max(layer_elems, math.ceil(wl.model.head_params()))
    pin = wl.pin_memory
    nvme = False
    if choice.params is not Tier.GPU:
        op: dict[str, Any] = {"device": "cpu" if choice.params is Tier.HOST else "nvme", "pin_memory": pin}
        if choice.params is Tier.DISK:
            nvme = True
            op["nvme_path"] = nvme_path
            # Every partition must fit one swap buffer: numel < buffer_size (PARAM_SWAPPER_SOURCE, get_buffer).
            op["buffer_size"] = max(OFFLOAD_PARAM_BUFFER_SIZE_DEFAULT, math.ceil(_largest_tensor(wl) / n_gpus) + 1)
            op["max_in_cpu"] = 0  # every weight on NVMe, none kept in host memory, as planned
        zero["offload_param"] = op
    if choice.opt is not _Opt.NONE:
        oo: dict[str, Any] = {"device": "nvme" if choice.opt is _Opt.NVME else "cpu", "pin_memory": pin}
        if choice.opt is _Opt.NVME:
            nvme = True
            oo.update({"nvme_path": nvme_path, "buffer_count": NVME_PIPELINED_BUFFER_COUNT,
                       "pipeline_read": True, "pipeline_write": True})
        if choice.opt is _Opt.TWIN:
            oo["ratio"] = choice.cpu_layers / wl.model.n_layers
        zero["offload_optimizer"] = oo
        if stage == 3:
            # One layer's partition per optimizer sub-group: the step runs (and swaps) layer by layer as the
            # cost model schedules it, and Twin-Flow's ratio falls on layer boundaries (TWIN_FLOW_SOURCE).
            zero["sub_group_size"] = math.ceil(wl.model.layer_params() / n_gpus)
    cfg["zero_optimization"] = zero
    if nvme:
        cfg["aio"] = dict(AIO_DEFAULTS)
    if code is ModelCode.DEEPSPEED and any(a is ActAction.RECOMPUTE for a, _ in choice.acts):
        cfg["activation_checkpointing"] = {
            # partition_activations with no model parallelism keeps whole tensors; older DeepSpeed moves
            # checkpoints to the CPU only with it on ("Offloads partitioned activations to CPU if
            # partition_activations is enabled", DOCS_SOURCE).
            "partition_activations": choice.cpu_checkpointing, "cpu_checkpointing": choice.cpu_checkpointing,
            "contiguous_memory_optimization": False, "synchronize_checkpoint_boundary": False, "profile": False,
        }
    return cfg


# ---------------------------------------------------------------------------------------------
# What was lost
# ---------------------------------------------------------------------------------------------


def _ranges(idx: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    idx = sorted(idx)
    parts: list[str] = []
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ", ".join(parts)


def _placement_why(field: str, old: LayerTrainPolicy, new: LayerTrainPolicy, choice: _Choice, how: str) -> str:
    if field == "params":
        return (f"DeepSpeed places every weight alike: zero_optimization.offload_param applies to the whole model "
                f"({OFFLOAD_SOURCE}); the export uses params={new.params.value} everywhere ({how})")
    oc, nc = _cls(old), _cls(new)
    if old.step is StepDevice.GPU and oc is _Cls.CPU:
        twin = (f"; Twin-Flow counts these layers among the {choice.cpu_layers} off-GPU ones and steps the first "
                f"{choice.cpu_layers} layers on the CPU, the rest on the GPU from GPU-resident states "
                f"({TWIN_FLOW_SOURCE})") if choice.opt is _Opt.TWIN else f"; the export runs them as '{_unit_desc(nc)}'"
        return ("DeepSpeed has no GPU step from host-resident states: offload_optimizer also moves the step to the "
                f"CPU (\"Optimizer computation is offload to CPU regardless of device option\", {OFFLOAD_SOURCE})"
                + twin)
    if oc is nc:  # same class: a field DeepSpeed fixes for the class
        if nc is _Cls.NVME:
            return ("offload_optimizer.device nvme swaps master weights, moments and each sub-group's fp32 gradients "
                    f"to NVMe together ({NVME_GRADS_SOURCE}); one device holds them all")
        return ("offload_optimizer.device cpu keeps master weights, moments and the fp32 gradient partition in host "
                f"memory together ({OFFLOAD_SOURCE})")
    if choice.opt is _Opt.TWIN and {oc, nc} <= {_Cls.GPU, _Cls.CPU}:
        return (f"Twin-Flow (offload_optimizer.ratio {choice.cpu_layers}/{len(choice.acts)}) steps the first "
                f"ratio share of the model's parameter sub-groups on the CPU and the rest on the GPU "
                f"({TWIN_FLOW_SOURCE}; {TWIN_FLOW_BLOG}): the plan's {choice.cpu_layers} CPU-stepped layers run as "
                f"layers 0-{choice.cpu_layers - 1}")
    return (f"DeepSpeed runs one offload_optimizer.device for the whole model ({OFFLOAD_SOURCE}), and Twin-Flow's "
            f"ratio works with device cpu only ({TWIN_FLOW_DEVICE_SOURCE}); the export runs every unit as "
            f"'{_unit_desc(nc)}' ({how})")


def _unit_desc(c: _Cls) -> str:
    return {_Cls.GPU: "states and step on the GPU", _Cls.CPU: "states on the host, step on the CPU",
            _Cls.NVME: "states and fp32 gradients on NVMe, step on the CPU"}[c]


def _act_why(old: LayerTrainPolicy, new: LayerTrainPolicy, code: ModelCode, how: str) -> str:
    if code is ModelCode.HF:
        if old.activations is ActAction.SELECTIVE and new.activations is ActAction.RECOMPUTE:
            return ("neither a ds_config key nor a Hugging Face model recomputes only the attention core (Korthikanti "
                    f"et al. 2022 §4.2); gradient_checkpointing_enable() recomputes whole layers "
                    f"({HF_CHECKPOINTING_SOURCE}); Megatron-LM's --recompute-granularity selective does "
                    f"({MEGATRON_SELECTIVE_SOURCE})")
        if old.activations is ActAction.OFFLOAD and new.activations is ActAction.OFFLOAD:
            return (f"torch.autograd.graph.save_on_cpu sends every tensor saved for the backward to the host "
                    f"({SAVE_ON_CPU_SOURCE}): no share of them can stay on the GPU")
        return ("a Hugging Face model checkpoints all its decoder layers or none (model.gradient_checkpointing_enable(), "
                f"{HF_CHECKPOINTING_SOURCE}) and save_on_cpu wraps the whole forward; the export runs "
                f"activations={new.activations.value} in every layer ({how})")
    if old.activations is ActAction.OFFLOAD:
        return ("DeepSpeed's cpu_checkpointing keeps a checkpointed layer's input in host memory and recomputes the "
                f"layer in the backward (CheckpointFunction, {CHECKPOINTING_SOURCE}); no ds_config key keeps a "
                "layer's activations on the host without recompute (torch.autograd.graph.save_on_cpu does: "
                "export with model_code='hf')")
    return ("DeepSpeed's checkpointing recomputes whole checkpointed functions; no ds_config key recomputes only the "
            f"attention core (Korthikanti et al. 2022 §4.2; Megatron-LM's --recompute-granularity selective does, "
            f"{MEGATRON_SELECTIVE_SOURCE}); the export runs activations={new.activations.value} there ({how})")


def _act_text(p: LayerTrainPolicy) -> str:
    if p.activations is ActAction.OFFLOAD:
        return f"activations=offload, offload_share={float(p.offload_share):g}"
    return f"activations={p.activations.value}"


def _lost(pols: Sequence[LayerTrainPolicy], head: LayerTrainPolicy, npols: Sequence[LayerTrainPolicy],
          nhead: LayerTrainPolicy, choice: _Choice, code: ModelCode, how: str) -> list[Unexpressed]:
    """The plan's decisions the nearest policies change, grouped by (decision, instead, why) over the units:
    the weights' tier; the optimizer placement (the changed fields of grads, master, moments, step); the
    activations (with offload_share when both offload)."""
    groups: dict[tuple[str, str, str], tuple[list[int], list[bool]]] = {}
    units = [(i, p, q) for i, (p, q) in enumerate(zip(pols, npols))] + [(None, head, nhead)]
    for i, p, q in units:
        found: list[tuple[str, str, str]] = []
        if p.params is not q.params:
            found.append((f"params={p.params.value}", f"params={q.params.value}",
                          _placement_why("params", p, q, choice, how)))
        changed = [f for f in ("grads", "master", "moments", "step") if getattr(p, f) != getattr(q, f)]
        if changed:
            found.append((", ".join(f"{f}={getattr(p, f).value}" for f in changed),
                          ", ".join(f"{f}={getattr(q, f).value}" for f in changed),
                          _placement_why("step", p, q, choice, how)))
        if _act_text(p) != _act_text(q):
            found.append((_act_text(p), _act_text(q), _act_why(p, q, code, how)))
        for key in found:
            layers, head_flag = groups.setdefault(key, ([], [False]))
            if i is None:
                head_flag[0] = True
            else:
                layers.append(i)
    return [Unexpressed(decision=d, layers=tuple(ls), head=h[0], why=why, instead=inst)
            for (d, inst, why), (ls, h) in groups.items()]


def _workload_lost(wl: TrainWorkload, nwl: TrainWorkload, choice: _Choice) -> list[Unexpressed]:
    out = []
    if nwl.zero_stage != wl.zero_stage:
        if choice.params is not Tier.GPU:
            why = f"offload_param is \"Valid only with stage 3\" ({OFFLOAD_SOURCE})"
        elif choice.opt is _Opt.TWIN:
            why = f"a ratio is \"Partial offloading only supported for ZeRO Stage 3\" ({ZERO_SOURCE})"
        elif choice.opt is _Opt.NVME:
            why = f"\"NVMe offloading is available only with ZeRO stage 3\" ({DOCS_SOURCE})"
        else:
            why = f"offload_optimizer is \"Valid with stage 1, 2, and 3\" ({OFFLOAD_SOURCE})"
        out.append(Unexpressed(decision=f"workload.zero_stage={wl.zero_stage}", layers=(), head=False, why=why,
                               instead=f"workload.zero_stage={nwl.zero_stage}"))
    if nwl.moments_dtype != wl.moments_dtype:
        out.append(Unexpressed(decision=f"workload.moments_dtype={wl.moments_dtype}", layers=(), head=False,
                               why="DeepSpeed's Adam kernels (FusedAdam on the GPU, DeepSpeedCPUAdam on the CPU, "
                                   f"{ENGINE_SOURCE}) keep fp32 moments; no ds_config key stores them in bf16",
                               instead="workload.moments_dtype=fp32"))
    if nwl.fp32_grad_copy != wl.fp32_grad_copy:
        out.append(Unexpressed(decision="workload.fp32_grad_copy=False", layers=(), head=False,
                               why="ZeRO steps from an fp32 gradient partition (\"18 = 2_grads_16bit + 4_grads_32bit "
                                   "+ ...\", estimate_zero2_model_states_mem_needs, deepspeed/runtime/zero/"
                                   "stage_1_and_2.py); no ds_config key drops it",
                               instead="workload.fp32_grad_copy=True"))
    if nwl.overlap != wl.overlap:
        out.append(Unexpressed(decision="workload.overlap=full", layers=(), head=False,
                               why="DeepSpeed runs the optimizer step after the backward (engine.step()); it does "
                                   "not start a layer's CPU step while the backward of later layers runs",
                               instead="workload.overlap=deepspeed"))
    if wl.snapshot_every:
        out.append(Unexpressed(decision=f"workload.snapshot_every={wl.snapshot_every}", layers=(), head=False,
                               why="a ds_config has no in-memory snapshot: DeepSpeed checkpoints with "
                                   "engine.save_checkpoint() to a file system, synchronously, when the script calls "
                                   "it; the exported config is costed without the snapshot, which the training "
                                   "script has to take itself",
                               instead="workload.snapshot_every=0"))
    return out


# ---------------------------------------------------------------------------------------------
# Model code
# ---------------------------------------------------------------------------------------------


def _model_code_steps(choice: _Choice, code: ModelCode, pin: bool) -> list[str]:
    acts = [a for a, _ in choice.acts]
    rec = [i for i, a in enumerate(acts) if a is ActAction.RECOMPUTE]
    off = [i for i, a in enumerate(acts) if a is ActAction.OFFLOAD]
    steps: list[str] = []
    if code is ModelCode.HF:
        if rec:
            steps.append("Call model.gradient_checkpointing_enable() before deepspeed.initialize (with the Trainer: "
                         f"--gradient_checkpointing): every decoder layer is recomputed ({HF_CHECKPOINTING_SOURCE}).")
        if off:
            steps.append(f"Run each micro-batch's forward inside `with torch.autograd.graph.save_on_cpu("
                         f"pin_memory={pin}):` (engine.backward(loss) needs no change): every tensor saved for the "
                         f"backward goes to host memory and back ({SAVE_ON_CPU_SOURCE}). With the Trainer, wrap the "
                         "forward in an overridden compute_loss.")
    elif rec:
        which = "every decoder layer" if len(rec) == len(acts) else f"decoder layers {_ranges(rec)} only"
        steps.append("After deepspeed.initialize, call deepspeed.checkpointing.configure(None, deepspeed_config=<this "
                     f"ds_config>) and run {which} as deepspeed.checkpointing.checkpoint(layer, *inputs) in the "
                     f"model's forward ({CHECKPOINTING_SOURCE}); Megatron-DeepSpeed: --checkpoint-activations "
                     "--deepspeed-activation-checkpointing"
                     + (" --partition-activations --checkpoint-in-cpu" if choice.cpu_checkpointing else "")
                     + f" ({MEGATRON_DS_SOURCE}).")
    return steps


# ---------------------------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------------------------


def export_deepspeed(wl: TrainWorkload, policies: Sequence[LayerTrainPolicy], *, system: System | None = None,
                     head: LayerTrainPolicy | None = None, model_code: ModelCode | str = ModelCode.HF,
                     nvme_path: str = NVME_PATH_DEFAULT) -> DeepSpeedExport:
    """The nearest DeepSpeed config to a per-layer training plan, and what it cannot express.

    Parameters
    ----------
    wl
        The workload the plan is for (model, micro-batch, accumulation, GPUs, precision, optimizer,
        ZeRO stage, pin_memory, overlap).
    policies
        One :class:`~costmodel.training.LayerTrainPolicy` per decoder layer, in order.
    system
        The machine. With it the export costs every combination of the whole-model settings the
        plan uses (:func:`costmodel.training.evaluate_training`) and takes the fastest that fits,
        and reports the exported config's predicted iteration; a disk in the plan needs a disk here.
        None: the rule in the module docstring.
    head
        The embeddings' and LM head's policy (a plan's ``extras.head``); None: the first layer's
        placement with kept activations, as ``evaluate_training`` assumes.
    model_code
        ``"hf"``: a Hugging Face model (checkpointing by ``gradient_checkpointing_enable()``, whole
        model); ``"deepspeed"``: the model calls ``deepspeed.checkpointing.checkpoint`` (per layer,
        configured by the ds_config's ``activation_checkpointing``).
    nvme_path
        The directory on the NVMe drive DeepSpeed swaps to (``nvme_path``), when the plan uses disk.

    Returns
    -------
    DeepSpeedExport
        ``to_dict()`` / ``to_json()``: the ds_config; ``report()``: it with ``cannot_express``,
        ``notes``, the model-code steps and the nearest policies; ``nearest_policies()``,
        ``nearest_head()``, ``nearest_workload()``: what the config runs.

    Raises
    ------
    PlanError
        A workload that is not a TrainWorkload, a policy count other than the model's layers, an
        entry that is not a LayerTrainPolicy, an unknown ``model_code``, or disk in the plan on a
        system without one.

    Examples
    --------
    >>> from costmodel.training import baseline_policies
    >>> from costmodel.transformer import load_model
    >>> wl = TrainWorkload(model=load_model("gpt2"), seq_len=1024, micro_batch=4, grad_accum=2)
    >>> ex = export_deepspeed(wl, baseline_policies("zero-offload", wl, None))
    >>> cfg = ex.to_dict()
    >>> cfg["train_batch_size"], cfg["zero_optimization"]["stage"], cfg["zero_optimization"]["offload_optimizer"]
    (8, 2, {'device': 'cpu', 'pin_memory': False})
    >>> ex.cannot_express, schema_violations(cfg)
    ((), [])
    """
    wl, pols, head, code = _check_inputs(wl, policies, head, system, model_code, nvme_path)
    n = wl.model.n_layers
    layer_p, head_p = float(wl.model.layer_params()), float(wl.model.head_params())
    param_opts, param_rule = _param_options(pols, head, layer_p, head_p)
    opt_opts, opt_rule = _opt_options(pols, head, layer_p, head_p)
    act_opts, act_rule = _act_options(pols, code)

    def make(params: Tier, opt: tuple[_Opt, int], act: tuple[tuple[tuple[ActAction, float], ...], bool]) -> _Choice:
        return _Choice(params=params, opt=opt[0], cpu_layers=opt[1], acts=act[0], cpu_checkpointing=act[1])

    rule = make(param_rule, opt_rule, act_rule)
    notes: list[str] = []
    chosen, how = rule, "the setting holding most of the plan's parameters (or layers)"
    predicted = (None, None, None)
    plan_s = None
    if system is not None:
        try:
            plan_s = evaluate_training(wl, system, pols, head=head).iteration_s
        except WorkloadError:
            plan_s = None
        results = []
        combos = {make(p, o, a) for p, o, a in product(param_opts, opt_opts, act_opts)} | {rule}
        for c in sorted(combos, key=lambda c: (c != rule, repr(c))):
            npols, nhead = _nearest(c, n)
            try:
                cost = evaluate_training(_nearest_workload(wl, c), system, npols, head=nhead)
            except WorkloadError:
                continue
            results.append((c, cost))
        fitting = [(c, cost) for c, cost in results if cost.feasible]
        if fitting:
            chosen, best = min(fitting, key=lambda r: (r[1].iteration_s, r[0] != rule))
            how = f"the fastest of {len(results)} DeepSpeed-expressible settings that fits {system.name}"
            predicted = (best.iteration_s, best.tokens_per_s, True)
        else:
            how = f"none of {len(results)} DeepSpeed-expressible settings fits {system.name}; the rule's choice"
            rule_cost = next((cost for c, cost in results if c == rule), None)
            if rule_cost is not None:
                predicted = (rule_cost.iteration_s, rule_cost.tokens_per_s, False)
                notes.append(f"The exported config does not fit {system.name}: {rule_cost.explain_shortfall()}.")
        notes.append(f"Chosen with {system.name}: {how}; predicted iteration "
                     + (f"{predicted[0]:.4g} s" if predicted[0] is not None else "not computable")
                     + (f" against the plan's {plan_s:.4g} s" if plan_s is not None else "") + ".")
    npols, nhead = _nearest(chosen, n)
    nwl = _nearest_workload(wl, chosen)
    cfg = _ds_config(wl, nwl, chosen, code, nvme_path)
    lost = _workload_lost(wl, nwl, chosen) + _lost(pols, head, npols, nhead, chosen, code, how)
    notes += _notes(wl, nwl, chosen, cfg, code)
    return DeepSpeedExport(model=wl.model.name, model_code=code, config_json=json.dumps(cfg), workload=nwl,
                           policies=npols, head=nhead, cannot_express=tuple(lost), notes=tuple(notes),
                           model_code_steps=tuple(_model_code_steps(chosen, code, wl.pin_memory)),
                           system=None if system is None else system.name, predicted_iteration_s=predicted[0],
                           predicted_tokens_per_s=predicted[1], predicted_fits=predicted[2], plan_iteration_s=plan_s)


def _notes(wl: TrainWorkload, nwl: TrainWorkload, choice: _Choice, cfg: Mapping[str, Any], code: ModelCode) -> list[str]:
    n = wl.model.n_layers
    zero = cfg["zero_optimization"]
    notes = [
        (f"train_batch_size {cfg['train_batch_size']} = train_micro_batch_size_per_gpu {wl.micro_batch} x "
         f"gradient_accumulation_steps {wl.grad_accum} x {wl.gpus} GPU(s), as DeepSpeed requires (\"train_batch_size "
         f"must be equal to train_micro_batch_size_per_gpu * gradient_accumulation * number of GPUs\", {DOCS_SOURCE})."),
        ("optimizer holds only what selects the algorithm: add lr, betas, eps, weight_decay (Adam/AdamW) or lr "
         "(SGD) under optimizer.params, and a scheduler, before training."),
    ]
    if wl.optimizer is OptimizerKind.SGD_MOMENTUM:
        notes.append(f"optimizer.params.momentum {SGD_MOMENTUM_PLACEHOLDER} is a placeholder (torch.optim.SGD's "
                     "docstring example) that makes torch keep the momentum buffer the plan costs: set your own.")
    if zero["stage"] >= 1:
        notes.append("reduce_bucket_size is one layer's parameters (elements), so the two buckets in flight match the "
                     "cost model's GPU grad_buffers term (costmodel/training_memory.py, memory_use).")
    if zero["stage"] == 3:
        notes.append("stage3_prefetch_bucket_size (one layer) and stage3_max_live_parameters (twice the largest unit: "
                     "a layer, or the embeddings and LM head) match the cost model's param_buffers term: the gathered "
                     "unit in use and the prefetched next one (costmodel/training_memory.py, memory_use).")
    if "sub_group_size" in zero:
        notes.append(f"sub_group_size {zero['sub_group_size']} is one layer's parameters per GPU: DeepSpeed closes an "
                     "optimizer sub-group once its partitions reach it, so the step runs (and, on NVMe, swaps) about "
                     f"one layer at a time, as the cost model schedules it ({TWIN_FLOW_SOURCE}).")
    if choice.opt is _Opt.TWIN:
        ratio = zero["offload_optimizer"]["ratio"]
        notes.append(
            f"offload_optimizer.ratio {ratio:.6g} = {choice.cpu_layers}/{n} layers stepped on the CPU. DeepSpeed steps "
            "sub-group i on the CPU iff i < int(ratio x number of sub-groups), in parameter order (embeddings first); "
            "with one layer per sub-group plus the embeddings' and the head's, that is the first "
            f"{choice.cpu_layers} layers and the embeddings, give or take one layer at the truncation "
            f"({TWIN_FLOW_SOURCE}). A 'twin-flow:R' baseline puts round(R x {n}) layers on the CPU, so the exported "
            f"ratio is within 0.5/{n} = {0.5 / n:.4g} of R. With the Hugging Face Trainer's weight-decay groups the "
            "sub-groups run through the decayed weights first, then the biases and norms.")
        if not wl.pin_memory:
            notes.append(f"Twin-Flow's authors run it with pin_memory true ({TWIN_FLOW_DEVICE_SOURCE}); the plan's "
                         "workload has pin_memory false, so the config keeps it false as costed.")
    if "offload_param" in zero and "offload_optimizer" not in zero:
        notes.append("offload_param without offload_optimizer: DeepSpeed releases before the ZeRO-Offload refactor "
                     "asserted \"parameter offload is only available with optimizer state offload\" (stage3.py).")
    if "aio" in cfg:
        notes.append(f"nvme_path {NVME_PATH_DEFAULT!r} is DeepSpeed's documented example: point every nvme_path at a "
                     f"directory on the NVMe drive. aio holds DeepSpeed's defaults ({AIO_SOURCE}).")
    if choice.opt is _Opt.NVME:
        notes.append(
            f"offload_optimizer.buffer_count {NVME_PIPELINED_BUFFER_COUNT}: the newest DeepSpeed requires it with "
            "pipeline_read and pipeline_write (which overlap NVMe reads and writes with the CPU step, as the cost "
            f"model assumes). The buffers are {NVME_PIPELINED_BUFFER_COUNT} x the largest sub-group x 4 bytes of pinned "
            "host memory, more than the cost model's disk_staging term (two units' state sets).")
    if choice.params is Tier.DISK:
        notes.append(f"offload_param.max_in_cpu 0 keeps no weight in host memory (DeepSpeed's default keeps 1e9 "
                     f"elements there); buffer_size {zero['offload_param']['buffer_size']} exceeds the largest weight "
                     f"partition, as the parameter swapper asserts ({PARAM_SWAPPER_SOURCE}).")
    if wl.gpus > 1:
        notes.append("gpus > 1: launch one process per GPU (deepspeed --num_gpus ...); the interconnect bandwidth the "
                     "plan assumed is not a ds_config setting.")
    if code is ModelCode.HF and any(a is ActAction.OFFLOAD for a, _ in choice.acts):
        notes.append("save_on_cpu also moves the embeddings' and LM head's saved tensors, which the cost model keeps "
                     "on the GPU.")
    if choice.cpu_checkpointing:
        notes.append("cpu_checkpointing moves every checkpointed layer's input to host memory, also for layers the "
                     "plan recomputes with the input on the GPU: a few MB per layer less GPU memory than costed.")
    return notes


__all__ = [
    "ACT_CKPT_KEYS", "AIO_DEFAULTS", "AIO_KEYS", "BF16_KEYS", "FORMAT", "FP16_KEYS", "NVME_PATH_DEFAULT",
    "NVME_PIPELINED_BUFFER_COUNT", "OFFLOAD_DEVICES", "OFFLOAD_OPTIMIZER_KEYS", "OFFLOAD_PARAM_KEYS", "OPTIMIZER_KEYS",
    "OPTIMIZER_PARAM_KEYS", "OPTIMIZER_TYPES", "SOURCES", "TOP_LEVEL_KEYS", "ZERO_KEYS", "ZERO_STAGES",
    "DeepSpeedExport", "ModelCode", "Unexpressed", "export_deepspeed", "schema_violations",
]
