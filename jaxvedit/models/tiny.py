"""A tiny random SD1.x-shaped model, written as a real diffusers folder.

The embedded defaults of ``python -m jaxvedit.train`` and ``python -m jaxvedit.edit`` use it so
they run on a laptop CPU with no download: same folder layout, file formats and loaders as a
real Stable Diffusion 1.5 folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``image_encoder/``, ``scheduler/``), only small and random. Its outputs mean nothing; it exists
to exercise the whole pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxvedit.models.weights import flax_to_torch_layout, torch_key

TINY_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 8,
}
#: the same UNet with the inpainting inputs (latents, mask, masked-image latents)
TINY_INPAINT_UNET_CONFIG = {**TINY_UNET_CONFIG, "in_channels": 9}
TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [8, 16, 16, 16],  # 3 downsamplings: factor 8, as SD
    "layers_per_block": 1,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TINY_TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 520,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "projection_dim": 32,
}
TINY_VISION_CONFIG = {
    "architectures": ["CLIPVisionModelWithProjection"],
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
}
SD15_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet (the 256 symbols its BPE starts from)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_tokenizer(folder: Path) -> None:
    """A byte-level CLIP BPE vocabulary (every byte, alone and word-final) with no merges."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab = {"<|startoftext|>": 0, "<|pad|>": 1, "<|endoftext|>": 2}
    for sym in alphabet:
        vocab.setdefault(sym, len(vocab))
    for sym in alphabet:
        vocab.setdefault(sym + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))


def random_torch_state_dict(build, seed: int) -> dict[str, np.ndarray]:
    """Random weights for the model ``build()`` would make, without running its initialisers
    (eager initialisation of every layer is slow on a small CPU): kernels ~ N(0, 1/fan_in),
    biases zero, norm scales one, embeddings ~ N(0, 0.02)."""
    abstract = nnx.eval_shape(build)
    rng = np.random.default_rng(seed)
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    out = {}
    for path, var in flat:
        shape, leaf = tuple(var.value.shape), str(path[-1])
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
        elif leaf == "scale":
            value = np.ones(shape, np.float32)
        elif leaf == "bias":
            value = np.zeros(shape, np.float32)
        else:  # embeddings, class embedding, position embeddings
            value = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        out[torch_key(path)] = flax_to_torch_layout(value, leaf)
    return out


def _save(build, folder: Path, config: dict, weights_name: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(random_torch_state_dict(build, seed), str(folder / weights_name))


def make_tiny_model(folder: str | os.PathLike, seed: int = 0, *, inpainting: bool = False) -> Path:
    """Write a tiny random SD1.x model folder (diffusers layout); returns its path.
    ``inpainting``: its UNet takes the 9 inpainting input channels (as SD1.5-inpainting)."""
    from jaxvedit.models.clip import CLIPTextModel, CLIPVisionModelWithProjection
    from jaxvedit.models.unet import UNet2DConditionModel
    from jaxvedit.models.vae import AutoencoderKL

    root = Path(folder)
    unet_cfg = TINY_INPAINT_UNET_CONFIG if inpainting else TINY_UNET_CONFIG
    _save(lambda: UNet2DConditionModel(unet_cfg), root / "unet", unet_cfg,
          "diffusion_pytorch_model.safetensors", seed)
    _save(lambda: AutoencoderKL(TINY_VAE_CONFIG), root / "vae", TINY_VAE_CONFIG,
          "diffusion_pytorch_model.safetensors", seed + 1)
    _save(lambda: CLIPTextModel.from_config(TINY_TEXT_CONFIG), root / "text_encoder",
          TINY_TEXT_CONFIG, "model.safetensors", seed + 2)
    _save(lambda: CLIPVisionModelWithProjection.from_config(TINY_VISION_CONFIG),
          root / "image_encoder", TINY_VISION_CONFIG, "model.safetensors", seed + 3)
    write_tiny_tokenizer(root / "tokenizer")
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "jaxvedit_tiny": True}, indent=2))
    return root
