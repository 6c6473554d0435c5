"""bench/workloads.py runs: gradc's part of W1 and W2 on generated data, a few steps, no peers.

The timings themselves belong to bench/, not to CI; this only proves the harness works.
"""
import json
import os
import subprocess
import sys

from conftest import ROOT

BENCH = os.path.join(ROOT, "bench", "workloads.py")


def test_workloads_bench_runs_gradc_on_w1_and_w2_without_peers(tmp_path):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, BENCH, "--workloads", "W1,W2", "--peers", "none", "--steps", "5",
                        "--rounds", "2", "--warmup", "1", "--check-steps", "2", "--quick-check", "--no-plot",
                        "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| W1 moons" in p.stdout and "| W2 MLP 5-10-1" in p.stdout
    md = (out / "workloads.md").read_text()
    assert md in p.stdout + "\n"
    data = json.loads((out / "workloads.json").read_text())
    rows = {r["id"]: r for r in data["results"]}
    assert set(rows) == {"W1", "W2"}
    for r in rows.values():
        g = r["frameworks"]["gradc"]
        assert set(r["frameworks"]) == {"gradc"} and g["steps"] == 5
        assert g["median_us"] > 0 and g["compile_s"] > 0
        assert all(x == x and x > 0 for x in r["gradc_loss"])    # finite, positive losses
    assert rows["W1"]["dtype"] == "float64" and rows["W2"]["dtype"] == "float32"
    assert data["meta"]["sgemm"] > 0 and data["meta"]["dgemm"] > 0
