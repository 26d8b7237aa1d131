"""The published-runs exam (plain Python, no torch): every row loads, FlexGen's published T4 runs fit
at their published batch, and each error is the prediction's distance from the measurement."""

from __future__ import annotations

import pytest

from costmodel import KvWorkload, load_model
from hwprofiles import load_system
from solver import evaluate_policy
from validate.published import load_rows, policy_name, predict_published, summary, table, workload_of


@pytest.fixture(scope="module")
def results():
    return predict_published()


def test_every_row_is_cited_and_has_a_measured_figure():
    rows = load_rows()
    assert len(rows) >= 30
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        assert r["paper"] and r["table"] and r["url"], r["id"]
        assert r["measured"]["metric"] in ("throughput_tokens_per_s", "decode_throughput_tokens_per_s", "outcome")


@pytest.mark.parametrize(("row_id", "batch", "gpu_batch"), [("flexgen-t4-opt-30b-p512", 144, 48),
                                                           ("flexgen-t4-opt-6.7b-p512", 2, 2)])
def test_flexgen_t4_policies_fit_at_their_published_batch(row_id, batch, gpu_batch):
    # FlexGen ran these on a real 16 GB T4: the memory model must admit them, at the batch it ran.
    row = next(r for r in load_rows() if r["id"] == row_id)
    name, cpu_attention = policy_name(row["policy"])
    wl = workload_of(row)
    assert (wl.batch, wl.micro_batch) == (batch, gpu_batch)
    res = evaluate_policy(name if cpu_attention else name + ":gpu-attention", wl, load_system(row["hw_profile"]))
    assert res.feasible, res.reason
    assert res.evaluated.workload.batch == batch
    assert res.memory.gpu_bytes <= res.evaluated.cost.capacity["gpu_bytes"]


def test_the_opt_30b_policy_fits_only_because_of_its_gpu_batches():
    # The same 144 sequences as one GPU batch do not fit: prefill's intermediates and scores scale
    # with the GPU batch. (FlexGen's split is what makes the published run possible.)
    row = next(r for r in load_rows() if r["id"] == "flexgen-t4-opt-30b-p512")
    name, _ = policy_name(row["policy"])
    whole = KvWorkload(model=load_model("opt-30b"), batch=144, prompt_len=512, gen_len=32, prefill_chunk_tokens=0,
                       stream_granularity="sublayer", fused_attention=False, cpu_attention_upcast=True)
    res = evaluate_policy(name, whole, load_system(row["hw_profile"]))
    assert not res.feasible and "gpu_bytes" in res.shortfalls
    assert "prefill working" in res.reason


def test_errors_are_the_predictions_distance_from_the_measurement(results):
    from hwprofiles import parse_quantity
    from hwprofiles.units import Dimension

    predicted = [r for r in results if r.error_pct is not None]
    assert len(predicted) >= 20
    for r in predicted:
        value = (parse_quantity(r.measured, Dimension.BYTES, field="measured") if r.metric == "gpu_memory_bytes"
                 else float(r.measured))
        assert r.error_pct == pytest.approx(100 * (r.predicted - value) / value, rel=1e-12)
    assert {r.family for r in predicted} == {"kv", "embeddings", "training"}
    s = summary(results)
    assert s["predicted"] == len(predicted)
    assert s["max_abs_error_pct"] == pytest.approx(max(abs(r.error_pct) for r in predicted))
    text = table(results)
    assert "mean |error|" in text and "flexgen-t4-opt-30b-p512" in text


def test_rows_the_model_cannot_express_are_skipped_with_a_reason(results):
    skipped = [r for r in results if r.status == "skipped"]
    assert skipped and all(r.note for r in skipped)
    assert all(r.predicted is None for r in skipped)
    from validate.published import PUBLISHED_EMBEDDINGS

    rows = {r["id"]: r for r in load_rows() + load_rows(PUBLISHED_EMBEDDINGS)}
    assert all(rows[r.id].get("compressed") or "not bundled" in r.note or "not stated" in r.note
               or "without its unit" in r.note for r in skipped if r.family != "training")
    assert all("not bundled" in r.note or "not stated" in r.note or "not modelled" in r.note
               for r in skipped if r.family == "training")


def test_embedding_rows_are_predicted_with_their_stated_placement(results):
    # NVIDIA's DLRM keeps every table in HBM; ColossalAI's cache holds the globally hottest 1 % of
    # rows on its own runtime; TorchRec "with UVM" states no placement: skipped.
    by_id = {r.id: r for r in results}
    assert "all-gpu" in by_id["nvidia-dlrm-2106-a100-80gb-small-tf32"].policy
    assert "colossalai-cache:0.01 on runtime colossalai" in by_id[
        "colossalai-freqcache-a100-80gb-criteo1tb-1pct-throughput"].policy
    assert by_id["torchrec-uvm-a100-80gb-criteo1tb-throughput"].status == "skipped"


def test_colossalai_memory_rows_are_what_stays_allocated_term_by_term():
    # CachedEmbedding logs torch.cuda.memory_allocated() after the epoch: the prediction is the
    # memory between iterations, whose cache terms are ColossalAI's maps over the fused table's N rows
    # and C = 1 % slots, and whose gradient is the last step's uncoalesced sparse one (B F rows).
    from costmodel import baseline_policies, evaluate_embeddings
    from validate.published import PUBLISHED_EMBEDDINGS, _rec_model, predict_embeddings_row

    rows = {r["id"]: r for r in load_rows(PUBLISHED_EMBEDDINGS)}
    row = rows["colossalai-freqcache-a100-80gb-criteo1tb-1pct-gpu-memory"]
    assert row["measured"]["point"] == "between-iterations"
    model = _rec_model(row["model"], row["id"])
    n, c, b, f, d = sum(t.rows for t in model.tables), row["policy"]["cache_rows"], 16384, len(model.tables), 128
    from costmodel import EmbWorkload

    wl = EmbWorkload(model=model, batch=b, dtype_bytes=4, runtime="colossalai")
    system = load_system(row["hw_profile"])
    cost = evaluate_embeddings(wl, system, baseline_policies("colossalai-cache:0.01", wl, system))
    between = dict(cost.gpu_between_iterations)
    assert between["cache_state"] == 16 * n + 8 * c
    assert between["cache_rows"] == 4 * d * c
    assert between["sparse_grads"] == b * f * (4 * d + 8)
    assert between["tables"] == 0 and between["table_state"] == 0  # SGD, every row backed on the host
    res = predict_embeddings_row(row)
    assert res.predicted == pytest.approx(sum(between.values()))
    assert res.predicted < cost.memory.gpu_bytes  # not the iteration's peak


def test_baseline_systems_map_to_their_policies():
    # Accelerate and ZeRO-Inference v1 stream every weight from the CPU and keep the KV on the GPU.
    assert policy_name({"kind": "all-offload", "weights": "cpu", "kv": "gpu", "attention": "gpu"}) == \
        ("flexgen:0,100,100,0,100,0", False)
    assert policy_name({"kind": "flexgen", "percent": [20, 80, 0, 100, 0, 100], "cpu_attention": True}) == \
        ("flexgen:20,80,0,100,0,100", True)
