"""Benchmark 2: 50-step DDIM inversion of 16 frames at 64x64 latents with the latent bilateral
filter (radius 2, sigma_spatial 1, sigma_range 0.1), full SD1.5 UNet (random weights, bf16).

  ours:  jaxvedit.diffusion.ddim_invert (one jit-compiled lax.scan over the 50 steps)
  torch: diffusers' DDIMInverseScheduler loop with a PyTorch bilateral filter (same definition:
         square window, replicate padding, per-channel range weights), SDPA attention, bf16.

``--guidance G`` (G != 1) adds classifier-free guidance, the edit's real path: each step runs the
UNet on the unconditional (zero) and the conditional context, ``eps_u + G (eps_c - eps_u)``
(ours: ``ddim_invert(..., guidance_scale=G, uncond_context=...)``; torch: the two contexts in one
batch of 2 x frames, as diffusers' pipelines do). ``--compile``: the PyTorch UNet under
``torch.compile``.

Prints one JSON line per implementation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SD15_UNET, TINY_UNET, random_fill  # noqa: E402
from bilateral import torch_bilateral  # noqa: E402

STEPS, RADIUS, SIGMA_S, SIGMA_R = 50, 2, 1.0, 0.1


def run_jax(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxvedit.diffusion import BilateralFilterConfig, NoiseSchedule, ddim_invert
    from jaxvedit.models.unet import UNet2DConditionModel

    cfg = TINY_UNET if args.tiny else SD15_UNET
    impl = None if args.attention == "auto" else args.attention
    unet = nnx.eval_shape(lambda: UNet2DConditionModel(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                       attention_implementation=impl))
    random_fill(unet)
    rng = np.random.default_rng(0)
    lat = jnp.asarray(rng.standard_normal((args.frames, args.latent, args.latent, 4), np.float32))
    ctx = jnp.asarray(rng.standard_normal((args.frames, 77, 768), np.float32))
    filt = BilateralFilterConfig(mode="latent", radius=RADIUS, sigma_spatial=SIGMA_S, sigma_range=SIGMA_R)
    sched = NoiseSchedule.sd15()
    uctx = jnp.zeros_like(ctx) if args.guidance != 1.0 else None
    run = lambda x: ddim_invert(unet, x, ctx, sched, num_inference_steps=args.steps, filter=filt,
                                guidance_scale=args.guidance, uncond_context=uctx)
    t0 = time.perf_counter()
    jax.block_until_ready(run(lat))
    first_s = time.perf_counter() - t0
    times = []
    for i in range(args.repeats):
        x = lat + 0.01 * i
        t0 = time.perf_counter()
        jax.block_until_ready(run(x))
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
    return {"impl": "jax", "s_per_inversion": times[len(times) // 2], "first_call_s": first_s,
            "frames": args.frames, "steps": args.steps, "guidance": args.guidance,
            "peak_mem_gib": peak / 2**30}


def run_torch(args):
    import torch
    from diffusers import DDIMInverseScheduler, UNet2DConditionModel

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = TINY_UNET if args.tiny else SD15_UNET
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).to(dev, dtype=torch.bfloat16).eval()
    if args.compile:
        unet = torch.compile(unet)
    sched = DDIMInverseScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(args.steps)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(args.frames, 4, args.latent, args.latent, generator=g).to(dev)
    ctx = torch.randn(args.frames, 77, 768, generator=g).to(dev, torch.bfloat16)
    cfg_on = args.guidance != 1.0
    both = torch.cat([torch.zeros_like(ctx), ctx]) if cfg_on else ctx  # (uncond, cond)

    def eps_of(x, t):
        if not cfg_on:
            return unet(x.to(torch.bfloat16), t, ctx).sample.float()
        eu, ec = unet(torch.cat([x, x]).to(torch.bfloat16), t, both).sample.float().chunk(2)
        return eu + args.guidance * (ec - eu)

    @torch.inference_mode()
    def invert(x):
        for t in sched.timesteps:
            x = torch_bilateral(x, RADIUS, SIGMA_S, SIGMA_R)
            eps = eps_of(x, t)
            x = sched.step(eps, t, x).prev_sample
        return x

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    invert(lat)
    sync()
    first_s = time.perf_counter() - t0
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        invert(lat + 0.01 * i)
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else 0
    return {"impl": "torch-compile" if args.compile else "torch-eager",
            "s_per_inversion": times[len(times) // 2], "first_call_s": first_s,
            "frames": args.frames, "steps": args.steps, "guidance": args.guidance,
            "peak_mem_gib": peak / 2**30}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["jax", "torch"], default="jax")
    ap.add_argument("--compile", action="store_true", help="torch.compile the PyTorch UNet")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="classifier-free guidance scale (1: none; 7.5: the edit's path)")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (CPU smoke test)")
    args = ap.parse_args()
    res = run_jax(args) if args.impl == "jax" else run_torch(args)
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
