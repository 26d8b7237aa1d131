"""Hand tierplan's exported TorchRec constraints to TorchRec's own sharding planner.

    pip install torchrec fbgemm-gpu-cpu   # optional: not tierplan dependencies, not in CI
    python benchmarks/torchrec_export_check.py [--json]

For a set of embeddings plans and baselines that between them take every compute kernel the export
writes (``fused`` in HBM, ``fused_uvm_caching`` with its ``CacheParams`` load factor, ``fused_uvm``
for rows served from host memory and for CPU tables), the script exports the constraints
(:func:`solver.export_torchrec.export_torchrec`), runs the Python they come with
(``TorchRecExport.to_python()``: the ``ParameterConstraints``, the sharder with the table optimizer,
the ``Topology`` with the plan's HBM and host capacities, and an ``EmbeddingShardingPlanner``), builds
the model's ``EmbeddingBagCollection`` on the meta device with the plan's table names, rows and
dims, and calls ``planner.plan`` -- TorchRec's enumerator, its storage estimate against the
topology and its partitioner. It prints, per table group, what TorchRec's plan chose (sharding
type, compute kernel, cache load factor) next to what the export asked, and whether they agree; a
planner that refuses the constraints (``PlannerError``: the plan does not fit its storage
estimate) is reported with its message.

TorchRec plans without a GPU (the planner only estimates); ``fbgemm_gpu`` must import. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from costmodel.embeddings import load_rec_model
from costmodel.embeddings_cost import EmbWorkload, baseline_policies
from hwprofiles import apply_overrides, load_system
from solver.embeddings import plan_embeddings
from solver.export_torchrec import export_torchrec


@dataclass(frozen=True)
class Case:
    label: str
    model: str
    hw: str
    batch: int
    policy: str  # "plan" (plan_embeddings' decisions) or a baseline name
    overrides: tuple[str, ...] = ()


CASES = (
    Case("plan criteo-terabyte a100-40gb", "criteo-terabyte", "a100-40gb", 16384, "plan"),
    Case("plan criteo-terabyte a100-80gb 16 GiB", "criteo-terabyte", "a100-80gb", 16384, "plan",
         ("gpu.memory=16GiB",)),
    Case("torchrec-uvm-cache:0.2 criteo-terabyte", "criteo-terabyte", "a100-40gb", 16384, "torchrec-uvm-cache:0.2"),
    Case("cpu-hybrid criteo-kaggle", "criteo-kaggle", "a100-40gb", 16384, "cpu-hybrid"),
    Case("uvm criteo-kaggle", "criteo-kaggle", "a100-40gb", 16384, "uvm"),
    Case("plan mlperf-dlrm h100-sxm", "mlperf-dlrm", "h100-sxm", 65536, "plan"),
)


def exported(case: Case):
    system = load_system(case.hw)
    if case.overrides:
        system = apply_overrides(system, list(case.overrides))
    wl = EmbWorkload(model=load_rec_model(case.model), batch=case.batch)
    if case.policy == "plan":
        ep = plan_embeddings(wl, system)
        if ep.cost is None:
            raise SystemExit(f"{case.label}: no plan ({ep.status.value})")
        pols = ep.policies
    else:
        pols = baseline_policies(case.policy, wl, system)
    return wl, export_torchrec(wl, pols, system=system)


def torchrec_plan(wl: EmbWorkload, ex) -> dict[str, dict[str, Any]]:
    """What TorchRec's planner decides for the export's constraints: per table, its sharding type,
    compute kernel and cache load factor (raises TorchRec's PlannerError on a refusal)."""
    import torch
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    scope: dict[str, Any] = {}
    exec(compile(ex.to_python(), "<tierplan export>", "exec"), scope)  # noqa: S102 -- the user's snippet, as written
    tables = [EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows, feature_names=[t.name])
              for t in wl.model.tables]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    plan = scope["planner"].plan(ebc, [scope["sharder"]])
    out = {}
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():
            cache = getattr(ps, "cache_params", None)
            out[name] = {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel,
                         "load_factor": None if cache is None else cache.load_factor}
    return out


def intended(ex) -> dict[str, dict[str, Any]]:
    d = ex.to_dict()["tables"]
    return {name: {"sharding_type": t["sharding_types"][0], "compute_kernel": t["compute_kernels"][0],
                   "load_factor": t.get("cache_params", {}).get("load_factor")} for name, t in d.items()}


def check_all() -> list[dict[str, Any]]:
    rows = []
    for case in CASES:
        wl, ex = exported(case)
        want = intended(ex)
        row: dict[str, Any] = {"case": case.label, "tables": len(want), "cannot_express": len(ex.cannot_express),
                               "asked": dict(Counter(t["compute_kernel"] for t in want.values()))}
        try:
            got = torchrec_plan(wl, ex)
            row["error"] = None
        except Exception as err:  # noqa: BLE001 -- TorchRec's PlannerError and any refusal of the snippet: reported
            got, row["error"] = {}, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        row["torchrec"] = dict(Counter(t["compute_kernel"] for t in got.values()))
        row["differ"] = sorted(n for n in want if got.get(n) != want[n]) if got else sorted(want)
        row["agree"] = row["error"] is None and not row["differ"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    try:
        import torchrec
    except Exception as err:  # noqa: BLE001 -- not installed, or fbgemm_gpu's libraries do not load here
        print(f"torchrec does not import ({type(err).__name__}: {err}): nothing to check")
        return 0
    rows = check_all()
    if args.json:
        print(json.dumps({"torchrec": torchrec.__version__, "rows": rows}, indent=1))
        return 0
    print(f"TorchRec {torchrec.__version__}: EmbeddingShardingPlanner.plan on each exported set of constraints")
    for r in rows:
        if r["error"]:
            print(f"  {r['case']:42s} REFUSED: {r['error']}")
            continue
        kernels = ", ".join(f"{k} {n}" for k, n in sorted(r["torchrec"].items()))
        print(f"  {r['case']:42s} {r['tables']} tables: {kernels}  "
              f"{'agrees' if r['agree'] else 'DIFFERS on ' + ', '.join(r['differ'])}")
    print(f"{sum(r['agree'] for r in rows)} of {len(rows)} exports planned by TorchRec as exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
