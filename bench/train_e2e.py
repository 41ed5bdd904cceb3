"""End-to-end training throughput: ``python -m jaxvedit.train`` (store, Grain loader, host work,
checkpoints, logging) against the bare step at the same batch.

In one call:
1. writes the full SD1.5 architecture with random weights as a diffusers folder (UNet, VAE,
   CLIP ViT-L/14 text encoder, a ViT-B/32 image encoder, a byte-level tokenizer, scheduler;
   float16 files) and a generated clip store for it (prepare's record format and this model's
   fingerprints, random bf16 latents 64x64x4 and vision states 50x768, 20 captions a video);
2. runs the trainer's command line (``jaxvedit.train.main``, what ``python -m jaxvedit.train``
   runs, in a fresh process) on them (bf16 base and compute, T=4, ``--batch-size B``,
   accumulation 1, the spec's adapters and taps) and takes optimizer steps/s from its own
   ``metrics.jsonl`` (after the first ``--skip`` steps, which include compilation);
3. in that process, after training: **the bare step**, i.e. the trainer's own compiled step
   program run back to back on one device-resident micro-batch (no loader, no host work, no
   logging; no second compilation: the first call's time is reported), so the ratio is the
   loop's overhead alone;
4. with ``--train-step``: also ``bench/train_step.py --impl jax --clips-per-device B`` (the
   benchmark's bare step: precomputed text embeddings instead of token ids; one more compilation);
5. with ``--remat``: the same training run with ``--remat`` (peak device memory and steps/s; one
   more compilation).

  python bench/train_e2e.py                  # GPU: the comparison (one compilation, ~2 min)
  python bench/train_e2e.py --remat          # GPU: plus the --remat run (one more compilation)
  python bench/train_e2e.py --remat-only     # GPU: the --remat run alone (its memory and speed)
  python bench/train_e2e.py --tiny           # CPU smoke test (tiny model; figures meaningless)

Prints a table; writes ``train_e2e.json`` to $OUT (or bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

SD15_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
SD15_TEXT = {  # CLIP ViT-L/14 text tower
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 768,
    "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
VIT_B32 = {  # the unshared tokens' vision tower: 50 tokens of width 768
    "architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "image_size": 224, "patch_size": 32, "num_channels": 3, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 512,
}
TAPS_TINY = ["up_blocks.1.attentions.*.transformer_blocks.0.attn1"]


def write_sd15_folder(root: Path, seed: int = 0) -> Path:
    """The full SD1.5 architecture, random weights, as a diffusers folder (float16 files)."""
    import numpy as np
    from safetensors.numpy import save_file

    from common import SD15_UNET
    from jaxvedit.models.clip import CLIPTextModel, CLIPVisionModelWithProjection
    from jaxvedit.models.tiny import SD15_SCHEDULER_CONFIG, random_torch_state_dict, write_tiny_tokenizer
    from jaxvedit.models.unet import UNet2DConditionModel
    from jaxvedit.models.vae import AutoencoderKL

    if (root / "model_index.json").is_file():
        return root
    parts = [("unet", lambda: UNet2DConditionModel(SD15_UNET), SD15_UNET, "diffusion_pytorch_model.safetensors"),
             ("vae", lambda: AutoencoderKL(SD15_VAE), SD15_VAE, "diffusion_pytorch_model.safetensors"),
             ("text_encoder", lambda: CLIPTextModel.from_config(SD15_TEXT), SD15_TEXT, "model.safetensors"),
             ("image_encoder", lambda: CLIPVisionModelWithProjection.from_config(VIT_B32), VIT_B32,
              "model.safetensors")]
    for i, (name, build, config, weights) in enumerate(parts):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: np.ascontiguousarray(v.astype(np.float16))
                 for k, v in random_torch_state_dict(build, seed + i).items()}
        save_file(state, str(root / name / weights))
    write_tiny_tokenizer(root / "tokenizer")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "jaxvedit_random": True}))
    return root


def write_store(model: Path, out: Path, spec: dict, resolution: int) -> Path:
    """A generated store that a run with ``model`` accepts (its encoder fingerprints)."""
    from loader import generate

    from jaxvedit.data.encoders import encoder_fingerprint, resolve_sources, vision_fingerprint

    src = resolve_sources(str(model))
    generate(out, spec, fingerprints=(encoder_fingerprint(src), vision_fingerprint(src)),
             resolution=resolution)  # resumable: finished shards are kept
    return out


def steps_per_s(metrics: Path, skip: int) -> tuple[float, int]:
    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    timed = [r for r in recs if r["step"] > skip]
    if len(timed) < 2:
        raise SystemExit(f"{metrics}: only {len(recs)} steps logged; raise --steps above --skip + 2")
    a, b = timed[0], timed[-1]
    return (b["step"] - a["step"]) / (b["time"] - a["time"]), b["step"] - a["step"]


def train_then_bare(argv: list[str], bare_steps: int) -> None:
    """In a child process: the trainer's command line on ``argv``, then its compiled step timed
    back to back on the last micro-batch it trained on (the step function and its state are
    taken from the loop as it builds them). Prints ``BARE {json}``."""
    import jax

    from jaxvedit.training import loop

    seen = {}
    build = loop.make_adapter_train_step

    def capturing(loss_fn, state, **kw):
        step = build(loss_fn, state, **kw)
        seen.update(step=step, state=state)

        def recording(params, frozen, opt_state, batch, key):
            seen["batch"] = batch  # device-resident, not donated
            return step(params, frozen, opt_state, batch, key)

        return recording

    loop.make_adapter_train_step = capturing
    from jaxvedit.train import main

    main(argv)
    step, state, batch = seen["step"], seen["state"], seen["batch"]
    key = jax.random.key(1)
    t0 = time.perf_counter()
    jax.block_until_ready(state.step(step, batch, jax.random.fold_in(key, 0)))
    first = time.perf_counter() - t0
    for i in range(2):
        jax.block_until_ready(state.step(step, batch, jax.random.fold_in(key, 1 + i)))
    t0 = time.perf_counter()
    for i in range(bare_steps):
        loss, _ = state.step(step, batch, jax.random.fold_in(key, 10 + i))
    jax.block_until_ready((loss, state.params))
    dt = (time.perf_counter() - t0) / bare_steps
    print("BARE " + json.dumps({"ms_per_step": 1e3 * dt, "first_call_s": first, "steps": bare_steps}),
          flush=True)


def run_train(args, model: Path, store: Path, out: Path, remat: bool, env: dict) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-bare-steps", str(args.bare_steps),
           "--", "--model", str(model), "--data", str(store),
           "--output-dir", str(out), "--steps", str(args.steps), "--accumulate", "1",
           "--batch-size", str(args.batch), "--frames", "4", "--resolution", str(args.resolution),
           "--warmup-steps", "0", "--log-every", "1", "--checkpoint-every", "100000", "--no-progress",
           "--dtype", args.dtype, "--base-dtype", args.dtype, "--remat" if remat else "--no-remat"]
    if args.tiny:
        cmd += ["--feature-taps", *TAPS_TINY, "--n-shared-tokens", "4", "--pooling", "stride:2"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"training run failed:\n{proc.stderr[-4000:]}")
    lines = proc.stdout.splitlines()
    start = lines.index("{")
    summary = json.loads("\n".join(lines[start:lines.index("}", start) + 1]))
    bare = json.loads([x for x in lines if x.startswith("BARE ")][0][5:])
    sps, n = steps_per_s(out / "metrics.jsonl", args.skip)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = recs[0]["time"]
    tag = " --remat" if remat else ""
    return [{"impl": "python -m jaxvedit.train" + tag, "steps_per_s": sps,
             "ms_per_step": 1e3 / sps, "timed_steps": n, "clips": args.batch,
             "peak_mem_gib": summary.get("peak_device_mem_gib"), "first_step_s": first,
             "first_batch_s": summary.get("first_batch_s"), "data_wait_s": summary.get("data_wait_s"),
             "wall_s": time.perf_counter() - t0, "remat": remat},
            {"impl": "the trainer's step, bare" + tag, "steps_per_s": 1e3 / bare["ms_per_step"],
             "ms_per_step": bare["ms_per_step"], "timed_steps": bare["steps"], "clips": args.batch,
             "first_call_s": bare["first_call_s"], "remat": remat}]


def run_bare(args, env: dict) -> dict:
    cmd = [sys.executable, str(HERE / "train_step.py"), "--impl", "jax", "--clips-per-device", str(args.batch)]
    if args.tiny:  # the tiny model's UNet, on CPU: a smoke test
        cmd += ["--unet-config", str(args.model / "unet" / "config.json"), "--latent", str(args.resolution // 8),
                "--taps", TAPS_TINY[0], "--warmup", "1", "--repeats", "2", "--inner", "2"]
    else:
        cmd += ["--warmup", "3", "--repeats", "5", "--inner", "4"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"bare step failed:\n{proc.stderr[-4000:]}")
    r = json.loads(line[0][7:])
    return {"impl": "bench/train_step.py (bare step)", "steps_per_s": 1e3 / r["ms_per_step"],
            "ms_per_step": r["ms_per_step"], "clips": r["clips"], "peak_mem_gib": r.get("peak_mem_gib"),
            "compile_s": r.get("compile_s"), "wall_s": time.perf_counter() - t0, "remat": False}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test)")
    ap.add_argument("--remat", action="store_true", help="also run training with --remat")
    ap.add_argument("--remat-only", action="store_true",
                    help="only the --remat run (its own call: one compilation)")
    ap.add_argument("--train-step", action="store_true",
                    help="also run bench/train_step.py's bare step (one more compilation)")
    ap.add_argument("--bare-steps", type=int, default=20, help="steps of the bare-step timing")
    ap.add_argument("--child-bare-steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("train_argv", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=4, help="clips (of 4 frames) per step")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps of the training run")
    ap.add_argument("--skip", type=int, default=5, help="first steps left out of the rate")
    ap.add_argument("--work", default=None, help="folder for the model and store "
                    "(default: $TMPDIR/jaxvedit-e2e[-tiny])")
    args = ap.parse_args()
    if args.child_bare_steps:
        return train_then_bare(args.train_argv, args.child_bare_steps)
    import tempfile

    work = Path(args.work or Path(tempfile.gettempdir()) / ("jaxvedit-e2e-tiny" if args.tiny else "jaxvedit-e2e"))
    work.mkdir(parents=True, exist_ok=True)
    args.resolution = 64 if args.tiny else 512
    args.dtype = "bfloat16"
    t0 = time.perf_counter()
    if args.tiny:
        from jaxvedit.models.tiny import make_tiny_model

        model = work / "model"
        if not (model / "model_index.json").is_file():
            make_tiny_model(model)
        spec = dict(videos=16, frames=16, captions=4, vision_videos=16, latent=8, vision=(17, 32),
                    tokens=77, videos_per_shard=8, vocab=520)
    else:
        model = write_sd15_folder(work / "sd15-random")
        spec = dict(videos=64, frames=32, captions=20, vision_videos=64, latent=64, vision=(50, 768),
                    tokens=77, videos_per_shard=16)
    args.model = model
    store = write_store(model, work / "store", spec, args.resolution)
    setup_s = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p), "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    rows = [] if args.remat_only else run_train(args, model, store, work / "run", False, env)
    if args.remat or args.remat_only:
        rows += run_train(args, model, store, work / "run-remat", True, env)
    if args.train_step:
        rows.append(run_bare(args, env))
    for i in range(0, len(rows), 2):  # each training run against its own bare step
        if rows[i]["impl"].startswith("python -m"):
            for r in rows[i:i + 2]:
                r["vs_bare_step"] = r["steps_per_s"] / rows[i + 1]["steps_per_s"]
    vs_train_step = rows[0]["steps_per_s"] / rows[-1]["steps_per_s"] if args.train_step else None
    from common import print_table, write_json

    print_table(f"End-to-end training vs the bare step ({'tiny model, CPU' if args.tiny else 'SD1.5'}, "
                f"{args.batch} clips x 4 frames a step)", rows,
                ["impl", "steps_per_s", "ms_per_step", "vs_bare_step", "peak_mem_gib", "data_wait_s",
                 "first_step_s", "first_call_s", "wall_s"])
    ratio = rows[0]["vs_bare_step"]
    print(f"\ntrain / bare step = {ratio:.3f} (target >= 0.90); setup {setup_s:.0f} s")
    if vs_train_step is not None:
        print(f"train / bench/train_step.py = {vs_train_step:.3f}")
    print("wrote", write_json("train_e2e_tiny" if args.tiny else "train_e2e",
                              {"rows": rows, "ratio": ratio, "ratio_vs_train_step": vs_train_step,
                               "setup_s": setup_s, "spec": spec, "tiny": args.tiny,
                               "cmd": " ".join(sys.argv)}))


if __name__ == "__main__":
    main()
