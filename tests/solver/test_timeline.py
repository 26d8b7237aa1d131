"""The timeline simulator: exact makespans of a plan's task graph, checked by hand and by invariants."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel import Fractions, KvWorkload, LayerPolicy, TokenSplit, evaluate
from hwprofiles import apply_overrides
from solver import Timeline, plan_kv, simulate_decode_step, simulate_prefill, simulated_total_s
from solver.timeline import RESOURCES



def _check_invariants(tl: Timeline) -> None:
    assert tl.tasks
    assert tl.makespan_s == pytest.approx(max(t.end_s for t in tl.tasks), rel=1e-15)
    busy = tl.busy_s()
    assert set(busy) == set(RESOURCES)
    # 1e-12 relative: sums of the same float durations in another order
    slack = 1e-12 * tl.makespan_s
    # a FIFO resource runs one task at a time, so the schedule is at least as long as its busiest one
    assert tl.makespan_s >= max(busy.values()) - slack
    assert tl.makespan_s >= sum(t.end_s - t.start_s for t in tl.tasks if t.resource == "gpu") - slack
    by_resource = defaultdict(list)
    for t in tl.tasks:
        assert 0.0 <= t.start_s <= t.end_s
        by_resource[t.resource].append(t)
    for resource, tasks in by_resource.items():
        tasks.sort(key=lambda t: (t.start_s, t.end_s))
        for a, b in zip(tasks, tasks[1:]):
            assert b.start_s >= a.end_s - slack, f"{resource}: {a.name} overlaps {b.name}"


def test_gpu_only_step_matches_the_cost_model_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=4)
    pols = (LayerPolicy(splits=(TokenSplit(),) * 4),) * 32  # one context range per step
    cost = evaluate(wl, toy, pols)
    for step in range(4):
        tl = simulate_decode_step(wl, toy, pols, step=step)
        _check_invariants(tl)
        c = 33 + step
        # 32 layers back to back on the GPU, then the head: nothing to overlap
        by_hand = (32 * (404_947_456 + 16_384 * (c + 1)) + 262_232_576) / 1e12
        assert tl.makespan_s == pytest.approx(by_hand, rel=1e-12)
        assert tl.makespan_s == pytest.approx(cost.step_times_s[step], rel=1e-12)
        assert tl.busy_s()["h2d"] == 0.0 and tl.busy_s()["cpu"] == 0.0
    prefill, decode = simulated_total_s(wl, toy, pols)
    assert prefill == pytest.approx(cost.prefill_s, rel=1e-12)
    assert decode == pytest.approx(cost.decode_s, rel=1e-12)


def test_streamed_weights_pipeline_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=4)
    pols = (LayerPolicy(weights=Fractions(gpu=0.0, host=1.0), splits=(TokenSplit(),) * 4),) * 32
    tl = simulate_decode_step(wl, toy, pols, step=0)
    _check_invariants(tl)
    # The copy engine streams the 32 layers back to back (T = 404_766_720 B / 10 GB/s each; the GPU
    # frees each double buffer long before it is needed). The last layer computes after its copy
    # (g = (404_947_456 + 16_384 * 34) B / 1 TB/s at context 33), then the head runs.
    T = 404_766_720 / 10e9
    g = (404_947_456 + 16_384 * 34) / 1e12
    head = 262_232_576 / 1e12
    assert tl.busy_s()["h2d"] == pytest.approx(32 * T, rel=1e-12)
    assert tl.makespan_s == pytest.approx(32 * T + g + head, rel=1e-12)
    # The cost model's per-layer max (32 T + head) hides the pipeline's fill; the simulator does not.
    cost = evaluate(wl, toy, pols)
    assert cost.step_times_s[0] == pytest.approx(32 * T + head, rel=1e-12)
    assert tl.makespan_s > cost.step_times_s[0]


def test_prefill_timeline_of_streamed_weights_by_hand(toy, llama2):
    wl = KvWorkload(model=llama2, batch=1, prompt_len=32, gen_len=4)
    pols = (LayerPolicy(weights=Fractions(gpu=0.0, host=1.0), splits=(TokenSplit(),) * 4),) * 32
    tl = simulate_prefill(wl, toy, pols)
    _check_invariants(tl)
    T = 404_766_720 / 10e9
    # prefill compute of a layer is 412_106_752 B / 1 TB/s (see tests/costmodel/test_kv.py)
    assert tl.makespan_s == pytest.approx(32 * T + 412_106_752 / 1e12 + 262_232_576 / 1e12, rel=1e-12)


def test_plan_reports_its_simulated_times(toy, llama2):
    wl = KvWorkload(model=llama2, batch=8, prompt_len=1024, gen_len=8)
    plan = plan_kv(wl, toy, objective="latency", baselines=())
    pols, head = plan.policies()
    prefill, decode = simulated_total_s(wl, toy, pols, head_on_gpu=head)
    sim = plan.solver["simulated"]
    assert sim["prefill_s"] == pytest.approx(prefill, rel=1e-12)
    assert sim["decode_s"] == pytest.approx(decode, rel=1e-12)
    assert sim["total_s"] == pytest.approx(prefill + decode, rel=1e-12)
    for step in (0, 7):
        _check_invariants(simulate_decode_step(wl, toy, pols, step=step, head_on_gpu=head))


fractions = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)).filter(lambda t: sum(t) > 0)
splits = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)).filter(lambda t: sum(t) > 0).map(
    lambda t: TokenSplit(transfer=t[0] / sum(t), recompute=t[1] / sum(t), cpu=t[2] / sum(t)))


@st.composite
def layer_policies(draw, disk: bool, n_ranges: int = 2):
    def frac() -> Fractions:
        g, h, d = draw(fractions)
        if not disk:
            d = 0
            if g + h == 0:
                g = 1
        s = g + h + d
        return Fractions(gpu=g / s, host=h / s, disk=d / s)

    sp = tuple(draw(splits) for _ in range(n_ranges))
    pols = [LayerPolicy(weights=frac(), kv=frac(), activations_on_host=True, splits=sp) for _ in range(3)]
    return tuple(pols[draw(st.integers(0, 2))] for _ in range(32))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), disk=st.booleans(), step=st.integers(0, 7), head=st.booleans(), batch=st.sampled_from([1, 8]))
def test_schedule_invariants_for_any_policy(toy, llama2, data, disk, step, head, batch):
    system = apply_overrides(toy, ["disk=nvme-gen4"]) if disk else toy
    pols = data.draw(layer_policies(disk))
    wl = KvWorkload(model=llama2, batch=batch, prompt_len=256, gen_len=8)
    decode = simulate_decode_step(wl, system, pols, step=step, head_on_gpu=head)
    _check_invariants(decode)
    # every layer's GPU work appears, in layer order
    gpu = [t for t in decode.tasks if t.resource == "gpu"]
    assert [t.layer for t in gpu] == sorted(t.layer for t in gpu)
    assert {t.layer for t in gpu} == set(range(33))  # 32 layers + the head
    _check_invariants(simulate_prefill(wl, system, pols, head_on_gpu=head))
