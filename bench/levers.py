"""Benchmark: the adapter training step of ``bench/train_step.py`` under candidate speed levers
(issue 15), side by side in one call, so that each lever's effect is measured, not assumed.

Each variant is ``bench/train_step.py --impl jax`` in its own process with one change:

  baseline            as it is
  baseline-repeat     the baseline again (its own process; with ``--same-process``, after the
                      others): the run-to-run spread (a lever that moves the step by less than
                      this is noise)
  norm-one-pass       GroupNorm / LayerNorm variance as mean(x^2) - mean(x)^2 (one read of x;
                      ``JAXVEDIT_NORM_STATS=one-pass``, ``jaxvedit.models.layers.norm_statistics``)
  no-command-buffers  XLA's CUDA graphs off (``--xla_gpu_enable_command_buffer=``): what they give
  latency-hiding      XLA's latency-hiding scheduler (``--xla_gpu_enable_latency_hiding_scheduler``)
  no-triton-gemm      cuBLAS instead of Triton for XLA's GEMM fusions (``--xla_gpu_enable_triton_gemm=false``)
  xla-attention       XLA's attention instead of cuDNN's flash kernel (what the fused kernel gives)
  attention-pad-64    heads of dim 40 zero-padded to 64 for cuDNN (``JAXVEDIT_ATTENTION_HEAD_PAD=64``;
                      the same attention: tests/test_attention_head_pad.py)
  groupnorm-custom-vjp  GroupNorm + SiLU as one custom VJP saving only bf16 x and the group
                      statistics (``JAXVEDIT_GROUPNORM=custom-vjp``; ``-one-pass``: with one-pass
                      statistics; tests/test_groupnorm_kernels.py)
  attention-triton    Pallas Triton flash attention for the self-attentions it takes
                      (``JAXVEDIT_ATTENTION=pallas-triton``; tests/test_attention_kernels.py)
  attention-mosaic    Pallas Mosaic GPU (Hopper) flash attention (``JAXVEDIT_ATTENTION=mosaic``)

``--same-process`` runs the variants that need no XLA flags one after the other in this process
(each traced and compiled anew, since the switches are read at trace time): no compilation runs
beside a timing, XLA's in-process autotuning results are reused, so it is cheaper than one
process each; the peak-memory column is then the process's high-water mark, and ``xla_temp_gib``
(XLA's memory analysis of each program) is the per-variant figure.

The processes of one clip size compile side by side (``--parallel`` at a time: compilation is
host work, and the H200 machine has 16 cores), then warm up and time one at a time, each with
the GPU to itself (``common.timing_gate``: a ready file, the driver's go file, one lock). XLA's
autotuning runs during compilation, so with ``--parallel`` > 1 the variants autotune while the
others compile and autotune too: ``--parallel 1`` gives fully separate runs (slower). Each
process gets ``0.9 / parallel`` of the GPU's memory.

  python bench/levers.py                                   # GPU: all variants, 1 and 4 clips
  python bench/levers.py --clips 4 --variants baseline norm-one-pass
  python bench/levers.py --tiny --clips 1 --variants baseline norm-one-pass   # CPU smoke test

Prints a table (ms / step, vs baseline, peak memory, compile) and writes ``$OUT/levers.json``
(``bench/results`` by default; ``levers_tiny.json`` with ``--tiny``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import device_name, print_table, write_json  # noqa: E402

#: name -> (environment changes, extra train_step arguments); "XLA_FLAGS" values are appended
VARIANTS: dict[str, tuple[dict, list]] = {
    "baseline": ({}, []),
    "baseline-repeat": ({}, []),
    "norm-one-pass": ({"JAXVEDIT_NORM_STATS": "one-pass"}, []),
    "no-command-buffers": ({"XLA_FLAGS": "--xla_gpu_enable_command_buffer="}, []),
    "latency-hiding": ({"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true"}, []),
    "no-triton-gemm": ({"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}, []),
    "xla-attention": ({}, ["--attention", "xla"]),
    "attention-pad-64": ({"JAXVEDIT_ATTENTION_HEAD_PAD": "64"}, []),
    "groupnorm-custom-vjp": ({"JAXVEDIT_GROUPNORM": "custom-vjp"}, []),
    "groupnorm-custom-vjp-one-pass": ({"JAXVEDIT_GROUPNORM": "custom-vjp", "JAXVEDIT_NORM_STATS": "one-pass"}, []),
    "attention-triton": ({"JAXVEDIT_ATTENTION": "pallas-triton"}, []),
    "attention-mosaic": ({"JAXVEDIT_ATTENTION": "mosaic"}, []),
}


def variant_env(name: str, base: dict, gate: str, mem_fraction: float) -> dict:
    changes, _ = VARIANTS[name]
    env = {**base, "BENCH_GATE_DIR": gate, "PYTHONUNBUFFERED": "1",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{mem_fraction:.3f}"}
    for k, v in changes.items():
        env[k] = (env.get(k, "") + " " + v).strip() if k == "XLA_FLAGS" else v
    return env


def train_step_args(name: str, clips: int, args) -> list[str]:
    """``bench/train_step.py``'s arguments for variant ``name`` at ``clips`` clips a step."""
    return ["--impl", "jax", "--clips-per-device", str(clips), "--warmup", str(args.warmup),
            "--repeats", str(args.repeats), "--inner", str(args.inner), *(["--tiny"] if args.tiny else []),
            *(["--latent", str(args.latent)] if args.latent else []), *VARIANTS[name][1]]


def result_fields(r: dict) -> dict:
    """The figures of one ``train_step.run_jax`` result that a lever row keeps."""
    return {"ms_per_step": r["ms_per_step"], "peak_mem_gib": r["peak_mem_gib"],
            "xla_temp_gib": r.get("xla_temp_gib"), "compile_s": r["compile_s"],
            "mfu_datasheet": r.get("mfu_datasheet"), "loss": r["loss"]}


def with_speedups(rows: list[dict]) -> list[dict]:
    """``speedup_vs_baseline`` on each timed row, against the ``baseline`` row among ``rows``."""
    base = next((r for r in rows if r["variant"] == "baseline" and "ms_per_step" in r), None)
    for r in rows:
        if base and "ms_per_step" in r:
            r["speedup_vs_baseline"] = base["ms_per_step"] / r["ms_per_step"]
    return rows


def run_batch(names: list[str], clips: int, args) -> list[dict]:
    """The variants ``names`` at one clip size: compiled side by side, timed one at a time."""
    gate = tempfile.mkdtemp(prefix="jaxvedit-levers-")
    frac = 0.9 / max(1, len(names))
    procs = {}
    for name in names:
        cmd = [sys.executable, str(HERE / "train_step.py"), *train_step_args(name, clips, args)]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=variant_env(name, dict(os.environ), gate, frac))
    t0 = time.perf_counter()
    while True:  # every process ready to time (or gone), then go
        ready = sum(1 for f in Path(gate).iterdir() if f.name.startswith("ready."))
        gone = sum(1 for p in procs.values() if p.poll() is not None)
        if ready + gone >= len(procs) or time.perf_counter() - t0 > args.timeout:
            break
        time.sleep(0.5)
    (Path(gate) / "go").touch()
    rows = []
    for name, proc in procs.items():
        left = max(1.0, args.timeout - (time.perf_counter() - t0))
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\ntimed out after {args.timeout} s"
        found = [json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT ")]
        row = {"variant": name, "clips": clips}
        if proc.returncode or not found:
            row["error"] = (err or out)[-400:]
            print(f"FAILED {name} at {clips} clip(s) ({proc.returncode}):\n{(err or out)[-1500:]}",
                  file=sys.stderr, flush=True)
        else:
            row.update(result_fields(found[0]))
        rows.append(row)
    return with_speedups(rows)


def run_same_process(names: list[str], clips: int, args) -> list[dict]:
    """The variants ``names`` one after the other in this process (see the module docstring)."""
    import gc

    import train_step
    rows = []
    for name in names:
        changes = VARIANTS[name][0]
        row = {"variant": name, "clips": clips}
        if "XLA_FLAGS" in changes:
            rows.append({**row, "error": "XLA flags need a process of their own (run without --same-process)"})
            continue
        targs = train_step.parse_args(train_step_args(name, clips, args))
        t0 = time.perf_counter()
        try:
            with mock.patch.dict(os.environ, changes):  # the environment restored afterwards
                r = train_step.run_jax(targs)
            row.update(result_fields(r))
        except Exception as e:  # a lever that fails is a row, not the end of the run
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        finally:
            gc.collect()
        print(f"{name} at {clips} clip(s): {time.perf_counter() - t0:.0f} s "
              f"{row.get('ms_per_step', row.get('error'))}", file=sys.stderr, flush=True)
        rows.append(row)
        # every finished row on disk at once: a call cut short keeps what it measured
        write_json("levers_partial_tiny" if args.tiny else "levers_partial",
                   {"rows": rows, "settings": vars(args), "complete": False})
    return with_speedups(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    metavar="NAME", help="variants to run (default: all): " + ", ".join(VARIANTS))
    ap.add_argument("--clips", type=int, nargs="+", default=[1, 4], help="clips of T=4 frames a step")
    ap.add_argument("--parallel", type=int, default=6, help="processes compiling side by side")
    ap.add_argument("--warmup", type=int, default=8, help="steps before timing (autotuning settles)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--inner", type=int, default=4, help="steps per timed repeat")
    ap.add_argument("--latent", type=int, default=None, help="latent side (default: train_step's)")
    ap.add_argument("--timeout", type=float, default=400, help="seconds per batch of processes")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet on CPU (smoke test)")
    ap.add_argument("--same-process", action="store_true",
                    help="variants one after the other in this process (no XLA-flag variants)")
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error("--parallel must be >= 1")
    names = list(dict.fromkeys(args.variants))
    if "baseline" not in names:
        names.insert(0, "baseline")  # every ratio is against the baseline of the same call
    rows = []
    for clips in args.clips:
        if args.same_process:
            rows += run_same_process(names, clips, args)
            continue
        for i in range(0, len(names), args.parallel):
            batch = names[i:i + args.parallel]
            if "baseline" not in batch:
                batch = ["baseline"] + batch  # each batch its own baseline (same autotune load)
            t0 = time.perf_counter()
            got = run_batch(batch, clips, args)
            print(f"{clips} clip(s): {', '.join(batch)}: {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
            for r in got:
                r["batch"] = i // args.parallel  # ratios are against the baseline of its batch
            rows += got
    title = (f"Training-step levers, {'tiny UNet (smoke test)' if args.tiny else 'SD1.5 UNet, bf16'}, "
             f"T=4 frames a clip, {device_name()}")
    print_table(title, rows, ["variant", "clips", "batch", "ms_per_step", "speedup_vs_baseline",
                              "peak_mem_gib", "xla_temp_gib", "compile_s", "mfu_datasheet", "error"])
    out = write_json("levers_tiny" if args.tiny else "levers",
                     {"title": title, "rows": rows, "settings": vars(args)})
    print(f"wrote {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
