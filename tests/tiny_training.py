"""The tiny-model training setup the training tests run on: a tiny *random* SD-family model and
three generated sample clips (fast on CPU). The CLI's embedded demo runs the shipped world model
instead (``jaxvedit.training.config.DEMO_OVERRIDES``); these tests exercise the trainer's
machinery, not the world model, so they keep their own small settings here."""

import dataclasses
from pathlib import Path

from jaxvedit.data.video import make_sample_dataset
from jaxvedit.training.config import TrainConfig

TINY_OVERRIDES = dict(
    output_dir="runs/tiny", resolution=64, frames=4, steps=30, accumulate=2, learning_rate=1e-3,
    warmup_steps=3, n_shared_tokens=4, pooling="stride:2", dtype="float32", checkpoint_every=10,
    feature_taps=("up_blocks.1.attentions.*.transformer_blocks.0.attn1",), max_frames=8,
)


def prepare_tiny(cfg: TrainConfig) -> TrainConfig:
    """Write the tiny random model and the sample clips under ``cfg.output_dir`` (once) and point
    ``cfg`` at them."""
    from jaxvedit.models.tiny import make_tiny_model

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    model_dir, data_dir = root / "tiny-model", root / "sample-data"
    if not (model_dir / "unet" / "config.json").is_file():
        make_tiny_model(model_dir)
    if not (data_dir / "captions.jsonl").is_file():
        make_sample_dataset(data_dir, n_videos=3, frames=8, size=cfg.resolution)
    return dataclasses.replace(cfg, model=str(model_dir), data=str(data_dir))


def tiny_config(output_dir, **changes) -> TrainConfig:
    """The tiny setup prepared under ``output_dir``."""
    cfg = TrainConfig(**{**TINY_OVERRIDES, "output_dir": str(output_dir), "progress": False, **changes})
    return prepare_tiny(cfg)
