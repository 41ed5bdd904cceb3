"""Text-driven video editing (SPEC §4): bilateral DDIM inversion + DDIM sampling with the target
prompt, adapters, cross-frame attention, chunking; the TokenFlow host (``tokenflow_edit``)
(see docs/editing.md)."""

from jaxvedit.editing.config import DEMO_OVERRIDES, DEMO_SAMPLE, EditConfig
from jaxvedit.editing.cross_frame import cross_frame_attention
from jaxvedit.editing.pipeline import (EditResult, Editor, check_output_path, chunk_indices,
                                       edit_video, filter_config, find_adapter_parts,
                                       load_source_frames, prepare_demo)
from jaxvedit.editing.predictor import EditPredictor
from jaxvedit.editing.recon import reconstruction_metrics
from jaxvedit.editing.lora_edit import LoRAEditOptions, LoRAEditResult, lora_edit  # noqa: E402
from jaxvedit.editing.tokenflow import tokenflow_edit, tokenflow_step  # noqa: E402

__all__ = [
    "DEMO_OVERRIDES", "DEMO_SAMPLE", "EditConfig", "cross_frame_attention", "EditResult", "Editor",
    "check_output_path", "chunk_indices", "edit_video", "filter_config", "find_adapter_parts",
    "load_source_frames", "prepare_demo", "EditPredictor", "reconstruction_metrics",
    "LoRAEditOptions", "LoRAEditResult", "lora_edit", "tokenflow_edit", "tokenflow_step",
]
