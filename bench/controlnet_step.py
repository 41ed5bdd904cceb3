"""Benchmark: one adapter training step with a frozen depth ControlNet (the authors' setup), ours
vs PyTorch (diffusers UNet2DConditionModel + ControlNetModel + peft LoRA; eager and
torch.compile), full SD1.5 UNet and SD1.5 ControlNet, random weights.

Work per step, identical for every implementation: the adapter step of ``bench/train_step.py``
(T=4 frames at 64x64 latents, 18 shared + 25 pooled unshared + 77 text tokens, LoRA rank 4 on
every attention projection, temporal loss on up_blocks.2/3 attn1 + diffusion MSE, clipping,
AdamW) plus the frozen ControlNet on the same noisy latents, timesteps and context with one
512x512 depth map per frame, its 13 residuals added to the UNet. Frozen weights bf16, bf16
compute, adapter parameters float32.

  python bench/controlnet_step.py                    # all three, side by side (one process each)
  python bench/controlnet_step.py --impl jax         # one of jax, torch-eager, torch-compile
  python bench/controlnet_step.py --tiny             # CPU smoke test (tiny UNet and ControlNet)

Prints a Markdown table and ``RESULT {json}`` lines; writes ``$OUT/controlnet_step.json``
(``bench/results`` by default). Needs torch, diffusers and peft for the PyTorch rows.
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
sys.path.insert(0, str(HERE.parent))
from common import SD15_UNET, TINY_UNET, print_table, random_fill, time_steps, write_json  # noqa: E402

T = 4
N_SHARE, N_VISION, N_TEXT, D = 18, 50, 77, 768
TAPS = ("up_blocks.2.attentions.*.transformer_blocks.0.attn1",
        "up_blocks.3.attentions.*.transformer_blocks.0.attn1")
# --tiny (a CPU smoke test of the same code): one level, float32 (bf16 is emulated on CPUs)
SMOKE_UNET = {**TINY_UNET, "block_out_channels": [32], "down_block_types": ["CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D"]}
SMOKE_TAPS = ("up_blocks.0.attentions.*.transformer_blocks.0.attn1",)
IMPLS = ("jax", "torch-eager", "torch-compile")


def _unet_config(tiny: bool) -> dict:
    return SMOKE_UNET if tiny else SD15_UNET


def controlnet_config(tiny: bool) -> dict:
    """The ControlNet diffusers' ``from_unet`` makes for the benchmark UNet (SD1.5: the config
    of lllyasviel/sd-controlnet-depth)."""
    from jaxvedit.models.controlnet import controlnet_config_from_unet
    from jaxvedit.models.unet import UNetConfig

    cfg = controlnet_config_from_unet(UNetConfig.from_dict(_unet_config(tiny))).to_dict()
    cfg.pop("_class_name")
    return cfg


def run_jax(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxvedit.adapters import (LoRAConfig, PromptTokenConfig, PromptTokens, adapter_optimizer,
                                   apply_lora, init_adapter_training, make_adapter_train_step)
    from jaxvedit.diffusion.schedules import NoiseSchedule
    from jaxvedit.models.controlnet import ControlNetModel
    from jaxvedit.models.unet import UNet2DConditionModel
    from jaxvedit.training.config import TrainConfig
    from jaxvedit.training.trainer import AdapterModel, make_loss_fn

    bf16 = jnp.float32 if args.tiny else jnp.bfloat16
    unet = nnx.eval_shape(lambda: UNet2DConditionModel(_unet_config(args.tiny), dtype=bf16,
                                                       param_dtype=bf16))
    random_fill(unet, 0)  # host-made random weights, as bench/train_step.py (no device temporaries)
    cn = nnx.eval_shape(lambda: ControlNetModel(controlnet_config(args.tiny), dtype=bf16,
                                                param_dtype=bf16))
    random_fill(cn, 1)
    rngs = nnx.Rngs(0)
    model = AdapterModel(apply_lora(unet, LoRAConfig(rank=4, alpha=4.0, targets="all", tau=0.5), rngs=rngs),
                         PromptTokens(PromptTokenConfig(n_share=N_SHARE, vision_dim=D, context_dim=D,
                                                        pooling="avg2"), rngs=rngs), cn)
    tcfg = TrainConfig(frames=T, feature_taps=SMOKE_TAPS if args.tiny else TAPS, text_dropout=0.3,
                       dtype="float32" if args.tiny else "bfloat16")
    loss_fn = make_loss_fn(tcfg, NoiseSchedule.sd15(), jnp.zeros((N_TEXT, D), jnp.float32))
    state = init_adapter_training(model, adapter_optimizer(1e-4, warmup_steps=0, accumulate=1))
    step = make_adapter_train_step(loss_fn, state)
    b, hw = args.clips, args.latent
    rng = np.random.default_rng(0)
    batch = jax.device_put({
        "latents": rng.standard_normal((b, T, hw, hw, 4), np.float32),
        "text": rng.standard_normal((b, N_TEXT, D), np.float32),
        "vision": rng.standard_normal((b, T, N_VISION, D), np.float32),
        "depth": rng.integers(0, 256, (b, T, 8 * hw, 8 * hw, 3)).astype(np.uint8),
    })
    key = jax.random.key(0)
    t0 = time.perf_counter()
    step.lower(state.params, state.frozen, state.opt_state, batch, key).compile()
    compile_s = time.perf_counter() - t0

    def one(i):
        loss, _ = state.step(step, batch, jax.random.fold_in(key, i))
        return loss

    secs, loss = time_steps(one, warmup=args.warmup, repeats=args.repeats, inner=args.inner,
                            sync=lambda out: jax.block_until_ready((out, state.params)))
    ms = 1e3 * secs
    dev = jax.devices()[0]
    peak = (dev.memory_stats() or {}).get("peak_bytes_in_use", 0)
    return {"impl": "jax", "ms_per_step": ms, "frames_per_s": b * T / (ms / 1e3), "clips": b,
            "peak_mem_gib": peak / 2**30, "compile_s": compile_s, "loss": float(loss),
            "trainable_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "backend": jax.default_backend()}


def run_torch(args, compile_mode: bool):
    import fnmatch

    import torch
    import torch.nn.functional as F
    from diffusers import ControlNetModel, UNet2DConditionModel
    from peft import LoraConfig

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    wdt = torch.float32 if args.tiny else torch.bfloat16
    with torch.device(dev):  # initialise on the GPU (host init of 1.2 G weights is slow)
        unet = UNet2DConditionModel(**_unet_config(args.tiny)).to(dtype=wdt)
        controlnet = ControlNetModel(**controlnet_config(args.tiny)).to(dtype=wdt)
    unet.requires_grad_(False)
    controlnet.requires_grad_(False)  # frozen, as main_ddp.py
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for p in lora_params:
        p.data = p.data.float()
    shared = torch.nn.Parameter(0.02 * torch.randn(N_SHARE, D, device=dev))
    proj = torch.nn.Linear(D, D).to(dev)
    params = lora_params + [shared] + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2,
                            fused=dev == "cuda")
    captured = []
    for name, mod in unet.named_modules():
        if any(fnmatch.fnmatchcase(name, p) for p in (SMOKE_TAPS if args.tiny else TAPS)):
            mod.register_forward_hook(lambda m, a, o: captured.append(o))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    abar = torch.cumprod(1 - betas, 0).to(dev)
    b, hw = args.clips, args.latent
    g = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(b, T, 4, hw, hw, generator=g).to(dev)
    text = torch.randn(b, N_TEXT, D, generator=g).to(dev)
    vision = torch.randn(b, T, N_VISION, D, generator=g).to(dev)
    depth = torch.randint(0, 256, (b * T, 3, 8 * hw, 8 * hw), generator=g, dtype=torch.uint8).to(dev)
    empty = torch.zeros(N_TEXT, D, device=dev)
    fwd = torch.compile(unet) if compile_mode else unet
    cn_fwd = torch.compile(controlnet) if compile_mode else controlnet

    def temporal(f):
        f = f.float().reshape(f.shape[0], -1)
        s = F.cosine_similarity(f[:-1], f[1:], dim=-1)
        return ((s[1:] - s[:-1]) ** 2).sum() / (f.shape[0] - 1)

    def step():
        captured.clear()
        t = torch.randint(0, 1000, (b,), device=dev)
        noise = torch.randn_like(latents)
        a = abar[t].view(b, 1, 1, 1, 1)
        x_t = (a.sqrt() * latents + (1 - a).sqrt() * noise).reshape(b * T, 4, hw, hw)
        txt = text.repeat_interleave(T, 0)
        drop = (torch.rand(b, device=dev) < 0.3).repeat_interleave(T)
        txt = torch.where(drop[:, None, None], empty, txt)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=not args.tiny):
            v = vision.reshape(b * T, N_VISION // 2, 2, D).mean(2)
            ctx = torch.cat([shared.expand(b * T, -1, -1), proj(v), txt], 1)
            tt = t.repeat_interleave(T)
            down, mid = cn_fwd(x_t.to(wdt), tt, ctx, depth.to(wdt) / 255.0, return_dict=False)
            eps = fwd(x_t.to(wdt), tt, ctx, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample
            l_diff = F.mse_loss(eps.float(), noise.reshape(b * T, 4, hw, hw))
            l_temp = torch.stack([torch.stack([temporal(f[c * T:(c + 1) * T]) for c in range(b)]).mean()
                                  for f in captured]).mean()
            loss = l_diff + 0.01 * (t >= 500).float().mean() * l_temp
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    sync()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.inner):
            loss = step()
        sync()
        times.append((time.perf_counter() - t0) / args.inner)
    times.sort()
    ms = 1e3 * times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else 0
    return {"impl": "torch-compile" if compile_mode else "torch-eager", "ms_per_step": ms,
            "frames_per_s": b * T / (ms / 1e3), "clips": b, "peak_mem_gib": peak / 2**30,
            "warmup_s": warm_s, "loss": float(loss.detach()), "trainable_params": int(sum(p.numel() for p in params))}


def run_all(args, impls) -> list[dict]:
    rows = []
    limits = [int(v) for v in str(args.timeout).split(",")]
    if len(limits) not in (1, len(impls)):
        raise SystemExit(f"--timeout: give one value or one per implementation ({len(impls)})")
    for impl, limit in zip(impls, limits * len(impls) if len(limits) == 1 else limits):
        cmd = [sys.executable, str(Path(__file__).resolve()), f"--impl={impl}",
               "--latent", str(args.latent), "--clips", str(args.clips), "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--inner", str(args.inner)] + (["--tiny"] if args.tiny else [])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            found = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
                     if line.startswith("RESULT ")]
            if proc.returncode or not found:
                tail = (proc.stderr or proc.stdout)[-1500:]
                print(f"FAILED {impl} ({proc.returncode}):\n{tail}", flush=True)
                found = [{"impl": impl, "error": tail[-400:]}]
        except subprocess.TimeoutExpired:
            found = [{"impl": impl, "error": f"timeout {limit}s"}]
        print(f"{impl}: {time.perf_counter() - t0:.0f}s", flush=True)
        rows += found
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", default="all", help="all, or a comma-separated list of "
                    + ", ".join(IMPLS) + " (one: run it in this process)")
    ap.add_argument("--clips", type=int, default=1, help="clips of T=4 frames per step")
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512x512 pixels)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inner", type=int, default=3, help="steps per timed repeat")
    ap.add_argument("--timeout", default="300", help="seconds per implementation: one value for "
                    "all, or one per implementation in --impl's order (e.g. 200,120,270)")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet and ControlNet (CPU smoke test)")
    args = ap.parse_args(argv)
    if args.tiny and args.latent == 64:
        args.latent = 8
    impls = IMPLS if args.impl == "all" else tuple(args.impl.split(","))
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown --impl {bad}; choose from {IMPLS}")
    if len(impls) == 1 and args.impl != "all":
        res = run_jax(args) if args.impl == "jax" else run_torch(args, args.impl == "torch-compile")
        print("RESULT " + json.dumps(res), flush=True)
        return
    report(run_all(args, impls), args)


def report(rows: list[dict], args) -> Path:
    """Speed-ups, the Markdown table and ``$OUT/controlnet_step[_tiny].json``."""
    base = {r["impl"]: r for r in rows if "ms_per_step" in r}
    for r in rows:
        for ref in ("torch-eager", "torch-compile"):
            if "ms_per_step" in r and ref in base:
                r[f"speedup_vs_{ref}"] = base[ref]["ms_per_step"] / r["ms_per_step"]
    what = ("tiny UNet + ControlNet, float32 (smoke test)" if args.tiny
            else "SD1.5 UNet + SD1.5 ControlNet, bf16")
    print_table(f"Adapter training step with a frozen ControlNet, {what}, T=4 frames at "
                f"{args.latent}x{args.latent} latents", rows,
                ["impl", "ms_per_step", "frames_per_s", "peak_mem_gib", "compile_s", "warmup_s",
                 "speedup_vs_torch-eager", "speedup_vs_torch-compile", "error"])
    path = write_json("controlnet_step" + ("_tiny" if args.tiny else ""), {"rows": rows})
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
