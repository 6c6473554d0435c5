"""The benchmarks run (timings themselves belong to bench/, not to CI), and the mnist source stays small."""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import EXAMPLES, ROOT

BENCH = os.path.join(ROOT, "bench")


def _bench_module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compile_width_bench_runs_for_widths_16_and_64(tmp_path):
    out = tmp_path / "rows.json"
    p = subprocess.run([sys.executable, os.path.join(BENCH, "compile_width.py"), "--widths", "16,64",
                        "--repeat", "1", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| width W |" in p.stdout and "\n| 16 |" in p.stdout and "\n| 64 |" in p.stdout
    import json
    rows = {r["width"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {16, 64}
    # nothing is unrolled per hidden unit: the two sources have the same number of lines
    assert rows[16]["c_lines"] == rows[64]["c_lines"]
    assert rows[64]["n_params"] == 64 * 32 + 64 + 10 * 64 + 10


def test_compile_width_check_flags_growth():
    cw = _bench_module("compile_width")
    row = lambda w, cpu, lines, nb: dict(width=w, cpu=cpu, c_lines=lines, c_norm_bytes=nb)  # noqa: E731
    ok = [row(16, 9.0, 500, 9000), row(64, 1.0, 300, 8000), row(256, 1.4, 300, 8000), row(1024, 1.5, 300, 7000)]
    assert cw.check(ok) == []
    assert len(cw.check(ok + [row(2048, 1.6, 300, 8000)])) == 1             # time over 1.5x
    assert len(cw.check(ok + [row(2048, 1.0, 301, 8000)])) == 1             # one more line
    assert len(cw.check(ok + [row(2048, 1.0, 300, 8001)])) == 1             # one more byte
    assert cw.check([row(16, 1.0, 300, 8000)]) != []                        # no reference width


def test_compile_width_rejects_widths_without_the_reference():
    p = subprocess.run([sys.executable, os.path.join(BENCH, "compile_width.py"), "--widths", "16,256"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode != 0 and "64" in p.stderr


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mnist_mlp_source_is_at_most_2000_lines(dtype):
    from gradc.api import load_model_file
    from gradc.autodiff import differentiate
    from gradc.codegen.c import render
    from gradc.ir import lower
    prog = lower(load_model_file(os.path.join(EXAMPLES, "mnist_mlp", "model.py")).spec())
    src = render(prog, differentiate(prog), dtype)
    lines = src.c.count("\n")
    assert lines <= 2000, f"mnist_mlp.c ({dtype}) has {lines} lines"
    assert src.h.count("\n") <= 230      # with the identity and model-info records


def test_compile_times_bench_formats_its_table():
    ct = _bench_module("compile_times")
    rows = [("a", 1.0, "s", 5.0, True), ("b", 2500, "lines", 2000, False)]
    t = ct.table(rows)
    assert "| a | 1.000 s | < 5 s | yes |" in t and "**NO**" in t


def _c_lines(path_or_text, width=None):
    from gradc.api import load_model_file
    from gradc.autodiff import differentiate
    from gradc.codegen.c import render
    from gradc.ir import lower
    path = path_or_text
    if width is not None:
        cw = _bench_module("compile_width")
        path = os.path.join(width[1], f"mlp{width[0]}.py")
        with open(path, "w") as f:
            f.write(cw.MODEL.format(d=cw.INPUT, w=width[0], k=cw.CLASSES))
    prog = lower(load_model_file(path).spec())
    return render(prog, differentiate(prog), "float64").c.count("\n")


def test_readme_line_counts_are_what_the_generator_writes(tmp_path):
    """The README's deterministic compile numbers (lines of C) are the generator's, not a stale copy."""
    import re
    readme = open(os.path.join(ROOT, "README.md")).read()
    mnist = int(re.search(r"mnist_mlp/model.py` \(784-256-10\), cold \| [\d.]+ s, ([\d,]+) lines of C", readme)
                .group(1).replace(",", ""))
    assert mnist == _c_lines(os.path.join(EXAMPLES, "mnist_mlp", "model.py"))
    widths = [int(w) for w in re.search(r"\| 32-W-10 MLP, width W \|([^\n]*)", readme).group(1).split("|") if w.strip()]
    lines = [int(v) for v in re.search(r"\| generated \.c \(lines\) \|([^\n]*)", readme).group(1).split("|") if v.strip()]
    assert lines == [_c_lines(None, (w, str(tmp_path))) for w in widths]


def test_readme_lbfgs_accuracies_are_what_the_bench_gives(tmp_path):
    """The README's L-BFGS comparisons: the seeded accuracies (and on the risk data, ROC AUCs) of
    gradc's runs are bench/lbfgs_compare.py's."""
    import re
    pytest.importorskip("sklearn")
    readme = open(os.path.join(ROOT, "README.md")).read()
    bench = _bench_module("lbfgs_compare")
    for label, acc, _ in bench.rows(("lbfgs", "lbfgs_l2", "adam"), tmp=str(tmp_path)):
        m = re.search(r"\| " + re.escape(label) + r" \| ([\d.]+)% \|", readme)
        assert m, f"the README has no row {label!r}"
        assert m.group(1) == f"{100 * acc:.1f}", (label, m.group(1), acc)
    for label, acc, auc, _ in bench.risk_rows(("lbfgs_logreg", "lbfgs_mlp", "adam")):
        m = re.search(r"\| " + re.escape(label) + r" \| ([\d.]+)% \| ([\d.]+) \|", readme)
        assert m, f"the README has no row {label!r}"
        assert (m.group(1), m.group(2)) == (f"{100 * acc:.1f}", f"{auc:.4f}"), (label, m.groups(), acc, auc)


def test_readme_scikit_learn_rows_are_what_the_bench_gives(tmp_path):
    """The peers' seeded accuracies (and AUCs) in the README's L-BFGS tables, for the scikit-learn
    the tests run with (the rows name the seeds)."""
    import re
    pytest.importorskip("sklearn")
    readme = open(os.path.join(ROOT, "README.md")).read()
    bench = _bench_module("lbfgs_compare")
    digits = [acc for label, acc, _ in bench.rows(("sklearn",))]
    m = re.search(r"\| scikit-learn MLPClassifier lbfgs, seeds 0 / 1 / 2 \| ([^|]*) \|", readme)
    assert m and m.group(1).strip() == " / ".join(f"{100 * a:.1f}%" for a in digits), (m and m.group(1), digits)
    risk = bench.risk_rows(("sklearn",))
    lr, mlps = risk[0], risk[1:]
    m = re.search(r"\| scikit-learn LogisticRegression lbfgs \| ([\d.]+)% \| ([\d.]+) \|", readme)
    assert m and (m.group(1), m.group(2)) == (f"{100 * lr[1]:.1f}", f"{lr[2]:.4f}"), (m and m.groups(), lr)
    m = re.search(r"\| scikit-learn MLPClassifier\(16\) lbfgs, seeds 0 / 1 / 2 \| ([^|]*) \| ([^|]*) \|", readme)
    assert m and m.group(1).strip() == " / ".join(f"{100 * r[1]:.1f}%" for r in mlps), (m and m.group(1), mlps)
    assert m.group(2).strip() == " / ".join(f"{r[2]:.4f}" for r in mlps), (m.group(2), mlps)


def test_workloads_bench_runs_w6_on_generated_data_with_its_float64_reference(tmp_path):
    """W6 (LeNet-5) without --data: the generated data carry float64 reference losses (from the numpy
    LeNet), which gradc's float64 module reproduces; numpy's float32 losses agree with gradc's."""
    import json
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, os.path.join(BENCH, "workloads.py"), "--workloads", "W6", "--peers", "numpy",
                        "--steps", "3", "--rounds", "1", "--warmup", "1", "--check-steps", "2", "--no-plot",
                        "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads((out / "workloads.json").read_text())
    (r,) = data["results"]
    assert r["id"] == "W6" and r["batch"] == 128 and r["n_params"] == 44426
    # GEMM-equivalent: forward MACs F per sample, 3F - conv1's over the step, 2 flops each, + 2 per parameter
    F = 24 * 24 * 6 * 25 + 8 * 8 * 16 * 150 + 256 * 120 + 120 * 84 + 84 * 10
    assert r["flops"] == 2 * 128 * (3 * F - 24 * 24 * 6 * 25) + 2 * 44426
    assert r["check"]["numpy"]["ok"], r["check"]
    assert set(r["ref_check"]) == {"gradc", "numpy"}
    for c in r["ref_check"].values():
        assert c["ok"] and c["steps"] == 10 and c["dtype"] == "float64" and c["max_abs"] <= 1e-10, c
    assert "Float64 trajectory against the reference" in p.stdout
    if hasattr(os, "sched_setaffinity"):
        assert data["meta"]["pinned"].startswith("pinned to core")


def test_scaling_bench_quick_runs_two_tiny_points_with_numpy(tmp_path):
    """bench/scaling.py --quick on two tiny MLP points (width 16 at batches 128 and 4, input 32), numpy
    the only peer, no LeNet, timed by CPU time: it writes scaling.md and scaling.json with both points
    timed and checked."""
    import json
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, os.path.join(BENCH, "scaling.py"), "--quick", "--peers", "numpy",
                        "--input", "32", "--widths", "16", "--batches", "4", "--batch-width", "16",
                        "--lenet-batches", "none", "--clock", "cpu", "--no-plot", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    md = (out / "scaling.md").read_text()
    assert "## MLP 32-W-10, batch 128, against the width W" in md and "## MLP 32-16-10, against the batch B" in md
    assert "SGEMM" in md and "LeNet" not in md.split("## Notes")[0]
    data = json.loads((out / "scaling.json").read_text())
    pts = {(r["width"], r["batch"]): r for r in data["results"]}
    assert set(pts) == {(16, 128), (16, 4)}
    for (w, b), r in pts.items():
        assert set(r["frameworks"]) == {"gradc", "numpy"}, r
        assert r["check"]["numpy"]["ok"], r["check"]
        assert r["flops"] == 2 * b * (32 * 16 * 2 + 16 * 10 * 3) + 2 * (32 * 16 + 16 + 16 * 10 + 10)
        for f in r["frameworks"].values():
            assert f["median_us"] > 0 and f["gflops"] > 0 and f["steps"] >= 3
    assert data["meta"]["sgemm"] > 0 and data["meta"]["commit"] and data["meta"]["clock"] == "cpu"
    assert "timed by CPU time of the process" in md
