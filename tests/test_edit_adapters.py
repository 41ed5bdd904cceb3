"""Adapters in the edit pipeline: a merged LoRA never leaks into a variant that asks for no
adapter; self-describing adapter files (vision tower, LoRA targets, gate) used by ``edit`` and a
mismatch refused by name; the README's train-then-edit flow on the tiny model."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvedit.adapters import LoRAConfig, apply_lora, save_adapter
from jaxvedit.data.video import synthetic_frames
from jaxvedit.editing import Editor
from jaxvedit.models import load_unet
from jaxvedit.models.tiny import make_tiny_model

EDIT = dict(prompt="a blue circle", source_prompt="a red square", steps=3, guidance_scale=3.0,
            progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("edit-adapters") / "tiny")


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames(4, 64, seed=2)[0]


@pytest.fixture(scope="module")
def lora_adapter(tiny, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lora-adapter")
    lora = apply_lora(load_unet(tiny), LoRAConfig(rank=2, targets="all", tau=0.5), nnx.Rngs(1)).lora
    rng = np.random.default_rng(3)
    for layer in lora.layers:  # B = 0 at init would be a no-op adapter
        layer.lora_B.value = jnp.asarray(0.5 * rng.standard_normal(layer.lora_B.value.shape),
                                         jnp.float32)
    save_adapter(folder / "lora", lora)
    return folder


def test_merged_lora_does_not_leak_into_no_adapter_edits(tiny, lora_adapter, frames):
    """One Editor serves several variants (python -m jaxvedit.compare): with --lora-merge the
    no-adapter variants must still be the plain model's edit, bit for bit."""
    plain = Editor(str(tiny), batch_frames=4).edit(frames, **EDIT)
    merged = Editor(str(tiny), adapter=str(lora_adapter), lora_merge=True, batch_frames=4)
    no_adapter = merged.edit(frames, use_adapter=False, **EDIT)
    np.testing.assert_array_equal(no_adapter.latents, plain.latents)
    with_adapter = merged.edit(frames, use_adapter=True, **EDIT)
    assert np.abs(with_adapter.latents - plain.latents).max() > 1e-3  # the merge acts ...
    again = merged.edit(frames, use_adapter=False, **EDIT)  # ... and is undone afterwards
    np.testing.assert_array_equal(again.latents, plain.latents)
    # the merged edit is the ungated unmerged one (lora_tau=0) at the same ratio
    unmerged = Editor(str(tiny), adapter=str(lora_adapter), batch_frames=4)
    ref = unmerged.edit(frames, use_adapter=True, lora_tau=0.0, **EDIT)
    err = np.abs(with_adapter.latents - ref.latents).max() / ref.latents.std()
    print(f"merged vs unmerged ungated LoRA edit: max|diff|/std = {err:.1e}")
    assert err < 1e-4
