"""Benchmark 1 (and 4): one adapter training step on the full SD1.5 UNet (random weights).

Work per step, identical for every implementation: a clip of T=4 frames at 64x64 latents
(512x512 pixels), one shared timestep, per-frame noise, context = 18 shared + 25 pooled unshared
(CLIP-vision-shaped, 50 tokens pooled avg2, projected) + 77 text tokens, LoRA rank 4 on every
attention projection (to_q/k/v/out, 128 projections), the temporal loss (eq. 22) on the attn1
outputs of up_blocks.2 and .3 plus the diffusion MSE, backward to the adapter parameters
(float32), global-norm clipping 1.0 and an AdamW update. Frozen base weights are stored in
bfloat16 and compute is bfloat16 in every implementation.

  python bench/train_step.py --impl jax            # ours
  python bench/train_step.py --impl torch-eager    # diffusers UNet + peft LoRA, SDPA
  python bench/train_step.py --impl torch-compile  # the same under torch.compile
  python bench/train_step.py --impl jax --devices 2 --clips-per-device 1   # data parallel

Prints one JSON line (the driver ``bench/run.py`` collects them into a table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (SD15_UNET, TINY_UNET, datasheet_peak, device_name, random_fill,  # noqa: E402
                    time_steps, timing_gate)

T = 4
N_SHARE, N_VISION, N_TEXT, D = 18, 50, 77, 768
TAPS = ("up_blocks.2.attentions.*.transformer_blocks.0.attn1",
        "up_blocks.3.attentions.*.transformer_blocks.0.attn1")


def build_jax_step(args) -> SimpleNamespace:
    """The benchmark's jitted adapter step and its inputs, built once (``run_jax`` times it,
    ``bench/profile_step.py`` profiles it): ``one(i)`` runs step ``i`` (PRNG key folded with
    ``i``) and returns its loss; ``step``, ``state``, ``batch``, ``key``, ``loss_fn``,
    ``devices`` and ``clips`` (the global batch) are there for lowering and counting."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxvedit.adapters import (LoRAConfig, PromptTokenConfig, PromptTokens, adapter_optimizer,
                                   apply_lora, init_adapter_training, make_adapter_train_step)
    from jaxvedit.diffusion.schedules import NoiseSchedule
    from jaxvedit.models.unet import UNet2DConditionModel
    from jaxvedit.training.config import TrainConfig
    from jaxvedit.training.trainer import AdapterModel, make_loss_fn

    cfg_unet = TINY_UNET if args.tiny else SD15_UNET
    if args.unet_config:
        cfg_unet = json.loads(Path(args.unet_config).read_text())
    D = cfg_unet["cross_attention_dim"]  # noqa: N806  (context and vision width)
    taps = tuple(args.taps) if args.taps else TAPS
    impl = None if args.attention == "auto" else args.attention
    unet = nnx.eval_shape(lambda: UNet2DConditionModel(cfg_unet, dtype=jnp.bfloat16,
                                                       param_dtype=jnp.bfloat16,
                                                       attention_implementation=impl))
    random_fill(unet)
    rngs = nnx.Rngs(0)
    model = AdapterModel(apply_lora(unet, LoRAConfig(rank=4, alpha=4.0, targets="all", tau=0.5), rngs=rngs),
                         PromptTokens(PromptTokenConfig(n_share=N_SHARE, vision_dim=D, context_dim=D,
                                                        pooling="avg2"), rngs=rngs))
    tcfg = TrainConfig(frames=T, feature_taps=taps, text_dropout=0.3, dtype="bfloat16")
    empty = jnp.zeros((N_TEXT, D), jnp.float32)
    loss_fn = make_loss_fn(tcfg, NoiseSchedule.sd15(), empty)
    state = init_adapter_training(model, adapter_optimizer(1e-4, warmup_steps=0, accumulate=1))
    devices = jax.devices()[: args.devices]
    mesh = Mesh(np.asarray(devices), ("data",))
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state.params = jax.device_put(state.params, rep)
    state.frozen = jax.device_put(state.frozen, rep)
    state.opt_state = jax.device_put(state.opt_state, rep)
    step = make_adapter_train_step(loss_fn, state)
    b = args.clips_per_device * len(devices)
    hw = args.latent
    rng = np.random.default_rng(0)
    batch = jax.device_put({
        "latents": rng.standard_normal((b, T, hw, hw, 4), np.float32),
        "text": rng.standard_normal((b, N_TEXT, D), np.float32),
        "vision": rng.standard_normal((b, T, N_VISION, D), np.float32),
    }, shard)
    key = jax.random.key(0)

    def one(i):
        loss, _ = state.step(step, batch, jax.random.fold_in(key, i))
        return loss

    return SimpleNamespace(step=step, state=state, batch=batch, key=key, loss_fn=loss_fn,
                           devices=devices, clips=b, one=one)


def run_jax(args):
    import jax

    from jaxvedit.adapters import make_adapter_train_step

    built = build_jax_step(args)
    step, state, batch, key, loss_fn = built.step, built.state, built.batch, built.key, built.loss_fn
    devices, b, one = built.devices, built.clips, built.one
    if args.flops_only:
        return {"impl": "jax", "xla_flops_per_step": _count_flops(make_adapter_train_step, loss_fn, state,
                                                                   batch, key),
                "backend": jax.default_backend(), "clips": b}
    t0 = time.perf_counter()
    compiled = step.lower(state.params, state.frozen, state.opt_state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()  # XLA's own figure: per program, also in a shared process
    temp_gib = getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem is not None else None
    flops = _count_flops(make_adapter_train_step, loss_fn, state, batch, key)
    if not flops:  # the GPU backend's cost analysis may give none: use the CPU count (same program)
        ref = Path(__file__).resolve().parent / "flops_train_step.json"
        if ref.is_file():  # per device; linear in the clips (per-frame work on the batch axis)
            counted = json.loads(ref.read_text())
            flops = float(counted["xla_flops_per_step"]) * args.clips_per_device / counted["clips"]

    with timing_gate():  # bench/levers.py: compiled side by side, warmed up and timed alone
        secs, loss = time_steps(one, warmup=args.warmup, repeats=args.repeats, inner=args.inner,
                                sync=lambda out: jax.block_until_ready((out, state.params)))
        peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in devices)
    ms = 1e3 * secs
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    out = {"impl": "jax" + (f" x{len(devices)}" if len(devices) > 1 else ""), "ms_per_step": ms,
           "frames_per_s": b * T / (ms / 1e3), "clips": b, "devices": len(devices),
           "peak_mem_gib": peak / 2**30, "compile_s": compile_s, "xla_flops_per_step": flops,
           "xla_temp_gib": temp_gib,
           "loss": float(loss), "trainable_params": int(n_params), "attention": args.attention}
    # XLA's cost analysis of the SPMD program counts the per-device work
    peak_tf = datasheet_peak(device_name())
    if flops and peak_tf:
        out["mfu_datasheet"] = flops / (ms / 1e3) / (peak_tf * 1e12)
    return out


def _count_flops(make_step, loss_fn, state, batch, key) -> float:
    """XLA's cost analysis of the step as written, lowered with XLA attention (cuDNN custom
    calls, chosen for the timed program, are opaque to the cost analysis)."""
    import jaxvedit.models.layers as layers

    chooser = layers.choose_attention_implementation
    layers.choose_attention_implementation = lambda *a: "xla"
    try:
        cost = make_step(loss_fn, state).lower(state.params, state.frozen, state.opt_state,
                                               batch, key).cost_analysis()
    finally:
        layers.choose_attention_implementation = chooser
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def run_torch(args, compile_mode: bool):
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg_unet = TINY_UNET if args.tiny else SD15_UNET
    unet = UNet2DConditionModel(**cfg_unet).to(dev, dtype=torch.bfloat16)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for p in lora_params:  # trainable adapter in float32 (diffusers' cast_training_params)
        p.data = p.data.float()
    shared = torch.nn.Parameter(0.02 * torch.randn(N_SHARE, D, device=dev))
    proj = torch.nn.Linear(D, D).to(dev)
    params = lora_params + [shared] + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2,
                            fused=dev == "cuda")
    captured = []
    import fnmatch
    for name, mod in unet.named_modules():
        if any(fnmatch.fnmatchcase(name, p) for p in TAPS):
            mod.register_forward_hook(lambda m, a, o: captured.append(o))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    abar = torch.cumprod(1 - betas, 0).to(dev)
    b, hw = args.clips_per_device, args.latent
    g = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(b, T, 4, hw, hw, generator=g).to(dev)
    text = torch.randn(b, N_TEXT, D, generator=g).to(dev)
    vision = torch.randn(b, T, N_VISION, D, generator=g).to(dev)
    empty = torch.zeros(N_TEXT, D, device=dev)
    fwd = torch.compile(unet) if compile_mode else unet

    def temporal(f):  # eq. 22 on (T, ...) features, cosine over the whole per-frame tensor
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
        with torch.autocast(dev, dtype=torch.bfloat16):
            v = vision.reshape(b * T, N_VISION, D)
            v = v.reshape(b * T, N_VISION // 2, 2, D).mean(2)  # avg2 pooling
            ctx = torch.cat([shared.expand(b * T, -1, -1), proj(v), txt], 1)
            eps = fwd(x_t.to(torch.bfloat16), t.repeat_interleave(T), ctx).sample
            l_diff = F.mse_loss(eps.float(), noise.reshape(b * T, 4, hw, hw))
            l_temp = torch.stack([torch.stack([temporal(f[c * T:(c + 1) * T]) for c in range(b)]).mean()
                                  for f in captured]).mean()
            gate = (t >= 500).float().mean()
            loss = l_diff + 0.01 * gate * l_temp
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
            "frames_per_s": b * T / (ms / 1e3), "clips": b, "devices": 1, "peak_mem_gib": peak / 2**30,
            "warmup_s": warm_s, "loss": float(loss), "trainable_params": int(sum(p.numel() for p in params))}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["jax", "torch-eager", "torch-compile"], default="jax")
    ap.add_argument("--devices", type=int, default=1, help="GPUs for data parallelism (jax)")
    ap.add_argument("--clips-per-device", type=int, default=1, help="clips of T=4 frames per GPU")
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512x512 pixels)")
    ap.add_argument("--attention", default="auto", help="jax attention implementation: auto, xla, cudnn")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--inner", type=int, default=4, help="steps per timed repeat")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (CPU smoke test)")
    ap.add_argument("--unet-config", default=None, help="UNet config.json to build instead (jax)")
    ap.add_argument("--taps", nargs="*", default=None, help="feature taps (default: up_blocks.2/.3 attn1)")
    ap.add_argument("--flops-only", action="store_true",
                    help="print XLA's FLOP count of the step (lowering only; run on CPU to make "
                         "bench/flops_train_step.json)")
    return ap.parse_args(argv)


def main():
    args = parse_args()
    res = run_jax(args) if args.impl == "jax" else run_torch(args, args.impl == "torch-compile")
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
