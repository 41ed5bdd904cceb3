"""The DAPE training configuration: one typed dataclass for both stages;
``python -m jaxvedit.train --method dape --help`` is generated from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxvedit.training.config import opt


@dataclass(frozen=True)
class DAPETrainConfig:
    """Train DAPE (paper 000, SPEC §2) on the UNet: stage 1 adjustable norm-tuning (every norm
    becomes gamma * Norm(z) + beta + alpha0 * z; only gamma, beta, alpha0 train), then stage 2
    the vision adapter in the transformer blocks, starting from stage 1's result (only the
    adapter trains). Per video (one-shot, as DAPE: --video and --caption) or on a dataset
    (--data). With no --model, --data or --video it runs the embedded demo (tiny random model,
    generated clip, CPU)."""

    method: Literal["dape"] = opt("dape", "what to train: this is the DAPE config ('dape')", "method")

    # what to train on
    model: str | None = opt(None, "SD1.5 weights: a diffusers folder or a Hugging Face repo id "
                            "(default: the demo's tiny model)", "data")
    video: str | None = opt(None, "one-shot tuning on this video (a file or a folder of frames); "
                            "give its --caption", "data")
    caption: str | None = opt(None, "caption of --video (the source prompt)", "data")
    data: str | None = opt(None, "or tune on a dataset folder: captions.jsonl or MSR-VTT layout", "data")
    output_dir: str = opt("runs/dape", "run folder: checkpoints/, metrics.jsonl, loss_curve.png, "
                          "adapter/dape/", "data")
    cache_dir: str | None = opt(None, "latent cache folder of --data (default: <data>/.jaxvedit_cache)",
                                "data")
    frames: int = opt(8, "frames per training clip (the authors' code: 17, the whole clip)", "data")
    frame_stride: int = opt(1, "take every n-th frame when forming a clip", "data")
    resolution: int = opt(512, "frames are resized and center-cropped to this square size", "data")
    max_frames: int = opt(64, "decode at most this many frames of each video", "data")

    # the DAPE modules
    norm_targets: Literal["all", "attention"] = opt(
        "all", "norms tuned in stage 1: every GroupNorm and LayerNorm ('all', SPEC) or those the "
        "authors' code trains ('attention': transformer norms only)", "dape")
    adapter_targets: Literal["all", "code"] = opt(
        "all", "transformer blocks that get the vision adapter: every one ('all', SPEC) or the "
        "authors' code's (decoder level 2, SD1.5 up_blocks.1)", "dape")
    placement: Literal["attn1", "attn1+ff"] = opt(
        "attn1", "adapter after the self-attention residual ('attn1', SPEC) or also after the "
        "feed-forward residual with the same weights ('attn1+ff', the authors' code)", "dape")
    adapter_dim: int = opt(64, "inner width of the vision adapter", "dape")
    adapter_kernel: int = opt(5, "depthwise conv kernel of the vision adapter", "dape")
    adapter_dropout: float = opt(0.1, "dropout after the adapter's GELU (training only)", "dape")
    identity_init: bool = opt(False, "zero-initialise the adapter's last Linear so each block "
                              "starts as the identity (the code: torch default init)", "dape")

    # stage 1 / stage 2
    stage1_steps: int = opt(400, "stage 1 (norm-tuning) optimizer steps (code: 400)", "stages")
    stage1_learning_rate: float = opt(5e-5, "stage 1 AdamW learning rate (code: 5e-5)", "stages")
    stage1_warmup_steps: int = opt(100, "stage 1 linear warm-up steps, then constant (code: 100)",
                                   "stages")
    warmup_start: float = opt(1e-6, "warm-up starts at this fraction of the learning rate "
                              "(code: f_start 1e-6)", "stages")
    stage2_steps: int = opt(70, "stage 2 (vision adapter) optimizer steps (code: 70)", "stages")
    stage2_learning_rate: float = opt(1e-5, "stage 2 AdamW learning rate, constant (code: 1e-5)",
                                      "stages")

    # optimisation (both stages)
    batch_size: int = opt(1, "clips per micro-batch (the code: 1 video)", "optimisation")
    accumulate: int = opt(1, "micro-batches per optimizer step (gradient accumulation)", "optimisation")
    weight_decay: float = opt(1e-2, "AdamW weight decay (torch AdamW's default, as the code)",
                              "optimisation")
    clip_norm: float = opt(0.0, "global gradient-norm clipping (0: off, as the code)", "optimisation")
    text_dropout: float = opt(0.5, "probability of training on the empty prompt instead of the "
                              "caption (code: ucg_rate 0.5)", "optimisation")
    offset_noise: float = opt(0.1, "offset noise: per frame and channel, added to the noise "
                              "(code: offset_noise_level 0.1)", "optimisation")
    dtype: Literal["bfloat16", "float32"] = opt("bfloat16", "compute dtype (DAPE parameters stay "
                                                "float32)", "optimisation")
    seed: int = opt(0, "seed of data order, noise, timesteps, dropout and adapter init", "optimisation")

    # run control
    resume: bool = opt(False, "continue from the last checkpoint in output_dir (either stage)", "run")
    checkpoint_every: int = opt(100, "optimizer steps between checkpoints (one is also written at "
                                "the end of each stage and at exit)", "run")
    keep_checkpoints: int = opt(3, "checkpoints kept per stage", "run")
    log_every: int = opt(1, "optimizer steps between metric log lines", "run")
    stop_after: int = opt(0, "stop as if interrupted after this global optimizer step (0: run to "
                          "the end), e.g. for time-limited jobs; continue with --resume", "run")
    progress: bool = opt(True, "show a progress bar", "run")

    def __post_init__(self):
        from jaxvedit.world.models import expand_model_alias

        object.__setattr__(self, "model", expand_model_alias(self.model))  # --model world
        for name in ("frames", "accumulate", "batch_size", "checkpoint_every", "log_every",
                     "max_frames", "frame_stride", "adapter_dim", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("stage1_steps", "stage2_steps", "stage1_warmup_steps", "stop_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.stage1_steps + self.stage2_steps == 0:
            raise ValueError("stage1_steps and stage2_steps are both 0: nothing to train")
        if self.resolution % 8:
            raise ValueError(f"resolution={self.resolution} must be a multiple of 8")
        if not 0 <= self.text_dropout <= 1:
            raise ValueError(f"text_dropout={self.text_dropout} must be in [0, 1]")
        if not 0 <= self.adapter_dropout < 1:
            raise ValueError(f"adapter_dropout={self.adapter_dropout} must be in [0, 1)")
        if self.adapter_kernel < 1 or self.adapter_kernel % 2 == 0:
            raise ValueError(f"adapter_kernel={self.adapter_kernel} must be odd")
        if self.video is not None and self.data is not None:
            raise ValueError("give --video (one-shot) or --data (a dataset), not both")
        if self.video is not None and not (self.caption and self.caption.strip()):
            raise ValueError("--video needs its --caption (the prompt describing the source video)")
        if self.caption is not None and self.video is None:
            raise ValueError("--caption goes with --video (a dataset's captions come from its "
                             "annotations)")

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def dape_config(self):
        from jaxvedit.adapters.dape import DAPEConfig

        return DAPEConfig(norm_tuning=True, vision_adapter=False, norm_targets=self.norm_targets,
                          adapter_targets=self.adapter_targets, placement=self.placement,
                          inner_dim=self.adapter_dim, kernel_size=self.adapter_kernel,
                          dropout=self.adapter_dropout, identity_init=self.identity_init)


# the embedded demo: applied to options the user did not set, when no --model, --data or --video
DEMO_OVERRIDES = dict(
    output_dir="runs/dape-demo", resolution=64, frames=4, stage1_steps=12, stage1_warmup_steps=3,
    stage1_learning_rate=1e-3, stage2_steps=6, stage2_learning_rate=1e-3, dtype="float32",
    checkpoint_every=5, max_frames=8,
)
