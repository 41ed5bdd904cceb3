"""Benchmark: GroupNorm + SiLU of the SD1.5 training step, each implementation side by side
(issue 15's GroupNorm lever, ``jaxvedit/models/groupnorm_kernels.py``).

Shapes: the ResNet blocks' norms at 16 frames of 64x64 latents ((16, 64, 64, 320),
(16, 32, 32, 640), (16, 16, 16, 1280), (16, 8, 8, 1280)), 32 groups, bfloat16 in and out,
float32 gamma / beta. Variants (``layers.GroupNorm(x, silu=True)`` under):

  xla-two-pass          the default (``JAXVEDIT_GROUPNORM=xla``, ``JAXVEDIT_NORM_STATS=two-pass``)
  xla-one-pass          ``JAXVEDIT_NORM_STATS=one-pass``
  custom-vjp            ``JAXVEDIT_GROUPNORM=custom-vjp`` (two-pass statistics)
  custom-vjp-one-pass   ``JAXVEDIT_GROUPNORM=custom-vjp JAXVEDIT_NORM_STATS=one-pass``

Per shape and variant: the max abs error of y and of dx against a float32 evaluation of the
definition on the same bf16 input (the gradient of ``sum(y * w)``, ``w`` fixed random), the bytes
``jax.vjp`` saves for the backward, and the time of the forward and of forward + backward (x,
gamma, beta). Timing: ``--chain`` dependent applications in one jitted ``lax.fori_loop`` (the
output, resp. ``x + dx``, feeds the next one, so XLA can neither hoist nor drop them, and launch
overhead does not count), ``--warmup`` calls, then the median of ``--repeats`` (each synced), per
application.

  python bench/groupnorm_kernels.py            # GPU (about 60 s)
  python bench/groupnorm_kernels.py --tiny     # CPU smoke test (tested)

Prints a Markdown table and writes ``$OUT/groupnorm_kernels.json`` (``bench/results`` by
default; ``groupnorm_kernels_tiny.json`` with ``--tiny``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_name, print_table, time_steps, write_json  # noqa: E402

SD15_SHAPES = [(16, 64, 64, 320), (16, 32, 32, 640), (16, 16, 16, 1280), (16, 8, 8, 1280)]
TINY_SHAPES = [(2, 8, 8, 64), (2, 4, 4, 128)]
#: name -> (JAXVEDIT_GROUPNORM, JAXVEDIT_NORM_STATS)
VARIANTS = {
    "xla-two-pass": ("xla", "two-pass"),
    "xla-one-pass": ("xla", "one-pass"),
    "custom-vjp": ("custom-vjp", "two-pass"),
    "custom-vjp-one-pass": ("custom-vjp", "one-pass"),
}


def _reference(x, gamma, beta, groups, eps):
    """The definition in float32 (two-pass statistics), differentiated by JAX."""
    import jax
    import jax.numpy as jnp

    n, c = x.shape[0], x.shape[-1]
    xg = x.astype(jnp.float32).reshape(n, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 3), keepdims=True)
    return jax.nn.silu(((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape) * gamma + beta)


def measure(shape, variant: str, *, groups: int, warmup: int, repeats: int, chain: int,
            seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxvedit.models.groupnorm_kernels import groupnorm_implementation
    from jaxvedit.models.layers import GroupNorm, Precision, norm_statistics

    impl, stats = VARIANTS[variant]
    c = shape[-1]
    eps = 1e-5
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape, np.float32) * 1.5 + 0.5, jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal(shape, np.float32), jnp.bfloat16)
    gamma = jnp.asarray(1.0 + 0.2 * rng.standard_normal(c, np.float32))
    beta = jnp.asarray(0.1 * rng.standard_normal(c, np.float32))
    gn = GroupNorm(groups, c, eps, Precision(jnp.bfloat16, jnp.float32))
    graphdef = nnx.graphdef(gn)

    def apply(x, g, b):
        m = nnx.merge(graphdef, nnx.State({"scale": nnx.Param(g), "bias": nnx.Param(b)}))
        return m(x, silu=True)

    def loss(x, g, b):
        return jnp.sum(apply(x, g, b).astype(jnp.float32) * w.astype(jnp.float32))

    grad = jax.grad(loss, argnums=(0, 1, 2))

    def fwd_chain(x, g, b):
        return jax.lax.fori_loop(0, chain, lambda i, x: apply(x, g, b), x)

    def bwd_chain(x, g, b):
        def body(i, carry):
            x, sg, sb = carry
            dx, dg, db = grad(x, g, b)
            return (x + dx).astype(x.dtype), sg + dg, sb + db
        return jax.lax.fori_loop(0, chain, body, (x, jnp.zeros_like(g), jnp.zeros_like(b)))

    with groupnorm_implementation(impl), norm_statistics(stats):
        y = jax.jit(apply)(x, gamma, beta)
        dx, dg, db = jax.jit(grad)(x, gamma, beta)
        saved = sum(r.size * r.dtype.itemsize for r in jax.tree.leaves(jax.vjp(jax.jit(apply), x, gamma, beta)[1]))
        f_fwd, f_bwd = jax.jit(fwd_chain), jax.jit(bwd_chain)
        sync = lambda out: jax.block_until_ready(out)
        t_fwd, _ = time_steps(lambda i: f_fwd(x, gamma, beta), warmup=warmup, repeats=repeats,
                              inner=1, sync=sync)
        t_bwd, _ = time_steps(lambda i: f_bwd(x, gamma, beta), warmup=warmup, repeats=repeats,
                              inner=1, sync=sync)
    ref = jax.jit(_reference, static_argnums=(3, 4))(x, gamma, beta, groups, eps)
    rdx, rdg, rdb = jax.jit(jax.grad(lambda x, g, b: jnp.sum(_reference(x, g, b, groups, eps)
                                                              * w.astype(jnp.float32)),
                                     argnums=(0, 1, 2)))(x.astype(jnp.float32), gamma, beta)
    err = lambda a, b: float(jnp.abs(a.astype(jnp.float32) - b).max())
    rel = lambda a, b: err(a, b) / max(float(jnp.abs(b).max()), 1e-30)
    nbytes = x.size * x.dtype.itemsize
    return {"shape": "x".join(map(str, shape)), "variant": variant,
            "fwd us": t_fwd / chain * 1e6, "fwd+bwd us": t_bwd / chain * 1e6,
            "fwd GB/s (x in, y out)": 2 * nbytes / (t_fwd / chain) / 1e9,
            "saved MiB": saved / 2 ** 20, "y max err": err(y, ref), "dx max err": err(dx, rdx),
            "dgamma rel err": rel(dg, rdg), "dbeta rel err": rel(db, rdb)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small shapes and few runs (CPU smoke test)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="implementations to measure")
    ap.add_argument("--groups", type=int, default=32, help="GroupNorm groups (SD1.5: 32)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 20; tiny 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls, median (default 50; tiny 3)")
    ap.add_argument("--chain", type=int, default=None,
                    help="dependent applications per timed call (default 10; tiny 2)")
    args = ap.parse_args(argv)
    shapes = TINY_SHAPES if args.tiny else SD15_SHAPES
    groups = 8 if args.tiny else args.groups
    warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 20)
    repeats = args.repeats if args.repeats is not None else (3 if args.tiny else 50)
    chain = args.chain if args.chain is not None else (2 if args.tiny else 10)
    rows = []
    for shape in shapes:
        base = None
        for v in args.variants:
            r = measure(shape, v, groups=groups, warmup=warmup, repeats=repeats, chain=chain)
            base = base or r
            r["fwd+bwd vs first"] = base["fwd+bwd us"] / r["fwd+bwd us"]
            rows.append(r)
            print(f"{r['shape']} {v}: fwd {r['fwd us']:.1f} us, fwd+bwd {r['fwd+bwd us']:.1f} us",
                  flush=True)
    cols = ["shape", "variant", "fwd us", "fwd+bwd us", "fwd+bwd vs first", "fwd GB/s (x in, y out)",
            "saved MiB", "y max err", "dx max err", "dgamma rel err", "dbeta rel err"]
    print_table(f"GroupNorm + SiLU, bf16, {groups} groups ({device_name()}; per application, "
                f"median of {repeats}, chains of {chain})", rows, cols)
    path = write_json("groupnorm_kernels_tiny" if args.tiny else "groupnorm_kernels",
                      {"groups": groups, "warmup": warmup, "repeats": repeats, "chain": chain,
                       "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
