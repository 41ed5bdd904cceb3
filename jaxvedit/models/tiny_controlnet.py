"""A tiny random ControlNet (fitting :data:`jaxvedit.models.tiny.TINY_UNET_CONFIG`) and a tiny
random Depth Anything model, written as real diffusers / transformers folders, for the embedded
demos and the tests (their outputs mean nothing; they exercise the pipeline on a CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.numpy import save_file

from jaxvedit.models.tiny import random_torch_state_dict

TINY_CONTROLNET_CONFIG = {
    "_class_name": "ControlNetModel",
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "in_channels": 4,
    "conditioning_embedding_out_channels": [8, 16, 16, 16],  # 3 downsamplings: factor 8, as SD
}
TINY_DEPTH_CONFIG = {
    "architectures": ["DepthAnythingForDepthEstimation"],
    "model_type": "depth_anything",
    "backbone_config": {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "mlp_ratio": 2, "image_size": 56, "patch_size": 14,
                        "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False},
    "patch_size": 14,
    "reassemble_hidden_size": 32,
    "reassemble_factors": [4, 2, 1, 0.5],
    "neck_hidden_sizes": [8, 16, 24, 32],
    "fusion_hidden_size": 16,
    "head_hidden_size": 8,
    "depth_estimation_type": "relative",
}
TINY_DEPTH_PROCESSOR = {
    "image_processor_type": "DPTImageProcessor", "do_resize": True,
    "size": {"height": 56, "width": 56}, "keep_aspect_ratio": True, "ensure_multiple_of": 14,
    "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_pad": False,
}


def make_tiny_controlnet(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random ControlNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``);
    its zero convolutions are random too, so its residuals change the UNet's output."""
    from jaxvedit.models.controlnet import ControlNetModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_CONTROLNET_CONFIG, indent=2))
    save_file(random_torch_state_dict(lambda: ControlNetModel(TINY_CONTROLNET_CONFIG), seed),
              str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def make_tiny_depth_model(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random Depth Anything folder (``config.json``, ``model.safetensors``,
    ``preprocessor_config.json`` resizing to 56 px)."""
    from jaxvedit.models.depth_anything import DepthAnythingForDepthEstimation

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_DEPTH_CONFIG, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_DEPTH_PROCESSOR, indent=2))
    state = random_torch_state_dict(lambda: DepthAnythingForDepthEstimation(TINY_DEPTH_CONFIG), seed)
    save_file(state, str(folder / "model.safetensors"))
    return folder
