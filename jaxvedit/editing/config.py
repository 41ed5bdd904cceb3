"""The editing configuration: one typed dataclass; ``python -m jaxvedit.edit --help`` is generated
from it (every option, its default and its help line)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxvedit.training.config import opt


@dataclass(frozen=True)
class EditConfig:
    """Edit a video with a text prompt (SPEC §4): bilateral DDIM inversion of the source frames
    with the source prompt, then DDIM sampling with the target prompt and classifier-free
    guidance, optionally through a trained adapter (gated LoRA + prompt tokens) and with
    cross-frame attention. With no --video and no --model it runs the embedded demo: the tiny
    random model on a generated sample clip, on CPU."""

    # input / output
    video: str | None = opt(None, "input video: mp4/webm/gif/... or a folder of frames "
                            "(default: the demo's generated sample clip)", "input/output")
    prompt: str | None = opt(None, "target prompt (what the edited video should show)", "input/output")
    source_prompt: str = opt("", "prompt describing the source video, used for the inversion "
                             "(empty: the empty prompt)", "input/output")
    out: str | None = opt(None, "output video (H.264 mp4, written at the source frame rate); its "
                          "folder must exist (default: edited.mp4; the demo: <output-dir>/edited.mp4)",
                          "input/output")
    frames_out: str | None = opt(None, "also write the edited frames as PNGs into this folder",
                                 "input/output")
    gif: str | None = opt(None, "also write an animated GIF here (the demo: <output-dir>/edited.gif)",
                          "input/output")
    resolution: int = opt(512, "frames are resized and center-cropped to this square size "
                          "(a multiple of 64)", "input/output")
    width: int | None = opt(None, "frame width, a multiple of 64 (default: --resolution); with "
                            "--height for non-square edits, e.g. 672x384", "input/output")
    height: int | None = opt(None, "frame height, a multiple of 64 (default: --resolution)",
                             "input/output")
    preview: bool = opt(True, "also write a preview strip PNG beside the video "
                        "(<out>_preview.png: source and edited frames)", "input/output")
    keep_audio: bool = opt(True, "copy the source's audio stream (the edited span) into the "
                           "output video", "input/output")
    start: int = opt(0, "first source frame to use", "input/output")
    stop: int | None = opt(None, "stop before this source frame (default: the end)", "input/output")
    stride: int = opt(1, "take every n-th source frame (the output fps is the source fps / n)",
                      "input/output")
    max_frames: int | None = opt(None, "edit at most this many frames", "input/output")
    fps: float | None = opt(None, "frame rate of a frame folder input (default 8), or override "
                            "a container's", "input/output")

    # model and adapter
    model: str | None = opt(None, "SD1.5 weights: a diffusers folder (or a Hugging Face repo id) "
                            "with unet/ vae/ text_encoder/ tokenizer/ (default: the demo's tiny "
                            "model)", "model")
    adapter: str | None = opt(None, "trained adapter folder (<run>/adapter with lora/, "
                              "prompt_tokens/ and/or dape/, or one of them), or another tool's LoRA "
                              ".safetensors; none: the plain model; with --method lora-edit: a LoRA "
                              "saved by --lora-edit-save (no training)",
                              "model")
    vision_model: str | None = opt(None, "CLIP vision tower for the prompt tokens (default: the "
                                   "model folder's image_encoder/)", "model")
    lora_tau: float = opt(0.9, "LoRA timestep gate at inference: the LoRA acts for t >= tau * 1000 "
                          "(SPEC §2: 0.9; 0 = always)", "model")
    lora_ratio: float = opt(0.5, "LoRA merge ratio: scale of the LoRA update (SPEC §2: 0.5)", "model")
    lora_merge: bool = opt(False, "fold the LoRA into the UNet weights at --lora-ratio (fast, "
                           "but ungated: --lora-tau is ignored)", "model")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "compute dtype (bfloat16 on GPUs)", "model")

    # tokenflow (--method tokenflow)
    pnp_f_t: float = opt(0.8, "tokenflow: fraction of the steps that inject the residual-block "
                         "features (TokenFlow's pnp_f_t)", "tokenflow")
    pnp_attn_t: float = opt(0.5, "tokenflow: fraction of the steps that inject self-attention "
                            "queries / keys (TokenFlow's pnp_attn_t)", "tokenflow")
    tokenflow_batch: int = opt(8, "tokenflow: frames per batch; each batch gets one random "
                               "keyframe per step (TokenFlow's batch_size)", "tokenflow")
    keyframe_group: int = opt(8, "tokenflow: keyframes per extended-attention group (memory "
                              "bound for long videos; 0: all keyframes in one, as TokenFlow)",
                              "tokenflow")
    # depth ControlNet (jaxvedit.editing.controlnet)
    controlnet: str | None = opt(None, "ControlNet conditioning inversion and sampling on the "
                                 "source's depth: diffusers folder, single .safetensors "
                                 "(control_model.* layout) or repo id (e.g. "
                                 "lllyasviel/sd-controlnet-depth)", "controlnet")
    depth: str | None = opt(None, "depth maps for --controlnet: 'auto' (estimated with "
                            "--depth-model, cached) or a folder / video of maps, one per source "
                            "frame", "controlnet")
    depth_model: str = opt("depth-anything/Depth-Anything-V2-Small-hf", "Depth Anything model "
                           "for --depth auto: transformers folder or repo id", "controlnet")
    depth_cache: str | None = opt(None, "cache folder of --depth auto (default "
                                  "~/.cache/jaxvedit/depth)", "controlnet")
    controlnet_scale: float = opt(1.0, "ControlNet conditioning scale", "controlnet")
    guess_mode: bool = opt(False, "ControlNet guess mode (diffusers': residuals only on the "
                           "conditional branch, scaled 0.1 -> 1 from shallow to deep)", "controlnet")
    control_start: float = opt(0.0, "ControlNet acts from this fraction of the sampling steps",
                               "controlnet")
    control_end: float = opt(1.0, "... until this fraction (diffusers' control_guidance_end)",
                             "controlnet")
    control_inversion: bool = opt(True, "the ControlNet also conditions the inversion (as the "
                                  "authors' pipeline)", "controlnet")

    # sampling
    steps: int = opt(50, "DDIM steps (inversion and sampling)", "sampling")
    guidance_scale: float = opt(7.5, "classifier-free guidance scale of the sampling", "sampling")
    inversion_guidance: float = opt(1.0, "guidance scale of the inversion (1: none, the usual)",
                                    "sampling")
    eta: float = opt(0.0, "DDIM eta of the sampling (0: deterministic)", "sampling")
    negative_prompt: str = opt("", "negative prompt: the unconditional branch of the guidance "
                               "(needs --guidance-scale != 1)", "sampling")
    seed: int = opt(0, "seed of the sampling noise (eta > 0) and of TokenFlow's keyframes",
                    "sampling")
    cross_frame: bool = opt(False, "cross-frame attention: every frame's self-attention also "
                            "attends to the first frame's keys and values", "sampling")
    batch_frames: int = opt(8, "frames per chunk through the UNet (memory); with --cross-frame "
                            "the first frame is carried in every chunk", "sampling")

    # bilateral filter of the inversion
    filter: Literal["none", "latent", "features", "symmetric"] = opt(
        "latent", "bilateral filter during inversion: none, latent (paper, eq. 9-12), features "
        "(authors' code: along frames on up-block self-attention outputs) or symmetric (weights "
        "from the source latent, Sinkhorn-normalised: non-expansive, docs/theory.md)", "filter")
    filter_radius: int = opt(2, "latent / symmetric filter: window radius (latent pixels)", "filter")
    filter_sigma_spatial: float = opt(1.0, "spatial sigma (latent pixels / frames)", "filter")
    filter_sigma_range: float | None = opt(None, "range sigma (default 0.1 latent, 1.0 features)",
                                           "filter")
    filter_range_mode: Literal["absolute", "relative"] = opt(
        "absolute", "latent / symmetric filter: range sigma absolute or relative to each channel's "
        "std", "filter")
    filter_window: Literal["square", "disk"] = opt("square", "latent / symmetric filter window",
                                                   "filter")
    filter_kernel_size: int = opt(5, "features filter: odd kernel size along frames", "filter")
    filter_paths: tuple[str, ...] = opt((), "features filter: UNet module paths / patterns "
                                        "(default: the last up block's attn1)", "filter")

    # method
    method: Literal["ddim", "lora-edit", "tokenflow"] = opt(
        "ddim", "edit method: ddim (invert the source, sample with the target prompt), lora-edit "
        "(paper 003: mask-aware per-video LoRA on an SD1.5 inpainting model, first-frame guided; "
        "docs/lora_edit.md) or tokenflow (the TokenFlow host: plug-and-play injection, extended "
        "attention over keyframes, propagation; docs/editing.md)", "method")

    # lora-edit (--method lora-edit)
    mask: str | None = opt(None, "lora-edit: spatio-temporal mask, a mask video or a folder of mask "
                           "images, one frame per source frame at the source size", "lora-edit")
    mask_mode: Literal["keep", "edit"] = opt(
        "keep", "lora-edit: keep = white is kept (the paper's M_condition: 1 keep, 0 regenerate); "
        "edit = white is regenerated (diffusers / SAM masks)", "lora-edit")
    edited_first_frame: str | None = opt(None, "lora-edit: the edited first frame (an image at the "
                                         "source size)", "lora-edit")
    edited_frames: str | None = opt(None, "lora-edit: folder of edited later frames named by their "
                                    "source frame number (00012.png), for the appearance stage",
                                    "lora-edit")
    lora_edit_steps: int = opt(100, "lora-edit: LoRA training steps on the video (paper: 100)",
                               "lora-edit")
    lora_edit_appearance_steps: int = opt(100, "lora-edit: further steps with the edited later "
                                          "frames (paper: 100)", "lora-edit")
    lora_edit_rank: int = opt(16, "lora-edit: LoRA rank (authors' code: 16, alpha = rank)", "lora-edit")
    lora_edit_lr: float = opt(1e-4, "lora-edit: learning rate (paper: 1e-4)", "lora-edit")
    lora_edit_cross_frame: bool = opt(True, "lora-edit: every frame attends to the first frame "
                                      "(training and sampling)", "lora-edit")
    lora_edit_blend: bool = opt(True, "lora-edit: put the kept region back after every sampling "
                                "step (kept regions = VAE round trip of the source)", "lora-edit")
    lora_edit_save: str | None = opt(None, "lora-edit: save the trained LoRA to this folder (reuse "
                                     "it with --adapter: training is skipped)", "lora-edit")

    # run
    output_dir: str = opt("runs/edit-demo", "demo only: where the tiny model, the sample clip and "
                          "the outputs go", "run")
    progress: bool = opt(True, "show a progress bar", "run")

    def __post_init__(self):
        from jaxvedit.world.models import expand_model_alias

        object.__setattr__(self, "model", expand_model_alias(self.model))  # --model world
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("empty prompt: give the target prompt with --prompt \"...\"")
        for name in ("resolution", "width", "height"):
            v = getattr(self, name)
            if v is not None and (v < 64 or v % 64):
                raise ValueError(f"{name}={v} must be a positive multiple of 64 (SD's latents are "
                                 "1/8 of the frame and the UNet halves them 3 times), e.g. "
                                 f"{max(64, v // 64 * 64)} or {max(64, -(-v // 64) * 64)}")
        if self.negative_prompt and self.guidance_scale == 1.0:
            raise ValueError("a negative prompt needs --guidance-scale != 1 (at guidance 1 the "
                             "unconditional branch, where the negative prompt goes, is not run)")
        if self.tokenflow_batch < 1 or self.keyframe_group < 0:
            raise ValueError(f"tokenflow_batch={self.tokenflow_batch} must be >= 1 and "
                             f"keyframe_group={self.keyframe_group} >= 0")
        for name in ("pnp_f_t", "pnp_attn_t"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        for name in ("steps", "batch_frames", "stride", "filter_radius"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames={self.max_frames} must be >= 1")
        if self.start < 0:
            raise ValueError(f"start={self.start} must be >= 0")
        if self.filter_kernel_size < 3 or self.filter_kernel_size % 2 == 0:
            raise ValueError(f"filter_kernel_size={self.filter_kernel_size} must be odd and >= 3")
        if not 0.0 <= self.lora_tau <= 1.0:
            raise ValueError(f"lora_tau={self.lora_tau} must be in [0, 1]")
        if self.eta < 0:
            raise ValueError(f"eta={self.eta} must be >= 0")
        for name in ("lora_edit_steps", "lora_edit_appearance_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.lora_edit_rank < 1:
            raise ValueError(f"lora_edit_rank={self.lora_edit_rank} must be >= 1")
        if not 0.0 <= self.control_start < self.control_end <= 1.0:
            raise ValueError(f"control_start={self.control_start} and control_end="
                             f"{self.control_end} must satisfy 0 <= start < end <= 1")

    @property
    def is_demo(self) -> bool:
        return self.video is None and self.model is None

    @property
    def size(self) -> tuple[int, int]:
        """The working ``(height, width)``."""
        return (self.height or self.resolution, self.width or self.resolution)


# the sample clip of the --method lora-edit demo (a tiny random inpainting model: no world one yet)
DEMO_SAMPLE = dict(frames=8, size=64, fps=8, seed=0, color="red", shape="square", direction="right")
# the embedded demo: applied to options the user did not set, when neither --video nor --model is:
# the shipped world model turns a red circle into a blue one (jaxvedit.world.demo)
DEMO_OVERRIDES = dict(
    prompt="a blue circle moves right steadily over a striped background",
    source_prompt="a red circle moves right steadily over a striped background",
    resolution=128, steps=50, batch_frames=16,
)
