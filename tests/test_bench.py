"""Benchmark tooling: the guarded child processes, the lookup variants computing what the
shipped layer computes, the commands' help, and the tf2onnx memory workaround leaving
tf2onnx as it found it."""

import argparse
import ast
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import guard, int8, latency, ops, profile, train_step, variants
from clade_tf import Generator, GeneratorConfig
from clade_tf.export import converters, example_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # child processes (pytest.ini)
def test_benchmark_memory_guard_kills_a_child_that_outgrows_the_limit():
    # The child grows to ~300 MB and then holds it: the guard must see it above 200 MB
    # whatever the scheduling, and the peak cannot exceed what the child allocates.
    grow = ("import time\nblocks = []\nfor _ in range(15):\n    b = bytearray(20 * 2**20)\n"
            "    b[::4096] = b'x' * len(b[::4096])\n    blocks.append(b)\n    time.sleep(0.02)\n"
            "time.sleep(60)\nprint('survived')\n")
    t = time.monotonic()
    rc, out, _, peak, killed = guard.run_guarded(grow, limit_mb=200)
    assert killed and rc != 0 and "survived" not in out
    assert 200 < peak < 450
    assert time.monotonic() - t < 30
    rc, out, _, peak, killed = guard.run_guarded("print('small')", limit_mb=200)
    assert not killed and rc == 0 and out.strip() == "small"


@pytest.mark.slow  # child processes (pytest.ini)
def test_call_guarded_returns_the_result_or_a_one_line_reason():
    total, error, _ = guard.call_guarded("benchmarks.guard", "memory_total_mb", (), 2000)
    assert error is None and total > 100
    result, error, _ = guard.call_guarded("benchmarks.guard", "no_such_function", (), 2000)
    assert result is None and "no_such_function" in error and "\n" not in error


@pytest.mark.slow  # child processes (pytest.ini)
def test_a_terminated_benchmark_takes_its_child_with_it():
    code = ("from benchmarks.guard import exit_on_sigterm, run_guarded; exit_on_sigterm(); "
            "run_guarded('import time; time.sleep(60)', 1000)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        children = []
        deadline = time.monotonic() + 20
        while not children and time.monotonic() < deadline:  # wait for the guarded child to start
            time.sleep(0.05)
            with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as f:
                children = [int(c) for c in f.read().split()]
        assert children, "the guarded child never started"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 143
        assert not os.path.exists(f"/proc/{children[0]}")  # killed and reaped by the parent
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.slow  # child processes (pytest.ini)
def test_timing_children_do_not_import_tensorflow():
    """The peak memory reported for LiteRT / onnxruntime is the timing process's own:
    loading the runner must not import TensorFlow."""
    code = ("import sys\nfrom benchmarks.common import load_runner\n"
            "try:\n    load_runner('missing.tflite')\nexcept ValueError as e:\n    print(e)\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["missing.tflite not found", "False False"]


# betas rewrites the shortcut, which reads the instance-edge channel too
@pytest.mark.parametrize("variant, use_instance", [(v, False) for v in variants.VARIANTS] + [("betas", True)])
def test_lookup_variants_equal_the_folded_generator(variant, use_instance):
    cfg = GeneratorConfig(num_classes=7, image_height=32, image_width=32, ngf=4, param_free_norm="batch",
                          use_instance=use_instance)
    g = Generator(cfg)
    x = {k: tf.constant(v) for k, v in example_inputs(cfg, 2, seed=0)[0].items()}
    g(x, training=True)  # BatchNorm statistics to fold
    ref = g.features(x, training=False).numpy()
    fn, names = variants.trace_variant(g, variant)
    out = fn(*[x[n][:1] for n in names])["image"].numpy()
    want = np.tanh(ref[:1])
    assert np.abs(out - want).max() < 1e-4 * max(1.0, np.abs(want).max())
    # the variant really changed the graph (different op counts), except the baseline
    ops_ = {op.type for op in fn.get_concrete_function().graph.get_operations()}
    assert ("Split" in ops_ or "SplitV" in ops_) == (variant in ("fused", "shared"))
    assert ("MatMul" in ops_) == (variant == "betas")
    assert ("DepthwiseConv2dNative" in ops_) == (variant == "nchwc")
    # each lookup waits for its layer's input, except in `hoisted` (`shared` looks up apart)
    if variant != "shared":
        assert ("Greater" in ops_) == (variant != "hoisted")


def test_single_format_variants_are_built_and_timed_in_that_format_only():
    assert variants.variant_formats("nchwc", ["tflite-fp32", "onnx"]) == ["onnx"]
    assert variants.variant_formats("nchwc", ["tflite-fp32"]) == []
    assert variants.variant_formats("hoisted", ["tflite-fp32", "onnx"]) == ["tflite-fp32"]
    assert variants.variant_formats("base", ["tflite-fp32", "onnx"]) == ["tflite-fp32", "onnx"]


def test_time_pair_alternates_two_models_in_one_process(tmp_path, monkeypatch):
    from benchmarks import common

    calls = []

    def load_runner(path, threads=None):
        return lambda data: calls.append((path, int(data["label"][0, 0, 0])))

    monkeypatch.setattr(common, "load_runner", load_runner)
    npzs = []
    for i in range(2):
        npzs.append(str(tmp_path / f"{i}.npz"))
        np.savez(npzs[-1], label=np.full((1, 2, 2), i, np.int32))
    r = common.time_pair(["a.tflite", "b.tflite"], npzs, 2, pairs=4, warmup=1)
    # the warm-up calls each once, then AB, BA, AB, BA, each model with its own inputs
    assert calls == [("a.tflite", 0), ("b.tflite", 1)] + [
        ("a.tflite", 0), ("b.tflite", 1), ("b.tflite", 1), ("a.tflite", 0)] * 2
    assert r["pairs"] == 4 and len(r["median_ms"]) == 2
    assert r["quartiles"][0] <= r["ratio"] <= r["quartiles"][1]


def test_variant_pairs_are_tabulated_with_errors_named():
    result = {"variants": {"none": {"onnx": {"paired_to_base": {"error": "killed above 100 MB"}}},
                           "nchwc": {"onnx": {"paired_to_base": {"ratio": 1.0412, "quartiles": [0.99, 1.1],
                                                                 "pairs": 20}}}}}
    lines = variants.format_pairs(result)
    assert "killed above 100 MB" in lines[0]
    assert "nchwc" in lines[1] and "x1.041 (quartiles 0.990-1.100, 20 pairs)" in lines[1]


def test_variant_profiles_are_tabulated_per_format_with_errors_named():
    result = {"formats": ["tflite-fp32", "onnx"], "variants": {
        "none": {"onnx": {"profile": {"median_ms": 9.0, "ops": {"Conv": {"ms": 8.0, "nodes": 3}}}},
                 "tflite-fp32": {"profile": {"error": "perf is not installed; no TFLite per-op profile"}}},
        "nchwc": {"onnx": {"profile": {"median_ms": 11.0, "ops": {"Conv": {"ms": 9.5, "nodes": 5},
                                                                  "ReorderInput": {"ms": 1.25, "nodes": 2}}}}},
    }}
    lines = variants.format_profiles(result)
    assert any("none: perf is not installed" in line for line in lines)
    conv = next(line for line in lines if line.split()[0] == "Conv")
    reorder = next(line for line in lines if line.split()[0] == "ReorderInput")
    assert conv.split()[1:] == ["8.00", "9.50"] and reorder.split()[1:] == ["0.00", "1.25"]


@pytest.mark.parametrize("module", [int8, latency, ops, profile, train_step, variants])
def test_every_option_has_a_help_text_and_shows_its_default(module, capsys):
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    text = capsys.readouterr().out
    options = text[text.index("options:"):]
    # one entry per option: its flags line up to the next entry
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert entries
    for entry in entries:
        if entry.startswith("-h"):
            continue
        assert "(default:" in entry, entry


APPLICATIONS = ("train", "export", "evaluate", "benchmarks")
# code in a string: an import statement at the start of a line or after ";" (for f-string
# pieces that do not parse on their own)
_CODE_IMPORT = re.compile(r"(?:^|[;\n])[ \t]*(?:from\s+([A-Za-z_][\w.]*)\s+import\b|import\s+([A-Za-z_][\w.]*))")
# a command in a string: "-m NAME" opening it, alone or after the interpreter ("python -m export
# ...", f"{sys.executable} -m export ..."); "-m" inside a sentence is prose naming a command
_RUN_MODULE = re.compile(r"^\s*(?:[\w./\\-]*python[\d.]*\s+)?-m\s+([A-Za-z_][\w.]*)")


def _docstrings(tree):
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return docs


def _modules_in_string(text):
    try:
        code = ast.parse(text)
    except (SyntaxError, ValueError):
        code = None
    if code is not None and any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(code)):
        names = [name for _, name in _modules_used(code)]
    else:
        names = [a or b for a, b in _CODE_IMPORT.findall(text)]
    return names + _RUN_MODULE.findall(text)


def _modules_used(tree):
    """(line, module) for every module a parsed file imports or runs: import statements at any
    depth, importlib.import_module / __import__ / runpy.run_module of a constant name, command
    lists with "-m", NAME, and code or commands inside string constants (docstrings aside)."""
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module] if node.level == 0 and node.module else []
        elif isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            first = node.args[0] if node.args else None
            if func in ("import_module", "__import__", "run_module") and isinstance(first, ast.Constant) \
                    and isinstance(first.value, str):
                names = [first.value]
        elif isinstance(node, (ast.List, ast.Tuple)):
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            names = [b for a, b in itertools.pairwise(items) if a == "-m" and isinstance(b, str)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            names = _modules_in_string(node.value)
        found += [(getattr(node, "lineno", 0), name) for name in names]
    return found


def applications_used(path):
    """Sorted (line, application) pairs of the applications a .py file imports or runs."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    return sorted({(line, name.split(".")[0]) for line, name in _modules_used(tree)
                   if name.split(".")[0] in APPLICATIONS})


@pytest.mark.parametrize("folder", ["clade_tf", *APPLICATIONS])
def test_applications_import_only_the_library(folder):
    """The library imports no application; each application only the library (and itself),
    also not in a child process (code strings, `-m` command lines)."""
    bad = []
    for root, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                bad += [f"{os.path.relpath(path, ROOT)}:{line}: {app}" for line, app in applications_used(path)
                        if app != folder]
    assert not bad, bad


def test_the_import_rule_catches_an_application_in_a_code_string(tmp_path):
    """The checker sees applications imported or run however a file does it, and not the
    commands a message or docstring names."""
    path = tmp_path / "offender.py"
    path.write_text(textwrap.dedent('''
        """Run with python -m export afterwards."""
        import subprocess
        import sys


        def child(argv):
            """Exports in a child: from export import main."""
            code = f"import sys; from export.__main__ import main; sys.exit(main({argv!r}))"
            subprocess.run([sys.executable, "-c", code])
            subprocess.run([sys.executable, "-m", "evaluate", "fid"])
            subprocess.run(f"{sys.executable} -m train --steps 1", shell=True)
            exec("import benchmarks.guard")


        def lazily():
            import importlib

            return importlib.import_module("train.run")


        def message(run):
            return f"{run}: not a run directory of python -m train (or python -m export.from_torch)"
    '''))
    assert applications_used(path) == [(9, "export"), (11, "evaluate"), (12, "train"), (13, "benchmarks"),
                                       (19, "train")]
    path.write_text("import clade_tf\nCODE = 'from clade_tf.cli import exit_code'\n")
    assert applications_used(path) == []


def test_train_step_reports_each_mode_and_precision(monkeypatch):
    """Every (mode, precision) pair is a row; a pair that cannot be built or is not mixed
    precision reports one line and the others are still timed."""
    built = []

    def fake_build(preset, mode, precision, batch_size, xla=False):
        built.append((mode, precision))
        if precision == "float16":
            raise RuntimeError("not mixed precision: 3 of 3 conv/dense layers compute in float32")
        return (lambda batch: {"G_total": tf.constant(1.0)}), {}, {"dtype_policy": precision}

    monkeypatch.setattr(train_step, "build", fake_build)
    args = train_step.parse_args(["--modes", "clade,spade", "--precisions", "float32,float16",
                                  "--steps", "1", "--rounds", "2", "--warmup", "1"])
    result = train_step.bench_train(args)
    rows = {(r["mode"], r["precision"]): r for r in result["rows"]}
    assert list(rows) == built == [("clade", "float32"), ("clade", "float16"),
                                   ("spade", "float32"), ("spade", "float16")]
    assert rows[("clade", "float32")]["time_vs_first"] == 1.0
    assert len(rows[("spade", "float32")]["round_seconds_per_step"]) == 2
    assert rows[("spade", "float16")]["error"].startswith("RuntimeError: not mixed precision")
    table = train_step.format_table(result)
    assert "ours     spade       float16       failed: RuntimeError: not mixed precision" in table
    args = train_step.parse_args(["--modes", "clade", "--xla", "both", "--steps", "1", "--rounds", "1",
                                  "--warmup", "0"])
    rows = train_step.bench_train(args)["rows"]
    assert [(r["mode"], r["xla"]) for r in rows] == [("clade", False), ("clade", True)]
    assert "ours     clade       float32   xla" in train_step.format_table({**result, "rows": rows})


def test_official_step_options_follow_the_run_configuration(tmp_path, capsys):
    """The official trainer gets the same sizes, classes, widths and inputs as our rows."""
    from clade_tf.presets import get_preset

    opts = train_step.official_options(get_preset("ade20k").run_config("clade"), 1)
    given = dict(zip(opts[::2], opts[1::2]))
    assert (given["--label_nc"], given["--crop_size"], given["--ngf"], given["--ndf"], given["--num_D"],
            given["--n_layers_D"], given["--norm_mode"]) == ("150", "256", "64", "64", "2", "4", "clade")
    assert {"--contain_dontcare_label", "--no_instance", "--no_vgg_loss"} <= set(opts)
    opts = train_step.official_options(get_preset("synthetic").run_config("clade-icpe"), 8)
    assert "--add_dist" in opts and "--no_instance" not in opts and "--contain_dontcare_label" not in opts
    assert opts[opts.index("--batchSize") + 1] == "8" and opts[opts.index("--ngf") + 1] == "16"
    with pytest.raises(ValueError, match="no none"):
        train_step.official_options(get_preset("synthetic").run_config("none"), 1)
    for argv, msg in [(["--official", str(tmp_path)], "--official needs --torch-python"),
                      (["--official", str(tmp_path), "--torch-python", "python"], "expected a copy of"),
                      (["--preset", "ade20k,nope"], "--preset ade20k,nope: expected some of")]:
        with pytest.raises(SystemExit):
            train_step.parse_args(argv)
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        int8.parse_args(["--run", str(tmp_path)])
    assert "not a run directory (no config.json)" in capsys.readouterr().err
    for argv, msg in [(["--official", str(tmp_path)], "--official needs --torch-python"),
                      (["--official", str(tmp_path), "--torch-python", "python"], "expected a copy of")]:
        with pytest.raises(SystemExit):
            latency.parse_args(argv)
        assert msg in capsys.readouterr().err


def test_mixed_precision_check_reads_the_layers_not_the_model_policy():
    """A GAN whose networks carry a mixed policy but whose layers compute in float32 is
    not mixed precision (Keras gives a layer's policy to that layer only)."""
    from clade_tf.config import OptimConfig
    from clade_tf.gan import build_gan
    from clade_tf.presets import get_preset

    cfg = get_preset("synthetic").run_config("clade", optim=OptimConfig(batch_size=1, mixed_precision="bfloat16"))
    gan = build_gan(cfg)
    error, in_f32 = train_step.precision_check(gan, "bfloat16")
    convs = [layer for net in (gan.generator, gan.discriminator) for layer in net._flatten_layers(include_self=False)
             if getattr(layer, "kernel", None) is not None]
    n_f32 = sum(layer.compute_dtype != "bfloat16" for layer in convs)
    assert len(in_f32) == n_f32
    assert (error is not None) == (2 * n_f32 > len(convs))
    assert train_step.precision_check(gan, "float32") == (None, [])


def test_lean_tf2onnx_restores_tf2onnx():
    import tf2onnx.graph

    before = tf2onnx.graph.Node.update_proto
    env = os.environ.get("TF2ONNX_CATCH_ERRORS")
    with converters.lean_tf2onnx():
        assert tf2onnx.graph.Node.update_proto is converters._update_node_proto
        assert "TF2ONNX_CATCH_ERRORS" in os.environ
    assert tf2onnx.graph.Node.update_proto is before
    assert os.environ.get("TF2ONNX_CATCH_ERRORS") == env


def test_train_step_errors_are_one_line_with_their_cause():
    traced = ValueError(
        'in user code:\n\n    File "/x/clade_tf/gan.py", line 192, in train_step  *\n'
        '        self.g_optimizer.apply_gradients(zip(grads, g_vars))\n'
        '    File "/x/keras/ops/core.py", line 1130, in cond\n        return Cond()(pred, true_fn, false_fn)\n\n'
        '    ValueError: Exception encountered when calling Cond.call().\n    \n'
        '    \x1b[1mNo gradients provided for any variable.\x1b[0m\n    \n    Arguments received by Cond.call():\n')
    line = train_step.one_line(traced)
    assert line.startswith("ValueError: No gradients provided for any variable. (in train_step, ")
    assert line.endswith("clade_tf/gan.py:192)") and "\n" not in line
    assert train_step.one_line(RuntimeError("not mixed\nprecision")) == "RuntimeError: not mixed"


def test_ops_says_so_in_one_line_when_perf_is_missing(monkeypatch):
    monkeypatch.setattr(ops.shutil, "which", lambda name: None)
    result = {"preset": "p", "threads": 2,
              "modes": {"clade": {"onnx": {"error": "e"},
                                  "tflite-fp32": ops.tflite_op_profile("m.tflite", "i.npz", 2, 1, 1)}}}
    assert result["modes"]["clade"]["tflite-fp32"] == {"error": "perf is not installed; no TFLite per-op profile"}
    assert "  clade: perf is not installed; no TFLite per-op profile" in ops.format_table(result).splitlines()


def test_latency_table_and_plot_show_every_row(tmp_path):
    rows = [{"norm": n, "format": "onnx", "params": 10, "macs": 100, "size_bytes": 2e6, "median_ms": ms,
             "peak_rss_mb": 50.0, "export_peak_rss_mb": 900.0, "round_ms": [ms], "ratio_to_none": ms / 4.0}
            for n, ms in (("none", 4.0), ("clade", 5.0))]
    rows.append({"norm": "spade", "format": "onnx", "params": None, "macs": None, "size_bytes": None,
                 "median_ms": None, "peak_rss_mb": 3000.0, "export_peak_rss_mb": 9000.0, "round_ms": [],
                 "ratio_to_none": None, "error": "killed: resident memory above 2000 MB; peak seen 2001 MB"})
    result = {"preset": "synthetic", "threads": 2, "machine": "m", "results": rows}
    table = latency.format_table(result).splitlines()
    assert table[3].split()[:7] == ["clade", "onnx", "10", "100", "2.0", "5.0", "1.25"]
    assert table[4].split()[:6] == ["spade", "onnx", "-", "-", "-", "failed"]
    assert table[-1] == "spade onnx: killed: resident memory above 2000 MB; peak seen 2001 MB"
    latency.plot_latency(result, str(tmp_path / "latency.png"))
    assert (tmp_path / "latency.png").stat().st_size > 0
    rows[1]["paired_to_none"] = {"ratio": 1.0312, "quartiles": [0.98, 1.07], "pairs": 10}
    rows[1]["paired_to_official"] = {"error": "killed"}
    assert latency.format_table(result).splitlines()[-1] == (
        "clade onnx, paired in one process: x none 1.031 (0.980-1.070); x official killed")


def test_latency_pairs_each_mode_with_none_and_its_official_model(monkeypatch):
    seen = []

    def call_guarded(module, name, args, limit):
        seen.append((name, args[0]))
        return {"ratio": 1.0, "quartiles": [1.0, 1.0], "pairs": args[3], "median_ms": [1, 1]}, None, 0.0

    monkeypatch.setattr(latency, "call_guarded", call_guarded)
    row = lambda n, f: {"norm": n, "format": f, "path": f"{n}.{f}", "npz": f"{n}.npz"}  # noqa: E731
    rows = {(n, f): row(n, f) for n in ("none", "clade") for f in ("onnx", "tflite-fp32")}
    rows[("clade", latency.OFFICIAL)] = row("clade", latency.OFFICIAL)
    rows[("none", "tflite-fp32")]["error"] = "export: failed"
    latency.pair_rows(rows, argparse.Namespace(threads=2, pairs=3, warmup=1), 100)
    assert seen == [("time_pair", ["none.onnx", "clade.onnx"]),
                    ("time_pair", ["clade.official-onnx", "clade.onnx"]),
                    ("time_pair", ["clade.official-onnx", "clade.tflite-fp32"])]
    assert rows[("clade", "onnx")]["paired_to_none"]["pairs"] == 3
    assert "paired_to_none" not in rows[("clade", "tflite-fp32")]  # its none failed


@pytest.mark.slow  # a child process exporting int8 (pytest.ini)
def test_int8_exports_a_run_through_the_library_in_its_child(tmp_path):
    import json

    from clade_tf.config import OptimConfig
    from clade_tf.export import runtime
    from clade_tf.gan import build_gan
    from clade_tf.rundir import RunDirectory
    from conftest import TINY

    cfg = TINY.run_config("clade", optim=OptimConfig(batch_size=4, steps=1), data={"synthetic_length": 16})
    run = RunDirectory(tmp_path / "run")
    run.write_config(cfg)
    run.save_checkpoint(build_gan(cfg), 1)
    args = int8.parse_args(["--run", run.path, "--calibration-samples", "4"])
    out = str(tmp_path / "export")
    code = int8.export_code(args, out, out + ".npz")
    assert "import export" not in code and "from export" not in code  # the library, not the application
    rc, _, err, _, killed = guard.run_guarded(code, limit_mb=guard.default_memory_limit_mb())
    assert rc == 0 and not killed, err
    assert all(os.path.isfile(os.path.join(out, runtime.FORMATS[f])) for f in int8.FORMATS)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["calibration"] == "run data (4 samples)"  # the run's data, as python -m export calibrates


def test_run_benchmark_prints_json_or_the_table_with_its_options(capsys):
    from benchmarks import common

    def parse_args(argv):
        p = argparse.ArgumentParser()
        p.add_argument("--markdown", action="store_true")
        common.add_json_flag(p)
        return p.parse_args(argv)

    def format_table(result, markdown=False):
        return f"{'|' if markdown else ''}n={result['n']}"

    bench = lambda args: {"n": 3}  # noqa: E731
    options = lambda args: {"markdown": args.markdown}  # noqa: E731
    assert common.run_benchmark(["--json"], parse_args, bench, format_table, options) == 0
    assert capsys.readouterr().out == '{"n": 3}\n'
    common.run_benchmark([], parse_args, bench, format_table, options)
    assert capsys.readouterr().out == "n=3\n"
    common.run_benchmark(["--markdown"], parse_args, bench, format_table, options)
    assert capsys.readouterr().out == "|n=3\n"
    # a preparation mode returns None: nothing to print
    common.run_benchmark([], parse_args, lambda args: None, format_table)
    assert capsys.readouterr().out == ""


def test_pipeline_table_names_each_measured_path():
    from benchmarks import pipeline

    r = {"images_per_second": 20.0, "images_per_second_per_core": 10.0, "cores": 2, "cache": True,
         "icpe": False, "batch_size": 4}
    single = pipeline.format_table({**r, "dataset": "ade20k", "machine": "m"})
    assert single.splitlines() == ["data pipeline, ade20k, batch 4, m",
                                   "prepared cache               20.0 images/s  (10.0 per core, 2 cores)"]
    both = pipeline.format_table({"dataset": "ade20k", "machine": "m", "paths": {"raw files": r, "raw files + ICPE": r}})
    assert [line.split("  ")[0].strip() for line in both.splitlines()[1:]] == ["raw files", "raw files + ICPE"]
