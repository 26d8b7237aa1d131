"""Recommendation models (DLRM-like) for embedding-table planning: tables, bytes, FLOPs, access skew.

A :class:`RecModel` is a set of embedding tables (:class:`Table`: rows, width, bytes per element,
lookups per sample, an access distribution) and the dense part of a DLRM (Naumov et al., 2019,
arXiv:1906.00091): a bottom MLP over the dense features, an interaction of its output with the
pooled embeddings (DLRM's pairwise dot products, or DCN-v2's low-rank cross layers, Wang et al.,
WWW 2021, arXiv:2008.13535, as TorchRec's ``LowRankCrossNet``), and a top MLP.

An access distribution (:class:`ZipfAccess`, :class:`HistogramAccess`, :class:`TraceAccess`) answers
what a cache planner asks of one table:

* :meth:`~ZipfAccess.static_hit_rate` -- a cache that holds the hottest rows;
* :meth:`~ZipfAccess.lru_hit_rate` -- an LRU cache (Che's approximation under independent
  references; exact stack distances for a trace);
* :meth:`~ZipfAccess.expected_distinct_rows` -- the distinct rows a batch's lookups touch;
* :meth:`~ZipfAccess.concave_curve` -- breakpoints of a concave piecewise-linear hit curve for a MIP;
* :meth:`~ZipfAccess.sample` -- ids for replay.

A Zipf table of 10^8 or 10^12 rows costs the same few milliseconds: its rows are grouped by rank
(the hottest :data:`ZIPF_HEAD_ROWS` one by one, the rest in log-spaced groups whose row
probabilities differ by under 0.3 %), and generalized harmonic numbers come from the
Euler--Maclaurin formula, never from a sum of N terms.

Models load from YAML (:func:`load_rec_model`: a bundled preset in ``costmodel/recmodels/`` or a
path); every bad field raises :class:`~costmodel.errors.WorkloadError` naming the field, the rule,
the value and the file.
"""

from __future__ import annotations

import enum
import hashlib
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from costmodel.errors import WorkloadError
from hwprofiles.safe_io import CONFIG_MAX_BYTES, load_yaml, read_bytes, read_text

RECMODELS_DIR = Path(__file__).parent / "recmodels"

MiB = 2**20
# Optimizer state is fp32 in FBGEMM's fused embedding kernels and in torch.optim.
FP32_BYTES = 4
TABLE_DTYPE_BYTES = (1, 2, 4, 8)  # int8, fp16/bf16, fp32, fp64 rows

# Bounds on a model and its data, so that no input makes the planner use more than about 1 GiB or a
# minute before it answers (the project's limits, stated in the README).
MAX_TABLES = 4096
MAX_ROWS = 1 << 40
MAX_DIM = 1 << 16
MAX_POOLING = 1 << 20
MAX_MLP_LAYERS = 64
MAX_MLP_WIDTH = 1 << 20
MAX_DCN_LAYERS = 64
DATA_MAX_BYTES = 256 * MiB  # .npy / .parquet histogram or trace: a 33M-value int64 array
CSV_MAX_BYTES = 64 * MiB  # text is parsed in memory at several bytes per byte
MAX_VALUES = 1 << 25  # values in one histogram or trace file (checked before a parquet file is decoded)
EXACT_LRU_MAX_IDS = 1 << 22  # exact stack distances: ~n log^2 n in numpy (1.35 s for 10^6 ids)
MAX_SAMPLE = 1 << 24  # ids of one sample() call: ~0.4 GB at the peak
MAX_CURVE_POINTS = 4096

# Zipf numerics: ranks up to ZIPF_HEAD_ROWS are kept one by one; beyond it, rows are grouped by rank
# into groups [a, b] with b + 1 <= ceil(a * ZIPF_GROUP_RATIO), so a group's row probabilities differ
# by at most ZIPF_GROUP_RATIO**alpha - 1 (0.28 % at alpha 1.45).
ZIPF_HEAD_ROWS = 4096
ZIPF_GROUP_RATIO = 1.0 + 1.0 / 512
# A histogram with more distinct counts than this is grouped into log-spaced count bins of this ratio.
HISTOGRAM_MAX_BUCKETS = 1 << 16
HISTOGRAM_BIN_RATIO = 1.0 + 1.0 / 1024


class Optimizer(enum.StrEnum):
    """Optimizers of embedding tables and of the dense part; see :func:`optimizer_state_bytes_per_row`."""

    SGD = "sgd"
    ROWWISE_ADAGRAD = "rowwise-adagrad"
    ADAGRAD = "adagrad"
    ADAM = "adam"


class Interaction(enum.StrEnum):
    """How the bottom MLP's output meets the pooled embeddings."""

    DOT = "dot"
    DCNV2 = "dcnv2"


class AccessKind(enum.StrEnum):
    ZIPF = "zipf"
    HISTOGRAM = "histogram"
    TRACE = "trace"


class CurveKind(enum.StrEnum):
    """Which cache a hit curve describes: the hottest rows pinned (static) or LRU."""

    STATIC = "static"
    LRU = "lru"


def _at(file: str) -> str:
    return f" ({file})" if file else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_int(value: Any, name: str, *, where: str = "", file: str = "", minimum: int = 1,
               maximum: int | None = None) -> int:
    rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if not _is_int(value) or value < minimum:
        raise WorkloadError(f"{where}{name} must be {rule}, got {value!r}{_at(file)}")
    if maximum is not None and value > maximum:
        raise WorkloadError(f"{where}{name} must be at most {maximum:,} (a bound on the planner's work), "
                            f"got {value:,}{_at(file)}")
    return int(value)


def _enum(cls: type[enum.StrEnum], value: Any, name: str, *, where: str = "", file: str = "") -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise WorkloadError(f"{where}{name} must be one of {choices}, got {value!r}{_at(file)}") from None


# ---------------------------------------------------------------------------------------------
# Optimizer state
# ---------------------------------------------------------------------------------------------


def optimizer_state_bytes_per_row(optimizer: Optimizer | str, dim: int) -> int:
    """Optimizer state bytes of one embedding row of ``dim`` elements (fp32 state).

    SGD keeps none; row-wise Adagrad one fp32 accumulator per row (4 bytes); Adagrad one fp32
    accumulator per element (``4 * dim``); Adam two fp32 moments per element (``8 * dim``).
    These are the ``momentum1``/``momentum2`` buffers FBGEMM's ``SplitTableBatchedEmbeddingBagsCodegen``
    allocates for ``EXACT_ROWWISE_ADAGRAD`` (rows), ``EXACT_ADAGRAD`` (rows x dim) and ``ADAM``
    (2 x rows x dim): in ``fbgemm_gpu/split_table_batched_embeddings_ops_training.py`` momentum1 is
    split ``rowwise`` exactly for the row-wise Adagrad types, in fp32 unless
    ``optimizer_state_dtypes`` says otherwise.

    Examples
    --------
    >>> [optimizer_state_bytes_per_row(o, 128) for o in ("sgd", "rowwise-adagrad", "adagrad", "adam")]
    [0, 4, 512, 1024]
    """
    opt = _enum(Optimizer, optimizer, "optimizer")
    dim = _check_int(dim, "dim", maximum=MAX_DIM)
    return {Optimizer.SGD: 0, Optimizer.ROWWISE_ADAGRAD: FP32_BYTES, Optimizer.ADAGRAD: FP32_BYTES * dim,
            Optimizer.ADAM: 2 * FP32_BYTES * dim}[opt]


def dense_optimizer_state_bytes_per_param(optimizer: Optimizer | str) -> int:
    """Optimizer state bytes per dense parameter (fp32): SGD 0, Adagrad 4, Adam 8.

    Row-wise Adagrad is an embedding-table optimizer (one accumulator per row) and is refused here.

    Examples
    --------
    >>> dense_optimizer_state_bytes_per_param("adam")
    8
    """
    opt = _enum(Optimizer, optimizer, "dense optimizer")
    if opt is Optimizer.ROWWISE_ADAGRAD:
        raise WorkloadError("the dense optimizer must be one of sgd, adagrad, adam, got 'rowwise-adagrad' "
                            "(it keeps one value per embedding row; dense layers have no rows)")
    return {Optimizer.SGD: 0, Optimizer.ADAGRAD: FP32_BYTES, Optimizer.ADAM: 2 * FP32_BYTES}[opt]


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------


def power_sum(s: float, lo: Any, hi: Any) -> np.ndarray:
    """``sum_{n=lo}^{hi} n**-s`` for integer bounds ``1 <= lo <= hi``, without summing the terms.

    Terms below :data:`ZIPF_HEAD_ROWS` are summed directly (at most that many); the rest by the
    Euler--Maclaurin formula with ``f(x) = x**-s``:
    ``sum_{n=a}^{b} f(n) = int_a^b f + (f(a) + f(b))/2 + sum_k B_2k/(2k)! (f^(2k-1)(b) - f^(2k-1)(a)) + R``,
    three Bernoulli terms (B2 = 1/6, B4 = -1/30, B6 = 1/42). For ``a > 4096`` the remainder is under
    ``1e-20`` of the first term for any ``s`` (it scales as ``s(s+1)...(s+6) a**(-s-7)``). Valid for
    every ``s > 0``, ``s <= 1`` included, where the Hurwitz zeta series diverges; the integral is
    written with ``expm1`` so that ``s`` near 1 loses no digits.

    Examples
    --------
    >>> abs(float(power_sum(1.0, 1, 10)) - sum(1 / n for n in range(1, 11))) < 1e-12
    True
    >>> round(float(power_sum(0.8, 1, 10**12)), 3)  # a trillion terms, not summed
    1251.506
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    lo, hi = np.broadcast_arrays(lo, hi)
    out = np.zeros(lo.shape, dtype=np.float64)
    # the directly summed part: n in [lo, min(hi, HEAD)], as a difference of prefix sums or of suffix
    # sums (summed from the small terms up), whichever total is smaller, so the difference loses the
    # fewest digits (a short interval near the head's end is a difference of two suffix sums).
    head = np.arange(1, ZIPF_HEAD_ROWS + 1, dtype=np.float64) ** -s
    pre = np.concatenate(([0.0], np.cumsum(head)))  # pre[k] = sum_{n=1}^{k}
    suf = np.concatenate(([0.0], np.cumsum(head[::-1])[::-1], [0.0]))  # suf[k] = sum_{n=k}^{HEAD}
    top = np.minimum(hi, ZIPF_HEAD_ROWS)
    direct = lo <= top
    l, t = lo[direct], top[direct]
    out[direct] = np.where(pre[t] <= suf[l], pre[t] - pre[l - 1], suf[l] - suf[t + 1])
    # the Euler-Maclaurin part: n in [max(lo, HEAD + 1), hi]
    a = np.maximum(lo, ZIPF_HEAD_ROWS + 1).astype(np.float64)
    b = hi.astype(np.float64)
    tail = a <= b
    if np.any(tail):
        a, b = a[tail], b[tail]
        c = 1.0 - s
        u = np.log(b / a)
        integral = u if abs(c) < 1e-12 else a**c * np.expm1(c * u) / c

        def deriv(x: np.ndarray, order: int) -> np.ndarray:  # d^order/dx^order of x**-s
            coef = 1.0
            for j in range(order):
                coef *= -(s + j)
            return coef * x ** (-s - order)

        em = (integral + 0.5 * (a**-s + b**-s) + (deriv(b, 1) - deriv(a, 1)) / 12.0
              - (deriv(b, 3) - deriv(a, 3)) / 720.0 + (deriv(b, 5) - deriv(a, 5)) / 30240.0)
        out[tail] += em
    return out


def _zipf_harmonic(k: np.ndarray, s: float) -> np.ndarray:
    """H(k, s) = sum_{n=1}^{k} n**-s for integer k >= 0 (0 for k = 0)."""
    k = np.asarray(k, dtype=np.int64)
    out = np.zeros(k.shape, dtype=np.float64)
    pos = k > 0
    out[pos] = power_sum(s, np.ones(int(pos.sum()), dtype=np.int64), k[pos])
    return out


def _che_hit_rate(m: np.ndarray, p: np.ndarray, cache_rows: float) -> float:
    """LRU hit rate by Che's approximation for rows in groups of ``m`` rows of probability ``p`` each.

    The characteristic time T solves ``sum_i (1 - exp(-p_i T)) = C`` (the expected number of distinct
    rows referenced within T requests equals the cache size); the hit rate is then
    ``sum_i p_i (1 - exp(-p_i T))`` (Che, Tung, Wang, IEEE JSAC 20(7), 2002; Fricker, Robert, Roberts,
    ITC 24, 2012, explain its accuracy). T >= C because ``1 - exp(-x) <= x``; T is bracketed by
    doubling ``log T`` and found by Brent's method.
    """
    return _che_hit_at(m, p, _che_time(m, p, cache_rows))


def _che_hit_at(m: np.ndarray, p: np.ndarray, t: float) -> float:
    """Che's LRU hit rate at characteristic time ``t`` (:func:`_che_time`)."""
    if t == 0.0:
        return 0.0
    if t == math.inf:
        return 1.0
    return float(min(1.0, np.dot(m * p, -np.expm1(-p * t))))


def _che_time(m: np.ndarray, p: np.ndarray, cache_rows: float) -> float:
    """Che's characteristic time T of an LRU cache of ``cache_rows`` rows (:func:`_che_hit_rate`):
    0 for an empty cache, infinite for one that holds every row."""
    n_rows = float(m.sum())
    c = float(cache_rows)
    if c <= 0:
        return 0.0
    if c >= n_rows:
        return math.inf

    def excess(log_t: float) -> float:
        return float(np.dot(m, -np.expm1(-p * math.exp(log_t)))) - c

    lo = math.log(c)
    if excess(lo) >= 0:  # only when every p*C is so small that 1 - exp(-pC) rounds to pC
        log_t = lo
    else:
        width, hi = 1.0, lo + 1.0
        while excess(hi) <= 0 and hi < 700.0:  # e**700: beyond it exp overflows; every p*T >> 1 by then
            width *= 2.0
            hi = min(700.0, lo + width)
        from scipy.optimize import brentq  # here: scipy.optimize costs 0.35 s to import, and planning KV never needs it

        log_t = hi if excess(hi) <= 0 else brentq(excess, lo, hi, xtol=1e-13, rtol=1e-14, maxiter=200)
    return math.exp(log_t)


def _distinct(m: np.ndarray, p: np.ndarray, lookups: np.ndarray) -> np.ndarray:
    """sum_i m_i (1 - (1 - p_i)^L) for each L, with (1 - p)^L = exp(L log1p(-p))."""
    lk = np.asarray(lookups, dtype=np.float64)
    flat = lk.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log1p(-p)  # -inf where p == 1
    for i, big_l in enumerate(flat):
        if big_l == 0:
            out[i] = 0.0
            continue
        out[i] = float(np.dot(m, -np.expm1(big_l * log_q)))
    return out.reshape(lk.shape)


def _upper_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the upper concave hull of points sorted by x (a point under a chord goes, and so does
    one above it by float noise: a relative 1e-12 of the chord's rise. Dropping such a point moves the
    hull below the curve there, never above, and spares a MIP chords of equal slope, which HiGHS can
    fail on: a uniform table's curve is a line up to rounding)."""
    keep: list[int] = []
    for i in range(len(x)):
        while len(keep) >= 2:
            a, b = keep[-2], keep[-1]
            # b is below the chord a -> i, or above it by no more than rounding
            lhs, rhs = (y[b] - y[a]) * (x[i] - x[a]), (y[i] - y[a]) * (x[b] - x[a])
            if lhs < rhs + 1e-12 * abs(rhs):
                keep.pop()
            else:
                break
        keep.append(i)
    return keep


def _earlier_greater(v: np.ndarray) -> np.ndarray:
    """For each position t, the number of j < t with v[j] > v[t]; values in [-1, len(v)).

    Bottom-up merge levels, each one vectorised: at half-width s, every position in the right half
    of a block of 2s counts the left-half values above its own with one sort and two binary
    searches. O(n log^2 n) work in numpy, no Python loop over n.
    """
    n = len(v)
    out = np.zeros(n, dtype=np.int64)
    pos = np.arange(n, dtype=np.int64)
    span = np.int64(n + 2)  # keys of one block: block * span + (v + 1), v + 1 in [0, n]
    shifted = v.astype(np.int64) + 1
    s = 1
    while s < n:
        block = pos // (2 * s)
        right = (pos % (2 * s)) >= s
        left_keys = np.sort(block[~right] * span + shifted[~right])
        rblock = block[right]
        ends = np.searchsorted(left_keys, (rblock + 1) * span, side="left")
        at_or_below = np.searchsorted(left_keys, rblock * span + shifted[right], side="right")
        out[right] += ends - at_or_below
        s *= 2
    return out


def reuse_distances(ids: np.ndarray) -> np.ndarray:
    """For each access, the number of distinct other ids since the previous access of its id (-1 for
    a first access): an LRU cache of C rows hits exactly the accesses with ``0 <= d < C``.

    With ``p = prev(t)`` the previous access of ``ids[t]``, the distinct ids in ``(p, t)`` are the
    positions j there whose own previous access is before p, so
    ``d(t) = t - p - 1 - #{j < t : prev(j) > p}`` (Mattson et al., IBM Systems Journal 1970, define
    the stack distance ``d + 1``); the count is :func:`_earlier_greater`.

    Examples
    --------
    >>> reuse_distances(np.array([0, 1, 1, 0, 2, 0])).tolist()
    [-1, -1, 0, 1, -1, 1]
    """
    ids = np.asarray(ids)
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    prev = np.full(n, -1, dtype=np.int64)
    same = sorted_ids[1:] == sorted_ids[:-1]
    prev[order[1:][same]] = order[:-1][same]
    greater = _earlier_greater(prev)
    t = np.arange(n, dtype=np.int64)
    return np.where(prev >= 0, t - prev - 1 - greater, -1)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _cache_rows_arg(cache_rows: Any, name: str = "cache_rows") -> tuple[np.ndarray, bool]:
    """(int64 array, was a scalar); every value a non-negative integer."""
    if _is_int(cache_rows):
        if cache_rows < 0:
            raise WorkloadError(f"{name} must be 0 or a positive integer, got {cache_rows!r}")
        return np.asarray([int(cache_rows)], dtype=np.int64), True
    arr = np.asarray(cache_rows)
    if arr.ndim == 0 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise WorkloadError(f"{name} must be a non-negative integer or a non-empty array of them, "
                            f"got {cache_rows!r}")
    if np.any(arr < 0):
        raise WorkloadError(f"{name} must be non-negative, got {int(arr.min())}")
    return arr.astype(np.int64), False


def _lookups_arg(lookups: Any) -> tuple[np.ndarray, bool]:
    if _is_real(lookups):
        arr, scalar = np.asarray([float(lookups)]), True
    else:
        arr, scalar = np.asarray(lookups), False
        if arr.ndim == 0 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer)
                                                  or np.issubdtype(arr.dtype, np.floating)):
            raise WorkloadError(f"lookups must be a non-negative number or a non-empty array of them, "
                                f"got {lookups!r}")
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise WorkloadError(f"lookups must be finite and non-negative, got {lookups!r}")
    return arr, scalar


def _one_lookups(lookups: Any) -> float:
    arr, scalar = _lookups_arg(lookups)
    if not scalar:
        raise WorkloadError(f"lookups must be one non-negative number here, got {lookups!r}")
    return float(arr[0])


def _result(values: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(values[0]) if scalar else values


# ---------------------------------------------------------------------------------------------
# Hit curves
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HitCurve:
    """Breakpoints ``(cache_rows[i], hit_rate[i])`` of a concave piecewise-linear hit-rate curve.

    The breakpoints are the upper concave hull of points sampled on the true curve (``0`` and the
    rows that can ever be hit included). When the true curve is concave -- a static cache always
    (its increments are the row probabilities, sorted down), an LRU cache under Che's approximation
    too (``dh/dC`` is a mean of ``p`` that falls as ``C`` grows) -- every sampled point is a vertex and
    the chords lie *below* the curve: the interpolant is a lower bound, exact at the breakpoints
    (``lower_bound`` is True), so a MIP that maximises hits never counts a hit that is not there.
    An exact LRU curve of a trace need not be concave: its hull can lie above it (``lower_bound``
    False), by ``max_gap`` at the sampled points and by an unknown amount between them.
    """

    kind: CurveKind
    cache_rows: tuple[int, ...]
    hit_rate: tuple[float, ...]
    lower_bound: bool
    max_gap: float

    def __call__(self, cache_rows: Any) -> float | np.ndarray:
        """The interpolated hit rate at ``cache_rows`` (constant beyond the last breakpoint)."""
        rows, scalar = _cache_rows_arg(cache_rows)
        return _result(np.interp(rows, self.cache_rows, self.hit_rate), scalar)

    def segments(self) -> list[tuple[float, float]]:
        """(slope per row, intercept) of each linear piece: ``h(C) <= min_k slope_k C + intercept_k``
        is the MIP's epigraph form of a concave curve."""
        out = []
        for (x0, y0), (x1, y1) in zip(zip(self.cache_rows, self.hit_rate),
                                      zip(self.cache_rows[1:], self.hit_rate[1:])):
            slope = (y1 - y0) / (x1 - x0)
            out.append((slope, y0 - slope * x0))
        return out


def _curve(kind: CurveKind, xs: np.ndarray, ys: np.ndarray, concave: bool) -> HitCurve:
    keep = _upper_hull(xs.astype(np.float64), ys)
    hx, hy = xs[keep], ys[keep]
    gap = float(np.max(np.interp(xs, hx, hy) - ys)) if len(xs) else 0.0
    return HitCurve(kind=kind, cache_rows=tuple(int(x) for x in hx), hit_rate=tuple(float(y) for y in hy),
                    lower_bound=concave, max_gap=max(0.0, gap))


def _curve_rows(n_rows: int, n_points: int) -> np.ndarray:
    """0 and up to n_points - 1 log-spaced integers in [1, n_rows], n_rows included."""
    n_points = _check_int(n_points, "n_points", minimum=2, maximum=MAX_CURVE_POINTS)
    if n_rows <= 0:
        return np.asarray([0], dtype=np.int64)
    pts = np.unique(np.round(np.geomspace(1, n_rows, n_points - 1)).astype(np.int64))
    return np.concatenate(([0], pts))


# ---------------------------------------------------------------------------------------------
# Access distributions
# ---------------------------------------------------------------------------------------------


class _Buckets:
    """Rows in groups: ``m[j]`` rows of probability ``p[j]`` each, sorted by ``p`` descending."""

    __slots__ = ("m", "p", "exact")

    def __init__(self, m: np.ndarray, p: np.ndarray, exact: bool) -> None:
        self.m, self.p, self.exact = m, p, exact

    def static(self, k: np.ndarray) -> np.ndarray:
        """Hit rate of the k hottest rows: the mass of whole groups, plus a share of the next one
        (exact when every row of a group has the same probability)."""
        cum_rows = np.concatenate(([0.0], np.cumsum(self.m)))
        cum_mass = np.concatenate(([0.0], np.cumsum(self.m * self.p)))
        kf = np.minimum(k.astype(np.float64), cum_rows[-1])
        j = np.clip(np.searchsorted(cum_rows, kf, side="right") - 1, 0, len(self.m) - 1)
        out = cum_mass[j] + (kf - cum_rows[j]) * self.p[j]
        return np.minimum(out / cum_mass[-1], 1.0)

    def distinct_top(self, k: np.ndarray, lookups: float) -> np.ndarray:
        """Expected distinct rows among the k hottest that ``lookups`` lookups touch:
        ``sum_{i <= k} 1 - (1 - p_i)^L``, whole groups plus a share of the next one."""
        with np.errstate(divide="ignore", invalid="ignore"):
            touched = -np.expm1(float(lookups) * np.log1p(-self.p))  # per row of each group
        cum_rows = np.concatenate(([0.0], np.cumsum(self.m)))
        cum_touched = np.concatenate(([0.0], np.cumsum(self.m * touched)))
        kf = np.minimum(k.astype(np.float64), cum_rows[-1])
        j = np.clip(np.searchsorted(cum_rows, kf, side="right") - 1, 0, len(self.m) - 1)
        return cum_touched[j] + (kf - cum_rows[j]) * touched[j]

    def lru_cold(self, times: Sequence[float], lookups: float) -> np.ndarray:
        """Expected distinct rows that ``lookups`` lookups touch and an LRU cache of Che characteristic
        time T (one per entry of ``times``, :func:`_che_time`) does not hold (row i is resident with
        probability ``1 - exp(-p_i T)``): ``sum_i (1 - (1 - p_i)^L) exp(-p_i T)``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            touched = self.m * -np.expm1(float(lookups) * np.log1p(-self.p))
        out = np.empty(len(times), dtype=np.float64)
        for i, t in enumerate(times):
            out[i] = float(touched.sum()) if t == 0.0 else 0.0 if t == math.inf else float(np.dot(touched, np.exp(-self.p * t)))
        return out


class _AccessBase:
    """The questions every access distribution answers; subclasses give ``_buckets()``."""

    __slots__ = ()
    rows: int
    _cache: dict[str, Any]

    def _buckets(self) -> _Buckets:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _static(self, k: np.ndarray) -> np.ndarray:
        return self._buckets().static(k)

    def _lru(self, k: np.ndarray) -> np.ndarray:
        b = self._buckets()
        return np.asarray([_che_hit_at(b.m, b.p, t) for t in self._che_times(k)])

    def _che_times(self, k: np.ndarray) -> list[float]:
        """Che's characteristic time of an LRU cache of each size in ``k``, found once per size (the LRU
        hit rate and its cold rows both need it, for every table costed at that size)."""
        memo = self._cache.setdefault("che_times", {})
        b = self._buckets()
        out = []
        for c in k:
            c = float(c)
            if c not in memo:
                memo[c] = _che_time(b.m, b.p, c)
            out.append(memo[c])
        return out

    def _lru_is_concave(self) -> bool:
        return True

    def _hittable_rows(self) -> int:
        """Rows with a non-zero probability: a cache of more rows hits no more."""
        return int(self._buckets().m.sum())

    def static_hit_rate(self, cache_rows: Any) -> float | np.ndarray:
        """Hit rate of a static cache holding the ``cache_rows`` most frequently accessed rows.

        Parameters
        ----------
        cache_rows : int or array of int
            Rows cached (>= 0).

        Returns
        -------
        float or ndarray
            The fraction of lookups served by the cache, in [0, 1].
        """
        k, scalar = _cache_rows_arg(cache_rows)
        return _result(self._static(k), scalar)

    def lru_hit_rate(self, cache_rows: Any) -> float | np.ndarray:
        """Hit rate of an LRU cache of ``cache_rows`` rows (steady state; a trace counts its cold misses).

        Parameters
        ----------
        cache_rows : int or array of int
            Cache capacity in rows (>= 0).

        Returns
        -------
        float or ndarray
            The fraction of lookups that hit, in [0, 1].
        """
        k, scalar = _cache_rows_arg(cache_rows)
        return _result(self._lru(k), scalar)

    def hit_rate(self, cache_rows: Any, kind: CurveKind | str = CurveKind.STATIC) -> float | np.ndarray:
        """:meth:`static_hit_rate` or :meth:`lru_hit_rate`, by ``kind``."""
        kind = _enum(CurveKind, kind, "kind")
        return self.static_hit_rate(cache_rows) if kind is CurveKind.STATIC else self.lru_hit_rate(cache_rows)

    def expected_distinct_rows(self, lookups: Any) -> float | np.ndarray:
        """Expected distinct rows touched by ``lookups`` independent lookups:
        ``E[D] = sum_i 1 - (1 - p_i)^L``.

        Parameters
        ----------
        lookups : float or array of float
            Lookups L (a batch times the pooling factor), >= 0.

        Returns
        -------
        float or ndarray
            Expected distinct rows (rows, not bytes).
        """
        big_l, scalar = _lookups_arg(lookups)
        if scalar:  # one table's batch is costed under many policies: found once per lookup count
            memo = self._cache.setdefault("distinct", {})
            key = float(big_l[0])
            if key not in memo:
                b = self._buckets()
                memo[key] = float(_distinct(b.m, b.p, big_l)[0])
            return memo[key]
        b = self._buckets()
        return _result(_distinct(b.m, b.p, big_l), scalar)

    def cold_distinct_rows(self, cache_rows: Any, lookups: float, kind: CurveKind | str = CurveKind.STATIC
                           ) -> float | np.ndarray:
        """Expected distinct rows of ``lookups`` lookups that a cache of ``cache_rows`` rows does not
        hold -- the rows a batch fetches over the link and writes back.

        Static cache of the k hottest rows: ``sum_{i > k} 1 - (1 - p_i)^L``. LRU: ``sum_i (1 - (1 -
        p_i)^L) exp(-p_i T)`` with Che's characteristic time T of the cache (row i is resident with
        probability ``1 - exp(-p_i T)``; for a trace, over its histogram). Not ``U (1 - h)``: the
        lookups that hit repeat the hot rows, so the distinct rows that miss are a larger share of
        ``U`` than the lookups that miss are of ``L``.
        """
        kind = _enum(CurveKind, kind, "kind")
        k, scalar = _cache_rows_arg(cache_rows)
        big_l = _one_lookups(lookups)
        b = self._buckets()
        if kind is CurveKind.STATIC:
            total = float(self.expected_distinct_rows(big_l))
            out = total - b.distinct_top(k, big_l)
            # the two sums round differently: a cache of every touched row leaves none cold, exactly
            out[(out <= 1e-12 * total) | (k >= b.m.sum())] = 0.0
        else:
            out = b.lru_cold(self._che_times(k), big_l)
        return _result(out, scalar)

    def distinct_hit_fraction(self, cache_rows: Any, lookups: float, kind: CurveKind | str = CurveKind.STATIC
                              ) -> float | np.ndarray:
        """The share of a batch's distinct rows a cache holds, ``1 - cold_distinct_rows / U``
        (``U = expected_distinct_rows(lookups)``; 0 with no lookups). Concave in the cache size, as a
        hit curve is (:meth:`distinct_concave_curve`)."""
        k, scalar = _cache_rows_arg(cache_rows)
        u = float(self.expected_distinct_rows(_one_lookups(lookups)))
        cold = np.asarray(self.cold_distinct_rows(k, lookups, kind), dtype=np.float64)
        out = np.zeros_like(cold) if u <= 0 else np.clip(1.0 - cold / u, 0.0, 1.0)
        out[k == 0] = 0.0  # an empty cache holds nothing (the two sums of U round differently)
        return _result(out, scalar)

    def distinct_concave_curve(self, kind: CurveKind | str, lookups: float, n_points: int = 16) -> HitCurve:
        """Breakpoints of :meth:`distinct_hit_fraction` over cache rows, a concave piecewise-linear
        curve for a MIP (``hit_rate`` holds the fraction). Concave for a static cache (the increments
        ``1 - (1 - p_i)^L`` fall with the rank) and under Che's approximation (``d/dC`` is a mean of
        ``(1 - (1 - p)^L) / U`` over weights that move to colder rows as C grows): the chords lie
        below it (``lower_bound``)."""
        kind = _enum(CurveKind, kind, "kind")
        xs = _curve_rows(self._hittable_rows(), n_points)
        ys = np.asarray(self.distinct_hit_fraction(xs, lookups, kind), dtype=np.float64).reshape(-1)
        return _curve(kind, xs, ys, True)

    def concave_curve(self, kind: CurveKind | str = CurveKind.STATIC, n_points: int = 16) -> HitCurve:
        """Breakpoints of a concave piecewise-linear hit curve over cache rows, for a MIP.

        Parameters
        ----------
        kind : {"static", "lru"}
            Which cache.
        n_points : int
            At most this many breakpoints (2 to 4096): 0, then log-spaced cache sizes up to the
            rows that can be hit.

        Returns
        -------
        HitCurve
            See :class:`HitCurve` for when it is a lower bound of the true curve.
        """
        kind = _enum(CurveKind, kind, "kind")
        xs = _curve_rows(self._hittable_rows(), n_points)
        if kind is CurveKind.STATIC:
            return _curve(kind, xs, self._static(xs), True)
        return _curve(kind, xs, self._lru(xs), self._lru_is_concave())

    def _sample_arg(self, n: Any, rng: Any) -> np.random.Generator:
        _check_int(n, "n", minimum=0, maximum=MAX_SAMPLE)
        if rng is None:
            return np.random.default_rng(getattr(self, "seed", None))
        if not isinstance(rng, np.random.Generator):
            raise WorkloadError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
        return rng


# The memos of Zipf distributions by (rows, alpha), shared by equal instances; cleared when it reaches
# ZIPF_MEMOS_MAX entries (a sweep over exponents or sizes builds a new one per point).
_ZIPF_MEMOS: dict[tuple[int, float], dict[str, Any]] = {}
ZIPF_MEMOS_MAX = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class ZipfAccess(_AccessBase):
    """Row ``i`` (0-based; row 0 the hottest) is looked up with probability
    ``p_i = (i + 1)**-alpha / H(N, alpha)``, independently per lookup (the independent reference
    model), ``H(N, a) = sum_{n=1}^N n**-a`` the generalized harmonic number.

    * static hit rate of the k hottest rows: ``H(k, a) / H(N, a)``, exact (:func:`power_sum`);
    * LRU hit rate: Che's approximation over rank groups (:func:`_che_hit_rate`);
    * distinct rows of L lookups: ``sum_i 1 - (1 - p_i)^L`` over rank groups;
    * ``seed``: the default seed of :meth:`sample` (None: fresh entropy).

    Examples
    --------
    >>> z = ZipfAccess(rows=10**8, alpha=1.45)
    >>> round(z.static_hit_rate(10**6), 4)
    0.9986
    >>> round(z.lru_hit_rate(10**6), 4)
    0.998
    """

    rows: int
    alpha: float
    seed: int | None = None
    source: str = field(default="", compare=False)
    file: str = field(default="", compare=False)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    kind = AccessKind.ZIPF

    def __post_init__(self) -> None:
        where = "access (zipf): "
        _check_int(self.rows, "rows", where=where, file=self.file, maximum=MAX_ROWS)
        if not _is_real(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise WorkloadError(f"{where}alpha must be a finite number > 0, got {self.alpha!r}{_at(self.file)}")
        if self.seed is not None:
            _check_int(self.seed, "seed", where=where, file=self.file, minimum=0)
        # Equal distributions share one memo (buckets, Che times, distinct rows: functions of rows and
        # alpha alone), so a model of many identical tables computes each once.
        if len(_ZIPF_MEMOS) >= ZIPF_MEMOS_MAX:
            _ZIPF_MEMOS.clear()
        object.__setattr__(self, "_cache", _ZIPF_MEMOS.setdefault((int(self.rows), float(self.alpha)), {}))

    def _groups(self) -> tuple[np.ndarray, np.ndarray]:
        """Rank groups beyond the head: (lo, hi) 1-based inclusive."""
        head = min(self.rows, ZIPF_HEAD_ROWS)
        if self.rows <= head:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        n = math.ceil(math.log(self.rows / (head + 1)) / math.log(ZIPF_GROUP_RATIO)) + 2
        edges = np.unique(np.ceil((head + 1) * ZIPF_GROUP_RATIO ** np.arange(n)).astype(np.int64))
        edges = np.concatenate((edges[edges <= self.rows], [self.rows + 1]))
        return edges[:-1], edges[1:] - 1

    def _buckets(self) -> _Buckets:
        if "buckets" not in self._cache:
            s = float(self.alpha)
            head = min(self.rows, ZIPF_HEAD_ROWS)
            lo, hi = self._groups()
            mass = np.concatenate((np.arange(1, head + 1, dtype=np.float64) ** -s, power_sum(s, lo, hi)))
            m = np.concatenate((np.ones(head), (hi - lo + 1).astype(np.float64)))
            total = float(mass.sum())
            self._cache["buckets"] = _Buckets(m, mass / total / m, exact=self.rows <= head)
            self._cache["groups"] = (lo, hi)
            self._cache["cdf"] = np.cumsum(mass) / total
        return self._cache["buckets"]

    def _static(self, k: np.ndarray) -> np.ndarray:
        s = float(self.alpha)
        total = _zipf_harmonic(np.asarray([self.rows]), s)[0]
        return np.minimum(_zipf_harmonic(np.minimum(k, self.rows), s) / total, 1.0)

    def _hittable_rows(self) -> int:
        return self.rows

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``n`` row ids drawn from the distribution (int64, row 0 the hottest).

        Ranks up to :data:`ZIPF_HEAD_ROWS` are drawn exactly; within a rank group ``[a, b]`` a rank is
        the floor of a draw from the continuous density ``x**-alpha`` on ``[a, b + 1)`` (its
        probabilities are those of the discrete law to within ``ZIPF_GROUP_RATIO**alpha - 1``, 0.28 %
        at alpha 1.45).
        """
        gen = self._sample_arg(n, rng)
        self._buckets()
        cdf = self._cache["cdf"]
        lo, hi = self._cache["groups"]
        head = min(self.rows, ZIPF_HEAD_ROWS)
        pick = np.minimum(np.searchsorted(cdf, gen.random(n), side="right"), len(cdf) - 1)
        ranks = pick.astype(np.int64) + 1
        grouped = pick >= head
        if np.any(grouped):
            g = pick[grouped] - head
            a, b1 = lo[g].astype(np.float64), (hi[g] + 1).astype(np.float64)
            v = gen.random(len(g))
            c = 1.0 - float(self.alpha)
            span = np.log(b1 / a)
            x = a * np.exp(v * span) if abs(c) < 1e-12 else a * np.exp(np.log1p(v * np.expm1(c * span)) / c)
            ranks[grouped] = np.clip(np.floor(x).astype(np.int64), lo[g], hi[g])
        return ranks - 1

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "rows": self.rows, "alpha": float(self.alpha), "seed": self.seed,
                "source": self.source}


def _counts_buckets(counts: np.ndarray) -> _Buckets:
    """Buckets of equal per-row counts (exact), or of log-spaced count bins beyond
    :data:`HISTOGRAM_MAX_BUCKETS` distinct counts."""
    c = counts[counts > 0].astype(np.float64)
    total = float(c.sum())
    vals, mult = np.unique(c, return_counts=True)
    exact = len(vals) <= HISTOGRAM_MAX_BUCKETS
    if not exact:
        bins = np.floor(np.log(c / c.min()) / math.log(HISTOGRAM_BIN_RATIO)).astype(np.int64)
        mult = np.bincount(bins)
        sums = np.bincount(bins, weights=c)
        keep = mult > 0
        mult, vals = mult[keep], sums[keep] / mult[keep]
    order = np.argsort(vals)[::-1]
    return _Buckets(mult[order].astype(np.float64), vals[order] / total, exact)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramAccess(_AccessBase):
    """Row ``i`` is looked up with probability ``counts[i] / sum(counts)``, independently per lookup.

    ``counts`` holds a non-negative access count (or frequency) per row, rows ``0 .. len(counts)-1``;
    rows beyond its length have count 0 (a histogram of the first rows is accepted; a longer one
    is an error). The static hit rate comes from the sorted counts, exactly; the LRU hit rate by
    Che's approximation over rows of equal count; the distinct rows exactly.
    """

    rows: int
    counts: np.ndarray = field(compare=False, repr=False)
    digest: str = ""
    file: str = field(default="", compare=False)
    source: str = field(default="", compare=False)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    kind = AccessKind.HISTOGRAM

    def __post_init__(self) -> None:
        where = "access (histogram): "
        _check_int(self.rows, "rows", where=where, file=self.file, maximum=MAX_ROWS)
        counts = _column(self.counts, "counts", where=where, file=self.file)
        if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
            raise WorkloadError(f"{where}counts must be numbers, got dtype {counts.dtype}{_at(self.file)}")
        if len(counts) > self.rows:
            raise WorkloadError(f"{where}counts has {len(counts):,} entries, more than the table's "
                                f"{self.rows:,} rows{_at(self.file)}")
        if np.issubdtype(counts.dtype, np.floating) and not np.all(np.isfinite(counts)):
            i = int(np.flatnonzero(~np.isfinite(counts))[0])
            raise WorkloadError(f"{where}counts must be finite, got {counts[i].item()!r} at row {i}{_at(self.file)}")
        if np.any(counts < 0):
            i = int(np.flatnonzero(counts < 0)[0])
            raise WorkloadError(f"{where}counts must be non-negative, got {counts[i].item()!r} at row {i}"
                                f"{_at(self.file)}")
        if not np.any(counts > 0):
            raise WorkloadError(f"{where}counts must have a positive entry (every count is 0){_at(self.file)}")
        counts = np.array(counts, copy=True)
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(counts.tobytes()).hexdigest())

    def _buckets(self) -> _Buckets:
        if "buckets" not in self._cache:
            self._cache["buckets"] = _counts_buckets(self.counts)
        return self._cache["buckets"]

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``n`` row ids drawn with probabilities proportional to the counts (int64)."""
        gen = self._sample_arg(n, rng)
        if "cum" not in self._cache:
            self._cache["cum"] = np.cumsum(self.counts.astype(np.float64))
        cum = self._cache["cum"]
        return np.searchsorted(cum, gen.random(n) * cum[-1], side="right").astype(np.int64)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "rows": self.rows, "file": self.file, "sha256": self.digest,
                "lookups": float(self.counts.sum()), "source": self.source}


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceAccess(_AccessBase):
    """A recorded sequence of row ids, each in ``[0, rows)``.

    * static hit rate: the hottest rows chosen from the trace's own counts (hindsight);
    * LRU hit rate: exact, from the reuse distances of :func:`reuse_distances` (cold misses
      counted; traces up to :data:`EXACT_LRU_MAX_IDS` ids);
    * distinct rows and its hit curves: the trace's counts as a histogram (independent lookups);
    * :meth:`sample`: the trace itself, repeated, so a replay keeps its temporal locality.
    """

    rows: int
    ids: np.ndarray = field(compare=False, repr=False)
    digest: str = ""
    file: str = field(default="", compare=False)
    source: str = field(default="", compare=False)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    kind = AccessKind.TRACE

    def __post_init__(self) -> None:
        where = "access (trace): "
        _check_int(self.rows, "rows", where=where, file=self.file, maximum=MAX_ROWS)
        ids = _column(self.ids, "ids", where=where, file=self.file)
        if not np.issubdtype(ids.dtype, np.integer):
            raise WorkloadError(f"{where}ids must be integers, got dtype {ids.dtype}{_at(self.file)}")
        bad = (ids < 0) | (ids >= self.rows)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise WorkloadError(f"{where}ids must be in [0, rows) = [0, {self.rows:,}), got {int(ids[i])} at "
                                f"position {i}{_at(self.file)}")
        ids = ids.astype(np.int64)
        ids.setflags(write=False)
        object.__setattr__(self, "ids", ids)
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(ids.tobytes()).hexdigest())

    def _counts(self) -> np.ndarray:
        if "counts" not in self._cache:  # by sorting: a trace of a 10^9-row table needs no 8 GB bincount
            self._cache["counts"] = np.unique(self.ids, return_counts=True)[1]
        return self._cache["counts"]

    def _buckets(self) -> _Buckets:
        if "buckets" not in self._cache:
            self._cache["buckets"] = _counts_buckets(self._counts())
        return self._cache["buckets"]

    def _lru(self, k: np.ndarray) -> np.ndarray:
        if "distances" not in self._cache:
            if len(self.ids) > EXACT_LRU_MAX_IDS:
                raise WorkloadError(f"access (trace): the exact LRU hit rate takes traces of at most "
                                    f"{EXACT_LRU_MAX_IDS:,} ids (a bound on the work), got {len(self.ids):,}; "
                                    f"cut the trace or give its histogram (Che's approximation){_at(self.file)}")
            d = reuse_distances(self.ids)
            self._cache["distances"] = np.sort(d[d >= 0])
        d = self._cache["distances"]
        return np.searchsorted(d, k, side="left") / len(self.ids)

    def _lru_is_concave(self) -> bool:
        return False

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The first ``n`` ids of the trace repeated end to end (``rng`` is not used)."""
        self._sample_arg(n, rng)
        return np.resize(self.ids, n).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "rows": self.rows, "file": self.file, "sha256": self.digest,
                "lookups": len(self.ids), "source": self.source}


AccessDistribution = Union[ZipfAccess, HistogramAccess, TraceAccess]
ACCESS_TYPES = (ZipfAccess, HistogramAccess, TraceAccess)


def _column(values: Any, name: str, *, where: str, file: str) -> np.ndarray:
    """A 1-D array from a 1-D array or an (n, 1) column."""
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise WorkloadError(f"{where}{name} must be one column of values, got shape {arr.shape}{_at(file)}")
    if len(arr) == 0:
        raise WorkloadError(f"{where}{name} must not be empty{_at(file)}")
    if arr.dtype == np.bool_:
        raise WorkloadError(f"{where}{name} must be numbers, got booleans{_at(file)}")
    return arr


# ---------------------------------------------------------------------------------------------
# Histogram and trace files
# ---------------------------------------------------------------------------------------------

DATA_SUFFIXES = (".npy", ".csv", ".parquet")


def _parse_csv(text: str, *, integer: bool, what: str, path: Path) -> np.ndarray:
    """One value per line; blank lines skipped; the first line may be a header (not a number)."""
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, ln) for i, ln in lines if ln]
    if lines:
        try:
            float(lines[0][1])
        except ValueError:
            if "," not in lines[0][1] and ";" not in lines[0][1] and "\t" not in lines[0][1]:
                lines = lines[1:]  # a header
    if not lines:
        raise WorkloadError(f"{what} {path} holds no values (one value per line is expected)")
    if len(lines) > MAX_VALUES:
        raise WorkloadError(f"{what} {path} has {len(lines):,} values; the limit is {MAX_VALUES:,}")
    tokens = [ln for _, ln in lines]
    try:
        return np.array(tokens).astype(np.int64 if integer else np.float64)
    except (ValueError, OverflowError):
        pass
    for line_no, token in lines:  # find the first bad line for the message
        try:
            int(token) if integer else float(token)
        except (ValueError, OverflowError):
            rule = "an integer row id" if integer else "a number"
            extra = " (one value per line; no columns)" if any(ch in token for ch in ",;\t ") else ""
            raise WorkloadError(f"{what} {path}: line {line_no} must be {rule}{extra}, got {token!r}") from None
    raise WorkloadError(f"{what} {path}: a value does not fit a 64-bit number")  # pragma: no cover


def _read_values(path: str | Path, *, integer: bool, what: str) -> tuple[np.ndarray, str]:
    """The values of a .npy, .csv or .parquet file of one column, and the file's SHA-256."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise WorkloadError(f"{what} {path} must end in one of {', '.join(DATA_SUFFIXES)}, "
                            f"got {suffix or 'no suffix'!r}")
    if suffix == ".csv":
        text = read_text(path, what=what, max_bytes=CSV_MAX_BYTES, error=WorkloadError)
        return _parse_csv(text, integer=integer, what=what, path=path), hashlib.sha256(text.encode()).hexdigest()
    data = read_bytes(path, what=what, max_bytes=DATA_MAX_BYTES, error=WorkloadError)
    digest = hashlib.sha256(data).hexdigest()
    if suffix == ".npy":
        if not data.startswith(b"\x93NUMPY"):
            raise WorkloadError(f"{what} {path} is not a .npy file (it does not start with the \\x93NUMPY magic); "
                                f"save it with numpy.save")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise WorkloadError(f"{what} {path} is not a valid .npy array: {err}") from None
        if not isinstance(arr, np.ndarray):
            raise WorkloadError(f"{what} {path} is not a single .npy array")
        if arr.dtype.kind not in "iuf":
            raise WorkloadError(f"{what} {path} must hold integers or floats, got dtype {arr.dtype}")
        return arr, digest
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(pa.BufferReader(data))
        n_rows = pfile.metadata.num_rows
        columns = pfile.schema_arrow.names
        if len(columns) != 1:
            raise WorkloadError(f"{what} {path} must have exactly one column, got {len(columns)}: {columns[:8]}")
        if n_rows > MAX_VALUES:  # before decoding: a small compressed file can expand without bound
            raise WorkloadError(f"{what} {path} has {n_rows:,} values; the limit is {MAX_VALUES:,}")
        col = pfile.read().column(0)
    except (pa.ArrowException, OSError, ValueError) as err:
        if isinstance(err, WorkloadError):
            raise
        raise WorkloadError(f"{what} {path} is not a valid parquet file: {err}") from None
    if col.null_count:
        raise WorkloadError(f"{what} {path}: column {columns[0]!r} has {col.null_count:,} missing values")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise WorkloadError(f"{what} {path}: column {columns[0]!r} must hold integers or floats, got {col.type}")
    return col.to_numpy(), digest


def load_histogram(path: str | Path, rows: int, *, source: str = "") -> HistogramAccess:
    """A :class:`HistogramAccess` from a file of per-row counts: ``.npy`` (1-D integer or float
    array), ``.csv`` (one count per line, an optional header line) or ``.parquet`` (one column).

    Raises
    ------
    WorkloadError
        The file is missing, over its size limit, corrupt, not one numeric column, has negative or
        non-finite counts, no positive count, or more entries than ``rows``.
    """
    what = "histogram file"
    counts, digest = _read_values(path, integer=False, what=what)
    return HistogramAccess(rows=rows, counts=counts, digest=digest, file=str(path), source=source)


def load_trace(path: str | Path, rows: int, *, source: str = "") -> TraceAccess:
    """A :class:`TraceAccess` from a file of row ids in access order: ``.npy`` (1-D integer array),
    ``.csv`` (one id per line, an optional header line) or ``.parquet`` (one integer column).

    Raises
    ------
    WorkloadError
        The file is missing, over its size limit, corrupt, not one integer column, or has an id
        outside ``[0, rows)``.
    """
    ids, digest = _read_values(path, integer=True, what="trace file")
    return TraceAccess(rows=rows, ids=ids, digest=digest, file=str(path), source=source)


# ---------------------------------------------------------------------------------------------
# Tables and models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """One embedding table: ``rows`` rows of ``dim`` elements of ``dtype_bytes`` bytes.

    ``pooling`` is the mean number of rows a sample looks up in the table (the pooling factor; for a
    multi-hot feature, its multi-hot count). ``access`` is the distribution of those lookups over
    the rows (its ``rows`` must equal the table's). ``optimizer`` overrides the model's table
    optimizer for this table (None: the model's).
    """

    name: str
    rows: int
    dim: int
    access: AccessDistribution
    dtype_bytes: int = 4
    pooling: float = 1
    optimizer: Optimizer | None = None
    file: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise WorkloadError(f"a table's name must be a non-empty string, got {self.name!r}{_at(self.file)}")
        where = f"table {self.name!r}: "
        _check_int(self.rows, "rows", where=where, file=self.file, maximum=MAX_ROWS)
        _check_int(self.dim, "dim", where=where, file=self.file, maximum=MAX_DIM)
        if not _is_int(self.dtype_bytes) or self.dtype_bytes not in TABLE_DTYPE_BYTES:
            raise WorkloadError(f"{where}dtype_bytes must be one of {TABLE_DTYPE_BYTES}, got {self.dtype_bytes!r}"
                                f"{_at(self.file)}")
        if (not _is_real(self.pooling) or not math.isfinite(self.pooling) or self.pooling <= 0
                or self.pooling > MAX_POOLING):
            raise WorkloadError(f"{where}pooling (lookups per sample) must be a number in (0, {MAX_POOLING:,}], "
                                f"got {self.pooling!r}{_at(self.file)}")
        if not isinstance(self.access, ACCESS_TYPES):
            raise WorkloadError(f"{where}access must be a ZipfAccess, HistogramAccess or TraceAccess, got "
                                f"{type(self.access).__name__}{_at(self.file)}")
        if self.access.rows != self.rows:
            raise WorkloadError(f"{where}access covers {self.access.rows:,} rows but the table has {self.rows:,}"
                                f"{_at(self.file)}")
        if self.optimizer is not None:
            object.__setattr__(self, "optimizer", _enum(Optimizer, self.optimizer, "optimizer", where=where,
                                                        file=self.file))

    @property
    def row_bytes(self) -> int:
        """Bytes of one row: ``dim * dtype_bytes``."""
        return self.dim * self.dtype_bytes

    @property
    def bytes(self) -> int:
        """Bytes of the table's weights: ``rows * dim * dtype_bytes``."""
        return self.rows * self.row_bytes

    @property
    def lookup_bytes_per_sample(self) -> float:
        """Row bytes one sample gathers from the table: ``pooling * dim * dtype_bytes`` (forward; the
        backward scatters gradients of the same rows)."""
        return self.pooling * self.row_bytes

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "dim": self.dim, "dtype_bytes": self.dtype_bytes,
                "pooling": self.pooling, "bytes": self.bytes,
                "optimizer": self.optimizer.value if self.optimizer else None, "access": self.access.summary()}


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetInfo:
    """The data set a preset's tables come from (metadata; the cost model does not use it)."""

    name: str = ""
    samples: int = 0
    days: int = 0
    samples_per_day: tuple[int, ...] = ()
    train_samples: int = 0
    source: str = ""
    file: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = "dataset: "
        for name in ("samples", "days", "train_samples"):
            _check_int(getattr(self, name), name, where=where, file=self.file, minimum=0)
        per_day = tuple(self.samples_per_day)
        for i, value in enumerate(per_day):
            _check_int(value, f"samples_per_day[{i}]", where=where, file=self.file)
        object.__setattr__(self, "samples_per_day", per_day)
        if per_day and self.days and len(per_day) != self.days:
            raise WorkloadError(f"{where}samples_per_day has {len(per_day)} entries but days is {self.days}"
                                f"{_at(self.file)}")
        if per_day and self.samples and sum(per_day) != self.samples:
            raise WorkloadError(f"{where}samples_per_day sums to {sum(per_day):,} but samples is {self.samples:,}"
                                f"{_at(self.file)}")
        if self.samples and self.train_samples > self.samples:
            raise WorkloadError(f"{where}train_samples ({self.train_samples:,}) exceeds samples "
                                f"({self.samples:,}){_at(self.file)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecModel:
    """A DLRM-style recommendation model: embedding tables plus bottom MLP, interaction and top MLP.

    Shapes (``T`` tables of width ``D``, ``F = T + 1`` feature vectors once the bottom MLP's output
    joins the pooled embeddings; every table's ``dim`` must equal ``bottom_mlp[-1] = D``):

    * bottom MLP: ``dense_features -> bottom_mlp[0] -> ... -> D``;
    * ``dot`` interaction (DLRM, ``arch_interaction_itself=False``): the ``F (F - 1) / 2`` pairwise dot
      products of the ``F`` vectors, concatenated with the bottom MLP's output, so the top MLP takes
      ``D + F (F - 1) / 2`` inputs (Criteo Kaggle: 16 + 27*26/2 = 367, as the DLRM reference);
    * ``dcnv2`` interaction (TorchRec ``DLRM_DCN``): the ``F`` vectors concatenated, ``N = F D`` wide,
      through ``dcn_layers`` low-rank cross layers ``x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l``
      with ``U_l`` ``N x r``, ``V_l`` ``r x N`` and ``b_l`` ``N`` (``r = dcn_rank``); the top MLP takes
      ``N`` inputs;
    * top MLP: ``top_in -> top_mlp[0] -> ... -> top_mlp[-1]``.

    Counts (per sample, matmul FLOPs only: bias adds, activations and the cross layers' elementwise
    products are left out, about ``1/k`` of a ``k``-input layer's matmul FLOPs, under 2 % for k >= 64):

    * a linear layer ``k -> n``: ``k n + n`` parameters, ``2 k n`` forward FLOPs;
    * ``dot``: ``2 F^2 D`` forward FLOPs (the batched ``Z = X X^T`` the reference computes in full before
      keeping the lower triangle);
    * ``dcnv2``: ``2 N r + N`` parameters and ``4 N r`` forward FLOPs per layer;
    * backward: ``2x`` forward (input and weight gradients of every matmul; the first bottom layer's
      input gradient, which nothing needs, is counted here too, while the cost model's
      :func:`costmodel.embeddings_cost.dense_ops` leaves that GEMM out).

    Optimizer state: ``table_optimizer`` (per table, unless the table overrides it) and
    ``dense_optimizer``, see :func:`optimizer_state_bytes_per_row` and
    :func:`dense_optimizer_state_bytes_per_param`; dense parameters are ``dense_dtype_bytes`` each.

    Examples
    --------
    >>> m = load_rec_model("criteo-kaggle")
    >>> len(m.tables), m.top_mlp_in_features, m.total_table_bytes()
    (26, 367, 2160804928)
    """

    name: str
    tables: tuple[Table, ...]
    dense_features: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    interaction: Interaction = Interaction.DOT
    dcn_layers: int = 0
    dcn_rank: int = 0
    table_optimizer: Optimizer = Optimizer.SGD
    dense_optimizer: Optimizer = Optimizer.SGD
    dense_dtype_bytes: int = 4
    reference_batch_size: int = 0
    dataset: DatasetInfo | None = None
    assumptions: tuple[str, ...] = ()
    source: str = field(default="", compare=False)
    file: str = field(default="", compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        f = self.file
        if not isinstance(self.name, str) or not self.name.strip():
            raise WorkloadError(f"name must be a non-empty string, got {self.name!r}{_at(f)}")
        tables = tuple(self.tables) if isinstance(self.tables, (list, tuple)) else None
        if not tables:
            raise WorkloadError(f"tables must be a non-empty list of tables, got {self.tables!r}{_at(f)}")
        if len(tables) > MAX_TABLES:
            raise WorkloadError(f"a model may have at most {MAX_TABLES:,} tables (a bound on the planner's work), "
                                f"got {len(tables):,}{_at(f)}")
        seen: set[str] = set()
        for i, t in enumerate(tables):
            if not isinstance(t, Table):
                raise WorkloadError(f"tables[{i}] must be a Table, got {type(t).__name__}{_at(f)}")
            if t.name in seen:
                raise WorkloadError(f"table names must be unique, got {t.name!r} twice{_at(f)}")
            seen.add(t.name)
        object.__setattr__(self, "tables", tables)
        _check_int(self.dense_features, "dense_features", file=f, maximum=MAX_MLP_WIDTH)
        for name in ("bottom_mlp", "top_mlp"):
            sizes = getattr(self, name)
            if not isinstance(sizes, (list, tuple)) or not sizes:
                raise WorkloadError(f"{name} must be a non-empty list of layer widths, got {sizes!r}{_at(f)}")
            if len(sizes) > MAX_MLP_LAYERS:
                raise WorkloadError(f"{name} may have at most {MAX_MLP_LAYERS} layers, got {len(sizes)}{_at(f)}")
            for i, width in enumerate(sizes):
                _check_int(width, f"{name}[{i}]", file=f, maximum=MAX_MLP_WIDTH)
            object.__setattr__(self, name, tuple(int(w) for w in sizes))
        width = self.bottom_mlp[-1]
        for t in tables:
            if t.dim != width:
                raise WorkloadError(f"table {t.name!r}: dim {t.dim} must equal the bottom MLP's output width "
                                    f"{width} (bottom_mlp[-1]): the interaction stacks it with the pooled "
                                    f"embeddings{_at(f)}")
        object.__setattr__(self, "interaction", _enum(Interaction, self.interaction, "interaction", file=f))
        if self.interaction is Interaction.DCNV2:
            _check_int(self.dcn_layers, "interaction.layers", file=f, maximum=MAX_DCN_LAYERS)
            _check_int(self.dcn_rank, "interaction.rank", file=f)
            if self.dcn_rank > self.interaction_in_features:
                raise WorkloadError(f"interaction.rank ({self.dcn_rank}) must be at most the cross layers' width "
                                    f"{self.interaction_in_features} ((tables + 1) x dim): a low rank{_at(f)}")
        elif self.dcn_layers or self.dcn_rank:
            raise WorkloadError(f"interaction.layers and interaction.rank are for the dcnv2 interaction, got "
                                f"layers={self.dcn_layers!r}, rank={self.dcn_rank!r} with {self.interaction.value!r}"
                                f"{_at(f)}")
        object.__setattr__(self, "table_optimizer", _enum(Optimizer, self.table_optimizer, "optimizers.tables",
                                                          file=f))
        dense = _enum(Optimizer, self.dense_optimizer, "optimizers.dense", file=f)
        if dense is Optimizer.ROWWISE_ADAGRAD:
            raise WorkloadError(f"optimizers.dense must be one of sgd, adagrad, adam, got 'rowwise-adagrad' (it keeps "
                                f"one value per embedding row; dense layers have no rows){_at(f)}")
        object.__setattr__(self, "dense_optimizer", dense)
        if not _is_int(self.dense_dtype_bytes) or self.dense_dtype_bytes not in (2, 4, 8):
            raise WorkloadError(f"dense_dtype_bytes must be one of (2, 4, 8), got {self.dense_dtype_bytes!r}{_at(f)}")
        _check_int(self.reference_batch_size, "reference_batch_size", file=f, minimum=0)
        if self.dataset is not None and not isinstance(self.dataset, DatasetInfo):
            raise WorkloadError(f"dataset must be a DatasetInfo, got {type(self.dataset).__name__}{_at(f)}")
        notes = tuple(self.assumptions)
        for i, note in enumerate(notes):
            if not isinstance(note, str):
                raise WorkloadError(f"assumptions[{i}] must be text, got {note!r}{_at(f)}")
        object.__setattr__(self, "assumptions", notes)
        # Hashed once (a cache key of the planner, with every table and its access inside).
        object.__setattr__(self, "_hash", hash((self.name, self.tables, self.dense_features, self.bottom_mlp,
                                                self.top_mlp, self.interaction, self.dcn_layers, self.dcn_rank,
                                                self.table_optimizer, self.dense_optimizer,
                                                self.dense_dtype_bytes)))

    def __hash__(self) -> int:
        return self._hash

    # shapes ------------------------------------------------------------------------------

    @property
    def embedding_dim(self) -> int:
        """``D``: every table's width, the bottom MLP's output width."""
        return self.bottom_mlp[-1]

    @property
    def n_features(self) -> int:
        """``F = T + 1``: the pooled embeddings and the bottom MLP's output."""
        return len(self.tables) + 1

    @property
    def interaction_in_features(self) -> int:
        """``N = F D``: the width of the stacked feature vectors."""
        return self.n_features * self.embedding_dim

    @property
    def top_mlp_in_features(self) -> int:
        """``D + F (F - 1) / 2`` for ``dot``; ``F D`` for ``dcnv2``."""
        f = self.n_features
        if self.interaction is Interaction.DOT:
            return self.embedding_dim + f * (f - 1) // 2
        return self.interaction_in_features

    def mlp_layers(self) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of every linear layer of the two MLPs."""
        bottom = (self.dense_features, *self.bottom_mlp)
        top = (self.top_mlp_in_features, *self.top_mlp)
        return ([(f"bottom_mlp[{i}]", k, n) for i, (k, n) in enumerate(zip(bottom, bottom[1:]))]
                + [(f"top_mlp[{i}]", k, n) for i, (k, n) in enumerate(zip(top, top[1:]))])

    # tables ------------------------------------------------------------------------------

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise WorkloadError(f"model {self.name!r} has no table {name!r}; its tables are "
                            f"{', '.join(t.name for t in self.tables[:8])}{' ...' if len(self.tables) > 8 else ''}")

    def _table(self, table: Table | str) -> Table:
        return self.table(table) if isinstance(table, str) else table

    def optimizer_of(self, table: Table | str) -> Optimizer:
        """The optimizer of a table: its own, else the model's table optimizer."""
        return self._table(table).optimizer or self.table_optimizer

    def optimizer_state_bytes_per_row(self, table: Table | str) -> int:
        """Optimizer state bytes of one row of ``table`` (:func:`optimizer_state_bytes_per_row`)."""
        t = self._table(table)
        return optimizer_state_bytes_per_row(self.optimizer_of(t), t.dim)

    def table_bytes(self, table: Table | str) -> int:
        """Bytes of a table's weights: ``rows * dim * dtype_bytes``."""
        return self._table(table).bytes

    def table_state_bytes(self, table: Table | str) -> int:
        """Bytes of a table's optimizer state: ``rows * optimizer_state_bytes_per_row``."""
        t = self._table(table)
        return t.rows * self.optimizer_state_bytes_per_row(t)

    def total_table_bytes(self) -> int:
        """Bytes of every table's weights."""
        return sum(t.bytes for t in self.tables)

    def total_table_state_bytes(self) -> int:
        """Bytes of every table's optimizer state."""
        return sum(self.table_state_bytes(t) for t in self.tables)

    def lookups_per_sample(self) -> float:
        """Rows one sample looks up over all tables (the sum of the pooling factors)."""
        return float(sum(t.pooling for t in self.tables))

    # dense part --------------------------------------------------------------------------

    def dcn_params(self) -> int:
        """``layers * (2 N r + N)``: each cross layer's ``U`` (N x r), ``V`` (r x N) and bias (N)."""
        if self.interaction is not Interaction.DCNV2:
            return 0
        n = self.interaction_in_features
        return self.dcn_layers * (2 * n * self.dcn_rank + n)

    def dense_params(self) -> int:
        """Parameters of the dense part: ``sum (k n + n)`` over the MLP layers, plus :meth:`dcn_params`."""
        return sum(k * n + n for _, k, n in self.mlp_layers()) + self.dcn_params()

    def dense_param_bytes(self) -> int:
        """``dense_params * dense_dtype_bytes``."""
        return self.dense_params() * self.dense_dtype_bytes

    def dense_optimizer_state_bytes(self) -> int:
        """``dense_params * dense_optimizer_state_bytes_per_param(dense_optimizer)``."""
        return self.dense_params() * dense_optimizer_state_bytes_per_param(self.dense_optimizer)

    def forward_flop_breakdown_per_sample(self) -> dict[str, float]:
        """Forward FLOPs of one sample by part: ``bottom_mlp``, ``interaction``, ``top_mlp``."""
        layers = self.mlp_layers()
        bottom = sum(2.0 * k * n for name, k, n in layers if name.startswith("bottom"))
        top = sum(2.0 * k * n for name, k, n in layers if name.startswith("top"))
        f, d = self.n_features, self.embedding_dim
        if self.interaction is Interaction.DOT:
            inter = 2.0 * f * f * d
        else:
            inter = 4.0 * self.dcn_layers * self.interaction_in_features * self.dcn_rank
        return {"bottom_mlp": bottom, "interaction": inter, "top_mlp": top}

    def forward_flop_per_sample(self) -> float:
        """Forward FLOPs of the MLPs and the interaction for one sample."""
        return sum(self.forward_flop_breakdown_per_sample().values())

    def backward_flop_per_sample(self) -> float:
        """Backward FLOPs for one sample: twice the forward (input and weight gradients)."""
        return 2.0 * self.forward_flop_per_sample()

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "file": self.file, "tables": len(self.tables), "embedding_dim": self.embedding_dim,
            "table_rows": sum(t.rows for t in self.tables), "table_bytes": self.total_table_bytes(),
            "table_state_bytes": self.total_table_state_bytes(), "dense_features": self.dense_features,
            "bottom_mlp": list(self.bottom_mlp), "top_mlp": list(self.top_mlp),
            "interaction": self.interaction.value, "dcn_layers": self.dcn_layers, "dcn_rank": self.dcn_rank,
            "top_mlp_in_features": self.top_mlp_in_features, "dense_params": self.dense_params(),
            "table_optimizer": self.table_optimizer.value, "dense_optimizer": self.dense_optimizer.value,
            "forward_flop_per_sample": self.forward_flop_per_sample(),
            "lookups_per_sample": self.lookups_per_sample(), "reference_batch_size": self.reference_batch_size,
            "source": self.source, "assumptions": list(self.assumptions),
        }


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------

_TOP_KEYS = {"name", "description", "source", "dataset", "reference_batch_size", "dense_features", "bottom_mlp",
             "top_mlp", "interaction", "optimizers", "defaults", "access", "assumptions", "tables",
             "dense_dtype_bytes"}
_TABLE_KEYS = {"name", "rows", "dim", "dtype_bytes", "pooling", "access", "optimizer", "source"}
_DEFAULT_KEYS = {"dim", "dtype_bytes", "pooling"}
_ACCESS_KEYS = {AccessKind.ZIPF: {"kind", "alpha", "seed", "source"},
                AccessKind.HISTOGRAM: {"kind", "file", "source"}, AccessKind.TRACE: {"kind", "file", "source"}}
_DATASET_KEYS = {"name", "samples", "days", "samples_per_day", "train_samples", "source"}


def _keys(mapping: Any, allowed: set, where: str, file: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise WorkloadError(f"{where} must be a mapping, got {type(mapping).__name__}{_at(file)}")
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise WorkloadError(f"{where} has unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}{_at(file)}")
    return mapping


def _text(value: Any, where: str, file: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WorkloadError(f"{where} must be text, got {value!r}{_at(file)}")
    return value


def _access_from_dict(spec: Any, rows: int, *, where: str, file: str, base_dir: Path) -> AccessDistribution:
    if not isinstance(spec, dict):
        raise WorkloadError(f"{where}access must be a mapping with a kind (zipf, histogram or trace), "
                            f"got {spec!r}{_at(file)}")
    kind = _enum(AccessKind, spec.get("kind"), "access.kind", where=where, file=file)
    _keys(spec, _ACCESS_KEYS[kind], f"{where}access", file)
    source = _text(spec.get("source"), f"{where}access.source", file)
    if kind is AccessKind.ZIPF:
        if "alpha" not in spec:
            raise WorkloadError(f"{where}access.alpha is missing (the Zipf exponent){_at(file)}")
        alpha = spec["alpha"]
        if not _is_real(alpha) or not math.isfinite(alpha) or alpha <= 0:
            raise WorkloadError(f"{where}access.alpha must be a finite number > 0, got {alpha!r}{_at(file)}")
        seed = spec.get("seed")
        if seed is not None:
            _check_int(seed, "access.seed", where=where, file=file, minimum=0)
        return ZipfAccess(rows=rows, alpha=alpha, seed=seed, source=source, file=file)
    name = spec.get("file")
    if not isinstance(name, str) or not name.strip():
        raise WorkloadError(f"{where}access.file must name a {kind.value} file (.npy, .csv or .parquet), "
                            f"got {name!r}{_at(file)}")
    path = Path(name)
    if not path.is_absolute():
        path = base_dir / path
    try:
        if kind is AccessKind.HISTOGRAM:
            return load_histogram(path, rows, source=source)
        return load_trace(path, rows, source=source)
    except WorkloadError as err:
        raise WorkloadError(f"{where}{err} (access.file of {file or 'the model'})") from None


def rec_model_from_dict(data: Mapping[str, Any], *, file: str = "", base_dir: str | Path = ".") -> RecModel:
    """A :class:`RecModel` from a parsed YAML mapping (the format of ``costmodel/recmodels/*.yaml``).

    Top-level fields: ``name``, ``dense_features``, ``bottom_mlp``, ``top_mlp`` (widths after the
    input), ``interaction`` (``dot`` or ``{kind: dcnv2, layers, rank}``), ``optimizers`` (``tables``,
    ``dense``; default ``sgd``), ``defaults`` (``dim``, ``dtype_bytes``, ``pooling`` for every table),
    ``access`` (the default access distribution), ``tables`` (``name``, ``rows`` and any of the
    defaults, ``access``, ``optimizer``), and metadata: ``description``, ``source``, ``dataset``,
    ``reference_batch_size``, ``assumptions``, ``dense_dtype_bytes``. Unknown fields are errors.
    Histogram and trace files are found relative to ``base_dir``.
    """
    data = _keys(data, _TOP_KEYS, "the recommendation model", file)
    base = Path(base_dir)
    for key in ("dense_features", "bottom_mlp", "top_mlp", "tables"):
        if key not in data:
            raise WorkloadError(f"{key} is missing{_at(file)}")
    defaults = _keys(data.get("defaults") or {}, _DEFAULT_KEYS, "defaults", file)
    tables_spec = data["tables"]
    if not isinstance(tables_spec, list) or not tables_spec:
        raise WorkloadError(f"tables must be a non-empty list, got {tables_spec!r}{_at(file)}")
    if len(tables_spec) > MAX_TABLES:
        raise WorkloadError(f"a model may have at most {MAX_TABLES:,} tables, got {len(tables_spec):,}{_at(file)}")
    default_access = data.get("access")
    tables = []
    for i, entry in enumerate(tables_spec):
        entry = _keys(entry, _TABLE_KEYS, f"tables[{i}]", file)
        name = entry.get("name", f"table_{i}")
        where = f"table {name!r}: " if isinstance(name, str) else f"tables[{i}]: "
        if "rows" not in entry:
            raise WorkloadError(f"{where}rows is missing{_at(file)}")
        rows = _check_int(entry["rows"], "rows", where=where, file=file, maximum=MAX_ROWS)
        spec = entry.get("access", default_access)
        if spec is None:
            raise WorkloadError(f"{where}access is missing (give it per table or at the top level){_at(file)}")
        access = _access_from_dict(spec, rows, where=where, file=file, base_dir=base)
        if "dim" not in entry and "dim" not in defaults:
            raise WorkloadError(f"{where}dim is missing (give it per table or in defaults){_at(file)}")
        tables.append(Table(name=name, rows=rows, dim=entry.get("dim", defaults.get("dim")), access=access,
                            dtype_bytes=entry.get("dtype_bytes", defaults.get("dtype_bytes", 4)),
                            pooling=entry.get("pooling", defaults.get("pooling", 1)),
                            optimizer=entry.get("optimizer"), file=file))
    inter = data.get("interaction", "dot")
    layers = rank = 0
    if isinstance(inter, dict):
        inter = _keys(inter, {"kind", "layers", "rank", "source"}, "interaction", file)
        kind = inter.get("kind")
        if kind == Interaction.DCNV2:
            for key in ("layers", "rank"):
                if key not in inter:
                    raise WorkloadError(f"interaction.{key} is missing (dcnv2 needs layers and rank){_at(file)}")
        layers, rank = inter.get("layers", 0), inter.get("rank", 0)
    else:
        kind = inter
        if kind == Interaction.DCNV2:
            raise WorkloadError(f"interaction dcnv2 needs its cross layers and rank: write interaction: "
                                f"{{kind: dcnv2, layers: L, rank: R}}{_at(file)}")
    opts = _keys(data.get("optimizers") or {}, {"tables", "dense", "source"}, "optimizers", file)
    dataset = None
    if data.get("dataset") is not None:
        ds = _keys(data["dataset"], _DATASET_KEYS, "dataset", file)
        per_day = ds.get("samples_per_day", ())
        if not isinstance(per_day, (list, tuple)):
            raise WorkloadError(f"dataset: samples_per_day must be a list of integers, got {per_day!r}{_at(file)}")
        dataset = DatasetInfo(name=_text(ds.get("name"), "dataset.name", file), samples=ds.get("samples", 0),
                              days=ds.get("days", 0), samples_per_day=tuple(per_day),
                              train_samples=ds.get("train_samples", 0),
                              source=_text(ds.get("source"), "dataset.source", file), file=file)
    notes = data.get("assumptions", [])
    if not isinstance(notes, list):
        raise WorkloadError(f"assumptions must be a list of text, got {notes!r}{_at(file)}")
    for key in ("bottom_mlp", "top_mlp"):
        if not isinstance(data[key], list):
            raise WorkloadError(f"{key} must be a list of layer widths, got {data[key]!r}{_at(file)}")
    name = data.get("name", Path(file).stem if file else "")
    return RecModel(
        name=name, tables=tuple(tables), dense_features=data["dense_features"], bottom_mlp=tuple(data["bottom_mlp"]),
        top_mlp=tuple(data["top_mlp"]), interaction=kind, dcn_layers=layers, dcn_rank=rank,
        table_optimizer=opts.get("tables", Optimizer.SGD), dense_optimizer=opts.get("dense", Optimizer.SGD),
        dense_dtype_bytes=data.get("dense_dtype_bytes", 4), reference_batch_size=data.get("reference_batch_size", 0),
        dataset=dataset, assumptions=tuple(notes), source=_text(data.get("source"), "source", file), file=file,
    )


def list_rec_models() -> list[str]:
    """Names of the bundled recommendation models (``costmodel/recmodels/<name>.yaml``).

    >>> {"criteo-kaggle", "criteo-terabyte", "mlperf-dlrm", "mlperf-dlrm-dcnv2"} <= set(list_rec_models())
    True
    """
    if not RECMODELS_DIR.is_dir():
        return []
    return sorted(p.stem for p in RECMODELS_DIR.glob("*.yaml"))


def load_rec_model(name_or_path: str | Path) -> RecModel:
    """A bundled recommendation model by name, or a model YAML file by path (bounded reads, no aliases).

    Examples
    --------
    >>> load_rec_model("mlperf-dlrm-dcnv2").lookups_per_sample()
    214.0
    """
    text = str(name_or_path)
    bundled = list_rec_models()
    if text in bundled and not Path(text).exists():
        path = RECMODELS_DIR / f"{text}.yaml"
    else:
        path = Path(text)
        if not path.exists() and not text.endswith((".yaml", ".yml")) and "/" not in text:
            raise WorkloadError(f"unknown recommendation model {text!r}: not a file, and the bundled models are "
                                f"{', '.join(bundled)}")
    content = read_text(path, what="recommendation model file", max_bytes=CONFIG_MAX_BYTES, error=WorkloadError)
    data = load_yaml(content, file=str(path), error=WorkloadError, what="a recommendation model")
    return rec_model_from_dict(data, file=str(path), base_dir=path.parent)


__all__ = [
    "AccessDistribution", "AccessKind", "CurveKind", "DatasetInfo", "HistogramAccess", "HitCurve", "Interaction",
    "Optimizer", "RecModel", "Table", "TraceAccess", "ZipfAccess", "dense_optimizer_state_bytes_per_param",
    "list_rec_models", "load_histogram", "load_rec_model", "load_trace", "optimizer_state_bytes_per_row",
    "power_sum", "rec_model_from_dict", "reuse_distances",
]
