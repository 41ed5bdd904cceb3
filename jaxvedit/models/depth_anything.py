"""Flax NNX port of transformers' ``DepthAnythingForDepthEstimation``
(``models/depth_anything/modeling_depth_anything.py``): a Dinov2 backbone
(:mod:`jaxvedit.models.dinov2`), the DPT-style neck (reassemble four hidden states into a feature
pyramid, fuse it top-down with residual conv units) and the depth head (three convolutions with a
bilinear upsampling to the input resolution).

Why Depth Anything (and not DPT / MiDaS, which the authors' code uses through ``torch.hub``):
its V2 releases (``depth-anything/Depth-Anything-V2-Small-hf``, 25 M parameters) give sharper and
more consistent relative depth than MiDaS' DPT-Large (343 M) at a fraction of the cost, the same
transformers class serves V1 and V2 (Small/Base/Large, relative and metric), and its output is
relative inverse depth (near = large) like MiDaS', which is what SD1.5 depth ControlNets were
trained on. See ``docs/controlnet.md``.

Call: ``depth = model(pixel_values)`` with ``pixel_values (B, H, W, 3)`` channels-last,
normalised (:class:`jaxvedit.models.depth.DepthProcessor`), ``H, W`` multiples of 14; returns
``predicted_depth (B, H, W)`` float32. Loads a transformers folder or hub id
(:func:`load_depth_model`); attribute names follow the checkpoint keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.models.config import read_config
from jaxvedit.models.dinov2 import Dinov2Backbone, Dinov2Config
from jaxvedit.models.layers import Precision, conv
from jaxvedit.models.resize import interpolate
from jaxvedit.models.weights import load_torch_state_dict, read_weights_folder

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class DepthAnythingConfig:
    backbone_config: Dinov2Config = dataclasses.field(default_factory=lambda: Dinov2Config(
        hidden_size=384, num_attention_heads=6, out_indices=(9, 10, 11, 12),
        reshape_hidden_states=False))
    patch_size: int = 14
    reassemble_hidden_size: int = 384
    reassemble_factors: tuple = (4, 2, 1, 0.5)
    neck_hidden_sizes: tuple = (48, 96, 192, 384)
    fusion_hidden_size: int = 64
    head_in_index: int = -1
    head_hidden_size: int = 32
    depth_estimation_type: str = "relative"
    max_depth: float = 1

    IGNORED = ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
               "initializer_range", "_name_or_path", "backbone", "use_pretrained_backbone",
               "use_timm_backbone", "backbone_kwargs", "id2label", "label2id", "return_dict",
               "output_hidden_states", "output_attentions", "problem_type",
               "is_encoder_decoder", "chunk_size_feed_forward")

    @classmethod
    def from_dict(cls, raw: dict) -> "DepthAnythingConfig":
        raw = {k: v for k, v in raw.items() if k not in cls.IGNORED}
        bb = raw.pop("backbone_config", None)
        if bb is None:
            backbone = cls().backbone_config
        else:
            if bb.get("model_type", "dinov2") != "dinov2":
                raise ValueError(f"Depth Anything backbone {bb.get('model_type')!r} is not supported "
                                 "(supported: dinov2)")
            backbone = Dinov2Config.from_dict(bb)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"Depth Anything config has unknown key(s) {unknown}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()}
        if isinstance(kw.get("patch_size"), tuple):
            kw["patch_size"] = kw["patch_size"][0]
        cfg = cls(backbone_config=backbone, **kw)
        if cfg.depth_estimation_type not in ("relative", "metric"):
            raise ValueError(f"depth_estimation_type must be 'relative' or 'metric', got "
                             f"{cfg.depth_estimation_type!r}")
        if len(cfg.neck_hidden_sizes) != len(cfg.reassemble_factors) or \
                len(cfg.neck_hidden_sizes) != len(backbone.selected_layers):
            raise ValueError("Depth Anything config: neck_hidden_sizes, reassemble_factors and the "
                             "backbone's out_indices must have the same length")
        return cfg


class ConvTranspose(nnx.Module):
    """``nn.ConvTranspose2d(c, c, kernel_size=k, stride=k)`` (no overlap: each input pixel becomes
    a ``k x k`` patch). ``kernel (k, k, out, in)`` = PyTorch's ``(in, out, k, k)`` transposed as
    :mod:`jaxvedit.models.weights` does for 4-D kernels."""

    def __init__(self, channels: int, k: int, p: Precision, rngs: nnx.Rngs):
        self.k = k
        self.dtype = p.dtype
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (k, k, channels, channels),
                                                  p.param_dtype) / (channels * k * k) ** 0.5)
        self.bias = nnx.Param(jnp.zeros((channels,), p.param_dtype))

    def __call__(self, x):
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,xyoc->bhxwyo", x, self.kernel.value.astype(self.dtype))
        y = y.reshape(b, h * self.k, w * self.k, -1)
        return y + self.bias.value.astype(self.dtype)


class Identity(nnx.Module):
    def __call__(self, x):
        return x


class ReassembleLayer(nnx.Module):
    def __init__(self, cfg: DepthAnythingConfig, channels: int, factor, p, rngs):
        self.projection = conv(cfg.reassemble_hidden_size, channels, 1, p, rngs)
        if factor > 1:
            self.resize = ConvTranspose(channels, int(factor), p, rngs)
        elif factor == 1:
            self.resize = Identity()
        else:
            self.resize = conv(channels, channels, 3, p, rngs, stride=int(1 / factor), padding=1)

    def __call__(self, x):
        return self.resize(self.projection(x))


class ReassembleStage(nnx.Module):
    def __init__(self, cfg: DepthAnythingConfig, p, rngs):
        self.layers = nnx.List([ReassembleLayer(cfg, c, f, p, rngs)
                                for c, f in zip(cfg.neck_hidden_sizes, cfg.reassemble_factors)])

    def __call__(self, hidden_states, ph: int, pw: int):
        out = []
        for layer, hs in zip(self.layers, hidden_states):
            x = hs[:, 1:]  # drop CLS
            out.append(layer(x.reshape(x.shape[0], ph, pw, x.shape[-1])))
        return out


class PreActResidualLayer(nnx.Module):
    def __init__(self, cfg: DepthAnythingConfig, p, rngs):
        c = cfg.fusion_hidden_size
        self.convolution1 = conv(c, c, 3, p, rngs)
        self.convolution2 = conv(c, c, 3, p, rngs)

    def __call__(self, x):
        h = self.convolution1(jax.nn.relu(x))
        return self.convolution2(jax.nn.relu(h)) + x


class FeatureFusionLayer(nnx.Module):
    def __init__(self, cfg: DepthAnythingConfig, p, rngs):
        c = cfg.fusion_hidden_size
        self.projection = conv(c, c, 1, p, rngs)
        self.residual_layer1 = PreActResidualLayer(cfg, p, rngs)
        self.residual_layer2 = PreActResidualLayer(cfg, p, rngs)

    def __call__(self, x, residual=None, size=None):
        if residual is not None:
            if residual.shape != x.shape:
                residual = interpolate(residual, x.shape[1:3], mode="bilinear", align_corners=False)
            x = x + self.residual_layer1(residual)
        x = self.residual_layer2(x)
        if size is None:
            x = interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = interpolate(x, size, mode="bilinear", align_corners=True)
        return self.projection(x)


class FeatureFusionStage(nnx.Module):
    def __init__(self, cfg: DepthAnythingConfig, p, rngs):
        self.layers = nnx.List([FeatureFusionLayer(cfg, p, rngs) for _ in cfg.neck_hidden_sizes])

    def __call__(self, features):
        features = features[::-1]
        fused, out = None, []
        for i, (f, layer) in enumerate(zip(features, self.layers)):
            size = features[i + 1].shape[1:3] if i != len(features) - 1 else None
            fused = layer(f, size=size) if fused is None else layer(fused, f, size=size)
            out.append(fused)
        return out


class Neck(nnx.Module):
    def __init__(self, cfg: DepthAnythingConfig, p, rngs):
        self.reassemble_stage = ReassembleStage(cfg, p, rngs)
        self.convs = nnx.List([nnx.Conv(c, cfg.fusion_hidden_size, kernel_size=(3, 3),
                                        padding=((1, 1), (1, 1)), use_bias=False, dtype=p.dtype,
                                        param_dtype=p.param_dtype, rngs=rngs)
                               for c in cfg.neck_hidden_sizes])
        self.fusion_stage = FeatureFusionStage(cfg, p, rngs)

    def __call__(self, hidden_states, ph, pw):
        feats = self.reassemble_stage(hidden_states, ph, pw)
        return self.fusion_stage([c(f) for c, f in zip(self.convs, feats)])


class DepthHead(nnx.Module):
    def __init__(self, cfg: DepthAnythingConfig, p, rngs):
        c = cfg.fusion_hidden_size
        self.cfg = cfg
        self.conv1 = conv(c, c // 2, 3, p, rngs)
        self.conv2 = conv(c // 2, cfg.head_hidden_size, 3, p, rngs)
        self.conv3 = conv(cfg.head_hidden_size, 1, 1, p, rngs)

    def __call__(self, features, ph, pw):
        cfg = self.cfg
        x = self.conv1(features[cfg.head_in_index])
        x = interpolate(x, (ph * cfg.patch_size, pw * cfg.patch_size), mode="bilinear",
                        align_corners=True)
        x = self.conv3(jax.nn.relu(self.conv2(x)))
        act = jax.nn.relu if cfg.depth_estimation_type == "relative" else jax.nn.sigmoid
        return (act(x) * cfg.max_depth)[..., 0]


class DepthAnythingForDepthEstimation(nnx.Module):
    def __init__(self, config: DepthAnythingConfig | dict, *, rngs: nnx.Rngs | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32,
                 attention_implementation: str | None = None):
        cfg = config if isinstance(config, DepthAnythingConfig) else DepthAnythingConfig.from_dict(dict(config))
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        p = Precision(dtype, param_dtype, attention_implementation)
        self.config = cfg
        self.backbone = Dinov2Backbone(cfg.backbone_config, rngs=rngs, dtype=dtype,
                                       param_dtype=param_dtype,
                                       attention_implementation=attention_implementation)
        self.neck = Neck(cfg, p, rngs)
        self.head = DepthHead(cfg, p, rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        h, w = pixel_values.shape[1:3]
        k = self.config.patch_size
        ph, pw = h // k, w // k
        feats = self.neck(self.backbone(pixel_values), ph, pw)
        return self.head(feats, ph, pw).astype(jnp.float32)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors",
                                                               "preprocessor_config.json"]))
    except Exception as err:
        raise FileNotFoundError(
            f"no local folder named {repo_id!r}, and it could not be resolved as a Hugging Face repo "
            f"id (not in the hub cache, or the hub refused: {type(err).__name__}: {err})") from err


def resolve_depth_folder(source: str | os.PathLike) -> Path:
    """A local transformers folder for ``source`` (a folder or a repo id)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if text.startswith((".", "/", "~")) or not _REPO_ID.match(text):
        raise FileNotFoundError(f"depth model not found: {path} (no such folder)")
    return _download(text)


def load_depth_model(source: str | os.PathLike = DEFAULT_DEPTH_MODEL, *, dtype=jnp.float32,
                     attention_implementation: str | None = None) -> DepthAnythingForDepthEstimation:
    """A Depth Anything model from a transformers folder (``config.json`` +
    ``model.safetensors``) or a hub id (V1 ``LiheYoung/depth-anything-*-hf`` or V2
    ``depth-anything/Depth-Anything-V2-*-hf``)."""
    folder = resolve_depth_folder(source)
    raw = read_config(folder, "depth model config")
    kind = raw.get("model_type")
    if kind != "depth_anything":
        raise ValueError(f"{folder}/config.json has model_type {kind!r}; only Depth Anything "
                         "(model_type 'depth_anything') is ported")
    cfg = DepthAnythingConfig.from_dict(raw)
    model = nnx.eval_shape(lambda: DepthAnythingForDepthEstimation(
        cfg, dtype=dtype, attention_implementation=attention_implementation))
    state = read_weights_folder(folder, "model")
    load_torch_state_dict(model, state, what=f"depth model from {folder}")
    return model
