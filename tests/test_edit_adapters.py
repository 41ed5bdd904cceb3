"""Adapters in the edit pipeline: a merged LoRA never leaks into a variant that asks for no
adapter; self-describing adapter files (vision tower, LoRA targets, gate) used by ``edit`` and a
mismatch refused by name; the README's train-then-edit flow on the world model."""

from __future__ import annotations

from pathlib import Path

import jax
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
        layer.lora_B.value = jnp.asarray(0.05 * rng.standard_normal(layer.lora_B.value.shape),
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
    merged.lora_merge = False
    ref = merged.edit(frames, use_adapter=True, lora_tau=0.0, **EDIT)
    err = np.abs(with_adapter.latents - ref.latents).max() / ref.latents.std()
    print(f"merged vs unmerged ungated LoRA edit: max|diff|/std = {err:.1e}")
    assert err < 1e-4


# ---------------------------------------------------------------------------------------------
# the README's train-then-edit flow, and what its adapter records


def _readme_commands(marker: str) -> list[list[str]]:
    """The shell commands of the README's code block that follows ``marker``, as argv lists."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text[text.index(marker):].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("#", 1)[0]) for line in lines if line.strip()]


def _run_module(argv: list[str]) -> int:
    """``python -m jaxvedit.X ...`` in this process (the same code path as the CLI)."""
    import importlib

    assert argv[:2] == ["python", "-m"], argv
    try:
        return importlib.import_module(argv[2]).main(argv[3:])
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's world-model train-then-edit commands, run as written (no --vision-model on
    the edit), in a fresh folder."""
    import os

    root = tmp_path_factory.mktemp("readme")
    commands = _readme_commands("<!-- train-then-edit: world -->")
    assert [c[2] for c in commands] == ["jaxvedit.train", "jaxvedit.edit"]
    assert "--vision-model" not in commands[1]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        codes = [_run_module(c) for c in commands]
    finally:
        os.chdir(cwd)
    return root, commands, codes


def test_readme_train_then_edit_on_the_world_model(readme_run):
    import json

    from jaxvedit.data.video import probe_video
    from jaxvedit.world.models import world_model_path

    root, commands, codes = readme_run
    assert codes == [0, 0]
    out = root / commands[1][commands[1].index("--out") + 1]
    assert probe_video(out).num_frames == 16
    adapter = root / commands[1][commands[1].index("--adapter") + 1]
    tokens = json.loads((adapter / "prompt_tokens" / "adapter_config.json").read_text())
    lora = json.loads((adapter / "lora" / "adapter_config.json").read_text())
    rec = tokens["vision_tower"]
    assert tokens["version"] == 2 and tokens["unshared"] is True
    assert rec["source"] == str(world_model_path().resolve())
    assert rec["subfolder"] == "image_encoder" and len(rec["config_sha256"]) == 16
    assert lora["gate"] == {"tau": 0.5, "num_train_timesteps": 1000}
    # the README trains on the presets' union with a module-path pattern
    assert any(p.endswith("attn1.to_q") and p.startswith("up_blocks") for p in lora["targets"])
    assert any(p.startswith("down_blocks") for p in lora["targets"])
    assert lora["config"]["targets"] == ["down", "up_blocks.*.attn1.to_q"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A gated LoRA + prompt tokens (with the unshared part) trained for 4 steps on the tiny
    random model (tests/tiny_training.py), laid out as ``runs/tiny/{tiny-model,sample-data,
    adapter}`` in a fresh folder, and the edit command that uses it. The vision-tower tests below
    move and delete folders of the model, so they run on this copy, never on the shipped world
    model."""
    from tiny_training import tiny_config

    from jaxvedit.training.trainer import train

    root = tmp_path_factory.mktemp("tiny-run")
    cfg = tiny_config(root / "runs" / "tiny", steps=4, lora_targets=("down", "up_blocks.*.attn1.to_q"))
    train(cfg)
    edit = ["python", "-m", "jaxvedit.edit", "--model", "runs/tiny/tiny-model",
            "--video", "runs/tiny/sample-data/clip0.mp4", "--source-prompt", "a red square moving right",
            "--prompt", "a blue square moving right", "--adapter", "runs/tiny/adapter",
            "--resolution", "64", "--steps", "2", "--out", "runs/tiny/edited.mp4"]
    return root, [None, edit], None


def _tower(folder: Path, seed: int, **config) -> Path:
    """A tiny CLIP vision tower folder (random weights of ``seed``, config overrides)."""
    from jaxvedit.models.clip import CLIPVisionModelWithProjection
    from jaxvedit.models.tiny import TINY_VISION_CONFIG, _save

    cfg = {**TINY_VISION_CONFIG, **config}
    _save(lambda: CLIPVisionModelWithProjection.from_config(cfg), folder, cfg, "model.safetensors", seed)
    return folder


def test_edit_finds_the_recorded_vision_tower_and_refuses_another(tiny_run, tmp_path):
    """With the model folder lacking image_encoder/ (as SD1.5's), the recorded tower is loaded;
    another tower of the same width is refused by name (other config, or same config and other
    weights), and so is a recorded tower that is gone, with the way out."""
    import shutil

    from jaxvedit.adapters import AdapterLoadError
    from jaxvedit.editing.adapters import load_edit_adapters
    from jaxvedit.models import load_components

    root, commands, _ = tiny_run
    adapter = root / commands[1][commands[1].index("--adapter") + 1]
    model = root / "runs" / "tiny" / "tiny-model"
    bare = tmp_path / "bare-model"  # the model without its image_encoder/
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns("image_encoder"))
    comps = load_components(bare, ("unet", "text_encoder"))

    def load(model_root, vision_model=None, path=adapter):
        return load_edit_adapters(path, comps["unet"], comps["text_encoder"],
                                  model_root=model_root, vision_model=vision_model)

    ad = load(bare)
    assert ad.tokens is not None and ad.lora is not None
    assert ad.vision_source == f"{model.resolve()}/image_encoder"
    assert load(bare, vision_model=str(model / "image_encoder")).vision is not None  # same tower
    deeper = _tower(tmp_path / "deeper", 3, num_hidden_layers=1)
    with pytest.raises(AdapterLoadError, match=r"vision tower mismatch .* trained on the CLIP vision "
                                               r"tower .*tiny-model/image_encoder .*num_hidden_layers 2 vs 1"):
        load(bare, vision_model=str(deeper))
    other = _tower(tmp_path / "other-weights", 7)
    with pytest.raises(AdapterLoadError, match="same config but other weights"):
        load(bare, vision_model=str(other))
    # the recorded tower gone: the model's own image_encoder/ if it is the same tower, else an error
    moved = shutil.copytree(root / "runs", tmp_path / "moved-runs")
    shutil.rmtree(root / "runs" / "tiny" / "tiny-model" / "image_encoder")
    try:
        with pytest.raises(FileNotFoundError, match=r"trained on the CLIP vision tower .*image_encoder, "
                                                    r"which cannot be loaded .*give --vision-model"):
            load(bare)
        ad = load(moved / "tiny" / "tiny-model")
        assert "the recorded" in ad.vision_source and "is gone" in ad.vision_source
        shutil.copytree(other, bare / "image_encoder")
        with pytest.raises(AdapterLoadError, match="same config but other weights"):
            load(bare)
    finally:
        shutil.copytree(moved / "tiny" / "tiny-model" / "image_encoder",
                        root / "runs" / "tiny" / "tiny-model" / "image_encoder")


def test_edit_cli_refuses_another_vision_tower_by_name(tiny_run, tmp_path, capsys):
    root, commands, _ = tiny_run
    deeper = _tower(tmp_path / "deeper", 3, num_hidden_layers=1)
    argv = commands[1][3:] + ["--vision-model", str(deeper)]
    argv[argv.index("--out") + 1] = str(tmp_path / "o.mp4")
    import os

    from jaxvedit.edit import main

    cwd = os.getcwd()
    os.chdir(root)
    try:
        rc = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert rc == 2 and "vision tower mismatch" in err and "num_hidden_layers 2 vs 1" in err


def test_lora_targets_take_patterns_besides_presets(tiny_run):
    from jaxvedit.cli import parse_config
    from jaxvedit.training.config import TrainConfig
    from jaxvedit.training.trainer import Components

    root, _, _ = tiny_run
    model = str(root / "runs" / "tiny" / "tiny-model")
    cfg = parse_config(TrainConfig, ["--model", model, "--data", "x", "--lora-targets", "down",
                                     "mid_block.*.ff.net.2", "--no-unshared-tokens",
                                     "--n-shared-tokens", "0", "--dtype", "float32",
                                     # the tiny UNet's taps (unmatched taps are refused at startup)
                                     "--feature-taps", "up_blocks.1.attentions.*.transformer_blocks.0.attn1"],
                       prog="t")
    assert cfg.lora_targets == ("down", "mid_block.*.ff.net.2")
    paths = Components(cfg).model.unet.lora.paths
    assert "mid_block.attentions.0.transformer_blocks.0.ff.net.2" in paths
    assert sum(p.startswith("down_blocks") for p in paths) == 8 and len(paths) == 9
    assert TrainConfig(lora_targets="down").lora_targets == ("down",)  # old config files
    bad = TrainConfig(**{**cfg.__dict__, "lora_targets": ("up_blocks.*.attn9.to_q",)})
    with pytest.raises(ValueError, match=r"--lora-targets: LoRA target 'up_blocks\.\*\.attn9\.to_q' "
                                         r"matches no attention projection"):
        Components(bad)
    with pytest.raises(ValueError, match="give at least one preset"):
        TrainConfig(lora_targets=())


def test_edit_takes_a_lora_file_of_another_tool(tiny, tmp_path, frames):
    """``--adapter file.safetensors``: a kohya file with UNet and text-encoder parts loads into
    the editor; the text-encoder LoRA acts on the prompt embeddings only when the adapter is
    used. And prompt tokens trained without the unshared part need no vision tower."""
    from jaxvedit.adapters import (LoRAModel, PromptTokenConfig, PromptTokens, export_lora_kohya)
    from jaxvedit.adapters.lora import LoRA
    from jaxvedit.models.clip import CLIPTextModel

    unet = load_unet(tiny)
    text = CLIPTextModel.from_pretrained(tiny, subfolder="text_encoder")
    lora = LoRA(unet, LoRAConfig(rank=2, alpha=3.0, targets="down", tau=None), rngs=nnx.Rngs(0))
    text_lora = LoRA(text, LoRAConfig(rank=3, alpha=1.5, targets=("*.self_attn.q_proj", "*.mlp.fc1"),
                                      tau=None), rngs=nnx.Rngs(1))
    for layer in list(lora.layers) + list(text_lora.layers):
        layer.lora_B.value = jnp.full(layer.lora_B.value.shape, 0.05, jnp.float32)
    file = export_lora_kohya(lora, tmp_path / "shared.safetensors", unet=unet, text_lora=text_lora)
    ed = Editor(str(tiny), adapter=str(file), batch_frames=4)
    assert ed.lora.paths == lora.paths and ed.text_lora.paths == text_lora.paths
    assert "kohya layout" in ed.adapter_notes[0]
    from jaxvedit.models.clip import tokenize

    ids = jnp.asarray(tokenize(ed.tokenizer, ["a cat"], max_length=77))
    gd, state = nnx.split(LoRAModel(text, text_lora))
    want = np.asarray(jax.jit(lambda st: nnx.merge(gd, st)(ids, lora_ratio=0.5).last_hidden_state)(state))
    np.testing.assert_allclose(ed.text_embeddings(["a cat"], 0.5), want, atol=1e-5)
    plain = ed.text_embeddings(["a cat"])
    assert np.abs(plain - want).max() > 1e-3
    np.testing.assert_array_equal(ed.contexts(frames, ["a cat"], False)[0][0], plain[0])

    tokens = PromptTokens(PromptTokenConfig(n_share=3, vision_dim=48, context_dim=32), rngs=nnx.Rngs(2))
    save_adapter(tmp_path / "shared-only" / "prompt_tokens", tokens, record={"unshared": False})
    from jaxvedit.editing.adapters import load_edit_adapters

    ad = load_edit_adapters(tmp_path / "shared-only", ed.unet, ed.text_encoder, model_root=tmp_path)
    assert ad.vision is None and ad.unshared is False  # tmp_path has no image_encoder/: not needed
    ed.tokens, ed.unshared = ad.tokens, ad.unshared
    ctx = ed.contexts(frames, ["a cat"], True)[0]
    assert ctx.shape == (1, 3 + 77, 32)
    np.testing.assert_array_equal(ctx[0, :3], np.asarray(tokens.shared.value))
