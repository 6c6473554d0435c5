"""bench/threads.py runs: gradc's W3 step on 1 and 2 threads, a few steps on generated data, no peers.

The timings themselves belong to bench/, not to CI; this only proves the harness works and that its
check of 2 threads against 1 passes.
"""
import json
import os
import subprocess
import sys

from conftest import ROOT

BENCH = os.path.join(ROOT, "bench", "threads.py")


def test_threads_bench_runs_gradc_on_w3_with_1_and_2_threads(tmp_path):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, BENCH, "--quick", "--peers", "none", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    md = (out / "threads.md").read_text()
    assert md in p.stdout + "\n" and "| W3 MNIST-sized MLP 784-256-10 |" in md
    data = json.loads((out / "threads.json").read_text())
    (r,) = data["results"]
    assert r["id"] == "W3" and set(r["frameworks"]) == {"gradc", "gradc_2t"}
    assert all(f["steps"] == 6 and f["median_us"] > 0 for f in r["frameworks"].values())
    assert r["check"]["gradc_2t"]["ok"] and r["gradc_speedup"] > 0
    assert r["goal_met"] is None                                   # no PyTorch to compare with
    assert data["meta"]["machine"] and data["meta"]["commit"]
