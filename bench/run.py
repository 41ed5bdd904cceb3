"""Run the benchmarks side by side in one call and print their tables (Markdown) and JSON.

  python bench/run.py train inversion bilateral     # single GPU comparisons
  python bench/run.py scaling --devices 2           # data-parallel scaling (2 GPUs)

Each implementation runs in its own process (so one framework's allocator does not distort the
other's peak memory), one after the other on the same GPU. Results: ``$OUT`` (or
``bench/results``) ``<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import print_table, write_json  # noqa: E402


def run(cmd: list[str], timeout: int) -> list[dict]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"TIMEOUT after {timeout}s: {' '.join(cmd)}", flush=True)
        return [{"cmd": " ".join(cmd), "error": f"timeout {timeout}s"}]
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    if proc.returncode or not results:
        tail = (proc.stderr or proc.stdout)[-2500:]
        print(f"FAILED ({proc.returncode}) {' '.join(cmd)}\n{tail}", flush=True)
        return [{"cmd": " ".join(cmd), "error": tail[-600:]}]
    print(f"ok {time.perf_counter() - t0:.0f}s: {' '.join(cmd)}", flush=True)
    for r in results:
        r["cmd"] = "python " + " ".join(cmd)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("which", nargs="+", choices=["train", "inversion", "bilateral", "scaling"])
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=420)
    ap.add_argument("--inversion-compile", action="store_true",
                    help="inversion: also a torch.compile'd PyTorch UNet loop")
    ap.add_argument("--extra", default="", help="extra arguments for every script, one string "
                    "(e.g. --extra='--tiny --latent 16' for a CPU smoke run)")
    args = ap.parse_args()
    import shlex
    args.extra = shlex.split(args.extra)
    ts = str(HERE / "train_step.py")
    for which in args.which:
        if which == "train":
            rows = []
            for impl in ("jax", "torch-eager", "torch-compile"):
                rows += run([ts, "--impl", impl, *args.extra], args.timeout)
            base = {r["impl"]: r for r in rows if "ms_per_step" in r}
            for r in rows:
                for ref in ("torch-eager", "torch-compile"):
                    if "ms_per_step" in r and ref in base:
                        r[f"speedup_vs_{ref}"] = base[ref]["ms_per_step"] / r["ms_per_step"]
            print_table("Adapter training step, SD1.5 UNet, T=4 frames at 64x64 latents, bf16", rows,
                        ["impl", "ms_per_step", "frames_per_s", "peak_mem_gib", "mfu_datasheet",
                         "speedup_vs_torch-eager", "speedup_vs_torch-compile", "error"])
            write_json("train_step", {"rows": rows})
        elif which == "inversion":
            inv = str(HERE / "inversion.py")
            rows = run([inv, "--impl", "jax", *args.extra], args.timeout)
            rows += run([inv, "--impl", "torch", *args.extra], args.timeout)
            if args.inversion_compile:
                rows += run([inv, "--impl", "torch", "--compile", *args.extra], args.timeout)
            base = {r["impl"]: r for r in rows if "s_per_inversion" in r}
            for r in rows:
                for ref in ("torch-eager", "torch-compile"):
                    if "s_per_inversion" in r and ref in base:
                        r[f"speedup_vs_{ref}"] = base[ref]["s_per_inversion"] / r["s_per_inversion"]
            print_table("50-step DDIM inversion, 16 frames, 64x64 latents, latent bilateral filter, bf16",
                        rows, ["impl", "guidance", "s_per_inversion", "first_call_s", "peak_mem_gib",
                               "speedup_vs_torch-eager", "speedup_vs_torch-compile", "error"])
            write_json("inversion", {"rows": rows})
        elif which == "bilateral":
            rows = run([str(HERE / "bilateral.py")], args.timeout)
            print_table("Latent bilateral filter alone (radius 2)", rows,
                        ["impl", "shape", "ms", "max_abs_diff_vs_torch", "error"])
            write_json("bilateral", {"rows": rows})
        elif which == "scaling":
            rows = run([ts, "--impl", "jax", "--devices", "1", *args.extra], args.timeout)
            rows += run([ts, "--impl", "jax", "--devices", str(args.devices), *args.extra], args.timeout)
            ok = [r for r in rows if "ms_per_step" in r]
            if len(ok) == 2:
                # same clips per device: ideal is equal time per step
                ok[1]["scaling_efficiency"] = ok[0]["ms_per_step"] / ok[1]["ms_per_step"]
            print_table(f"Data-parallel training step, 1 vs {args.devices} GPUs (1 clip per GPU)", rows,
                        ["impl", "devices", "ms_per_step", "frames_per_s", "scaling_efficiency", "error"])
            write_json("scaling", {"rows": rows})


if __name__ == "__main__":
    main()
