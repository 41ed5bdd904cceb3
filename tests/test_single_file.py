"""Single-file (LDM layout) SD1.x checkpoints -> diffusers layout, without torch at run time.

Round trip: random diffusers/transformers state dicts -> LDM layout (independent inverse in
``tests/ldm_layout.py``, checked against diffusers' own ``convert_ldm_*_checkpoint``) -> our
``convert_ldm_*`` must give back the original keys and bit-identical arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.numpy import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from jaxvedit.models.single_file import (  # noqa: E402
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    convert_ldm_text_encoder,
    convert_ldm_unet,
    convert_ldm_vae,
    infer_text_encoder_config,
    infer_unet_config,
    infer_vae_config,
    load_single_file_components,
    read_single_file,
)
from jaxvedit.models.weights import WeightLoadError  # noqa: E402
from ldm_layout import clip_to_ldm_text, diffusers_to_ldm_unet, diffusers_to_ldm_vae  # noqa: E402

# ------------------------------------------------------------------------------------------------
# tiny configs of SD1.x block types

TINY_UNETS = {
    # 2 levels, 1 layer, attention on the high-resolution level only
    "a": dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
              layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
              attention_head_dim=4, norm_num_groups=8),
    # 3 levels, 2 layers, inpainting-style 9 input channels, two transformer layers per block
    "b": dict(sample_size=16, in_channels=9, out_channels=4, block_out_channels=(16, 32, 48),
              layers_per_block=2,
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8,
              transformer_layers_per_block=2),
    # 3 levels, attention only below the top level, linear projections (SD2-style proj_in/out)
    "c": dict(sample_size=16, in_channels=4, out_channels=3, block_out_channels=(16, 32, 32),
              layers_per_block=1,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8,
              use_linear_projection=True),
}
TINY_VAES = {
    "a": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
              layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=32),
    "b": dict(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 16, 32),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 3,
              up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, sample_size=32),
}
TINY_CLIP = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=2)

# the shape parameters infer_unet_config must recover
_UNET_SHAPE_KEYS = ("block_out_channels", "layers_per_block", "in_channels", "out_channels",
                    "cross_attention_dim", "down_block_types", "up_block_types")


def _randomize(model, seed: int) -> dict[str, np.ndarray]:
    """The model's state dict with every tensor replaced by distinct random float32 values
    (so a tensor landing under the wrong key cannot go unnoticed)."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(tuple(v.shape)).astype(np.float32)
            for k, v in model.state_dict().items()}


def _config(model) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()}


def _build(cls, kwargs, seed=0):
    torch.manual_seed(seed)
    model = cls(**kwargs)
    return _config(model), _randomize(model, seed)


def _assert_identical(got: dict, want: dict):
    assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))[:10]
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, g.shape, w.dtype, w.shape)
        assert g.tobytes() == w.tobytes(), k


@pytest.fixture(scope="module", params=sorted(TINY_UNETS))
def tiny_unet(request):
    config, state = _build(UNet2DConditionModel, TINY_UNETS[request.param])
    return request.param, config, state


@pytest.fixture(scope="module", params=sorted(TINY_VAES))
def tiny_vae(request):
    config, state = _build(AutoencoderKL, TINY_VAES[request.param], seed=1)
    return request.param, config, state


def _text_model_keys(state: dict) -> dict:
    """SD1.5's text_encoder/model.safetensors layout (``text_model.*``); transformers >= 5
    writes a bare CLIPTextModel without that level and reads both."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(2)
    model = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    return _text_model_keys(_randomize(model, 2))


# ------------------------------------------------------------------------------------------------
# UNet


def test_unet_inverse_is_ldm_layout(tiny_unet):
    _, config, state = tiny_unet
    ldm = diffusers_to_ldm_unet(state, config)
    assert all(k.startswith("model.diffusion_model.") for k in ldm)
    _assert_identical(convert_ldm_unet_checkpoint(ldm, config), state)


def test_unet_round_trip(tiny_unet):
    _, config, state = tiny_unet
    ldm = diffusers_to_ldm_unet(state, config)
    _assert_identical(convert_ldm_unet(ldm, config), state)


def test_infer_unet_config_tiny(tiny_unet):
    name, config, state = tiny_unet
    inferred = infer_unet_config(diffusers_to_ldm_unet(state, config))
    for key in _UNET_SHAPE_KEYS:
        assert inferred[key] == config[key], key
    assert inferred.get("use_linear_projection", False) == config["use_linear_projection"]
    assert inferred.get("transformer_layers_per_block", 1) == config["transformer_layers_per_block"]
    assert inferred["attention_head_dim"] == 8  # heads are not in the shapes: SD1.5 default
    assert infer_unet_config(state={**diffusers_to_ldm_unet(state, config)},
                             override={"attention_head_dim": 4})["attention_head_dim"] == 4
    # the inferred config converts the file as the true one does
    _assert_identical(convert_ldm_unet(diffusers_to_ldm_unet(state, config), inferred), state)


def test_unet_proj_follows_config():
    """SD1.x keeps 1x1-conv proj_in/out 4-D; a linear-projection config gets them 2-D."""
    config, state = _build(UNet2DConditionModel, TINY_UNETS["a"])
    ldm = diffusers_to_ldm_unet(state, config)
    key = "down_blocks.0.attentions.0.proj_in.weight"
    assert convert_ldm_unet(ldm, config)[key].shape == (32, 32, 1, 1)
    linear = convert_ldm_unet(ldm, {**config, "use_linear_projection": True})
    assert linear[key].shape == (32, 32)
    np.testing.assert_array_equal(linear[key], state[key][:, :, 0, 0])


# ------------------------------------------------------------------------------------------------
# VAE


def test_vae_inverse_is_ldm_layout(tiny_vae):
    _, config, state = tiny_vae
    ldm = diffusers_to_ldm_vae(state)
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    _assert_identical(convert_ldm_vae_checkpoint(ldm, config), state)


def test_vae_round_trip(tiny_vae):
    _, config, state = tiny_vae
    ldm = diffusers_to_ldm_vae(state)
    got = convert_ldm_vae(ldm, config)
    _assert_identical(got, state)
    c = config["block_out_channels"][-1]
    assert got["decoder.mid_block.attentions.0.to_out.0.weight"].shape == (c, c)


def test_standalone_vae_file(tiny_vae):
    """VAE-only LDM files (e.g. vae-ft-mse-840000-ema-pruned) have no first_stage_model. prefix."""
    _, config, state = tiny_vae
    ldm = diffusers_to_ldm_vae(state, prefix="")
    assert "encoder.conv_in.weight" in ldm
    _assert_identical(convert_ldm_vae(ldm, config), state)
    assert infer_vae_config(ldm)["block_out_channels"] == config["block_out_channels"]


def test_infer_vae_config_tiny(tiny_vae):
    _, config, state = tiny_vae
    inferred = infer_vae_config(diffusers_to_ldm_vae(state))
    for key in ("block_out_channels", "layers_per_block", "in_channels", "out_channels",
                "latent_channels", "down_block_types", "up_block_types"):
        assert inferred[key] == config[key], key
    assert inferred["scaling_factor"] == 0.18215


# ------------------------------------------------------------------------------------------------
# text encoder


def test_text_encoder_round_trip(tiny_clip):
    ldm = clip_to_ldm_text(tiny_clip)
    # real files carry the position_ids buffer: ignored (transformers does not persist it)
    ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(16)[None]
    reference = convert_ldm_clip_checkpoint(ldm)
    reference.pop("text_model.embeddings.position_ids")
    _assert_identical(reference, tiny_clip)
    _assert_identical(convert_ldm_text_encoder(ldm), tiny_clip)
    # very old files lack the text_model. level
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in ldm.items()}
    _assert_identical(convert_ldm_text_encoder(old), tiny_clip)
    cfg = infer_text_encoder_config(ldm)
    for key, value in TINY_CLIP.items():
        if key not in ("num_attention_heads", "bos_token_id", "eos_token_id"):  # not in the shapes: hidden_size // 64
            assert cfg[key] == value, key


def test_text_encoder_missing_key(tiny_clip):
    ldm = clip_to_ldm_text(tiny_clip)
    del ldm["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(WeightLoadError, match=r"layers\.1\.mlp\.fc2\.bias"):
        convert_ldm_text_encoder(ldm)


# ------------------------------------------------------------------------------------------------
# the full SD1.5 architecture: key sets and shapes


def _meta_shapes(cls, config) -> dict[str, np.ndarray]:
    """Key -> zero-memory array of the parameter's shape, valued by the key's index (so that a
    tensor filed under the wrong key of the same shape is still caught)."""
    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return {k: np.broadcast_to(np.float32(i), tuple(v.shape))
            for i, (k, v) in enumerate(model.state_dict().items())}


# real key names and shapes of the original v1-5-pruned checkpoint
SD15_LDM_SAMPLES = {
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
    "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
    "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
    "model.diffusion_model.output_blocks.11.1.proj_out.weight": (320, 320, 1, 1),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
}


@pytest.mark.slow
def test_full_sd15_key_sets_and_shapes():
    unet = _meta_shapes(UNet2DConditionModel, SD15_UNET_CONFIG)
    vae = _meta_shapes(AutoencoderKL, SD15_VAE_CONFIG)
    clip = _text_model_keys(_meta_shapes(CLIPTextModel, CLIPTextConfig(**{
        k: v for k, v in SD15_TEXT_ENCODER_CONFIG.items()
        if k not in ("_name_or_path", "architectures", "transformers_version", "torch_dtype")})))
    assert (len(unet), len(vae), len(clip)) == (686, 248, 196)
    unet_config = _MetaConfig(UNet2DConditionModel, SD15_UNET_CONFIG)
    ldm = {**diffusers_to_ldm_unet(unet, unet_config), **diffusers_to_ldm_vae(vae),
           **clip_to_ldm_text(clip)}
    for key, shape in SD15_LDM_SAMPLES.items():
        assert ldm[key].shape == shape, key
    _assert_identical(convert_ldm_unet_checkpoint(ldm, unet_config), unet)
    _assert_identical(convert_ldm_vae_checkpoint(ldm, SD15_VAE_CONFIG), vae)

    # shapes -> the SD1.5 configs
    assert infer_unet_config(ldm) == SD15_UNET_CONFIG
    assert infer_vae_config(ldm) == {**SD15_VAE_CONFIG, "scaling_factor": 0.18215}
    te_config = infer_text_encoder_config(ldm)
    assert te_config == SD15_TEXT_ENCODER_CONFIG

    parts = load_single_file_components(ldm)
    _assert_identical(parts["unet"]["state_dict"], unet)
    _assert_identical(parts["vae"]["state_dict"], vae)
    _assert_identical(parts["text_encoder"]["state_dict"], clip)
    assert parts["unet"]["config"] == SD15_UNET_CONFIG
    assert parts["ignored"] == [] and parts["unknown"] == []


class _MetaConfig(dict):
    """The full config diffusers records for ``cls(**config)`` (built on the meta device)."""

    def __init__(self, cls, config):
        with torch.device("meta"):
            model = cls.from_config(config)
        super().__init__(_config(model))


# ------------------------------------------------------------------------------------------------
# whole files


def _single_file(tmp_path, dtype=np.float32, extra=None):
    u_config, unet = _build(UNet2DConditionModel, TINY_UNETS["b"])
    v_config, vae = _build(AutoencoderKL, TINY_VAES["a"], seed=1)
    torch.manual_seed(2)
    clip = _text_model_keys(_randomize(CLIPTextModel(CLIPTextConfig(**TINY_CLIP)), 2))
    ldm = {**diffusers_to_ldm_unet(unet, u_config), **diffusers_to_ldm_vae(vae),
           **clip_to_ldm_text(clip)}
    ldm = {k: v.astype(dtype) for k, v in ldm.items()}
    ldm.update(extra or {})
    path = tmp_path / "tiny-sd.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in ldm.items()}, str(path))
    return path, (u_config, unet), (v_config, vae), clip


def test_load_single_file_components(tmp_path):
    extra = {
        "model_ema.decay": np.array(0.9999, np.float32),
        "model_ema.num_updates": np.array(10, np.int32),
        "model_ema.diffusion_modelinput_blocks00weight": np.zeros((16, 9, 3, 3), np.float32),
        "alphas_cumprod": np.linspace(1, 0, 1000, dtype=np.float32),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": np.arange(16)[None],
        "some_extension.lora_weight": np.zeros(3, np.float32),
    }
    path, (u_config, unet), (v_config, vae), clip = _single_file(tmp_path, extra=extra)
    parts = load_single_file_components(path, unet_config={**u_config, "attention_head_dim": 2})
    _assert_identical(parts["unet"]["state_dict"], unet)
    _assert_identical(parts["vae"]["state_dict"], vae)
    _assert_identical(parts["text_encoder"]["state_dict"], clip)
    assert parts["unet"]["config"]["attention_head_dim"] == 2
    v_cfg = parts["vae"]["config"]
    assert (v_cfg["block_out_channels"], v_cfg["layers_per_block"]) == ([16, 32], 1)
    assert parts["text_encoder"]["config"]["num_hidden_layers"] == 2
    assert parts["unknown"] == ["some_extension.lora_weight"]
    assert parts["ignored"] == sorted(set(extra) - {"some_extension.lora_weight"})
    # config inferred from shapes when none is given
    inferred = load_single_file_components(path)["unet"]["config"]
    for key in _UNET_SHAPE_KEYS:
        assert inferred[key] == u_config[key], key


def test_use_ema(tmp_path):
    u_config, unet = _build(UNet2DConditionModel, TINY_UNETS["a"])
    _, ema_unet = _build(UNet2DConditionModel, TINY_UNETS["a"], seed=7)
    v_config, vae = _build(AutoencoderKL, TINY_VAES["a"], seed=1)
    ldm = {**diffusers_to_ldm_unet(unet, u_config), **diffusers_to_ldm_vae(vae)}
    ema = {"model_ema." + "".join(k.split(".")[1:]): v
           for k, v in diffusers_to_ldm_unet(ema_unet, u_config).items()}
    ema["model_ema.num_updates"] = np.array(3)
    regular = load_single_file_components({**ldm, **ema})
    _assert_identical(regular["unet"]["state_dict"], unet)
    assert regular["unet_source"] == "model" and "text_encoder" not in regular
    assert len(regular["ignored"]) == len(ema)
    averaged = load_single_file_components({**ldm, **ema}, use_ema=True)
    _assert_identical(averaged["unet"]["state_dict"], ema_unet)
    _assert_identical(averaged["vae"]["state_dict"], vae)
    assert averaged["unet_source"] == "model_ema"
    assert averaged["ignored"] == ["model_ema.num_updates"]
    del ema["model_ema.diffusion_modelout2bias"]
    with pytest.raises(WeightLoadError, match=r"model_ema\.diffusion_modelout2bias"):
        load_single_file_components({**ldm, **ema}, use_ema=True)
    with pytest.raises(WeightLoadError, match="no EMA weights"):
        load_single_file_components(ldm, use_ema=True)


def test_runtime_needs_no_torch(tmp_path):
    """Reading and converting a file imports neither torch nor diffusers nor transformers."""
    import subprocess
    import sys

    path, *_ = _single_file(tmp_path)
    code = (
        "import sys\n"
        "from jaxvedit.models.single_file import load_single_file_components\n"
        f"parts = load_single_file_components({str(path)!r})\n"
        "assert len(parts['unet']['state_dict']) > 100, parts.keys()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_half_precision_kept(tmp_path):
    path, *_ = _single_file(tmp_path, dtype=np.float16)
    parts = load_single_file_components(path)
    assert {v.dtype for v in parts["unet"]["state_dict"].values()} == {np.dtype(np.float16)}


# ------------------------------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_single_file(path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_single_file_components(path)


def test_ckpt_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        read_single_file(tmp_path / "absent.ckpt")
    path = tmp_path / "v1-5-pruned.ckpt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"(?s)v1-5-pruned\.ckpt.*arbitrary code.*safetensors"):
        read_single_file(path)
    # a pickle renamed to .safetensors is recognised too
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"renamed\.safetensors is not a safetensors file"):
        read_single_file(renamed)
    raw = tmp_path / "raw-pickle.safetensors"
    raw.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00")
    with pytest.raises(ValueError, match="PyTorch pickle"):
        read_single_file(raw)


def test_pickle_sniffing_spares_real_safetensors(tmp_path):
    """A safetensors header whose length starts with the bytes of a pickle/zip magic is read."""
    for pad in range(300):  # find a header length whose first byte is 0x80
        path = tmp_path / f"t{pad}.safetensors"
        save_file({"x" * (pad + 1): np.zeros(2, np.float32)}, str(path))
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length with a 0x80 low byte found")
    assert list(read_single_file(path)) == ["x" * (pad + 1)]


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightLoadError, match="broken.safetensors"):
        read_single_file(path)
    good, *_ = _single_file(tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(WeightLoadError, match="truncated.safetensors"):
        read_single_file(truncated)


def test_missing_unet_key_named(tiny_unet):
    _, config, state = tiny_unet
    ldm = diffusers_to_ldm_unet(state, config)
    victim = "model.diffusion_model.output_blocks.1.0.skip_connection.weight"
    del ldm[victim]
    with pytest.raises(WeightLoadError, match=r"output_blocks\.1\.0\.skip_connection\.weight "
                                              r"\(-> up_blocks\.0\.resnets\.1\.conv_shortcut"):
        convert_ldm_unet(ldm, config)


def test_missing_vae_key_named(tiny_vae):
    _, config, state = tiny_vae
    ldm = diffusers_to_ldm_vae(state)
    del ldm["first_stage_model.decoder.mid.attn_1.v.bias"]
    with pytest.raises(WeightLoadError, match=r"first_stage_model\.decoder\.mid\.attn_1\.v\.bias"):
        convert_ldm_vae(ldm, config)


def test_config_mismatch_names_leftover_keys():
    config, state = _build(UNet2DConditionModel, TINY_UNETS["a"])
    ldm = diffusers_to_ldm_unet(state, config)
    # the file has attention in the first down block; a config without it leaves keys over
    wrong = {**config, "down_block_types": ["DownBlock2D", "DownBlock2D"]}
    with pytest.raises(WeightLoadError, match=r"does not account for.*input_blocks\.1\.1\."):
        convert_ldm_unet(ldm, wrong)


def test_sd2_refused(tmp_path):
    with pytest.raises(ValueError, match="SD2"):
        load_single_file_components({"cond_stage_model.model.ln_final.weight": np.ones(4),
                                     "model.diffusion_model.out.2.bias": np.ones(4)})
