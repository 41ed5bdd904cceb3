"""Peak memory and seconds per frame of an edit vs the number of frames, for ``--method ddim``
and ``--method tokenflow`` (issue 19: memory must not grow with the frame count beyond the
latents).

  python bench/edit_memory.py                     # GPU: full SD1.5 architecture (random weights,
                                                  # bf16), 512x512 frames, 16 / 64 / 200 frames
  python bench/edit_memory.py --tiny              # CPU: the tiny random model, 128x128 frames

Each method runs in its own process (the peak of a process only grows), its frame counts in
ascending order: if the peak after 200 frames equals the one after 16, the longer edits needed no
more memory. GPU: ``peak_bytes_in_use`` of the device; CPU (no device statistics): the process's
peak resident memory (``ru_maxrss``), which also holds the host-side arrays (frames, latents, the
inversion's per-step latents) that grow with the frame count by design. A persistent compilation
cache lets the second process reuse the first one's VAE / inversion programs.

The memory of an edit does not depend on the number of DDIM steps (one compiled step program;
only the host-side inversion latents grow with steps), so the default is 2 steps; seconds per
frame are given as measured and extrapolated to 50 steps from the runs without compilation.
Writes ``$OUT/edit_memory[_tiny].json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import SD15_UNET, device_name, print_table, write_json  # noqa: E402

SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
                 projection_dim=768, eos_token_id=2, bos_token_id=0, pad_token_id=1)


def _random_params(module, seed: int = 0):
    """Random weights drawn on the device (fast for 1B parameters): normal / sqrt(fan-in)
    kernels, unit norm scales, zero biases."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    key = jax.random.key(seed)
    for i, (path, var) in enumerate(flat):
        shape, dtype = var.value.shape, var.value.dtype
        name = str(path[-1])
        if name == "scale":
            var.value = jnp.ones(shape, dtype)
        elif name == "bias":
            var.value = jnp.zeros(shape, dtype)
        else:
            fan_in = max(1, math.prod(shape[:-1])) if len(shape) > 1 else 1
            var.value = (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
                         / fan_in ** 0.5).astype(dtype)
    nnx.update(module, nnx.from_flat_state(flat))
    return module


def build_editor(args):
    from jaxvedit.editing import Editor
    from jaxvedit.models.tiny import make_tiny_model

    tiny = Path(tempfile.mkdtemp()) / "tiny"
    make_tiny_model(tiny)
    if args.tiny:
        return Editor(str(tiny), batch_frames=args.batch_frames)
    import jax.numpy as jnp
    from flax import nnx

    from jaxvedit.diffusion.schedules import NoiseSchedule
    from jaxvedit.models.clip import CLIPTextConfig, CLIPTextModel, load_tokenizer
    from jaxvedit.models.unet import UNet2DConditionModel
    from jaxvedit.models.vae import AutoencoderKL

    dt = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    unet = _random_params(nnx.eval_shape(lambda: UNet2DConditionModel(SD15_UNET, dtype=dt, rngs=nnx.Rngs(0))))
    vae = _random_params(nnx.eval_shape(lambda: AutoencoderKL(SD15_VAE, dtype=dt, rngs=nnx.Rngs(0))), 1)
    text = _random_params(nnx.eval_shape(lambda: CLIPTextModel(CLIPTextConfig.from_dict(SD15_TEXT),
                                                               dtype=dt, rngs=nnx.Rngs(0))), 2)
    return Editor.from_components(unet, vae, text, load_tokenizer(tiny), NoiseSchedule.sd15(),
                                  batch_frames=args.batch_frames)


def peak_bytes() -> tuple[int, str]:
    import jax

    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def child(args, emit=lambda row: print("RESULT " + json.dumps(row), flush=True)) -> None:
    """One method, every frame count (ascending), one RESULT line each."""
    import jax

    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from jaxvedit.data.video import synthetic_frames
    from jaxvedit.editing.tokenflow import tokenflow_edit

    t0 = time.perf_counter()
    editor = build_editor(args)
    jax.block_until_ready(jax.tree.leaves(nnx_state(editor.unet)))
    build_s = time.perf_counter() - t0
    h, w = args.size
    for n in sorted(args.frames):
        frames = synthetic_frames(n, (h, w), seed=n)[0]
        t0 = time.perf_counter()
        kw = dict(steps=args.steps, guidance_scale=7.5, progress=False)
        if args.method == "tokenflow":
            res = tokenflow_edit(editor, frames, "a red square moving right", "a blue circle moving right",
                                 batch_size=args.tokenflow_batch, keyframe_group=args.keyframe_group, **kw)
        else:
            res = editor.edit(frames, prompt="a blue circle moving right",
                              source_prompt="a red square moving right", **kw)
        wall = time.perf_counter() - t0
        peak, what = peak_bytes()
        tm = res.timings
        row = {"method": args.method, "frames": n, "size": f"{w}x{h}", "steps": args.steps,
               "peak_mem_gib": peak / 2 ** 30, "measure": what, "wall_s": wall,
               "s_per_frame": wall / n, "encode_s": tm["encode_s"], "diffusion_s": tm["diffusion_s"],
               "decode_s": tm["decode_s"], "inversion_s": tm.get("inversion_s"), "build_s": build_s,
               "latents_mib": res.latents.nbytes / 2 ** 20}
        if "step_s" in tm:
            row["step_s"] = tm["step_s"]
        emit(row)


def nnx_state(module):
    from flax import nnx

    return nnx.state(module)


def extrapolate(rows: list[dict], steps50: int = 50) -> None:
    """Seconds per frame at 50 steps from the compile-free part: diffusion time scales with the
    steps (inversion + sampling), encode / decode do not. The first row of each method includes
    compilation and is not used; tokenflow's steady per-step time is the median of its steps
    after the first."""
    for r in rows:
        r["s_per_frame_50_steps"] = None
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    for method_rows in by_method.values():
        for r in method_rows[1:]:
            if r.get("step_s") and len(r["step_s"]) > 1:  # tokenflow: the first step may compile
                steady = sorted(r["step_s"][1:])[len(r["step_s"][1:]) // 2]
                diff = r["inversion_s"] * steps50 / r["steps"] + steady * steps50
            else:
                diff = r["diffusion_s"] * steps50 / r["steps"]
            r["s_per_frame_50_steps"] = (r["encode_s"] + r["decode_s"] + diff) / r["frames"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU mode: the tiny random model")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 64, 200])
    p.add_argument("--size", default=None, help="WxH (default 512x512; --tiny: 128x128)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["ddim", "tokenflow"], choices=["ddim", "tokenflow"])
    p.add_argument("--dtype", default=None, help="bfloat16 / float32 (default: bfloat16 on GPU)")
    p.add_argument("--batch-frames", type=int, default=8)
    p.add_argument("--tokenflow-batch", type=int, default=8)
    p.add_argument("--keyframe-group", type=int, default=8)
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--inprocess", action="store_true",
                   help="run the methods in this process (tests; the peaks are then cumulative)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = args.size or ("128x128" if args.tiny else "512x512")
    w, h = (int(v) for v in size.lower().split("x"))
    args.size = (h, w)
    if args.child:
        args.method = args.child
        args.dtype = args.dtype or "float32"
        child(args)
        return 0
    dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    cache = tempfile.mkdtemp(prefix="jaxvedit-bench-cache-")
    rows, errors = [], []
    for method in args.methods:
        if args.inprocess:
            child(argparse.Namespace(**{**vars(args), "method": method, "dtype": dtype, "cache": None}),
                  emit=rows.append)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--cache", cache,
               "--size", f"{w}x{h}", "--steps", str(args.steps), "--dtype", dtype,
               "--batch-frames", str(args.batch_frames), "--tokenflow-batch", str(args.tokenflow_batch),
               "--keyframe-group", str(args.keyframe_group), "--frames", *map(str, args.frames)]
        if args.tiny:
            cmd.append("--tiny")
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:  # keep the frame counts that finished
            text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
            stdout, stderr, rc = text(e.stdout), text(e.stderr) + f"\ntimed out after {args.timeout} s", "timeout"
        got = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
        if rc or len(got) != len(args.frames):
            errors.append({"method": method, "rc": rc, "stderr": stderr[-3000:]})
            print(f"FAILED {method} ({rc}):\n{stderr[-3000:]}", file=sys.stderr)
        print(f"{method}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows += got
    extrapolate(rows)
    title = (f"edit memory vs frames, {'tiny model' if args.tiny else 'SD1.5 architecture (random weights)'}"
             f", {w}x{h}, {dtype}, {args.steps} steps (memory does not depend on the step count), "
             f"{device_name()}")
    print_table(title, rows, ["method", "frames", "peak_mem_gib", "measure", "wall_s", "s_per_frame",
                              "s_per_frame_50_steps", "latents_mib"])
    print("\ns_per_frame: this run (the first row of each method includes compilation); "
          "s_per_frame_50_steps: extrapolated to 50 DDIM steps from the diffusion time of the "
          "compile-free rows.")
    out = write_json("edit_memory_tiny" if args.tiny else "edit_memory",
                     {"title": title, "rows": rows, "errors": errors,
                      "settings": {"tokenflow_batch": args.tokenflow_batch,
                                   "keyframe_group": args.keyframe_group,
                                   "batch_frames": args.batch_frames}})
    print(f"wrote {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
