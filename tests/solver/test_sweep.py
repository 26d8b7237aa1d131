"""Sweeps: grids, incremental results, resume without recomputing, any Executor (Dask included);
bad inputs refused before any point runs, failing points kept as error rows, corrupt checkpoints and
outputs named with their file (and line)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from solver import PlanError
from costmodel.transformer import MODELS_DIR
from solver.errors import PlanError
from solver.sweep import (
    SweepPoint,
    check_output,
    check_points,
    checkpoint_path,
    error_count,
    grid,
    load_rows,
    parse_vary,
    run_point,
    split_names,
    sweep,
)

TOY = str(Path(__file__).resolve().parents[1] / "data" / "toy-system.yaml")


def points(n_bw: int = 3):
    return grid(["llama-2-7b"], [TOY], prompts=[256], batches=[4], gen=4,
                vary=[parse_vary(f"link.h2d=5GB/s..20GB/s:{n_bw}")])


def test_parse_vary_ranges_lists_and_errors():
    assert parse_vary("link.h2d=10GB/s..30GB/s:3") == ("link.h2d", ["10GB/s", "20GB/s", "30GB/s"])
    assert parse_vary("link.latency=0us,10us")[1] == ["0us", "10us"]
    with pytest.raises(PlanError, match="share a unit"):
        parse_vary("link.h2d=10GB/s..30GiB/s:3")
    with pytest.raises(PlanError, match="must be one of"):
        parse_vary("link.speed=1GB/s,2GB/s")
    with pytest.raises(ValueError, match="link.h2d must be positive"):
        parse_vary("link.h2d=-1GB/s,2GB/s")


def test_grid_is_the_full_product():
    pts = grid(["a", "b"], ["x"], prompts=[1, 2, 3], batches=[4], gen=1,
               vary=[("link.h2d", ["1GB/s", "2GB/s"]), ("host.memory", ["1GiB", "2GiB"])])
    assert len(pts) == 2 * 1 * 3 * 1 * 2 * 2
    assert len({p.key() for p in pts}) == len(pts)


def test_row_has_inputs_strategy_and_speedups():
    row = run_point(points(2)[0])
    assert row["status"] == "optimal" and row["link.h2d"] == "5GB/s" and row["link.h2d_si"] == 5e9
    assert row["tokens_per_s"] > 0 and row["gpu_bytes"] > 0
    assert abs(row["kv_gpu_share"] + row["kv_host_share"] + row["kv_disk_share"] - 1) < 1e-6
    assert all(f"speedup_{b}" in row for b in ("gpu-only", "kv-offload", "full-offload", "kvpr", "flexgen"))


def test_bad_point_is_a_row_with_an_error_not_a_crash():
    row = run_point(SweepPoint(model="no-such-model", hw=TOY, prompt=8, batch=1, gen=1))
    assert row["status"] == "error" and "unknown model" in row["error"]


def test_more_link_bandwidth_never_lowers_throughput():
    df = sweep(points(4), workers=1, progress=False)
    tps = df.sort_values("link.h2d_si")["tokens_per_s"].tolist()
    assert all(b >= a * (1 - 1e-6) for a, b in zip(tps, tps[1:]))


def test_interrupted_sweep_resumes_without_recomputing(tmp_path, capsys):
    out = tmp_path / "study.parquet"
    pts = points(3)
    # An interrupted run: two points finished and checkpointed, the process killed while writing the
    # second one's line (cut half-way, no newline).
    ck = checkpoint_path(out)
    lines = [json.dumps(run_point(p)) for p in pts[:2]]
    ck.write_text(lines[0] + "\n" + lines[1][:len(lines[1]) // 2])
    ran = []
    df = sweep(pts, output=out, resume=True, executor=ThreadPoolExecutor(1), progress=False, on_row=ran.append)
    assert [r["key"] for r in ran] == [pts[1].key(), pts[2].key()]  # the finished point did not run again
    assert "cut short by an interrupted write" in capsys.readouterr().err and df.attrs["notes"]
    assert len(df) == 3 and out.exists() and df.attrs["errors"] == 0
    assert list(pd.read_parquet(out)["link.h2d"]) == ["5GB/s", "12.5GB/s", "20GB/s"]
    assert len(load_rows(out)) == 3
    assert all(json.loads(line)["key"] for line in ck.read_text().splitlines())  # the fragment was dropped
    # Resuming a finished sweep runs nothing.
    ran.clear()
    sweep(pts, output=out, resume=True, executor=ThreadPoolExecutor(1), progress=False, on_row=ran.append)
    assert ran == []


def test_resume_false_starts_afresh_and_errored_points_run_again(tmp_path):
    out = tmp_path / "s.csv"
    pts = points(2)
    sweep(pts, output=out, workers=1, progress=False)
    ran = []
    sweep(pts, output=out, resume=False, workers=1, progress=False, on_row=ran.append)
    assert len(ran) == 2 and len(checkpoint_path(out).read_text().splitlines()) == 2
    # A point that errored (here: a bug since fixed) is not finished: a resume runs it again.
    ck = checkpoint_path(out)
    rows = [json.loads(line) for line in ck.read_text().splitlines()]
    rows[0].update(status="error", error="internal error RuntimeError: boom")
    ck.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.unlink()
    ran.clear()
    df = sweep(pts, output=out, resume=True, workers=1, progress=False, on_row=ran.append)
    assert [r["key"] for r in ran] == [pts[0].key()] and df.attrs["errors"] == 0


@pytest.mark.parametrize(("line", "why"), [
    ("not json at all", "is not JSON"),
    ("[1, 2]", "is a JSON list, not a row mapping"),
    ('{"status": "optimal"}', "has no 'key' string"),
])
def test_a_corrupt_checkpoint_line_names_the_file_and_line(tmp_path, line, why):
    out = tmp_path / "s.parquet"
    pts = points(2)
    good = [json.dumps(run_point(p)) for p in pts]
    checkpoint_path(out).write_text(good[0] + "\n" + line + "\n" + good[1] + "\n")
    with pytest.raises(PlanError, match=rf"sweep checkpoint .*s\.parquet\.partial\.jsonl line 2 {why}"):
        sweep(pts, output=out, resume=True, workers=1, progress=False)
    with pytest.raises(PlanError, match="line 2"):
        load_rows(out)
    assert not out.exists()


def test_skip_corrupt_skips_the_line_says_so_and_repairs_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "s.csv"
    pts = points(3)
    lines = [json.dumps(run_point(p)) for p in pts]
    checkpoint_path(out).write_text(lines[0] + "\n{oops\n" + lines[2] + "\n")
    notes: list[str] = []
    assert len(load_rows(out, skip_corrupt=True, notes=notes)) == 2 and "skipped 1 corrupt line(s)" in notes[0]
    ran = []
    df = sweep(pts, output=out, resume=True, skip_corrupt=True, workers=1, progress=False, on_row=ran.append)
    assert [r["key"] for r in ran] == [pts[1].key()] and len(df) == 3
    assert "skipped 1 corrupt line(s)" in capsys.readouterr().err
    assert len(load_rows(out)) == 3  # the corrupt line is gone: no skip_corrupt needed any more


@pytest.mark.parametrize(("name", "content", "why"), [
    ("s.parquet", b"PAR1 this is not parquet", "cannot be read as parquet"),
    ("s.csv", b"model,hw\nllama-2-7b,toy\n", "has no 'key' column"),
    ("s.csv", b"key,status\n1,optimal\n", "row 1: 'key' must be a string"),
    ("s.csv", b"", "is empty"),
])
def test_a_corrupt_output_is_a_plan_error_naming_the_file(tmp_path, name, content, why):
    out = tmp_path / name
    out.write_bytes(content)
    with pytest.raises(PlanError, match=rf"sweep output .*{name} .*{why}"):
        sweep(points(2)[:1], output=out, resume=True, workers=1, progress=False)


def test_outputs_are_checked_before_any_work(tmp_path, monkeypatch):
    import solver.sweep

    monkeypatch.setattr(solver.sweep, "run_point", lambda p: pytest.fail("a point ran"))
    with pytest.raises(PlanError, match=r"must end in \.parquet or \.csv, got '.*s\.xlsx'"):
        sweep(points(2)[:1], output=tmp_path / "s.xlsx", progress=False)
    with pytest.raises(PlanError, match="folder .*nope' does not exist"):
        sweep(points(2)[:1], output=tmp_path / "nope" / "s.csv", progress=False)
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(PlanError, match="is a folder, not a file"):
        check_output(tmp_path / "d.csv")
    with pytest.raises(PlanError, match=r"--plot must end in \.png, got 'p\.jpg'"):
        check_output("p.jpg", suffixes=(".png",), what="--plot")
    assert check_output(tmp_path / "S.CSV") == tmp_path / "S.CSV"
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(PlanError, match="not writable"):
            check_output(tmp_path / "ro" / "s.csv")
    assert list(tmp_path.glob("**/*.jsonl")) == []


def test_dask_local_cluster_executor_gives_the_same_rows():
    distributed = pytest.importorskip("distributed")
    pts = points(2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        df = sweep(pts, executor=client.get_executor(), progress=False)
    serial = sweep(pts, workers=1, progress=False)
    assert df["tokens_per_s"].tolist() == pytest.approx(serial["tokens_per_s"].tolist())


def test_cli_sweep_writes_results_and_a_plot(tmp_path, capsys):
    from tierplan.cli import main

    out = tmp_path / "s.csv"
    code = main(["sweep", "kv", "--model", "llama-2-7b", "--hw", TOY, "--vary", "link.h2d=5GB/s..20GB/s:2",
                 "--prompt", "256", "--batch", "4", "--gen", "4", "-o", str(out), "--workers", "1",
                 "--plot", str(tmp_path / "p.png")])
    assert code == 0 and out.exists() and (tmp_path / "p.png").stat().st_size > 1000
    assert len(pd.read_csv(out)) == 2


def test_unknown_names_and_bad_values_are_refused_before_any_point_runs(tmp_path, monkeypatch):
    import solver.sweep

    monkeypatch.setattr(solver.sweep, "run_point", lambda p: pytest.fail("a point ran"))
    out = tmp_path / "s.csv"

    def refused(match, **kw):
        args = {"models": ["llama-2-7b"], "systems": [TOY], "prompts": [128], "batches": [1], "gen": 8, **kw}
        with pytest.raises(PlanError, match=match):
            sweep(grid(args.pop("models"), args.pop("systems"), **args), output=out, progress=False)
        assert not checkpoint_path(out).exists() and not out.exists()

    refused(r"sweep model: unknown model 'llama-9'; bundled models are: .*llama-2-7b", models=["llama-9"])
    refused(r"unknown system 'a100-41gb'; bundled systems are: .*a100-40gb", systems=["a100-41gb"])
    refused(r"model names must not be empty, got \['llama-2-7b', ''\] \(a trailing or doubled comma\?\)",
            models=["llama-2-7b", ""])
    refused(r"sweep system '.*toy-system\.yaml' with link\.h2d=-1GB/s: link\.h2d must be positive",
            fixed=["link.h2d=-1GB/s"])
    refused(r"sweep prompt must be a positive integer, got 0", prompts=[0])
    refused(r"sweep batch must be a positive integer, got 2\.5", batches=[2.5])
    refused(r"sweep gen must be a positive integer, got True", gen=True)
    refused(r"a sweep needs at least one prompt, got none", prompts=[])
    refused(r"sweep prompt 128 is listed twice", prompts=[128, 128])
    refused(r"sweep point 0 gen must be at most .* TIERPLAN_LIMITS", gen=10**9)
    refused(r"a sweep must have at most 1,000,000 points, got 1,002,001",
            vary=[parse_vary("link.h2d=1GB/s..2GB/s:1001"), parse_vary("host.memory=1GiB..2GiB:1001")])
    with pytest.raises(PlanError, match="at most 1,000,000 points, got 1,000,000,000"):
        parse_vary("link.h2d=1GB/s..2GB/s:1000000000")
    refused(r"sweep sets 'link\.h2d' more than once", fixed=["link.h2d=8GB/s"],
            vary=[parse_vary("link.h2d=1GB/s,2GB/s")])
    with pytest.raises(PlanError, match=r"--model must be comma-separated names, got an empty name in 'llama-2-7b,'"):
        split_names("llama-2-7b,", option="--model")
    with pytest.raises(PlanError, match="the sweep has no points"):
        check_points([])
    with pytest.raises(PlanError, match="point 0 prompt must be a positive integer, got -1"):
        check_points([SweepPoint(model="llama-2-7b", hw=TOY, prompt=-1, batch=1, gen=1)])
    with pytest.raises(PlanError, match="sweep workers must be a positive integer, got 0"):
        sweep(points(2)[:1], workers=0, progress=False)
    # Paths are names too: a config.json and a system YAML that load.
    check_points(grid([str(MODELS_DIR / "llama-2-7b.json")], [TOY], prompts=[128], batches=[1], gen=8))


def test_a_bug_inside_a_point_is_an_error_row_and_the_sweep_goes_on(monkeypatch):
    import solver.sweep

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(solver.sweep, "plan_kv", broken)
    df = sweep(points(2), workers=1, progress=False)
    assert list(df["status"]) == ["error", "error"] and df.attrs["errors"] == error_count(df) == 2
    assert df["error"].str.contains(r"internal error RuntimeError: boom at .*sweep\.py:\d+").all()
    assert list(df["link.h2d"]) == ["5GB/s", "20GB/s"]  # the row still says which point it was


def test_an_input_error_keeps_its_reason_beside_good_rows():
    # Llama 2 reads 4096 tokens: prompt 8000 is refused by the cost model, prompt 128 plans.
    df = sweep(grid(["llama-2-7b"], [TOY], prompts=[128, 8000], batches=[1], gen=8), workers=1, progress=False)
    assert list(df["status"].eq("error")) == [False, True] and df.attrs["errors"] == 1
    assert "4096" in df["error"].iloc[1]


def test_a_task_the_executor_loses_becomes_error_rows(monkeypatch):
    import solver.sweep

    def lost(chunk):
        raise MemoryError("worker killed")

    monkeypatch.setattr(solver.sweep, "run_points", lost)
    with ThreadPoolExecutor(1) as pool:
        df = sweep(points(2), executor=pool, progress=False)
    assert df.attrs["errors"] == 2
    assert df["error"].str.startswith("the executor lost this point: MemoryError: worker killed").all()


# ---------------------------------------------------------------------------------------------- embeddings


def test_an_embeddings_sweep_plans_each_point_with_the_envelope_columns():
    from solver.sweep import grid_embeddings

    pts = grid_embeddings(["criteo-kaggle"], ["a100-40gb"], batches=[4096],
                          vary=[parse_vary("link.h2d=4GB/s..32GB/s:2")], fixed=["gpu.memory=2GiB"],
                          params={"optimizer": "adam"})
    df = sweep(pts, workers=1, progress=False)
    assert list(df["status"]) == ["optimal", "optimal"] and set(df["family"]) == {"embeddings"}
    assert set(df["optimizer"]) == {"adam"} and (df["tables_cache"] + df["tables_gpu"] + df["tables_uvm"]
                                                 + df["tables_cpu"] == 26).all()
    slow, fast = df.sort_values("link.h2d_si")["samples_per_s"]
    assert fast >= slow  # more link bandwidth is never slower
    for col in ("speedup_cpu-hybrid", "speedup_uvm", "gpu_bytes", "solve_time_s"):
        assert df[col].notna().all(), col


def test_kv_point_keys_are_as_before_families_so_old_checkpoints_resume():
    p = points(2)[0]
    assert "family" not in json.loads(p.key()) and "params" not in json.loads(p.key())
    from solver.sweep import grid_embeddings

    e = grid_embeddings(["criteo-kaggle"], ["a100-40gb"], batches=[4096])[0]
    assert json.loads(e.key())["family"] == "embeddings"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"params": {"optimizer": "lamb"}}, "sweep embeddings optimizer must be one of"),
    ({"params": {"speed": 1}}, "sweep embeddings option must be one of optimizer, prefetch, cache_kind, got 'speed'"),
    ({"params": {"prefetch": 1}}, "sweep embeddings prefetch must be one of [False, True], got 1"),
    ({"batches": [0]}, "sweep batch must be a positive integer, got 0"),
])
def test_bad_embeddings_sweeps_are_refused(kwargs, message):
    from solver.sweep import grid_embeddings

    args = {"batches": [4096], **kwargs}
    with pytest.raises(PlanError) as err:
        grid_embeddings(["criteo-kaggle"], ["a100-40gb"], **args)
    assert message in str(err.value)


def test_an_unknown_recommendation_model_is_refused_before_any_point_runs():
    from solver.sweep import grid_embeddings

    with pytest.raises(PlanError, match="sweep model: .*criteo-kaggle"):
        check_points(grid_embeddings(["criteo-mini"], ["a100-40gb"], batches=[4096]))


def test_cli_sweep_embeddings_refuses_kv_options(capsys):
    from tierplan.cli import main

    assert main(["sweep", "embeddings", "--prompt", "512"]) == 2
    assert "--prompt are not options of sweep embeddings" in capsys.readouterr().err
    assert main(["sweep", "kv", "--prefetch"]) == 2
    assert "--prefetch are options of sweep embeddings" in capsys.readouterr().err


def test_dask_executor_runs_embeddings_and_training_points_as_the_local_pool_does():
    distributed = pytest.importorskip("distributed")
    from solver.sweep import grid_embeddings, grid_training

    pts = (grid_embeddings(["criteo-kaggle"], ["a100-40gb"], batches=[1024], fixed=["gpu.memory=2GiB"])
           + grid_training(["gpt2"], ["t4"], seqs=[256], micro_batches=[2], params={"zero_stage": 2}))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        df = sweep(pts, executor=client.get_executor(), progress=False)
    serial = sweep(pts, workers=1, progress=False)
    assert list(df["family"]) == list(serial["family"]) == ["embeddings", "training"]
    assert df["samples_per_s"].iloc[0] == pytest.approx(serial["samples_per_s"].iloc[0])
    assert df["tokens_per_s"].iloc[1] == pytest.approx(serial["tokens_per_s"].iloc[1])


def test_training_points_take_kernels_and_snapshots():
    # A snapshot every iteration costs host memory and copies, so a point that asks for one is never
    # faster than the same point without; the parameters are checked like the others.
    from solver.sweep import grid_training

    rows = [run_point(p) for p in (
        grid_training(["llama-3-8b"], ["a100-80gb"], seqs=[1024], micro_batches=[1],
                      params={"zero_stage": 2, "kernels": "fused"})
        + grid_training(["llama-3-8b"], ["a100-80gb"], seqs=[1024], micro_batches=[1],
                        params={"zero_stage": 2, "snapshot_every": 1, "kernels": "fused"}))]
    assert all(r["status"] in ("optimal", "feasible") for r in rows), rows
    assert rows[1]["tokens_per_s"] <= rows[0]["tokens_per_s"] * (1 + 1e-9)
    check_points(grid_training(["gpt2"], ["t4"], seqs=[256], micro_batches=[2], params={"snapshot_every": 0}))
    with pytest.raises(PlanError, match="kernels must be text, got 3"):
        check_points(grid_training(["gpt2"], ["t4"], seqs=[256], micro_batches=[2], params={"kernels": 3}))
    with pytest.raises(PlanError, match="snapshot_every must be 0 or a positive integer, got -1"):
        check_points(grid_training(["gpt2"], ["t4"], seqs=[256], micro_batches=[2], params={"snapshot_every": -1}))
