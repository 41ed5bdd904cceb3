"""The scale benchmarks' CPU modes: bench/loader.py --tiny (generated store in prepare's format,
RSS / clips/s / first batch) and bench/train_e2e.py --tiny (python -m jaxvedit.train on a
generated store against bench/train_step.py's bare step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_loader_bench_tiny(tmp_path):
    out = _run(["bench/loader.py", "--tiny", "--batches", "40"], tmp_path)
    assert "| videos | fields | clips_per_s |" in out and "RSS growth 12 -> 60 videos" in out
    res = json.loads((tmp_path / "out" / "loader_tiny.json").read_text())
    assert [r["videos"] for r in res["runs"]] == [12, 60, 12]
    assert [r["fields"] for r in res["runs"]] == ["latents+token_ids"] * 2 + ["latents+token_ids+vision"]
    assert all(r["clips_per_s"] > 0 and r["timed_batches"] == 32 for r in res["runs"])
    assert res["runs"][2]["batch_mib"] > res["runs"][0]["batch_mib"]  # the vision states are read
    assert abs(res["rss_growth"]) < 1


def test_train_e2e_tiny(tmp_path):
    out = _run(["bench/train_e2e.py", "--tiny", "--steps", "8", "--skip", "2", "--bare-steps", "3",
                "--train-step", "--work", str(tmp_path / "w")], tmp_path)
    assert "train / bare step =" in out and "train / bench/train_step.py =" in out
    res = json.loads((tmp_path / "out" / "train_e2e_tiny.json").read_text())
    train, bare, step_bench = res["rows"]
    assert train["impl"] == "python -m jaxvedit.train" and train["timed_steps"] == 5  # steps 4..8, timed from the end of step 3
    # the bare step is the trainer's own compiled program: its first call compiles nothing
    assert bare["impl"] == "the trainer's step, bare" and bare["timed_steps"] == 3
    assert bare["first_call_s"] < 0.5 * train["first_step_s"]
    assert step_bench["impl"].startswith("bench/train_step.py") and step_bench["clips"] == train["clips"] == 4
    assert res["ratio"] == train["steps_per_s"] / bare["steps_per_s"] > 0
    assert res["ratio_vs_train_step"] == train["steps_per_s"] / step_bench["steps_per_s"]
