"""Per-iteration cost of a DLRM training step with each embedding table placed on GPU, cache, UVM or CPU.

A training iteration runs in three stages, one after another:

* ``fetch`` -- what the forward pass waits for: the lookup ids copied up (8 B each), host-resident
  rows gathered over the link (not prefetched), and the ``cpu`` tables' gathers and pooling on the
  host with their pooled vectors copied up (DLRM's hybrid, Naumov et al. 2019, arXiv:1906.00091);
* ``compute`` -- the GPU's work (HBM gathers, the MLPs and the interaction forward and backward,
  cache maintenance, the updates of HBM rows, the dense optimizer) beside the copies that overlap it
  (a prefetch of the next batch's cold rows, ScratchPipe, Kwon & Rhu, MICRO 2022; write-backs);
* ``host_update`` -- tables updated on the CPU: pooled-vector gradients copied down, then the
  CPU's sparse update (the next forward reads the updated rows).

A stage whose copies overlap its compute takes its slowest resource (as :mod:`costmodel.kv` does
for a layer); a chain inside a stage (CPU pooling, then its copy) is a sum. Every byte count is in
the docstring of the function that makes it; the iteration's numbers are in :class:`EmbCost`.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from costmodel.embeddings import (
    FP32_BYTES,
    CurveKind,
    Optimizer,
    RecModel,
    Table,
    _enum,
    _is_int,
    dense_optimizer_state_bytes_per_param,
)
from costmodel.errors import WorkloadError
from costmodel.kv import Memory, Resource, capacity, shortfalls
from costmodel.roofline import Op, Processor, roofline_time_s
from hwprofiles import OpClass, System, format_bytes

# A batch above this makes expected-distinct-row sums and the MIP's coefficients meaningless for one GPU.
MAX_BATCH = 1 << 24
# Bytes of one lookup id as TorchRec's KeyedJaggedTensor carries it (int64).
INDEX_BYTES = 8
# Bytes of an LRU slot's timestamp that FBGEMM's lxu_cache_state/lru_state keeps per touched row (int64).
LRU_STATE_BYTES = 8
# A cache's bookkeeping in HBM, as FBGEMM allocates it (SplitTableBatchedEmbeddingBagsCodegen.
# _apply_cache_state, pytorch/FBGEMM@e1a561090def1ee811712540a0eb779b9b997a8a
# fbgemm_gpu/fbgemm_gpu/split_table_batched_embeddings_ops_training.py): ``cache_index_table_map``
# int32 per row of the cached tables ("4x total embedding hash size with uvm cache"),
# ``lxu_cache_state`` int64 per slot ("8x of total cache slots"), ``lxu_state`` int64 per slot for
# LRU and per row (``total_cache_hash_size + 1``) for LFU ("LFU: 8x of total embedding hash size"),
# and with ``prefetch_pipeline`` ``lxu_cache_locking_counter`` int32 per slot (_init_uvm_cache_counter).
CACHE_INDEX_MAP_BYTES = 4
CACHE_SLOT_STATE_BYTES = 8
LXU_STATE_BYTES = 8
CACHE_LOCKING_COUNTER_BYTES = 4
# ColossalAI's CachedParamMgr (colossalai/nn/parallel/layers/cache_embedding/cache_mgr.py, read at
# hpcaitech/ColossalAI@fe3fca5a and an Aug 2022 version; the same in both for DATASET eviction): two int64
# maps over every row of the fused table (``idx_map = torch.arange(num_embeddings, dtype=torch.long)`` and
# ``inverted_cached_idx``), one int64 map over the cache slots (``cached_idx_map``), all on the GPU.
COLOSSALAI_ROW_MAP_BYTES = 2 * 8
COLOSSALAI_SLOT_MAP_BYTES = 8
# A sparse COO gradient's index per looked-up row (int64), as ``embedding_bag``'s sparse backward builds it.
SPARSE_GRAD_INDEX_BYTES = 8
# The batch a TorchRec-style loop keeps on the GPU until the next one replaces it: KeyedJaggedTensor
# lengths and offsets int32 per (table, sample) (hpcaitech/CachedEmbedding recsys/datasets/criteo.py,
# ``dtype=torch.int32``), labels and logits 4 B per sample.
KJT_LENGTH_BYTES = 4
LABEL_LOGIT_BYTES = 2 * 4
# FBGEMM/TorchRec's default cache_load_factor: TorchRec planner constants CACHING_RATIO = 0.2
# (torchrec/distributed/planner/constants.py, kernel_bw_lookup for FUSED_UVM_CACHING).
DEFAULT_CACHE_LOAD_FACTOR = 0.2
# TorchRec's EmbeddingOffloadScaleupProposer.allocate_budget: it deals the budget out in at most 128
# passes while more than 1 byte is left, and promotes a table whose load factor passes 0.9999 to HBM
# (meta-pytorch/torchrec torchrec/distributed/planner/proposers.py at 63ad0325: "while budget > 1 and
# num_pass < 128", and next_plan: "if clf > 0.9999:  # tolerate float roundoff").
TORCHREC_SCALEUP_MAX_PASSES = 128
TORCHREC_PROMOTE_LOAD_FACTOR = 0.9999
# Cache sizes at which the LRU miss-ratio curve is sampled for TorchRec's cacheability: 0 and this
# many log-spaced sizes in [1, rows], rounded to whole rows (fewer distinct ones for a small table).
CACHEABILITY_POINTS = 64
# NVIDIA DLRM_and_DCNv2 (TensorFlow2): --cpu_offloading_threshold_gb default 75 for an 80 GB A100;
# the default threshold here scales it to the GPU: 75/80 of the usable HBM.
NVIDIA_THRESHOLD_SHARE = 75.0 / 80.0


class Placement(enum.StrEnum):
    GPU = "gpu"
    CACHE = "cache"
    UVM = "uvm"
    CPU = "cpu"


class StateTier(enum.StrEnum):
    GPU = "gpu"
    HOST = "host"


class UpdateOn(enum.StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class Runtime(enum.StrEnum):
    """The engine that runs the placement; it decides what a cache's bookkeeping and the tables'
    gradients hold in HBM (:func:`cache_state_bytes`, :func:`sparse_grad_bytes`).

    ``fbgemm``: TorchRec with FBGEMM's table-batched embeddings (fused backward and optimizer: no
    gradient tensor is kept). ``colossalai``: ColossalAI's ``CachedEmbeddingBag`` /
    ``FreqAwareEmbeddingBag`` (``colossalai/nn/parallel/layers/cache_embedding``, Aug-Oct 2022): one
    fused table over all tables, a GPU cache managed by ``CachedParamMgr`` with dataset-frequency
    eviction, PyTorch's ``embedding_bag(sparse=True)`` gradients and ``torch.optim.SGD``; its cache
    moves weight rows only, so the tables' optimizer must be SGD, and it has no UVM or CPU pooling.
    """

    FBGEMM = "fbgemm"
    COLOSSALAI = "colossalai"


class Stage(enum.StrEnum):
    FETCH = "fetch"
    COMPUTE = "compute"
    HOST_UPDATE = "host_update"


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbWorkload:
    """DLRM training: ``batch`` samples per iteration of ``model``.

    ``dtype_bytes`` is the dense compute's element size (activations; 0 = the model's
    ``dense_dtype_bytes``); 2 runs the MLPs at the GPU's fp16 peak, 4 or 8 at its fp32 peak.
    ``tf32`` (4-byte runs only): matmuls run on TF32 tensor cores, at the GPU's ``tf32_flop_per_s``
    (what PyTorch 1.7-1.11 did by default on Ampere, ``torch.backends.cuda.matmul.allow_tf32``);
    elementwise ops still move 4-byte elements.
    ``prefetch`` is the default of :attr:`TablePolicy.prefetch` for ``cache`` and ``uvm`` tables.
    ``runtime``: the engine that runs the placement (:class:`Runtime`; ``colossalai`` needs SGD tables).
    """

    model: RecModel
    batch: int
    dtype_bytes: int = 0
    prefetch: bool = False
    tf32: bool = False
    runtime: Runtime = Runtime.FBGEMM
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, RecModel):
            raise WorkloadError(f"model must be a RecModel, got {type(self.model).__name__}")
        if not _is_int(self.batch) or self.batch <= 0:
            raise WorkloadError(f"batch must be a positive integer, got {self.batch!r}")
        if self.batch > MAX_BATCH:
            raise WorkloadError(f"batch must be at most {MAX_BATCH:,} (a bound on the planner's work), "
                                f"got {self.batch:,}")
        if not _is_int(self.dtype_bytes) or self.dtype_bytes not in (0, 2, 4, 8):
            raise WorkloadError(f"dtype_bytes must be one of 0 (the model's), 2, 4, 8, got {self.dtype_bytes!r}")
        if not isinstance(self.prefetch, (bool, np.bool_)):
            raise WorkloadError(f"prefetch must be true or false, got {self.prefetch!r}")
        if not isinstance(self.tf32, (bool, np.bool_)):
            raise WorkloadError(f"tf32 must be true or false, got {self.tf32!r}")
        if self.tf32 and self.dense_dtype_bytes != 4:
            raise WorkloadError(f"tf32 is for 4-byte (fp32) dense compute, got tf32=True with dtype_bytes "
                                f"{self.dense_dtype_bytes}")
        object.__setattr__(self, "tf32", bool(self.tf32))
        runtime = _enum(Runtime, self.runtime, "runtime")
        object.__setattr__(self, "runtime", runtime)
        if runtime is Runtime.COLOSSALAI:
            other = sorted({self.model.optimizer_of(t).value for t in self.model.tables} - {Optimizer.SGD.value})
            if other:
                raise WorkloadError(f"runtime colossalai trains its tables with SGD only (its cache manager moves "
                                    f"weight rows, not optimizer state), got table optimizer {', '.join(other)}")
        object.__setattr__(self, "_hash", hash((self.model, self.batch, self.dtype_bytes, bool(self.prefetch),
                                                self.tf32, runtime)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def dense_dtype_bytes(self) -> int:
        return self.dtype_bytes or self.model.dense_dtype_bytes

    def summary(self) -> dict[str, object]:
        return {"model": self.model.name, "model_file": self.model.file, "batch": self.batch,
                "dtype_bytes": self.dense_dtype_bytes, "prefetch": bool(self.prefetch),
                "tf32": self.tf32, "runtime": self.runtime.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class TablePolicy:
    """Where one table lives and how it trains.

    ``placement``: ``gpu`` (whole table in HBM), ``cache`` (the ``cache_rows`` rows a ``cache_kind``
    cache holds in HBM, every row in host memory, misses gathered over the link: FBGEMM's
    ``EmbeddingLocation.MANAGED_CACHING``), ``uvm`` (every row in host memory, gathered over the link:
    ``MANAGED``), ``cpu`` (every row in host memory, gathered and pooled by the CPU: DLRM's hybrid).
    ``state_tier``: where the optimizer state lives (rows on the GPU keep theirs there; ``cpu``
    tables keep theirs on the host). ``update_on``: who updates host-resident rows (``cpu`` for
    ``uvm`` and ``cpu`` tables only; None: ``cpu`` for ``cpu`` tables, else ``gpu``).
    ``prefetch``: the next batch's lookup ids, and its cold rows, copied during this batch's compute
    (``gpu``: the ids only, as TorchRec's ``TrainPipelineSparseDist`` copies the next batch's input on
    its own stream; ``cache``/``uvm``: ids and cold rows, ScratchPipe; None: the workload's default).
    """

    placement: Placement
    cache_rows: int = 0
    cache_kind: CurveKind = CurveKind.LRU
    state_tier: StateTier | None = None
    update_on: UpdateOn | None = None
    prefetch: bool | None = None

    def __post_init__(self) -> None:
        where = "table policy: "
        p = _enum(Placement, self.placement, "placement", where=where)
        object.__setattr__(self, "placement", p)
        object.__setattr__(self, "cache_kind", _enum(CurveKind, self.cache_kind, "cache_kind", where=where))
        if not _is_int(self.cache_rows) or self.cache_rows < 0:
            raise WorkloadError(f"{where}cache_rows must be 0 or a positive integer, got {self.cache_rows!r}")
        if self.cache_rows and p is not Placement.CACHE:
            raise WorkloadError(f"{where}cache_rows is for placement cache, got cache_rows={self.cache_rows} with "
                                f"placement {p.value!r}")
        default_state = StateTier.GPU if p is Placement.GPU else StateTier.HOST
        state = default_state if self.state_tier is None else _enum(StateTier, self.state_tier, "state_tier", where=where)
        if p is Placement.GPU and state is not StateTier.GPU:
            raise WorkloadError(f"{where}state_tier must be gpu for placement gpu (rows on the GPU keep their "
                                f"optimizer state there), got {state.value!r}")
        if p is Placement.CPU and state is not StateTier.HOST:
            raise WorkloadError(f"{where}state_tier must be host for placement cpu (the CPU updates it), got "
                                f"{state.value!r}")
        object.__setattr__(self, "state_tier", state)
        default_update = UpdateOn.CPU if p is Placement.CPU else UpdateOn.GPU
        upd = default_update if self.update_on is None else _enum(UpdateOn, self.update_on, "update_on", where=where)
        if upd is UpdateOn.CPU and p in (Placement.GPU, Placement.CACHE):
            raise WorkloadError(f"{where}update_on cpu is for host-resident rows (placement uvm or cpu), got "
                                f"placement {p.value!r}")
        if upd is UpdateOn.GPU and p is Placement.CPU:
            raise WorkloadError(f"{where}update_on must be cpu for placement cpu (its rows never reach the GPU), "
                                f"got 'gpu'")
        if upd is UpdateOn.CPU and state is not StateTier.HOST:
            raise WorkloadError(f"{where}update_on cpu needs state_tier host (the CPU cannot update state in "
                                f"HBM), got {state.value!r}")
        object.__setattr__(self, "update_on", upd)
        if self.prefetch is not None:
            if not isinstance(self.prefetch, (bool, np.bool_)):
                raise WorkloadError(f"{where}prefetch must be true, false or null, got {self.prefetch!r}")
            if self.prefetch and p is Placement.CPU:
                raise WorkloadError(f"{where}prefetch is for placement gpu, cache or uvm (ids and rows the GPU "
                                    f"gathers), got placement 'cpu'")
            object.__setattr__(self, "prefetch", bool(self.prefetch))

    def prefetched(self, wl: EmbWorkload) -> bool:
        """Whether this table's next-batch ids (and cold rows) are prefetched (its own setting, else the
        workload's); never for ``cpu`` tables, which the CPU gathers."""
        if self.placement is Placement.CPU:
            return False
        return bool(wl.prefetch) if self.prefetch is None else self.prefetch

    def summary(self) -> dict[str, object]:
        return {"placement": self.placement.value, "cache_rows": self.cache_rows, "cache_kind": self.cache_kind.value,
                "state_tier": self.state_tier.value, "update_on": self.update_on.value, "prefetch": self.prefetch}


# ---------------------------------------------------------------------------------------------
# Per-table traffic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TableTraffic:
    """One table's per-iteration rows and bytes, by resource and stage.

    ``distinct_rows`` U = ``expected_distinct_rows(batch x pooling)``; ``hit_rate`` h, the share of
    lookups the GPU serves (1 on the GPU, the cache's curve, 0 over UVM or on the CPU); ``cold_rows``
    M, the distinct rows read from host memory
    (:meth:`~costmodel.embeddings.ZipfAccess.cold_distinct_rows`: for a cache, the distinct rows it
    does not hold -- more than ``U (1 - h)``, since the lookups that hit repeat the hot rows); and
    ``row_hit_fraction`` g = 1 - M / U, the share of the distinct rows in HBM. Every byte and FLOP
    count is affine in g (the MIP's hit variable).
    """

    name: str
    placement: Placement
    lookups: float
    distinct_rows: float
    hit_rate: float
    row_hit_fraction: float
    cold_rows: float
    gpu_bytes: float  # HBM bytes read and written on the GPU
    uvm_h2d_bytes: float  # rows read over the link by GPU gathers (small transfers, UVM rate)
    h2d_bytes: float  # bulk copies up (ids, pooled vectors) at the pinned rate
    d2h_bytes: float  # copies down (write-backs, gradients)
    cpu_fwd_flop: float
    cpu_fwd_bytes: float
    cpu_upd_flop: float
    cpu_upd_bytes: float
    stage_of_cold: Stage  # where the cold-row gather and the id upload run


def _hit_rate(table: Table, pol: TablePolicy) -> float:
    if pol.placement is Placement.GPU:
        return 1.0
    if pol.placement is not Placement.CACHE:
        return 0.0
    return float(table.access.hit_rate(int(pol.cache_rows), pol.cache_kind))


def _row_hit_fraction(table: Table, pol: TablePolicy, lookups: float) -> float:
    """g: the share of a batch's distinct rows in HBM (1 on the GPU, 0 over UVM or on the CPU)."""
    if pol.placement is Placement.GPU:
        return 1.0
    if pol.placement is not Placement.CACHE:
        return 0.0
    return float(table.access.distinct_hit_fraction(int(pol.cache_rows), lookups, pol.cache_kind))


def table_traffic(wl: EmbWorkload, table: Table, pol: TablePolicy) -> TableTraffic:
    """Rows and bytes one table moves per iteration (``L = B P`` lookups, ``U``, ``h``, ``M`` as in
    :class:`TableTraffic`, ``U h`` below meaning the distinct rows in HBM, ``U - M``; ``r`` row bytes,
    ``s`` optimizer-state bytes per row, ``g = B D 4`` the table's pooled fp32 vectors).

    * ids up (H2D, pinned): ``8 L`` for tables the GPU pools (TorchRec's int64 KJT ids); none for ``cpu``.
      Stage ``fetch``, or ``compute`` with ``prefetch`` (the next batch's ids, copied on a side stream).
    * cold rows up (UVM rate): ``M r`` -- FBGEMM's UVM caching fetches each missed row
      (``lru_cache_populate``/``direct_mapped_lru_cache_populate`` copy missed rows into the cache);
      for ``uvm`` every distinct row (h = 0). Stage ``fetch``, or ``compute`` with ``prefetch``.
    * HBM gathers: ``U h r`` (hits and GPU rows), plus ``M r`` read back from the prefetch buffer or
      from the LRU cache once inserted; the kernel also reads the ids, ``8 L``, and writes the pooled
      vectors, ``g`` (the interaction's ``concat`` then reads them, :func:`dense_ops`).
    * cache maintenance (HBM): LRU: ``M r`` misses written into the cache + ``8 U`` timestamps;
      a prefetch writes its ``M r`` into the buffer (static cache, uvm).
    * update on the GPU: HBM ``2 U h r`` for HBM rows, plus ``2 M r`` for cold rows held in the
      LRU cache or the prefetch buffer, plus the pooled vectors' gradients and the ids the backward
      reads, ``g + 8 L`` (FBGEMM's backward sorts the ids and sums each row's gradients from them);
      state on the GPU ``2 U s`` HBM; on the host ``U s`` up and
      ``U s`` down. Cold rows written back down: ``M r`` (an LRU eviction per insert in steady state;
      static and uvm rows written in place).
    * update on the CPU (``uvm``/``cpu``): gradients of the pooled vectors down ``g``; CPU reads and
      writes the touched rows and their state, and reads the gradients: ``2 U (r + s) + g`` bytes,
      ``L D`` FLOPs (the scatter-add), on the host memory roof.
    * ``cpu`` forward: ``L D`` FLOPs, ``L r + g`` bytes on the host (gather, pool in fp32, write),
      pooled vectors up ``g``.
    """
    if not isinstance(pol, TablePolicy):
        raise WorkloadError(f"table {table.name!r}: the policy must be a TablePolicy, got {type(pol).__name__}")
    if pol.placement is Placement.CACHE and pol.cache_rows > table.rows:
        raise WorkloadError(f"table {table.name!r}: cache_rows must be at most the table's {table.rows:,} rows, "
                            f"got {pol.cache_rows:,}")
    b = wl.batch
    lookups = b * float(table.pooling)
    u = float(table.access.expected_distinct_rows(lookups))
    h = _hit_rate(table, pol)
    frac = _row_hit_fraction(table, pol, lookups)
    m = u * (1.0 - frac)
    hot = u - m  # distinct rows served from HBM
    r, d = float(table.row_bytes), table.dim
    s = float(wl.model.optimizer_state_bytes_per_row(table))
    g = float(b * d * FP32_BYTES)
    pre = pol.prefetched(wl)
    lru = pol.placement is Placement.CACHE and pol.cache_kind is CurveKind.LRU
    held = lru or pre  # cold rows sit in HBM (cache or buffer) while the step uses them
    gpu_b = uvm_b = h2d = d2h = 0.0
    cpu_fwd_f = cpu_fwd_b = cpu_upd_f = cpu_upd_b = 0.0
    if pol.placement is Placement.CPU:
        cpu_fwd_f, cpu_fwd_b = lookups * d, lookups * r + g
        h2d += g
    else:
        h2d += INDEX_BYTES * lookups
        uvm_b = m * r
        gpu_b += hot * r + (m * r if held else 0.0)  # forward gathers
        gpu_b += INDEX_BYTES * lookups + g  # the ids read, the pooled vectors written
        if lru:
            gpu_b += m * r + LRU_STATE_BYTES * u
        elif pre:
            gpu_b += m * r
    if pol.update_on is UpdateOn.GPU:
        gpu_b += 2 * hot * r + (2 * m * r if held else 0.0)
        gpu_b += g + INDEX_BYTES * lookups  # the pooled gradients and the ids the backward reads
        d2h += m * r
        if pol.state_tier is StateTier.GPU:
            gpu_b += 2 * u * s
        else:
            uvm_b += u * s
            d2h += u * s
    else:
        d2h += g
        cpu_upd_f, cpu_upd_b = lookups * d, 2 * u * (r + s) + g
    return TableTraffic(name=table.name, placement=pol.placement, lookups=lookups, distinct_rows=u, hit_rate=h,
                        row_hit_fraction=frac, cold_rows=m, gpu_bytes=gpu_b, uvm_h2d_bytes=uvm_b, h2d_bytes=h2d, d2h_bytes=d2h,
                        cpu_fwd_flop=cpu_fwd_f, cpu_fwd_bytes=cpu_fwd_b, cpu_upd_flop=cpu_upd_f, cpu_upd_bytes=cpu_upd_b,
                        stage_of_cold=Stage.COMPUTE if pre else Stage.FETCH)


def table_key(wl: EmbWorkload, t: Table) -> tuple:
    """What a table's costs depend on besides its policy: two tables with equal keys cost the same
    (their names aside). The access distribution by value where it is hashable (Zipf), else by identity
    (a histogram or trace holds arrays)."""
    try:
        hash(t.access)
        acc = t.access
    except TypeError:
        acc = id(t.access)
    return (t.rows, t.dim, t.dtype_bytes, float(t.pooling), wl.model.optimizer_state_bytes_per_row(t), acc)


def tables_traffic(wl: EmbWorkload, policies: Sequence[TablePolicy]) -> list[TableTraffic]:
    """:func:`table_traffic` of every table of ``wl.model`` under its policy, computed once per distinct
    (:func:`table_key`, policy): a model of many identical tables (1,000 in the solve-time benchmark, five
    distinct) pays for five hit-rate and distinct-row evaluations, not 1,000."""
    memo: dict[tuple, TableTraffic] = {}
    out = []
    for t, p in zip(wl.model.tables, policies):
        key = (table_key(wl, t), p)
        tr = memo.get(key)
        if tr is None:
            tr = memo[key] = table_traffic(wl, t, p)
        elif tr.name != t.name:
            tr = replace(tr, name=t.name)
        out.append(tr)
    return out


# ---------------------------------------------------------------------------------------------
# Dense part
# ---------------------------------------------------------------------------------------------


def activation_bytes(wl: EmbWorkload) -> float:
    """Activations kept for the backward: ``B dt (dense_features + sum(bottom_mlp) + F D + X + top_in +
    sum(top_mlp))``, with ``X = F^2`` (the dot interaction's ``Z = X X^T``) or ``layers (F D + rank)``
    (DCN-v2's cross-layer outputs and low-rank projections)."""
    m = wl.model
    f, d = m.n_features, m.embedding_dim
    inter = f * f if m.interaction == "dot" else m.dcn_layers * (f * d + m.dcn_rank)
    widths = m.dense_features + sum(m.bottom_mlp) + f * d + inter + m.top_mlp_in_features + sum(m.top_mlp)
    return float(wl.batch * wl.dense_dtype_bytes * widths)


def _gpu(wl: EmbWorkload, system: System) -> Processor:
    """The GPU for elementwise work and memory traffic: the fp16 peak for 2-byte runs, else the fp32 peak."""
    proc = Processor.gpu(system.gpu)
    if wl.dense_dtype_bytes >= 4:  # fp32 math: no fp16 tensor-core peak
        proc = replace(proc, peak_flop_per_s=system.gpu.fp32_flop_per_s)
    return proc


def _gemm_gpu(wl: EmbWorkload, system: System) -> Processor:
    """The GPU for matmuls: the fp16 tensor peak for 2-byte runs, the TF32 tensor peak for 4-byte runs
    with ``tf32``, else the fp32 peak."""
    if wl.tf32:
        return replace(Processor.gpu(system.gpu), peak_flop_per_s=system.gpu.tf32_flop_per_s)
    return _gpu(wl, system)


def dense_ops(wl: EmbWorkload) -> tuple[Op, ...]:
    """Every kernel of the dense part of one training step, forward and backward, with its FLOPs and
    the HBM bytes it reads and writes (``B`` the batch, ``dt`` the workload's dense element size).

    Per linear layer ``k -> n`` (:meth:`RecModel.mlp_layers`):

    * ``fwd``: GEMM, ``2 B k n`` FLOPs, ``dt (B k + k n + B n)`` bytes (read X and W, write Y; the bias
      add fused in, as cuBLAS ``addmm`` does);
    * ``dX``: GEMM, ``2 B k n`` FLOPs, ``dt (B n + k n + B k)`` (read dY and W, write dX) -- not for the
      first bottom layer, whose input (the dense features) needs no gradient (autograd skips it);
    * ``dW``: GEMM, ``2 B k n`` FLOPs, ``dt (B n + B k + k n)`` (read dY and X, write dW);
    * ``bias_grad``: elementwise reduction, ``B n`` FLOPs, ``dt (B n + n)`` (read dY, write db);
    * ReLU after every layer but the last top one (DLRM reference ``create_mlp``: ReLU, the last top
      layer sigmoid, Naumov et al. 2019, arXiv:1906.00091): ``relu`` ``B n`` FLOPs, ``2 dt B n`` (read,
      write) and ``relu_bwd`` ``B n`` FLOPs, ``3 dt B n`` (read the gradient and the output, write the
      gradient);
    * after the last top layer, sigmoid and binary cross-entropy: ``loss`` ``B n`` FLOPs,
      ``3 dt B n`` (read the logits and the labels, write the probabilities) and ``loss_bwd``
      ``B n`` FLOPs, ``3 dt B n`` (read the probabilities and the labels, write the gradient).

    The ``F - 1`` tables' pooled vectors arrive in fp32 (``g = B D 4`` each, :func:`table_traffic`);
    when the dense part computes in another precision (``dt != 4``: AMP's fp16 MLPs) each is converted
    before the interaction and its gradient converted back in the backward (DeepLearningExamples DLRM
    ``DlrmBottom.forward``: ``bottom_output = [x.half() if x.dtype != torch.half else x for x in
    bottom_output]``, whose autograd casts the fp16 gradient back to the fp32 input's dtype):
    ``to_dense_dtype`` and ``to_dense_dtype_bwd``, elementwise, ``B (F - 1) D`` FLOPs and
    ``(4 + dt) B (F - 1) D`` bytes each (read one precision, write the other); none when ``dt = 4``.

    Interaction of the ``F`` vectors of width ``D`` (``concat``: the pooled embeddings stacked with the
    bottom MLP's output, ``2 dt B F D`` bytes, read and written; its backward is a view), as the DLRM
    reference's ``interact_features`` runs it:

    * ``dot``: ``bmm`` ``Z = X X^T``, GEMM ``2 B F^2 D`` FLOPs, ``dt B (2 F D + F^2)`` (read X as both
      operands, write Z); ``tril_gather`` of the ``P = F (F - 1) / 2`` lower-triangle entries,
      ``2 dt B P``; ``concat_top`` with the bottom output, ``2 dt B (D + P)``; backward:
      ``tril_scatter`` into a zeroed ``F x F``, ``dt B (F^2 + 2 P)``; two batched GEMMs
      ``bmm_bwd_a`` (``dZ X``) and ``bmm_bwd_b`` (``dZ^T X``), each ``2 B F^2 D`` FLOPs,
      ``dt B (F^2 + 2 F D)``; their sum into dX, ``B F D`` FLOPs, ``3 dt B F D``; and the bottom output's
      two gradients (through ``concat_top`` and ``concat``) summed, ``B D`` FLOPs, ``3 dt B D``.
    * ``dcnv2`` (TorchRec ``LowRankCrossNet``, ``x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l`` on
      ``N = F D``, rank ``r``), per layer: GEMMs ``V`` and ``U``, ``2 B N r`` FLOPs each, bytes
      ``dt (B N + N r + B r)``; ``cross`` elementwise, ``3 B N`` FLOPs, ``dt (4 B N + N)`` (read x_0, the
      projection, x_l and b, write x_{l+1}); backward: ``cross_bwd`` ``3 B N`` FLOPs, ``6 dt B N``
      (read the gradient, x_0 and the projection, write the projection's gradient, read and write
      x_0's accumulated gradient); ``bias_grad`` ``dt (B N + N)``; ``dX`` and ``dW`` GEMMs of ``U`` and
      ``V``, ``2 B N r`` FLOPs and ``dt (B N + N r + B r)`` bytes each; the residual's gradient summed,
      ``B N`` FLOPs, ``3 dt B N``.

    The optimizer (:func:`dense_gpu_s`) is not among these.

    Examples
    --------
    >>> from costmodel.embeddings import load_rec_model
    >>> ops = dense_ops(EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=128))
    >>> [o.name for o in ops][:3]
    ['bottom_mlp[0].fwd', 'bottom_mlp[0].relu', 'bottom_mlp[0].relu_bwd']
    """
    m = wl.model
    b, dt = float(wl.batch), float(wl.dense_dtype_bytes)
    gemm, elem = OpClass.GEMM, OpClass.ELEMENTWISE
    ops: list[Op] = []

    def add(name: str, cls: OpClass, flop: float, nbytes: float) -> None:
        ops.append(Op(name=name, op_class=cls, flop=float(flop), bytes=float(nbytes)))

    layers = m.mlp_layers()
    for i, (name, k, n) in enumerate(layers):
        mm = 2.0 * b * k * n
        add(f"{name}.fwd", gemm, mm, dt * (b * k + k * n + b * n))
        if i == len(layers) - 1:
            add(f"{name}.loss", elem, b * n, 3 * dt * b * n)
            add(f"{name}.loss_bwd", elem, b * n, 3 * dt * b * n)
        else:
            add(f"{name}.relu", elem, b * n, 2 * dt * b * n)
            add(f"{name}.relu_bwd", elem, b * n, 3 * dt * b * n)
        add(f"{name}.bias_grad", elem, b * n, dt * (b * n + n))
        add(f"{name}.dW", gemm, mm, dt * (b * n + b * k + k * n))
        if i > 0:
            add(f"{name}.dX", gemm, mm, dt * (b * n + k * n + b * k))
    f, d = m.n_features, m.embedding_dim
    if dt != FP32_BYTES:
        pooled = b * (f - 1) * d
        add("embeddings.to_dense_dtype", elem, pooled, (FP32_BYTES + dt) * pooled)
        add("embeddings.to_dense_dtype_bwd", elem, pooled, (FP32_BYTES + dt) * pooled)
    add("interaction.concat", elem, 0.0, 2 * dt * b * f * d)
    if m.interaction == "dot":
        p = f * (f - 1) // 2
        bmm = 2.0 * b * f * f * d
        add("interaction.bmm", gemm, bmm, dt * b * (2 * f * d + f * f))
        add("interaction.tril_gather", elem, 0.0, 2 * dt * b * p)
        add("interaction.concat_top", elem, 0.0, 2 * dt * b * (d + p))
        add("interaction.tril_scatter", elem, 0.0, dt * b * (f * f + 2 * p))
        add("interaction.bmm_bwd_a", gemm, bmm, dt * b * (f * f + 2 * f * d))
        add("interaction.bmm_bwd_b", gemm, bmm, dt * b * (f * f + 2 * f * d))
        add("interaction.grad_sum", elem, b * f * d, 3 * dt * b * f * d)
        add("bottom_out.grad_sum", elem, b * d, 3 * dt * b * d)
    else:
        nn_, r = m.interaction_in_features, m.dcn_rank
        lr = 2.0 * b * nn_ * r
        lr_bytes = dt * (b * nn_ + nn_ * r + b * r)
        for layer in range(m.dcn_layers):
            name = f"cross[{layer}]"
            add(f"{name}.V", gemm, lr, lr_bytes)
            add(f"{name}.U", gemm, lr, lr_bytes)
            add(f"{name}.cross", elem, 3 * b * nn_, dt * (4 * b * nn_ + nn_))
            add(f"{name}.cross_bwd", elem, 3 * b * nn_, 6 * dt * b * nn_)
            add(f"{name}.bias_grad", elem, b * nn_, dt * (b * nn_ + nn_))
            for g in ("U.dX", "U.dW", "V.dX", "V.dW"):
                add(f"{name}.{g}", gemm, lr, lr_bytes)
            add(f"{name}.grad_sum", elem, b * nn_, 3 * dt * b * nn_)
    return tuple(ops)


def dense_gpu_s(wl: EmbWorkload, system: System) -> float:
    """MLPs and interaction forward and backward, then the dense optimizer, on the GPU: a sum over the
    kernels of :func:`dense_ops`, each on its own roofline with one launch (a GPU runs them one after
    another; as :mod:`costmodel.kv` sums its per-layer ops), GEMMs on the GEMM roof at the matmul
    peak (fp16 tensor for 2-byte runs, TF32 tensor for 4-byte runs with ``tf32``, else fp32),
    elementwise ops on the ELEMENTWISE roof.

    Optimizer: ``W_params (3 dt_w + 2 s_w)`` bytes (read weight and gradient, write weight; read and
    write the state) and ``2 W_params`` FLOPs on the memory roof, one launch.
    """
    m = wl.model
    gemm, elem = _gemm_gpu(wl, system), _gpu(wl, system)
    total = 0.0
    for op in dense_ops(wl):
        proc = gemm if op.op_class is OpClass.GEMM else elem
        total += float(roofline_time_s(op.flop, op.bytes, op.op_class, proc, launches=1))
    params = float(m.dense_params())
    opt_bytes = params * (3 * m.dense_dtype_bytes + 2 * dense_optimizer_state_bytes_per_param(m.dense_optimizer))
    opt = roofline_time_s(2.0 * params, opt_bytes, OpClass.ELEMENTWISE, elem)
    return float(total + opt)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def memory_use(wl: EmbWorkload, policies: Sequence[TablePolicy], traffic: Sequence[TableTraffic] | None = None
               ) -> Memory:
    """Bytes per tier of a placement, term by term (``N`` rows, ``C`` cache rows, ``r``, ``s``, ``M``,
    ``g`` as in :func:`table_traffic`; ``T_g`` tables the GPU pools).

    GPU: ``tables`` (``N r`` of ``gpu`` tables), ``cache_rows`` (``C r``), ``cache_state`` (FBGEMM's
    bookkeeping of each cache, ``fixed + per_row C`` of :func:`cache_state_bytes`), ``table_state`` (``N s``
    where the state is on the GPU), ``dense`` (weights + gradients + dense optimizer state:
    ``W (2 dt_w + s_w)``), ``activations`` (:func:`activation_bytes`), ``index_pooled`` (ids ``8 L``
    of ``T_g`` tables, pooled vectors and their gradients ``2 g`` of every table), ``prefetch_buffers``
    (``2 M r`` per prefetched table: this batch's cold rows and the next batch's), ``sparse_grads``
    (runtime ``colossalai`` only: the uncoalesced sparse gradient, :func:`sparse_grad_bytes`).
    Host: ``tables`` (``N r`` of ``cache``, ``uvm``, ``cpu`` tables: the backing store keeps every row),
    ``table_state`` (``N s`` on the host), ``batch_buffers`` (ids ``8 L`` of every table, pooled
    vectors and gradients ``2 g`` of ``cpu``-pooled or CPU-updated tables).
    """
    m = wl.model
    traffic = traffic or tables_traffic(wl, policies)
    gpu = dict.fromkeys(("tables", "cache_rows", "cache_state", "table_state", "dense", "activations",
                         "index_pooled", "prefetch_buffers", "sparse_grads"), 0.0)
    host = dict.fromkeys(("tables", "table_state", "batch_buffers"), 0.0)
    for t, p, tr in zip(m.tables, policies, traffic):
        rows, r = float(t.rows), float(t.row_bytes)
        state = rows * m.optimizer_state_bytes_per_row(t)
        g = float(wl.batch * t.dim * FP32_BYTES)
        if p.placement is Placement.GPU:
            gpu["tables"] += rows * r
        else:
            host["tables"] += rows * r
        if p.placement is Placement.CACHE:
            gpu["cache_rows"] += p.cache_rows * r
            fixed, per_row = cache_state_bytes(wl, t, p)
            gpu["cache_state"] += fixed + per_row * p.cache_rows
        if p.state_tier is StateTier.GPU:
            gpu["table_state"] += state
        else:
            host["table_state"] += state
        gpu["index_pooled"] += 2 * g + (0.0 if p.placement is Placement.CPU else INDEX_BYTES * tr.lookups)
        host["batch_buffers"] += INDEX_BYTES * tr.lookups + (2 * g if p.update_on is UpdateOn.CPU else 0.0)
        if p.prefetched(wl):
            gpu["prefetch_buffers"] += 2 * tr.cold_rows * r
        gpu["sparse_grads"] += sparse_grad_bytes(wl, t, tr)
    params = float(m.dense_params())
    gpu["dense"] = params * (2 * m.dense_dtype_bytes + dense_optimizer_state_bytes_per_param(m.dense_optimizer))
    gpu["activations"] = activation_bytes(wl)
    g_total, h_total = sum(gpu.values()), sum(host.values())
    return Memory(gpu_bytes=g_total, host_bytes=h_total, disk_bytes=0.0, gpu_breakdown=tuple(gpu.items()),
                  host_breakdown=tuple(host.items()), gpu_prefill_bytes=g_total, gpu_decode_bytes=g_total)


def sparse_grad_bytes(wl: EmbWorkload, table: Table, traffic: TableTraffic) -> float:
    """HBM of a table's embedding gradient as PyTorch keeps it under runtime ``colossalai``:
    ``L (r + 8)`` for ``L`` lookups per batch (0 under ``fbgemm``, whose backward updates the rows in
    place and keeps no gradient).

    ``embedding_bag``'s sparse backward returns one gradient row per looked-up index, uncoalesced
    (``_sparse_coo_tensor_unsafe(indices.reshape({1,-1}), index_grad.reshape({-1, D}))`` in ATen's
    ``_embedding_bag_sparse_backward``): ``L`` rows of ``r`` bytes and ``L`` int64 indices. It stays
    allocated after ``optimizer.step()``: the training loop of hpcaitech/CachedEmbedding calls
    ``optimizer.zero_grad()`` before ``backward()`` (which empties a sparse gradient but keeps the
    tensor), so the last step's gradient is still there between iterations."""
    if wl.runtime is not Runtime.COLOSSALAI:
        return 0.0
    return float(traffic.lookups * (table.row_bytes + SPARSE_GRAD_INDEX_BYTES))


# GPU terms of :func:`memory_use` that are allocated once and stay between iterations.
PERSISTENT_GPU_TERMS = ("tables", "cache_rows", "cache_state", "table_state", "dense", "prefetch_buffers",
                        "sparse_grads")


def gpu_bytes_between_iterations(wl: EmbWorkload, policies: Sequence[TablePolicy] | Mapping[str, TablePolicy],
                                 memory: Memory | None = None) -> tuple[tuple[str, float], ...]:
    """What stays allocated in HBM after an iteration's ``optimizer.step()`` -- what
    ``torch.cuda.memory_allocated()`` reports between iterations or after the epoch, not the peak
    (:func:`memory_use`'s ``gpu_bytes``): the persistent terms of :func:`memory_use`
    (:data:`PERSISTENT_GPU_TERMS`: tables, cache rows and bookkeeping, table state, dense weights,
    gradients and optimizer state, prefetch buffers, the kept sparse gradients), and ``last_batch``,
    the batch the loop still references: ``B (dt_in n_dense + 8) + 8 L + 4 (2 B T + 1)`` (fp32 dense
    features ``dt_in = 4``, labels and logits, int64 ids of ``L`` lookups, int32 KeyedJaggedTensor
    lengths and offsets over ``T`` tables, :data:`KJT_LENGTH_BYTES`). Activations, pooled vectors and
    their gradients are freed by the backward. ``memory``: :func:`memory_use` of the same placement,
    if already made."""
    pols = _policies(wl, policies)
    gpu = dict((memory or memory_use(wl, pols)).gpu_breakdown)
    out = [(k, gpu[k]) for k in PERSISTENT_GPU_TERMS]
    m, b = wl.model, wl.batch
    lookups = float(b * m.lookups_per_sample())
    last = b * (FP32_BYTES * m.dense_features + LABEL_LOGIT_BYTES) + INDEX_BYTES * lookups \
        + KJT_LENGTH_BYTES * (2 * b * len(m.tables) + 1)
    return tuple(out + [("last_batch", float(last))])


def explain_shortfall(memory: Memory, cap: dict[str, float]) -> str:
    """Each short tier with its need, its usable bytes and every term of the need ('' when it fits)."""
    parts = []
    for key, missing in shortfalls(memory, cap).items():
        tier = key.removesuffix("_bytes")
        terms = {"gpu": memory.gpu_breakdown, "host": memory.host_breakdown}.get(tier, ())
        listed = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in terms if v > 0)
        parts.append(f"{tier} memory short by {format_bytes(missing)}: needs {format_bytes(missing + cap[key])} of "
                     f"{format_bytes(cap[key])} usable" + (f" ({listed})" if listed else ""))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbCost:
    """Predicted time and memory of one training iteration.

    ``stages``: (stage, ((resource, seconds), ...)) for fetch, compute and host_update;
    ``stage_s``: each stage's time; ``iteration_s`` their sum. ``memory`` is the iteration's peak;
    ``gpu_between_iterations`` what stays allocated after its optimizer step, term by term.
    """

    iteration_s: float
    stage_s: tuple[tuple[Stage, float], ...]
    stages: tuple[tuple[Stage, tuple[tuple[Resource, float], ...]], ...]
    tables: tuple[TableTraffic, ...]
    dense_gpu_s: float
    memory: Memory
    capacity: dict[str, float]
    batch: int
    gpu_between_iterations: tuple[tuple[str, float], ...] = ()  # :func:`gpu_bytes_between_iterations`

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.iteration_s if self.iteration_s > 0 else math.inf

    def resource_s(self) -> dict[Resource, float]:
        """Seconds per resource over the whole iteration (summed over stages)."""
        out: dict[Resource, float] = {}
        for _, times in self.stages:
            for r, t in times:
                out[r] = out.get(r, 0.0) + t
        return out

    def shortfalls(self) -> dict[str, float]:
        return shortfalls(self.memory, self.capacity)

    @property
    def feasible(self) -> bool:
        return not self.shortfalls()

    def explain_shortfall(self) -> str:
        return explain_shortfall(self.memory, self.capacity)

    @property
    def gpu_between_iterations_bytes(self) -> float:
        """The sum of :attr:`gpu_between_iterations`."""
        return sum(b for _, b in self.gpu_between_iterations)


def _policies(wl: EmbWorkload, policies: Sequence[TablePolicy] | Mapping[str, TablePolicy]) -> tuple[TablePolicy, ...]:
    tables = wl.model.tables
    if isinstance(policies, Mapping):
        names = {t.name for t in tables}
        extra = sorted(set(policies) - names)
        if extra:
            raise WorkloadError(f"policies name tables the model {wl.model.name!r} lacks: {', '.join(map(str, extra[:8]))}")
        missing = [t.name for t in tables if t.name not in policies]
        if missing:
            raise WorkloadError(f"policies must give every table a policy; missing {', '.join(missing[:8])}")
        out = tuple(policies[t.name] for t in tables)
    else:
        if not isinstance(policies, (list, tuple)) or len(policies) != len(tables):
            n = len(policies) if isinstance(policies, (list, tuple)) else type(policies).__name__
            raise WorkloadError(f"policies must be one TablePolicy per table ({len(tables)}), got {n}")
        out = tuple(policies)
    if wl.runtime is Runtime.COLOSSALAI:
        bad = [(t.name, p.placement.value) for t, p in zip(tables, out) if p.placement in (Placement.UVM, Placement.CPU)]
        if bad:
            raise WorkloadError(f"runtime colossalai places tables in HBM or in its GPU cache only (no UVM, no CPU "
                                f"pooling), got {', '.join(f'{n} {pl}' for n, pl in bad[:8])}")
    return out


def evaluate_embeddings(wl: EmbWorkload, system: System,
                        policies: Sequence[TablePolicy] | Mapping[str, TablePolicy]) -> EmbCost:
    """Predict one iteration's time per stage and resource, and memory per tier, of a placement.

    Rates: pinned copies at ``link.h2d``/``link.d2h``; GPU gathers of host rows (UVM, and optimizer
    state on the host) at ``link.h2d x pageable_factor`` -- zero-copy reads of scattered rows reach
    about the pageable rate, not the pinned bulk rate (an assumption of this model) -- plus one
    ``link.latency`` per table per direction that gathers; HBM bytes on the GPU memory roof; CPU work
    on the host roofline (ELEMENTWISE class). Copies in both directions in one stage pay the link's
    ``bidirectional_factor`` on their common bytes, as in :mod:`costmodel.kv`.

    Stages (each takes its slowest resource; a chain is a sum):
    ``fetch = max(H2D, CPU_fwd + pooled H2D)`` with H2D the ids and cold rows not prefetched;
    ``compute = max(GPU, H2D, D2H)`` with GPU = HBM bytes / bandwidth + :func:`dense_gpu_s`, H2D the
    prefetched ids and cold rows and host-state reads, D2H the write-backs;
    ``host_update = D2H(gradients) + CPU_update``.
    """
    pols = _policies(wl, policies)
    link = system.link
    gpu, cpu = _gpu(wl, system), Processor.cpu(system.host)
    uvm_rate = link.h2d_bytes_per_s * link.pageable_factor
    traffic = tables_traffic(wl, pols)
    h2d = {Stage.FETCH: 0.0, Stage.COMPUTE: 0.0}
    h2d_lat = {Stage.FETCH: 0.0, Stage.COMPUTE: 0.0}
    gpu_bytes = d2h_c = d2h_u = 0.0
    n_d2h_c = n_d2h_u = 0
    cpu_fwd = pooled_up = cpu_upd = 0.0
    for tr in traffic:
        st = tr.stage_of_cold
        gpu_bytes += tr.gpu_bytes
        if tr.placement is Placement.CPU:
            cpu_fwd += float(roofline_time_s(tr.cpu_fwd_flop, tr.cpu_fwd_bytes, OpClass.ELEMENTWISE, cpu))
            pooled_up += link.latency_s + tr.h2d_bytes / link.h2d_bytes_per_s
        else:
            h2d[st] += tr.h2d_bytes / link.h2d_bytes_per_s + tr.uvm_h2d_bytes / uvm_rate
            h2d_lat[st] += link.latency_s * (1 + (tr.uvm_h2d_bytes > 0))
        if tr.cpu_upd_bytes:
            cpu_upd += float(roofline_time_s(tr.cpu_upd_flop, tr.cpu_upd_bytes, OpClass.ELEMENTWISE, cpu))
            d2h_u += tr.d2h_bytes
            n_d2h_u += 1
        elif tr.d2h_bytes:
            d2h_c += tr.d2h_bytes
            n_d2h_c += 1
    dense = dense_gpu_s(wl, system)
    emb_gpu = float(roofline_time_s(0.0, gpu_bytes, OpClass.ELEMENTWISE, gpu, launches=3)) if gpu_bytes else 0.0
    # bidirectional penalty on the compute stage's common bytes (both directions run beside the GPU)
    h2d_c_bytes = h2d[Stage.COMPUTE] * link.h2d_bytes_per_s
    penalty = min(h2d_c_bytes, d2h_c) * (1.0 / link.bidirectional_factor - 1.0)
    fetch = {Resource.H2D: h2d_lat[Stage.FETCH] + h2d[Stage.FETCH], Resource.CPU: cpu_fwd + pooled_up}
    compute = {Resource.GPU: dense + emb_gpu,
               Resource.H2D: h2d_lat[Stage.COMPUTE] + h2d[Stage.COMPUTE] + penalty / link.h2d_bytes_per_s,
               Resource.D2H: n_d2h_c * link.latency_s + (d2h_c + penalty) / link.d2h_bytes_per_s}
    host_update = {Resource.D2H: n_d2h_u * link.latency_s + d2h_u / link.d2h_bytes_per_s, Resource.CPU: cpu_upd}
    stage_s = ((Stage.FETCH, max(fetch.values())), (Stage.COMPUTE, max(compute.values())),
               (Stage.HOST_UPDATE, sum(host_update.values())))
    memory = memory_use(wl, pols, traffic)
    return EmbCost(
        iteration_s=float(sum(t for _, t in stage_s)), stage_s=stage_s,
        stages=((Stage.FETCH, tuple(fetch.items())), (Stage.COMPUTE, tuple(compute.items())),
                (Stage.HOST_UPDATE, tuple(host_update.items()))),
        tables=tuple(traffic), dense_gpu_s=dense, memory=memory, capacity=capacity(system), batch=wl.batch,
        gpu_between_iterations=gpu_bytes_between_iterations(wl, pols, memory))


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def all_gpu(wl: EmbWorkload, system: System | None = None) -> tuple[TablePolicy, ...]:
    """Every table whole in HBM (TorchRec's ``FUSED`` kernel)."""
    return tuple(TablePolicy(placement=Placement.GPU) for _ in wl.model.tables)


def cpu_hybrid(wl: EmbWorkload, system: System | None = None) -> tuple[TablePolicy, ...]:
    """Every table on the CPU, pooled there, pooled vectors sent to the GPU (DLRM's hybrid)."""
    return tuple(TablePolicy(placement=Placement.CPU) for _ in wl.model.tables)


def uvm_all(wl: EmbWorkload, system: System | None = None) -> tuple[TablePolicy, ...]:
    """Every table in host memory, gathered over the link (FBGEMM ``EmbeddingLocation.MANAGED``)."""
    return tuple(TablePolicy(placement=Placement.UVM) for _ in wl.model.tables)


def torchrec_uvm_cache(wl: EmbWorkload, system: System | None = None,
                       load_factor: float = DEFAULT_CACHE_LOAD_FACTOR) -> tuple[TablePolicy, ...]:
    """Every table ``cache`` (LRU) with ``ceil(load_factor x rows)`` cache rows: TorchRec's
    ``FUSED_UVM_CACHING`` sized by ``CacheParams.load_factor`` (default 0.2, TorchRec planner
    ``CACHING_RATIO``)."""
    if (isinstance(load_factor, bool) or not isinstance(load_factor, numbers.Real)
            or not math.isfinite(load_factor) or not 0 < load_factor <= 1):
        raise WorkloadError(f"cache_load_factor must be in (0, 1], got {load_factor!r}")
    return tuple(TablePolicy(placement=Placement.CACHE, cache_rows=min(t.rows, math.ceil(load_factor * t.rows)),
                             cache_kind=CurveKind.LRU) for t in wl.model.tables)


def cache_state_bytes(wl: EmbWorkload, table: Table, pol: TablePolicy) -> tuple[float, float]:
    """``(fixed, per cache row)`` bytes of HBM a ``cache`` table's bookkeeping takes beside its
    ``C r`` cache rows, as FBGEMM allocates it (:data:`CACHE_INDEX_MAP_BYTES` and the others):

    * ``lru``: ``4 N`` fixed (the row -> table map) and ``8 + 8`` per cache row (slot state and the
      LRU timestamp);
    * ``static``: exported as FBGEMM's LFU (:func:`solver.export_torchrec.export_torchrec`), whose
      frequency counters are per row of the table: ``4 N + 8 (N + 1)`` fixed and ``8`` per cache row;
    * prefetched (``prefetch_pipeline``): ``4`` more per cache row (the locking counter).

    Under runtime ``colossalai``, ColossalAI's ``CachedParamMgr`` instead (:data:`COLOSSALAI_ROW_MAP_BYTES`):
    ``16 N`` fixed (two int64 maps over the table's rows) and ``8`` per cache row, whatever the kind.

    ``(0, 0)`` for other placements. FBGEMM rounds the cache up to whole 32-row sets and sizes its
    rows to the widest table of the TBE; neither is counted here (``C`` is the plan's rows).

    Examples
    --------
    >>> from costmodel.embeddings import rec_model_from_dict
    >>> m = rec_model_from_dict({"name": "toy", "dense_features": 4, "bottom_mlp": [16], "top_mlp": [1],
    ...     "defaults": {"dim": 16}, "access": {"kind": "zipf", "alpha": 1.05}, "tables": [{"name": "t", "rows": 1000}]})
    >>> wl = EmbWorkload(model=m, batch=64)
    >>> cache_state_bytes(wl, m.tables[0], TablePolicy(placement="cache", cache_rows=100, cache_kind="lru"))
    (4000.0, 16.0)
    >>> cache_state_bytes(wl, m.tables[0], TablePolicy(placement="cache", cache_rows=100, cache_kind="static"))
    (12008.0, 8.0)
    >>> cache_state_bytes(replace(wl, runtime="colossalai"), m.tables[0], TablePolicy(placement="cache", cache_rows=100))
    (16000.0, 8.0)
    """
    if pol.placement is not Placement.CACHE:
        return 0.0, 0.0
    rows = float(table.rows)
    if wl.runtime is Runtime.COLOSSALAI:
        return COLOSSALAI_ROW_MAP_BYTES * rows, float(COLOSSALAI_SLOT_MAP_BYTES)
    fixed, per_row = CACHE_INDEX_MAP_BYTES * rows, float(CACHE_SLOT_STATE_BYTES)
    if pol.cache_kind is CurveKind.LRU:
        per_row += LXU_STATE_BYTES
    else:
        fixed += LXU_STATE_BYTES * (rows + 1)
    if pol.prefetched(wl):
        per_row += CACHE_LOCKING_COUNTER_BYTES
    return fixed, per_row


def _free_gpu_bytes(wl: EmbWorkload, system: System) -> float:
    """Usable HBM less what every placement needs on the GPU: what an all-``cpu`` placement keeps
    there, plus the ids ``8 L`` of every table (a table the GPU pools has them on the GPU)."""
    mem = memory_use(wl, cpu_hybrid(wl))
    ids = INDEX_BYTES * wl.batch * wl.model.lookups_per_sample()
    return capacity(system)["gpu_bytes"] - mem.gpu_bytes - ids


def largest_to_cpu(wl: EmbWorkload, system: System, threshold_bytes: float | None = None) -> tuple[TablePolicy, ...]:
    """NVIDIA's rule: tables sorted smallest first stay on the GPU while their cumulative size is at
    most the threshold; the rest (the largest) go to the CPU (DeepLearningExamples
    TensorFlow2/Recommendation/DLRM_and_DCNv2 ``DualEmbeddingGroup._find_first_gpu_index``, threshold
    ``--cpu_offloading_threshold_gb``, 75 GB for an 80 GB A100). Default threshold: 75/80 of the
    usable HBM."""
    if threshold_bytes is None:
        threshold_bytes = NVIDIA_THRESHOLD_SHARE * capacity(system)["gpu_bytes"]
    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, numbers.Real) or threshold_bytes < 0:
        raise WorkloadError(f"the largest-to-cpu threshold must be a non-negative number of bytes, got {threshold_bytes!r}")
    tables = wl.model.tables
    order = sorted(range(len(tables)), key=lambda i: (tables[i].bytes, i))
    on_gpu, total = set(), 0
    for i in order:
        total += tables[i].bytes
        if total > threshold_bytes:
            break
        on_gpu.add(i)
    return tuple(TablePolicy(placement=Placement.GPU if i in on_gpu else Placement.CPU) for i in range(len(tables)))


def fae(wl: EmbWorkload, system: System, budget_bytes: float | None = None) -> tuple[TablePolicy, ...]:
    """FAE (Adnan et al., VLDB 2022): the ``budget / (4 D)`` rows with the most accesses over all
    tables are hot and live in HBM, the rest on the host: each table is a static ``cache`` of its
    hot rows (``gpu`` when all are hot). A row's accesses per sample are ``pooling x p(row)``.
    Default budget: the free HBM (:func:`_free_gpu_bytes`) shared by hot rows, their optimizer
    state and the caches' bookkeeping: ``(free - sum F_i) x 4 D / (4 D + s + a)`` with ``s`` the
    largest state bytes per row, ``a`` and ``F_i`` a static cache's bookkeeping per row and per
    table (:func:`cache_state_bytes`), summed over the tables a first pass without ``F_i`` makes
    caches (a second pass, so the fixed bookkeeping of tables that end with no hot row, or all, is
    not charged). A table with no hot row is ``uvm`` (every row gathered over the link, as a cache
    of 0 rows would be, without its bookkeeping)."""
    m = wl.model
    d = m.embedding_dim
    if budget_bytes is None:
        s = max(m.optimizer_state_bytes_per_row(t) for t in m.tables)
        static = [cache_state_bytes(wl, t, TablePolicy(placement=Placement.CACHE, cache_rows=1,
                                                       cache_kind=CurveKind.STATIC)) for t in m.tables]
        a = max(per_row for _, per_row in static)
        free = max(0.0, _free_gpu_bytes(wl, system))
        ranked = _fae_ranked_rows(wl)
        first = _fae_policies(wl, free * 4 * d / (4 * d + s + a), ranked)
        fixed = sum(f for (f, _), p in zip(static, first) if p.placement is Placement.CACHE)
        budget_bytes = max(0.0, free - fixed) * 4 * d / (4 * d + s + a)
        return _fae_policies(wl, budget_bytes, ranked)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, numbers.Real) or budget_bytes < 0:
        raise WorkloadError(f"the FAE budget must be a non-negative number of bytes, got {budget_bytes!r}")
    return _fae_policies(wl, float(budget_bytes), _fae_ranked_rows(wl))


def _fae_ranked_rows(wl: EmbWorkload) -> tuple[np.ndarray, np.ndarray]:
    """Every table's rows grouped by probability, hottest first over all tables: ``(groups, before)``
    with ``groups`` rows of (accesses per sample of one row, rows in the group, table index) and
    ``before`` the rows ranked above each group."""
    groups = []
    for i, t in enumerate(wl.model.tables):
        bk = t.access._buckets()  # rows grouped by probability, hottest first (costmodel.embeddings)
        groups.append(np.stack([bk.p * float(t.pooling), bk.m, np.full(len(bk.m), i, dtype=float)], axis=1))
    allg = np.concatenate(groups)
    allg = allg[np.argsort(-allg[:, 0], kind="stable")]
    return allg, np.concatenate(([0.0], np.cumsum(allg[:, 1])[:-1]))


def _fae_policies(wl: EmbWorkload, budget_bytes: float, ranked: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[TablePolicy, ...]:
    """FAE's placement for a hot-row budget of ``budget_bytes`` (``budget / (4 D)`` hot rows)."""
    m = wl.model
    hot = budget_bytes / (FP32_BYTES * m.embedding_dim)
    allg, before = ranked
    take = np.clip(hot - before, 0.0, allg[:, 1])
    rows = np.bincount(allg[:, 2].astype(np.int64), weights=take, minlength=len(m.tables))
    out = []
    for t, k in zip(m.tables, rows):
        k = min(t.rows, int(math.floor(k + 1e-9)))
        out.append(TablePolicy(placement=Placement.GPU) if k >= t.rows else TablePolicy(placement=Placement.UVM) if k <= 0
                   else TablePolicy(placement=Placement.CACHE, cache_rows=k, cache_kind=CurveKind.STATIC))
    return tuple(out)


# Cacheabilities already computed (an LRU curve of a large table costs ~0.3 s), by a small key -- the
# distribution's kind, rows, Zipf exponent or content digest -- never by the access object, so the memo
# keeps no histogram or trace alive. Cleared when it reaches CACHEABILITY_MEMO_MAX entries.
_CACHEABILITY_MEMO: dict[tuple, float] = {}
CACHEABILITY_MEMO_MAX = 4096


def _cacheability(access: Any) -> float:
    key = (type(access).__name__, int(access.rows), getattr(access, "alpha", None), getattr(access, "digest", None))
    if key not in _CACHEABILITY_MEMO:
        if len(_CACHEABILITY_MEMO) >= CACHEABILITY_MEMO_MAX:
            _CACHEABILITY_MEMO.clear()
        _CACHEABILITY_MEMO[key] = _lru_miss_area(access)
    return _CACHEABILITY_MEMO[key]


def _lru_miss_area(access: Any) -> float:
    rows = int(access.rows)
    xs = np.unique(np.concatenate(([0], np.round(np.geomspace(1, rows, CACHEABILITY_POINTS)).astype(np.int64))))
    miss = 1.0 - np.asarray(access.lru_hit_rate(xs), dtype=np.float64)
    return float(np.trapezoid(miss, xs / rows))


def torchrec_cacheability(table: Table) -> float:
    """TorchRec's cacheability of a table: the area under its LRU miss-ratio curve over the cache
    load factor, ``c = int_0^1 (1 - h_LRU(f N)) df`` (0: very cacheable; 1: impossible to cache).

    TorchRec defines it so: ``CacheStatistics.cacheability`` is a "summarized measure of the
    difficulty to cache a dataset that is independent of cache size. A score of 0 means the dataset
    is very cacheable (e.g. high locality between accesses), a score of 1 is very difficult to
    cache" (``torchrec/distributed/planner/types.py``, class ``CacheStatistics``), and its
    implementation ``EmbeddingOffloadStats`` documents the argument as "cachebility (float): The
    area-under-the-curve of miss-ratio curve", over "LRU cache sizes (from load_factor 0 to
    load_factor 1.0)" (``torchrec/distributed/planner/shard_estimators.py``, class
    ``EmbeddingOffloadStats``). Here ``h_LRU`` is the table's LRU hit curve
    (:meth:`~costmodel.embeddings.ZipfAccess.lru_hit_rate`) and the integral is the trapezoidal rule
    over 0 and :data:`CACHEABILITY_POINTS` log-spaced cache sizes (exact for a curve linear in the
    cache size; a convex miss curve makes it an over-estimate, the smaller the more points).

    Examples
    --------
    >>> import numpy as np
    >>> from costmodel.embeddings import HistogramAccess
    >>> uniform = HistogramAccess(rows=1000, counts=np.ones(1000))  # h_LRU(C) = C / N: c = 1/2
    >>> round(torchrec_cacheability(Table(name="t", rows=1000, dim=4, access=uniform)), 12)
    0.5
    """
    return _cacheability(table.access)


def torchrec_proportional(wl: EmbWorkload, system: System | None, budget_bytes: float | None = None
                          ) -> tuple[TablePolicy, ...]:
    """TorchRec's scale-up of UVM caches (``EmbeddingOffloadScaleupProposer``): every table is an
    LRU ``cache`` (``FUSED_UVM_CACHING``) and the HBM budget is dealt out to the caches in proportion
    to each table's cacheability times its expected lookups, each cache capped at its table.

    The rule, as ``allocate_budget`` runs it (meta-pytorch/torchrec
    ``torchrec/distributed/planner/proposers.py`` at 63ad0325, class
    ``EmbeddingOffloadScaleupProposer``): the priority of table ``i`` is
    ``w_i = cacheability_i x expected_lookups_i`` ("cooked_cacheability", in ``next_plan``), with
    the cacheability of :func:`torchrec_cacheability` and the expected lookups the distinct rows a
    batch touches, ``U_i = expected_distinct_rows(B P_i)`` (TorchRec: "the expected number of
    distinct values in a global training batch", ``CacheStatistics.expected_lookups``). Each pass
    gives every table not yet full ``budget x w_i / sum_{j not full} w_j`` bytes, clipped at its
    table's ``N_i (r_i + a_i)`` bytes, and takes what was given from the budget; the next pass deals out
    what the clipping released, while more than 1 byte is left, at most
    :data:`TORCHREC_SCALEUP_MAX_PASSES` passes. A table's cache holds
    ``floor(bytes_i / (r_i + a_i))`` rows, ``a_i`` FBGEMM's bookkeeping per cache row and ``F_i`` its
    fixed bookkeeping (:func:`cache_state_bytes`, LRU: 16 B and ``4 N_i``; TorchRec's storage model
    counts ``N_i (4 + 16 clf)``, the same: ``_calculate_cache_aux_state_sizes`` in
    ``torchrec/distributed/planner/shard_estimators.py`` of torchrec 1.9.2); one whose load factor passes
    :data:`TORCHREC_PROMOTE_LOAD_FACTOR` is promoted to ``gpu`` (``FUSED``). The caches are LRU, the
    only kind the proposer supports ("proposer only supports LRU cache algorithm") and FBGEMM's
    default (``SplitTableBatchedEmbeddingBagsCodegen(cache_algorithm=CacheAlgorithm.LRU)``,
    ``fbgemm_gpu/split_table_batched_embeddings_ops_training.py``).

    Where this differs from TorchRec, and why:

    * the budget: by default the free HBM after the dense model and every table's batch buffers
      (:func:`_free_gpu_bytes`), less the fixed bookkeeping ``F_i`` of every cached table and the
      prefetch buffers ``2 U_i r_i`` of every cached table when the workload prefetches. TorchRec adds its budget on top of the caches of a starting plan (the
      user's load factors) and searches the budget in ``[0, free]`` with ``LuusJaakolaSearch`` on
      its own perf estimate; here the caches start empty and the whole free HBM is dealt out (a
      starting plan at the default load factor 0.2 does not fit when HBM is short, the case this
      baseline is for).
    * promotion: in TorchRec's storage model a full cache is no smaller than the fused table (it
      counts the cache's optimizer state and 16 B of aux state per slot in HBM); in this cost model
      a ``gpu`` table also keeps its optimizer state ``N_i s_i`` in HBM, so a table is promoted only
      where the extra ``N_i (r_i + s_i) - C_i (r_i + a_i) - F_i`` bytes fit in what the passes left (tables in
      priority order); otherwise it stays a cache.
    * with ``prefetch``, a table whose prefetch buffers ``2 U_i r_i`` are at least its fused bytes
      ``N_i (r_i + s_i)`` is placed ``gpu`` first (TorchRec's
      ``promote_high_prefetch_overheaad_table_to_hbm``) and its bytes taken from the budget.

    Parameters
    ----------
    system : System or None
        Needed for the default budget only.
    budget_bytes : float, optional
        HBM bytes for the caches, the promoted tables and (with ``prefetch``) the prefetch buffers;
        default: the free HBM, as above.

    Examples
    --------
    >>> import numpy as np
    >>> from costmodel.embeddings import HistogramAccess
    >>> tables = tuple(Table(name=f"t{i}", rows=1000, dim=4, access=HistogramAccess(rows=1000, counts=np.ones(1000)))
    ...                for i in range(2))
    >>> m = RecModel(name="two", tables=tables, dense_features=4, bottom_mlp=(4,), top_mlp=(1,))
    >>> budget = 2 * 4 * 1000 + 2 * (16 + 16) * 250  # two tables' 4 N maps, 250 rows of 16 + 16 B each
    >>> [p.cache_rows for p in torchrec_proportional(EmbWorkload(model=m, batch=64), None, budget_bytes=budget)]
    [250, 250]
    """
    m = wl.model
    tables = m.tables
    # a cache row costs its bytes and FBGEMM's bookkeeping per slot; a cached table its fixed map too
    lru = [cache_state_bytes(wl, t, TablePolicy(placement=Placement.CACHE, cache_rows=1, cache_kind=CurveKind.LRU))
           for t in tables]
    fixed_b = np.asarray([f for f, _ in lru])
    row_b = np.asarray([float(t.row_bytes) + a for t, (_, a) in zip(tables, lru)])
    fused_b = np.asarray([float(t.rows) * (t.row_bytes + m.optimizer_state_bytes_per_row(t)) for t in tables])
    max_b = np.asarray([float(t.rows) * b for t, b in zip(tables, row_b)])
    distinct = np.asarray([float(t.access.expected_distinct_rows(wl.batch * float(t.pooling))) for t in tables])
    buffers = 2.0 * distinct * row_b if wl.prefetch else np.zeros(len(tables))
    promoted = buffers >= fused_b if wl.prefetch else np.zeros(len(tables), dtype=bool)
    if budget_bytes is None:
        if system is None:
            raise WorkloadError("torchrec-proportional needs a system (for the free HBM) or budget_bytes, got neither")
        budget_bytes = _free_gpu_bytes(wl, system)
    elif (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, numbers.Real)
          or not math.isfinite(budget_bytes) or budget_bytes < 0):
        raise WorkloadError(f"the torchrec-proportional budget must be a finite non-negative number of bytes, "
                            f"got {budget_bytes!r}")
    # the prefetch buffers and bookkeeping of the cached tables, and the tables promoted for theirs, come first
    cache_budget = (float(budget_bytes) - float(buffers[~promoted].sum()) - float(fixed_b[~promoted].sum())
                    - float(fused_b[promoted].sum()))
    budget = max(0.0, cache_budget)
    priority = np.asarray([torchrec_cacheability(t) for t in tables]) * distinct
    priority[promoted] = 0.0
    cache_b = np.zeros(len(tables))
    for _ in range(TORCHREC_SCALEUP_MAX_PASSES):
        if budget <= 1.0:
            break
        share = np.where((cache_b < max_b) & ~promoted, priority, 0.0)
        if share.sum() <= 0:
            break
        new = np.minimum(cache_b + budget * share / share.sum(), max_b)
        budget -= float((new - cache_b).sum())
        cache_b = new
    rows = np.asarray([min(t.rows, int(math.floor(b / r + 1e-9))) for t, b, r in zip(tables, cache_b, row_b)])
    left = max(0.0, cache_budget - float((rows * row_b).sum()))
    for i in sorted(np.flatnonzero(cache_b > TORCHREC_PROMOTE_LOAD_FACTOR * max_b), key=lambda i: (-priority[i], i)):
        extra = fused_b[i] - rows[i] * row_b[i] - fixed_b[i]  # a promoted table frees its cache and bookkeeping
        if extra <= left:
            promoted[i] = True
            left -= extra
    return tuple(TablePolicy(placement=Placement.GPU) if promoted[i]
                 else TablePolicy(placement=Placement.CACHE, cache_rows=int(rows[i]), cache_kind=CurveKind.LRU)
                 for i in range(len(tables)))


BASELINES = ("all-gpu", "cpu-hybrid", "uvm", "torchrec-uvm-cache", "largest-to-cpu", "fae",
             "torchrec-proportional")
# Named policies ``evaluate embeddings`` takes beside the baselines every plan reports.
POLICIES = BASELINES + ("colossalai-cache",)
# ColossalAI's CachedEmbeddingBag default ``cache_ratio`` (hpcaitech/CachedEmbedding recsys/dlrm_main.py
# ``--cache_ratio`` default 0.01; the 2022 scripts pass ``--cache_sets`` = 1 % of the rows).
COLOSSALAI_DEFAULT_CACHE_RATIO = 0.01


def colossalai_cache(wl: EmbWorkload, system: System | None = None,
                     cache_ratio: float = COLOSSALAI_DEFAULT_CACHE_RATIO) -> tuple[TablePolicy, ...]:
    """ColossalAI's ``CachedEmbeddingBag`` with dataset-frequency eviction: one fused table of all
    ``N = sum N_i`` rows in host memory and a GPU cache of ``floor(cache_ratio N)`` rows, warmed with
    and kept to the rows of highest dataset frequency, i.e. the globally hottest rows (FAE's ranking,
    :func:`_fae_ranked_rows`). Every table is a static ``cache`` of its share of those rows (0 to
    all of them): the fused table's maps cover every row (:func:`cache_state_bytes`).

    >>> from costmodel.embeddings import rec_model_from_dict
    >>> m = rec_model_from_dict({"name": "toy", "dense_features": 4, "bottom_mlp": [16], "top_mlp": [1],
    ...     "defaults": {"dim": 16}, "access": {"kind": "zipf", "alpha": 1.05},
    ...     "tables": [{"name": "a", "rows": 1000}, {"name": "b", "rows": 50}]})
    >>> pols = colossalai_cache(EmbWorkload(model=m, batch=64, runtime="colossalai"), None, 0.1)
    >>> [(p.placement.value, p.cache_rows) for p in pols], sum(p.cache_rows for p in pols)
    ([('cache', 55), ('cache', 50)], 105)
    """
    if isinstance(cache_ratio, bool) or not isinstance(cache_ratio, numbers.Real) or not 0 <= cache_ratio <= 1:
        raise WorkloadError(f"colossalai-cache needs a cache ratio in [0, 1], got {cache_ratio!r}")
    tables = wl.model.tables
    rows = int(math.floor(cache_ratio * sum(t.rows for t in tables) + 1e-9))
    hot = _fae_policies(wl, float(rows) * FP32_BYTES * wl.model.embedding_dim, _fae_ranked_rows(wl))
    return tuple(TablePolicy(placement=Placement.CACHE, cache_kind=CurveKind.STATIC,
                             cache_rows=t.rows if p.placement is Placement.GPU else p.cache_rows)
                 for t, p in zip(tables, hot))


def baseline_policies(name: str, wl: EmbWorkload, system: System) -> tuple[TablePolicy, ...]:
    """Per-table policies of a named policy: one of :data:`POLICIES`, with an optional ``:VALUE``
    for ``torchrec-uvm-cache`` (the cache load factor), ``largest-to-cpu`` (the threshold in GB,
    10^9 bytes), ``fae`` and ``torchrec-proportional`` (the budget in GB), ``colossalai-cache``
    (the cache ratio, default :data:`COLOSSALAI_DEFAULT_CACHE_RATIO`)."""
    if not isinstance(name, str):
        raise WorkloadError(f"a baseline must be named by text, got {name!r}")
    base, sep, arg = name.partition(":")
    if base not in POLICIES:
        raise WorkloadError(f"baseline must be one of {', '.join(POLICIES)}, got {name!r}")
    value = None
    if sep:
        if base not in ("torchrec-uvm-cache", "largest-to-cpu", "fae", "torchrec-proportional", "colossalai-cache"):
            raise WorkloadError(f"baseline {base!r} takes no value, got {name!r}")
        try:
            value = float(arg)
        except ValueError:
            raise WorkloadError(f"baseline {base!r} needs a number after ':', got {arg!r}") from None
        if not math.isfinite(value):
            raise WorkloadError(f"baseline {base!r} needs a finite number after ':', got {arg!r}")
    if base == "all-gpu":
        return all_gpu(wl)
    if base == "cpu-hybrid":
        return cpu_hybrid(wl)
    if base == "uvm":
        return uvm_all(wl)
    if base == "torchrec-uvm-cache":
        return torchrec_uvm_cache(wl, system, DEFAULT_CACHE_LOAD_FACTOR if value is None else value)
    if base == "largest-to-cpu":
        return largest_to_cpu(wl, system, None if value is None else value * 1e9)
    if base == "torchrec-proportional":
        return torchrec_proportional(wl, system, None if value is None else value * 1e9)
    if base == "colossalai-cache":
        return colossalai_cache(wl, system, COLOSSALAI_DEFAULT_CACHE_RATIO if value is None else value)
    return fae(wl, system, None if value is None else value * 1e9)


def torchrec_estimated_hit_rate(policy: TablePolicy, table: Table) -> float:
    """The hit rate TorchRec's planner assumes for a cached table: its cache load factor
    ``cache_rows / rows`` (``kernel_bw_lookup`` blends HBM and DDR bandwidth by ``caching_ratio``).
    Compare with :meth:`~costmodel.embeddings.ZipfAccess.lru_hit_rate` to see where it misleads."""
    if policy.placement is Placement.GPU:
        return 1.0
    if policy.placement is not Placement.CACHE:
        return 0.0
    return policy.cache_rows / table.rows


__all__ = [
    "BASELINES", "DEFAULT_CACHE_LOAD_FACTOR", "EmbCost", "EmbWorkload", "Placement", "Stage", "StateTier",
    "TablePolicy", "TableTraffic", "UpdateOn", "activation_bytes", "all_gpu", "baseline_policies", "cpu_hybrid",
    "dense_gpu_s", "dense_ops", "evaluate_embeddings", "explain_shortfall", "fae", "largest_to_cpu", "memory_use",
    "table_traffic", "torchrec_cacheability", "torchrec_estimated_hit_rate", "torchrec_proportional",
    "torchrec_uvm_cache", "uvm_all",
]
