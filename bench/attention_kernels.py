"""Benchmark: the attention kernels of issue 15's attention levers on SD1.5's attention shapes.

The adapter training step of ``bench/train_step.py`` (SD1.5 UNet, 64x64 latents, T = 4 frames a
clip, batch = 4 x clips) calls attention at these shapes (``(B, L, heads, D)``, bfloat16):

  self-d40    (B, 4096, 8, 40)              the 320-channel blocks (the profile's largest kernel)
  self-d80    (B, 1024, 8, 80)              640 channels
  self-d160   (B, 256, 8, 160)              1280 channels (cuDNN does not take 160: XLA today)
  cross-d40   (B, 4096, 8, 40) x 77 keys    text cross-attention at 320 channels

Each variant is ``jaxvedit.models.layers.attention`` (the library's real path) traced under the
lever's environment (the variable names and values are the levers' own):

  xla                     JAXVEDIT_ATTENTION=xla
  cudnn                   JAXVEDIT_ATTENTION=cudnn
  cudnn-pad64             + JAXVEDIT_ATTENTION_HEAD_PAD=64 (40 -> 64, 80 -> 128)
  pallas-triton           JAXVEDIT_ATTENTION=pallas-triton (attention_kernels.TritonConfig defaults)
  pallas-triton-upstream  + JAXVEDIT_ATTENTION_OPTIONS with upstream's blocks (128 x 128, 32s)
  pallas-triton-64        + all blocks 64
  pallas-triton-padded    + heads zero-padded to 64 / 128 before the kernel (not its masked loads)
  mosaic                  JAXVEDIT_ATTENTION=mosaic (attention_kernels.MosaicConfig defaults)
  mosaic-64               + all blocks 64

A variant that does not take a shape (``attention_kernels.why_not``, cuDNN's head-dim limit) is
reported "n/a" with the reason (the lever would fall back to the default there); one that fails
to compile or run is reported with its error, and the script goes on. For the first clip size,
each variant's output and dq / dk / dv (the VJP of a fixed random cotangent) are compared with
XLA's attention in float32 on the same (bf16-rounded) inputs: max |error| / max |reference|.
Then forward and forward + backward are timed (jit, ``--warmup`` calls, median of ``--repeats``,
``jax.block_until_ready``). TFLOP/s counts 4 B h Lq Lk D for the forward and 2.5 times that for
the backward (FlashAttention-2's count), the unpadded head dim.

  python bench/attention_kernels.py                      # GPU: 1 and 4 clips (about 2 minutes)
  python bench/attention_kernels.py --clips 4 --variants cudnn pallas-triton mosaic
  python bench/attention_kernels.py --tiny               # CPU smoke test (Pallas interpret mode)

Prints a Markdown table and writes ``$OUT/attention_kernels.json`` (``bench/results`` by default;
``attention_kernels_tiny.json`` with ``--tiny``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import device_name, print_table, time_steps, write_json  # noqa: E402

_TRITON_UPSTREAM = "block_q=128,block_k=128,block_q_dkv=32,block_kv_dkv=32,block_q_dq=32,block_kv_dq=32"
_TRITON_64 = "block_q=64,block_k=64,block_q_dkv=64,block_kv_dkv=64,block_q_dq=64,block_kv_dq=64"
_MOSAIC_64 = "block_q=64,block_kv=64,block_q_dq=64,block_kv_dq=64,block_q_dkv=64,block_kv_dkv=64"

#: name -> the lever's environment
VARIANTS: dict[str, dict] = {
    "xla": {"JAXVEDIT_ATTENTION": "xla"},
    "cudnn": {"JAXVEDIT_ATTENTION": "cudnn"},
    "cudnn-pad64": {"JAXVEDIT_ATTENTION": "cudnn", "JAXVEDIT_ATTENTION_HEAD_PAD": "64"},
    "pallas-triton": {"JAXVEDIT_ATTENTION": "pallas-triton"},
    "pallas-triton-upstream": {"JAXVEDIT_ATTENTION": "pallas-triton",
                               "JAXVEDIT_ATTENTION_OPTIONS": _TRITON_UPSTREAM},
    "pallas-triton-64": {"JAXVEDIT_ATTENTION": "pallas-triton", "JAXVEDIT_ATTENTION_OPTIONS": _TRITON_64},
    "pallas-triton-padded": {"JAXVEDIT_ATTENTION": "pallas-triton",
                             "JAXVEDIT_ATTENTION_OPTIONS": "pad_heads=1"},
    "mosaic": {"JAXVEDIT_ATTENTION": "mosaic"},
    "mosaic-64": {"JAXVEDIT_ATTENTION": "mosaic", "JAXVEDIT_ATTENTION_OPTIONS": _MOSAIC_64},
}
_ENV_KEYS = ("JAXVEDIT_ATTENTION", "JAXVEDIT_ATTENTION_HEAD_PAD", "JAXVEDIT_ATTENTION_OPTIONS")


def shapes(clips: int, tiny: bool) -> list[tuple[str, int, int, int, int, int]]:
    """(name, B, Lq, Lk, heads, D) of the training step's attention calls at ``clips`` clips."""
    if tiny:  # CPU: Pallas interpret mode is slow; the same kinds of calls
        b = 2 * clips
        return [("self-d40", b, 64, 64, 2, 40), ("self-d80", b, 32, 32, 2, 80),
                ("self-d160", b, 16, 16, 2, 160), ("cross-d40", b, 64, 77, 2, 40)]
    b = 4 * clips
    return [("self-d40", b, 4096, 4096, 8, 40), ("self-d80", b, 1024, 1024, 8, 80),
            ("self-d160", b, 256, 256, 8, 160), ("cross-d40", b, 4096, 77, 8, 40)]


@contextlib.contextmanager
def lever_env(name: str, tiny: bool):
    """The variant's environment while its functions are traced (read at trace time)."""
    env = dict(VARIANTS[name])
    if tiny and env.get("JAXVEDIT_ATTENTION") == "pallas-triton":  # Triton on CPU: interpret mode
        env["JAXVEDIT_ATTENTION_OPTIONS"] = ",".join(
            filter(None, [env.get("JAXVEDIT_ATTENTION_OPTIONS", ""), "interpret=1"]))
    with mock.patch.dict(os.environ):  # the whole environment restored afterwards
        for k in _ENV_KEYS:
            os.environ.pop(k, None)
        os.environ.update(env)
        yield

def not_taken(name: str, b: int, lq: int, lk: int, h: int, d: int) -> str | None:
    """Why the variant would not run its kernel on this shape (inside its environment)."""
    import jax.numpy as jnp

    from jaxvedit.models import attention_kernels, layers

    kernel = VARIANTS[name]["JAXVEDIT_ATTENTION"]
    if kernel in attention_kernels.KERNELS:
        return attention_kernels.why_not(kernel, (b, lq, h, d), (b, lk, h, d), jnp.bfloat16)
    if kernel == "cudnn":
        pad = layers._head_pad(d)
        if "JAXVEDIT_ATTENTION_HEAD_PAD" in VARIANTS[name] and not pad:
            return f"head dim {d} is not padded (the same as cudnn)"
        if layers.choose_attention_implementation("cudnn", jnp.bfloat16, d + pad) != "cudnn":
            return f"cuDNN does not take head dim {d + pad} here (falls back to XLA)"
    return None


def _inputs(b, lq, lk, h, d, seed=0):
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, lq, h * d), jnp.float32).astype(jnp.bfloat16)
    k = jax.random.normal(ks[1], (b, lk, h * d), jnp.float32).astype(jnp.bfloat16)
    v = jax.random.normal(ks[2], (b, lk, h * d), jnp.float32).astype(jnp.bfloat16)
    w = jax.random.normal(ks[3], (b, lq, h * d), jnp.float32).astype(jnp.bfloat16)
    return q, k, v, w


def _functions(attend):
    """(forward, forward + backward) of ``attend(q, k, v)``; the latter returns (out, dq, dk, dv)."""
    import jax

    def fwd_bwd(q, k, v, w):
        out, vjp = jax.vjp(attend, q, k, v)
        return (out, *vjp(w.astype(out.dtype)))

    return attend, fwd_bwd


def _reference(q, k, v, w, h):
    """XLA's attention in float32 of the same inputs: (out, dq, dk, dv)."""
    import jax
    import jax.numpy as jnp

    def attend(q, k, v):
        b, lq, inner = q.shape
        d = inner // h
        o = jax.nn.dot_product_attention(q.reshape(b, lq, h, d), k.reshape(b, -1, h, d),
                                         v.reshape(b, -1, h, d), scale=d ** -0.5, implementation="xla")
        return o.reshape(b, lq, inner)

    f32 = [a.astype(jnp.float32) for a in (q, k, v, w)]
    return jax.block_until_ready(jax.jit(_functions(attend)[1])(*f32))


def _rel_err(got, want) -> float:
    import jax.numpy as jnp

    got, want = got.astype(jnp.float32), want.astype(jnp.float32)
    return float(jnp.abs(got - want).max() / jnp.abs(want).max())


def lower(name: str, shape, inputs, tiny: bool):
    """(row, lowered forward, lowered forward + backward) of one variant at one shape, traced in
    its environment; the lowered functions are None where it is not taken or fails."""
    import jax

    from jaxvedit.models import layers

    label, b, lq, lk, h, d = shape
    row = {"shape": label, "B": b, "Lq": lq, "Lk": lk, "heads": h, "head_dim": d, "variant": name}
    with lever_env(name, tiny):
        try:
            reason = not_taken(name, b, lq, lk, h, d)
        except Exception as e:  # a bad option string, a missing device property, ...
            reason = f"error: {type(e).__name__}: {e}"
        if reason is not None:
            row["status"] = (reason if reason.startswith("error") else f"n/a: {reason}")[:300]
            return row, None, None
        try:
            fwd, fwd_bwd = _functions(lambda q_, k_, v_: layers.attention(q_, k_, v_, h))
            return row, jax.jit(fwd).lower(*inputs[:3]), jax.jit(fwd_bwd).lower(*inputs)
        except Exception as e:
            row["status"] = f"error (trace): {type(e).__name__}: {e}"[:300]
            return row, None, None


def _compile(lowered):
    try:
        t0 = time.perf_counter()
        return lowered.compile(), time.perf_counter() - t0, None
    except Exception as e:
        return None, 0.0, f"error (compile): {type(e).__name__}: {e}"[:300]


def measure(row: dict, fwd_c, fb_c, inputs, args, reference=None) -> dict:
    """Check (against ``reference``, if given) and time one compiled variant."""
    import jax

    q, k, v, w = inputs
    fwd_flops = 4.0 * row["B"] * row["heads"] * row["Lq"] * row["Lk"] * row["head_dim"]
    try:
        if reference is not None:
            got = jax.block_until_ready(fb_c(q, k, v, w))
            for key, g, r in zip(("err_out", "err_dq", "err_dk", "err_dv"), got, reference):
                row[key] = _rel_err(g, r)
            del got
        sync = jax.block_until_ready
        t_f, _ = time_steps(lambda i: fwd_c(q, k, v), warmup=args.warmup, repeats=args.repeats,
                            inner=1, sync=sync)
        t_fb, _ = time_steps(lambda i: fb_c(q, k, v, w), warmup=args.warmup, repeats=args.repeats,
                             inner=1, sync=sync)
    except Exception as e:
        row["status"] = f"error (run): {type(e).__name__}: {e}"[:300]
        return row
    row.update(status="ok", fwd_ms=t_f * 1e3, fwd_bwd_ms=t_fb * 1e3,
               fwd_tflops=fwd_flops / t_f / 1e12, fwd_bwd_tflops=3.5 * fwd_flops / t_fb / 1e12)
    return row


def run_clips(clips: int, check: bool, args, t_start: float) -> list[dict]:
    """All variants at one clip size: traced one by one (each in its environment), compiled
    side by side (``--compile-threads``; XLA's autotuning then shares the GPU), then checked and
    timed one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    todo = []
    for shape in shapes(clips, args.tiny):
        if args.shapes and shape[0] not in args.shapes:
            continue
        inputs = _inputs(*shape[1:])
        ref = _reference(*inputs, shape[4]) if check else None
        for name in args.variants:
            row, lf, lfb = lower(name, shape, inputs, args.tiny)
            todo.append(({"clips": clips, **row}, lf, lfb, inputs, ref))
    lowered = [x for t in todo if t[1] is not None for x in t[1:3]]
    with ThreadPoolExecutor(max(1, args.compile_threads)) as pool:
        compiled = iter(list(pool.map(_compile, lowered)))
    print(f"[{time.perf_counter() - t_start:6.1f}s] clips {clips}: compiled {len(lowered)} functions",
          flush=True)
    rows = []
    for row, lf, _, inputs, ref in todo:
        if lf is not None:
            (fwd_c, s1, e1), (fb_c, s2, e2) = next(compiled), next(compiled)
            row["compile_s"] = s1 + s2
            if e1 or e2:
                row["status"] = e1 or e2
            else:
                measure(row, fwd_c, fb_c, inputs, args, ref)
            del fwd_c, fb_c
        rows.append(row)
        print(f"[{time.perf_counter() - t_start:6.1f}s] clips {clips} {row['shape']} {row['variant']}: "
              f"{row['status'][:120]}", flush=True)
    del todo
    base = {}
    for r in rows:  # speed of forward + backward against cuDNN (XLA where cuDNN does not run)
        if r.get("status") == "ok" and r["variant"] in ("xla", "cudnn"):
            if r["variant"] == "cudnn" or r["shape"] not in base:
                base[r["shape"]] = r["fwd_bwd_ms"]
    for r in rows:
        if r.get("status") == "ok" and r["shape"] in base:
            r["speedup_fwd_bwd"] = base[r["shape"]] / r["fwd_bwd_ms"]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, nargs="+", default=[1, 4], help="clips a step (batch = 4 x clips)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="the kernels to measure")
    ap.add_argument("--shapes", nargs="+", default=None, help="shape names (default: all)")
    ap.add_argument("--warmup", type=int, default=None, help="calls before timing (default 20; tiny 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls, median (default 50; tiny 3)")
    ap.add_argument("--compile-threads", type=int, default=8, help="functions compiled side by side")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: small shapes, interpret mode")
    args = ap.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 20)
    args.repeats = args.repeats if args.repeats is not None else (3 if args.tiny else 50)
    import jax

    t_start = time.perf_counter()
    rows = []
    for ci, clips in enumerate(args.clips):
        rows += run_clips(clips, ci == 0, args, t_start)
        jax.clear_caches()
    cols = ["clips", "shape", "variant", "status", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_tflops",
            "speedup_fwd_bwd", "err_out", "err_dq", "err_dk", "err_dv"]
    table = [{**r, "status": r["status"] if r["status"] == "ok" else r["status"][:90]} for r in rows]
    print_table(f"Attention kernels on {device_name()} (bf16; speedup: fwd+bwd vs cudnn, or xla where "
                f"cuDNN does not run; err: max|err| / max|ref| vs XLA float32)", table, cols)
    name = "attention_kernels_tiny" if args.tiny else "attention_kernels"
    path = write_json(name, {"tiny": args.tiny, "clips": args.clips, "warmup": args.warmup,
                             "repeats": args.repeats, "variants": {v: VARIANTS[v] for v in args.variants},
                             "rows": rows, "seconds": time.perf_counter() - t_start})
    print(f"\nwrote {path} ({time.perf_counter() - t_start:.1f} s)")
    return rows


if __name__ == "__main__":
    main()
