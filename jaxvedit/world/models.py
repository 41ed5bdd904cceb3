"""The world's model family: configs (SD1.x block types, small), the diffusers folder it ships
as, and where the shipped weights live.

The world pipeline is a real diffusers ``StableDiffusionPipeline`` folder: ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``image_encoder/`` and ``model_index.json``,
weights in float16 safetensors. It loads with our loaders and with diffusers'
``StableDiffusionPipeline.from_pretrained``. Frames are 128x128 (a multiple of 32 from 64 up
works: the VAE downsamples by 8 and the UNet twice more).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax import nnx

from jaxvedit.models.tiny import SD15_SCHEDULER_CONFIG
from jaxvedit.models.weights import flax_to_torch_layout, torch_key
from jaxvedit.world.tokenizer import BOS, EOS, vocab_size, write_world_tokenizer

WORLD_VERSION = "world-v1"
MAX_TOKENS = 32  # the grammar's longest caption is 24 tokens with BOS/EOS
FRAME_SIZE = 128
SIZE_MULTIPLE = 32  # VAE x8, UNet x4


def check_frame_size(height: int, width: int | None = None) -> None:
    """The world models take frames whose sides are multiples of 32 and at least 64 px."""
    for side in (height, width if width is not None else height):
        if side < 64 or side % SIZE_MULTIPLE:
            raise ValueError(f"frame size {height}x{width or height}: the world models take sides "
                             f"that are multiples of {SIZE_MULTIPLE} and at least 64 px (the VAE "
                             "downsamples by 8, the UNet by 4 more)")


def _ids() -> tuple[int, int]:
    n = vocab_size()
    return n - 2, n - 1  # BOS, EOS (CLIP's order: specials last)


def vae_config(preset: str = "base") -> dict:
    ch, layers, groups = {"base": ((32, 64, 128, 128), 2, 16), "tiny": ((8, 16, 16, 16), 1, 4)}[preset]
    return {"_class_name": "AutoencoderKL", "block_out_channels": list(ch), "layers_per_block": layers,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "latent_channels": 4, "norm_num_groups": groups, "in_channels": 3, "out_channels": 3,
            "act_fn": "silu", "sample_size": FRAME_SIZE, "scaling_factor": 1.0}


def text_config(preset: str = "base") -> dict:
    hidden, layers, heads = {"base": (192, 4, 3), "tiny": (32, 1, 2)}[preset]
    bos, eos = _ids()
    return {"architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
            "vocab_size": vocab_size(), "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "max_position_embeddings": MAX_TOKENS, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos, "projection_dim": hidden}


def vision_config(preset: str = "base") -> dict:
    hidden, layers, heads, image, patch = {"base": (192, 4, 3, 112, 16), "tiny": (32, 1, 2, 32, 8)}[preset]
    return {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
            "hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "image_size": image, "patch_size": patch, "num_channels": 3,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": hidden}


def unet_config(preset: str = "base") -> dict:
    if preset == "tiny":
        return {"_class_name": "UNet2DConditionModel", "block_out_channels": [16, 32],
                "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32,
                "attention_head_dim": 2, "norm_num_groups": 8, "in_channels": 4, "out_channels": 4,
                "sample_size": FRAME_SIZE // 8}
    return {"_class_name": "UNet2DConditionModel", "block_out_channels": [48, 96, 192],
            "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 192, "attention_head_dim": [3, 6, 12], "norm_num_groups": 16,
            "in_channels": 4, "out_channels": 4, "sample_size": FRAME_SIZE // 8, "act_fn": "silu"}


def feature_taps(unet_cfg: dict) -> tuple[str, ...]:
    """The temporal loss taps for a world UNet: the self-attention of the two highest-resolution
    up blocks with attention (SPEC §3 taps the 32x32 and 64x64 levels of SD1.5)."""
    ups = [i for i, k in enumerate(unet_cfg["up_block_types"]) if k == "CrossAttnUpBlock2D"]
    return tuple(f"up_blocks.{i}.attentions.*.transformer_blocks.0.attn1" for i in ups[-2:])


# ----------------------------------------------------------------------------------------------
# the diffusers folder


def torch_state_dict(module: nnx.Module, dtype=np.float16) -> dict[str, np.ndarray]:
    """A module's parameters as a PyTorch-layout state dict (diffusers / transformers keys)."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        leaf = str(path[-1])
        out[torch_key(path)] = np.ascontiguousarray(
            flax_to_torch_layout(np.asarray(var.value, np.float32), leaf).astype(dtype))
    return out


def save_component(folder: str | os.PathLike, module: nnx.Module, config: dict, weights_name: str,
                   dtype=np.float16) -> Path:
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(torch_state_dict(module, dtype), str(folder / weights_name), metadata={"format": "pt"})
    return folder


MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.30.0",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
}


def write_pipeline(folder: str | os.PathLike, *, unet, unet_cfg, vae, vae_cfg, text, text_cfg,
                   vision, vision_cfg, extra: dict | None = None, dtype=np.float16) -> Path:
    """Write the world pipeline as a diffusers folder (float16 weights by default)."""
    root = Path(folder)
    save_component(root / "unet", unet, unet_cfg, "diffusion_pytorch_model.safetensors", dtype)
    save_component(root / "vae", vae, vae_cfg, "diffusion_pytorch_model.safetensors", dtype)
    save_component(root / "text_encoder", text, text_cfg, "model.safetensors", dtype)
    save_component(root / "image_encoder", vision, vision_cfg, "model.safetensors", dtype)
    write_world_tokenizer(root / "tokenizer", max_length=MAX_TOKENS)
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2))
    (root / "model_index.json").write_text(json.dumps(
        {**MODEL_INDEX, "jaxvedit_world": {"version": WORLD_VERSION, "frame_size": FRAME_SIZE,
                                            "bos": BOS, "eos": EOS, **(extra or {})}}, indent=2))
    return root


MODEL_ALIASES = ("world", WORLD_VERSION)
INPAINT_ALIASES = ("world-inpaint", f"{WORLD_VERSION}-inpaint")
CONTROLNET_ALIASES = ("world-depth", f"{WORLD_VERSION}-depth-controlnet")


def expand_model_alias(model: str | None) -> str | None:
    """``"world"`` (or ``"world-v1"``) -> the shipped world pipeline's folder, ``"world-inpaint"``
    -> the world inpainting pipeline (:func:`world_inpaint_path`), ``"world-depth"`` -> the world
    depth ControlNet, when no local path of that name exists; anything else unchanged."""
    if model is None or Path(model).exists():
        return model
    if model in MODEL_ALIASES:
        return str(world_model_path())
    if model in INPAINT_ALIASES:
        return str(world_inpaint_path())
    if model in CONTROLNET_ALIASES:
        return str(world_controlnet_path())
    return model


def world_controlnet_path(version: str = WORLD_VERSION, *, missing_ok: bool = False) -> Path | None:
    """The shipped world depth ControlNet (a diffusers ``ControlNetModel`` folder), trained with
    ``python -m jaxvedit.world.train_conditioned`` on the renderer's depth maps."""
    path = Path(__file__).parent / "pretrained" / f"{version}-depth-controlnet"
    if not (path / "config.json").is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(f"no world depth ControlNet is shipped in this install ({path}); "
                                "train one with python -m jaxvedit.world.train_conditioned")
    return path


def world_inpaint_path(version: str = WORLD_VERSION, *, missing_ok: bool = False,
                       cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The world inpainting pipeline as a diffusers folder: the shipped inpainting UNet
    (``<version>-inpaint/unet/``, 9 input channels) with the world pipeline's VAE, text
    encoder, tokenizer, scheduler and image encoder. The package ships the UNet alone; the
    folder is assembled once (links to the shipped files, copies where links are not possible)
    under ``$JAXVEDIT_CACHE`` or ``~/.cache/jaxvedit``."""
    import shutil

    unet = Path(__file__).parent / "pretrained" / f"{version}-inpaint" / "unet"
    if not (unet / "config.json").is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(f"no world inpainting UNet is shipped in this install ({unet}); "
                                "train one with python -m jaxvedit.world.train_conditioned")
    from jaxvedit.models.loading import cache_root

    base = world_model_path(version)
    root = Path(cache_dir if cache_dir is not None else cache_root()) / f"{version}-inpaint"
    index = json.loads((base / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    parts = {"unet": unet, **{p: base / p for p in ("vae", "text_encoder", "tokenizer", "scheduler",
                                                    "image_encoder")}}
    stamp = json.dumps({p: [str(src), sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                             for f in src.iterdir())] for p, src in parts.items()})
    if (root / ".source").is_file() and (root / ".source").read_text() == stamp:
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, src in parts.items():
        try:
            (tmp / name).symlink_to(src.resolve(), target_is_directory=True)
        except OSError:
            shutil.copytree(src, tmp / name)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    (tmp / ".source").write_text(stamp)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def world_model_path(version: str = WORLD_VERSION) -> Path:
    """The shipped world pipeline inside the installed package."""
    path = Path(__file__).parent / "pretrained" / version
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"the world model {version!r} is not shipped in this install "
                                f"({path} has no model_index.json); train one with "
                                "python -m jaxvedit.world.train")
    return path


def is_world_model(path: str | os.PathLike) -> bool:
    index = Path(path) / "model_index.json"
    return index.is_file() and "jaxvedit_world" in json.loads(index.read_text())


def world_adapter_path(version: str = WORLD_VERSION, *, missing_ok: bool = False,
                       kind: str = "ge") -> Path | None:
    """A shipped adapter of the world model: ``kind="ge"``, the GE adapter (gated LoRA + prompt
    tokens, ``lora/`` and ``prompt_tokens/``) trained with ``python -m jaxvedit.train`` on world
    videos; ``kind="dape"``, the DAPE adapter (``dape/``) trained with ``--method dape``."""
    if kind not in ("ge", "dape"):
        raise ValueError(f"unknown world adapter kind {kind!r} (ge, dape)")
    path = Path(__file__).parent / "pretrained" / f"{version}-{kind}-adapter"
    if not (path / ("lora" if kind == "ge" else "dape")).is_dir():
        if missing_ok:
            return None
        raise FileNotFoundError(f"no world {kind} adapter is shipped in this install ({path})")
    return path
