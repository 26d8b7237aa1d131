"""Export an embeddings plan as TorchRec planner constraints: ``ParameterConstraints`` per table.

One table's tierplan decision becomes the fields of TorchRec's
``torchrec.distributed.planner.types.ParameterConstraints`` (one allowed sharding type and compute
kernel, so TorchRec's planner has nothing left to choose) plus a ``CacheParams`` for a cache:

=============  =====================  ===========================================================
tierplan       compute kernel         notes
=============  =====================  ===========================================================
``gpu``        ``fused``              FBGEMM ``EmbeddingLocation.DEVICE`` (rows and state in HBM)
``cache``      ``fused_uvm_caching``  ``MANAGED_CACHING``; ``load_factor = cache_rows / rows``
                                      rounded up (:func:`cache_load_factor`); ``lru`` -> ``LRU``,
                                      ``static`` -> ``LFU`` (the nearest; listed as not expressed)
``uvm``        ``fused_uvm``          ``MANAGED`` (rows in host memory, gathered over the link)
``cpu``        ``fused_uvm``          the nearest runnable: TorchRec has no CPU pooling inside a GPU
                                      training step (listed as not expressed)
=============  =====================  ===========================================================

With a system, the export adds a ``Topology`` (the system's usable HBM and host bytes) and a
``FixedPercentageStorageReservation`` for the plan's HBM that TorchRec's shard estimate does not count
(:func:`_reserved_hbm_bytes`): TorchRec's default reservation keeps 15 % of HBM and refuses a plan
that fills it, which an optimal plan does. ``benchmarks/torchrec_export_check.py`` hands exports to
TorchRec's own planner where TorchRec imports.

What TorchRec cannot carry -- a CPU table, a static cache, an update on the CPU, an optimizer state
tier FBGEMM does not use, a prefetch without a cache -- is listed per table in
:attr:`TorchRecExport.cannot_express` with the reason and what the export does instead.

Sources (the field names and enum values below are copied from these files; a test checks every
emitted name against them):

* ``ParameterConstraints``: meta-pytorch/torchrec@8cf003aed8e7dd3d96a5e1f2107ff73a3a6384b4
  ``torchrec/distributed/planner/types.py`` (the same 16 fields as the newest stored version);
* ``CacheParams``, ``ShardingType``: meta-pytorch/torchrec@cf9325f61eac93ee9587be5e882d716e6c2b230f
  ``torchrec/distributed/types.py``;
* ``EmbeddingComputeKernel``: meta-pytorch/torchrec@6ed568f8c14e8487aeb4e8067ce36ab261bd7307
  ``torchrec/distributed/embedding_types.py``;
* ``EmbOptimType``: pytorch/FBGEMM@edfc309391222687314366ee6b4ee24eb087d918
  ``fbgemm_gpu/fbgemm_gpu/split_embedding_configs.py`` (the four used here are also the keys of
  ``_EMB_OPT_TYPE_TO_OPTIMIZER_CLASS`` in meta-pytorch/torchrec@d6e46d75209e114e197b9619b7088d717e7e80d9
  ``torchrec/distributed/utils.py``);
* ``CacheAlgorithm`` (``LRU``, ``LFU``): pytorch/FBGEMM@2bf277b7a4feab2f4bb7f96061f0f0ff6d21554f
  ``fbgemm_gpu/fbgemm_gpu/split_table_batched_embeddings_ops_common.py``;
* cache sizing, optimizer-state placement (``construct_split_state``) and the fused backward:
  pytorch/FBGEMM@e1a561090def1ee811712540a0eb779b9b997a8a
  ``fbgemm_gpu/fbgemm_gpu/split_table_batched_embeddings_ops_training.py``;
* table grouping and the shared cache (``group_tables``, ``_get_weighted_avg_cache_load_factor``,
  ``use_one_tbe_per_table``): meta-pytorch/torchrec@ae38a103178255a47e445a2228b89c2181f3903e
  ``torchrec/distributed/embedding_sharding.py``;
* ``device_group`` (a planner skips tables of another device group):
  meta-pytorch/torchrec@2a84aee651e421198d778d71fcb10e773bbde09d ``torchrec/distributed/planner/enumerators.py``;
* the planner's storage reservation (``FixedPercentageStorageReservation``; the default
  ``HeuristicalStorageReservation`` keeps 15 % of HBM): meta-pytorch/torchrec@44902b0ad070d2c066f5b14806fa61d0b5dfbe6f
  ``torchrec/distributed/planner/storage_reservations.py``;
* the prefetch pipeline ``PrefetchTrainPipelineSparseDist``:
  meta-pytorch/torchrec@346b44fbb3a1e4296d3ddd1dd2d940af82cb04f8
  ``torchrec/distributed/train_pipeline/train_pipelines.py``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from costmodel.embeddings import CurveKind, Optimizer, Table
from costmodel.embeddings_cost import (
    FP32_BYTES,
    INDEX_BYTES,
    EmbWorkload,
    Placement,
    Runtime,
    StateTier,
    TablePolicy,
    UpdateOn,
    memory_use,
)
from costmodel.kv import capacity
from hwprofiles import System
from solver.errors import PlanError

FORMAT = "torchrec-parameter-constraints"

PARAMETER_CONSTRAINTS_SOURCE = ("meta-pytorch/torchrec@8cf003aed8e7dd3d96a5e1f2107ff73a3a6384b4 "
                                "torchrec/distributed/planner/types.py")
# Every field of ParameterConstraints, in declaration order (PARAMETER_CONSTRAINTS_SOURCE).
PARAMETER_CONSTRAINTS_FIELDS = (
    "sharding_types", "compute_kernels", "min_partition", "pooling_factors", "num_poolings", "batch_sizes",
    "is_weighted", "cache_params", "enforce_hbm", "stochastic_rounding", "bounds_check_mode", "feature_names",
    "output_dtype", "device_group", "key_value_params", "use_virtual_table",
)
CACHE_PARAMS_SOURCE = ("meta-pytorch/torchrec@cf9325f61eac93ee9587be5e882d716e6c2b230f "
                       "torchrec/distributed/types.py")
# Every field of CacheParams, in declaration order (CACHE_PARAMS_SOURCE).
CACHE_PARAMS_FIELDS = ("algorithm", "load_factor", "reserved_memory", "precision", "prefetch_pipeline", "stats",
                       "multipass_prefetch_config")
# ShardingType name -> value (CACHE_PARAMS_SOURCE, class ShardingType).
SHARDING_TYPES = MappingProxyType({
    "DATA_PARALLEL": "data_parallel", "TABLE_WISE": "table_wise", "COLUMN_WISE": "column_wise",
    "ROW_WISE": "row_wise", "TABLE_ROW_WISE": "table_row_wise", "TABLE_COLUMN_WISE": "table_column_wise",
    "GRID_SHARD": "grid_shard",
})
COMPUTE_KERNEL_SOURCE = ("meta-pytorch/torchrec@6ed568f8c14e8487aeb4e8067ce36ab261bd7307 "
                         "torchrec/distributed/embedding_types.py")
# EmbeddingComputeKernel name -> value (COMPUTE_KERNEL_SOURCE).
EMBEDDING_COMPUTE_KERNELS = MappingProxyType({
    "DENSE": "dense", "FUSED": "fused", "FUSED_UVM": "fused_uvm", "FUSED_UVM_CACHING": "fused_uvm_caching",
    "QUANT": "quant", "QUANT_UVM": "quant_uvm", "QUANT_UVM_CACHING": "quant_uvm_caching", "KEY_VALUE": "key_value",
    "CUSTOMIZED_KERNEL": "customized_kernel", "SSD_VIRTUAL_TABLE": "ssd_virtual_table",
    "DRAM_VIRTUAL_TABLE": "dram_virtual_table",
})
EMB_OPTIM_TYPE_SOURCE = ("pytorch/FBGEMM@edfc309391222687314366ee6b4ee24eb087d918 "
                         "fbgemm_gpu/fbgemm_gpu/split_embedding_configs.py")
# Every EmbOptimType member, name -> value (EMB_OPTIM_TYPE_SOURCE).
EMB_OPTIM_TYPES = MappingProxyType({
    "SGD": "sgd", "EXACT_SGD": "exact_sgd", "LAMB": "lamb", "ADAM": "adam", "EXACT_ADAGRAD": "exact_adagrad",
    "EXACT_ROWWISE_ADAGRAD": "exact_row_wise_adagrad", "LARS_SGD": "lars_sgd",
    "PARTIAL_ROWWISE_ADAM": "partial_row_wise_adam", "PARTIAL_ROWWISE_LAMB": "partial_row_wise_lamb",
    "ROWWISE_ADAGRAD": "row_wise_adagrad", "SHAMPOO": "shampoo", "MADGRAD": "madgrad",
    "EXACT_ROWWISE_WEIGHTED_ADAGRAD": "exact_row_wise_weighted_adagrad",
})
CACHE_ALGORITHM_SOURCE = ("pytorch/FBGEMM@2bf277b7a4feab2f4bb7f96061f0f0ff6d21554f "
                          "fbgemm_gpu/fbgemm_gpu/split_table_batched_embeddings_ops_common.py")
# CacheAlgorithm members (CACHE_ALGORITHM_SOURCE): LRU = 0, LFU = 1.
CACHE_ALGORITHMS = ("LRU", "LFU")
FBGEMM_TRAINING_SOURCE = ("pytorch/FBGEMM@e1a561090def1ee811712540a0eb779b9b997a8a "
                          "fbgemm_gpu/fbgemm_gpu/split_table_batched_embeddings_ops_training.py")
GROUPING_SOURCE = ("meta-pytorch/torchrec@ae38a103178255a47e445a2228b89c2181f3903e "
                   "torchrec/distributed/embedding_sharding.py")
ENUMERATOR_SOURCE = ("meta-pytorch/torchrec@2a84aee651e421198d778d71fcb10e773bbde09d "
                     "torchrec/distributed/planner/enumerators.py")
PIPELINE_SOURCE = ("meta-pytorch/torchrec@346b44fbb3a1e4296d3ddd1dd2d940af82cb04f8 "
                   "torchrec/distributed/train_pipeline/train_pipelines.py")
# FixedPercentageStorageReservation(percentage) (HBM share kept from the shards) and the planner's
# default HeuristicalStorageReservation(percentage=0.15):
STORAGE_RESERVATION_SOURCE = ("meta-pytorch/torchrec@44902b0ad070d2c066f5b14806fa61d0b5dfbe6f "
                              "torchrec/distributed/planner/storage_reservations.py")
# Ways of FBGEMM's set-associative cache on CUDA: "DEFAULT_ASSOC = 32 if torch.version.hip is None
# else 64" (FBGEMM_TRAINING_SOURCE); a cache holds a whole number of sets.
FBGEMM_CACHE_ASSOC = 32
# FBGEMM's training TBE weights: "weights_precision ... Options are SparseType.FP32 and
# SparseType.FP16" (FBGEMM_TRAINING_SOURCE, SplitTableBatchedEmbeddingBagsCodegen docstring).
_DATA_TYPE_OF_ROW_BYTES = {4: "FP32", 2: "FP16"}


class ComputeKernel(enum.StrEnum):
    """The ``EmbeddingComputeKernel`` members this export uses (names and values as TorchRec's)."""

    FUSED = "fused"
    FUSED_UVM = "fused_uvm"
    FUSED_UVM_CACHING = "fused_uvm_caching"


class CacheAlgorithm(enum.StrEnum):
    """FBGEMM's ``CacheAlgorithm`` members by name (the Python snippet writes ``CacheAlgorithm.<name>``)."""

    LRU = "LRU"
    LFU = "LFU"


class EmbOptimType(enum.StrEnum):
    """The FBGEMM ``EmbOptimType`` members tierplan's optimizers map to (names and values as FBGEMM's)."""

    EXACT_SGD = "exact_sgd"
    EXACT_ROWWISE_ADAGRAD = "exact_row_wise_adagrad"
    EXACT_ADAGRAD = "exact_adagrad"
    ADAM = "adam"


OPTIMIZER_TO_EMB_OPTIM_TYPE = MappingProxyType({
    Optimizer.SGD: EmbOptimType.EXACT_SGD, Optimizer.ROWWISE_ADAGRAD: EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    Optimizer.ADAGRAD: EmbOptimType.EXACT_ADAGRAD, Optimizer.ADAM: EmbOptimType.ADAM,
})


# The plan's HBM terms (costmodel.embeddings_cost.memory_use) that TorchRec's planner counts in its shards'
# storage (calculate_shard_storages: the table or its cache, optimizer state, cache bookkeeping, and the
# shard's input ids and pooled output); the others are what its storage reservation keeps back.
_SHARD_HBM_TERMS = frozenset({"tables", "cache_rows", "cache_state", "table_state", "index_pooled"})


def _reserved_hbm_bytes(wl: EmbWorkload, pols: Sequence[TablePolicy]) -> int:
    """The plan's HBM that TorchRec's shard estimate does not count: every term but
    :data:`_SHARD_HBM_TERMS`, plus what the plan's ``index_pooled`` holds beyond TorchRec's per-shard
    input and output (ids ``8 L`` and pooled vectors ``g = B D 4``; the plan also keeps their
    gradients ``g``, and a ``cpu`` table has no ids on the GPU), summed over the tables."""
    gpu = dict(memory_use(wl, pols).gpu_breakdown)
    reserved = sum(v for k, v in gpu.items() if k not in _SHARD_HBM_TERMS)
    for t, p in zip(wl.model.tables, pols):
        ids, g = INDEX_BYTES * wl.batch * float(t.pooling), float(wl.batch * t.dim * FP32_BYTES)
        ours = 2 * g + (0.0 if p.placement is Placement.CPU else ids)
        reserved += max(0.0, ours - (ids + g))
    return math.ceil(reserved)


def cache_load_factor(cache_rows: int, rows: int) -> float:
    """FBGEMM's ``cache_load_factor`` for a cache of at least ``cache_rows`` of a table's ``rows``.

    FBGEMM sizes the cache as ``(int(R x load_factor) + A - 1) // A`` sets of ``A`` rows (``R`` the
    rows of the cached tables of one TBE, ``A = 32`` on CUDA; FBGEMM_TRAINING_SOURCE, the cache
    setup of ``SplitTableBatchedEmbeddingBagsCodegen``): the ``int`` truncates, so ``cache_rows /
    rows`` rounded to a float may give one row less. The load factor returned is ``cache_rows /
    rows`` raised by float ulps until ``int(rows x load_factor) >= cache_rows``; it lies in (0, 1]
    and ``rows x load_factor`` is below ``cache_rows + 1``.

    Examples
    --------
    >>> cache_load_factor(1000, 10_000)
    0.1
    >>> lf = cache_load_factor(7, 30)
    >>> int(30 * lf) >= 7
    True
    """
    for name, value in (("cache_rows", cache_rows), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PlanError(f"{name} must be a positive integer, got {value!r}")
    if cache_rows > rows:
        raise PlanError(f"cache_rows must be at most rows ({rows:,}), got {cache_rows:,}")
    lf = cache_rows / rows
    for _ in range(64):  # a correctly rounded quotient is within a few ulps: this never runs out
        if int(rows * lf) >= cache_rows:
            return min(lf, 1.0)
        lf = math.nextafter(lf, math.inf)
    raise PlanError(f"no float load factor gives {cache_rows:,} of {rows:,} rows (float rounding)")


def fbgemm_cache_rows(rows: int, load_factor: float, assoc: int = FBGEMM_CACHE_ASSOC) -> int:
    """Cache slots FBGEMM allocates for a TBE of ``rows`` cached rows at ``load_factor``:
    ``max(1, (int(rows x load_factor) + assoc - 1) // assoc) x assoc`` (FBGEMM_TRAINING_SOURCE; it
    shrinks the cache further only if HBM is short).

    Examples
    --------
    >>> fbgemm_cache_rows(10_000, 0.1)
    1024
    """
    sets = max(1, (int(rows * load_factor) + assoc - 1) // assoc)
    return sets * assoc


@dataclass(frozen=True, slots=True, kw_only=True)
class Unexpressed:
    """A decision of the plan TorchRec cannot carry: ``decision`` (``field=value``), ``why`` and what
    the export does instead."""

    table: str
    decision: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"table": self.table, "decision": self.decision, "why": self.why}


@dataclass(frozen=True, slots=True, kw_only=True)
class TableConstraint:
    """One table's ``ParameterConstraints`` (and ``CacheParams``), with what the plan decided.

    ``load_factor``, ``cache_algorithm`` and ``prefetch_pipeline`` are set exactly for
    ``fused_uvm_caching``; ``fbgemm_cache_rows`` is the cache FBGEMM allocates for this table in a TBE
    of its own (:func:`fbgemm_cache_rows`), 0 without a cache.
    """

    table: str
    rows: int
    placement: Placement
    cache_rows: int
    compute_kernel: ComputeKernel
    pooling_factor: float
    batch_size: int
    sharding_type: str = SHARDING_TYPES["TABLE_WISE"]
    cache_algorithm: CacheAlgorithm | None = None
    load_factor: float | None = None
    prefetch_pipeline: bool | None = None
    fbgemm_cache_rows: int = 0

    def __post_init__(self) -> None:
        where = f"table {self.table!r}: "
        if self.sharding_type not in SHARDING_TYPES.values():
            raise PlanError(f"{where}sharding_type must be one of {', '.join(SHARDING_TYPES.values())}, "
                            f"got {self.sharding_type!r}")
        object.__setattr__(self, "compute_kernel", ComputeKernel(self.compute_kernel))
        cached = self.compute_kernel is ComputeKernel.FUSED_UVM_CACHING
        if cached != (self.load_factor is not None) or cached != (self.cache_algorithm is not None):
            raise PlanError(f"{where}load_factor and cache_algorithm are for (and needed by) fused_uvm_caching, "
                            f"got load_factor={self.load_factor!r}, cache_algorithm={self.cache_algorithm!r} with "
                            f"{self.compute_kernel.value!r}")
        if cached and not (isinstance(self.load_factor, float) and 0 < self.load_factor <= 1):
            raise PlanError(f"{where}load_factor must be a float in (0, 1], got {self.load_factor!r}")

    def cache_params(self) -> dict[str, Any] | None:
        """The ``CacheParams`` fields set (JSON: the algorithm by name), or None without a cache."""
        if self.compute_kernel is not ComputeKernel.FUSED_UVM_CACHING:
            return None
        return {"algorithm": self.cache_algorithm.value, "load_factor": self.load_factor,
                "prefetch_pipeline": bool(self.prefetch_pipeline)}

    def constraint_fields(self) -> dict[str, Any]:
        """The ``ParameterConstraints`` fields set, JSON-able; the rest keep TorchRec's defaults."""
        out: dict[str, Any] = {"sharding_types": [self.sharding_type], "compute_kernels": [self.compute_kernel.value],
                               "pooling_factors": [self.pooling_factor], "num_poolings": [1.0],
                               "batch_sizes": [self.batch_size]}
        cp = self.cache_params()
        if cp is not None:
            out["cache_params"] = cp
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TorchRecExport:
    """A plan in TorchRec's terms: per-table constraints, the sharder's ``fused_params``, what could
    not be expressed (:class:`Unexpressed`) and notes for the user. ``hbm_cap_bytes`` and
    ``ddr_cap_bytes`` are the system's usable bytes for TorchRec's ``Topology`` (None without a
    system)."""

    model: str
    batch: int
    tables: tuple[TableConstraint, ...]
    optimizer: EmbOptimType
    one_tbe_per_table: bool
    cannot_express: tuple[Unexpressed, ...]
    notes: tuple[str, ...]
    hbm_cap_bytes: int | None = None
    ddr_cap_bytes: int | None = None
    hbm_reserved_bytes: int = 0

    @property
    def storage_reservation_percentage(self) -> float | None:
        """The share of ``hbm_cap`` that TorchRec's planner is to keep from the tables
        (``FixedPercentageStorageReservation(percentage)``): ``hbm_reserved_bytes / hbm_cap``, rounded
        down to 10^-6 (the planner's own estimate of a shard may exceed the plan's bytes by a fraction
        of a row; the constraints fix every table's kernel and load factor, so the extra room cannot
        place more than planned). None without a topology."""
        if self.hbm_cap_bytes is None:
            return None
        return math.floor(self.hbm_reserved_bytes / self.hbm_cap_bytes * 1e6) / 1e6

    def __post_init__(self) -> None:
        tables = tuple(self.tables)
        if not tables or not all(isinstance(t, TableConstraint) for t in tables):
            raise PlanError(f"tables must be a non-empty tuple of TableConstraint, got {self.tables!r}")
        names = [t.table for t in tables]
        if len(set(names)) != len(names):
            raise PlanError(f"table names must be unique, got {names!r}")
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "optimizer", EmbOptimType(self.optimizer))
        object.__setattr__(self, "cannot_express", tuple(self.cannot_express))
        object.__setattr__(self, "notes", tuple(self.notes))
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch <= 0:
            raise PlanError(f"batch must be a positive integer, got {self.batch!r}")
        if (self.hbm_cap_bytes is None) != (self.ddr_cap_bytes is None):
            raise PlanError(f"hbm_cap_bytes and ddr_cap_bytes come together (a Topology), got "
                            f"{self.hbm_cap_bytes!r} and {self.ddr_cap_bytes!r}")
        r = self.hbm_reserved_bytes
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise PlanError(f"hbm_reserved_bytes must be a non-negative integer, got {r!r}")

    def table(self, name: str) -> TableConstraint:
        for t in self.tables:
            if t.table == name:
                return t
        raise PlanError(f"table must be one of the model {self.model!r}'s tables, got {name!r}")

    def fused_params(self) -> dict[str, Any]:
        """The sharder's ``fused_params`` (JSON: the optimizer by its ``EmbOptimType`` name)."""
        out: dict[str, Any] = {"optimizer": self.optimizer.name}
        if self.one_tbe_per_table:
            out["use_one_tbe_per_table"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``format``, ``torchrec_fields_from``, ``tables`` (name -> ParameterConstraints
        fields), ``fused_params``, ``cannot_express``, ``notes``, plus ``planned`` (name -> the plan's
        placement and cache rows, and FBGEMM's cache rows), ``batch_size``, ``topology`` and ``sources``."""
        topology = None
        if self.hbm_cap_bytes is not None:
            topology = {"world_size": 1, "compute_device": "cuda", "hbm_cap": self.hbm_cap_bytes,
                        "ddr_cap": self.ddr_cap_bytes,
                        "storage_reservation": {"kind": "FixedPercentageStorageReservation",
                                                "percentage": self.storage_reservation_percentage,
                                                "reserved_bytes": self.hbm_reserved_bytes}}
        return {
            "format": FORMAT,
            "torchrec_fields_from": PARAMETER_CONSTRAINTS_SOURCE,
            "model": self.model,
            "batch_size": self.batch,
            "tables": {t.table: t.constraint_fields() for t in self.tables},
            "fused_params": self.fused_params(),
            "cannot_express": [u.to_dict() for u in self.cannot_express],
            "notes": list(self.notes),
            "planned": {t.table: {"placement": t.placement.value, "rows": t.rows, "cache_rows": t.cache_rows,
                                  "fbgemm_cache_rows": t.fbgemm_cache_rows} for t in self.tables},
            "topology": topology,
            "sources": {"ParameterConstraints": PARAMETER_CONSTRAINTS_SOURCE, "CacheParams": CACHE_PARAMS_SOURCE,
                        "EmbeddingComputeKernel": COMPUTE_KERNEL_SOURCE, "EmbOptimType": EMB_OPTIM_TYPE_SOURCE,
                        "CacheAlgorithm": CACHE_ALGORITHM_SOURCE, "fbgemm_training": FBGEMM_TRAINING_SOURCE,
                        "grouping": GROUPING_SOURCE, "enumerator": ENUMERATOR_SOURCE, "pipeline": PIPELINE_SOURCE,
                        "storage_reservation": STORAGE_RESERVATION_SOURCE},
        }

    def to_python(self) -> str:
        """Python source that builds ``constraints: Dict[str, ParameterConstraints]``, ``fused_params``
        and a sharder (and, with a system, a ``Topology`` and planner) for a TorchRec user."""
        lines = [f"# TorchRec constraints generated by tierplan for model {_comment(self.model)}, batch {self.batch}.",
                 f"# Fields from {PARAMETER_CONSTRAINTS_SOURCE}."]
        if self.cannot_express:
            lines.append("# Not expressed (the export's nearest is used; see tierplan's cannot_express):")
            lines += [f"#   {_comment(u.table)}: {_comment(u.decision)}" for u in self.cannot_express]
        lines += [
            "from typing import Any, Dict", "",
            "from fbgemm_gpu.split_embedding_configs import EmbOptimType",
            "from fbgemm_gpu.split_table_batched_embeddings_ops_common import CacheAlgorithm",
            "from torchrec.distributed.embedding_types import EmbeddingComputeKernel",
            "from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder",
            "from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology",
            "from torchrec.distributed.planner.types import ParameterConstraints",
            "from torchrec.distributed.types import CacheParams, ShardingType", "",
            "constraints: Dict[str, ParameterConstraints] = {",
        ]
        sharding_name = {v: k for k, v in SHARDING_TYPES.items()}
        for t in self.tables:
            lines += [f"    {t.table!r}: ParameterConstraints(",
                      f"        sharding_types=[ShardingType.{sharding_name[t.sharding_type]}.value],",
                      f"        compute_kernels=[EmbeddingComputeKernel.{t.compute_kernel.name}.value],",
                      f"        pooling_factors=[{t.pooling_factor!r}],",
                      "        num_poolings=[1.0],",
                      f"        batch_sizes=[{t.batch_size!r}],"]
            if t.compute_kernel is ComputeKernel.FUSED_UVM_CACHING:
                lines.append(f"        cache_params=CacheParams(algorithm=CacheAlgorithm.{t.cache_algorithm.value}, "
                             f"load_factor={t.load_factor!r}, prefetch_pipeline={bool(t.prefetch_pipeline)!r}),"
                             f"  # {t.cache_rows:,} of {t.rows:,} rows")
            lines.append("    ),")
        lines += ["}", "",
                  "# Add the optimizer's hyper-parameters (learning_rate, eps, ...) here.",
                  "fused_params: Dict[str, Any] = {",
                  f"    \"optimizer\": EmbOptimType.{self.optimizer.name},"]
        if self.one_tbe_per_table:
            lines.append("    \"use_one_tbe_per_table\": True,")
        lines += ["}", "sharder = EmbeddingBagCollectionSharder(fused_params=fused_params)"]
        if self.hbm_cap_bytes is not None:
            lines += ["",
                      "from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation",
                      "",
                      (f"topology = Topology(world_size=1, compute_device=\"cuda\", hbm_cap={self.hbm_cap_bytes!r}, "
                       f"ddr_cap={self.ddr_cap_bytes!r})"),
                      (f"# keep the plan's {self.hbm_reserved_bytes:,} bytes of HBM that are not tables (dense part, "
                       "activations, ids, pooled vectors) from the tables,"),
                      "# instead of the planner's default 15 % HeuristicalStorageReservation",
                      (f"reservation = FixedPercentageStorageReservation(percentage="
                       f"{self.storage_reservation_percentage!r})"),
                      (f"planner = EmbeddingShardingPlanner(topology=topology, batch_size={self.batch!r}, "
                       f"constraints=constraints, storage_reservation=reservation)"),
                      "# plan = planner.plan(model, [sharder])"]
        return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    """``text`` safe inside a ``#`` comment: characters that are not printable written as escapes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def _check_inputs(wl: Any, policies: Any, system: Any) -> tuple[TablePolicy, ...]:
    if not isinstance(wl, EmbWorkload):
        raise PlanError(f"wl must be an EmbWorkload, got {type(wl).__name__}")
    tables = wl.model.tables
    if not isinstance(policies, (list, tuple)):
        raise PlanError(f"policies must be a list or tuple of TablePolicy (one per table), got "
                        f"{type(policies).__name__}")
    if len(policies) != len(tables):
        raise PlanError(f"policies must have one TablePolicy per table of model {wl.model.name!r} "
                        f"({len(tables)} tables), got {len(policies)}")
    for i, (t, p) in enumerate(zip(tables, policies)):
        if not isinstance(p, TablePolicy):
            raise PlanError(f"policies[{i}] (table {t.name!r}) must be a TablePolicy, got {type(p).__name__}: {p!r}")
        if p.placement is Placement.CACHE and p.cache_rows > t.rows:
            raise PlanError(f"policies[{i}] (table {t.name!r}): cache_rows must be at most the table's {t.rows:,} "
                            f"rows, got {p.cache_rows:,}")
    if system is not None and not isinstance(system, System):
        raise PlanError(f"system must be a System or None, got {type(system).__name__}")
    return tuple(policies)


def _state_on_gpu(kernel: ComputeKernel, optimizer: Optimizer) -> bool:
    """Where FBGEMM keeps a table's optimizer state: ``construct_split_state`` puts it on the device
    when ``location == DEVICE or rowwise`` and in UVM (managed, host memory) otherwise
    (FBGEMM_TRAINING_SOURCE)."""
    return kernel is ComputeKernel.FUSED or optimizer is Optimizer.ROWWISE_ADAGRAD


def _table(wl: EmbWorkload, t: Table, p: TablePolicy, out: list[Unexpressed]) -> TableConstraint:
    """One table's constraint; appends to ``out`` what it cannot express."""
    name, model = t.name, wl.model
    opt = model.optimizer_of(t)
    pre = p.prefetched(wl)

    def lost(decision: str, why: str) -> None:
        out.append(Unexpressed(table=name, decision=decision, why=why))

    algorithm = lf = prefetch_pipeline = None
    cache_rows = fb_rows = 0
    if p.placement is Placement.GPU:
        kernel = ComputeKernel.FUSED
    elif p.placement is Placement.CACHE and p.cache_rows > 0:
        kernel, cache_rows = ComputeKernel.FUSED_UVM_CACHING, p.cache_rows
        lf = cache_load_factor(cache_rows, t.rows)
        fb_rows = fbgemm_cache_rows(t.rows, lf)
        prefetch_pipeline = pre
        if p.cache_kind is CurveKind.LRU:
            algorithm = CacheAlgorithm.LRU
        else:
            algorithm = CacheAlgorithm.LFU
            lost(f"cache_kind={p.cache_kind.value}",
                 "FBGEMM's caches admit every missed row (CacheAlgorithm LRU or LFU); none pins the hottest rows. "
                 "Exported as LFU, the nearest: it keeps the rows seen most often once their counts have built "
                 "up, in 32-way sets, and may evict a hot row for a row of its set")
    else:
        kernel = ComputeKernel.FUSED_UVM
        if p.placement is Placement.CACHE:
            lost("cache_rows=0", "FBGEMM needs a load factor above 0 (it allocates at least one 32-row set); a "
                                 "0-row cache is exported as fused_uvm: every row gathered over the link, as planned")
        elif p.placement is Placement.CPU:
            lost("placement=cpu",
                 "TorchRec's kernels gather and pool on the GPU in a GPU training step; it has no DLRM-style hybrid "
                 "that pools a table on the CPU and copies the pooled vectors up (ParameterConstraints.device_group "
                 "'cpu' only makes a cuda planner skip the table, EmbeddingEnumerator.enumerate, for a separate CPU "
                 "topology). Exported as fused_uvm, "
                 "the nearest runnable: rows stay in host memory, but the GPU gathers each looked-up row over the "
                 "link (8-byte ids and row bytes instead of pooled vectors)")
        if pre:
            lost("prefetch=true", "TorchRec prefetches into the HBM cache of a fused_uvm_caching table "
                                  "(CacheParams.prefetch_pipeline); fused_uvm has no cache to prefetch into, so "
                                  "this table's rows are gathered in its own forward")
    if p.update_on is UpdateOn.CPU:
        lost("update_on=cpu", "FBGEMM fuses the optimizer into the GPU backward (\"The backward operator is fused "
                              "with optimizer\", SplitTableBatchedEmbeddingBagsCodegen); the GPU updates this "
                              "table's host-resident rows over UVM instead of the CPU")
    if opt is not Optimizer.SGD:
        fb_gpu = _state_on_gpu(kernel, opt)
        planned_gpu = p.state_tier is StateTier.GPU
        if fb_gpu != planned_gpu:
            state_bytes = t.rows * model.optimizer_state_bytes_per_row(t)
            if fb_gpu:
                why = (f"FBGEMM keeps {opt.value}'s per-row state in HBM for every table (construct_split_state: "
                       f"'location == DEVICE or rowwise'): {state_bytes:,} bytes of HBM the plan keeps in host memory")
            else:
                why = (f"FBGEMM keeps {opt.value}'s state of a {kernel.value} table in UVM (host memory); enforce_hbm "
                       f"would move it to HBM but moves the table's rows there too: {state_bytes:,} bytes stay in "
                       f"host memory, read over the link")
            lost(f"state_tier={p.state_tier.value}", why)
    if opt is not model.table_optimizer:
        shared = OPTIMIZER_TO_EMB_OPTIM_TYPE[model.table_optimizer].name
        lost(f"optimizer={opt.value}",
             f"fused_params gives one EmbOptimType per sharder ({shared}); give this table "
             f"{OPTIMIZER_TO_EMB_OPTIM_TYPE[opt].name} with a sharder of its own or apply_optimizer_in_backward on "
             f"its weight")
    if t.dtype_bytes not in _DATA_TYPE_OF_ROW_BYTES:
        lost(f"dtype_bytes={t.dtype_bytes}", "FBGEMM's training TBE takes FP32 or FP16 weights "
                                             "(weights_precision); the table must be FP32 (4 bytes) or FP16 (2)")
    return TableConstraint(table=name, rows=t.rows, placement=p.placement, cache_rows=cache_rows,
                           compute_kernel=kernel, pooling_factor=float(t.pooling), batch_size=wl.batch,
                           cache_algorithm=algorithm, load_factor=lf, prefetch_pipeline=prefetch_pipeline,
                           fbgemm_cache_rows=fb_rows)


def export_torchrec(wl: EmbWorkload, policies: Sequence[TablePolicy], *, system: System | None = None,
                    one_tbe_per_table: bool = False) -> TorchRecExport:
    """TorchRec ``ParameterConstraints`` for a plan's per-table policies, on one GPU.

    Parameters
    ----------
    wl
        The workload the plan is for (its model's tables, in order, and its batch).
    policies
        One :class:`~costmodel.embeddings_cost.TablePolicy` per table, in the model's order.
    system
        The machine: its usable HBM and host bytes (capacity less reserved) become the TorchRec
        ``Topology``'s ``hbm_cap`` and ``ddr_cap``. None: no topology.
    one_tbe_per_table
        Add ``use_one_tbe_per_table: True`` to ``fused_params`` so each cached table keeps a cache of
        its own size (one TBE kernel per table); False: TorchRec shares one cache among the cached
        tables it groups into a TBE (see the notes).

    Returns
    -------
    TorchRecExport
        ``to_dict()`` (JSON) and ``to_python()`` (a snippet for a TorchRec user).

    Examples
    --------
    >>> from costmodel.embeddings import rec_model_from_dict
    >>> m = rec_model_from_dict({"name": "toy", "dense_features": 4, "bottom_mlp": [16], "top_mlp": [1],
    ...     "defaults": {"dim": 16}, "access": {"kind": "zipf", "alpha": 1.05},
    ...     "tables": [{"name": "small", "rows": 1000}, {"name": "big", "rows": 10_000}]})
    >>> ex = export_torchrec(EmbWorkload(model=m, batch=2048),
    ...     [TablePolicy(placement="gpu"), TablePolicy(placement="cache", cache_rows=1000, cache_kind="lru")])
    >>> ex.to_dict()["tables"]["big"]["cache_params"]
    {'algorithm': 'LRU', 'load_factor': 0.1, 'prefetch_pipeline': False}
    >>> ex.table("big").fbgemm_cache_rows
    1024
    """
    pols = _check_inputs(wl, policies, system)
    if not isinstance(one_tbe_per_table, bool):
        raise PlanError(f"one_tbe_per_table must be true or false, got {one_tbe_per_table!r}")
    lost: list[Unexpressed] = []
    if wl.runtime is not Runtime.FBGEMM:
        lost.append(Unexpressed(table="*", decision=f"runtime={wl.runtime.value}",
                                why="TorchRec runs the placement with FBGEMM's caches and fused optimizer: the plan's "
                                    "HBM figures counted ColossalAI's index maps and sparse gradients instead"))
    tables = tuple(_table(wl, t, p, lost) for t, p in zip(wl.model.tables, pols))
    model = wl.model
    notes = [
        ("One GPU: every table table_wise on rank 0; the constraints allow one compute kernel per table, so "
         "TorchRec's planner only checks its own storage estimate (it raises PlannerError if it finds the plan too "
         "large) and does not re-place tables."),
        ("Constraint keys are the table names; name each EmbeddingBagConfig as here. pooling_factors is the plan's "
         "mean lookups per sample, num_poolings 1 (one feature per table), batch_sizes the plan's batch."),
        ("fused_params holds the table optimizer only: add its hyper-parameters (learning_rate, eps, ...); the "
         f"dense optimizer ({model.dense_optimizer.value}) is the training loop's, not part of these constraints."),
    ]
    kinds = sorted({t.dtype_bytes for t in model.tables if t.dtype_bytes in _DATA_TYPE_OF_ROW_BYTES}, reverse=True)
    if kinds:
        listed = ", ".join(f"DataType.{_DATA_TYPE_OF_ROW_BYTES[b]} for {b}-byte rows" for b in kinds)
        notes.append(f"Set each EmbeddingBagConfig's data_type to its rows' type ({listed}); ParameterConstraints "
                     "does not carry it.")
    cached = [t for t in tables if t.compute_kernel is ComputeKernel.FUSED_UVM_CACHING]
    if cached:
        notes.append(
            f"Cache sizing: FBGEMM allocates (int(R x load_factor) + {FBGEMM_CACHE_ASSOC} - 1) // "
            f"{FBGEMM_CACHE_ASSOC} sets of {FBGEMM_CACHE_ASSOC} rows (64 on ROCm), R the rows of a TBE's cached "
            "tables, and shrinks the cache if HBM is short; each load factor here is cache_rows / rows rounded up "
            "so that int(rows x load_factor) >= cache_rows: never a smaller cache than planned, and at most "
            f"{FBGEMM_CACHE_ASSOC} rows more per table (planned.fbgemm_cache_rows). CacheParams.precision is left "
            "unset (TorchRec's default). The cache is set-associative, not the fully associative LRU tierplan "
            "models.")
        if len(cached) > 1 and not one_tbe_per_table:
            notes.append(
                "Shared cache: TorchRec groups cached tables of one data type and pooling into one TBE with a single "
                "cache whose load factor is the rows-weighted mean of theirs (_get_weighted_avg_cache_load_factor): "
                "the total cache is the planned sum, but the tables' rows compete for it. export_torchrec(..., "
                "one_tbe_per_table=True) adds use_one_tbe_per_table to fused_params to give each table its own "
                "cache, at one TBE kernel per table.")
        if any(t.prefetch_pipeline for t in cached):
            notes.append("prefetch_pipeline=True prefetches only when training runs with "
                         "torchrec.distributed.train_pipeline.PrefetchTrainPipelineSparseDist: its progress() "
                         "prefetches the next batch's rows into the cache on a separate stream after this batch's "
                         "forward, overlapping its backward and optimizer step; other pipelines do not prefetch.")
    if any(p.prefetched(wl) and p.placement is Placement.GPU for p in pols):
        notes.append("Tables in HBM with prefetch: their next batch's ids are copied while this batch computes, as "
                     "torchrec.distributed.train_pipeline.TrainPipelineSparseDist (and its prefetching subclass) "
                     "copies each batch's input on its own stream; train with one of them.")
    hbm = ddr = None
    reserved = 0
    if system is not None:
        cap = capacity(system)
        hbm, ddr = int(cap["gpu_bytes"]), int(cap["host_bytes"])
        reserved = _reserved_hbm_bytes(wl, pols)
        notes.append(f"Topology hbm_cap {hbm:,} and ddr_cap {ddr:,} bytes: {system.name}'s usable memory (capacity "
                     "less reserved).")
        notes.append(
            f"Storage reservation: the planner keeps {reserved:,} bytes of HBM from the tables -- the plan's "
            "dense part, activations and prefetch buffers, and the pooled vectors' gradients (TorchRec's shard "
            "estimate counts each table's ids and pooled output itself) -- as "
            "FixedPercentageStorageReservation(percentage=reserved / hbm_cap, rounded down). TorchRec's default, "
            "HeuristicalStorageReservation(percentage=0.15), keeps 15 % of HBM plus its own estimate of the "
            "dense part and of the inputs, and refuses a plan that fills HBM as tierplan's do (PlannerError "
            "'insufficient storage'); its own warning recommends FixedPercentageStorageReservation.")
    return TorchRecExport(model=model.name, batch=wl.batch, tables=tables,
                          optimizer=OPTIMIZER_TO_EMB_OPTIM_TYPE[model.table_optimizer],
                          one_tbe_per_table=one_tbe_per_table, cannot_express=tuple(lost), notes=tuple(notes),
                          hbm_cap_bytes=hbm, ddr_cap_bytes=ddr, hbm_reserved_bytes=reserved)


__all__ = [
    "CACHE_ALGORITHMS", "CACHE_PARAMS_FIELDS", "EMBEDDING_COMPUTE_KERNELS", "EMB_OPTIM_TYPES", "FBGEMM_CACHE_ASSOC",
    "OPTIMIZER_TO_EMB_OPTIM_TYPE", "PARAMETER_CONSTRAINTS_FIELDS", "SHARDING_TYPES", "CacheAlgorithm", "ComputeKernel",
    "EmbOptimType", "TableConstraint", "TorchRecExport", "Unexpressed", "cache_load_factor", "export_torchrec",
    "fbgemm_cache_rows",
]
