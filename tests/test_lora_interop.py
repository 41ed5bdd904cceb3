"""LoRA files of other tools against diffusers/peft (tiny UNet and CLIP text encoder, fp32):
every layout SD1.5's ``load_lora_weights`` accepts, written by diffusers/peft (or, where
diffusers 0.42 no longer writes the layout, by a converter here that follows the layout's
definition), gives the same UNet and text-encoder outputs in jaxvedit (``import_lora``) and in
diffusers after ``pipe.load_lora_weights``; per-module ranks and alphas that differ from the
defaults; our kohya and diffusers exports load back in diffusers; unsupported content is refused
by name. Metric: max|ours - diffusers| / std(diffusers); bar 1e-4."""

from __future__ import annotations

import copy
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvedit.adapters import (AdapterLoadError, LoRAModel, LoRAUNet, export_lora_diffusers,
                               export_lora_kohya, import_lora, import_lora_diffusers)
from jaxvedit.models.tiny import TINY_TEXT_CONFIG

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4)
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
BAR = 1e-4


def _run(fwd, model, *args):
    """One jitted forward per graph definition (a LoRA's ranks / scales are static in it):
    adapters of the same structure share the compiled program."""
    graphdef, state = nnx.split(model)
    fn = _FORWARDS.setdefault((fwd, graphdef), jax.jit(
        lambda s, *a: (nnx.merge(graphdef, s)(*a) if fwd == "unet"
                       else nnx.merge(graphdef, s)(*a).last_hidden_state)))
    return np.asarray(fn(state, *args))


_FORWARDS: dict = {}


class _Setup:
    pass


def _allow_installed_peft():
    """transformers 5.24's PEFT integration (``text_encoder.add_adapter`` / ``load_adapter``,
    which diffusers' ``load_lora_weights`` calls for the text encoder) asks for peft >= 0.22,
    newer than any release on the package index here (0.21.2). Its version gate is lifted for
    these tests; the calls themselves run unchanged (and would fail if 0.21.2 lacked what they
    use)."""
    import transformers.integrations.peft as tp

    tp.check_peft_version = lambda min_version: None


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    from diffusers import DiffusionPipeline
    from diffusers import UNet2DConditionModel as TorchUNet
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from reference import randomize_
    from transformers import CLIPTextConfig, CLIPTextModel as TorchText

    from jaxvedit.models.clip import CLIPTextModel
    from jaxvedit.models.loading import load_unet

    class Pipe(DiffusionPipeline, StableDiffusionLoraLoaderMixin):  # SD1.5's LoRA loader
        def __init__(self, unet, text_encoder):
            super().__init__()
            self.register_modules(unet=unet, text_encoder=text_encoder)

    _allow_installed_peft()
    st = _Setup()
    st.root = tmp_path_factory.mktemp("lora-interop")
    torch.manual_seed(0)
    st.ref_unet = randomize_(TorchUNet(**TINY).eval(), 0)
    st.ref_unet.save_pretrained(st.root / "model" / "unet")
    text_cfg = CLIPTextConfig(**{k: v for k, v in TINY_TEXT_CONFIG.items() if k != "architectures"})
    st.ref_text = randomize_(TorchText(text_cfg).eval(), 1)
    st.ref_text.save_pretrained(st.root / "model" / "text_encoder")
    st.unet = load_unet(st.root / "model")
    st.text = CLIPTextModel.from_pretrained(st.root / "model", subfolder="text_encoder")
    st.Pipe = Pipe
    r = np.random.RandomState(0)
    st.x = r.randn(2, 4, 16, 16).astype(np.float32)
    st.t = np.array([10, 990])
    st.ctx = r.randn(2, 7, 32).astype(np.float32)
    st.ids = r.randint(3, TINY_TEXT_CONFIG["vocab_size"], size=(2, 7)).astype(np.int64)
    st.base_unet, st.base_text = _torch_outputs(st.ref_unet, st.ref_text, st)
    st.peft = _peft_source(st)
    return st


def _torch_outputs(unet, text, st):
    with torch.no_grad():
        u = unet(torch.from_numpy(st.x), torch.from_numpy(st.t), torch.from_numpy(st.ctx)).sample.numpy()
        e = text(torch.from_numpy(st.ids)).last_hidden_state.numpy()
    return u, e


def _our_outputs(imp, st):
    from reference import nchw, nhwc

    u = _run("unet", LoRAUNet(st.unet, imp.unet), jnp.asarray(nhwc(st.x)), jnp.asarray(st.t),
             jnp.asarray(st.ctx)) if imp.unet is not None else None
    e = _run("text", LoRAModel(st.text, imp.text_encoder), jnp.asarray(st.ids.astype(np.int32))) \
        if imp.text_encoder is not None else None
    return (nchw(u) if u is not None else None), e


def _diffusers_outputs(st, file, *, unet_only_no_prefix=False):
    """Fresh copies of the reference models, the file loaded the way diffusers users load it."""
    unet, text = copy.deepcopy(st.ref_unet), copy.deepcopy(st.ref_text)
    if unet_only_no_prefix:
        unet.load_lora_adapter(str(file), prefix=None)  # a bare UNet LoRA (unet.save_lora_adapter)
    else:
        pipe = st.Pipe(unet, text)
        pipe.load_lora_weights(str(file.parent), weight_name=file.name)
    return (unet, text), _torch_outputs(unet, text, st)


def _randomize_lora_(model, seed, std=0.15):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(std * torch.randn(p.shape, generator=g))


def _peft_source(st):
    """The reference LoRA, made the way diffusers' training scripts make one: peft adapters on
    the PyTorch UNet and text encoder, then their peft state dicts and LoraConfigs. Ranks and
    alphas differ per module (rank_pattern / alpha_pattern), on attention projections, ff,
    proj_in / proj_out (1x1 convolutions) and the text encoder's attention and MLP."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet_cfg = LoraConfig(r=4, lora_alpha=6.0, init_lora_weights="gaussian", target_modules=UNET_TARGETS,
                          rank_pattern={"attn2.to_k": 2, "ff.net.2": 3, "proj_in": 2},
                          alpha_pattern={"attn1.to_v": 3.0, "ff.net.2": 1.5, "proj_out": 8.0})
    text_cfg = LoraConfig(r=2, lora_alpha=5.0, init_lora_weights="gaussian", target_modules=TEXT_TARGETS,
                          rank_pattern={"fc1": 3}, alpha_pattern={"fc2": 1.0, "k_proj": 2.5})
    unet, text = copy.deepcopy(st.ref_unet), copy.deepcopy(st.ref_text)
    unet.add_adapter(unet_cfg, adapter_name="src")
    text.add_adapter(text_cfg, adapter_name="src")
    _randomize_lora_(unet, 1)
    _randomize_lora_(text, 2)
    return {"unet": get_peft_model_state_dict(unet, adapter_name="src"),
            "text_encoder": get_peft_model_state_dict(text, adapter_name="src"),
            "unet_cfg": unet_cfg, "text_cfg": text_cfg}


def _check(name, st, file, imp, ref_outputs, *, te=True, unet=True):
    ours_u, ours_e = _our_outputs(imp, st)
    figures = {}
    if unet:
        figures["unet"] = (_rel(ours_u, ref_outputs[0]), _rel(st.base_unet, ref_outputs[0]))
    if te:
        figures["text"] = (_rel(ours_e, ref_outputs[1]), _rel(st.base_text, ref_outputs[1]))
    print(f"{name}: " + "; ".join(f"{k} max|diff|/std = {e:.1e} (LoRA effect {eff:.2f})"
                                  for k, (e, eff) in figures.items()))
    for k, (err, effect) in figures.items():
        assert err <= BAR, f"{name}: {k} differs from diffusers by {err:.2e}"
        assert effect > 0.05, f"{name}: the LoRA barely acts on the {k} ({effect:.3f})"
    return ours_u, ours_e


def _rel(a, b):
    from reference import rel_err

    return rel_err(a, b)


def _per_module(lora):
    return {layer.path: (layer.rank, layer.alpha) for layer in lora.layers}


def _assert_nondefault(lora, *, alphas=True, per_module_alphas=True):
    ranks = {r for r, _ in _per_module(lora).values()}
    assert len(ranks) > 1, "expected per-module ranks"
    if alphas:
        assert any(a != r for r, a in _per_module(lora).values()), "expected alpha != rank"
    if alphas and per_module_alphas:
        assert len({a for _, a in _per_module(lora).values()}) > 1, "expected per-module alphas"


# ----------------------------------------------------------------------------------------------
# layouts written by diffusers / peft


def test_peft_layout_with_metadata(s):
    """``save_lora_weights(unet_lora_layers=peft sd, text_encoder_lora_layers=...,
    *_lora_adapter_metadata=LoraConfig)``: the peft layout, rank/alpha patterns in the metadata."""
    file = s.root / "peft" / "pytorch_lora_weights.safetensors"
    s.Pipe.save_lora_weights(file.parent, unet_lora_layers=s.peft["unet"],
                             text_encoder_lora_layers=s.peft["text_encoder"],
                             unet_lora_adapter_metadata=s.peft["unet_cfg"].to_dict(),
                             text_encoder_lora_adapter_metadata=s.peft["text_cfg"].to_dict())
    (unet, text), ref = _diffusers_outputs(s, file)
    imp = import_lora(file, s.unet, s.text)
    assert imp.layout == "peft" and imp.modules == {"unet": 48, "text_encoder": 12}
    # every module's rank and alpha is the one peft used
    for lora, torch_model in ((imp.unet, unet), (imp.text_encoder, text)):
        _assert_nondefault(lora)
        for path, (rank, alpha) in _per_module(lora).items():
            mod = torch_model.get_submodule(path.removeprefix("text_model."))
            adapter = next(iter(mod.r))
            assert (mod.r[adapter], mod.lora_alpha[adapter]) == (rank, alpha), path
    s.peft_import = imp
    s.peft_outputs = _check("peft layout + metadata", s, file, imp, ref)


def _attention_only(sd):
    return {k: v for k, v in sd.items() if re.search(r"\.(to_[qkv]|to_out\.0|[qkv]_proj|out_proj)\.lora_", k)}


@pytest.fixture(scope="module")
def script(s):
    """The file of diffusers' LoRA training scripts (``test_training_script_layout`` checks it),
    its two state dicts renamed by ``convert_state_dict_to_diffusers``, and our outputs with it
    imported: the older layouts below are derived from it and must give the same outputs. A
    fixture, so that each test gets it whatever order (or worker) the tests run in."""
    from types import SimpleNamespace

    from diffusers.utils import convert_state_dict_to_diffusers

    file = s.root / "script" / "pytorch_lora_weights.safetensors"
    unet_sd = convert_state_dict_to_diffusers(_attention_only(s.peft["unet"]))
    text_sd = convert_state_dict_to_diffusers(_attention_only(s.peft["text_encoder"]))
    s.Pipe.save_lora_weights(file.parent, unet_lora_layers=unet_sd, text_encoder_lora_layers=text_sd)
    _, ref = _diffusers_outputs(s, file)
    imp = import_lora(file, s.unet, s.text)
    outputs = _check("training-script layout (lora.down / lora_linear_layer)", s, file, imp, ref)
    return SimpleNamespace(file=file, unet_sd=unet_sd, text_sd=text_sd, imp=imp, outputs=outputs,
                           sd={**{f"unet.{k}": v for k, v in unet_sd.items()},
                               **{f"text_encoder.{k}": v for k, v in text_sd.items()}})


def test_training_script_layout(s, script):
    """diffusers' LoRA training scripts (``train_text_to_image_lora.py``, ``train_dreambooth_lora.py``:
    peft ``target_modules`` to_q/to_k/to_v/to_out.0 and q/k/v/out_proj):
    ``convert_state_dict_to_diffusers(peft sd)`` then ``save_lora_weights`` without metadata:
    ``unet.*.lora.down.weight``, ``text_encoder.*.lora_linear_layer.down.weight``; no alphas
    (scale 1 per module). (``convert_state_dict_to_diffusers`` renames only those projections;
    diffusers 0.42 then reads a file that mixes them with ``lora_A`` keys by its first key only
    and drops the rest: the scripts never write such a file, and this test does not either.)"""
    assert any(k.endswith(".to_q.lora.down.weight") for k in script.unet_sd)
    assert any(k.endswith(".q_proj.lora_linear_layer.down.weight") for k in script.text_sd)
    assert script.imp.layout == "diffusers-old"
    _assert_nondefault(script.imp.unet, alphas=False)
    assert all(a == r for r, a in _per_module(script.imp.unet).values())


def _attn_procs_key(key: str) -> str:
    """The diffusers < 0.26 attention-processor names, from their definition
    (``utils/state_dict_utils.py``: UNET_TO_DIFFUSERS and DIFFUSERS_OLD_TO_PEFT read backwards):
    ``{attn}.processor.to_q_lora.down.weight``; the text encoder's ``self_attn.to_q_lora``."""
    for proj in ("to_q", "to_k", "to_v"):
        key = key.replace(f".{proj}.lora.", f".processor.{proj}_lora.")
    key = key.replace(".to_out.0.lora.", ".processor.to_out_lora.")
    for old, proj in (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("out_proj", "to_out")):
        key = key.replace(f".self_attn.{old}.lora_linear_layer.", f".self_attn.{proj}_lora.")
    return key


def test_old_attention_processor_layout(s, script, tmp_path):
    """``unet.{attn}.processor.to_q_lora.down.weight`` (+ ``lora.down`` on the other linears, as
    ``LoRACompatibleLinear`` saved them), the text encoder's ``to_q_lora``; and the same UNet
    part without the ``unet.`` prefix (``unet.save_attn_procs``), loaded by
    ``unet.load_lora_adapter(prefix=None)`` (``load_attn_procs`` reads only Custom Diffusion
    in diffusers 0.42)."""
    from safetensors.torch import save_file

    sd = {_attn_procs_key(k): v.contiguous() for k, v in script.sd.items()}
    assert any(".processor.to_out_lora.up.weight" in k for k in sd)
    assert any(".self_attn.to_q_lora.down.weight" in k for k in sd)
    file = tmp_path / "old" / "pytorch_lora_weights.safetensors"
    file.parent.mkdir()
    save_file(sd, str(file))
    _, ref = _diffusers_outputs(s, file)
    imp = import_lora(file, s.unet, s.text)
    assert imp.layout == "diffusers-old"
    ours = _check("old diffusers layout (processor.to_q_lora)", s, file, imp, ref)
    np.testing.assert_array_equal(ours[0], script.outputs[0])  # the same LoRA as the script's

    bare = tmp_path / "bare" / "pytorch_lora_weights.safetensors"
    bare.parent.mkdir()
    save_file({k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}, str(bare))
    _, ref = _diffusers_outputs(s, bare, unet_only_no_prefix=True)
    imp = import_lora(bare, s.unet)
    assert imp.text_encoder is None
    _check("old diffusers layout without the unet. prefix", s, bare, imp, ref, te=False)


def _kohya_from_peft(peft_sd: dict, prefix: str, alpha_of) -> dict:
    """The kohya layout from its definition (kohya-ss sd-scripts ``networks/lora.py``:
    ``lora_name = prefix + module path with '.' -> '_'``; ``lora_down`` / ``lora_up`` weights and a
    scalar ``alpha`` per module, scale ``alpha / rank``)."""
    out = {}
    for key, value in peft_sd.items():
        path, _, part = key.partition(".lora_")
        name = prefix + path.replace(".", "_")
        out[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value.contiguous()
        if part.startswith("A"):
            out[f"{name}.alpha"] = torch.tensor(float(alpha_of(path)))
    return out


def _kohya_alpha(path: str) -> float:
    """Per-module alphas for the kohya file: varied on ff / proj_in / proj_out, one value (6, not
    the rank) on the UNet's attention projections and on the text encoder: where diffusers 0.42
    loses per-module kohya alphas (see test_kohya_per_module_alphas_where_diffusers_loses_them)."""
    for suffix, alpha in (("proj_in", 1.0), ("proj_out", 5.0), ("ff.net.0.proj", 3.0),
                          ("ff.net.2", 0.5)):
        if path.endswith(suffix):
            return alpha
    return 6.0


def test_kohya_layout(s, script, tmp_path):
    """A kohya/A1111 file (``lora_unet_*``, ``lora_te_text_model_*``, ``.alpha``), written by the
    converter above; its UNet key names are checked against diffusers' own
    ``convert_state_dict_to_kohya``, whose output (alpha = rank, ``lora_te1_``) is loaded too."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    sd = {**_kohya_from_peft(s.peft["unet"], "lora_unet_", _kohya_alpha),
          **_kohya_from_peft(s.peft["text_encoder"], "lora_te_text_model_", _kohya_alpha)}
    theirs = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in s.peft["unet"].items()})
    assert {k for k in theirs if not k.endswith(".alpha")} == {
        k for k in sd if k.startswith("lora_unet_") and not k.endswith(".alpha")}
    file = tmp_path / "kohya.safetensors"
    save_file(sd, str(file))
    _, ref = _diffusers_outputs(s, file)
    imp = import_lora(file, s.unet, s.text)
    assert imp.layout == "kohya" and imp.modules == {"unet": 48, "text_encoder": 12}
    _assert_nondefault(imp.unet)
    _assert_nondefault(imp.text_encoder, per_module_alphas=False)
    s.kohya_import = imp
    s.kohya_outputs = _check("kohya layout", s, file, imp, ref)

    # what diffusers itself writes in the kohya layout (text encoder under lora_te1_, no
    # text_model level, alpha = rank), here of the training-script LoRA: the same outputs
    theirs = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in _attention_only(s.peft["unet"]).items()})
    theirs.update(convert_state_dict_to_kohya({f"text_encoder.{k}": v for k, v in
                                               _attention_only(s.peft["text_encoder"]).items()}))
    # (alpha = rank differs per module here: diffusers loses that on attention projections, see
    # the next test, so the reference takes each module's scale from the file)
    file2 = tmp_path / "kohya_by_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.items()}, str(file2))
    imp2 = import_lora(file2, s.unet, s.text)
    fixed, as_loaded = _diffusers_with_file_scales(s, file2, imp2)
    ours = _check("kohya layout written by diffusers' convert_state_dict_to_kohya (vs diffusers "
                  "with the file's scales)", s, file2, imp2, fixed)
    np.testing.assert_array_equal(ours[0], script.outputs[0])
    print(f"  diffusers' own load_lora_weights of that file: UNet max|diff|/std = "
          f"{_rel(ours[0], as_loaded[0]):.2e} (attn2.to_k: rank 2, alpha 2 loaded with alpha 4)")


def _diffusers_with_file_scales(s, file, imp):
    """diffusers' load_lora_weights, then every peft module's scaling set to the file's
    ``alpha / rank`` (kohya's definition): ``(fixed outputs, outputs as diffusers loaded it)``."""
    (unet, text), as_loaded = _diffusers_outputs(s, file)
    for model, lora in ((unet, imp.unet), (text, imp.text_encoder)):
        for layer in lora.layers:
            mod = model.get_submodule(layer.path.removeprefix("text_model."))
            for name in mod.scaling:
                mod.scaling[name] = layer.alpha / layer.rank
    return _torch_outputs(unet, text, s), as_loaded


def test_kohya_per_module_alphas_where_diffusers_loses_them(s, tmp_path):
    """Per-module alphas on the UNet's attention projections and in the text encoder: kohya's
    definition scales each module by its own ``alpha / rank``. diffusers 0.42 loses them and
    gives those modules the file's most common alpha: ``_get_alpha_name`` keys an attention
    projection's alpha as ``...attn1.processor.to_q_lora.down.weight``, a text-encoder attention's
    as ``...self_attn``, so ``get_peft_kwargs``' alpha_pattern never matches the module; and for
    the MLP the pattern keeps the ``text_model.`` level that transformers 5's CLIPTextModel no
    longer has. Reference: the peft modules diffusers loaded, each module's scaling set to the
    file's ``alpha / rank``; diffusers' own result is printed for the record."""
    imp0 = s.peft_import  # attn1.to_v has alpha 3, the other attention projections 6
    file = export_lora_kohya(imp0.unet, tmp_path / "kohya_attn_alphas.safetensors", unet=s.unet,
                             text_lora=imp0.text_encoder)
    imp = import_lora(file, s.unet, s.text)
    assert _per_module(imp.unet) == _per_module(imp0.unet)
    fixed, as_loaded = _diffusers_with_file_scales(s, file, imp)
    ours = _check("kohya, per-module attention alphas (vs diffusers with the file's scales)", s,
                  file, imp, fixed)
    np.testing.assert_allclose(ours[0], s.peft_outputs[0], atol=1e-6 * np.std(ours[0]))
    print(f"  diffusers' own load_lora_weights of that file: UNet max|diff|/std = "
          f"{_rel(ours[0], as_loaded[0]):.2e}, text encoder {_rel(ours[1], as_loaded[1]):.2e} "
          "(the lost per-module attention alphas)")


# ----------------------------------------------------------------------------------------------
# our exports, read by diffusers


def test_our_kohya_export_loads_in_diffusers(s, tmp_path):
    imp = s.kohya_import  # per-module ranks; varied alphas off the attention projections
    file = export_lora_kohya(imp.unet, tmp_path / "ours_kohya.safetensors", unet=s.unet,
                             text_lora=imp.text_encoder)
    from safetensors import safe_open

    with safe_open(str(file), framework="numpy") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha" in keys
    assert meta["ss_network_module"] == "networks.lora"
    _, ref = _diffusers_outputs(s, file)
    _check("our kohya export in diffusers' load_lora_weights", s, file, imp, ref)
    back = import_lora(file, s.unet, s.text)
    assert _per_module(back.unet) == _per_module(imp.unet)
    # and our own adapter format keeps the per-module ranks and alphas
    from jaxvedit.adapters import load_adapter, save_adapter

    own = load_adapter(save_adapter(tmp_path / "own", imp.unet), s.unet)
    assert _per_module(own) == _per_module(imp.unet) and own.config == imp.unet.config
    for a, b in zip(own.layers, imp.unet.layers):
        np.testing.assert_array_equal(a.lora_B.value, b.lora_B.value)


def test_our_diffusers_export_loads_in_diffusers(s, tmp_path):
    imp = s.peft_import  # every module its own rank / alpha, UNet + text encoder
    for fold in (False, True):
        file = export_lora_diffusers(imp.unet, tmp_path / f"fold{fold}", unet=s.unet,
                                     text_lora=imp.text_encoder, fold_alpha=fold)
        _, ref = _diffusers_outputs(s, file)
        _check(f"our diffusers export (fold_alpha={fold}) in load_lora_weights", s, file, imp, ref)
    with pytest.raises(AdapterLoadError, match="text encoder .* no text_encoder was given"):
        import_lora_diffusers(file, s.unet)


# ----------------------------------------------------------------------------------------------
# refused by name


def _kohya_file(tmp_path, name, tensors):
    from safetensors.numpy import save_file

    file = tmp_path / f"{name}.safetensors"
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, str(file))
    return file


def test_unsupported_content_is_refused_by_name(s, tmp_path):
    ok = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": np.ones((2, 64)),
          "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": np.ones((64, 2))}
    cases = {
        "conv3x3": ({"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": np.ones((2, 32, 3, 3)),
                     "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": np.ones((32, 2, 1, 1))},
                    r"LoRA on down_blocks\.0\.resnets\.0\.conv1 \(Conv 3x3\) is not supported"),
        "time_emb": ({"lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight": np.ones((2, 128)),
                      "lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_up.weight": np.ones((32, 2))},
                     r"down_blocks\.0\.resnets\.0\.time_emb_proj \(Linear\) is not supported"),
        "dora": ({**ok, "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale":
                  np.ones((1, 64))}, r"attn1_to_q\.dora_scale: DoRA"),
        "loha": ({"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a": np.ones((2, 2))},
                 "LyCORIS"),
        "ldm": ({"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight": np.ones((2, 32)),
                 "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight": np.ones((32, 2))},
                r"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q names no module .*LDM/sgm"),
        "sdxl_te2": ({**ok, "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                      np.ones((2, 32))}, "second text encoder"),
        "other_model": ({k: np.ones(v.shape[:1] + (v.shape[1] // 2,)) if "down" in k else v
                         for k, v in ok.items()},
                        r"mid_block\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q: down \(2, 32\) "
                        r".*made for another model"),
        "incomplete": ({k: v for k, v in ok.items() if "down" in k}, "has no up matrix"),
        "peft_bias": ({"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": np.ones((2, 64)),
                       "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": np.ones((64, 2)),
                       "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.bias": np.ones(64)},
                      r"lora_B\.bias: LoRA biases"),
        "controlnet": ({"controlnet.mid_block.attn.to_q.lora_A.weight": np.ones((2, 4))},
                       "not a UNet or text-encoder LoRA key"),
        "text_no_model": ({**ok, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                           np.ones((2, 32)),
                           "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight":
                           np.ones((32, 2))}, "LoRA tensors for the text encoder"),
    }
    for name, (tensors, match) in cases.items():
        with pytest.raises(AdapterLoadError, match=match):
            import_lora(_kohya_file(tmp_path, name, tensors), s.unet)
    with pytest.raises(AdapterLoadError, match="pickled LoRA files are refused"):
        (tmp_path / "x.bin").write_bytes(b"0")
        import_lora(tmp_path / "x.bin", s.unet)
    meta_file = tmp_path / "dora_meta.safetensors"
    from safetensors.numpy import save_file

    save_file({k.replace("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
                         "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
               .replace("lora_down", "lora_A").replace("lora_up", "lora_B"): np.asarray(v, np.float32)
               for k, v in ok.items()}, str(meta_file),
              metadata={"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 2,
                                                             "unet.use_dora": True})})
    with pytest.raises(AdapterLoadError, match=r"unet\.use_dora \(DoRA\)"):
        import_lora(meta_file, s.unet)


def test_every_lora_capable_linear_consults_the_adapter(s):
    """The modules ``lora_linears`` lists are exactly those whose forward passes through the
    per-call adapter (traced abstractly: nothing is compiled)."""
    from jaxvedit.adapters.lora import lora_linears
    from jaxvedit.models import layers

    for model, args in ((s.unet, (jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), jnp.zeros((1, 3, 32)))),
                        (s.text, (jnp.zeros((1, 5), jnp.int32),))):
        seen = []
        token = layers._PROJECTION_ADAPTER.set(lambda path, x, y: seen.append(path) or y)
        try:
            jax.eval_shape(lambda: model(*args))
        finally:
            layers._PROJECTION_ADAPTER.reset(token)
        assert sorted(seen) == sorted(lora_linears(model)), type(model).__name__
        assert len(seen) == len(set(seen))
    assert len(lora_linears(s.unet)) == 48 and len(lora_linears(s.text)) == 12
