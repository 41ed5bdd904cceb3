"""Parameter-efficient adapters on the SD1.5 UNet: LoRA with a timestep gate, shared/unshared
prompt tokens, DAPE (norm-tuning + vision adapter), adapter-only training steps and files (see
docs/adapters.md, docs/dape.md)."""

from jaxvedit.adapters.dape import DAPE, DAPEAdapter, DAPEConfig, DAPEUNet, TunedNorm, apply_dape
from jaxvedit.adapters.interop import (
    LoRAImport,
    export_lora_diffusers,
    export_lora_kohya,
    import_lora,
    import_lora_diffusers,
    lora_to_diffusers_state_dict,
)
from jaxvedit.adapters.io import AdapterLoadError, load_adapter, save_adapter
from jaxvedit.adapters.lora import (
    PRESETS,
    LoRA,
    LoRAConfig,
    LoRAModel,
    LoRAUNet,
    apply_lora,
    attention_projections,
    lora_linears,
    merge_lora,
    merged_lora,
    resolve_targets,
    unmerge_lora,
)
from jaxvedit.adapters.params import (AdapterParam, DAPEAdapterParam, DAPENormParam, LoRAParam,
                                     PromptTokenParam, is_base_param)
from jaxvedit.adapters.prompt_tokens import (
    PromptTokenConfig,
    PromptTokens,
    build_context,
    drop_text_condition,
    guidance_contexts,
    pool_tokens,
)
from jaxvedit.adapters.train import (
    AdapterTrainState,
    adapter_optimizer,
    adapter_train_step,
    init_adapter_training,
    make_adapter_train_step,
)

__all__ = [
    "DAPE", "DAPEAdapter", "DAPEConfig", "DAPEUNet", "TunedNorm", "apply_dape",
    "DAPEAdapterParam", "DAPENormParam",
    "AdapterLoadError", "LoRAImport", "export_lora_diffusers", "export_lora_kohya", "import_lora",
    "import_lora_diffusers", "load_adapter", "lora_to_diffusers_state_dict", "save_adapter",
    "PRESETS", "LoRA", "LoRAConfig", "LoRAModel", "LoRAUNet", "apply_lora",
    "attention_projections", "lora_linears", "merge_lora", "merged_lora", "resolve_targets",
    "unmerge_lora",
    "AdapterParam", "LoRAParam", "PromptTokenParam", "is_base_param",
    "PromptTokenConfig", "PromptTokens", "build_context", "drop_text_condition",
    "guidance_contexts", "pool_tokens",
    "AdapterTrainState", "adapter_optimizer", "adapter_train_step", "init_adapter_training",
    "make_adapter_train_step",
]
