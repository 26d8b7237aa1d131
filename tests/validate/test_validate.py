"""validate on the CPU: the same profile and replay code paths that run on a GPU, for real."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from costmodel import Fractions, KvWorkload, LayerPolicy, TokenSplit, spec_from_hf_config  # noqa: E402
from hwprofiles import load_system, parse_curves  # noqa: E402
from validate.profile import Timer, fit_link, monotone_curve, profile_machine, write_profile  # noqa: E402
from validate.replay import _attention_lse, _merge, choose_slice, replay_policies  # noqa: E402

TINY = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 512,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 4096}


@pytest.fixture(scope="module")
def tiny():
    return spec_from_hf_config(TINY, name="tiny-gqa")


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("prof") / "cpu.yaml"
    write_profile(profile_machine(quick=True, device="cpu", progress=lambda m: None), path)
    return path


def test_timer_reports_the_median_of_a_fake_clock():
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # three runs of 1, 3 and 2 seconds
    timer = Timer(torch.device("cpu"), repeats=3, warmup=0, clock=lambda: next(ticks))
    assert timer(lambda: None) == 2.0
    assert timer.samples == [1.0, 3.0, 2.0]


def test_fit_link_recovers_latency_and_bandwidth():
    sizes = [2**k for k in range(12, 30, 3)]
    lat, bw = fit_link(sizes, [8e-6 + s / 25e9 for s in sizes])
    assert lat == pytest.approx(8e-6, rel=1e-3) and bw == pytest.approx(25e9, rel=1e-3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(1e3, 1e13), st.floats(1e-4, 1.0)), min_size=1, max_size=8, unique_by=lambda p: p[0]))
def test_monotone_curve_always_passes_the_loader_rule(points):
    # Written exactly as profile_machine writes curves (6 significant digits), then loaded.
    from validate.profile import _curves

    curve = monotone_curve([p[0] for p in points], [p[1] for p in points])
    curves = {k: curve for k in ("gemm", "gemv", "attention", "elementwise", "memory")}
    parse_curves(_curves("t", {"curves": curves}, "test"), file="t")


def test_quick_cpu_profile_is_a_loadable_measured_system(cpu_profile):
    s = load_system(cpu_profile)
    assert s.gpu.fp16_flop_per_s > 1e9 and s.gpu.memory_bytes_per_s > 1e9 and s.link.h2d_bytes_per_s > 1e8
    assert s.gpu.source_of("flops_fp16").source.value == "measured"
    assert "tierplan profile" in s.gpu.source_of("flops_fp16").ref and "torch" in s.gpu.source_of("flops_fp16").ref
    assert s.link.source_of("h2d").source.value == "fitted"


def test_partial_attentions_merge_to_full_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 1, 16, generator=g)
    k = torch.randn(2, 2, 40, 16, generator=g)
    v = torch.randn(2, 2, 40, 16, generator=g)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    o1, l1 = _attention_lse(q, k[:, :, :25], v[:, :, :25])
    o2, l2 = _attention_lse(q, k[:, :, 25:], v[:, :, 25:])
    assert torch.allclose(_merge(o1, l1, o2, l2), full, atol=1e-5)  # fp32 rounding


def test_slice_keeps_each_policy_share():
    a, b = LayerPolicy(), LayerPolicy(kv=Fractions(gpu=0.0, host=1.0))
    idx = choose_slice([a] * 30 + [b] * 10, 4)
    assert len(idx) == 4 and sum(i >= 30 for i in idx) == 1


POLICIES = {
    "resident": LayerPolicy(),
    "transfer": LayerPolicy(kv=Fractions(gpu=0.25, host=0.75)),
    "recompute": LayerPolicy(kv=Fractions(gpu=0.0, host=1.0), activations_on_host=True,
                             splits=(TokenSplit(transfer=0.5, recompute=0.5), TokenSplit(transfer=0.0, recompute=1.0))),
    "cpu": LayerPolicy(kv=Fractions(gpu=0.5, host=0.5), splits=(TokenSplit(transfer=0.0, cpu=1.0),) * 2),
    "streamed weights": LayerPolicy(weights=Fractions(gpu=0.3, host=0.7)),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_replay_every_strategy_on_cpu(tiny, cpu_profile, name):
    wl = KvWorkload(model=tiny, batch=2, prompt_len=64, gen_len=8, dtype_bytes=4)
    pol = POLICIES[name]
    pols = [pol] * 3 + [LayerPolicy(splits=(TokenSplit(),) * len(pol.splits))]
    r = replay_policies(wl, load_system(cpu_profile), pols, layers=2, steps=2, repeats=2, warmup=1,
                        device="cpu", progress=lambda m: None)
    assert r["slice"]["of_layers"] == 4 and len(r["slice"]["layers"]) == 2
    assert r["slice"]["steps"] == [0, 7]
    assert all(row["measured_s"] > 0 and row["predicted_s"] > 0 for row in r["layers"])
    assert math.isclose(r["measured_s"], sum(s["measured_s"] for s in r["steps"]))
    assert r["error_pct"] == pytest.approx(100 * (r["predicted_s"] - r["measured_s"]) / r["measured_s"])
    json.dumps(r)  # the report is JSON


def test_disk_plans_are_refused_with_a_reason(tiny, cpu_profile):
    from validate import ReplayError

    wl = KvWorkload(model=tiny, batch=1, prompt_len=16, gen_len=2, dtype_bytes=4)
    pols = [LayerPolicy(weights=Fractions(gpu=0.5, host=0.0, disk=0.5))] * 4
    with pytest.raises(ReplayError, match="disk"):
        replay_policies(wl, load_system(cpu_profile), pols, device="cpu", progress=lambda m: None)


def test_cli_plan_then_replay_with_a_report(tmp_path, cpu_profile, capsys):
    from tierplan.cli import main

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    plan = tmp_path / "plan.json"
    assert main(["plan", "kv", "--model", str(cfg), "--hw", str(cpu_profile), "--dtype-bytes", "4", "--batch", "2",
                 "--prompt", "64", "--gen", "4", "--objective", "latency", "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["replay", str(plan), "--layers", "2", "--steps", "2", "--repeats", "2", "--report",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "slice: 2 of 4 layers" in out
    report = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert report["plan"] == str(plan) and report["profile"]["file"] == str(cpu_profile)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(POLICIES))
def test_replay_every_strategy_on_cuda(tiny, name):
    # The CUDA path: copy stream, events, pinned host buffers. Predictions use a bundled profile;
    # only the mechanics are checked here, accuracy is the suite's job.
    wl = KvWorkload(model=tiny, batch=2, prompt_len=64, gen_len=8)
    pols = [POLICIES[name]] * 4
    r = replay_policies(wl, load_system("h100-sxm"), pols, layers=2, steps=2, repeats=2, warmup=1,
                        device="cuda", progress=lambda m: None)
    assert all(row["measured_s"] > 0 for row in r["layers"]) and r["peak_gpu_bytes"] > 0
