"""Sweeps: grids, incremental results, resume without recomputing, any Executor (Dask included)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from solver import PlanError
from solver.sweep import SweepPoint, checkpoint_path, grid, load_rows, parse_vary, run_point, sweep

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


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    out = tmp_path / "study.parquet"
    pts = points(3)
    # An interrupted run: two points finished and checkpointed, the process killed before the end.
    ck = checkpoint_path(out)
    ck.write_text("".join(json.dumps(run_point(p)) + "\n" for p in pts[:2]) + '{"key": "cut sho')
    ran = []
    df = sweep(pts, output=out, resume=True, executor=ThreadPoolExecutor(1), progress=False, on_row=ran.append)
    assert [r["key"] for r in ran] == [pts[2].key()]  # only the missing point ran
    assert len(df) == 3 and out.exists()
    assert list(pd.read_parquet(out)["link.h2d"]) == ["5GB/s", "12.5GB/s", "20GB/s"]
    assert len(load_rows(out)) == 3
    # Resuming a finished sweep runs nothing.
    ran.clear()
    sweep(pts, output=out, resume=True, executor=ThreadPoolExecutor(1), progress=False, on_row=ran.append)
    assert ran == []


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
