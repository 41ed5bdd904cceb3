"""CLIP text / vision towers: parity with transformers' PyTorch models on the same random weights
(saved with ``save_pretrained`` and read back by our loader), loading layouts, errors, tokenizer.

Metric: max |ours - reference| / std(reference) <= 1e-4 in float32.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxvedit.models import clip  # noqa: E402
from jaxvedit.models.weights import WeightLoadError, read_safetensors  # noqa: E402

TOL = 1e-4


# ----------------------------------------------------------------------------------------------
# helpers


def _perturb(model, seed):
    """CLIP's init leaves LayerNorms at (1, 0) and biases at 0: randomise them so loading them
    wrongly would show."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _make_torch(cls, config, folder, seed=0):
    torch.manual_seed(seed)
    model = cls(config).eval()
    _perturb(model, seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


def _apply(model, *args, **static):
    """``model(*args, **static)`` as one jit-compiled program (eager op-by-op dispatch compiles
    every op separately: several times slower on these tiny shapes)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a, **static))(state, *args)


def _rel(ours, ref, name, tag):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    rel = float(np.max(np.abs(ours - ref)) / np.std(ref))
    print(f"[clip parity] {tag:<28} {name:<18} max|diff|/std = {rel:.2e}")
    return rel


def _text_ids(cfg: dict, batch: int, length: int, rng: np.random.Generator, legacy: bool):
    """Random ids with BOS first, one EOS per row then padding. ``legacy`` (eos_token_id == 2
    configs): the EOS token is the highest id of the vocabulary, as in real CLIP vocabularies."""
    vocab = cfg["vocab_size"]
    eos = vocab - 1 if legacy else cfg["eos_token_id"]
    pad = cfg.get("pad_token_id", eos)
    ids = rng.integers(3, vocab - 2, size=(batch, length))
    ids[:, 0] = 0
    mask = np.ones((batch, length), np.int64)
    for b in range(batch):
        end = int(rng.integers(2, length))
        ids[b, end] = eos
        ids[b, end + 1:] = pad
        mask[b, end + 1:] = 0
    return ids, mask


TEXT_CONFIGS = {
    "w32-h4-l2-quickgelu-legacy": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=99, max_position_embeddings=16, hidden_act="quick_gelu", eos_token_id=2,
        bos_token_id=0, pad_token_id=1),
    "w48-h3-l3-gelu-eos": dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
        vocab_size=123, max_position_embeddings=20, hidden_act="gelu", eos_token_id=120,
        bos_token_id=0, pad_token_id=120),
    "w24-h6-l1-tanhgelu-eps": dict(
        hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=6,
        vocab_size=64, max_position_embeddings=12, hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, eos_token_id=63, bos_token_id=0, pad_token_id=1),
}

VISION_CONFIGS = {
    "w32-h4-l2-img16-p4": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=16, patch_size=4, hidden_act="quick_gelu"),
    "w48-h6-l3-img30-p6-gelu": dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        image_size=30, patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6),
    "w16-h2-l1-img8-p8-1ch": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        image_size=8, patch_size=8, num_channels=1, hidden_act="gelu_new"),
}


def _check_text(cfg: dict, folder, tag, *, seq=None, batch=3, with_mask=False, hidden=False,
                projection=False, seed=0):
    tcfg = transformers.CLIPTextConfig(**cfg)
    tcls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    ref_model = _make_torch(tcls, tcfg, folder, seed)
    ids, mask = _text_ids(cfg, batch, seq or cfg["max_position_embeddings"],
                          np.random.default_rng(seed), legacy=cfg.get("eos_token_id") == 2)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask) if with_mask else None,
                        output_hidden_states=hidden)
    ours_cls = clip.CLIPTextModelWithProjection if projection else clip.CLIPTextModel
    ours_model = ours_cls.from_pretrained(folder)
    ours = _apply(ours_model, ids.astype(np.int32), mask if with_mask else None,
                  output_hidden_states=hidden)
    rels = {"last_hidden_state": _rel(ours.last_hidden_state, ref.last_hidden_state, "last_hidden_state", tag)}
    if projection:
        rels["text_embeds"] = _rel(ours.text_embeds, ref.text_embeds, "text_embeds", tag)
    else:
        rels["pooler_output"] = _rel(ours.pooler_output, ref.pooler_output, "pooler_output", tag)
    if hidden:
        assert len(ours.hidden_states) == len(ref.hidden_states) == cfg["num_hidden_layers"] + 1
        for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
            rels[f"hidden_states[{i}]"] = _rel(a, b, f"hidden_states[{i}]", tag)
    for name, rel in rels.items():
        assert rel <= TOL, (tag, name, rel)
    return rels


def _check_vision(cfg: dict, folder, tag, *, batch=2, hidden=False, projection=False, seed=0):
    vcfg = transformers.CLIPVisionConfig(**cfg)
    tcls = transformers.CLIPVisionModelWithProjection if projection else transformers.CLIPVisionModel
    ref_model = _make_torch(tcls, vcfg, folder, seed)
    s, c = cfg["image_size"], cfg.get("num_channels", 3)
    pixels = np.random.default_rng(seed).standard_normal((batch, c, s, s)).astype(np.float32)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(pixels), output_hidden_states=hidden)
    ours_cls = clip.CLIPVisionModelWithProjection if projection else clip.CLIPVisionModel
    ours = _apply(ours_cls.from_pretrained(folder), pixels.transpose(0, 2, 3, 1),
                  output_hidden_states=hidden)
    rels = {"last_hidden_state": _rel(ours.last_hidden_state, ref.last_hidden_state, "last_hidden_state", tag)}
    if projection:
        rels["image_embeds"] = _rel(ours.image_embeds, ref.image_embeds, "image_embeds", tag)
    else:
        rels["pooler_output"] = _rel(ours.pooler_output, ref.pooler_output, "pooler_output", tag)
    if hidden:
        assert len(ours.hidden_states) == len(ref.hidden_states) == cfg["num_hidden_layers"] + 1
        for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
            rels[f"hidden_states[{i}]"] = _rel(a, b, f"hidden_states[{i}]", tag)
    for name, rel in rels.items():
        assert rel <= TOL, (tag, name, rel)
    return rels


# ----------------------------------------------------------------------------------------------
# parity, tiny configs


@pytest.mark.parametrize("name", sorted(TEXT_CONFIGS))
def test_text_parity_tiny(name, tmp_path):
    cfg = TEXT_CONFIGS[name]
    _check_text(cfg, tmp_path, f"text {name}", hidden=True)


def test_text_parity_short_sequence_and_padding_mask(tmp_path):
    cfg = TEXT_CONFIGS["w48-h3-l3-gelu-eos"]
    _check_text(cfg, tmp_path, "text short+mask", seq=9, with_mask=True, seed=3)


def test_text_with_projection_parity(tmp_path):
    cfg = dict(TEXT_CONFIGS["w32-h4-l2-quickgelu-legacy"], projection_dim=20)
    _check_text(cfg, tmp_path, "text +projection", projection=True, seed=5)


@pytest.mark.parametrize("name", sorted(VISION_CONFIGS))
def test_vision_parity_tiny(name, tmp_path):
    _check_vision(VISION_CONFIGS[name], tmp_path, f"vision {name}", hidden=True)


def test_vision_with_projection_parity(tmp_path):
    cfg = dict(VISION_CONFIGS["w32-h4-l2-img16-p4"], projection_dim=12)
    _check_vision(cfg, tmp_path, "vision +projection", projection=True, seed=7)


def test_eos_pooling_paths():
    """Legacy configs pool at the highest id; others at the first eos_token_id (pad == eos)."""
    base = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=20, max_position_embeddings=6)
    ids = np.array([[0, 7, 19, 5, 5, 5], [0, 3, 4, 9, 9, 9]], np.int32)
    model = clip.CLIPTextModel.from_config(dict(base, eos_token_id=2))
    out = model(ids)
    np.testing.assert_array_equal(out.pooler_output, out.last_hidden_state[np.arange(2), [2, 3]])
    # same weights, a post-#24773 config (swapping the static config avoids a second init)
    model.text_model.config = dataclasses.replace(model.text_model.config, eos_token_id=9)
    out = model(ids)
    np.testing.assert_array_equal(out.pooler_output, out.last_hidden_state[np.arange(2), [0, 3]])


# ----------------------------------------------------------------------------------------------
# checkpoint layouts


def _text_and_ids(tmp_path, seed=0):
    cfg = TEXT_CONFIGS["w32-h4-l2-quickgelu-legacy"]
    ref_model = _make_torch(transformers.CLIPTextModel, transformers.CLIPTextConfig(**cfg), tmp_path, seed)
    ids, _ = _text_ids(cfg, 2, cfg["max_position_embeddings"], np.random.default_rng(seed), legacy=True)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(ids)).last_hidden_state.numpy()
    return ids, ref


def test_legacy_prefixed_layout_with_position_ids(tmp_path):
    """SD1.5's text_encoder / transformers 4.x: keys under ``text_model.`` plus a
    ``position_ids`` buffer; also a sharded index."""
    from safetensors.numpy import save_file

    ids, ref = _text_and_ids(tmp_path)
    sd = read_safetensors(tmp_path / "model.safetensors")
    legacy = {f"text_model.{k}": v for k, v in sd.items()}
    legacy["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    out = tmp_path / "legacy"
    out.mkdir()
    (out / "config.json").write_text((tmp_path / "config.json").read_text())
    keys = sorted(legacy)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for fname, names in shards.items():
        save_file({k: legacy[k] for k in names}, str(out / fname))
    index = {"metadata": {}, "weight_map": {k: f for f, names in shards.items() for k in names}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    ours = _apply(clip.CLIPTextModel.from_pretrained(out), ids.astype(np.int32)).last_hidden_state
    assert _rel(ours, ref, "last_hidden_state", "text legacy+sharded") <= TOL


def test_full_clip_checkpoint_feeds_both_towers(tmp_path):
    """A ``CLIPModel`` folder (``text_config`` / ``vision_config``, both towers, projections,
    logit_scale) loads into each tower; the other tower's tensors are reported as ignored."""
    config = transformers.CLIPConfig(
        text_config=dict(TEXT_CONFIGS["w48-h3-l3-gelu-eos"]),
        vision_config=dict(VISION_CONFIGS["w32-h4-l2-img16-p4"]), projection_dim=24)
    ref_model = _make_torch(transformers.CLIPModel, config, tmp_path, seed=11)
    ids, _ = _text_ids(TEXT_CONFIGS["w48-h3-l3-gelu-eos"], 2, 20, np.random.default_rng(1), legacy=False)
    pixels = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        t_ref = ref_model.text_model(torch.from_numpy(ids))
        i_ref = ref_model.get_image_features(torch.from_numpy(pixels))
        i_ref = getattr(i_ref, "pooler_output", i_ref)
    text = clip.CLIPTextModel.from_pretrained(tmp_path)
    t = _apply(text, ids.astype(np.int32))
    assert _rel(t.pooler_output, t_ref.pooler_output, "pooler_output", "CLIPModel->text") <= TOL
    vision = clip.CLIPVisionModelWithProjection.from_pretrained(tmp_path)
    v = _apply(vision, pixels.transpose(0, 2, 3, 1))
    assert v.image_embeds.shape == (2, 24)
    assert _rel(v.image_embeds, i_ref, "image_embeds", "CLIPModel->vision+proj") <= TOL
    report = text.load_state_dict(read_safetensors(tmp_path / "model.safetensors"))
    assert any(k.startswith("vision_model.") for k in report.ignored)
    assert "text_projection.weight" in report.ignored


# ----------------------------------------------------------------------------------------------
# dtype


def test_bfloat16_compute(tmp_path):
    ids, ref = _text_and_ids(tmp_path, seed=4)
    bf = clip.CLIPTextModel.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(bf, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    out = _apply(bf, ids.astype(np.int32)).last_hidden_state
    assert out.dtype == jnp.bfloat16
    assert _rel(out, ref, "last_hidden_state", "text bf16 (loose)") < 5e-2


# ----------------------------------------------------------------------------------------------
# errors


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found.*nope"):
        clip.CLIPTextModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        clip.CLIPTextModel.from_pretrained(tmp_path, subfolder="text_encoder")


def test_missing_config_and_weights(tmp_path):
    _text_and_ids(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        clip.CLIPTextModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="CLIP config not found"):
        clip.CLIPTextModel.from_config(tmp_path / "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(TEXT_CONFIGS["w32-h4-l2-quickgelu-legacy"]))
    with pytest.raises(FileNotFoundError, match="no weights in"):
        clip.CLIPTextModel.from_pretrained(empty)


def test_wrong_shape_names_the_tensor(tmp_path):
    from safetensors.numpy import save_file

    _text_and_ids(tmp_path)
    sd = read_safetensors(tmp_path / "model.safetensors")
    sd["encoder.layers.1.mlp.fc1.weight"] = np.zeros((65, 32), np.float32)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match=r"wrong shape.*encoder\.layers\.1\.mlp\.fc1\.weight.*\(65, 32\)"):
        clip.CLIPTextModel.from_pretrained(tmp_path)


def test_config_errors(tmp_path):
    vision_cfg = dict(VISION_CONFIGS["w32-h4-l2-img16-p4"], model_type="clip_vision_model")
    with pytest.raises(ValueError, match="vision config"):
        clip.CLIPTextModel.from_config(vision_cfg)
    with pytest.raises(ValueError, match="hidden_act"):
        clip.CLIPVisionModel.from_config(dict(vision_cfg, hidden_act="nope"))
    with pytest.raises(ValueError, match="divisible"):
        clip.CLIPTextModel.from_config(dict(hidden_size=10, num_attention_heads=3))
    # abstract models suffice: the checks fire before any computation
    model = nnx.eval_shape(lambda: clip.CLIPVisionModel.from_config(vision_cfg))
    with pytest.raises(ValueError, match="channels-last"):
        model(np.zeros((1, 3, 16, 16), np.float32))
    text = nnx.eval_shape(lambda: clip.CLIPTextModel.from_config(dict(TEXT_CONFIGS["w24-h6-l1-tanhgelu-eps"])))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        text(np.zeros((1, 13), np.int32))


def test_hub_repo_id_offline_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub repo"):
        clip.CLIPTextModel.from_pretrained("jaxvedit-test/no-such-repo", subfolder="text_encoder",
                                           local_files_only=True, cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# tokenizer


def _write_tiny_tokenizer(folder):
    vocab = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>",
             "t</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>",
             "<|startoftext|>", "<|endoftext|>"]
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")


def test_tokenizer(tmp_path):
    _write_tiny_tokenizer(tmp_path)
    tok = clip.load_tokenizer(tmp_path)
    assert isinstance(tok, transformers.CLIPTokenizer)
    assert tok.model_max_length == 77
    bos, eos = 21, 22  # pad token is <|endoftext|> too
    ids = clip.tokenize(tok, ["lower newer", "low"], max_length=12)
    assert ids.dtype == np.int32 and ids.shape == (2, 12)
    np.testing.assert_array_equal(ids[0], [bos, 10, 2, 16, 9, 3, 2, 16, eos, eos, eos, eos])
    np.testing.assert_array_equal(ids[1], [bos, 15] + [eos] * 10)
    cut = clip.tokenize(tok, "lower newer lower newer", max_length=6)  # truncation keeps EOS
    np.testing.assert_array_equal(cut, [[bos, 10, 2, 16, 9, eos]])
    assert clip.tokenize(tok, "low").shape == (1, 77)
    assert clip.load_tokenizer(tmp_path / "tokenizer", max_length=16).model_max_length == 16
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        clip.load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer"):
        clip.load_tokenizer(tmp_path / "tokenizer" / "..", subfolder="nothing-here")


# ----------------------------------------------------------------------------------------------
# full size (SD1.5 text tower, ViT-B/32 vision tower)


@pytest.mark.slow
def test_text_parity_sd15_vit_l14(tmp_path):
    cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
               projection_dim=768, eos_token_id=2, bos_token_id=0, pad_token_id=1)
    t0 = time.perf_counter()
    _check_text(cfg, tmp_path, "text ViT-L/14 (SD1.5)", batch=2)
    print(f"[clip parity] text ViT-L/14 took {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_vision_parity_vit_b32(tmp_path):
    cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               image_size=224, patch_size=32, hidden_act="quick_gelu")
    t0 = time.perf_counter()
    rels = _check_vision(cfg, tmp_path, "vision ViT-B/32", batch=2)
    model = clip.CLIPVisionModel.from_pretrained(tmp_path)
    out = jax.eval_shape(lambda x: model(x), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert out.last_hidden_state.shape == (1, 50, 768)  # the papers' unshared-token source
    print(f"[clip parity] vision ViT-B/32 took {time.perf_counter() - t0:.1f} s")
    assert rels
