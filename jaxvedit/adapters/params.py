"""Variable types of the adapters.

Every trainable adapter parameter is an :class:`AdapterParam` (a subclass of ``nnx.Param``), one
subclass per adapter kind, so an optimizer, a gradient or a checkpoint selects exactly them with
an NNX filter (``nnx.state(model, LoRAParam)``, ``nnx.split(model, AdapterParam, ...)``) and
never sees a base-model weight.
"""

from __future__ import annotations

from flax import nnx


class AdapterParam(nnx.Param):
    """Any trainable adapter parameter (the base model's weights are plain ``nnx.Param``)."""


class LoRAParam(AdapterParam):
    """LoRA down/up matrices ``lora_A`` / ``lora_B``."""


class PromptTokenParam(AdapterParam):
    """Shared prompt tokens and the projection of the frame-specific (unshared) tokens."""


class DAPENormParam(AdapterParam):
    """DAPE stage 1 (norm-tuning): the tuned gamma, beta and alpha0 of every UNet norm."""


class DAPEAdapterParam(AdapterParam):
    """DAPE stage 2: the vision adapter of the transformer blocks."""


def is_base_param(path, value) -> bool:
    """NNX filter: a ``nnx.Param`` that is not an adapter parameter (a base-model weight)."""
    return isinstance(value, nnx.Param) and not isinstance(value, AdapterParam)
