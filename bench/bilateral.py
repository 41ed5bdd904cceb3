"""Benchmark 3: the latent bilateral filter alone at SD latent sizes (ours, jit) vs a PyTorch
implementation of the same definition (eager and torch.compile). Checks agreement first.

Prints one JSON line per (implementation, size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = [(16, 64, 64, 4), (16, 96, 96, 4), (64, 64, 64, 4)]


def torch_bilateral(x, radius: int, sigma_s: float, sigma_r: float):
    """(B, C, H, W) per-channel bilateral filter: square window, replicate padding."""
    import torch
    import torch.nn.functional as F

    k = 2 * radius + 1
    xp = F.pad(x, (radius,) * 4, mode="replicate")
    patches = xp.unfold(2, k, 1).unfold(3, k, 1)  # B, C, H, W, k, k
    d = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    spatial = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma_s ** 2))
    w = spatial * torch.exp(-((patches - x[..., None, None]) ** 2) / (2 * sigma_r ** 2))
    return (w * patches).sum((-1, -2)) / w.sum((-1, -2))


def bench(fn, sync, repeats=50, warmup=5):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--radius", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--small", action="store_true", help="small sizes (CPU smoke test)")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from jaxvedit.diffusion.bilateral import bilateral_filter_latent

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync_t = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    ours = jax.jit(lambda x: bilateral_filter_latent(x, radius=args.radius, sigma_spatial=1.0,
                                                      sigma_range=0.1))
    tc = torch.compile(torch_bilateral)
    sizes = [(2, 16, 16, 4)] if args.small else SIZES
    for shape in sizes:
        x = np.random.default_rng(0).standard_normal(shape, np.float32)
        xj = jnp.asarray(x)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)
        a = np.asarray(ours(xj))
        b = torch_bilateral(xt, args.radius, 1.0, 0.1).permute(0, 2, 3, 1).cpu().numpy()
        agree = float(np.abs(a - b).max())
        res_j = bench(lambda: ours(xj).block_until_ready(), lambda: None, args.repeats)
        res_e = bench(lambda: torch_bilateral(xt, args.radius, 1.0, 0.1), sync_t, args.repeats)
        res_c = bench(lambda: tc(xt, args.radius, 1.0, 0.1), sync_t, args.repeats)
        for impl, s in (("jax", res_j), ("torch-eager", res_e), ("torch-compile", res_c)):
            print("RESULT " + json.dumps({"impl": impl, "shape": list(shape), "ms": 1e3 * s,
                                          "max_abs_diff_vs_torch": agree}), flush=True)


if __name__ == "__main__":
    main()
