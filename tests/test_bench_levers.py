"""bench/levers.py's plumbing: the variants' environments and the timing gate that lets the
variants compile side by side and time one at a time (the GPU figures come from the script)."""

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import timing_gate  # noqa: E402
from levers import VARIANTS, main, variant_env  # noqa: E402


def test_variant_env_appends_xla_flags_and_sets_the_lever():
    base = {"XLA_FLAGS": "--xla_dump_to=/tmp/x", "OTHER": "1"}
    env = variant_env("no-triton-gemm", base, "/gate", 0.3)
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_enable_triton_gemm=false"
    assert env["BENCH_GATE_DIR"] == "/gate" and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.300"
    assert variant_env("norm-one-pass", {}, "/g", 0.5)["JAXVEDIT_NORM_STATS"] == "one-pass"
    assert "XLA_FLAGS" not in variant_env("baseline", {}, "/g", 0.5)
    assert VARIANTS["xla-attention"][1] == ["--attention", "xla"]


def test_timing_gate_waits_for_go_and_times_one_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_GATE_DIR", str(tmp_path))
    log, inside = [], threading.Lock()

    def worker(i):
        with timing_gate(poll_s=0.01):
            assert inside.acquire(blocking=False), "two timed sections at once"
            log.append(("in", i, time.perf_counter()))
            time.sleep(0.2)
            inside.release()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert not log, "entered before the driver's go"
    assert len(list(tmp_path.glob("ready.*"))) == 1  # one pid: both threads touch the same file
    (tmp_path / "go").touch()
    for t in threads:
        t.join(timeout=10)
    assert [e[0] for e in log] == ["in", "in"]
    assert abs(log[1][2] - log[0][2]) >= 0.19  # the second waited for the first's lock


def test_timing_gate_is_a_no_op_without_the_variable(monkeypatch):
    monkeypatch.delenv("BENCH_GATE_DIR", raising=False)
    with timing_gate():
        pass


def test_bad_arguments_are_named(capsys):
    with pytest.raises(SystemExit):
        main(["--variants", "warp-speed"])
    assert "invalid choice: 'warp-speed'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--parallel", "0"])
    assert "--parallel must be >= 1" in capsys.readouterr().err


def test_same_process_sets_each_variants_environment_and_restores_it(tmp_path, monkeypatch):
    """``--same-process``: each variant's trace-time switches are in the environment while its step
    is built and timed (train_step.run_jax, replaced here by a recorder), and only then; XLA-flag
    variants and failures become rows; each finished row is on disk at once."""
    import train_step

    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.delenv("JAXVEDIT_GROUPNORM", raising=False)
    monkeypatch.delenv("JAXVEDIT_ATTENTION", raising=False)
    seen = []

    def fake_run_jax(args):
        seen.append((os.environ.get("JAXVEDIT_GROUPNORM"), os.environ.get("JAXVEDIT_ATTENTION"),
                     args.clips_per_device))
        if os.environ.get("JAXVEDIT_ATTENTION") == "mosaic":
            raise ValueError("Mosaic GPU kernel exceeds available shared memory")
        return {"ms_per_step": 10.0 if not seen[-1][0] else 8.0, "peak_mem_gib": 1.0, "compile_s": 1.0,
                "loss": 0.5, "xla_temp_gib": 0.5}

    monkeypatch.setattr(train_step, "run_jax", fake_run_jax)
    rc = main(["--same-process", "--clips", "2", "--variants", "baseline", "groupnorm-custom-vjp",
               "no-triton-gemm", "attention-mosaic"])
    assert rc == 1  # rows with errors
    assert seen == [(None, None, 2), ("custom-vjp", None, 2), (None, "mosaic", 2)]
    assert "JAXVEDIT_GROUPNORM" not in os.environ and "JAXVEDIT_ATTENTION" not in os.environ
    rows = {r["variant"]: r for r in json.loads((tmp_path / "levers.json").read_text())["rows"]}
    assert rows["groupnorm-custom-vjp"]["speedup_vs_baseline"] == pytest.approx(10.0 / 8.0)
    assert "own" in rows["no-triton-gemm"]["error"] and "shared memory" in rows["attention-mosaic"]["error"]
    partial = json.loads((tmp_path / "levers_partial.json").read_text())
    assert [r["variant"] for r in partial["rows"]] == ["baseline", "groupnorm-custom-vjp", "no-triton-gemm",
                                                      "attention-mosaic"]
