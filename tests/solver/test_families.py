"""The contract every family's plans keep, parametrized over the registry (the third family must pass it
too): a plan round-trips through its file; re-costing it on its own hardware gives its prediction; the
plan is never slower than any feasible baseline it reports; a faster link never makes its decisions
slower; less GPU memory than it needs is answered infeasible with the shortfall, not re-planned."""

from __future__ import annotations

import pytest

from costmodel import EmbWorkload, KvWorkload, load_model, load_rec_model
from hwprofiles import load_system
from solver import Plan, plan_kv
from solver.embeddings import plan_embeddings
from solver.embeddings_plan import to_plan
from solver.families import FAMILIES, evaluate_plan_on, family_of
from solver.plan import plan_system


def _kv_plan():
    system = load_system("a100-40gb", ["gpu.memory=12GiB"])
    wl = KvWorkload(model=load_model("llama-2-7b"), batch=8, prompt_len=512, gen_len=8)
    return plan_kv(wl, system, baselines=("gpu-only", "flexgen", "kvpr"))


def _embeddings_plan():
    system = load_system("a100-40gb", ["gpu.memory=2GiB"])
    wl = EmbWorkload(model=load_rec_model("criteo-kaggle"), batch=4096)
    return to_plan(wl, system, plan_embeddings(wl, system))


def _training_plan():
    from costmodel import TrainWorkload
    from solver.training import plan_training
    from solver.training_plan import to_plan

    system = load_system("a100-40gb")
    wl = TrainWorkload(model=load_model("llama-2-7b"), seq_len=1024, micro_batch=2)
    return to_plan(wl, system, plan_training(wl, system))


MAKERS = {"kv": _kv_plan, "embeddings": _embeddings_plan, "training": _training_plan}


def test_every_family_has_a_plan_maker_here():
    assert set(MAKERS) == set(FAMILIES)  # a new family must join this contract test


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def made(request):
    plan = MAKERS[request.param]()
    assert plan.kind == request.param and plan.predicted is not None
    return plan


def test_a_plan_round_trips_through_its_file(made, tmp_path):
    path = tmp_path / "plan.json"
    made.save(path)
    again = Plan.load(path)
    assert again == made and family_of(again) is FAMILIES[made.kind]


def test_re_costing_a_plan_on_its_own_hardware_gives_its_prediction(made, tmp_path):
    path = tmp_path / "plan.yaml"
    made.save(path)
    loaded = Plan.load(path)
    system, note = plan_system(loaded)
    assert note is None
    ev = evaluate_plan_on(loaded, system)
    key = FAMILIES[made.kind].throughput_key
    assert ev.feasible and ev.predicted[key] == pytest.approx(made.predicted[key], rel=1e-12)
    assert ev.memory["gpu_bytes"] == pytest.approx(made.memory["gpu_bytes"], rel=1e-12)


def test_the_plan_is_never_slower_than_a_feasible_baseline(made):
    key = FAMILIES[made.kind].throughput_key
    feasible = {n: b for n, b in made.baselines.items() if b["status"] == "feasible"}
    assert feasible, "the contract needs at least one feasible baseline to compare with"
    for name, b in feasible.items():
        assert made.predicted[key] >= b["predicted"][key] * (1 - 1e-9), name


def test_a_faster_link_never_slows_the_same_decisions(made):
    system, _ = plan_system(made)
    key = FAMILIES[made.kind].throughput_key
    base = evaluate_plan_on(made, system).predicted[key]
    fast, _ = plan_system(made, overrides=[f"link.h2d={system.link.h2d_bytes_per_s * 4 / 1e9:g}GB/s",
                                           f"link.d2h={system.link.d2h_bytes_per_s * 4 / 1e9:g}GB/s"])
    assert evaluate_plan_on(made, fast).predicted[key] >= base * (1 - 1e-12)


def test_too_little_gpu_memory_is_answered_infeasible_with_the_shortfall(made):
    system, _ = plan_system(made)
    need = made.memory["gpu_bytes"]
    small, _ = plan_system(made, overrides=[f"gpu.memory={(system.gpu.memory_bytes - need * 0.5) / 2**30:.3f}GiB"])
    ev = evaluate_plan_on(made, small)
    assert not ev.feasible and ev.shortfall_bytes["gpu"] > 0 and "gpu" in ev.reason
