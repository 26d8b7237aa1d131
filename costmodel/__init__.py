"""Cost models: transformer specs, roofline and link times, the KV-inference cost of a policy,
recommendation-model specs with their tables' access distributions and hit-rate curves, and the cost
of a training iteration with model states and activations offloaded.

Pure functions of a workload and a :class:`hwprofiles.System`; no solver and no torch here.
"""

from costmodel.embeddings import (
    HistogramAccess,
    HitCurve,
    RecModel,
    Table,
    TraceAccess,
    ZipfAccess,
    list_rec_models,
    load_histogram,
    load_rec_model,
    load_trace,
    rec_model_from_dict,
)
from costmodel.embeddings_cost import (
    BASELINES as EMB_BASELINES,
    POLICIES as EMB_POLICIES,
    EmbCost,
    EmbWorkload,
    Runtime as EmbRuntime,
    TablePolicy,
    baseline_policies,
    evaluate_embeddings,
    gpu_bytes_between_iterations,
    torchrec_estimated_hit_rate,
)
from costmodel.errors import WorkloadError
from costmodel.kv import (
    Fractions,
    KvAction,
    KvCost,
    KvWorkload,
    LayerCost,
    LayerPolicy,
    Memory,
    Resource,
    Tier,
    TokenSplit,
    UnitCosts,
    capacity,
    dense_gpu_s,
    evaluate,
    head_costs,
    memory_use,
    prefill_costs,
    range_bounds,
    shortfalls,
    time_lower_bound_s,
    unit_costs,
    working_bytes,
)
from costmodel.training import (
    BASELINES as TRAIN_BASELINES,
    ActAction,
    LayerTrainPolicy,
    OptimizerKind,
    Overlap as TrainOverlap,
    Precision,
    StateBytes,
    StepDevice,
    TrainCost,
    TrainMemory,
    TrainResource,
    TrainUnitCosts,
    TrainWorkload,
    activation_bytes,
    baseline_policies as train_baseline_policies,
    deepspeed_zero2_estimate,
    deepspeed_zero3_estimate,
    evaluate_training,
    megatron_bytes_per_param,
    memory_use as train_memory_use,
    pinned_allocation_bytes,
    state_bytes,
    unit_costs as train_unit_costs,
    zero_paper_model_state_bytes,
)
from costmodel.roofline import Op, Processor, Roof, binding_roof, op_time_s, roofline_time_s
from costmodel.transformer import TransformerSpec, list_models, load_model, model_info, spec_from_hf_config

__all__ = [
    "HistogramAccess", "HitCurve", "RecModel", "Table", "TraceAccess", "ZipfAccess", "list_rec_models",
    "load_histogram", "load_rec_model", "load_trace", "rec_model_from_dict",
    "EMB_BASELINES", "EMB_POLICIES", "EmbCost", "EmbRuntime", "EmbWorkload", "TablePolicy", "baseline_policies",
    "evaluate_embeddings", "gpu_bytes_between_iterations", "torchrec_estimated_hit_rate",
    "TRAIN_BASELINES", "ActAction", "LayerTrainPolicy", "OptimizerKind", "Precision", "StateBytes", "StepDevice",
    "TrainCost", "TrainMemory", "TrainOverlap", "TrainResource", "TrainUnitCosts", "TrainWorkload",
    "activation_bytes", "deepspeed_zero2_estimate", "deepspeed_zero3_estimate", "evaluate_training",
    "megatron_bytes_per_param", "pinned_allocation_bytes", "state_bytes", "train_baseline_policies",
    "train_memory_use", "train_unit_costs", "zero_paper_model_state_bytes",
    "Fractions", "KvAction", "KvCost", "KvWorkload", "LayerCost", "LayerPolicy", "Memory", "Op",
    "Processor", "Resource", "Roof", "Tier", "TokenSplit", "TransformerSpec", "UnitCosts",
    "WorkloadError", "binding_roof", "capacity", "dense_gpu_s", "evaluate", "head_costs", "list_models",
    "load_model", "memory_use", "model_info", "op_time_s", "prefill_costs", "range_bounds", "shortfalls",
    "roofline_time_s", "spec_from_hf_config", "time_lower_bound_s", "unit_costs", "working_bytes",
]
