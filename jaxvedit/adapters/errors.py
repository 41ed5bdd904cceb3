"""Errors of adapter files (own format and the LoRA layouts of other tools)."""


class AdapterLoadError(ValueError):
    """An adapter file does not fit the model, or holds what cannot be loaded: names it."""


class LoRAFormatError(AdapterLoadError):
    """A LoRA file holds something this loader does not support (DoRA, LoHa, ...): names it."""
