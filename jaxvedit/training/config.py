"""The training configuration: one typed dataclass; ``python -m jaxvedit.train --help`` is
generated from it (every option, its default and its help line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def opt(default, help: str, group: str = "options"):
    return field(default=default, metadata={"help": help, "group": group})


@dataclass(frozen=True)
class TrainConfig:
    """Train the adapters (gated LoRA + shared/unshared prompt tokens) of SD1.5 on video clips
    with the diffusion and temporal consistency losses (SPEC §3). With no --model and no --data
    it runs the embedded demo: the shipped world model on 12 rendered world videos, on CPU, in
    minutes."""

    method: Literal["adapters", "dape"] = opt(
        "adapters", "what to train: 'adapters' (gated LoRA + prompt tokens, these options) or "
        "'dape' (two-stage norm-tuning + vision adapter, docs/dape.md; its options: "
        "--method dape --help)", "method")

    # what to train on
    model: str | None = opt(None, "SD1.5 weights: a diffusers folder, a single-file .safetensors "
                            "checkpoint or a Hugging Face repo id (default: the demo's tiny model)", "data")
    tokenizer: str | None = opt(None, "tokenizer source for a single-file --model: a folder or repo "
                                "id with tokenizer/ (default: the model folder's)", "data")
    vision_model: str | None = opt(None, "CLIP vision tower for the unshared tokens: folder or repo id "
                                   "(default: the model folder's image_encoder/, else "
                                   "openai/clip-vit-base-patch32)", "data")
    data: str | None = opt(None, "a clip store (python -m jaxvedit.prepare), or a dataset folder "
                           "(captions.jsonl or MSR-VTT layout; its store is prepared on first use) "
                           "(default: a generated sample)", "data")
    output_dir: str = opt("runs/train", "run folder: checkpoints, metrics.jsonl, loss_curve.png, "
                          "adapter.safetensors", "data")
    cache_dir: str | None = opt(None, "store folder for a dataset folder --data (default: "
                                "<data>/.jaxvedit_store/<key of model, dtype and settings>)", "data")
    frames: int = opt(4, "T: adjacent frames per clip (>= 3)", "data")
    frame_stride: int = opt(1, "take every n-th frame when forming a clip", "data")
    resolution: int = opt(512, "frames are resized and center-cropped to this square size", "data")
    max_frames: int = opt(64, "decode at most this many frames of each video", "data")

    # adapters
    lora_rank: int = opt(4, "LoRA rank r", "adapters")
    lora_alpha: float = opt(4.0, "LoRA alpha (scale alpha/r)", "adapters")
    lora_targets: tuple[str, ...] = opt(
        ("all",), "LoRA targets, united: the presets 'all' (every attention projection, the authors' "
        "code) and 'down' (down-block attentions, the paper) and/or UNet module paths or fnmatch "
        "patterns, e.g. 'up_blocks.*.attn1.to_q' 'mid_block.*.ff.net.2'", "adapters")
    n_shared_tokens: int = opt(18, "N_share: shared prompt tokens", "adapters")
    unshared_tokens: bool = opt(True, "frame-specific tokens from CLIP vision hidden states", "adapters")
    pooling: str = opt("avg2", "pooling of the vision tokens: 'avg2' or 'stride:s'", "adapters")
    text_dropout: float = opt(0.3, "probability of replacing the caption by the empty prompt", "adapters")

    # losses
    tau: float = opt(0.5, "adapter and temporal loss act for timesteps t >= tau * 1000", "loss")
    diffusion_weight: float = opt(1.0, "w_diff", "loss")
    temporal_weight: float = opt(0.01, "lambda: weight of the temporal loss", "loss")
    temporal_form: Literal["frames", "cross_timestep"] = opt(
        "frames", "eq. 22 over the clip's frames, or the authors' cross-timestep variant", "loss")
    temporal_mode: Literal["tensor", "token"] = opt("tensor", "cosine over the whole feature "
                                                    "tensor or per token", "loss")
    feature_taps: tuple[str, ...] = opt(
        ("up_blocks.2.attentions.*.transformer_blocks.0.attn1",
         "up_blocks.3.attentions.*.transformer_blocks.0.attn1"),
        "UNet module paths (fnmatch patterns) whose outputs feed the temporal loss", "loss")

    # depth ControlNet (jaxvedit.training.controlnet)
    controlnet: str | None = opt(None, "frozen depth ControlNet adding its residuals to the UNet "
                                 "(the authors' setup): diffusers folder, single .safetensors or "
                                 "repo id; needs depth maps (<data>/depth/ or --depth auto)", "controlnet")
    controlnet_scale: float = opt(1.0, "ControlNet conditioning scale", "controlnet")
    depth: Literal["files", "auto"] = opt("files", "depth maps: read from <data>/depth/{video stem} "
                                          "(files), or computed with --depth-model where missing "
                                          "or unusable, stored with the latents in the clip store "
                                          "(auto)", "controlnet")
    depth_model: str = opt("depth-anything/Depth-Anything-V2-Small-hf", "Depth Anything model "
                           "for --depth auto: transformers folder or repo id", "controlnet")

    # optimisation
    steps: int = opt(2000, "optimizer steps", "optimisation")
    batch_size: int = opt(0, "clips per micro-batch across all devices (0: one per device)", "optimisation")
    accumulate: int = opt(8, "micro-batches per optimizer step (gradient accumulation)", "optimisation")
    learning_rate: float = opt(3e-5, "AdamW learning rate", "optimisation")
    warmup_steps: int = opt(500, "linear warm-up steps, then constant", "optimisation")
    weight_decay: float = opt(1e-2, "AdamW weight decay", "optimisation")
    clip_norm: float = opt(1.0, "global gradient-norm clipping (0: off)", "optimisation")
    dtype: Literal["bfloat16", "float32"] = opt("bfloat16", "compute dtype (adapter parameters stay float32)",
                                                "optimisation")
    base_dtype: Literal["bfloat16", "float32"] = opt("bfloat16", "storage dtype of the frozen base "
                                                     "weights (UNet, text encoder)", "optimisation")
    remat: bool = opt(False, "recompute each UNet block's activations in the backward pass "
                      "(less memory, about one more forward of compute)", "optimisation")
    seed: int = opt(0, "seed for data order, noise, timesteps, dropout and adapter init", "optimisation")

    # run control
    resume: bool = opt(False, "continue from the last checkpoint in output_dir", "run")
    checkpoint_every: int = opt(100, "optimizer steps between checkpoints (one is also written at exit)", "run")
    keep_checkpoints: int = opt(3, "checkpoints kept", "run")
    log_every: int = opt(1, "optimizer steps between metric log lines", "run")
    devices: int = opt(0, "accelerators to use for data parallelism (0: all visible)", "run")
    multihost: bool = opt(False, "call jax.distributed.initialize() first (multi-host launch)", "run")
    coordinator_address: str | None = opt(None, "multi-host: host:port of process 0 (default: "
                                          "$JAX_COORDINATOR_ADDRESS; implies --multihost)", "run")
    num_processes: int = opt(0, "multi-host: number of processes (0: $JAX_NUM_PROCESSES or the "
                             "cluster's)", "run")
    process_id: int = opt(-1, "multi-host: this process's id (-1: $JAX_PROCESS_ID or the "
                          "cluster's)", "run")
    loader_threads: int = opt(4, "threads reading micro-batches ahead", "run")
    loader_workers: int = opt(0, "worker processes reading micro-batches (0: threads only)", "run")
    prefetch: int = opt(8, "micro-batches buffered in host memory", "run")
    tensorboard: bool = opt(True, "write TensorBoard event files to <output_dir>/tensorboard", "run")
    validate_every: int = opt(0, "optimizer steps between validation edits (0: none)", "validation")
    validation_video: str | None = opt(None, "clip edited for validation (default: the store's "
                                       "validation clip)", "validation")
    validation_prompt: str = opt("", "target prompt of the validation edit (default: the clip's "
                                 "caption)", "validation")
    validation_frames: int = opt(8, "frames of the validation clip", "validation")
    validation_steps: int = opt(20, "DDIM steps of the validation edit", "validation")
    progress: bool = opt(True, "show a progress bar", "run")

    def __post_init__(self):
        from jaxvedit.world.models import expand_model_alias

        object.__setattr__(self, "model", expand_model_alias(self.model))  # --model world
        if isinstance(self.lora_targets, str):  # a config file's "lora_targets": "down"
            object.__setattr__(self, "lora_targets", (self.lora_targets,))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if not self.lora_targets or not all(isinstance(t, str) and t.strip() for t in self.lora_targets):
            raise ValueError(f"lora_targets={list(self.lora_targets)}: give at least one preset "
                             "('all', 'down') or module-path pattern")
        if self.method == "dape":
            raise ValueError("method 'dape' has its own config: jaxvedit.training.dape_config."
                             "DAPETrainConfig (python -m jaxvedit.train --method dape --help)")
        if self.frames < 3:
            raise ValueError(f"frames={self.frames}: the temporal loss needs T >= 3 frames per clip")
        if self.resolution % 8:
            raise ValueError(f"resolution={self.resolution} must be a multiple of 8")
        for name in ("steps", "accumulate", "lora_rank", "checkpoint_every", "log_every", "max_frames",
                     "prefetch", "validation_frames", "validation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.text_dropout <= 1:
            raise ValueError(f"text_dropout={self.text_dropout} must be in [0, 1]")


# the embedded demo: applied to options the user did not set, when neither --model nor --data is:
# the shipped world model on 12 rendered world videos (jaxvedit.world.demo)
DEMO_OVERRIDES = dict(
    output_dir="runs/demo", resolution=128, frames=4, steps=30, accumulate=1, learning_rate=1e-4,
    warmup_steps=5, dtype="float32", checkpoint_every=10, max_frames=16,
    feature_taps=("up_blocks.1.attentions.*.transformer_blocks.0.attn1",
                  "up_blocks.2.attentions.*.transformer_blocks.0.attn1"),
    base_dtype="float32",
)
