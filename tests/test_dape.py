"""DAPE (paper 000): identity at initialisation, parity with a PyTorch transcription of the authors'
modules (alone and inside a diffusers UNet), the two stages (only their parameters change, the
optimizer state holds only them), exact resume across the stage boundary, the CLI, adapter files
and editing with the result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from reference import nchw, nhwc, randomize_, rel_err

from jaxvedit.adapters import AdapterLoadError, load_adapter, save_adapter
from jaxvedit.adapters.dape import (DAPE, DAPEAdapter, DAPEConfig, DAPEUNet, dape_variables,
                                    unet_blocks, unet_norms)
from jaxvedit.adapters.params import AdapterParam, DAPEAdapterParam, DAPENormParam
from jaxvedit.models import layers
from jaxvedit.models.tiny import TINY_UNET_CONFIG, make_tiny_model
from jaxvedit.training.dape import LatentClips, dape_optimizer, run_dape, stage_trainer
from jaxvedit.training.dape_config import DEMO_OVERRIDES, DAPETrainConfig

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("dape") / "tiny")


@pytest.fixture(scope="module")
def unet(tiny):
    from jaxvedit.models import load_unet

    return load_unet(tiny)


@jax.jit(static_argnums=0)
def _jit_forward(graphdef, state, x, t, ctx):
    return nnx.merge(graphdef, state)(x, t, ctx)


def _forward(model, x, t, ctx):
    """The model's output, compiled once per model structure (the graph definition is static)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_jit_forward(graphdef, state, x, t, ctx))


def _randomize_dape(dape: DAPE, seed: int, alpha_scale: float = 0.2):
    """Random values for every DAPE tensor (the init values hide layout bugs)."""
    rng = np.random.default_rng(seed)
    for name, var in dape_variables(dape).items():
        shape = var.value.shape
        if name.endswith("alpha0"):
            value = alpha_scale * rng.standard_normal(shape)
        elif name.endswith((".scale", "gamma", "gammax")):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            value = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        var.value = jnp.asarray(value, jnp.float32)


# ----------------------------------------------------------------------------------------------
# the modules


def test_fresh_dape_is_bit_identical_to_the_base_unet(unet):
    """alpha0 = 0 (norms tuned, nothing trained yet): output equal bit for bit to the plain UNet;
    so with the vision adapter at identity init (both placements' sites). Non-trivial values
    (same compiled programs) do change the output: the comparison can fail."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 8, 4)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 7, 32)), jnp.float32)
    t = jnp.asarray([10, 900])
    base = _forward(unet, x, t, ctx)

    norms = DAPEUNet(unet, DAPE(unet, DAPEConfig(vision_adapter=False)))
    assert len(norms.dape.norms) == len(unet_norms(unet)) == 33  # every GroupNorm and LayerNorm
    out = _forward(norms, x, t, ctx)
    assert out.tobytes() == base.tobytes()
    norms.dape.norms[0].alpha0.value = jnp.full((1,), 0.1)
    assert not np.array_equal(_forward(norms, x, t, ctx), base)

    # the identity option, on both sites of the authors' placement (after attn1 and after the FF)
    identity = DAPE(unet, DAPEConfig(identity_init=True, placement="attn1+ff"), rngs=nnx.Rngs(1))
    assert len(identity.adapters) == len(unet_blocks(unet)) == 4  # every transformer block
    # (run in the structure the parity test below compiles: same modules, identity values)
    full = DAPEUNet(unet, DAPE(unet, DAPEConfig(placement="attn1+ff"), rngs=nnx.Rngs(1)))
    default_init = jax.tree.map(jnp.copy, nnx.state(full.dape, DAPEAdapterParam))  # torch init
    nnx.update(full.dape, nnx.state(identity, DAPEAdapterParam))
    out = _forward(full, x, t, ctx)
    assert out.dtype == np.float32 and out.tobytes() == base.tobytes()
    nnx.update(full.dape, default_init)
    assert not np.array_equal(_forward(full, x, t, ctx), base)
    # the plain UNet is untouched by all this: no DAPE context outside the wrapped call
    assert _forward(unet, x, t, ctx).tobytes() == base.tobytes()


def test_modules_match_the_pytorch_transcription():
    """Our tuned GroupNorm / LayerNorm and DAPEAdapter against the authors' AdjustableNorm and
    DAPEAdapter (tests/dape_reference.py) on random weights and inputs (eval mode)."""
    from dape_reference import AdjustableNorm
    from dape_reference import DAPEAdapter as TorchAdapter

    class Holder(nnx.Module):
        def __init__(self):
            p = layers.Precision()
            self.gn = layers.GroupNorm(4, 48, 1e-5, p, path="gn")
            self.ln = layers.LayerNorm(48, 1e-5, p, path="ln")

    holder = Holder()
    dape = DAPE(holder, DAPEConfig(vision_adapter=False))
    _randomize_dape(dape, 0)
    rng = np.random.default_rng(1)
    img = rng.standard_normal((2, 6, 5, 48)).astype(np.float32) * 2 + 0.5
    tok = rng.standard_normal((2, 30, 48)).astype(np.float32) * 2 + 0.5
    with dape.active():
        ours_gn, ours_ln = np.asarray(holder.gn(jnp.asarray(img))), np.asarray(holder.ln(jnp.asarray(tok)))
    ref_gn, ref_ln = AdjustableNorm(torch.nn.GroupNorm(4, 48)), AdjustableNorm(torch.nn.LayerNorm(48))
    with torch.no_grad():
        for mod, path in ((ref_gn, "gn"), (ref_ln, "ln")):
            n = dape.norm(path)
            mod.norm.weight.copy_(_t(n.scale)), mod.norm.bias.copy_(_t(n.bias))
            mod.alpha0.copy_(_t(n.alpha0))
        want_gn = nhwc(ref_gn(torch.from_numpy(nchw(img))).numpy())
        want_ln = ref_ln(torch.from_numpy(tok)).numpy()
    err_gn, err_ln = rel_err(ours_gn, want_gn), rel_err(ours_ln, want_ln)

    ours = DAPEAdapter(48, rngs=nnx.Rngs(0))
    ref = TorchAdapter(48).eval()
    _copy_adapter(ours, ref, seed=2)
    x = rng.standard_normal((2, 30, 48)).astype(np.float32)
    got = np.asarray(ours(jnp.asarray(x), (5, 6)))
    with torch.no_grad():
        want = ref(torch.from_numpy(x), input_hw=(5, 6)).numpy()
    err_ad = rel_err(got - x, want - x)  # the adapter's own contribution, not the residual
    print(f"DAPE parity vs PyTorch: AdjustableNorm(GroupNorm) {err_gn:.2e}, "
          f"AdjustableNorm(LayerNorm) {err_ln:.2e}, DAPEAdapter (its update) {err_ad:.2e}")
    assert max(err_gn, err_ln, err_ad) <= TOL
    # training mode: dropout from the key, eval mode without one; p = 0 is eval
    k = jax.random.key(0)
    assert not np.allclose(np.asarray(ours(jnp.asarray(x), (5, 6), k)), got)
    ours.dropout = 0.0
    assert np.array_equal(np.asarray(ours(jnp.asarray(x), (5, 6), k)), got)
    with pytest.raises(ValueError, match="do not fit the grid"):
        ours(jnp.asarray(x), (6, 6))


def _copy_adapter(ours: DAPEAdapter, ref, seed: int) -> None:
    """Random values into ``ours`` and the same into the torch adapter (layouts converted)."""
    rng = np.random.default_rng(seed)
    for leaf in ("norm.scale", "norm.bias", "gamma", "gammax", "project1.kernel", "project1.bias",
                 "adapter_conv.kernel", "adapter_conv.bias", "project2.kernel", "project2.bias"):
        mod = ours
        for part in leaf.split("."):
            mod = getattr(mod, part)
        shape = mod.value.shape
        scale = 0.3 if leaf.endswith("bias") else (1.0 / np.sqrt(np.prod(shape[:-1])) if "kernel" in leaf else 0.5)
        value = rng.standard_normal(shape).astype(np.float32) * scale
        if leaf in ("norm.scale", "gammax"):
            value = value + 1.0
        mod.value = jnp.asarray(value)
    _to_torch_adapter(ours, ref)


def _t(var) -> torch.Tensor:
    return torch.from_numpy(np.array(var.value, np.float32))


def _to_torch_adapter(ours: DAPEAdapter, ref) -> None:
    t = _t
    with torch.no_grad():
        ref.norm.weight.copy_(t(ours.norm.scale)), ref.norm.bias.copy_(t(ours.norm.bias))
        ref.gamma.copy_(t(ours.gamma)), ref.gammax.copy_(t(ours.gammax))
        ref.project1.weight.copy_(t(ours.project1.kernel).T), ref.project1.bias.copy_(t(ours.project1.bias))
        ref.project2.weight.copy_(t(ours.project2.kernel).T), ref.project2.bias.copy_(t(ours.project2.bias))
        ref.adapter_conv.weight.copy_(t(ours.adapter_conv.kernel).permute(3, 2, 0, 1))
        ref.adapter_conv.bias.copy_(t(ours.adapter_conv.bias))


def test_dape_unet_matches_diffusers_with_the_transcribed_modules(tmp_path):
    """A whole UNet: diffusers' UNet2DConditionModel with every norm replaced by AdjustableNorm
    (the code's _replace_norms_with_adjustable) and the transcribed DAPEAdapter in the residual
    stream of every transformer block after attn1 and after the FF, against our DAPEUNet
    (placement attn1+ff), random weights everywhere, non-square latents."""
    from dape_reference import DAPEAdapter as TorchAdapter
    from dape_reference import insert_adapters, replace_norms_with_adjustable
    from diffusers import UNet2DConditionModel

    from jaxvedit.models.loading import load_unet

    cfg = {k: v for k, v in TINY_UNET_CONFIG.items() if not k.startswith("_")}
    torch.manual_seed(0)
    ref = randomize_(UNet2DConditionModel(**cfg).eval(), 3)
    ref.save_pretrained(tmp_path / "unet")
    ours_unet = load_unet(tmp_path)
    model = DAPEUNet(ours_unet, DAPE(ours_unet, DAPEConfig(placement="attn1+ff"), rngs=nnx.Rngs(0)))
    _randomize_dape(model.dape, 4)

    replace_norms_with_adjustable(ref)
    n_ref = sum(1 for m in ref.modules() if m.__class__.__name__ == "AdjustableNorm")
    assert n_ref == len(model.dape.norms)  # the same set of norms is tuned
    with torch.no_grad():
        for tn in model.dape.norms:
            mod = ref.get_submodule(tn.path)  # our norm paths are diffusers module paths
            mod.norm.weight.copy_(_t(tn.scale)), mod.norm.bias.copy_(_t(tn.bias))
            mod.alpha0.copy_(_t(tn.alpha0))
    adapters = {}
    for path, ad in zip(model.dape.block_paths, model.dape.adapters):
        adapters[path] = TorchAdapter(ad.dim).eval()
        _to_torch_adapter(ad, adapters[path])
    insert_adapters(ref, adapters, sites=("attn1", "ff"))

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 16, 8)).astype(np.float32)
    ctx = rng.standard_normal((2, 7, 32)).astype(np.float32)
    t = np.array([3, 870])
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
        plain = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
        base = plain(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    got = nchw(_forward(model, jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx)))
    err = rel_err(got, want)
    moved = rel_err(base, want)
    print(f"DAPE UNet (tuned norms + adapters attn1+ff) vs diffusers + transcription: "
          f"max|diff|/std = {err:.2e} (DAPE moves the output by {moved:.2f} std)")
    assert moved > 0.05  # DAPE changes the output a lot, ...
    assert err <= TOL  # ... and we agree with the reference on how


def test_config_and_targets(unet):
    code = DAPE(unet, DAPEConfig.authors_code(vision_adapter=False))
    assert all(p.split(".")[-1] in ("norm", "norm1", "norm2", "norm3") and ".attentions." in p
               for p in code.norm_paths)
    assert len(code.norm_paths) == 4 * (3 + 1)  # per transformer: its GroupNorm, 3 LayerNorms
    with pytest.raises(KeyError, match="decoder level 2"):
        code.add_vision_adapter(nnx.Rngs(0))  # the tiny UNet has 2 levels
    with pytest.raises(KeyError, match="adapter target 'up_blocks.7.\\*' matches no module"):
        DAPE(unet, DAPEConfig(adapter_targets="up_blocks.7.*"))
    with pytest.raises(KeyError, match="norm target 'nrom' matches no module .*presets: \\['all', "
                                       "'attention'\\]"):
        DAPE(unet, DAPEConfig(norm_targets="nrom"))
    one = DAPE(unet, DAPEConfig(norm_targets=("conv_norm_out",), adapter_targets="up_blocks.*"),
               rngs=nnx.Rngs(0))
    assert one.norm_paths == ("conv_norm_out",) and len(one.block_paths) == 2
    with pytest.raises(ValueError, match="unknown DAPE placement 'ff'"):
        DAPEConfig(placement="ff")
    with pytest.raises(ValueError, match="nothing to adapt"):
        DAPEConfig(norm_tuning=False, vision_adapter=False)
    with pytest.raises(ValueError, match="already has its vision adapter"):
        one.add_vision_adapter(nnx.Rngs(0))
    with pytest.raises(ValueError, match="without its token grid"):
        with one.active():  # a block that does not pass its grid is an error, not a guess
            layers._BLOCK_ADAPTER.get()(one.block_paths[0], "attn1", jnp.zeros((1, 4, 32)), None)
    assert layers._BLOCK_ADAPTER.get() is None and layers._NORM_ADAPTER.get() is None


def test_warmup_schedule_is_the_codes_lambda_linear_scheduler():
    """Stage 1's learning rate per step against a transcription of the authors'
    ``LambdaLinearScheduler.schedule`` (dape/lr_scheduler.py) with train.sh/template.yaml's
    settings: warm_up_steps 100, f_start 1e-6, f_max = f_min = 1, one huge cycle."""

    def code_multiplier(n, warm=100, f_start=1e-6, f_max=1.0, f_min=1.0, cycle=10_000_000_000_000):
        if n < warm:
            return (f_max - f_start) / warm * n + f_start
        return f_min + (f_max - f_min) * (cycle - n) / cycle

    # AdamW's update for a constant unit gradient and parameter 1 is -lr(n) * (1 + wd): read the
    # learning rate the optimizer uses at each step off its updates
    tx = dape_optimizer(5e-5, warmup_steps=100, warmup_start=1e-6, weight_decay=1e-2)
    params, grads = {"w": jnp.ones((1,))}, {"w": jnp.ones((1,))}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for n in range(400):
        up, state = update(grads, state, params)
        if n in (0, 1, 37, 99, 100, 250, 399):
            lr = float(-up["w"][0]) / (1 + 1e-2)
            assert lr == pytest.approx(5e-5 * code_multiplier(n), rel=1e-4), n
    constant = dape_optimizer(1e-5)  # stage 2: constant, fresh
    up, _ = constant.update(grads, constant.init(params), params)
    assert float(-up["w"][0]) / (1 + 1e-2) == pytest.approx(1e-5, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# training

def _train_cfg(**kw) -> DAPETrainConfig:
    """The demo's settings (one compiled step per stage serves every training test and the CLI
    demo): 8x8 latents, 4 frames a clip, float32."""
    base = {**DEMO_OVERRIDES, "stage1_steps": 3, "stage2_steps": 3, "checkpoint_every": 2,
            "progress": False}
    return DAPETrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return LatentClips([rng.standard_normal((8, 8, 8, 4)).astype(np.float32)],
                       [["a red square moving right"]], frames=4, seed=0)


@pytest.fixture(scope="module")
def text():
    rng = np.random.default_rng(1)
    emb = {"a red square moving right": rng.standard_normal((77, 32)).astype(np.float32),
           "": rng.standard_normal((77, 32)).astype(np.float32)}
    return lambda captions: np.stack([emb[c] for c in captions]), emb[""]


def _schedule(tiny):
    from jaxvedit.diffusion.schedules import NoiseSchedule

    return NoiseSchedule.from_config(tiny / "scheduler" / "scheduler_config.json")


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(tree) if isinstance(tree, nnx.State)
                                                else tree)}


def test_each_stage_changes_only_its_parameters(unet, tiny, clips, text):
    """Two optimizer steps of each stage (stage 1's first step has lr 1e-6 * lr: warm-up from the
    code's f_start): stage 1 changes DAPENormParam only (every one of them), stage 2
    DAPEAdapterParam only (the tuned norms and the base UNet stay bit-identical); the optimizer
    state of each stage holds exactly its own parameters (Adam mu and nu) and a step count."""
    cfg = _train_cfg()
    text_fn, empty = text
    sched = _schedule(tiny)
    model = DAPEUNet(unet, DAPE(unet, cfg.dape_config()))
    consts = {"empty_text": jnp.asarray(empty), "alphas_cumprod": jnp.asarray(sched.alphas_cumprod)}

    def batch(pos):
        raw = clips.batch(pos, 1)
        return {"latents": jnp.asarray(raw["latents"]), "text": jnp.asarray(text_fn([clips.captions[0]])),
                **consts}

    before = _leaves(nnx.state(model, nnx.Param))
    for stage in (1, 2):
        if stage == 2:
            model.dape.add_vision_adapter(nnx.Rngs(0))
            before = _leaves(nnx.state(model, nnx.Param))
        state, step = stage_trainer(model, stage, cfg)
        trained = DAPENormParam if stage == 1 else DAPEAdapterParam
        n_trained = len(jax.tree.leaves(nnx.state(model, trained)))
        # the optimizer state: mu and nu with exactly the trained parameters' paths, plus counts
        import optax

        mu = optax.tree_utils.tree_get(state.opt_state, "mu")
        assert jax.tree.structure(mu) == jax.tree.structure(state.params)
        opt_arrays = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
        assert len(opt_arrays) == 2 * n_trained
        assert sum(x.size for x in opt_arrays) == 2 * sum(x.size for x in jax.tree.leaves(state.params))
        for pos in range(2):
            state.step(step, batch(pos), jax.random.key(pos))
        state.write_back(model)
        after = _leaves(nnx.state(model, nnx.Param))
        names = set(_leaves(nnx.state(model, trained)))
        changed = {k for k in before if not np.array_equal(before[k], after[k])}
        print(f"stage {stage}: {len(changed)} of {len(before)} parameter tensors changed, "
              f"{len(names)} trainable")
        assert changed == names  # all of the stage's parameters, nothing else
        assert all("dape" in k for k in changed)
    assert len(jax.tree.leaves(nnx.state(model.unet, AdapterParam))) == 0


def _dape_arrays(folder) -> dict:
    from safetensors.numpy import load_file

    return load_file(Path(folder) / "adapter_model.safetensors")


def test_resumed_across_the_stage_boundary_equals_uninterrupted(tmp_path, unet, tiny, clips, text):
    """3 + 3 steps uninterrupted vs stopped after step 2 (stage 1), 3 (the boundary: stage 1's
    final checkpoint, stage 2 not begun) and 5 (inside stage 2: its checkpoint holds the tuned
    norms) and resumed: the same DAPE, exactly; the metric log matches the run."""
    text_fn, empty = text
    sched = _schedule(tiny)

    def run(name, **kw):
        cfg = _train_cfg(**kw)
        dape, summary = run_dape(unet, clips, text_fn, empty, sched, cfg, output_dir=tmp_path / name,
                                 log=lambda m: None)
        return dape, summary

    full, s = run("full")
    assert s["steps"] == 6 and not s["interrupted"]
    want = {k: np.asarray(v.value) for k, v in dape_variables(full).items()}
    assert any(np.any(want[k] != 0) for k in want if k.endswith("alpha0"))  # stage 1 trained
    for cut in (2, 3, 5):
        name = f"cut{cut}"
        _, s = run(name, stop_after=cut)
        assert s["interrupted"] and s["steps"] == cut
        got, s = run(name, resume=True)
        assert s["steps"] == 6 and not s["interrupted"]
        got = {k: np.asarray(v.value) for k, v in dape_variables(got).items()}
        assert got.keys() == want.keys()
        diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
        print(f"resume after step {cut}: max |DAPE diff| = {diff:.1e}")
        assert diff == 0.0
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == list(range(1, 7))
        assert [r["stage"] for r in lines] == [1, 1, 1, 2, 2, 2]


def test_dataset_mode_reads_a_folder(tmp_path, unet, tiny, text):
    """--data: the clips come from a captions.jsonl folder through ClipDataset (latent cache),
    then the same two stages (here with a stand-in VAE; the compiled steps are shared)."""
    from jaxvedit.data.video import make_sample_dataset
    from jaxvedit.training.dape import _clips

    make_sample_dataset(tmp_path / "data", n_videos=2, frames=6, size=64)
    calls = []

    class Models:  # what _clips uses of DAPEModels: an encoder and its fingerprint
        fingerprint = "fake-vae"

        @staticmethod
        def latents(frames):
            calls.append(len(frames))
            return frames[:, ::8, ::8, :].astype(np.float32)[..., :3].repeat(2, -1)[..., :4] / 255.0

    cfg = _train_cfg(data=str(tmp_path / "data"), stage1_steps=1, stage2_steps=1)
    clips = _clips(cfg, Models)
    assert calls == [6, 6] and len(clips.captions) == 2
    text_fn, empty = text
    captions = dict(zip(clips.captions, text_fn(["a red square moving right", ""])))
    dape, s = run_dape(unet, clips, lambda caps: np.stack([captions[c] for c in caps]), empty,
                       _schedule(tiny), cfg, log=lambda m: None)
    assert s["steps"] == 2 and dape.config.vision_adapter


def test_cli_trains_both_stages_and_edit_uses_the_result(tmp_path, tiny, capsys):
    """``python -m jaxvedit.train --method dape`` (the embedded demo, short stages) writes
    adapter/dape; the editor (what ``python -m jaxvedit.edit --adapter`` builds) loads it, and its
    edit differs from the one of an untrained DAPE run through the benchmark-callable dape_edit."""
    from jaxvedit.editing import Editor
    from jaxvedit.editing.dape import dape_edit
    from jaxvedit.editing.pipeline import find_adapter_parts
    from jaxvedit.train import main

    out = tmp_path / "run"
    assert main(["--method", "dape", "--output-dir", str(out), "--stage1-steps", "3",
                 "--stage2-steps", "3", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6 and summary["params"]["adapters"] > 0
    folder = Path(summary["adapter"])
    assert find_adapter_parts(folder) == {"dape": folder / "dape"}
    meta = json.loads((folder / "dape" / "adapter_config.json").read_text())
    assert meta["kind"] == "dape" and meta["config"]["vision_adapter"] is True

    editor = Editor(str(out / "tiny-model"), adapter=str(folder), batch_frames=4)
    stored = _dape_arrays(folder / "dape")
    loaded = {k: np.asarray(v.value) for k, v in dape_variables(editor.dape).items()}
    assert stored.keys() == loaded.keys() and all(np.array_equal(stored[k], loaded[k]) for k in stored)
    from jaxvedit.data.video import read_video

    frames = read_video(out / "sample.mp4").frames[:4]
    opts = dict(prompt="a blue square moving right", source_prompt="a red square moving right",
                steps=2, progress=False)
    with_dape = editor.edit(frames, **opts).frames
    # the benchmark-callable form with a fresh DAPE whose blocks start as the identity (same
    # structure as the trained one: the compiled loops are reused). A fresh DAPE leaves the UNet
    # bit-identical (test above), so this is the plain model's edit: the trained one differs
    identity = DAPE(editor.unet, editor.dape.config)
    for ad in identity.adapters:
        ad.project2.kernel.value = jnp.zeros_like(ad.project2.kernel.value)
        ad.project2.bias.value = jnp.zeros_like(ad.project2.bias.value)
    fresh = dape_edit(editor, frames, opts["source_prompt"], opts["prompt"], dape=identity, steps=2,
                      progress=False)
    assert fresh.shape == with_dape.shape == frames.shape and fresh.dtype == np.uint8
    assert not np.array_equal(with_dape, fresh)
    assert editor.dape is not identity  # the editor's own adapter is back


def test_adapter_files_round_trip_and_errors(tmp_path, unet, tiny):
    dape = DAPE(unet, DAPEConfig(placement="attn1+ff"), rngs=nnx.Rngs(0))
    _randomize_dape(dape, 7)
    save_adapter(tmp_path / "d", dape, extra={"note": "x"})
    back = load_adapter(tmp_path / "d", unet)
    assert back.config == dape.config
    a, b = dape_variables(dape), dape_variables(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].value, b[k].value) for k in a)
    with pytest.raises(ValueError, match="needs the UNet it adapts"):
        load_adapter(tmp_path / "d")
    other_cfg = {k: v for k, v in TINY_UNET_CONFIG.items() if not k.startswith("_")}
    other_cfg["block_out_channels"] = [16, 32]
    from jaxvedit.models.unet import UNet2DConditionModel

    abstract = nnx.eval_shape(lambda: UNet2DConditionModel(other_cfg))  # no slow eager init
    graphdef, shapes = nnx.split(abstract)
    other = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes))
    with pytest.raises(AdapterLoadError, match="wrong shape.*norm.conv_norm_out.scale: file has "
                                               "\\(32,\\), model expects \\(16,\\)"):
        load_adapter(tmp_path / "d", other)


def test_config_errors():
    with pytest.raises(ValueError, match="--video needs its --caption"):
        DAPETrainConfig(video="x.mp4")
    with pytest.raises(ValueError, match="not both"):
        DAPETrainConfig(video="x.mp4", caption="c", data="d")
    with pytest.raises(ValueError, match="both 0: nothing to train"):
        DAPETrainConfig(stage1_steps=0, stage2_steps=0)
    from jaxvedit.training.config import TrainConfig

    with pytest.raises(ValueError, match="method 'dape' has its own config"):
        TrainConfig(method="dape")
    with pytest.raises(ValueError, match="frames must be uint8"):
        from jaxvedit.editing.dape import dape_tune

        dape_tune(None, np.zeros((4, 8, 8, 3), np.float32), "c")
    assert dataclasses.replace(DAPETrainConfig(), stage2_steps=0).total_steps == 400


def test_help_lists_every_dape_option(capsys):
    from jaxvedit.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--method", "dape", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(DAPETrainConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    flat = " ".join(out.split())  # argparse wraps lines
    for text in ("(default: 5e-05)", "(default: 400)", "(default: 100)", "(default: 70)",
                 "(default: 1e-05)", "(default: attn1)"):
        assert text in flat, text
