"""Replay DLRM training iterations with each embedding table placed as a plan says; compare measured
with predicted time, stage by stage.

What runs
---------
A slice of the model's tables (each placement keeps its share, :func:`choose_tables`), rows scaled
down to a byte budget where a table is too big for this machine (:func:`scale_slice`), trains for
real with torch: ids drawn from each table's access distribution (Zipf, histogram) or read in order
from its trace (:func:`draw_ids`); every table's rows pooled by sum (``embedding_bag``); the bottom
MLP, the interaction (DLRM's pairwise dots or DCN-v2 cross layers) and the top MLP forward and
backward on random dense features and labels; the dense optimizer; and each table's optimizer
(SGD, row-wise Adagrad, Adagrad, Adam, as the model says) applied to exactly the distinct rows the
batch touched, on the tier where the plan keeps the rows and their state.

Placements, as :class:`costmodel.embeddings_cost.TablePolicy` defines them:

* ``gpu`` -- rows and state in device memory;
* ``cache`` -- the ``cache_rows`` hottest rows (``static``) or an LRU cache of that many rows, with
  a slot map kept on the host (FBGEMM keeps it on the GPU; here it is the input pipeline's work, so
  it is not timed; FBGEMM's bookkeeping tensors are allocated on the device at their sizes, so the
  peak memory holds them); every row in host memory; missed rows gathered over the link into a staging
  buffer; LRU misses inserted and their victims written back, static misses written back after
  the update;
* ``uvm`` -- every distinct row gathered over the link, updated on the device, written back;
* ``cpu`` -- rows gathered and pooled on the host, the pooled vectors copied up, their gradients
  copied down and the rows updated by the host (DLRM's hybrid).

``state_tier = host`` with ``update_on = gpu``: the touched rows' state is gathered up with the
cold rows (in the compute stage for a prefetched table, as the model counts it) and written back
after the update. ``update_on = cpu``: the pooled gradients go down
and the host updates the rows. ``prefetch``: the next batch's ids and cold rows are sent during
this batch's compute (ScratchPipe, Kwon & Rhu, MICRO 2022); rows that this batch updates and the
next one prefetched are forwarded on the device from this batch's write-back buffer, so no stale
row is trained on (a ``uvm`` table updated on the CPU is the exception: its rows are updated after
the prefetch left, so a row in two consecutive batches is one update stale; only time is measured).

Stages (the cost model's, one after another, each timed on the wall clock; under CUDA with a
device synchronisation at each boundary): ``fetch`` (ids and cold rows of tables not prefetched,
beside the ``cpu`` tables' pooling and their pooled copies), ``compute`` (cache maintenance,
device gathers and pooling, dense forward and backward, row updates; beside it the prefetch,
host-state reads and write-backs), ``host_update`` (pooled gradients down, then the host's row
updates). The embeddings' gradients come out of the top MLP's backward first, so the write-backs
overlap the bottom MLP's backward and the dense optimizer, as the model's overlap assumes.

The link
--------
Under CUDA, one copy stream per direction; a gather of host rows is a host ``index_select`` into a
pinned buffer and one copy (FBGEMM's UVM kernels read host rows in place; torch has no public
zero-copy mapping), a write-back one copy into a pinned buffer and a host ``index_copy_``. On the
CPU stand-in, a copier thread per direction on its own core paced to the profile's link rate
(:class:`GatherLink`, the KV replay's :class:`~validate.replay.ThrottledLink` with row gathers and
scatters done by the copier itself), so a cold row costs what the profile says a byte over the link
costs. The ``cpu`` tables' pooled vectors and gradients travel on their own paced link in the
calling thread (the model costs them on the CPU's chain, not the bulk H2D queue).

Kernels
-------
A batch's distinct rows are gathered hits first, cold rows after, into one device buffer (the link
writes the cold rows straight into it); pooling is ``embedding_bag`` over that buffer (or straight
over a ``gpu`` table trained with SGD, whose update is one ``index_add_``, as FBGEMM's fused
kernels do); the rows' gradients are the pooled gradients summed per row by sorting the lookups by
row and one ``embedding_bag`` (:func:`row_grads`). These are unfused torch ops: they move several
times the HBM bytes the cost model counts for a fused lookup-and-update kernel (``3 U r`` per
table), and on the CPU stand-in one core runs indexed ops far below its memory roof, so the
compute stage there is under-predicted (several-fold on tables of thousands of distinct rows);
the report says by how much, stage by stage.

What the prediction covers
--------------------------
:func:`replay_embeddings` predicts the *replayed* workload: the slice, with its scaled rows and
cache sizes, in the replay's dtypes, on the profile given; ``slice`` in the result says what was
cut and ``predicted_full_model_s`` what the model predicts for the whole workload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import numbers
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from costmodel.embeddings import (
    CurveKind,
    HistogramAccess,
    Interaction,
    Optimizer,
    RecModel,
    Table,
    TraceAccess,
    ZipfAccess,
)
from costmodel.embeddings_cost import (
    EmbCost,
    EmbWorkload,
    Placement,
    Runtime,
    Stage,
    StateTier,
    TablePolicy,
    UpdateOn,
    evaluate_embeddings,
)
from costmodel.errors import WorkloadError
from hwprofiles import System
from validate.errors import ReplayError
from validate.replay import (
    MIN_SLEEP_S,
    CudaLink,
    CoreSplit,
    ThrottledLink,
    _hardware_warnings,
    _random_,
    machine_name,
    memory_record,
    positive_int,
    profile_tags,
    run_settings,
)

# The slice's tables (weights and optimizer state) on the CPU stand-in are at most this many bytes:
# filling them takes under a second on 2 cores and the replay's host copies fit beside the suite.
CPU_TABLE_BYTES = 256 << 20
# Under CUDA: rows resident on the device and rows pinned on the host each stay under this.
CUDA_TABLE_BYTES = 8 << 30
# Values only steer the arithmetic (time is what is measured); these are torch.optim's defaults
# (Adam betas and eps) and a small step.
LEARNING_RATE = 0.01
ADAM_BETAS = (0.9, 0.999)
EPS = 1e-8
STAGES = (Stage.FETCH, Stage.COMPUTE, Stage.HOST_UPDATE)


# ------------------------------------------------------------------------------------ arguments
def _check_policies(wl: EmbWorkload, policies) -> tuple[TablePolicy, ...]:
    if not isinstance(wl, EmbWorkload):
        raise ReplayError(f"wl must be an EmbWorkload, got {type(wl).__name__}")
    n = len(wl.model.tables)
    if not isinstance(policies, (list, tuple)) or len(policies) != n:
        got = len(policies) if isinstance(policies, (list, tuple)) else type(policies).__name__
        raise ReplayError(f"policies must be one TablePolicy per table of {wl.model.name!r} ({n}), got {got}")
    for i, p in enumerate(policies):
        if not isinstance(p, TablePolicy):
            raise ReplayError(f"policies[{i}] must be a TablePolicy, got {type(p).__name__}")
        t = wl.model.tables[i]
        if p.cache_rows > t.rows:
            raise ReplayError(f"policies[{i}].cache_rows must be at most table {t.name!r}'s {t.rows:,} rows, "
                              f"got {p.cache_rows:,}")
    return tuple(policies)


# ------------------------------------------------------------------------------------ slices
def choose_tables(policies: Sequence[TablePolicy], n_tables: int | None,
                  sizes: Sequence[float] | None = None) -> list[int]:
    """Table indices to replay: all, or ``n_tables`` chosen so every placement present keeps its share.

    Each placement gets at least one table; within a placement the chosen tables are spread evenly
    over its tables sorted by ``sizes`` (bytes, largest first; model order without ``sizes``), so
    large and small tables are both replayed.

    >>> g, u = TablePolicy(placement="gpu"), TablePolicy(placement="uvm")
    >>> choose_tables([g] * 6 + [u] * 2, 4)
    [0, 2, 5, 6]
    >>> choose_tables([g] * 6 + [u] * 2, 2, sizes=[1, 9, 2, 8, 3, 7, 1, 1])
    [1, 6]
    """
    n = len(policies)
    if n_tables is None or n_tables >= n:
        return list(range(n))
    groups: dict[Placement, list[int]] = {}
    for i, p in enumerate(policies):
        groups.setdefault(p.placement, []).append(i)
    quota = {k: max(1, round(n_tables * len(v) / n)) for k, v in groups.items()}
    while sum(quota.values()) > max(n_tables, len(groups)):
        biggest = max(quota, key=lambda k: (quota[k], len(groups[k])))
        quota[biggest] -= 1
    out = []
    for k, members in groups.items():
        if sizes is not None:
            members = sorted(members, key=lambda i: (-sizes[i], i))
        picks = np.unique(np.round(np.linspace(0, len(members) - 1, quota[k])).astype(int))
        out += [members[j] for j in picks]
    return sorted(out)


def scaled_access(access, rows: int):
    """The access distribution of a table cut to ``rows`` rows (``rows <= access.rows``).

    Zipf keeps its exponent over fewer rows; a histogram folds its counts (row ``i`` goes to
    ``i mod rows``, so every lookup is kept); a trace maps its ids ``mod rows`` (its order kept).

    >>> scaled_access(ZipfAccess(rows=1000, alpha=1.2), 10).rows
    10
    >>> scaled_access(HistogramAccess(rows=4, counts=np.array([1.0, 2, 3, 4])), 2).counts.tolist()
    [4.0, 6.0]
    """
    if rows >= access.rows:
        return access
    note = f"scaled from {access.rows:,} to {rows:,} rows by the replay"
    if isinstance(access, ZipfAccess):
        return ZipfAccess(rows=rows, alpha=access.alpha, seed=access.seed, source=f"{access.source}; {note}".strip("; "))
    if isinstance(access, HistogramAccess):
        counts = np.asarray(access.counts, dtype=np.float64)
        folded = np.bincount(np.arange(len(counts)) % rows, weights=counts, minlength=rows)
        return HistogramAccess(rows=rows, counts=folded, source=f"{access.source}; {note} (counts folded mod rows)")
    if isinstance(access, TraceAccess):
        return TraceAccess(rows=rows, ids=np.asarray(access.ids) % rows,
                           source=f"{access.source}; {note} (ids mod rows)")
    raise ReplayError(f"access must be a ZipfAccess, HistogramAccess or TraceAccess, got {type(access).__name__}")


def _row_cap(sizes: list[tuple[int, float]], budget_bytes: float) -> int | None:
    """The largest cap on rows with ``sum min(rows_i, cap) * bytes_per_row_i <= budget`` (None: no cap needed)."""
    total = sum(r * b for r, b in sizes)
    if total <= budget_bytes:
        return None
    lo, hi = 1, max(r for r, _ in sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(r, mid) * b for r, b in sizes) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def scale_slice(wl: EmbWorkload, policies: Sequence[TablePolicy], indices: Sequence[int], budget_bytes: float
                ) -> tuple[EmbWorkload, tuple[TablePolicy, ...], list[dict]]:
    """The workload of the chosen tables, each capped at a common row count so that the slice's
    weights and optimizer state fit ``budget_bytes``; cache sizes keep their share of the rows.

    Returns the sliced workload, its policies and one ``{table, rows, of_rows, cache_rows,
    of_cache_rows}`` entry per table that was cut. A DCN-v2 model whose cross-layer rank exceeds
    the slice's width ``(tables + 1) x dim`` gets that width as its rank (an entry
    ``{"dcn_rank": ..., "of_dcn_rank": ...}`` says so): a slice of few tables is a narrower model.
    """
    m = wl.model
    tables = [m.tables[i] for i in indices]
    sizes = [(t.rows, float(t.row_bytes + m.optimizer_state_bytes_per_row(t))) for t in tables]
    cap = _row_cap(sizes, budget_bytes)
    new_tables, new_pols, cut = [], [], []
    for i, t in zip(indices, tables):
        pol = policies[i]
        if cap is None or t.rows <= cap:
            new_tables.append(t)
            new_pols.append(pol)
            continue
        rows = cap
        new_tables.append(dataclasses.replace(t, rows=rows, access=scaled_access(t.access, rows)))
        c = min(rows, round(pol.cache_rows * rows / t.rows)) if pol.cache_rows else 0
        new_pols.append(dataclasses.replace(pol, cache_rows=c) if pol.placement is Placement.CACHE else pol)
        cut.append({"table": t.name, "rows": rows, "of_rows": t.rows, "cache_rows": c, "of_cache_rows": pol.cache_rows})
    rank = m.dcn_rank
    if m.interaction is Interaction.DCNV2 and rank > (len(new_tables) + 1) * m.embedding_dim:
        rank = (len(new_tables) + 1) * m.embedding_dim
        cut.append({"dcn_rank": rank, "of_dcn_rank": m.dcn_rank})
    try:
        model = dataclasses.replace(m, tables=tuple(new_tables), dcn_rank=rank)
    except WorkloadError as err:
        raise ReplayError(f"the slice of tables {list(indices)} of {m.name!r} is not a valid model: {err}") from None
    return dataclasses.replace(wl, model=model), tuple(new_pols), cut


def policy_digest(wl: EmbWorkload, policies: Sequence[TablePolicy]) -> str:
    """A short name for the replayed tables and their policies: equal digests, equal decisions."""
    key = (tuple((t.name, t.rows) for t in wl.model.tables), tuple(policies))
    return hashlib.sha1(repr(key).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ ids
def draw_ids(access, n: int, rng: np.random.Generator, batch_index: int) -> np.ndarray:
    """The ``n`` ids of one batch: drawn from a Zipf or histogram distribution, or the trace's ids
    ``[batch_index * n, (batch_index + 1) * n)`` (wrapping), so consecutive batches keep its order.

    >>> t = TraceAccess(rows=10, ids=np.arange(10))
    >>> draw_ids(t, 4, np.random.default_rng(0), 2).tolist()
    [8, 9, 0, 1]
    """
    if isinstance(access, TraceAccess):
        ids = np.asarray(access.ids)
        return ids[(batch_index * n + np.arange(n)) % len(ids)].astype(np.int64)
    return np.asarray(access.sample(n, rng), dtype=np.int64)


def hottest_rows(access, k: int) -> np.ndarray:
    """The ``k`` most frequently accessed rows (a static cache's contents, an LRU cache's warm start).

    >>> hottest_rows(ZipfAccess(rows=100, alpha=1.1), 3).tolist()
    [0, 1, 2]
    >>> hottest_rows(HistogramAccess(rows=4, counts=np.array([1.0, 5, 0, 3])), 2).tolist()
    [1, 3]
    """
    k = min(int(k), int(access.rows))
    if isinstance(access, ZipfAccess):
        return np.arange(k, dtype=np.int64)  # row 0 is the hottest (costmodel.embeddings.ZipfAccess)
    if isinstance(access, HistogramAccess):
        counts = np.zeros(access.rows)
        counts[: len(access.counts)] = access.counts
    else:
        counts = np.bincount(np.asarray(access.ids), minlength=access.rows).astype(np.float64)
    return np.argsort(-counts, kind="stable")[:k].astype(np.int64)


def _bags(batch: int, pooling: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(offsets [B], bag of each lookup [L], L): ``L = round(B P)`` lookups, bag ``b`` starting at
    ``floor(b L / B)`` (bags of ``floor``/``ceil(P)`` lookups; empty bags when ``P < 1``)."""
    n = max(1, round(batch * float(pooling)))
    offsets = (np.arange(batch, dtype=np.int64) * n) // batch
    bag = np.searchsorted(offsets, np.arange(n, dtype=np.int64), side="right") - 1
    return offsets, bag.astype(np.int64), n


@dataclass(slots=True)
class _Step:
    """One batch of one table, prepared by the input pipeline (not timed).

    The batch's distinct rows are ordered hits first (rows served by device storage: the whole
    table, or cache slots), then cold rows (gathered over the link, in staging order): ``uniq`` [U]
    their row ids, ``inverse`` [L] each lookup's position among them. ``bundle`` is what the device
    receives each batch, in this order: ``inverse``, ``hit_slots`` [n_hit] (row ids of a ``gpu``
    table, cache slots of a ``cache`` table), ``row_ids`` (``uniq``; only when a non-``gpu`` table
    keeps its state on the device), ``victim_slots`` [n_inserted] (the LRU slots the first misses
    take), ``fwd_dst``/``fwd_src`` (cold rows of this batch that the previous batch updated after the
    prefetch left: positions in this staging buffer and in the previous write-back buffer).
    ``wb_rows`` are the rows written back: the LRU victims, then the cold rows not inserted.
    """

    ids: np.ndarray
    uniq: np.ndarray
    inverse: np.ndarray
    n_hit: int
    bundle: torch.Tensor
    parts: dict[str, tuple[int, int]]
    cold_rows: torch.Tensor
    wb_rows: torch.Tensor
    n_inserted: int
    hit_lookups: int
    host_order: tuple[torch.Tensor, torch.Tensor] | None = None


def _prepare_steps(table: Table, pol: TablePolicy, wl: EmbWorkload, n_batches: int, rng: np.random.Generator,
                   pinned: bool) -> tuple[list[_Step], np.ndarray | None]:
    """Every batch's ids and cache decisions for one table; the cache's initial rows (or None).

    A static cache holds the :func:`hottest_rows`; an LRU cache starts with them (the steady state
    a long run reaches, so a few warm-up iterations suffice) and evicts the least recently used
    slots not hit by the batch.
    """
    _, _, n = _bags(wl.batch, table.pooling)
    p = pol.placement
    empty = np.zeros(0, dtype=np.int64)
    slot_of_row = row_of_slot = last_used = init = None
    if p is Placement.CACHE:
        init = hottest_rows(table.access, pol.cache_rows)
        slot_of_row = np.full(table.rows, -1, dtype=np.int64)
        slot_of_row[init] = np.arange(len(init))
        row_of_slot = init.copy()
        last_used = np.full(len(init), -1, dtype=np.int64)
    lru = p is Placement.CACHE and pol.cache_kind is CurveKind.LRU
    writes_back = pol.update_on is UpdateOn.GPU and p in (Placement.CACHE, Placement.UVM)
    forwards = writes_back and pol.prefetched(wl)
    ids_on_device = pol.state_tier is StateTier.GPU and p is not Placement.GPU
    steps: list[_Step] = []
    prev_wb = empty
    for k in range(n_batches):
        ids = draw_ids(table.access, n, rng, k)
        uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        if p is Placement.GPU:
            hit = np.ones(len(uniq), dtype=bool)
        elif p is Placement.CACHE:
            hit = slot_of_row[uniq] >= 0
        else:
            hit = np.zeros(len(uniq), dtype=bool)
        order = np.concatenate((np.flatnonzero(hit), np.flatnonzero(~hit)))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        uniq, inverse, n_hit = uniq[order], rank[inverse.reshape(-1)], int(hit.sum())
        hit_lookups = int(counts[hit].sum())
        cold = uniq[n_hit:] if p is not Placement.CPU else empty
        hit_slots = uniq[:n_hit] if p is Placement.GPU else empty
        victims, n_ins = empty, 0
        if p is Placement.CACHE:
            hit_slots = slot_of_row[uniq[:n_hit]]
            if lru:
                last_used[hit_slots] = k
                n_ins = min(len(cold), len(row_of_slot) - n_hit)
                if n_ins:
                    age = last_used.copy()
                    age[hit_slots] = np.iinfo(np.int64).max
                    victims = np.argpartition(age, n_ins - 1)[:n_ins].astype(np.int64)
        wb = np.concatenate((row_of_slot[victims] if n_ins else empty, cold[n_ins:])) if writes_back else empty
        if n_ins:
            slot_of_row[row_of_slot[victims]] = -1
            slot_of_row[cold[:n_ins]] = victims
            row_of_slot[victims] = cold[:n_ins]
            last_used[victims] = k
        fwd_dst = fwd_src = empty
        if forwards and len(prev_wb) and len(cold):
            _, fwd_dst, fwd_src = np.intersect1d(cold, prev_wb, assume_unique=True, return_indices=True)
        prev_wb = wb
        parts, chunks, at = {}, [], 0
        for name, arr in (("inverse", inverse), ("hit_slots", hit_slots), ("row_ids", uniq if ids_on_device else empty),
                          ("victim_slots", victims), ("fwd_dst", fwd_dst), ("fwd_src", fwd_src)):
            parts[name] = (at, at + len(arr))
            chunks.append(np.asarray(arr, dtype=np.int64))
            at += len(arr)
        bundle = torch.from_numpy(np.concatenate(chunks))
        cold_t, wb_t = torch.from_numpy(np.ascontiguousarray(cold)), torch.from_numpy(np.ascontiguousarray(wb))
        if pinned:
            bundle, cold_t, wb_t = bundle.pin_memory(), cold_t.pin_memory(), wb_t.pin_memory()
        host_order = None
        if pol.update_on is UpdateOn.CPU:  # lookups sorted by row, and each row's first lookup
            order = np.argsort(inverse, kind="stable")
            per_row = np.bincount(inverse, minlength=len(uniq))
            host_order = (torch.from_numpy(order), torch.from_numpy(np.cumsum(per_row) - per_row))
        steps.append(_Step(ids=ids, uniq=uniq, inverse=inverse, n_hit=n_hit, bundle=bundle, parts=parts,
                           cold_rows=cold_t, wb_rows=wb_t, n_inserted=n_ins, hit_lookups=hit_lookups,
                           host_order=host_order))
    return steps, init


# ------------------------------------------------------------------------------------ copy engines
class GatherLink(ThrottledLink):
    """:class:`~validate.replay.ThrottledLink` that also gathers and scatters rows, paced the same way.

    :meth:`submit_ops` takes ``("copy", dst, src)``, ``("gather", dst, src, idx)`` (``dst = src[idx]``)
    and ``("scatter", dst, src, idx)`` (``dst[idx] = src``) on CPU tensors; the copier thread does
    the gather or scatter itself, :data:`~validate.replay.COPY_CHUNK_BYTES` of rows at a time, and
    sleeps until the bytes moved match the rate: a row over this link costs what the profile's link
    costs a byte, as a GPU's gather of host rows over PCIe does.

    Examples
    --------
    >>> link = GatherLink(1e9, inline=True)
    >>> src, dst = torch.arange(12.0).view(6, 2), torch.zeros(2, 2)
    >>> link.wait_host(link.submit_ops([("gather", dst, src, torch.tensor([4, 1]))]))
    >>> dst.tolist()
    [[8.0, 9.0], [2.0, 3.0]]
    """

    def submit_ops(self, ops: Sequence[tuple]) -> Future:
        prepared = []
        for op in ops:
            kind, dst, src = op[0], op[1], op[2]
            for t in (dst, src):
                if t.device.type != "cpu" or not t.is_contiguous():
                    raise ReplayError(f"the {self.name} copier moves contiguous CPU tensors, got a {t.device} tensor "
                                      f"of strides {t.stride()}")
            if dst.dtype != src.dtype:
                raise ReplayError(f"the {self.name} copier needs one dtype on both sides, got {src.dtype} -> {dst.dtype}")
            if kind == "copy":
                if dst.nbytes != src.nbytes:
                    raise ReplayError(f"the {self.name} copier copies equal sizes, got {src.nbytes} -> {dst.nbytes} bytes")
                if dst.nbytes:
                    prepared.append((dst.reshape(-1).view(torch.uint8).numpy(), src.reshape(-1).view(torch.uint8).numpy()))
            elif kind in ("gather", "scatter"):
                idx = op[3]
                rows_side = dst if kind == "gather" else src
                if idx.dtype != torch.int64 or idx.dim() != 1 or rows_side.shape[0] != idx.numel():
                    raise ReplayError(f"a {kind} needs one int64 index per row moved, got {tuple(idx.shape)} "
                                      f"{idx.dtype} for {rows_side.shape[0]} rows")
                if idx.numel():
                    prepared.append((kind, dst, src, idx))
            else:
                raise ReplayError(f"a copier op must be 'copy', 'gather' or 'scatter', got {kind!r}")
        fut: Future = Future()
        if self.inline:
            self._copy(prepared)
            fut.set_result(None)
        else:
            self._queue.put((prepared, fut))
        return fut

    def _copy(self, views) -> None:
        start = max(self.clock(), self._busy_until)
        done = 0

        def pace(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            wait = start + done / self.bytes_per_s - self.clock()
            if wait > MIN_SLEEP_S:
                self.sleep(wait)

        for op in views:
            if len(op) == 2:  # a plain copy (numpy byte views), as ThrottledLink copies
                dst, src = op
                for i in range(0, dst.size, self.chunk_bytes):
                    j = min(dst.size, i + self.chunk_bytes)
                    np.copyto(dst[i:j], src[i:j])
                    pace(j - i)
                continue
            kind, dst, src, idx = op
            row_bytes = (dst if kind == "gather" else src)[0].nbytes  # the rows moved (idx is not empty)
            rows = max(1, self.chunk_bytes // max(1, row_bytes))
            if kind == "gather":
                for i in range(0, idx.numel(), rows):
                    j = min(idx.numel(), i + rows)
                    torch.index_select(src, 0, idx[i:j], out=dst[i:j])
                    pace((j - i) * row_bytes)
            else:
                d, s, ix = dst.numpy(), src.numpy(), idx.numpy()
                for i in range(0, len(ix), rows):
                    j = min(len(ix), i + rows)
                    d[ix[i:j]] = s[i:j]  # numpy's fancy assignment releases the GIL
                    pace((j - i) * row_bytes)
        self.bytes_moved += done
        self._busy_until = start + done / self.bytes_per_s


class CudaGatherLink:
    """One direction of a real link: a CUDA copy stream, with host-side row gathers and scatters
    through pinned buffers done by a worker thread (so the compute stream never waits for the host).

    ``submit_ops`` takes the ops of :class:`GatherLink`; device tensors on one side, host tensors
    on the other. The work is ordered after the compute issued before the call (an event).
    """

    def __init__(self, device: torch.device, name: str = "h2d"):
        self.device, self.name = device, name
        self.stream = torch.cuda.Stream(device)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tierplan-{name}")
        self._pinned: dict[tuple, tuple[torch.Tensor, object]] = {}

    def _pin(self, key: tuple, shape: tuple, dtype) -> torch.Tensor:
        buf, last = self._pinned.get(key, (None, None))
        if buf is None or buf.shape[0] < shape[0]:
            buf = torch.empty(shape, dtype=dtype, pin_memory=True)
        elif last is not None:
            last.synchronize()  # the previous copy out of or into this buffer is done
        self._pinned[key] = (buf, None)
        return buf[: shape[0]]

    def submit_ops(self, ops: Sequence[tuple]):
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        return self.pool.submit(self._run, list(ops), ready)

    def _run(self, ops, ready):
        self.stream.wait_event(ready)
        scatters = []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for op in ops:
                kind, dst, src = op[0], op[1], op[2]
                if kind == "copy":
                    dst.copy_(src, non_blocking=True)
                elif kind == "gather":
                    idx = op[3]
                    key = ("g", dst.untyped_storage().data_ptr())  # one pinned buffer per device buffer
                    buf = self._pin(key, tuple(dst.shape), dst.dtype)
                    torch.index_select(src, 0, idx, out=buf)
                    dst.copy_(buf, non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(self.stream)
                    self._pinned[key] = (self._pinned[key][0], ev)
                else:
                    idx = op[3]
                    key = ("s", src.untyped_storage().data_ptr())
                    buf = self._pin(key, tuple(src.shape), src.dtype)
                    buf.copy_(src, non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(self.stream)
                    scatters.append((dst, idx, buf, ev))
            done = torch.cuda.Event()
            done.record(self.stream)
        for dst, idx, buf, ev in scatters:
            ev.synchronize()
            dst.index_copy_(0, idx, buf)
        return done

    def wait_device(self, handle) -> None:
        if handle is not None:
            torch.cuda.current_stream(self.device).wait_event(handle.result())

    def wait_host(self, handle) -> None:
        if handle is not None:
            handle.result().synchronize()

    def close(self) -> None:
        self.pool.shutdown()


# ------------------------------------------------------------------------------------ optimizers
def state_floats_per_row(optimizer: Optimizer, dim: int) -> int:
    """fp32 values of optimizer state per row: SGD 0, row-wise Adagrad 1, Adagrad ``dim``, Adam
    ``2 dim`` (:func:`costmodel.embeddings.optimizer_state_bytes_per_row` divided by 4)."""
    return {Optimizer.SGD: 0, Optimizer.ROWWISE_ADAGRAD: 1, Optimizer.ADAGRAD: dim, Optimizer.ADAM: 2 * dim}[optimizer]


def update_rows(optimizer: Optimizer, w: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None, step: int) -> None:
    """Apply one step of ``optimizer`` to the rows ``w`` [U, D] with gradients ``g`` [U, D] and state
    ``state`` [U, S] (fp32), in place.

    SGD ``w -= lr g``; row-wise Adagrad (FBGEMM ``EXACT_ROWWISE_ADAGRAD``) ``a += mean(g^2)``,
    ``w -= lr g / (sqrt(a) + eps)``; Adagrad ``a += g^2`` elementwise; Adam (Kingma & Ba 2015,
    Algorithm 1) with bias corrections at ``step`` (1-based).

    >>> w = torch.ones(2, 2); update_rows(Optimizer.SGD, w, torch.ones(2, 2), None, 1); round(w[0, 0].item(), 6)
    0.99
    """
    w32 = w if w.dtype == torch.float32 else w.float()
    g = g.float()
    if optimizer is Optimizer.SGD:
        w32.add_(g, alpha=-LEARNING_RATE)
    elif optimizer is Optimizer.ROWWISE_ADAGRAD:
        acc = state[:, 0]
        acc.add_(g.pow(2).mean(dim=1))
        w32.addcdiv_(g, acc.sqrt().add_(EPS).unsqueeze(1), value=-LEARNING_RATE)
    elif optimizer is Optimizer.ADAGRAD:
        state.addcmul_(g, g)
        w32.addcdiv_(g, state.sqrt().add(EPS), value=-LEARNING_RATE)
    else:
        d = g.shape[1]
        b1, b2 = ADAM_BETAS
        m, v = state[:, :d], state[:, d:]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**step)).sqrt_().add_(EPS)
        w32.addcdiv_(m, denom, value=-LEARNING_RATE / (1 - b1**step))
    if w32 is not w:
        w.copy_(w32)


def row_grads(inverse: torch.Tensor, bag: torch.Tensor, grad: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Gradients of a batch's distinct rows [n_rows, D] under sum pooling: row ``u`` gets the sum of
    the pooled gradients ``grad`` [B, D] of the bags its lookups fall in. The lookups are sorted by
    row and reduced with ``embedding_bag`` (a segment sum, as FBGEMM's backward sorts the ids).

    >>> row_grads(torch.tensor([1, 0, 1]), torch.tensor([0, 0, 1]), torch.tensor([[1.0], [10.0]]), 2).tolist()
    [[1.0], [11.0]]
    """
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=n_rows)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(bag.index_select(0, order), grad, offsets, mode="sum")


def _dense_optimizer(optimizer: Optimizer, params) -> torch.optim.Optimizer:
    if optimizer is Optimizer.SGD:
        return torch.optim.SGD(params, lr=LEARNING_RATE)
    if optimizer is Optimizer.ADAGRAD:
        return torch.optim.Adagrad(params, lr=LEARNING_RATE)
    return torch.optim.Adam(params, lr=LEARNING_RATE, betas=ADAM_BETAS, eps=EPS)


# ------------------------------------------------------------------------------------ the replayer
class _TableState:
    """One table's tensors: device storage (whole table or cache), host rows, state, buffers."""

    def __init__(self, index: int, table: Table, pol: TablePolicy, wl: EmbWorkload, steps: list[_Step],
                 init: np.ndarray | None, dev: torch.device, dtype: torch.dtype, pinned: bool):
        self.index, self.table, self.pol = index, table, pol
        self.opt = wl.model.optimizer_of(table)
        self.steps = steps
        n, d = table.rows, table.dim
        self.dim = d
        self.s = state_floats_per_row(self.opt, d)
        p = pol.placement
        self.placement = p
        self.prefetch = pol.prefetched(wl)
        self.lru = p is Placement.CACHE and pol.cache_kind is CurveKind.LRU
        # a prefetched table whose rows this batch writes back: the next batch's copies may be stale
        self.forwards = self.prefetch and pol.update_on is UpdateOn.GPU and p in (Placement.CACHE, Placement.UVM)
        self.fused_sgd = p is Placement.GPU and self.opt is Optimizer.SGD
        offsets, bag, _ = _bags(wl.batch, table.pooling)
        self.offsets_host, self.bag_host = torch.from_numpy(offsets), torch.from_numpy(bag)
        self.offsets_dev, self.bag_dev = self.offsets_host.to(dev), self.bag_host.to(dev)
        self.weight_dev = self.cache_dev = self.host_weight = None
        if p is Placement.GPU:
            self.weight_dev = _random_(torch.empty(n, d, dtype=dtype, device=dev))
        else:
            self.host_weight = _random_(torch.empty(n, d, dtype=dtype, pin_memory=pinned))
        self.cache_state_dev: list[torch.Tensor] = []
        if p is Placement.CACHE:
            self.cache_dev = torch.empty(len(init), d, dtype=dtype, device=dev)
            if len(init):
                self.cache_dev.copy_(self.host_weight[torch.from_numpy(init)])
            # FBGEMM's cache bookkeeping, allocated at its sizes so the device's peak memory holds what the
            # model counts (costmodel.embeddings_cost.cache_state_bytes); the replay's own slot map lives
            # on the host, so these are only held, not read
            slots = int(pol.cache_rows)
            self.cache_state_dev = [torch.empty(n, dtype=torch.int32, device=dev),  # cache_index_table_map
                                    torch.empty(slots, dtype=torch.int64, device=dev)]  # lxu_cache_state
            self.cache_state_dev.append(torch.empty(slots if self.lru else n + 1, dtype=torch.int64, device=dev))
            if self.prefetch:  # lxu_cache_locking_counter
                self.cache_state_dev.append(torch.empty(slots, dtype=torch.int32, device=dev))
        self.state_dev = self.state_host = None
        if self.s:
            if pol.state_tier is StateTier.GPU:
                self.state_dev = torch.zeros(n, self.s, dtype=torch.float32, device=dev)
            else:
                self.state_host = torch.zeros(n, self.s, dtype=torch.float32, pin_memory=pinned)
        max_bundle = max(st.bundle.numel() for st in steps)
        max_cold = max(st.cold_rows.numel() for st in steps)
        max_wb = max(st.wb_rows.numel() for st in steps)
        max_u = max(len(st.uniq) for st in steps)
        self.bundle_dev = [torch.empty(max_bundle, dtype=torch.int64, device=dev) for _ in range(2)]
        # A batch's rows on the device, hits first then cold rows: the link gathers cold rows into
        # [n_hit, U) and the cache's hits are copied into [0, n_hit), so no concatenation is needed.
        self.staging = ([torch.empty(max_u, d, dtype=dtype, device=dev) for _ in range(2)]
                        if max_cold or p is Placement.CACHE else None)
        self.wb = [torch.empty(max_wb, d, dtype=dtype, device=dev) for _ in range(2)] if max_wb else None
        host_state_on_gpu = self.s and pol.state_tier is StateTier.HOST and pol.update_on is UpdateOn.GPU
        self.state_stage = torch.empty(max_u, self.s, dtype=torch.float32, device=dev) if host_state_on_gpu else None
        b = wl.batch
        self.pooled_dev = torch.empty(b, d, dtype=torch.float32, device=dev) if p is Placement.CPU else None
        self.pooled_host = torch.empty(b, d, dtype=torch.float32, pin_memory=pinned) if p is Placement.CPU else None
        self.grad_host = torch.empty(b, d, dtype=torch.float32, pin_memory=pinned) \
            if pol.update_on is UpdateOn.CPU else None
        self.grad_dev = None
        self.leaf = None
        self.rows = None
        # which row each cache slot holds now (host bookkeeping, for logical_weight)
        self.cache_rows_now = init.copy() if init is not None else np.zeros(0, dtype=np.int64)

    def view(self, slot: int, k: int, name: str) -> torch.Tensor:
        a, b = self.steps[k].parts[name]
        return self.bundle_dev[slot][a:b]

    def logical_weight(self) -> torch.Tensor:
        """Every row's current value on the host (the cache's rows over the host copy's)."""
        if self.weight_dev is not None:
            return self.weight_dev.detach().cpu().clone()
        out = self.host_weight.clone()
        if self.cache_dev is not None and len(self.cache_rows_now):
            out[torch.from_numpy(self.cache_rows_now)] = self.cache_dev.cpu()
        return out


class EmbReplayer:
    """Runs training iterations of a sliced :class:`EmbWorkload` and times each stage.

    Parameters
    ----------
    wl : EmbWorkload
        The workload as replayed (sliced and scaled; its element sizes the replay's).
    policies : sequence of TablePolicy
        One per table of ``wl``.
    device : torch.device
        ``cuda`` (copy streams) or ``cpu`` (throttled copier threads).
    n_batches : int
        Batches prepared (every iteration runs a different one; the last is only prefetched).
    link_bytes_per_s : (float, float)
        H2D and D2H rates of the CPU stand-in's copiers (ignored under CUDA).
    compute_threads : int or None
        CPU stand-in only: torch threads for compute, the last core left to the copiers.
    seed : int
        Seeds the ids, the tables' initial rows, the dense model, its inputs and the labels.
    row_dtype, dense_dtype : torch.dtype
        The rows' and the dense part's element types (:func:`replay_embeddings` picks them).

    Examples
    --------
    >>> from costmodel.embeddings import RecModel, Table, ZipfAccess
    >>> t = Table(name="t", rows=100, dim=4, pooling=2, access=ZipfAccess(rows=100, alpha=1.1))
    >>> wl = EmbWorkload(model=RecModel(name="m", tables=(t,), dense_features=3, bottom_mlp=(4,), top_mlp=(1,)),
    ...                  batch=8)
    >>> rep = EmbReplayer(wl, [TablePolicy(placement="uvm")], torch.device("cpu"), n_batches=2)
    >>> sorted(s.value for s in rep.iteration(0)); rep.close()
    ['compute', 'fetch', 'host_update']
    """

    def __init__(self, wl: EmbWorkload, policies: Sequence[TablePolicy], device: torch.device, *, n_batches: int,
                 link_bytes_per_s: tuple[float, float] = (1e9, 1e9), compute_threads: int | None = None,
                 seed: int = 0, row_dtype: torch.dtype = torch.float32, dense_dtype: torch.dtype = torch.float32):
        self.wl, self.dev = wl, device
        self.cuda = device.type == "cuda"
        self.pinned = self.cuda
        self.n_batches = n_batches
        self._cores = CoreSplit(not self.cuda, compute_threads)
        copier_core = self._cores.copier_core
        try:
            rng = np.random.default_rng(seed)
            self.tables = []
            for i, (t, p) in enumerate(zip(wl.model.tables, policies)):
                steps, init = _prepare_steps(t, p, wl, n_batches, rng, self.pinned)
                with torch.random.fork_rng(devices=[]):  # the caller's torch RNG is left as it was
                    torch.manual_seed(seed + i)
                    self.tables.append(_TableState(i, t, p, wl, steps, init, device, row_dtype, self.pinned))
            with torch.random.fork_rng(devices=[]):
                self._build_dense(wl, device, dense_dtype, seed)
            if self.cuda:
                self.h2d, self.d2h = CudaGatherLink(device, "h2d"), CudaGatherLink(device, "d2h")
                self.ret_h2d, self.ret_d2h = CudaLink(device, "h2d-pooled"), CudaLink(device, "d2h-pooled")
            else:
                up, down = link_bytes_per_s
                self.h2d = GatherLink(up, name="h2d", cpu=copier_core)
                self.d2h = GatherLink(down, name="d2h", cpu=copier_core)
                # The cpu tables' pooled vectors and gradients: paced in the calling thread (the
                # model costs them on the CPU's chain, after the pooling, not in the bulk H2D queue).
                self.ret_h2d = ThrottledLink(up, name="h2d-pooled", inline=True)
                self.ret_d2h = ThrottledLink(down, name="d2h-pooled", inline=True)
        except BaseException:
            self._restore()
            raise
        self.step = 0

    def _build_dense(self, wl: EmbWorkload, dev, dtype, seed: int) -> None:
        m, b = wl.model, wl.batch
        gen = torch.Generator().manual_seed(seed)

        def mlp(sizes, last_relu: bool):
            layers = []
            for i, (k, n) in enumerate(itertools.pairwise(sizes)):
                layers.append(torch.nn.Linear(k, n))
                if last_relu or i < len(sizes) - 2:
                    layers.append(torch.nn.ReLU())
            return torch.nn.Sequential(*layers).to(device=dev, dtype=dtype)

        torch.manual_seed(seed)  # the caller forks the RNG
        self.bottom = mlp((m.dense_features, *m.bottom_mlp), True)
        self.top = mlp((m.top_mlp_in_features, *m.top_mlp), False)
        params = list(self.bottom.parameters()) + list(self.top.parameters())
        self.cross = []
        if m.interaction is Interaction.DCNV2:
            n = m.interaction_in_features
            for _ in range(m.dcn_layers):
                v = torch.nn.Linear(n, m.dcn_rank, bias=False).to(device=dev, dtype=dtype)
                u = torch.nn.Linear(m.dcn_rank, n).to(device=dev, dtype=dtype)
                self.cross.append((v, u))
                params += list(v.parameters()) + list(u.parameters())
        else:
            li, lj = torch.tril_indices(m.n_features, m.n_features, offset=-1)
            self.tril = (li * m.n_features + lj).to(dev)
        self.dense_opt = _dense_optimizer(m.dense_optimizer, params)
        self.dense_dtype = dtype
        self.x_dense = torch.randn(b, m.dense_features, generator=gen).to(device=dev, dtype=dtype)
        self.labels = torch.randint(0, 2, (b,), generator=gen).float().to(dev)

    def _restore(self) -> None:
        self._cores.restore()

    def close(self) -> None:
        for name in ("h2d", "d2h", "ret_h2d", "ret_d2h"):
            link = getattr(self, name, None)
            if link is not None:
                link.close()
        self._restore()

    # -- copies ------------------------------------------------------------------------------
    def _state_op(self, ts: _TableState, k: int) -> list[tuple]:
        """The gather of batch ``k``'s host-resident optimizer state (none when it is on the device)."""
        if ts.state_stage is None:
            return []
        su = torch.from_numpy(ts.steps[k].uniq)
        return [("gather", ts.state_stage[: len(su)], ts.state_host, su)]

    def _send(self, ts: _TableState, k: int, slot: int, with_state: bool) -> list:
        """Issue table ``ts``'s batch ``k`` into ``slot``: its ids (one job), then its cold rows and,
        with ``with_state``, its rows' host-resident state (another job: the GPU's gather of host
        rows). Returns the handles."""
        st = ts.steps[k]
        out = [self.h2d.submit_ops([("copy", ts.bundle_dev[slot][: st.bundle.numel()], st.bundle)])]
        ops = self._state_op(ts, k) if with_state else []
        m = st.cold_rows.numel()
        if m:
            ops.append(("gather", ts.staging[slot][st.n_hit:st.n_hit + m], ts.host_weight, st.cold_rows))
        if ops:
            out.append(self.h2d.submit_ops(ops))
        return out

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    # -- one iteration -------------------------------------------------------------------------
    def iteration(self, k: int, clock: Callable[[], float] = time.perf_counter) -> dict[Stage, float]:
        """Run batch ``k`` (``k < n_batches - 1``; batch ``k + 1`` is prefetched); seconds per stage.

        Batches run in order from 0: the caches and the prefetch buffers carry over. Jobs on the
        link are as many as the cost model counts latencies: per table two H2D jobs (ids; cold rows
        with host state) and one D2H job (write-backs) in its stage, one pooled copy each way for
        a table the CPU pools or updates; a prefetched table's host state is a third H2D job, so
        that its update waits for its state and not for the next batch's rows.
        """
        if k != self.step or k >= self.n_batches - 1:
            raise ReplayError(f"iterations run in order up to batch {self.n_batches - 2}: expected batch "
                              f"{self.step}, got {k}")
        slot = k & 1
        dev_tables = [ts for ts in self.tables if ts.placement is not Placement.CPU]
        cpu_tables = [ts for ts in self.tables if ts.placement is Placement.CPU]
        self._sync()
        t0 = clock()
        # ---- fetch: ids, cold rows and host state of tables not prefetched; the cpu tables' chain beside them
        pending = []
        for ts in dev_tables:
            if not ts.prefetch:
                pending += self._send(ts, k, slot, with_state=True)
            elif k == 0:  # nothing prefetched the first batch
                pending += self._send(ts, k, slot, with_state=False)
        for ts in cpu_tables:
            st = ts.steps[k]
            pooled = F.embedding_bag(torch.from_numpy(st.ids), ts.host_weight, ts.offsets_host, mode="sum")
            ts.pooled_host.copy_(pooled)
            self.ret_h2d.wait_host(self.ret_h2d.submit([(ts.pooled_dev, ts.pooled_host)]))
        for h in pending:
            self.h2d.wait_device(h)
        self._sync()
        t1 = clock()
        # ---- compute: the next batch's prefetch (and this batch's host state) beside the GPU's work
        state_in, stage_copies = {}, []
        for ts in dev_tables:
            if ts.prefetch:
                # this batch's state first (the update waits for it), then the next batch's ids and rows
                ops = self._state_op(ts, k)
                if ops:
                    state_in[ts.index] = self.h2d.submit_ops(ops)
                    stage_copies.append((self.h2d, state_in[ts.index]))
                stage_copies += [(self.h2d, h) for h in self._send(ts, k + 1, slot ^ 1, with_state=False)]
        leaves = []
        with torch.no_grad():
            for ts in self.tables:
                if ts.placement is Placement.CPU:
                    ts.leaf = ts.pooled_dev.detach().to(self.dense_dtype).requires_grad_(True)
                    leaves.append(ts.leaf)
                    continue
                st = ts.steps[k]
                m = st.cold_rows.numel()
                if st.parts["fwd_dst"][1] > st.parts["fwd_dst"][0]:
                    # rows the previous batch updated after this batch's prefetch left: forwarded
                    ts.staging[slot][st.n_hit:].index_copy_(0, ts.view(slot, k, "fwd_dst"),
                                                            ts.wb[slot ^ 1].index_select(0, ts.view(slot, k, "fwd_src")))
                inverse = ts.view(slot, k, "inverse")
                if ts.placement is Placement.GPU and ts.fused_sgd:
                    # FBGEMM's fused kernel: pool straight from the table, update it in place (below)
                    rows, table, inverse = None, ts.weight_dev, ts.view(slot, k, "hit_slots").index_select(0, inverse)
                elif ts.placement is Placement.GPU:
                    rows = table = ts.weight_dev.index_select(0, ts.view(slot, k, "hit_slots"))
                else:
                    if st.n_inserted:  # the LRU victims leave the cache (written back below)
                        torch.index_select(ts.cache_dev, 0, ts.view(slot, k, "victim_slots"),
                                           out=ts.wb[slot][: st.n_inserted])
                    if st.n_hit:
                        torch.index_select(ts.cache_dev, 0, ts.view(slot, k, "hit_slots"),
                                           out=ts.staging[slot][: st.n_hit])
                    rows = table = ts.staging[slot][: st.n_hit + m]
                ts.rows = rows
                pooled = F.embedding_bag(inverse, table, ts.offsets_dev, mode="sum")
                ts.leaf = pooled.to(self.dense_dtype).requires_grad_(True)
                leaves.append(ts.leaf)
        z = self.bottom(self.x_dense)
        z_leaf = z.detach().requires_grad_(True)
        feats = [z_leaf] + leaves
        if self.wl.model.interaction is Interaction.DOT:
            x = torch.stack(feats, dim=1)
            # DLRM's interaction: Z = X X^T, its strictly lower triangle (one index_select, whose
            # backward is an index_add; advanced indexing's backward is 2-20x slower on the CPU)
            pairs = torch.bmm(x, x.transpose(1, 2)).flatten(1).index_select(1, self.tril)
            top_in = torch.cat([z_leaf, pairs], dim=1)
        else:
            x0 = torch.cat(feats, dim=1)
            top_in = x0
            for v, u in self.cross:
                top_in = x0 * u(v(top_in)) + top_in
        out = self.top(top_in)
        loss = F.binary_cross_entropy_with_logits(out.float().mean(dim=1), self.labels)
        loss.backward()  # top MLP and interaction: the embeddings' gradients come first
        with torch.no_grad():
            for ts in self.tables:
                if ts.pol.update_on is UpdateOn.CPU:
                    ts.grad_dev = ts.leaf.grad.float().contiguous()  # goes down in host_update
                    continue
                stage_copies += self._update_on_device(ts, k, slot, state_in.get(ts.index))
        z.backward(z_leaf.grad)  # the bottom MLP, beside the write-backs
        self.dense_opt.step()
        self.dense_opt.zero_grad(set_to_none=True)
        for link, h in stage_copies:
            link.wait_host(h)
        self._sync()
        t2 = clock()
        # ---- host update: pooled gradients down, then the host's row updates
        with torch.no_grad():
            for ts in self.tables:
                if ts.pol.update_on is UpdateOn.CPU:
                    self._update_on_host(ts, k)
        self._sync()
        t3 = clock()
        for ts in self.tables:
            ts.leaf = ts.rows = ts.grad_dev = None
        self.step += 1
        return {Stage.FETCH: t1 - t0, Stage.COMPUTE: t2 - t1, Stage.HOST_UPDATE: t3 - t2}

    def _update_on_device(self, ts: _TableState, k: int, slot: int, state_handle) -> list:
        """The optimizer step of the batch's distinct rows on the device; returns the write-back job."""
        st = ts.steps[k]
        g = row_grads(ts.view(slot, k, "inverse"), ts.bag_dev, ts.leaf.grad.float(), len(st.uniq))
        if ts.fused_sgd:  # SGD on a gpu table: w[rows] -= lr g, one pass over the touched rows
            ts.weight_dev.index_add_(0, ts.view(slot, k, "hit_slots"), g.to(ts.weight_dev.dtype), alpha=-LEARNING_RATE)
            return []
        ids = ts.view(slot, k, "hit_slots" if ts.placement is Placement.GPU else "row_ids")
        state = None
        if ts.state_dev is not None:
            state = ts.state_dev.index_select(0, ids)
        elif ts.state_stage is not None:
            self.h2d.wait_device(state_handle)  # None when it came with the fetch (already waited)
            state = ts.state_stage[: len(st.uniq)]
        update_rows(ts.opt, ts.rows, g, state, k + 1)
        ops = []
        if ts.state_dev is not None:
            ts.state_dev.index_copy_(0, ids, state)
        elif state is not None:
            ops.append(("scatter", ts.state_host, state, torch.from_numpy(st.uniq)))
        if ts.placement is Placement.GPU:
            ts.weight_dev.index_copy_(0, ts.view(slot, k, "hit_slots"), ts.rows)
        else:
            n_hit, n_ins, n_wb = st.n_hit, st.n_inserted, st.wb_rows.numel()
            if ts.placement is Placement.CACHE:
                if n_hit:
                    ts.cache_dev.index_copy_(0, ts.view(slot, k, "hit_slots"), ts.rows[:n_hit])
                if n_ins:
                    ts.cache_dev.index_copy_(0, ts.view(slot, k, "victim_slots"), ts.rows[n_hit:n_hit + n_ins])
                    a, b = st.parts["victim_slots"]  # host bookkeeping, from the prepared batch (no device sync)
                    ts.cache_rows_now[st.bundle[a:b].numpy()] = st.cold_rows[:n_ins].numpy()
            if ts.forwards:  # the next batch may need these rows from this buffer
                if n_wb > n_ins:
                    ts.wb[slot][n_ins:n_wb].copy_(ts.rows[n_hit + n_ins:])
                if n_wb:
                    ops.append(("scatter", ts.host_weight, ts.wb[slot][:n_wb], st.wb_rows))
            else:
                if n_ins:
                    ops.append(("scatter", ts.host_weight, ts.wb[slot][:n_ins], st.wb_rows[:n_ins]))
                if n_wb > n_ins:
                    ops.append(("scatter", ts.host_weight, ts.rows[n_hit + n_ins:], st.wb_rows[n_ins:]))
        return [(self.d2h, self.d2h.submit_ops(ops))] if ops else []

    def _update_on_host(self, ts: _TableState, k: int) -> None:
        """Pooled gradients down (one paced copy), then the host updates the batch's distinct rows."""
        st = ts.steps[k]
        self.ret_d2h.wait_host(self.ret_d2h.submit([(ts.grad_host, ts.grad_dev)]))
        # the host knows the batch's ids: its lookups come sorted by row from the input pipeline
        order, offsets = st.host_order
        g = F.embedding_bag(ts.bag_host.index_select(0, order), ts.grad_host, offsets, mode="sum")
        w = ts.host_weight.numpy()
        rows = torch.from_numpy(w[st.uniq])  # numpy's gathers and scatters: 2x torch's on one core
        state = torch.from_numpy(ts.state_host.numpy()[st.uniq]) if ts.s else None
        update_rows(ts.opt, rows, g, state, k + 1)
        w[st.uniq] = rows.numpy()
        if state is not None:
            ts.state_host.numpy()[st.uniq] = state.numpy()


# ------------------------------------------------------------------------------------ dtypes
def _dtypes(wl: EmbWorkload, device: torch.device) -> tuple[EmbWorkload, torch.dtype, torch.dtype, list[str]]:
    """The replay's row and dense dtypes, the workload re-stated in them, and a note per change."""
    notes = []
    cuda = device.type == "cuda"
    row_bytes = {4: torch.float32, 2: torch.float16 if cuda else torch.float32}
    tables = []
    for t in wl.model.tables:
        dtype = row_bytes.get(t.dtype_bytes, torch.float32)
        size = torch.empty((), dtype=dtype).element_size()
        if size != t.dtype_bytes:
            notes.append(f"table {t.name!r} has {t.dtype_bytes}-byte rows; replayed and re-predicted with {size}-byte "
                         f"({str(dtype).removeprefix('torch.')}) rows on {device.type}")
            t = dataclasses.replace(t, dtype_bytes=size)
        tables.append(t)
    row_dtype = row_bytes.get(wl.model.tables[0].dtype_bytes, torch.float32)
    if any(t.dtype_bytes != tables[0].dtype_bytes for t in tables):
        row_dtype = torch.float32
        tables = [dataclasses.replace(t, dtype_bytes=4) for t in tables]
        notes.append("tables of different row sizes are replayed (and re-predicted) with fp32 rows")
    dense = {2: torch.float16 if cuda else torch.float32, 4: torch.float32, 8: torch.float64}[wl.dense_dtype_bytes]
    dsize = torch.empty((), dtype=dense).element_size()
    if dsize != wl.dense_dtype_bytes:
        # fp16 math is emulated on most CPUs (30-60x slower than fp32): the dense part runs in fp32
        notes.append(f"the dense part's {wl.dense_dtype_bytes}-byte elements are replayed and re-predicted as "
                     f"{dsize}-byte ({str(dense).removeprefix('torch.')}) on {device.type}")
    model = dataclasses.replace(wl.model, tables=tuple(tables))
    return dataclasses.replace(wl, model=model, dtype_bytes=dsize), row_dtype, dense, notes


# ------------------------------------------------------------------------------------ entry point
def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas if meas > 0 else math.inf


def _stage_dict(cost: EmbCost) -> dict[str, float]:
    return {s.value: float(t) for s, t in cost.stage_s}


def replay_embeddings(wl: EmbWorkload, system: System, policies: Sequence[TablePolicy], *,
                      tables: int | Sequence[int] | None = None, iterations: int = 8, repeats: int = 3,
                      warmup: int = 2, device: str | None = None, seed: int = 0,
                      max_table_bytes: float | None = None,
                      link_bytes_per_s: float | tuple[float, float] | None = None,
                      plan_hardware: dict | None = None, progress: Callable[[str], None] = print,
                      clock: Callable[[], float] = time.perf_counter) -> dict:
    """Replay training iterations of a per-table placement; returns the predicted-vs-measured report.

    Parameters
    ----------
    wl : EmbWorkload
        The plan's workload (model, batch, dense dtype, prefetch default).
    system : System
        The profile that predicts (measured on this machine for the errors to mean something).
    policies : sequence of TablePolicy
        One per table of ``wl.model``, in its order.
    tables : int, sequence of int, or None
        How many tables to replay (each placement keeps its share, :func:`choose_tables`), or
        which ones (indices into the model's tables); None: all.
    iterations, repeats : int
        Each repeat times ``iterations`` consecutive iterations, each on a new batch; a row per
        iteration index reports the median over the repeats.
    warmup : int
        Untimed iterations first (at least 1: a prefetched batch needs one before it; an LRU cache
        starts from the hottest rows and settles).
    device : str or None
        ``cuda`` or ``cpu`` (default: cuda when available).
    seed : int
        Seeds the ids, the dense inputs and the labels (>= 0).
    max_table_bytes : float or None
        The slice's table weights plus optimizer state are cut to this many bytes by capping every
        table's rows at one count (:func:`scale_slice`; default :data:`CPU_TABLE_BYTES` on the
        CPU, :data:`CUDA_TABLE_BYTES` under CUDA). The prediction is of the cut tables.
    link_bytes_per_s : float, (float, float) or None
        CPU stand-in only: the copiers' H2D and D2H rates (default: the profile's
        ``link_throttle_bytes_per_s`` tag, else its link figures).
    plan_hardware : dict or None
        ``Plan.hardware``, to warn when the plan was made for other hardware.

    Returns
    -------
    dict
        ``predicted_s`` and ``measured_s`` of one iteration (measured: the mean of the per-iteration
        medians), ``error_pct``, ``mean_abs_error_pct`` and ``max_abs_error_pct`` over the
        iterations, ``iterations`` (rows with per-stage seconds), ``stages`` (predicted, measured,
        per resource), ``tables`` (predicted and measured distinct rows and hit rates), ``slice``,
        ``memory`` (predicted and, under CUDA, measured peak device bytes), ``link``, ``warnings``.

    Raises
    ------
    ReplayError
        An argument is out of range (the message names it and its value), or CUDA was asked for
        and is not there.
    """
    dev, iterations, repeats, warmup, seed = run_settings(device, iterations, repeats, warmup, seed)
    pols = _check_policies(wl, policies)
    n_all = len(pols)
    if tables is None or isinstance(tables, numbers.Integral) and not isinstance(tables, bool):
        n = None if tables is None else positive_int(tables, "tables")
        idx = choose_tables(pols, n, sizes=[t.bytes for t in wl.model.tables])
    elif isinstance(tables, (list, tuple)) and tables:
        bad = [i for i in tables if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n_all]
        if bad or len(set(tables)) != len(tables):
            raise ReplayError(f"tables must be distinct indices in [0, {n_all}), got {list(tables)!r}")
        idx = sorted(int(i) for i in tables)
    else:
        raise ReplayError(f"tables must be a positive integer, a non-empty list of table indices or None, got {tables!r}")
    default_budget = CUDA_TABLE_BYTES if dev.type == "cuda" else CPU_TABLE_BYTES
    budget = default_budget if max_table_bytes is None else max_table_bytes
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not (budget > 0 and math.isfinite(budget)):
        raise ReplayError(f"max_table_bytes must be a positive finite number of bytes, got {max_table_bytes!r}")
    warnings = _hardware_warnings(system, plan_hardware, dev)
    tags = profile_tags(system.description)
    if dev.type == "cuda":
        if link_bytes_per_s is not None:
            raise ReplayError("link_bytes_per_s paces the CPU stand-in's copiers; under CUDA the link is real")
        rates = None
    elif link_bytes_per_s is None:
        throttle = tags.get("link_throttle_bytes_per_s")
        rates = (float(throttle),) * 2 if throttle else (system.link.h2d_bytes_per_s, system.link.d2h_bytes_per_s)
        if not throttle:
            warnings.append(f"profile {system.name!r} has no throttled-copier rate; the CPU copiers are paced to its "
                            f"link figures ({rates[0] / 1e9:.3g} / {rates[1] / 1e9:.3g} GB/s), which a memcpy on "
                            f"this machine may not reach")
    else:
        pair = (link_bytes_per_s,) * 2 if isinstance(link_bytes_per_s, numbers.Real) else tuple(link_bytes_per_s)
        if len(pair) != 2 or any(isinstance(r, bool) or not isinstance(r, numbers.Real) or not (r > 0 and math.isfinite(r))
                                 for r in pair):
            raise ReplayError(f"link_bytes_per_s must be a positive rate or an (H2D, D2H) pair of them, "
                              f"got {link_bytes_per_s!r}")
        rates = (float(pair[0]), float(pair[1]))
    threads = int(tags["compute_threads"]) if tags.get("compute_threads", "").isdigit() else None

    sliced, sliced_pols, cut = scale_slice(wl, pols, idx, budget)
    wl_run, row_dtype, dense_dtype, notes = _dtypes(sliced, dev)
    warnings += notes
    try:
        cost = evaluate_embeddings(wl_run, system, sliced_pols)
    except WorkloadError as err:
        raise ReplayError(f"the replayed slice cannot be costed: {err}") from None
    try:
        full = evaluate_embeddings(wl, system, pols).iteration_s
    except WorkloadError:
        full = None
    for w in warnings:
        progress(f"warning: {w}")
    names = [t.name for t in wl_run.model.tables]
    progress(f"replaying tables {names if len(names) <= 8 else f'{len(names)} of {n_all}'} "
             f"({', '.join(sorted({p.placement.value for p in sliced_pols}))}) of {wl.model.name} at batch {wl.batch} "
             f"on {dev.type}" + (f", copiers at {rates[0] / 1e9:.3g}/{rates[1] / 1e9:.3g} GB/s H2D/D2H" if rates else "")
             + (f", {len(cut)} table(s) cut to {cut[0]['rows']:,} rows" if cut else ""))
    n_batches = warmup + iterations * repeats + 1
    base_bytes = 0.0
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base_bytes = float(torch.cuda.memory_allocated(dev))
        torch.cuda.reset_peak_memory_stats(dev)
    rep = EmbReplayer(wl_run, sliced_pols, dev, n_batches=n_batches, link_bytes_per_s=rates or (1.0, 1.0),
                      compute_threads=threads, seed=seed, row_dtype=row_dtype, dense_dtype=dense_dtype)
    try:
        runs = [rep.iteration(k, clock=clock) for k in range(warmup + iterations * repeats)][warmup:]
        peak = float(torch.cuda.max_memory_allocated(dev)) - base_bytes if dev.type == "cuda" else None
        moved = {"h2d_bytes": getattr(rep.h2d, "bytes_moved", None), "d2h_bytes": getattr(rep.d2h, "bytes_moved", None)}
    finally:
        rep.close()
    predicted_stage = _stage_dict(cost)
    pred = float(cost.iteration_s)
    rows = []
    for i in range(iterations):
        per = [runs[r * iterations + i] for r in range(repeats)]
        totals = [sum(x.values()) for x in per]
        me = statistics.median(totals)
        rows.append({"iteration": i, "batches": [warmup + r * iterations + i for r in range(repeats)],
                     "predicted_s": pred, "measured_s": me, "measured_min_s": min(totals),
                     "measured_max_s": max(totals), "error_pct": _err(pred, me),
                     "stages": {s.value: {"predicted_s": predicted_stage[s.value],
                                          "measured_s": statistics.median(x[s] for x in per)} for s in STAGES}})
        progress(f"  iteration {i}: predicted {pred * 1e3:.2f} ms, measured {me * 1e3:.2f} ms ({rows[-1]['error_pct']:+.1f} %)")
    meas = statistics.mean(r["measured_s"] for r in rows)
    errors = [abs(r["error_pct"]) for r in rows]
    stages = {}
    for s, times in cost.stages:
        me_s = statistics.mean(r["stages"][s.value]["measured_s"] for r in rows)
        stages[s.value] = {"predicted_s": predicted_stage[s.value], "measured_s": me_s,
                           "error_pct": _err(predicted_stage[s.value], me_s) if me_s > 1e-6 else None,
                           "predicted_by_resource_s": {str(r): float(t) for r, t in times}}
    timed = range(warmup, warmup + iterations * repeats)
    table_rows = []
    for ts, tr in zip(rep.tables, cost.tables):
        lookups = sum(len(ts.steps[k].ids) for k in timed)
        table_rows.append({
            "table": ts.table.name, "index": idx[ts.index], "placement": ts.placement.value,
            "rows": ts.table.rows, "cache_rows": ts.pol.cache_rows, "cache_kind": ts.pol.cache_kind.value,
            "optimizer": ts.opt.value, "state_tier": ts.pol.state_tier.value, "update_on": ts.pol.update_on.value,
            "prefetch": ts.prefetch,
            "predicted_distinct_rows": tr.distinct_rows,
            "measured_distinct_rows": statistics.mean(len(ts.steps[k].uniq) for k in timed),
            "predicted_hit_rate": tr.hit_rate,
            "measured_hit_rate": sum(ts.steps[k].hit_lookups for k in timed) / lookups if lookups else None,
            "predicted_cold_rows": tr.cold_rows,
            "measured_cold_rows": statistics.mean(ts.steps[k].cold_rows.numel() for k in timed)})
    mem = cost.memory
    out = {
        "family": "embeddings",
        "device": str(dev), "device_name": machine_name(dev), "torch": torch.__version__,
        "row_dtype": str(row_dtype).removeprefix("torch."), "dense_dtype": str(dense_dtype).removeprefix("torch."),
        "link": ({"kind": "throttled copier threads (CPU stand-in for the link); row gathers and scatters done by "
                          "the copier", "h2d_bytes_per_s": rates[0], "d2h_bytes_per_s": rates[1], "moved": moved}
                 if rates else {"kind": "CUDA copy streams, one per direction; host rows gathered into pinned buffers"}),
        "policy_digest": policy_digest(wl_run, sliced_pols),
        "workload": wl_run.summary(),
        "slice": {"tables": idx, "names": names, "of_tables": n_all, "scaled": cut, "max_table_bytes": float(budget),
                  "representative": ("every table" if len(idx) == n_all else
                                     "each placement keeps its share of the slice"),
                  "note": ("predicted and measured cover the same tables, rows and batch; the dense part takes "
                           f"{len(idx)} tables' features" + ("; tables over the byte budget were cut to fewer rows "
                                                            "(their access distribution scaled with them)" if cut else ""))},
        "predicted_s": pred, "measured_s": meas, "error_pct": _err(pred, meas),
        "mean_abs_error_pct": statistics.mean(errors), "max_abs_error_pct": max(errors),
        "predicted_full_model_s": full,
        "settings": {"iterations": iterations, "repeats": repeats, "warmup": warmup, "seed": seed},
        "iterations": rows, "stages": stages, "tables": table_rows,
        "memory": memory_record(float(mem.gpu_bytes), mem.gpu_breakdown, "costmodel.embeddings_cost.memory_use of the replayed slice", peak),
        "warnings": warnings,
    }
    return out


def replay_plan(plan, system: System, *, model: RecModel | None = None, **kwargs) -> dict:
    """Replay a :class:`solver.Plan` of kind ``embeddings`` (its workload and per-table policies,
    :func:`solver.embeddings_plan.workload_from_plan` / ``policies_from_plan``) on this machine.

    ``model`` is the plan's :class:`RecModel` when it cannot be loaded from the plan (a spec file
    that moved); ``kwargs`` are those of :func:`replay_embeddings`. Raises ``PlanError`` for a plan
    of another kind or whose model cannot be found.
    """
    from solver.embeddings_plan import policies_from_plan, workload_from_plan

    wl = workload_from_plan(plan, model)
    if wl.runtime is not Runtime.FBGEMM:  # the replay allocates FBGEMM's cache bookkeeping and keeps no gradient
        raise ReplayError(f"replay stands in for runtime fbgemm; this plan is for runtime {wl.runtime.value!r}"
                          f"{f' ({plan.file})' if plan.file else ''}")
    return replay_embeddings(wl, system, policies_from_plan(plan, wl.model), plan_hardware=plan.hardware, **kwargs)


def replay_table(result: dict) -> str:
    """The replay as text: per iteration and per stage, predicted vs measured (ms), then per table."""
    lines = [f"{'iteration':>9s}  {'predicted ms':>12s}  {'measured ms':>11s}  {'error %':>7s}  "
             + "  ".join(f"{s.value + ' ms':>16s}" for s in STAGES)]
    for r in result["iterations"]:
        st = "  ".join(f"{r['stages'][s.value]['measured_s'] * 1e3:7.2f}/{r['stages'][s.value]['predicted_s'] * 1e3:<8.2f}"
                       for s in STAGES)
        lines.append(f"{r['iteration']:9d}  {r['predicted_s'] * 1e3:12.2f}  {r['measured_s'] * 1e3:11.2f}  "
                     f"{r['error_pct']:+7.1f}  {st}")
    lines.append(f"{'mean':>9s}  {result['predicted_s'] * 1e3:12.2f}  {result['measured_s'] * 1e3:11.2f}  "
                 f"{result['error_pct']:+7.1f}  (stages: measured/predicted; |error| mean "
                 f"{result['mean_abs_error_pct']:.1f} %, max {result['max_abs_error_pct']:.1f} % over iterations)")
    for t in result["tables"]:
        hit = t["measured_hit_rate"]
        lines.append(f"  {t['table']}: {t['placement']}" + (f" ({t['cache_kind']}, {t['cache_rows']:,} rows)"
                                                            if t["placement"] == "cache" else "")
                     + f", {t['rows']:,} rows; distinct rows predicted {t['predicted_distinct_rows']:.0f}, measured "
                     f"{t['measured_distinct_rows']:.0f}; hit rate predicted {t['predicted_hit_rate']:.3f}, measured "
                     + (f"{hit:.3f}" if hit is not None else "-"))
    sl = result["slice"]
    for c in sl["scaled"]:
        lines.append(f"  cut: {c['table']} to {c['rows']:,} of {c['of_rows']:,} rows"
                     + (f", cache {c['cache_rows']:,} of {c['of_cache_rows']:,}" if c["of_cache_rows"] else "")
                     if "table" in c else f"  cut: DCN-v2 rank to {c['dcn_rank']} of {c['of_dcn_rank']}")
    lines.append(f"slice: {len(sl['tables'])} of {sl['of_tables']} tables ({sl['representative']}; {sl['note']}); "
                 f"device {result['device_name']}, torch {result['torch']}")
    link = result.get("link", {})
    if "h2d_bytes_per_s" in link:
        lines.append(f"link: {link['kind']}, {link['h2d_bytes_per_s'] / 1e9:.3g} GB/s H2D, "
                     f"{link['d2h_bytes_per_s'] / 1e9:.3g} GB/s D2H")
    elif link:
        lines.append(f"link: {link['kind']}")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


__all__ = ["CPU_TABLE_BYTES", "CUDA_TABLE_BYTES", "CudaGatherLink", "EmbReplayer", "GatherLink", "choose_tables",
           "draw_ids", "hottest_rows", "policy_digest", "replay_embeddings", "replay_plan", "replay_table",
           "row_grads", "scale_slice", "scaled_access", "update_rows"]
