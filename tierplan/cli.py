"""The ``tierplan`` command line: argument parsing and output formatting only."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from costmodel import EmbRuntime, WorkloadError, list_models, load_model, model_info
from hwprofiles import Dimension, format_bytes, format_quantity, list_systems, load_system
from hwprofiles.loader import SCHEMA, SYSTEM_PARTS, UNSET_OK
from solver import BASELINES, OBJECTIVES, Plan, PlanError
from tierplan import cli_kv
from tierplan._format import _ms, _pct, _table  # noqa: F401  (the modules' shared formatting)
from tierplan.cli_kv import DEFAULTS, _workload_args, cmd_plan_kv, plan_workload, render_plan  # noqa: F401



def _family_cli(kind: str):
    """The command-line module of a family (``solver.families.FAMILIES`` has its solver side): each
    has ``evaluate_plan_file(plan, system, args)`` and, with torch, ``replay_plan_file``."""
    from tierplan import cli_embeddings

    from tierplan import cli_training

    return {"kv": cli_kv, "embeddings": cli_embeddings, "training": cli_training}[kind]


# ---------------------------------------------------------------------------------------------- hw


def cmd_hw_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_systems():
        s = load_system(name)
        rows.append([name, s.gpu.name, format_bytes(s.gpu.memory_bytes),
                     format_quantity(s.gpu.fp16_flop_per_s, Dimension.COMPUTE),
                     format_quantity(s.gpu.memory_bytes_per_s, Dimension.BANDWIDTH), s.link.name,
                     format_quantity(s.link.h2d_bytes_per_s, Dimension.BANDWIDTH), format_bytes(s.host.memory_bytes),
                     s.disk.name if s.disk else "-"])
    print(_table(["system", "gpu", "hbm", "fp16 dense", "hbm bw", "link", "h2d pinned", "host mem", "disk"], rows))
    print("\nEvery number has a source: `tierplan hw show NAME`. Override any with --set part.field=value.")
    return 0


def cmd_hw_show(args: argparse.Namespace) -> int:
    s = load_system(args.name, args.set or [])
    if args.json:
        out = {"system": s.summary(), "description": s.description, "parts": {}}
        for kind in SYSTEM_PARTS:
            part = getattr(s, kind)
            if part is None:
                continue
            out["parts"][kind] = {"name": part.name, "file": part.file, "fields": {
                key: {"value": getattr(part, attr), "unit": dim.value, "source": part.source_of(key).source.value,
                      "ref": part.source_of(key).ref} if getattr(part, attr) is not None else
                {"value": None, "unit": dim.value, "source": None, "ref": UNSET_OK[kind, key]}
                for key, (attr, dim) in SCHEMA[kind].items()}}
        print(json.dumps(out, indent=1))
        return 0
    print(f"{s.name}: {s.description}")
    if s.overrides:
        print(f"overrides: {', '.join(s.overrides)}")
    for kind in SYSTEM_PARTS:
        part = getattr(s, kind)
        if part is None:
            print(f"\n[{kind}] none")
            continue
        print(f"\n[{kind}] {part.name}: {part.description}")
        rows = []
        for key, (attr, dim) in SCHEMA[kind].items():
            if getattr(part, attr) is None:  # an optional figure the profile does not hold
                rows.append([key, "-", "not measured", UNSET_OK[kind, key]])
                continue
            prov = part.source_of(key)
            rows.append([key, format_quantity(getattr(part, attr), dim), prov.source.value, prov.ref])
        # Wrap the references so a table row fits a terminal; continuation lines align under them.
        table = _table(["field", "value", "source", "reference"], [r[:3] + [""] for r in rows]).splitlines()
        indent = len(table[0]) - len("reference")
        print("\n".join(table[:2]))
        for line, row in zip(table[2:], rows):
            wrapped = textwrap.wrap(row[3], width=max(40, 110 - indent), break_long_words=False,
                                    break_on_hyphens=False) or [""]
            print(line.rstrip().ljust(indent) + wrapped[0])
            for more in wrapped[1:]:
                print(" " * indent + more)
        curves = getattr(part, "curves", None)
        if curves is not None:
            print(f"efficiency curves: {curves.name} ({curves.provenance.source.value}: {curves.provenance.ref[:100]}...)")
    return 0


# ---------------------------------------------------------------------------------------------- models


def cmd_models_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        m = load_model(name)
        rows.append([name, m.family, f"{m.total_params() / 1e9:.2f}", str(m.n_layers), str(m.n_heads),
                     str(m.n_kv_heads), f"{m.kv_elements_per_token() * 2 * m.n_layers / 1024:.0f}",
                     "MoE" if m.n_experts > 1 else ("GQA" if m.is_gqa else "MHA")])
    print(_table(["model", "family", "params (B)", "layers", "heads", "kv heads", "KV KiB/token (fp16)", "attention"],
                 rows))
    from costmodel import list_rec_models, load_rec_model

    rec = []
    for name in list_rec_models():
        r = load_rec_model(name)
        rec.append([name, str(len(r.tables)), f"{sum(t.rows for t in r.tables):,}", str(r.embedding_dim),
                    format_bytes(r.total_table_bytes()), r.interaction.value, r.table_optimizer.value])
    print("\nrecommendation models (embedding tables; `tierplan models show NAME --json` lists every table)")
    print(_table(["model", "tables", "rows", "dim", "table bytes", "interaction", "table optimizer"], rec))
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from costmodel import list_rec_models, load_rec_model

    if args.name in list_rec_models() or str(args.name).endswith((".yaml", ".yml")):
        rec = load_rec_model(args.name)
        out = {**rec.summary(), "table_list": [
            {"name": t.name, "rows": t.rows, "dim": t.dim, "pooling": t.pooling, "bytes": t.bytes,
             "access": type(t.access).__name__} for t in rec.tables]}
        if args.json:
            print(json.dumps(out, indent=1, default=str))
        else:
            for k, v in out.items():
                if k != "table_list":
                    print(f"{k:38s} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:38s} {v}")
            print(_table(["table", "rows", "dim", "pooling", "bytes"],
                         [[t["name"], f"{t['rows']:,}", str(t["dim"]), f"{t['pooling']:g}", format_bytes(t["bytes"])]
                          for t in out["table_list"]]))
        return 0
    m = load_model(args.name)
    out = m.summary(args.dtype_bytes)
    try:
        info = model_info(args.name)
        out["published_params"] = info.get("published_params")
        out["published_params_source"] = info.get("params_source")
    except WorkloadError:
        pass  # a config file given by path has no published figure
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items():
            print(f"{k:38s} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:38s} {v}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.target == "embeddings":
        from tierplan import cli_embeddings

        kv_only = [f"--{f.replace('_', '-')}" for f in _WORKLOAD_FLAGS if f != "batch" and getattr(args, f) not in (None, False)]
        if kv_only:
            raise PlanError(f"{', '.join(kv_only)} are KV options; evaluate embeddings takes --model, --hw, --set, "
                            "--batch, --optimizer, --prefetch, --tf32, --runtime and --policy")
        if not args.policy:
            raise PlanError("evaluate embeddings needs --policy NAME (" + ", ".join(cli_embeddings.EMB_POLICIES) + ")")
        for name, default in cli_embeddings.DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
        return cli_embeddings.cmd_evaluate(args)
    if args.optimizer or args.prefetch or args.tf32 or args.runtime:
        raise PlanError("--optimizer, --prefetch, --tf32 and --runtime are options of evaluate embeddings")
    if args.target == "kv":
        return cli_kv.cmd_evaluate_policy(args)
    given = [f"--{f.replace('_', '-')}" for f in _WORKLOAD_FLAGS if getattr(args, f) not in (None, False)]
    if args.policy:
        given.append("--policy")
    if given:
        raise PlanError(f"evaluate PLAN re-costs the plan's own workload and decisions; {', '.join(given)} "
                        f"would be ignored (re-plan with 'tierplan plan kv', or cost a policy with 'evaluate kv')")
    plan = Plan.load(args.target)
    system = _plan_system(plan, args)
    return _family_cli(plan.kind).evaluate_plan_file(plan, system, args)


# Workload flags that `evaluate PLAN` would ignore (the plan carries its own workload).
_WORKLOAD_FLAGS = ("batch", "gpu_batch", "gpu_batches", "prefill_chunk", "prompt", "gen", "dtype_bytes", "kv_dtype",
                   "kv_keep", "allow_long_context")


def _plan_system(plan: Plan, args: argparse.Namespace):
    """The system to re-cost a plan on: --hw (with --set), or the plan's own, rebuilt from what it
    recorded (a note on stderr says when its file is gone or changed)."""
    from solver.plan import plan_system

    system, note = plan_system(plan, hw=args.hw, overrides=args.set or [])
    if note:
        print(f"tierplan: note: {note}", file=sys.stderr)
    return system


# ---------------------------------------------------------------------------------------------- sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    from solver.sweep import check_output, error_count, grid, parse_vary, split_names, sweep

    output = args.resume or args.output
    if output:
        check_output(output, what="--resume" if args.resume else "-o")
    if args.plot:
        check_output(args.plot, suffixes=(".png", ".pdf", ".svg"), what="--plot")
    vary = [parse_vary(v) for v in (args.vary or [])]
    if args.plot and not vary:
        raise PlanError("--plot needs a --vary field for its x axis")
    if args.family == "training":
        from solver.sweep import grid_training
        from tierplan.cli_training import DEFAULTS as TRAIN_DEFAULTS

        kv_only = [f"--{n.replace('_', '-')}" for n in ("prompt", "gen", "objective", "batch", "cache_kind")
                   if getattr(args, n) is not None]
        kv_only += [f"--{n.replace('_', '-')}" for n in ("prefetch", "allow_long_context") if getattr(args, n)]
        if kv_only:
            raise PlanError(f"{', '.join(kv_only)} are not options of sweep training")
        if (args.gpus or 1) > 1 and not args.interconnect:
            bare = [name for name in split_names(args.hw, option="--hw")
                    if load_system(name, args.set or []).interconnect is None]
            if bare:
                raise PlanError(f"--gpus {args.gpus} needs the GPUs' bus bandwidth: {', '.join(bare)} "
                                f"{'has' if len(bare) == 1 else 'have'} no interconnect; give --interconnect BANDWIDTH "
                                "(e.g. --interconnect 370GB/s) or --set interconnect=NAME")
        params: dict = {}
        for name in ("grad_accum", "gpus", "zero_stage"):
            if getattr(args, name) is not None:
                params[name] = getattr(args, name)
        if args.optimizer:
            params["optimizer"] = args.optimizer
        if args.precision:
            params["precision"] = args.precision
        if args.kernels:
            params["kernels"] = args.kernels
        if args.snapshot_every is not None:
            params["snapshot_every"] = args.snapshot_every
        if args.interconnect:
            from hwprofiles import Dimension, parse_quantity

            params["interconnect_bytes_per_s"] = parse_quantity(args.interconnect, Dimension.BANDWIDTH,
                                                                field="--interconnect")
        points = grid_training(split_names(args.model or TRAIN_DEFAULTS["model"], option="--model"),
                               split_names(args.hw, option="--hw"),
                               seqs=[int(v) for v in (args.seq or str(TRAIN_DEFAULTS["seq"])).split(",")],
                               micro_batches=[int(v) for v in (args.micro_batch or "1").split(",")], vary=vary,
                               fixed=args.set or [], params=params)
        shown = ("model", "hw", *[f for f, _ in vary], "seq_len", "micro_batch", "status", "zero_stage", "tokens_per_s",
                 "mfu", "cpu_step_share", "act_recompute_share", "speedup_zero-offload")
    elif args.family == "embeddings":
        from solver.sweep import grid_embeddings

        kv_only = [f"--{n.replace('_', '-')}" for n in ("prompt", "gen", "objective", "seq", "micro_batch", "grad_accum",
                                                         "gpus", "zero_stage", "precision", "interconnect", "kernels",
                                                         "snapshot_every")
                   if getattr(args, n) is not None]
        kv_only += ["--allow-long-context"] if args.allow_long_context else []
        if kv_only:
            raise PlanError(f"{', '.join(kv_only)} are not options of sweep embeddings")
        params = {"prefetch": True} if args.prefetch else {}
        if args.optimizer:
            params["optimizer"] = args.optimizer
        if args.cache_kind:
            params["cache_kind"] = args.cache_kind
        points = grid_embeddings(split_names(args.model or "criteo-kaggle", option="--model"),
                                 split_names(args.hw, option="--hw"),
                                 batches=[int(b) for b in (args.batch or "16384").split(",")], vary=vary,
                                 fixed=args.set or [], params=params)
        shown = ("model", "hw", *[f for f, _ in vary], "batch", "status", "samples_per_s", "tables_gpu",
                 "tables_cache", "tables_uvm", "tables_cpu", "speedup_torchrec-uvm-cache", "speedup_cpu-hybrid")
    else:
        emb_only = [f"--{n.replace('_', '-')}" for n in ("optimizer", "cache_kind") if getattr(args, n)]
        emb_only += ["--prefetch"] if args.prefetch else []
        if emb_only:
            raise PlanError(f"{', '.join(emb_only)} are options of sweep embeddings, not sweep kv")
        train_only = [f"--{n.replace('_', '-')}" for n in ("seq", "micro_batch", "grad_accum", "gpus", "zero_stage",
                                                            "precision", "interconnect", "kernels", "snapshot_every")
                      if getattr(args, n) is not None]
        if train_only:
            raise PlanError(f"{', '.join(train_only)} are options of sweep training, not sweep {args.family}")
        points = grid(split_names(args.model or DEFAULTS["model"], option="--model"),
                      split_names(args.hw, option="--hw"),
                      prompts=[int(p) for p in (args.prompt or str(DEFAULTS["prompt"])).split(",")],
                      batches=[int(b) for b in (args.batch or str(DEFAULTS["batch"])).split(",")],
                      gen=DEFAULTS["gen"] if args.gen is None else args.gen, vary=vary, fixed=args.set or [],
                      objective=args.objective or "throughput", allow_long_context=args.allow_long_context)
        shown = ("model", "hw", *[f for f, _ in vary], "prompt", "max_batch", "status", "batch", "tokens_per_s",
                 "kv_gpu_share", "offloaded_recompute_share", "offloaded_cpu_share", "speedup_flexgen")
    df = sweep(points, output=output, resume=bool(args.resume), workers=args.workers, skip_corrupt=args.skip_corrupt)
    cols = [c for c in shown if c in df.columns]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:,.3g}", na_rep="-"))
    blank = [c for c in cols if c.startswith("speedup_") and df[c].isna().any()]
    if blank:
        print(f"'-' under {', '.join(blank)}: no speed-up at that point, because that baseline or the plan does not "
              f"fit (tierplan evaluate {args.family} --policy NAME gives the shortfall)")
    if output:
        print(f"wrote {output} ({len(df)} points)", file=sys.stderr)
    if args.plot:
        from solver.plots import sweep_lines

        print(f"plot: {sweep_lines(df, vary[0][0], args.plot)}", file=sys.stderr)
    errors = error_count(df)
    if errors:
        first = df.loc[df["status"] == "error", "error"].iloc[0]
        print(f"tierplan: {errors} of {len(df)} sweep points failed (reasons in the 'error' column"
              f"{' of ' + str(output) if output else ''}); the first: {first}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- validate
# validate needs torch: imported here, lazily, so planning never loads it.


def _validate_modules():
    try:
        from validate import profile, replay, report, suite
    except ImportError as err:
        raise PlanError(f"this command needs torch ({err}); install it with pip install 'tierplan[validate]'") from None
    return profile, replay, report, suite


def cmd_profile(args: argparse.Namespace) -> int:
    profile, _, _, _ = _validate_modules()
    command = "tierplan profile" + (" --quick" if args.quick else "")
    data = profile.profile_machine(quick=args.quick, device=args.device, command=command,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    profile.write_profile(data, args.output)
    system = load_system(args.output)  # what --hw will read: fail here, not later
    print(f"wrote {args.output}: {system.gpu.description}, {format_quantity(system.gpu.fp16_flop_per_s, Dimension.COMPUTE)}, "
          f"{format_quantity(system.gpu.memory_bytes_per_s, Dimension.BANDWIDTH)} memory, link "
          f"{format_quantity(system.link.h2d_bytes_per_s, Dimension.BANDWIDTH)} H2D")
    return 0


def _replay_family(plan: Plan, system, args: argparse.Namespace, module: str, refused: tuple[str, ...],
                   why: str, **kwargs) -> int:
    """``tierplan replay`` of an embeddings or training plan with ``validate.<module>`` (its
    ``replay_plan`` and ``replay_table``); ``refused`` flags are another family's (``why`` says so)."""
    import importlib

    _, _, report, _ = _validate_modules()  # torch, or one line saying how to install it
    replayer = importlib.import_module(f"validate.{module}")
    for flag in refused:
        if getattr(args, flag) is not None:
            raise PlanError(f"--{flag} {why}")
    result = replayer.replay_plan(plan, system, device=args.device,
                                  progress=lambda m: print(m, file=sys.stderr, flush=True), **kwargs)
    result.update({"plan": str(args.plan), "profile": system.summary(),
                   "command": " ".join(["tierplan", "replay", *args.argv])})
    print(json.dumps(result, indent=1, default=str) if args.json else replayer.replay_table(result))
    if args.report:
        report.write_json(result, Path(args.report) / "replay.json")
        print(f"report: {Path(args.report) / 'replay.json'}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    plan = Plan.load(args.plan)
    system = _plan_system(plan, args)
    if plan.kind == "embeddings":
        return _replay_family(plan, system, args, "replay_embeddings", ("layers", "steps"),
                              "is for KV plans; an embeddings plan replays --tables and --iterations",
                              tables=args.tables, iterations=args.iterations or 8, repeats=args.repeats)
    if plan.kind == "training":
        return _replay_family(plan, system, args, "replay_training", ("steps", "tables"),
                              "is not an option for training plans; they replay --layers and --iterations",
                              layers=args.layers, iterations=args.iterations or 3, repeats=min(args.repeats, 3))
    for flag in ("tables", "iterations"):
        if getattr(args, flag) is not None:
            raise PlanError(f"--{flag} is for embeddings plans; a KV plan replays --layers and --steps")
    _, replay, report, _ = _validate_modules()
    wl = plan_workload(plan)
    if args.layers is not None and args.layers > wl.model.n_layers:
        raise PlanError(f"--layers must be at most the plan's {wl.model.n_layers} layers, got {args.layers}")
    if args.steps is not None and args.steps > wl.gen_len:
        raise PlanError(f"--steps must be at most the plan's {wl.gen_len} decode steps, got {args.steps}")
    result = replay.replay_plan(plan, wl, system, layers=args.layers, steps=args.steps, repeats=args.repeats,
                                device=args.device, progress=lambda m: print(m, file=sys.stderr, flush=True))
    result.update({"plan": str(args.plan), "profile": system.summary(), "command": " ".join(["tierplan", "replay", *args.argv])})
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(report.replay_table(result))
    if args.report:
        out = Path(args.report)
        report.write_json(result, out / "replay.json")
        png = report.plot(result, out / "replay.png", f"{wl.model.name} on {system.name}: predicted vs measured")
        print(f"report: {out / 'replay.json'}" + (f", {png}" if png else ""), file=sys.stderr)
    return 0


def _show_records(paths: list[str]) -> int:
    """Print the error table of saved suite results (no torch needed)."""
    from validate.report import suite_table  # plain Python: no torch

    files = sorted(p for path in paths for p in ([Path(path)] if Path(path).is_file() else Path(path).glob("*.json")))
    if not files:
        raise PlanError(f"no suite results (*.json) found in {paths}")
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PlanError(f"cannot read suite results {f}: {err}") from None
        missing = [k for k in ("device_name", "device", "torch", "date", "command", "cases")
                   if not isinstance(data, dict) or k not in data]
        if missing:
            raise PlanError(f"{f} is not a suite record of `tierplan validate` (no {', '.join(missing)}); "
                            "--show reads validate/records/*.json")
        print(f"{f.name}: {data['device_name']} ({data['device']}), torch {data['torch']}, {data['date']}")
        if isinstance(data.get("host"), str) and data["host"]:
            print(f"host: {data['host']}")
        print(f"command: {data['command']}")
        print(suite_table(data["cases"], data.get("summary")))
        for model, ratios in data.get("baseline_time_over_plan_time", {}).items():
            print(f"{model}: measured baseline time / plan time: "
                  + ", ".join(f"{b} {r:.2f}x" for b, r in ratios.items()))
        print()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    if args.show:
        return _show_records(args.show)
    if args.published:
        from validate import published  # plain Python: no torch

        results = published.predict_published()
        if args.json:
            print(json.dumps({"rows": [r.as_dict() for r in results], "summary": published.summary(results)}, indent=1))
        else:
            print(published.table(results, skipped=args.skipped))
        return 0
    profile, _, report, suite = _validate_modules()
    if args.suite not in ("kv", "embeddings", "training"):
        raise PlanError(f"--suite must be 'kv', 'embeddings' or 'training', got {args.suite!r}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.suite in ("embeddings", "training"):
        import importlib

        family_suite = importlib.import_module(f"validate.suite_{args.suite}")
        for flag in ("layers", "steps"):
            if getattr(args, flag) is not None:
                raise PlanError(f"--{flag} is for --suite kv; --suite {args.suite} takes --iterations and --repeats")
        run = getattr(family_suite, f"run_{args.suite}_validation")
        result = run(hw=args.hw, overrides=args.set or [], quick=args.quick, device=args.device,
                     iterations=args.iterations, repeats=args.repeats, output=args.output,
                     records_dir=None if args.no_record else (args.records or suite.RECORDS_DIR),
                     command=" ".join(["tierplan", "validate", *args.argv]), progress=log)
        print(report.suite_table(result["cases"], result["summary"]))
        for model, ratios in result.get("baseline_time_over_plan_time", {}).items():
            print(f"{model}: measured baseline time / plan time: " + ", ".join(f"{b} {r:.2f}x" for b, r in ratios.items()))
        print(f"results: {result['output_json']}" + (f"; record: {result['record']}" if result.get("record") else ""))
        return 0
    result = suite.run_validation(hw=args.hw, overrides=args.set or [], quick=args.quick, device=args.device,
                                  layers=args.layers, steps=args.steps, repeats=args.repeats, output=args.output,
                                  records_dir=None if args.no_record else (args.records or suite.RECORDS_DIR),
                                  command=" ".join(["tierplan", "validate", *args.argv]), progress=log)
    print(report.suite_table(result["cases"], result["summary"]))
    for model, ratios in result["baseline_time_over_plan_time"].items():
        print(f"{model}: measured baseline time / {result['plan_case'][model]} time: "
              + ", ".join(f"{b} {r:.2f}x" for b, r in ratios.items()))
    print(f"results: {result['output_json']}" + (f"; record: {result['record']}" if result["record"] else ""))
    return 0


# ---------------------------------------------------------------------------------------------- parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tierplan")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: looks the installed version up only when asked (importlib.metadata scans every
    installed distribution, ~70 ms, which every other command would pay at parser build)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the installed version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"tierplan {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierplan", description=__doc__ or "",
                                     epilog="--debug (anywhere) shows the traceback of any error.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    hw = sub.add_parser("hw", help="bundled hardware profiles").add_subparsers(dest="sub", required=True)
    hw.add_parser("list", help="list bundled systems").set_defaults(func=cmd_hw_list)
    show = hw.add_parser("show", help="every number of one system with its source")
    show.add_argument("name", help="system name or YAML path")
    show.add_argument("--set", action="append", metavar="PART.FIELD=VALUE")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_hw_show)

    models = sub.add_parser("models", help="bundled model configs").add_subparsers(dest="sub", required=True)
    models.add_parser("list", help="list bundled models").set_defaults(func=cmd_models_list)
    mshow = models.add_parser("show", help="one model's sizes")
    mshow.add_argument("name", help="bundled model name or path to a config.json")
    mshow.add_argument("--dtype-bytes", type=int, default=2)
    mshow.add_argument("--json", action="store_true")
    mshow.set_defaults(func=cmd_models_show)

    plan = sub.add_parser("plan", help="plan placement").add_subparsers(dest="sub", required=True)
    kv = plan.add_parser("kv", help="KV cache and weights for LLM inference")
    _workload_args(kv)
    kv.add_argument("--hw", default=DEFAULTS["hw"], help="bundled system or YAML path (default: %(default)s)")
    kv.add_argument("--ranges", type=int, default=4, help="decode context ranges with their own token split")
    kv.add_argument("--kv-groups", type=int, default=0,
                    help="place KV per group of heads: G groups per layer (must divide the KV heads)")
    kv.add_argument("--time-limit", type=float, default=10.0, help="seconds per MIP solve")
    kv.add_argument("-o", "--output", help="also write the plan to this .json or .yaml file")
    kv.set_defaults(func=cmd_plan_kv)
    from tierplan import cli_embeddings

    emb = plan.add_parser("embeddings", help="embedding tables for recommendation-model training (DLRM)")
    cli_embeddings.add_arguments(emb, policy=False)
    emb.set_defaults(func=cli_embeddings.cmd_plan)

    from tierplan import cli_training

    tr_plan = plan.add_parser("training", help="optimizer state and activations for training with offload")
    cli_training.add_arguments(tr_plan, policy=False)
    tr_plan.set_defaults(func=cli_training.cmd_plan)

    ev = sub.add_parser("evaluate", help="cost a named policy, or re-cost a plan file on other hardware",
                        epilog="'tierplan evaluate training --help' lists the training family's options.")
    ev.add_argument("target", help="'kv', 'embeddings' or 'training' with --policy, or a plan .json/.yaml file")
    ev.add_argument("--policy", help=f"{', '.join(BASELINES)} or flexgen:wg,wc,cg,cc,hg,hc")
    ev.add_argument("--hw", default=None, help="system (default: a100-40gb, or the plan's own)")
    _workload_args(ev, required_model=True)  # no default model: a plan file names its own
    ev.add_argument("--optimizer", choices=("sgd", "rowwise-adagrad", "adagrad", "adam"),
                    help="evaluate embeddings: the tables' optimizer (default: the spec's)")
    ev.add_argument("--prefetch", action="store_true", help="evaluate embeddings: prefetch the next batch's cold rows")
    ev.add_argument("--tf32", action="store_true", help="evaluate embeddings: fp32 matmuls on TF32 tensor cores")
    ev.add_argument("--runtime", choices=[r.value for r in EmbRuntime],
                    help="evaluate embeddings: the engine whose caches and gradients are counted in HBM (default: "
                         "fbgemm; colossalai: ColossalAI's CachedEmbeddingBag, with --policy colossalai-cache:RATIO)")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="a plan as the config of the engine that runs it").add_subparsers(
        dest="sub", required=True)
    tr = ex.add_parser("torchrec", help="an embeddings plan as TorchRec ParameterConstraints / CacheParams")
    tr.add_argument("plan", help="plan .json/.yaml from `tierplan plan embeddings -o`")
    tr.add_argument("--python", action="store_true", help="print Python that builds the constraints (default: JSON)")
    tr.add_argument("--one-tbe-per-table", action="store_true",
                    help="one FBGEMM kernel (and cache) per table instead of one cache shared by the group")
    tr.add_argument("-o", "--output", help="write to this file instead of standard output")
    tr.set_defaults(func=cli_embeddings.cmd_export_torchrec)
    ds = ex.add_parser("deepspeed", help="a training plan as the nearest DeepSpeed config (ds_config.json)")
    ds.add_argument("plan", help="plan .json/.yaml from `tierplan plan training -o`")
    ds.add_argument("-o", "--output", help="write the config to this file instead of standard output")
    ds.add_argument("--report", help="also write what DeepSpeed cannot express and the config's predicted cost "
                                     "to this JSON file")
    ds.add_argument("--model-code", choices=("hf", "deepspeed"), default="hf",
                    help="whose activation checkpointing the training script uses: Hugging Face's whole-model "
                         "switch (default) or deepspeed.checkpointing around chosen layers")
    ds.add_argument("--nvme-path", default="/local_nvme", help="offload folder for NVMe states (default: %(default)s)")
    ds.set_defaults(func=cli_training.cmd_export_deepspeed)

    sw = sub.add_parser("sweep", help="what-if grids over models, hardware and overrides")
    sw.add_argument("family", choices=("kv", "embeddings", "training"))
    sw.add_argument("--model", default=None,
                    help=f"comma-separated models (default: {DEFAULTS['model']}; embeddings: criteo-kaggle)")
    sw.add_argument("--hw", default=DEFAULTS["hw"], help="comma-separated systems")
    sw.add_argument("--vary", action="append", metavar="PART.FIELD=A..B:N",
                    help="a profile field to sweep: 'link.h2d=8GB/s..64GB/s:8' or 'host.memory=64GiB,208GiB'")
    sw.add_argument("--set", action="append", metavar="PART.FIELD=VALUE", help="an override for every point")
    sw.add_argument("--prompt", default=None, help=f"kv: comma-separated prompt lengths (default: {DEFAULTS['prompt']})")
    sw.add_argument("--batch", default=None,
                    help=f"comma-separated (largest) batches (default: kv {DEFAULTS['batch']}, embeddings 16384)")
    sw.add_argument("--gen", type=int, default=None, help=f"kv: generated tokens (default: {DEFAULTS['gen']})")
    sw.add_argument("--objective", choices=OBJECTIVES, default=None, help="kv: what to optimise (default: throughput)")
    sw.add_argument("--optimizer", choices=("sgd", "rowwise-adagrad", "adagrad", "adam", "adamw", "sgd-momentum"),
                    help="embeddings: the tables' optimizer (default: the spec's); training: adamw, adam, sgd, "
                         "sgd-momentum (default: adamw)")
    sw.add_argument("--prefetch", action="store_true", help="embeddings: prefetch the next batch's cold rows")
    sw.add_argument("--cache-kind", choices=("static", "lru"), default=None, help="embeddings: the caches' hit curve")
    sw.add_argument("--seq", default=None, help="training: comma-separated sequence lengths (default: 2048)")
    sw.add_argument("--micro-batch", default=None, help="training: comma-separated micro-batches (default: 1)")
    sw.add_argument("--grad-accum", type=int, default=None, help="training: micro-steps per step (default: 1)")
    sw.add_argument("--gpus", type=int, default=None, help="training: data-parallel GPUs (default: 1)")
    sw.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                    help="training: ZeRO stage (default: plan 2 and 3, keep the faster)")
    sw.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default=None, help="training: precision")
    sw.add_argument("--interconnect", default=None, help="training: GPU bus bandwidth (default: the system's)")
    sw.add_argument("--kernels", choices=("eager", "fused"), default=None,
                    help="training: how norms and the MLP activation run (default: eager)")
    sw.add_argument("--snapshot-every", type=int, default=None, metavar="K",
                    help="training: an in-memory snapshot every K iterations (default: none)")
    sw.add_argument("--allow-long-context", action="store_true",
                    help="plan contexts longer than a model's max_position_embeddings")
    sw.add_argument("-o", "--output", help="results .parquet or .csv (written incrementally beside it)")
    sw.add_argument("--resume", metavar="OUTPUT", help="continue the sweep saved in OUTPUT; finished points are kept")
    sw.add_argument("--workers", type=int, default=None, help="local processes (default: all cores)")
    sw.add_argument("--skip-corrupt", action="store_true",
                    help="with --resume, skip checkpoint lines that are not rows (their points run again)")
    sw.add_argument("--plot", help="PNG of throughput against the first --vary field")
    sw.set_defaults(func=cmd_sweep)

    pr = sub.add_parser("profile", help="measure this machine (torch) and write a hardware profile YAML")
    pr.add_argument("-o", "--output", required=True, help="profile YAML to write (usable as --hw)")
    pr.add_argument("--quick", action="store_true", help="fewer sizes and repeats: under a minute")
    pr.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    pr.set_defaults(func=cmd_profile)

    rp = sub.add_parser("replay", help="replay a plan with torch and report predicted vs measured")
    rp.add_argument("plan", help="plan .json/.yaml from `tierplan plan kv -o` or `tierplan plan embeddings -o`")
    rp.add_argument("--hw", help="profile to predict with (default: the plan's own)")
    rp.add_argument("--set", action="append", metavar="PART.FIELD=VALUE")
    rp.add_argument("--layers", type=int, default=None, help="replay a slice of this many layers")
    rp.add_argument("--steps", type=int, default=None, help="replay this many decode steps, spread over the generation")
    rp.add_argument("--tables", type=int, default=None, help="embeddings: replay a slice of this many tables")
    rp.add_argument("--iterations", type=int, default=None,
                    help="embeddings and training: training iterations (default: 8 and 3)")
    rp.add_argument("--repeats", type=int, default=5)
    rp.add_argument("--device", choices=("cuda", "cpu"), default=None)
    rp.add_argument("--report", help="folder for replay.json and replay.png")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_replay)

    va = sub.add_parser("validate", help="plan, replay and tabulate a fixed validation suite")
    va.add_argument("--suite", default="kv", help="kv (default), embeddings or training")
    va.add_argument("--hw", help="measured profile to use (default: profile this machine with --quick)")
    va.add_argument("--set", action="append", metavar="PART.FIELD=VALUE")
    va.add_argument("--layers", type=int, default=None, help="layers per replayed slice (default: the suite's)")
    va.add_argument("--steps", type=int, default=None, help="decode steps per case (default: the suite's)")
    va.add_argument("--repeats", type=int, default=None, help="timed repeats per step (default: the suite's)")
    va.add_argument("--iterations", type=int, default=None, help="--suite embeddings: iterations per case")
    va.add_argument("--quick", action="store_true",
                    help="the short GPU check: tight-memory plans and baselines, 1 step, 2 repeats (< 8 minutes)")
    va.add_argument("--records", default=None, help="folder for the kept record (default: validate/records/)")
    va.add_argument("--no-record", action="store_true", help="do not write a record into validate/records/")
    va.add_argument("--device", choices=("cuda", "cpu"), default=None)
    va.add_argument("-o", "--output", default="validate-out", help="folder for results (default: %(default)s)")
    va.add_argument("--show", nargs="+", metavar="RESULTS", help="print the tables of saved results (files or folders)")
    va.add_argument("--published", action="store_true",
                    help="predict the bundled published measurements (FlexGen, Accelerate, ZeRO-Inference) with "
                         "the shipped profiles and print each error (no torch needed)")
    va.add_argument("--skipped", action="store_true", help="with --published, also list the rows not predicted")
    va.add_argument("--json", action="store_true")
    va.set_defaults(func=cmd_validate)
    return parser


def _evaluate_training_parser() -> argparse.ArgumentParser:
    from tierplan import cli_training

    p = argparse.ArgumentParser(prog="tierplan evaluate training",
                                description="cost a named training policy (ZeRO-Offload, ZeRO-Infinity, Twin-Flow, "
                                            "recompute) at the workload asked, or answer infeasible")
    cli_training.add_arguments(p, policy=True)
    p.set_defaults(func=cli_training.cmd_evaluate)
    return p


def _validate_counts(args: argparse.Namespace) -> None:
    for name in ("batch", "prompt", "gen", "ranges", "dtype_bytes", "layers", "steps", "repeats", "workers",
                 "gpu_batch", "gpu_batches", "seq", "micro_batch", "grad_accum", "gpus", "iterations", "tables"):
        value = getattr(args, name, None)
        if isinstance(value, str):  # sweep takes comma-separated lists
            try:
                values = [int(v) for v in value.split(",")]
            except ValueError:
                raise WorkloadError(f"--{name} must be comma-separated positive integers, got {value!r}") from None
            value = min(values)
        if value is not None and value <= 0:
            raise WorkloadError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    # Sizes of the work itself (the MIP grows with ranges and head groups; each worker is a process).
    # A node has at most a few tens of GPUs; micro-steps and micro-batches past these are typos.
    for name, bound in (("ranges", 64), ("kv_groups", 128), ("workers", 256), ("repeats", 1000), ("gpus", 64),
                        ("grad_accum", 1 << 20), ("micro_batch", 1 << 20), ("iterations", 10_000)):
        value = getattr(args, name, None)
        if isinstance(value, str):  # sweep's comma-separated lists (checked positive above)
            value = max(int(v) for v in value.split(","))
        if value is not None and value > bound:
            raise WorkloadError(f"--{name.replace('_', '-')} must be at most {bound}, got {value}")
    for name in ("prefill_chunk", "snapshot_every"):
        if (getattr(args, name, None) or 0) < 0:
            raise WorkloadError(f"--{name.replace('_', '-')} must be 0 or a positive integer, got {getattr(args, name)}")
    if getattr(args, "kv_groups", 0) < 0:
        raise WorkloadError(f"--kv-groups must be 0 or positive, got {args.kv_groups}")
    if not 0.01 <= getattr(args, "time_limit", 1.0) <= 3600:
        raise WorkloadError(f"--time-limit must be between 0.01 and 3600 seconds per MIP solve, got {args.time_limit}")
    if args.command == "sweep" and args.output and args.resume and Path(args.output) != Path(args.resume):
        raise PlanError(f"-o {args.output!r} and --resume {args.resume!r} name different files; --resume OUTPUT "
                        "continues and writes OUTPUT")


OUR_PACKAGES = ("hwprofiles", "costmodel", "solver", "validate", "tierplan")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 answered "infeasible" (or a sweep with failed points),
    2 bad input (one line naming the field, the rule, the value and the file), 3 an internal error
    (a bug: one line, and the traceback with --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:2] == ["evaluate", "training"]:  # the training family's flags are its own (tierplan.cli_training)
        args = _evaluate_training_parser().parse_args(argv[2:])
        args.command, args.sub = "evaluate", "training"
    else:
        args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    try:
        _validate_counts(args)
        _check_outputs(args)
        return args.func(args)
    except ValueError as err:
        # Our packages' errors (ProfileError, WorkloadError, PlanError, ReplayError) are clear
        # messages for the user; any other ValueError is a bug.
        if type(err).__module__.split(".")[0] not in OUR_PACKAGES:
            return _internal(err, debug)
        if debug:
            raise
        print(f"tierplan: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into head
        return 0
    except KeyboardInterrupt:
        print("tierplan: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a file we were told to read or write (outputs are checked before the work)
        if debug:
            raise
        print(f"tierplan: error: {err.strerror or err} ({err.filename or 'no file'})", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: say so in one line, never a traceback unless asked
        return _internal(err, debug)


def _internal(err: BaseException, debug: bool) -> int:
    if debug:
        raise err
    print(f"tierplan: internal error: {type(err).__name__}: {err} (a bug: rerun with --debug for the traceback "
          "and report it)", file=sys.stderr)
    return 3


# Outputs checked writable before any work starts: (command, flag) -> accepted suffixes (None: any);
# a sweep's -o and --plot are checked by cmd_sweep with their own suffixes.
_FILE_OUTPUTS = {("plan", "output"): (".json", ".yaml", ".yml"), ("profile", "output"): (".yaml", ".yml"),
                 ("export", "output"): None, ("export", "report"): (".json",)}
_FOLDER_OUTPUTS = {("replay", "report"), ("validate", "output")}


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written, before the work (not after a plan or a profile
    has run): files through the sweep's own check, a folder by its existing, writable parent."""
    import os

    from solver.sweep import check_output

    for (command, name), suffixes in _FILE_OUTPUTS.items():
        if args.command == command and getattr(args, name, None):
            check_output(getattr(args, name), suffixes=suffixes, what=f"--{name}")
    for command, name in _FOLDER_OUTPUTS:
        value = getattr(args, name, None) if args.command == command else None
        if not value:
            continue
        path = Path(value)
        target = path if path.exists() else (path.parent if str(path.parent) else Path("."))
        if not target.is_dir() or not os.access(target, os.W_OK):
            raise PlanError(f"--{name} {value!r}: the folder {str(target)!r} does not exist or is not writable")


if __name__ == "__main__":
    sys.exit(main())
