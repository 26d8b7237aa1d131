"""Recommendation-model specs, embedding access distributions and hit-rate curves (costmodel.embeddings)."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.special import zeta

from costmodel.embeddings import (
    ZIPF_HEAD_ROWS,
    HistogramAccess,
    Interaction,
    Optimizer,
    RecModel,
    Table,
    TraceAccess,
    ZipfAccess,
    list_rec_models,
    load_histogram,
    load_rec_model,
    load_trace,
    power_sum,
    rec_model_from_dict,
    reuse_distances,
)
from costmodel.errors import WorkloadError

PRESETS = ("criteo-kaggle", "criteo-terabyte", "mlperf-dlrm", "mlperf-dlrm-dcnv2")


# ---------------------------------------------------------------------------------------------
# Bundled presets
# ---------------------------------------------------------------------------------------------


def test_the_four_presets_are_bundled():
    assert set(PRESETS) <= set(list_rec_models())


@pytest.mark.parametrize("name", list_rec_models())
def test_every_preset_loads_and_is_self_consistent(name):
    m = load_rec_model(name)
    assert m.name == name and len(m.tables) == 26  # Criteo: 26 categorical features
    assert m.dense_features == 13
    assert all(t.dim == m.embedding_dim == m.bottom_mlp[-1] for t in m.tables)
    assert [t.name for t in m.tables] == [f"cat_{i}" for i in range(26)]  # TorchRec DEFAULT_CAT_NAMES
    assert "https://" in m.source
    # The skew is an assumption, stated with its source, on every table.
    assert m.assumptions and "1.45" in m.assumptions[0]
    for t in m.tables:
        assert isinstance(t.access, ZipfAccess) and t.access.alpha == 1.45 and "NVIDIA" in t.access.source
    assert m == load_rec_model(name) and hash(m) == hash(load_rec_model(name))
    assert m.summary()["tables"] == 26


def test_criteo_kaggle_has_the_reference_cardinalities():
    m = load_rec_model("criteo-kaggle")
    # DLRM reference ln_emb for Kaggle (mlcommons/inference dlrm main.py).
    rows = [t.rows for t in m.tables]
    assert rows[:4] == [1460, 583, 10131227, 2202608] and rows[-1] == 142572 and rows[11] == 8351593
    assert sum(rows) == 33_762_577
    assert m.embedding_dim == 16 and m.bottom_mlp == (512, 256, 64, 16) and m.top_mlp == (512, 256, 1)
    assert m.top_mlp_in_features == 367  # ln_top[0] of the reference: 16 + 27 * 26 / 2
    # Kaggle's 45,840,617 samples in 7 "days" by DLRM's divmod split.
    assert m.dataset.samples == 45_840_617 and m.dataset.days == 7
    assert sum(m.dataset.samples_per_day) == 45_840_617 and m.dataset.samples_per_day[0] == 6_548_660
    assert m.dataset.train_samples == sum(m.dataset.samples_per_day[:6])


def test_criteo_terabyte_is_the_frequency_threshold_3_list():
    m = load_rec_model("criteo-terabyte")
    rows = [t.rows for t in m.tables]
    assert rows[0] == 45_833_188 and rows[9] == 29_275_261 and rows[19] == 48_937_457 and rows[25] == 35
    assert sum(rows) == 177_944_275
    # TorchRec's README: "Collective Size of Embedding Tables" 91.10 (x 1e9 bytes) at dim 128, fp32.
    assert m.total_table_bytes() == 177_944_275 * 128 * 4
    assert round(m.total_table_bytes() / 1e9, 2) == 91.11 or round(m.total_table_bytes() / 1e9, 1) == 91.1
    assert m.top_mlp_in_features == 479 and m.top_mlp == (1024, 1024, 512, 256, 1)


def test_mlperf_dlrm_has_the_40m_cap():
    m = load_rec_model("mlperf-dlrm")
    rows = [t.rows for t in m.tables]
    assert rows[0] == 39_884_406 and rows[9] == 38_532_951 and rows[20] == 25_641_295
    assert max(rows) < 40_000_000 and sum(rows) == 187_767_399
    assert m.bottom_mlp == (512, 256, 128) and m.top_mlp_in_features == 479  # ln_top[0] of the reference
    assert m.table_optimizer is Optimizer.SGD and m.total_table_state_bytes() == 0


def test_mlperf_dcnv2_has_multi_hot_dcn_and_adagrad():
    m = load_rec_model("mlperf-dlrm-dcnv2")
    rows = [t.rows for t in m.tables]
    assert rows.count(40_000_000) == 5 and rows[1] == 39_060 and rows[10] == 3_067_956
    assert [t.pooling for t in m.tables][:5] == [3, 2, 1, 2, 6] and m.table("cat_20").pooling == 100
    assert m.lookups_per_sample() == 214
    assert m.interaction is Interaction.DCNV2 and (m.dcn_layers, m.dcn_rank) == (3, 512)
    assert m.top_mlp_in_features == 27 * 128
    # Adagrad on the tables (FBGEMM EXACT_ADAGRAD): one fp32 accumulator per element.
    assert m.optimizer_state_bytes_per_row("cat_0") == 4 * 128
    assert m.total_table_state_bytes() == m.total_table_bytes()
    # 3 cross layers: U (3456 x 512), V (512 x 3456), bias 3456 each.
    assert m.dcn_params() == 3 * (2 * 3456 * 512 + 3456)
    assert m.reference_batch_size == 65536


# ---------------------------------------------------------------------------------------------
# Bytes and FLOPs by hand
# ---------------------------------------------------------------------------------------------


def _two_tables(**kw) -> RecModel:
    a = Table(name="a", rows=1000, dim=4, access=ZipfAccess(rows=1000, alpha=1.0), optimizer="adam")
    b = Table(name="b", rows=10, dim=4, dtype_bytes=2, pooling=3, access=ZipfAccess(rows=10, alpha=1.0),
              optimizer="rowwise-adagrad")
    args = dict(name="toy", tables=(a, b), dense_features=3, bottom_mlp=(8, 4), top_mlp=(6, 1),
                dense_optimizer="adagrad")
    args.update(kw)
    return RecModel(**args)


def test_two_table_bytes_by_hand():
    m = _two_tables()
    assert m.table_bytes("a") == 1000 * 4 * 4 == 16_000  # rows x dim x fp32
    assert m.table_bytes("b") == 10 * 4 * 2 == 80  # fp16
    assert m.optimizer_state_bytes_per_row("a") == 2 * 4 * 4  # Adam: two fp32 moments per element
    assert m.optimizer_state_bytes_per_row("b") == 4  # row-wise Adagrad: one fp32 per row
    assert m.table_state_bytes("a") == 32_000 and m.table_state_bytes("b") == 40
    assert m.table("b").lookup_bytes_per_sample == 3 * 4 * 2
    assert m.lookups_per_sample() == 4


def test_two_table_dot_params_and_flops_by_hand():
    m = _two_tables()
    # F = 3 feature vectors of D = 4; top input = 4 + 3*2/2 = 7.
    assert m.top_mlp_in_features == 7
    # bottom 3->8->4: (24 + 8) + (32 + 4) = 68; top 7->6->1: (42 + 6) + (6 + 1) = 55.
    assert m.dense_params() == 68 + 55 == 123
    assert m.dense_optimizer_state_bytes() == 123 * 4  # Adagrad: one fp32 per parameter
    assert m.dense_param_bytes() == 123 * 4
    parts = m.forward_flop_breakdown_per_sample()
    assert parts["bottom_mlp"] == 2 * 3 * 8 + 2 * 8 * 4 == 112
    assert parts["interaction"] == 2 * 3 * 3 * 4 == 72  # Z = X X^T with X 3 x 4
    assert parts["top_mlp"] == 2 * 7 * 6 + 2 * 6 * 1 == 96
    assert m.forward_flop_per_sample() == 280 and m.backward_flop_per_sample() == 560


def test_two_table_dcnv2_params_and_flops_by_hand():
    m = _two_tables(interaction="dcnv2", dcn_layers=2, dcn_rank=3)
    # N = 3 x 4 = 12; a layer: U 12x3 + V 3x12 + bias 12 = 84; the top MLP takes N = 12 inputs.
    assert m.interaction_in_features == 12 and m.top_mlp_in_features == 12
    assert m.dcn_params() == 2 * 84
    assert m.dense_params() == 68 + 168 + (12 * 6 + 6) + (6 + 1) == 321
    assert m.forward_flop_breakdown_per_sample()["interaction"] == 2 * 4 * 12 * 3 == 288


# ---------------------------------------------------------------------------------------------
# Zipf numerics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.5, 0.95, 1.0, 1.05, 1.45, 2.5])
def test_power_sum_matches_direct_sums(s):
    n = np.arange(1, 2_000_001, dtype=np.float64) ** -s
    for lo, hi in [(1, 10), (1, ZIPF_HEAD_ROWS), (3, 5000), (4000, 4001), (4097, 4097), (4090, 4200),
                   (5000, 2_000_000), (1, 2_000_000)]:
        direct = math.fsum(n[lo - 1:hi])  # correctly rounded
        # 1e-12 relative: Euler-Maclaurin is exact to ~1e-20 here; the rest is rounding.
        assert float(power_sum(s, lo, hi)) == pytest.approx(direct, rel=1e-12), (lo, hi)


@pytest.mark.parametrize("s", [1.05, 1.45, 3.0])
def test_power_sum_matches_the_hurwitz_zeta_for_huge_n(s):
    for n in (10**8, 5 * 10**11):
        # H(n, s) = zeta(s) - zeta(s, n + 1) for s > 1; 1e-12: both are accurate to ~1e-15.
        assert float(power_sum(s, 1, n)) == pytest.approx(zeta(s) - zeta(s, n + 1), rel=1e-12)


def test_zipf_static_hit_rate_is_the_explicit_sum():
    n, a = 1000, 1.2
    w = np.arange(1, n + 1, dtype=np.float64) ** -a
    z = ZipfAccess(rows=n, alpha=a)
    for k in (0, 1, 7, 100, 999, 1000, 5000):
        assert z.static_hit_rate(k) == pytest.approx(w[:k].sum() / w.sum(), rel=1e-12, abs=1e-15)
    ks = np.array([1, 10, 100])
    assert np.allclose(z.static_hit_rate(ks), np.cumsum(w)[ks - 1] / w.sum(), rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.8, 1.45])
def test_zipf_static_hit_rate_against_sampling(alpha):
    # 10^6 rows: beyond the exact head, so the grouped sampler is exercised too.
    z = ZipfAccess(rows=10**6, alpha=alpha, seed=3)
    ids = z.sample(400_000)
    assert ids.min() >= 0 and ids.max() < 10**6
    for k in (1, 100, 10_000, 300_000):
        # 4 standard errors of a binomial share of 400k draws.
        tol = 4 * np.sqrt(0.25 / len(ids))
        assert (ids < k).mean() == pytest.approx(z.static_hit_rate(k), abs=tol)


def test_zipf_on_a_hundred_million_rows_needs_no_n_terms():
    z = ZipfAccess(rows=10**8, alpha=1.45)
    assert 0 < z.static_hit_rate(10**4) < z.static_hit_rate(10**6) < 1
    assert z.static_hit_rate(10**8) == pytest.approx(1.0)
    lru = z.lru_hit_rate(np.array([10**4, 10**6]))
    assert np.all(lru < z.static_hit_rate(np.array([10**4, 10**6])))  # LRU never beats the hottest rows
    assert z.expected_distinct_rows(0) == 0.0
    assert z.expected_distinct_rows(1) == pytest.approx(1.0)
    assert z.expected_distinct_rows(10**6) < 10**6


# ---------------------------------------------------------------------------------------------
# LRU
# ---------------------------------------------------------------------------------------------


def _simulate_lru(ids: np.ndarray, capacity: int) -> float:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for x in ids.tolist():
        if x in cache:
            hits += 1
            cache.move_to_end(x)
        else:
            cache[x] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(ids)


def test_reuse_distances_by_hand():
    # a b b a c a: the second b follows b directly (0); a at 3 saw {b} (1); a at 5 saw {c} (1).
    assert reuse_distances(np.array([0, 1, 1, 0, 2, 0])).tolist() == [-1, -1, 0, 1, -1, 1]


def test_exact_lru_matches_a_brute_force_simulation():
    ids = ZipfAccess(rows=400, alpha=0.9).sample(6000, np.random.default_rng(0))
    trace = TraceAccess(rows=400, ids=ids)
    for c in (0, 1, 2, 5, 17, 60, 200, 400, 1000):
        assert trace.lru_hit_rate(c) == _simulate_lru(ids, c), c  # the same count of hits: exact


def test_che_is_within_a_few_percent_of_a_simulated_lru():
    z = ZipfAccess(rows=20_000, alpha=0.9)
    ids = z.sample(300_000, np.random.default_rng(1))
    simulated = TraceAccess(rows=20_000, ids=ids).lru_hit_rate(np.array([50, 500, 2000, 8000]))
    che = z.lru_hit_rate(np.array([50, 500, 2000, 8000]))
    # Che's approximation is within ~1 % here; the trace also pays <= 20k/300k cold misses.
    assert np.allclose(che, simulated, rtol=0.03)


def test_histogram_lru_is_che_on_its_counts():
    n, a = 3000, 1.1
    p = np.arange(1, n + 1, dtype=np.float64) ** -a
    hist = HistogramAccess(rows=n, counts=p * 1e9)
    z = ZipfAccess(rows=n, alpha=a)
    for c in (10, 300, 2999):
        assert hist.lru_hit_rate(c) == pytest.approx(z.lru_hit_rate(c), rel=1e-6)
        assert hist.static_hit_rate(c) == pytest.approx(z.static_hit_rate(c), rel=1e-9)
    assert hist.lru_hit_rate(n) == 1.0 and hist.lru_hit_rate(0) == 0.0


# ---------------------------------------------------------------------------------------------
# Distinct rows
# ---------------------------------------------------------------------------------------------


def test_expected_distinct_rows_against_simulation():
    z = ZipfAccess(rows=10_000, alpha=1.05)
    rng = np.random.default_rng(2)
    for lookups in (100, 2000):
        seen = [len(np.unique(z.sample(lookups, rng))) for _ in range(300)]
        # 1 %: the mean of 300 draws of a count with a spread of a few percent.
        assert z.expected_distinct_rows(lookups) == pytest.approx(np.mean(seen), rel=0.01)


def test_cold_distinct_rows_of_a_static_cache_against_simulation():
    # The distinct rows of a batch outside the k hottest: sampled batches against the expectation, and
    # far above U (1 - h), which takes the share of distinct rows that miss as the share of lookups.
    z = ZipfAccess(rows=50_000, alpha=1.0)
    rng = np.random.default_rng(3)
    lookups = 4096
    batches = [z.sample(lookups, rng) for _ in range(200)]
    for k in (0, 100, 5000, 49_999, 50_000):
        seen = np.mean([len(np.unique(b[b >= k])) for b in batches])
        model = z.cold_distinct_rows(k, lookups, "static")
        assert model == pytest.approx(seen, rel=0.02, abs=0.5), k
        u, h = z.expected_distinct_rows(lookups), z.static_hit_rate(k)
        if 0 < k < 50_000:
            assert model > 1.3 * u * (1 - h)
        assert z.distinct_hit_fraction(k, lookups, "static") == pytest.approx(1 - model / u, abs=1e-12)
    assert z.cold_distinct_rows(50_000, lookups, "static") == 0.0  # every row cached: exactly none


def test_cold_distinct_rows_of_an_lru_cache_against_simulation():
    # An LRU cache filled with each batch's missing rows (FBGEMM's lru_cache_populate) against Che:
    # row i is resident with probability 1 - exp(-p_i T).
    z = ZipfAccess(rows=20_000, alpha=0.9)
    rng = np.random.default_rng(4)
    lookups, cap = 2000, 2000
    cache: OrderedDict[int, None] = OrderedDict()
    misses = []
    for it in range(300):
        batch = np.unique(z.sample(lookups, rng))
        miss = [int(i) for i in batch if int(i) not in cache]
        if it >= 50:  # past the warm-up
            misses.append(len(miss))
        for i in batch:
            cache[int(i)] = None
            cache.move_to_end(int(i))
        while len(cache) > cap:
            cache.popitem(last=False)
    model = z.cold_distinct_rows(cap, lookups, "lru")
    assert model == pytest.approx(np.mean(misses), rel=0.1)
    u = z.expected_distinct_rows(lookups)
    assert model > 1.2 * u * (1 - z.lru_hit_rate(cap))
    assert z.cold_distinct_rows(0, lookups, "lru") == pytest.approx(u) and z.cold_distinct_rows(20_000, lookups, "lru") == 0


def test_distinct_hit_curve_is_concave_and_exact_at_its_breakpoints():
    for access in (ZipfAccess(rows=10**7, alpha=1.45), HistogramAccess(rows=5, counts=np.array([9, 5, 3, 1, 1]))):
        for kind in ("static", "lru"):
            curve = access.distinct_concave_curve(kind, 65536.0, 12)
            x, y = np.asarray(curve.cache_rows, float), np.asarray(curve.hit_rate)
            assert curve.lower_bound and curve.max_gap <= 1e-12 and y[0] == 0.0 and y[-1] == pytest.approx(1.0)
            slopes = np.diff(y) / np.diff(x)
            assert np.all(np.diff(slopes) <= 1e-12) and np.all(slopes >= 0)
            for rows, g in zip(curve.cache_rows, curve.hit_rate):
                assert g == pytest.approx(access.distinct_hit_fraction(rows, 65536.0, kind), abs=1e-12)


def test_expected_distinct_rows_of_a_histogram_is_exact():
    hist = HistogramAccess(rows=4, counts=np.array([2, 1, 1, 0]))
    # p = (1/2, 1/4, 1/4, 0); E[D] over L = 2 lookups: sum 1 - (1 - p)^2.
    assert hist.expected_distinct_rows(2) == pytest.approx((1 - 0.25) + 2 * (1 - 0.75**2))
    assert hist.static_hit_rate(1) == 0.5 and hist.static_hit_rate(3) == 1.0


# ---------------------------------------------------------------------------------------------
# Concave curves
# ---------------------------------------------------------------------------------------------


def _slopes(curve):
    x, y = np.array(curve.cache_rows, dtype=float), np.array(curve.hit_rate)
    return np.diff(y) / np.diff(x)


@pytest.mark.parametrize("kind", ["static", "lru"])
def test_zipf_curve_is_concave_and_below_the_curve(kind):
    z = ZipfAccess(rows=10**7, alpha=1.2)
    curve = z.concave_curve(kind, n_points=24)
    assert curve.cache_rows[0] == 0 and curve.hit_rate[0] == 0.0 and curve.cache_rows[-1] == 10**7
    assert len(curve.cache_rows) == 24 and curve.lower_bound and curve.max_gap == 0.0
    slopes = _slopes(curve)
    assert np.all(np.diff(slopes) <= 1e-12)  # concave: slopes never rise
    # Chords of a concave curve lie below it: the interpolant never promises a hit that is not there.
    probe = np.unique(np.geomspace(1, 10**7, 400).astype(np.int64))
    true = z.hit_rate(probe, kind)
    assert np.all(curve(probe) <= true + 1e-12)
    # and it is exact at the breakpoints
    assert np.allclose(z.hit_rate(np.array(curve.cache_rows), kind), curve.hit_rate, atol=1e-12)
    assert len(curve.segments()) == len(curve.cache_rows) - 1


def test_trace_lru_curve_is_the_upper_hull():
    # A loop over 50 rows then a hot row: LRU of < 50 rows thrashes on the loop, so its curve is not concave.
    ids = np.concatenate([np.tile(np.arange(50), 40), np.zeros(2000, dtype=np.int64)])
    trace = TraceAccess(rows=100, ids=ids)
    curve = trace.concave_curve("lru", n_points=16)
    assert not curve.lower_bound
    assert np.all(np.diff(_slopes(curve)) <= 1e-12)
    xs = np.array(curve.cache_rows)
    assert np.all(curve(xs) >= trace.lru_hit_rate(xs) - 1e-12)
    assert curve.max_gap > 0


# ---------------------------------------------------------------------------------------------
# Histogram and trace files
# ---------------------------------------------------------------------------------------------


def test_histogram_files_in_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = np.array([5, 0, 3, 2], dtype=np.int64)
    np.save(tmp_path / "h.npy", counts)
    (tmp_path / "h.csv").write_text("count\n5\n0\n3\n2\n")
    pq.write_table(pa.table({"count": counts}), tmp_path / "h.parquet")
    for name in ("h.npy", "h.csv", "h.parquet"):
        h = load_histogram(tmp_path / name, rows=6)
        assert h.static_hit_rate(1) == 0.5 and h.static_hit_rate(2) == 0.8
        assert h.sample(1000, np.random.default_rng(0)).max() <= 3
        assert h.summary()["file"].endswith(name)


def test_trace_files_and_replay(tmp_path):
    ids = np.array([3, 1, 3, 2, 3], dtype=np.int64)
    np.save(tmp_path / "t.npy", ids)
    (tmp_path / "t.csv").write_text("\n".join(map(str, ids)) + "\n")
    for name in ("t.npy", "t.csv"):
        t = load_trace(tmp_path / name, rows=4)
        assert t.static_hit_rate(1) == 0.6 and t.lru_hit_rate(2) == 0.4
        assert t.sample(7).tolist() == [3, 1, 3, 2, 3, 3, 1]


def test_a_model_file_with_histogram_and_trace_tables(tmp_path):
    np.save(tmp_path / "counts.npy", np.array([4, 3, 2, 1]))
    (tmp_path / "ids.csv").write_text("0\n1\n0\n2\n")
    spec = _spec()
    spec["tables"] = [{"name": "h", "rows": 4, "access": {"kind": "histogram", "file": "counts.npy"}},
                      {"name": "t", "rows": 3, "access": {"kind": "trace", "file": "ids.csv"}}]
    m = load_rec_model(_write(tmp_path, spec))
    assert isinstance(m.table("h").access, HistogramAccess) and isinstance(m.table("t").access, TraceAccess)
    assert m.table("h").access.static_hit_rate(1) == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------
# Errors: every bad field names the field, the value and the file
# ---------------------------------------------------------------------------------------------


def _spec() -> dict:
    return {"name": "bad", "dense_features": 13, "bottom_mlp": [32, 16], "top_mlp": [8, 1],
            "defaults": {"dim": 16}, "access": {"kind": "zipf", "alpha": 1.2},
            "tables": [{"name": "t0", "rows": 100}, {"name": "t1", "rows": 50}]}


def _write(tmp_path: Path, spec: dict, name: str = "model.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _raises(tmp_path: Path, spec: dict, *words: str) -> str:
    path = _write(tmp_path, spec)
    with pytest.raises(WorkloadError) as info:
        load_rec_model(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def _edit(change):
    spec = _spec()
    change(spec)
    return spec


def test_the_base_spec_is_valid(tmp_path):
    m = load_rec_model(_write(tmp_path, _spec()))
    assert m.name == "bad" and len(m.tables) == 2


@pytest.mark.parametrize("change, words", [
    (lambda s: s["tables"][0].update(rows=-5), ("'t0'", "rows", "positive integer", "-5")),
    (lambda s: s["tables"][0].update(rows=True), ("rows", "True")),
    (lambda s: s["tables"][0].update(rows="100"), ("rows", "'100'")),
    (lambda s: s["tables"][1].update(dim=0), ("'t1'", "dim", "0")),
    (lambda s: s["tables"][1].update(dtype_bytes=3), ("dtype_bytes", "3")),
    (lambda s: s["tables"][1].update(pooling=0), ("pooling", "0")),
    (lambda s: s["tables"][1].update(optimizer="lamb"), ("optimizer", "lamb", "rowwise-adagrad")),
    (lambda s: s.update(optimizers={"tables": "momentum"}), ("optimizers.tables", "momentum")),
    (lambda s: s.update(optimizers={"dense": "rowwise-adagrad"}), ("optimizers.dense", "rowwise-adagrad")),
    (lambda s: s.update(access={"kind": "pareto", "alpha": 1.0}), ("access.kind", "pareto", "zipf")),
    (lambda s: s.update(access={"kind": "zipf", "alpha": 0}), ("access.alpha", "> 0", "0")),
    (lambda s: s.update(access={"kind": "zipf", "alpha": -1.5}), ("access.alpha", "-1.5")),
    (lambda s: s.update(access={"kind": "zipf"}), ("access.alpha", "missing")),
    (lambda s: s.update(access={"kind": "zipf", "alpha": 1.0, "beta": 2}), ("access", "beta")),
    (lambda s: s.update(access={"kind": "zipf", "alpha": 1.0, "seed": -1}), ("access.seed", "-1")),
    (lambda s: s.pop("access"), ("access", "missing")),
    (lambda s: s.update(interaction="attention"), ("interaction", "attention", "dcnv2")),
    (lambda s: s.update(interaction={"kind": "dcnv2", "layers": 0, "rank": 4}), ("interaction.layers", "0")),
    (lambda s: s.update(interaction={"kind": "dcnv2", "layers": 2, "rank": 10_000}), ("interaction.rank", "10000")),
    (lambda s: s.update(interaction={"kind": "dot", "layers": 2}), ("dcnv2", "layers=2")),
    (lambda s: s.update(interaction="dcnv2"), ("dcnv2", "layers", "rank")),
    (lambda s: s.update(interaction={"kind": "dcnv2", "layers": 2}), ("interaction.rank", "missing")),
    (lambda s: s.update(bottom_mlp=[32, 8]), ("dim 16", "bottom_mlp[-1]", "'t0'")),
    (lambda s: s.update(top_mlp=[]), ("top_mlp", "non-empty")),
    (lambda s: s.update(top_mlp=[8, -1]), ("top_mlp[1]", "-1")),
    (lambda s: s.update(dense_features=0), ("dense_features", "0")),
    (lambda s: s.pop("dense_features"), ("dense_features", "missing")),
    (lambda s: s.update(tables=[]), ("tables", "non-empty")),
    (lambda s: s["tables"].append({"name": "t0", "rows": 3}), ("unique", "'t0'")),
    (lambda s: s["tables"][0].update(width=3), ("tables[0]", "width")),
    (lambda s: s.update(embedding_size=3), ("embedding_size", "allowed")),
    (lambda s: s.update(dataset={"samples": 10, "days": 2, "samples_per_day": [4, 5]}), ("samples_per_day", "9")),
    (lambda s: s["tables"][0].update(rows=2**41), ("rows", "at most")),
])
def test_bad_fields_name_field_value_and_file(tmp_path, change, words):
    _raises(tmp_path, _edit(change), *words)


def _data_spec(kind: str, file: str, rows: int = 10) -> dict:
    spec = _spec()
    spec["tables"] = [{"name": "t0", "rows": rows, "access": {"kind": kind, "file": file}}]
    return spec


def test_a_missing_histogram_file(tmp_path):
    msg = _raises(tmp_path, _data_spec("histogram", "nope.npy"), "histogram file not found", "nope.npy", "'t0'")
    assert "access.file" in msg


def test_a_corrupt_histogram_file(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage, not an array")
    _raises(tmp_path, _data_spec("histogram", "bad.npy"), "not a valid .npy array", "bad.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    _raises(tmp_path, _data_spec("histogram", "junk.npy"), "not a .npy file", "junk.npy")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    _raises(tmp_path, _data_spec("histogram", "bad.parquet"), "not a valid parquet file", "bad.parquet")
    np.save(tmp_path / "obj.npy", np.array(["a", "b"]))
    _raises(tmp_path, _data_spec("histogram", "obj.npy"), "integers or floats", "obj.npy")
    (tmp_path / "h.txt").write_text("1\n2\n")
    _raises(tmp_path, _data_spec("histogram", "h.txt"), ".npy, .csv, .parquet", "h.txt")


def test_histogram_counts_that_break_the_rules(tmp_path):
    (tmp_path / "neg.csv").write_text("3\n-2\n1\n")
    _raises(tmp_path, _data_spec("histogram", "neg.csv"), "non-negative", "-2", "row 1", "neg.csv")
    (tmp_path / "word.csv").write_text("3\n2\nmany\n")
    _raises(tmp_path, _data_spec("histogram", "word.csv"), "line 3", "'many'", "word.csv")
    (tmp_path / "cols.csv").write_text("1,3\n2,5\n")
    _raises(tmp_path, _data_spec("histogram", "cols.csv"), "no columns", "cols.csv")
    np.save(tmp_path / "zero.npy", np.zeros(5))
    _raises(tmp_path, _data_spec("histogram", "zero.npy"), "positive entry", "zero.npy")
    np.save(tmp_path / "long.npy", np.ones(11))
    _raises(tmp_path, _data_spec("histogram", "long.npy"), "11 entries", "10 rows", "long.npy")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    _raises(tmp_path, _data_spec("histogram", "nan.npy"), "finite", "nan.npy")
    np.save(tmp_path / "grid.npy", np.ones((3, 2)))
    _raises(tmp_path, _data_spec("histogram", "grid.npy"), "one column", "(3, 2)")


def test_trace_ids_must_be_rows_of_the_table(tmp_path):
    np.save(tmp_path / "ids.npy", np.array([0, 3, 10, 2]))
    _raises(tmp_path, _data_spec("trace", "ids.npy"), "[0, rows)", "got 10", "position 2", "ids.npy")
    np.save(tmp_path / "neg.npy", np.array([0, -1]))
    _raises(tmp_path, _data_spec("trace", "neg.npy"), "got -1", "neg.npy")
    np.save(tmp_path / "float.npy", np.array([0.5, 1.0]))
    _raises(tmp_path, _data_spec("trace", "float.npy"), "integers", "float.npy")
    (tmp_path / "float.csv").write_text("1\n2.5\n")
    _raises(tmp_path, _data_spec("trace", "float.csv"), "integer row id", "'2.5'", "float.csv")
    _raises(tmp_path, _data_spec("trace", ""), "access.file")


def test_model_file_level_errors(tmp_path):
    with pytest.raises(WorkloadError, match="unknown recommendation model 'criteo-kagle'.*criteo-kaggle"):
        load_rec_model("criteo-kagle")
    with pytest.raises(WorkloadError, match="not found"):
        load_rec_model(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(WorkloadError, match="mapping at the top level.*list.yaml"):
        load_rec_model(tmp_path / "list.yaml")
    (tmp_path / "alias.yaml").write_text("a: &x 1\nb: *x\n")
    with pytest.raises(WorkloadError, match="anchors"):
        load_rec_model(tmp_path / "alias.yaml")


def test_programmatic_construction_is_validated_too():
    with pytest.raises(WorkloadError, match="alpha must be a finite number > 0, got 0"):
        ZipfAccess(rows=10, alpha=0)
    with pytest.raises(WorkloadError, match="alpha"):
        ZipfAccess(rows=10, alpha=float("nan"))
    with pytest.raises(WorkloadError, match="covers 10 rows but the table has 20"):
        Table(name="x", rows=20, dim=4, access=ZipfAccess(rows=10, alpha=1.0))
    with pytest.raises(WorkloadError, match="cache_rows must be 0 or a positive integer, got -1"):
        ZipfAccess(rows=10, alpha=1.0).static_hit_rate(-1)
    with pytest.raises(WorkloadError, match="cache_rows"):
        ZipfAccess(rows=10, alpha=1.0).lru_hit_rate(np.array([1.5]))
    with pytest.raises(WorkloadError, match="lookups must be finite and non-negative"):
        ZipfAccess(rows=10, alpha=1.0).expected_distinct_rows(-3)
    with pytest.raises(WorkloadError, match="kind must be one of static, lru"):
        ZipfAccess(rows=10, alpha=1.0).concave_curve("fifo")
    with pytest.raises(WorkloadError, match="n_points"):
        ZipfAccess(rows=10, alpha=1.0).concave_curve("static", n_points=1)
    with pytest.raises(WorkloadError, match="rng must be a numpy.random.Generator"):
        ZipfAccess(rows=10, alpha=1.0).sample(3, rng=42)
    with pytest.raises(WorkloadError, match="dense optimizer.*rowwise|optimizers.dense"):
        _two_tables(dense_optimizer="rowwise-adagrad")


def test_rec_model_from_dict_without_a_file():
    spec = copy.deepcopy(_spec())
    m = rec_model_from_dict(spec)
    assert m.file == "" and m.table("t1").rows == 50
    with pytest.raises(WorkloadError, match="has no table 'zz'"):
        m.table("zz")
