"""The published training-with-offload exam (plain Python, no torch): every row loads with its
citation and unit, the DeepSpeed ZeRO-Offload tutorial's phases are predicted one row each, rows the
cost model cannot express are skipped with the reason, and a bad row names itself and its field."""

from __future__ import annotations

import copy
import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel import load_model
from costmodel.training import TrainWorkload, baseline_policies, evaluate_training
from hwprofiles import load_system
from validate.errors import ReplayError
from validate.published import PublishedResult, summary, table
from validate.published_training import (
    METRIC_UNITS,
    PUBLISHED_TRAINING,
    TrainingMetric,
    load_training_rows,
    parse_training_row,
    predict_published_training,
    predict_training_row,
    training_workload,
)

TUTORIAL = "dso-tutorial-gpt2-10b-v100"
# The bundled 1/16-share DGX-2 host given back its whole-machine figures, exactly as
# tests/costmodel/test_training.py does: the new whole-host profile must carry the same numbers.
WHOLE_DGX2_HOST = ["host.memory=1.5TB", "host.memory_bandwidth=255.9GB/s", "host.flops_fp32=8.29TFLOP/s"]


@pytest.fixture(scope="module")
def results():
    return {r.id: r for r in predict_published_training()}


def _raw_rows() -> list[dict]:
    return yaml.safe_load(PUBLISHED_TRAINING.read_text())["rows"]


def _good_row() -> dict:
    """A complete, predictable row (the tutorial's iteration row, aliases resolved)."""
    return copy.deepcopy(next(r for r in _raw_rows() if r["id"] == f"{TUTORIAL}-iteration"))


# ---------------------------------------------------------------------------------------------
# Every row
# ---------------------------------------------------------------------------------------------


def test_every_row_loads_with_a_citation_a_unit_and_a_positive_figure():
    rows = load_training_rows()
    assert len(rows) == len(_raw_rows()) >= 8
    assert len({r.id for r in rows}) == len(rows)
    for r in rows:
        assert r.paper and r.table and r.url.startswith("https://") and r.notes and r.definition, r.id
        assert r.unit == METRIC_UNITS[r.metric], r.id
        if r.metric is TrainingMetric.OUTCOME:
            assert r.outcome in ("fits", "OOM") and r.low == r.high == 0, r.id
        else:
            assert r.outcome is None and 0 < r.low <= r.value <= r.high, r.id


def test_every_metric_has_a_unit():
    assert set(METRIC_UNITS) == set(TrainingMetric)


def test_results_have_the_published_table_shape(results):
    keys = set(PublishedResult(id="x", citation="c", hardware="h", workload="w", policy="p", metric="m",
                               measured=1.0).as_dict())
    for r in results.values():
        assert isinstance(r, PublishedResult) and r.family == "training"
        assert set(r.as_dict()) == keys
    text = table(list(results.values()))
    assert f"{TUTORIAL}-forward" in text and "training: mean |error|" in text


def test_predicted_rows_are_finite_positive_and_their_error_is_the_distance(results):
    predicted = [r for r in results.values() if r.status == "predicted" and r.metric != "outcome"]
    assert len(predicted) >= 4
    for r in predicted:
        assert isinstance(r.predicted, float) and math.isfinite(r.predicted) and r.predicted > 0, r.id
        assert r.error_pct == pytest.approx(100 * (r.predicted - r.measured) / r.measured, rel=1e-12)
    s = summary(list(results.values()), "training")
    assert s["predicted"] == len(predicted)
    assert s["max_abs_error_pct"] == pytest.approx(max(abs(r.error_pct) for r in predicted))


def test_skipped_rows_say_why_and_carry_no_prediction(results):
    skipped = [r for r in results.values() if r.status == "skipped"]
    assert skipped
    for r in skipped:
        assert r.note and r.predicted is None and r.error_pct is None, r.id
    assert "not bundled" in results["hf-blog-t5-3b-rtx3090-zero-offload-run"].note
    assert "parallelism is not modelled" in results["korthikanti-530b-2240-a100-selective-mfu"].note
    note = results["zero-offload-paper-10b-v100-tflops"].note
    assert "not stated in the source" in note and "seq_len" in note


# ---------------------------------------------------------------------------------------------
# The DeepSpeed ZeRO-Offload tutorial: one row per phase
# ---------------------------------------------------------------------------------------------


def test_the_tutorial_phases_are_separate_rows_compared_with_their_midpoints(results):
    # Published ranges (tutorial log): iteration 25.7-26.8, forward 6.1-6.4, backward 11.8-12.6,
    # optimizer 7.6-8.0 s; midpoints (25.7+26.8)/2 = 26.25, (6.1+6.4)/2 = 6.25, (11.8+12.6)/2 = 12.2,
    # (7.6+8.0)/2 = 7.8.
    expected = {"iteration": ("iteration_s", 26.25), "forward": ("forward_s", 6.25),
                "backward": ("backward_s", 12.2), "step": ("step_s", 7.8)}
    for phase, (metric, mid) in expected.items():
        r = results[f"{TUTORIAL}-{phase}"]
        assert r.status == "predicted" and r.metric == metric
        assert r.measured == pytest.approx(mid, rel=1e-12)
        assert "midpoint" in r.note
    # The phases of one prediction add up to its iteration (TrainCost: step_s is the remainder).
    parts = sum(results[f"{TUTORIAL}-{p}"].predicted for p in ("forward", "backward", "step"))
    assert parts == pytest.approx(results[f"{TUTORIAL}-iteration"].predicted, rel=1e-12)
    # ... and so do the published midpoints: 6.25 + 12.2 + 7.8 = 26.25.
    assert 6.25 + 12.2 + 7.8 == pytest.approx(26.25)


def test_the_tutorial_prediction_is_the_cost_model_on_the_whole_dgx2_host(results):
    # The whole-host profile holds the 1/16 share's figures times 16; predicting with it is the
    # training test's override of the bundled share (only the host's reserve differs: 16 GiB vs 4).
    row = next(r for r in load_training_rows() if r.id == f"{TUTORIAL}-iteration")
    wl = training_workload(row)
    assert (wl.seq_len, wl.micro_batch, wl.grad_accum, wl.zero_stage, wl.fused_attention, wl.dropout) == \
        (1024, 10, 1, 2, False, True)
    full = load_system("dgx2-v100-32gb-1gpu-full-host")
    share = load_system("dgx2-v100-32gb", WHOLE_DGX2_HOST)
    assert full.host.memory_bytes == share.host.memory_bytes == 1.5e12
    assert full.host.memory_bytes_per_s == share.host.memory_bytes_per_s == pytest.approx(255.9e9)
    assert full.host.fp32_flop_per_s == pytest.approx(16 * load_system("dgx2-v100-32gb").host.fp32_flop_per_s,
                                                      rel=1e-3)  # 8.29 vs 16 x 0.518 = 8.288
    cost = evaluate_training(wl, share, baseline_policies("zero-offload+full-recompute", wl, share))
    assert results[f"{TUTORIAL}-iteration"].predicted == pytest.approx(cost.iteration_s, rel=1e-12)
    assert results[f"{TUTORIAL}-forward"].predicted == pytest.approx(cost.forward_s, rel=1e-12)
    # It fits the whole host (16 B/param x 10.28B = 164 GB of 1.5 TB, plus the pinned buffers' rounding
    # up to powers of two: the row has pin_memory true) but not the 1/16 share.
    on_full = evaluate_training(wl, full, baseline_policies("zero-offload+full-recompute", wl, full))
    assert on_full.feasible and wl.pin_memory
    host = dict(on_full.memory.host_breakdown)
    assert host["pinned_rounding"] > 0
    assert on_full.memory.host_bytes - host["pinned_rounding"] == 16 * load_model("gpt2-10b").total_params()
    share_only = load_system("dgx2-v100-32gb")
    assert not evaluate_training(wl, share_only, baseline_policies("zero-offload+full-recompute", wl,
                                                                   share_only)).feasible


# ---------------------------------------------------------------------------------------------
# Metrics, ranges and workloads
# ---------------------------------------------------------------------------------------------


def _write(tmp_path, rows: list[dict]):
    path = tmp_path / "training.yaml"
    path.write_text(yaml.safe_dump({"rows": rows}))
    return path


def test_throughput_metrics_follow_from_the_iteration(tmp_path):
    # Two GPUs of an A100-40GB node, gpt2 (124M), everything on the GPU: samples/s = 8 x 2 x 2 /
    # iteration, tokens/s = samples/s x 512, TFLOP/s per GPU = MFU x 312 TFLOP/s.
    base = _good_row()
    base.update(hw_profile="a100-40gb", model="gpt2", policy="all-gpu")
    base["workload"] = {"seq_len": 512, "micro_batch": 8, "grad_accum": 2, "gpus": 2,
                        "interconnect_bytes_per_s": "100 GB/s", "zero_stage": 1}
    rows = []
    for metric, unit in [("iteration_s", "s"), ("samples_per_s", "samples/s"), ("tokens_per_s", "tokens/s"),
                         ("mfu", "%"), ("tflops_per_gpu", "TFLOP/s"), ("run_s", "s")]:
        row = copy.deepcopy(base)
        row["id"] = metric
        row["measured"] = {"metric": metric, "value": 1.0, "unit": unit, "definition": "test",
                           **({"flop_count": "model"} if metric in ("mfu", "tflops_per_gpu") else {}),
                           **({"iterations": 3} if metric == "run_s" else {})}
        rows.append(row)
    out = {r.id: r for r in predict_published_training(_write(tmp_path, rows))}
    assert all(r.status == "predicted" for r in out.values()), [r.note for r in out.values()]
    wl = TrainWorkload(model=load_model("gpt2"), seq_len=512, micro_batch=8, grad_accum=2, gpus=2,
                       interconnect_bytes_per_s=100e9, zero_stage=1)
    system = load_system("a100-40gb")
    cost = evaluate_training(wl, system, baseline_policies("all-gpu", wl, system))
    it = cost.iteration_s
    assert out["iteration_s"].predicted == pytest.approx(it, rel=1e-12)
    assert out["samples_per_s"].predicted == pytest.approx(8 * 2 * 2 / it, rel=1e-12)
    assert out["tokens_per_s"].predicted == pytest.approx(8 * 2 * 2 * 512 / it, rel=1e-12)
    assert out["mfu"].predicted == pytest.approx(100 * cost.mfu, rel=1e-12)
    assert out["tflops_per_gpu"].predicted == pytest.approx(cost.mfu * system.gpu.fp16_flop_per_s / 1e12, rel=1e-12)
    assert out["run_s"].predicted == pytest.approx(3 * it, rel=1e-12)
    assert out["iteration_s"].note == ""  # a single figure, not a range


@settings(max_examples=50, deadline=None)
@given(low=st.floats(1e-3, 1e3), width=st.floats(0.0, 1e3))
def test_a_range_is_compared_with_its_midpoint(low, width):
    raw = _good_row()
    raw["measured"]["value"] = [low, low + width]
    row = parse_training_row(raw, 0)
    assert row.value == pytest.approx(low + width / 2)
    assert row.low <= row.value <= row.high


def test_skip_reasons_are_derived_from_the_row():
    raw = _good_row()
    raw.update(model="t5-3b", unstated=["host"])
    raw["workload"] = {**raw["workload"], "gpus": 4, "parallelism": ["pipeline"]}
    reasons = parse_training_row(raw, 0).skip_reasons()
    assert len(reasons) == 4
    assert any("pipeline parallelism is not modelled" in r for r in reasons)
    assert any("'t5-3b' is not bundled" in r for r in reasons)
    assert any("gpus=4" in r and "interconnect" in r for r in reasons)
    assert any(r == "not stated in the source: host" for r in reasons)
    assert parse_training_row(_good_row(), 0).skip_reasons() == ()


# ---------------------------------------------------------------------------------------------
# Bad rows
# ---------------------------------------------------------------------------------------------


def _set(path: str, value):
    def mutate(row: dict) -> None:
        *parents, leaf = path.split(".")
        target = row
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[leaf]
        else:
            target[leaf] = value
    return mutate


def test_a_row_without_snapshots_may_say_so():
    raw = _good_row()
    raw["workload"] = {**raw["workload"], "snapshot_every": 0}
    assert parse_training_row(raw, 0).workload["snapshot_every"] == 0


@pytest.mark.parametrize(("mutate", "field", "rule"), [
    (_set("paper", KeyError), "paper", "must be non-empty text"),
    (_set("notes", "  "), "notes", "must be non-empty text"),
    (_set("measured.metric", "iteration_ms"), "measured.metric", "must be one of"),
    (_set("measured.unit", "ms"), "measured.unit", "must be 's' for metric 'iteration_s'"),
    (_set("measured.value", [26.8, 25.7]), "measured.value", "0 < low <= high"),
    (_set("measured.value", -1), "measured.value", "must be a positive number"),
    (_set("measured.value", float("nan")), "measured.value", "must be a positive number"),
    (_set("measured.definition", None), "measured.definition", "must be non-empty text"),
    (_set("measured.flop_count", "peak"), "measured.flop_count", "must be 'model'"),
    (_set("workload.seq_len", 0), "workload.seq_len", "must be a positive integer"),
    (_set("workload.micro_batch", True), "workload.micro_batch", "must be a positive integer"),
    (_set("workload.zero_stage", 4), "workload.zero_stage", "must be 0, 1, 2 or 3"),
    (_set("workload.snapshot_every", -1), "workload.snapshot_every", "must be 0 or a positive integer"),
    (_set("workload.kernels", ""), "workload.kernels", "must be text"),
    (_set("workload.dropout", "yes"), "workload.dropout", "must be true or false"),
    (_set("workload.grad_clip", 1.0), "workload.grad_clip", "must be true or false"),
    (_set("workload.seqlen", 1024), "workload.seqlen", "is not a workload field"),
    (_set("workload.interconnect_bytes_per_s", "fast"), "workload.interconnect_bytes_per_s", "bandwidth"),
    (_set("workload.parallelism", ["data"]), "workload.parallelism", "must be a non-empty list of tensor"),
    (_set("workload.seq_len", KeyError), "workload.seq_len", "is required for a predicted row"),
    (_set("policy", "zero-offlaod"), "policy", "must name baselines"),
    (_set("policy", "zero-infinity-cpu"), "policy", "must run on the row's workload"),
    (_set("hw_profile", "dgx3"), "hw_profile", "must be a bundled system"),
    (_set("hw_overrides", "host.memory=1TB"), "hw_overrides", "must be a list"),
    (_set("unstated", "seq_len"), "unstated", "must be a list"),
    (_set("source", "x"), "source", "is not a row field"),
])
def test_a_bad_row_names_its_id_and_field(mutate, field, rule):
    raw = _good_row()
    mutate(raw)
    with pytest.raises(ReplayError) as info:
        parse_training_row(raw, 0)
    message = str(info.value)
    assert f"'{TUTORIAL}-iteration'" in message and field in message and rule in message
    assert "published_training.yaml" in message


def test_run_s_needs_its_iteration_count():
    raw = _good_row()
    raw["measured"] = {"metric": "run_s", "value": 8.85, "unit": "s", "definition": "wall time"}
    with pytest.raises(ReplayError, match=r"measured\.iterations must be a positive integer for metric 'run_s'"):
        parse_training_row(raw, 0)


def test_a_row_that_is_not_a_mapping_or_has_no_id_is_named_by_position():
    with pytest.raises(ReplayError, match=r"row 3 must be a mapping, got list"):
        parse_training_row([], 3)
    with pytest.raises(ReplayError, match=r"row 0: id must be non-empty text, got None"):
        parse_training_row({"paper": "x"}, 0)


def test_duplicate_ids_and_bad_files_are_refused(tmp_path):
    with pytest.raises(ReplayError, match=rf"'{TUTORIAL}-iteration': id must be unique"):
        load_training_rows(_write(tmp_path, [_good_row(), _good_row()]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: {}\n")
    with pytest.raises(ReplayError, match="must be a mapping with a 'rows' list"):
        load_training_rows(bad)


def test_an_override_the_profile_refuses_is_a_replay_error(tmp_path):
    raw = _good_row()
    raw["hw_overrides"] = ["host.memory=-3GB"]
    with pytest.raises(ReplayError, match=rf"'{TUTORIAL}-iteration': hw_profile/hw_overrides cannot be loaded"):
        predict_published_training(_write(tmp_path, [raw]))


def test_the_zenflow_blog_rows_run_the_config_they_quote():
    # zo_config.json: train_batch_size 8 over --num_gpus=2 with no accumulation is 4 samples per GPU;
    # the script pads every sample to 512 tokens; ZeRO-2 with the optimizer on the CPU, bf16, clipping.
    rows = {r.id: r for r in load_training_rows()}
    for rid in ("zenflow-blog-qwen2.5-3b-2xa100-zero-offload-bind", "zenflow-blog-qwen2.5-1.5b-2xa100-zero-offload-bind",
                "zenflow-blog-qwen2.5-1.5b-2xa100-zero2-no-offload"):
        row = rows[rid]
        assert row.skip_reasons() == ()
        wl = training_workload(row)
        assert (wl.micro_batch * wl.gpus * wl.grad_accum, wl.seq_len, wl.zero_stage) == (8, 512, 2)
        system = load_system(row.hw_profile)
        assert system.host.node_share == 1.0 and system.interconnect is not None  # the whole DGX A100 host
        cost = evaluate_training(wl, system, baseline_policies(row.policy, wl, system))
        assert cost.feasible, rid


def test_qwen2_5_3b_without_offload_does_not_fit_two_a100_40gb_as_the_blog_found():
    # "we couldn't run Qwen2.5-3B with ZeRO2 using the same config on two GPUs in our test environment":
    # the memory model must refuse it too (and admit the 1.5B it ran instead, and the 3B with offload).
    row = next(r for r in load_training_rows() if r.id == "zenflow-blog-qwen2.5-3b-2xa100-zero-offload-bind")
    wl, system = training_workload(row), load_system(row.hw_profile)
    cost = evaluate_training(wl, system, baseline_policies("all-gpu", wl, system))
    assert not cost.feasible and "gpu_bytes" in cost.shortfalls()


def test_an_outcome_row_compares_fits_or_oom_and_a_bad_one_is_refused(results):
    r = results["zenflow-blog-qwen2.5-3b-2xa100-zero2-no-offload-oom"]
    assert (r.measured, r.predicted, r.note, r.error_pct) == ("OOM", "OOM", "agrees", None)
    raw = copy.deepcopy(next(x for x in _raw_rows() if x["id"] == r.id))
    raw["measured"]["value"] = "crashed"
    with pytest.raises(ReplayError, match="measured.value must be one of fits, OOM"):
        parse_training_row(raw, 0)
    # the same policy of the 1.5B (which the blog ran) fits
    raw["measured"]["value"], raw["model"] = "fits", "qwen2.5-1.5b"
    assert predict_training_row(parse_training_row(raw, 0)).note == "agrees"
