"""Kernel-time profile (issue 15): where the GPU time of one jitted step goes.

  python bench/profile_step.py --clips 1 4                  # the adapter training step
  python bench/profile_step.py --what inversion             # DDIM-inversion UNet steps
  python bench/profile_step.py --what train inversion --keep-traces
  python bench/profile_step.py --tiny --clips 1 --latent 8  # CPU smoke test (tiny UNet)

For each configuration: build the program (the training step is bench/train_step.py's, built by
its ``build_jax_step``: the same work as ``--impl jax --clips-per-device N``; the inversion is
bench/inversion.py's ``ddim_invert`` with the latent bilateral filter, ``--inv-steps`` DDIM steps
a call), run ``--warmup`` steps (the first steps after compilation autotune and read slow), time
``--steps`` steps untraced, then the same number again under
``jax.profiler.trace(dir, create_perfetto_trace=True)`` (dispatched back to back, one
``block_until_ready`` at the end, as train_step times them), and sum the trace's kernel events
(bench/trace_kernels.py): device stream events on a GPU, XLA's host op events on CPU (the output
says which). Per step: kernel time (sum of durations), busy time (their union), kernel count,
the share of each kind, the top kernels and kernel families, and the wall time beside them (wall
minus busy is the device's idle gap). Prints Markdown tables and writes ``profile_step.json``
(``_tiny`` in tiny mode) to $OUT (or bench/results).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SD15_UNET, TINY_UNET, out_dir, print_table, random_fill, write_json  # noqa: E402
from trace_kernels import find_trace, load_trace, summarize  # noqa: E402


def train_program(args, clips: int) -> SimpleNamespace:
    """bench/train_step.py's jax step at ``clips`` clips of T=4 frames (one device)."""
    import jax

    from train_step import T, build_jax_step

    built = build_jax_step(SimpleNamespace(tiny=args.tiny, unet_config=args.unet_config, taps=args.taps,
                                           attention=args.attention, devices=1,
                                           clips_per_device=clips, latent=args.latent))

    def run(i):
        loss = built.one(i)
        return loss, built.state.params

    return SimpleNamespace(name=f"train, {clips} clip{'s' if clips > 1 else ''} ({clips * T} frames)",
                           what="train", clips=clips, frames=clips * T, steps_per_call=1, run=run,
                           sync=jax.block_until_ready)


def inversion_program(args, frames: int) -> SimpleNamespace:
    """bench/inversion.py's jax inversion (latent bilateral filter), ``--inv-steps`` steps a call;
    ``--guidance`` != 1 adds classifier-free guidance (the edit's path)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from inversion import RADIUS, SIGMA_R, SIGMA_S
    from jaxvedit.diffusion import BilateralFilterConfig, NoiseSchedule, ddim_invert
    from jaxvedit.models.unet import UNet2DConditionModel

    cfg = TINY_UNET if args.tiny else SD15_UNET
    if args.unet_config:
        cfg = json.loads(Path(args.unet_config).read_text())
    impl = None if args.attention == "auto" else args.attention
    unet = nnx.eval_shape(lambda: UNet2DConditionModel(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                       attention_implementation=impl))
    random_fill(unet)
    rng = np.random.default_rng(0)
    lat = jnp.asarray(rng.standard_normal((frames, args.latent, args.latent, 4), np.float32))
    ctx = jnp.asarray(rng.standard_normal((frames, 77, cfg["cross_attention_dim"]), np.float32))
    uctx = jnp.zeros_like(ctx) if args.guidance != 1.0 else None
    filt = BilateralFilterConfig(mode="latent", radius=RADIUS, sigma_spatial=SIGMA_S, sigma_range=SIGMA_R)
    sched = NoiseSchedule.sd15()

    def run(i):
        return ddim_invert(unet, lat + 0.01 * (i % 7), ctx, sched, num_inference_steps=args.inv_steps,
                           filter=filt, guidance_scale=args.guidance, uncond_context=uctx)

    cfg_txt = f", CFG {args.guidance:g}" if args.guidance != 1.0 else ""
    return SimpleNamespace(name=f"inversion, {frames} frames{cfg_txt}", what="inversion", clips=None,
                           frames=frames, steps_per_call=args.inv_steps, run=run,
                           sync=jax.block_until_ready)


def profile(prog, args, trace_dir: Path) -> dict:
    """Warm up, time untraced, then trace the same number of steps and summarise the trace."""
    import jax

    calls = max(1, math.ceil(args.steps / prog.steps_per_call))
    warm_calls = max(1, math.ceil(args.warmup / prog.steps_per_call))
    t0 = time.perf_counter()
    prog.sync(prog.run(0))
    first_s = time.perf_counter() - t0  # compilation + first run
    for i in range(1, warm_calls):
        prog.sync(prog.run(i))

    def timed(offset):
        t0 = time.perf_counter()
        for i in range(calls):
            out = prog.run(offset + i)
        prog.sync(out)
        return (time.perf_counter() - t0) / (calls * prog.steps_per_call)

    wall_s = timed(1000)
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        traced_s = timed(2000)
    trace_file = find_trace(trace_dir)
    summary = summarize(load_trace(trace_file), calls * prog.steps_per_call, top=args.top)
    row = {"config": prog.name, "what": prog.what, "clips": prog.clips, "frames": prog.frames,
           "timed_steps": calls * prog.steps_per_call, "warmup_steps": warm_calls * prog.steps_per_call,
           "first_call_s": first_s, "wall_ms": 1e3 * wall_s, "wall_ms_traced": 1e3 * traced_s,
           **summary}
    row["idle_ms"] = row["wall_ms_traced"] - row["busy_ms"]  # device idle within the traced wall
    row["trace_file"] = str(trace_file)
    return row


def report(rows: list[dict], args) -> Path:
    print_table("Kernel-time profile per step (ms)", [
        {"config": r["config"], "source": r["source"], "wall_ms": r["wall_ms"],
         "wall_ms_traced": r["wall_ms_traced"], "kernel_ms": r["kernel_ms"], "busy_ms": r["busy_ms"],
         "idle_ms": r["idle_ms"], "kernels": r["kernels"], "distinct_names": r["distinct_kernels"],
         **{k["kind"]: f"{100 * k['share']:.1f}%" for k in r["kinds"]}} for r in rows],
        ["config", "source", "wall_ms", "wall_ms_traced", "kernel_ms", "busy_ms", "idle_ms", "kernels",
         "distinct_names"] + [k["kind"] for k in rows[0]["kinds"]])
    for r in rows:
        print(f"\nkernel events from: {r['source']} ({'; '.join(r['lines'][:6])}"
              f"{' ...' if len(r['lines']) > 6 else ''})")
        pct = lambda rows: [{**x, "share": f"{100 * x['share']:.1f}%"} for x in rows]  # noqa: E731
        print_table(f"{r['config']}: top {len(r['top'])} kernels per step", pct(r["top"]),
                    ["kernel", "kind", "count", "ms", "share"])
        print_table(f"{r['config']}: top {len(r['families'])} kernel families per step (numeric suffixes "
                    "dropped)", pct(r["families"]), ["kernel", "kind", "count", "ms", "share"])
    name = "profile_step" + ("_tiny" if args.tiny else "")
    path = write_json(name, {"args": vars(args), "rows": rows})
    print(f"\nwrote {path}")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", nargs="+", choices=["train", "inversion"], default=["train"],
                    help="programs to profile: the adapter training step and/or DDIM-inversion steps")
    ap.add_argument("--clips", nargs="+", type=int, default=[1, 4],
                    help="training: clips of T=4 frames a step (train_step's --clips-per-device)")
    ap.add_argument("--frames", nargs="+", type=int, default=[16], help="inversion: frames a batch")
    ap.add_argument("--inv-steps", type=int, default=5,
                    help="inversion: DDIM steps in one ddim_invert call (one lax.scan); figures are per step")
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="inversion: classifier-free guidance scale (1: none, as bench/inversion.py)")
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512x512 pixels)")
    ap.add_argument("--attention", default="auto", help="jax attention implementation: auto, xla, cudnn")
    ap.add_argument("--warmup", type=int, default=8, help="steps run before timing (autotuning settles)")
    ap.add_argument("--steps", type=int, default=5, help="steps timed, and again traced")
    ap.add_argument("--top", type=int, default=15, help="kernels (and families) listed per configuration")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (CPU smoke test)")
    ap.add_argument("--unet-config", default=None, help="UNet config.json to build instead")
    ap.add_argument("--taps", nargs="*", default=None,
                    help="training: feature taps (default: train_step's up_blocks.2/.3 attn1)")
    ap.add_argument("--keep-traces", action="store_true",
                    help="copy each trace's .trace.json.gz to OUT/profile_traces/ (for a closer look)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.inv_steps < 1:
        ap.error("--steps, --warmup and --inv-steps must be >= 1")
    if any(c < 1 for c in args.clips) or any(f < 2 for f in args.frames):
        ap.error("--clips must be >= 1 and --frames >= 2")
    builders = ([lambda c=c: train_program(args, c) for c in args.clips] if "train" in args.what else []) + \
               ([lambda f=f: inversion_program(args, f) for f in args.frames] if "inversion" in args.what else [])
    rows = []
    for build in builders:
        prog = build()
        with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
            row = profile(prog, args, Path(tmp))
            if args.keep_traces:
                dst = out_dir() / "profile_traces"
                dst.mkdir(exist_ok=True)
                tag = f"{prog.what}_{prog.clips or prog.frames}" + ("_tiny" if args.tiny else "")
                row["trace_file"] = str(shutil.copy(row["trace_file"], dst / f"{tag}.trace.json.gz"))
            else:
                row["trace_file"] = None
        rows.append(row)
        print(f"{prog.name}: wall {row['wall_ms']:.2f} ms/step, kernels {row['kernel_ms']:.2f} ms "
              f"({row['source']}), first call {row['first_call_s']:.1f} s", flush=True)
        del prog
    return rows, report(rows, args)


if __name__ == "__main__":
    main()
