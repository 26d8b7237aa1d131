"""Fuzz every input kind through the real entry point, in process: CLI argument vectors, mutated
system and part YAML, mutated model config.json, truncated and corrupted plan files, and corrupted
sweep checkpoints. Each case runs ``tierplan.cli.main`` and must end in one of its answers:

- exit 0 (done) or 1 (answered "infeasible", or a sweep with failed points), with no error line;
- exit 2 (bad input) with exactly one line ``tierplan: error: ...`` (argparse's usage errors: its
  usage and one error line), never a traceback;
- never exit 3 (an internal error: a bug), never an exception out of ``main``;
- within a bound (:data:`CASE_BOUND_S`, far above any real case: it catches runaway work, it does
  not measure speed).

Classes of bad input the issue named, and the answer each now gets (asserted below):

=====================================================  =============================================
input                                                  answer
=====================================================  =============================================
``--gen 1000000000``, ``--batch 9223372036854775808``  exit 2: "must be at most ... TIERPLAN_LIMITS"
YAML anchors/aliases (the alias bomb)                  exit 2: refused before expansion
``num_key_value_heads: -8`` / ``0``, ``head_dim: 64.5``  exit 2: "must be a positive integer"
``--dtype-bytes 3``                                     exit 2 (argparse: invalid choice)
``evaluate plan.json --batch 1``                        exit 2: "would be ignored"
``-o a.parquet --resume b.parquet``                     exit 2: "name different files"
``replay --layers 100`` on 32 layers                    exit 2: "must be at most the plan's 32 layers"
output into a missing folder                            exit 2, before any work
binary / non-UTF-8 / a folder given as YAML or JSON     exit 2 naming the file
a truncated plan, a plan of another kind                exit 2: PlanError naming the field
``--time-limit 1e-6``                                   exit 2: "between 0.01 and 3600"
=====================================================  =============================================
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierplan.cli import main

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_YAML = ROOT / "hwprofiles" / "data" / "gpus" / "a100-40gb.yaml"
LINK_YAML = ROOT / "hwprofiles" / "data" / "links" / "pcie4-x16.yaml"
HOST_YAML = ROOT / "hwprofiles" / "data" / "hosts" / "dgx-h100-gpu-share.yaml"  # with node_share
INTERCONNECT_YAML = ROOT / "hwprofiles" / "data" / "interconnects" / "nvswitch-h100.yaml"
CONFIG_JSON = ROOT / "costmodel" / "models" / "llama-3-8b.json"
CASE_BOUND_S = 30.0
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow], derandomize=True)


def run(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` as a user runs it: (exit code, stderr). argparse exits through SystemExit."""
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    took = time.perf_counter() - start
    assert took < CASE_BOUND_S, f"{argv} ran {took:.1f} s"
    return code, err.getvalue()


def check(argv: list[str], *, expect: tuple[int, ...] = (0, 1, 2)) -> tuple[int, str]:
    code, err = run(argv)
    assert "Traceback" not in err, (argv, err)
    assert code != 3, (argv, err)  # an internal error is a bug
    assert code in expect, (argv, code, err)
    if code == 2:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]
        assert len(errors) == 1, (argv, err)
        assert not any(line.startswith("  File ") for line in lines), (argv, err)
    return code, err


# ---------------------------------------------------------------------------------------------- CLI argv

SMALL = ["--model", "gpt2", "--hw", "t4", "--prompt", "64", "--gen", "8", "--batch", "4"]
EMB_SMALL = ["--hw", "t4", "--batch", "512"]
COMMANDS = [["plan", "kv"], ["evaluate", "kv", "--policy", "kv-offload"], ["evaluate", "kv", "--policy", "gpu-only"],
            ["evaluate", "kv", "--policy", "flexgen:50,50,0,100,100,0"], ["models", "show", "gpt2"],
            ["hw", "show", "t4"], ["plan", "embeddings", "--model", "criteo-kaggle", "--batch", "1024"],
            ["evaluate", "embeddings", "--policy", "torchrec-uvm-cache:0.2", "--model", "criteo-kaggle"],
            ["evaluate", "embeddings", "--policy", "colossalai-cache:0.01", "--runtime", "colossalai", "--model",
             "criteo-kaggle"]]
INTS = st.one_of(st.integers(-5, 300), st.sampled_from([0, -1, 2**31, 2**63, 10**9, 10**12]))
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", "nan", "inf", "-0", "1e9", "1.5", "0x10", "12GB/s",
                                                        "llama-9", "a100-41gb", "gpt2,", ",", "ü", "\x00"]))
FLAGS = {
    "--batch": INTS, "--prompt": INTS, "--gen": INTS, "--gpu-batch": INTS, "--gpu-batches": INTS,
    "--prefill-chunk": INTS, "--ranges": INTS, "--kv-groups": INTS, "--dtype-bytes": st.sampled_from([1, 2, 3, 4, 8]),
    "--kv-keep": st.sampled_from([0.0, -1.0, 0.5, 1.0, 2.0, float("nan")]), "--kv-dtype": st.sampled_from(
        ["fp8", "int4", "fp7", ""]), "--time-limit": st.sampled_from([1e-6, 0.0, -1.0, 0.5, 1e9]),
    "--model": st.sampled_from(["gpt2", "llama-9", "", "gpt2,", "/nonexistent/config.json", str(ROOT)]),
    "--hw": st.sampled_from(["t4", "a100-41gb", "", str(ROOT), "/dev/null"]),
    "--set": st.sampled_from(["link.h2d=12GB/s", "link.h2d=12", "link.h2d=-3GB/s", "gpu.memory=0GiB",
                              "nothing=1", "link=pcie9", "host.memory=1e400GiB", "gpu.reserved_memory=100GiB"]),
    "--objective": st.sampled_from(["latency", "throughput", "speed"]),
    "--policy": st.sampled_from(["kvpr", "flexgen:1,2", "flexgen:200,0,0,0,0,0", "nope", "colossalai-cache:2",
                                 "colossalai-cache:-0", "uvm", "fae:1"]),
    "--runtime": st.sampled_from(["colossalai", "fbgemm", "torchrec", ""]),
    "--optimizer": st.sampled_from(["sgd", "adam", "rowwise-adagrad", "lamb"]),
    "-o": st.sampled_from(["/nonexistent/x.json", "/tmp", "/tmp/tierplan-fuzz.json", "/tmp/x.txt"]),
}


@settings(FUZZ, max_examples=400)
@given(command=st.sampled_from(COMMANDS), extra=st.lists(st.tuples(st.sampled_from(sorted(FLAGS)), st.data()),
                                                          max_size=3), junk=st.lists(TEXT, max_size=2))
def test_cli_argument_vectors(command, extra, junk):
    argv = list(command)
    if command[0] in ("plan", "evaluate"):
        argv += EMB_SMALL if "embeddings" in command else SMALL
    for flag, data in extra:
        argv += [flag, str(data.draw(FLAGS[flag]))]
    argv += junk
    check(argv)


TRAIN_COMMANDS = [["evaluate", "training", "--policy", "zero-offload+full-recompute"],
                  ["evaluate", "training", "--policy", "twin-flow:0.5", "--zero-stage", "3"],
                  ["evaluate", "training", "--policy", "zero-offload", "--no-grad-clip", "--pin-memory"],
                  ["plan", "training", "--time-limit", "2"]]
TRAIN_FLAGS = {
    "--seq": INTS, "--micro-batch": INTS, "--grad-accum": INTS, "--gpus": st.sampled_from([0, 1, 2, 8, 9, 65, -1]),
    "--zero-stage": st.sampled_from([0, 1, 2, 3, 4, -1]), "--interconnect": TEXT,
    "--precision": st.sampled_from(["fp16", "bf16", "fp8", ""]), "--optimizer": st.sampled_from(["adamw", "lamb"]),
    "--overlap": st.sampled_from(["none", "full", "deepspeed", "some"]),
    "--kernels": st.sampled_from(["eager", "fused", "triton", ""]),
    "--snapshot-every": st.sampled_from([0, 1, 10, -1, 2**70]),
    "--policy": st.sampled_from(["zero-offload", "twin-flow:2", "twin-flow:nan", "twin-flow", "a+b",
                                 "zero-offload+zero-infinity-cpu", "activation-offload:0.5", ""]),
    "--model": st.sampled_from(["gpt2", "llama-9", "", str(ROOT)]), "--hw": st.sampled_from(["t4", "a100-41gb", "h100-sxm", ""]),
    "--set": FLAGS["--set"],
}


@settings(FUZZ, max_examples=150)
@given(command=st.sampled_from(TRAIN_COMMANDS), extra=st.lists(st.tuples(st.sampled_from(sorted(TRAIN_FLAGS)), st.data()),
                                                                max_size=3), junk=st.lists(TEXT, max_size=1))
def test_training_argument_vectors(command, extra, junk):
    argv = list(command) + ["--model", "gpt2", "--hw", "t4", "--seq", "256"]
    for flag, data in extra:
        argv += [flag, str(data.draw(TRAIN_FLAGS[flag]))]
    check(argv + junk)


@pytest.mark.parametrize(("argv", "needle"), [
    (["plan", "kv", "--gen", "1000000000"], "at most"),
    (["plan", "kv", "--batch", "9223372036854775808"], "at most"),
    (["plan", "kv", "--time-limit", "1e-6"], "between 0.01 and 3600"),
    (["plan", "kv", "--dtype-bytes", "3"], "invalid choice"),
    (["plan", "kv", "-o", "/nonexistent/x.json"], "does not exist"),
    (["sweep", "kv", "-o", "/tmp/a.csv", "--resume", "/tmp/b.csv"], "different files"),
    (["evaluate", "kv", "--policy", "kv-offload", "--kv-keep", "0"], "kv_keep"),
    (["plan", "kv", "--ranges", "100000"], "at most 64"),
    (["sweep", "kv", "--workers", "100000"], "at most 256"),
    (["sweep", "kv", "--snapshot-every", "5"], "options of sweep training"),
    (["sweep", "embeddings", "--kernels", "fused"], "not options of sweep embeddings"),
    (["sweep", "training", "--snapshot-every", "-3"], "--snapshot-every must be 0 or a positive integer"),
    (["sweep", "training", "--kernels", "triton"], "invalid choice"),
    (["sweep", "training", "--hw", "rtx4090", "--gpus", "2"], "has no interconnect"),
])
def test_named_bad_arguments_get_their_answer(argv, needle):
    code, err = check(argv, expect=(2,))
    assert needle in err, err


# ---------------------------------------------------------------------------------------------- files

def _mutate_text(text: str, rng: random.Random) -> str | bytes:
    kind = rng.randrange(7)
    lines = text.splitlines()
    if kind == 0:  # truncate anywhere
        return text[: rng.randrange(len(text) + 1)]
    if kind == 1:  # drop a line
        lines.pop(rng.randrange(len(lines)))
    elif kind == 2:  # replace a quoted value
        i = rng.randrange(len(lines))
        lines[i] = lines[i].split(":")[0] + ": " + rng.choice(['"-3 GB/s"', '"12"', "12", '"1e400 GB/s"', "[]", "{}",
                                                                 "null", '"ü GB/s"', '"&a"', "*a", '"0 GiB"'])
    elif kind == 3:  # an alias bomb
        return "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n" + text
    elif kind == 4:  # binary
        return bytes(rng.randrange(256) for _ in range(64)) + text.encode()
    elif kind == 5:  # not UTF-8
        return text.encode("utf-16")
    else:  # an unknown field
        lines.insert(rng.randrange(len(lines) + 1), "surprise: 1")
    return "\n".join(lines) + "\n"


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


PART_YAMLS = {"gpu": SYSTEM_YAML, "link": LINK_YAML, "host": HOST_YAML, "interconnect": INTERCONNECT_YAML}


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(sorted(PART_YAMLS)))
def test_mutated_part_yaml(tmp_path, seed, kind):
    rng = random.Random(seed)
    which = PART_YAMLS[kind]
    text = which.read_text()
    if kind == "host":  # with the optional measured CPU optimizer rate, which a training step reads
        text += 'optimizer_bandwidth: {value: "30 GB/s", source: measured, ref: "fuzz input"}\n'
    if kind == "link":  # with the optional uplink share, which a data-parallel training evaluation reads
        text += 'uplink_share: {value: "50 %", source: estimate, ref: "fuzz input"}\n'
    part = _write(tmp_path / which.name, _mutate_text(text, rng))
    parts = {"gpu": "a100-40gb", "host": "workstation-7950x-128gb", "link": "pcie4-x16",
             "interconnect": "nvswitch-a100", kind: part}
    system = _write(tmp_path / "system.yaml", "kind: system\nname: fuzz\ndescription: x\n"
                    + "".join(f"{k}: {v}\n" for k, v in parts.items()))
    check(["hw", "show", str(system)])
    if kind in ("host", "link", "interconnect"):  # what reads them: a data-parallel training evaluation
        check(["evaluate", "training", "--policy", "zero-offload", "--model", "gpt2", "--seq", "256",
               "--hw", str(system), "--gpus", "4"])


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_model_config(tmp_path, seed):
    rng = random.Random(seed)
    cfg = json.loads(CONFIG_JSON.read_text())
    if rng.random() < 0.6:
        key = rng.choice(sorted(cfg))
        cfg[key] = rng.choice([-8, 0, 64.5, "32", None, [], {}, True, 2**70, -1.5, "ü"])
        content: str | bytes = json.dumps(cfg)
    else:
        content = _mutate_text(json.dumps(cfg, indent=1), rng)
    path = _write(tmp_path / "config.json", content)
    check(["models", "show", str(path)])
    check(["evaluate", "kv", "--policy", "gpu-only", "--model", str(path), "--hw", "h100-sxm", "--prompt", "64",
           "--gen", "4", "--batch", "1"])


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    code, err = run(["plan", "kv", *SMALL, "-o", str(path)])
    assert code == 0, err
    return path


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_truncated_and_corrupted_plans(tmp_path, plan_file, seed):
    rng = random.Random(seed)
    text = plan_file.read_text()
    if rng.random() < 0.5:
        data = json.loads(text)
        target = rng.choice(["workload", "units", "extras", "hardware", "kind", "schema_version", "layer"])
        if target == "layer":
            entry = data["units"][rng.randrange(len(data["units"]))]
            entry[rng.choice(sorted(entry))] = rng.choice([None, "x", -1, {}, []])
        elif target == "kind":
            data["kind"] = rng.choice(["training", "embeddings", 3, None])
        elif isinstance(data[target], dict) and data[target]:
            data[target].pop(rng.choice(sorted(data[target])))
        else:
            data[target] = rng.choice([None, "x", [], {}])
        content: str | bytes = json.dumps(data)
    else:
        content = _mutate_text(text, rng)
    path = _write(tmp_path / "plan.json", content)
    check(["evaluate", str(path)])
    check(["evaluate", str(path), "--hw", "a100-40gb"])


@pytest.fixture(scope="module")
def embeddings_plan_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "emb.json"
    code, err = run(["plan", "embeddings", "--model", "criteo-kaggle", "--batch", "1024", "--set", "gpu.memory=2GiB",
                     "-o", str(path)])
    assert code == 0, err
    return path


def _corrupted_plan(text: str, rng: random.Random, *, unit_values: list, other_kinds: list,
                    field_values: list) -> str | bytes:
    """A plan file's text with one field of a family's plan broken (a unit's field, the kind, a
    section's key dropped or given a bad value, a section replaced), or the text itself mutated."""
    if rng.random() >= 0.6:
        return _mutate_text(text, rng)
    data = json.loads(text)
    target = rng.choice(["workload", "units", "extras", "hardware", "kind", "unit", "unit"])
    if target == "unit":
        entry = data["units"][rng.randrange(len(data["units"]))]
        entry[rng.choice(sorted(entry))] = rng.choice(unit_values)
    elif target == "kind":
        data["kind"] = rng.choice(other_kinds)
    elif isinstance(data[target], dict) and data[target]:
        key = rng.choice(sorted(data[target]))
        if rng.random() < 0.5:
            data[target].pop(key)
        else:
            data[target][key] = rng.choice(field_values)
    else:
        data[target] = rng.choice([None, "x", [], {}])
    return json.dumps(data)


@settings(FUZZ, max_examples=120)
@given(seed=st.integers(0, 2**32 - 1))
def test_truncated_and_corrupted_embeddings_plans(tmp_path, embeddings_plan_file, seed):
    content = _corrupted_plan(embeddings_plan_file.read_text(), random.Random(seed),
                              unit_values=[None, "x", -1, 2**70, {}, [], True, "cpu", 0.5],
                              other_kinds=["kv", "training", 3, None],
                              field_values=[None, "x", -1, 0, 2**70, [], {}, True, "colossalai"])
    path = _write(tmp_path / "emb.json", content)
    check(["evaluate", str(path)])
    check(["export", "torchrec", str(path)])


@pytest.fixture(scope="module")
def training_plan_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "train.json"
    code, err = run(["plan", "training", "--model", "gpt2", "--hw", "t4", "--seq", "256", "--micro-batch", "2",
                     "-o", str(path)])
    assert code == 0, err
    return path


@settings(FUZZ, max_examples=120)
@given(seed=st.integers(0, 2**32 - 1))
def test_truncated_and_corrupted_training_plans(tmp_path, training_plan_file, seed):
    content = _corrupted_plan(training_plan_file.read_text(), random.Random(seed),
                              unit_values=[None, "x", -1, 2**70, {}, [], True, "disk", "cpu", 1.5],
                              other_kinds=["kv", "embeddings", 3, None],
                              field_values=[None, "x", -1, 0, 2**70, [], {}, True, 7])
    path = _write(tmp_path / "train.json", content)
    check(["evaluate", str(path)])
    check(["export", "deepspeed", str(path)])


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary", "\udcff".encode("utf-8", "surrogatepass"), b""])
@pytest.mark.parametrize("command", [["hw", "show"], ["models", "show"], ["evaluate"], ["replay"], ["export", "torchrec"],
                                     ["export", "deepspeed"]])
def test_binary_empty_and_non_utf8_files_name_the_file(tmp_path, content, command):
    path = _write(tmp_path / ("x.json" if command[0] != "hw" else "x.yaml"), content)
    code, err = check([*command, str(path)], expect=(2,))
    assert str(path) in err or path.name in err, err


@pytest.mark.parametrize("command", [["hw", "show"], ["models", "show"], ["evaluate"]])
def test_a_folder_given_as_a_file_is_refused(tmp_path, command):
    code, err = check([*command, str(tmp_path)], expect=(2,))
    assert str(tmp_path) in err, err


def test_evaluating_a_plan_refuses_flags_it_would_ignore(plan_file):
    for flags in (["--batch", "1"], ["--prompt", "100"], ["--dtype-bytes", "4"], ["--policy", "kvpr"]):
        code, err = check(["evaluate", str(plan_file), *flags], expect=(2,))
        assert "would be ignored" in err


def test_replay_bounds_are_checked_before_any_work(plan_file):
    pytest.importorskip("torch")
    code, err = check(["replay", str(plan_file), "--layers", "100"], expect=(2,))
    assert "at most the plan's" in err
    code, err = check(["replay", str(plan_file), "--steps", "1000"], expect=(2,))
    assert "at most the plan's" in err


def test_version_and_debug():
    code, _ = run(["--version"])
    assert code == 0
    code, err = run(["plan", "kv", "--gen", "-1"])
    assert code == 2 and "Traceback" not in err
    with pytest.raises(ValueError):
        main(["plan", "kv", "--gen", "-1", "--debug"])


SWEEP = ["sweep", "kv", "--model", "gpt2", "--hw", "t4", "--prompt", "64,128", "--batch", "4", "--gen", "8",
         "--workers", "1"]


@pytest.fixture(scope="module")
def sweep_checkpoint(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "study.csv"
    code, err = run([*SWEEP, "-o", str(out)])
    assert code == 0, err
    return (folder / "study.csv.partial.jsonl").read_text()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), skip=st.booleans())
def test_corrupted_sweep_checkpoints(tmp_path, sweep_checkpoint, seed, skip):
    rng = random.Random(seed)
    out = tmp_path / "study.csv"
    content = _mutate_text(sweep_checkpoint, rng)
    _write(tmp_path / "study.csv.partial.jsonl", content)
    code, err = check([*SWEEP, "--resume", str(out), *(["--skip-corrupt"] if skip else [])])
    if code == 0:  # resumed: every point of the grid is in the table
        assert len(out.read_text().strip().splitlines()) == 3


REC_YAML = ROOT / "costmodel" / "recmodels" / "criteo-kaggle.yaml"


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_recommendation_model_specs(tmp_path, seed):
    # The embeddings family's input: a DLRM-style spec (tables, MLPs, interaction, optimizers).
    rng = random.Random(seed)
    path = _write(tmp_path / "my-dlrm.yaml", _mutate_text(REC_YAML.read_text(), rng))
    check(["models", "show", str(path)])


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), suffix=st.sampled_from([".npy", ".csv", ".parquet"]))
def test_corrupted_access_distribution_files(tmp_path, seed, suffix):
    # A spec's tables may read their access counts (histogram) or ids (trace) from a file.
    import numpy as np

    rng = random.Random(seed)
    data = tmp_path / f"data{suffix}"
    values = np.array([rng.randrange(-2, 50) for _ in range(rng.randrange(0, 8))])
    if suffix == ".npy":
        np.save(data, values)
        raw = data.read_bytes()
        _write(data, raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.5 else raw)
    elif suffix == ".csv":
        _write(data, _mutate_text("\n".join(map(str, values)) + "\n", rng) if len(values) else "")
    else:
        _write(data, bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
    kind = rng.choice(["histogram", "trace"])
    spec = REC_YAML.read_text().split("\ntables:\n")[0] + (
        f"\ntables:\n  - {{name: t, rows: 40, access: {{kind: {kind}, file: {data.name}}}}}\n")
    check(["models", "show", str(_write(tmp_path / "spec.yaml", spec))])
