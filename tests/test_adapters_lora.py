"""LoRA adapter: identity when fresh, timestep gate inside one compiled function, merge/unmerge,
adapter-only training step, adapter files, and diffusers export parity (tiny configs)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxvedit.adapters import (AdapterLoadError, AdapterParam, LoRA, LoRAConfig, LoRAParam,
                               LoRAUNet, apply_lora, attention_projections, export_lora_diffusers,
                               import_lora_diffusers, init_adapter_training, is_base_param,
                               load_adapter, make_adapter_train_step, merge_lora, save_adapter,
                               unmerge_lora)
from jaxvedit.models.unet import UNet2DConditionModel

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4)


def _tiny_unet(seed=0, **over):
    return UNet2DConditionModel({**TINY, **over}, rngs=nnx.Rngs(seed))


def _inputs(batch=2, hw=8, ctx_len=5, dim=32, seed=1):
    r = np.random.RandomState(seed)
    return (jnp.asarray(r.randn(batch, hw, hw, 4), jnp.float32),
            jnp.asarray(r.randn(batch, ctx_len, dim), jnp.float32))


def _forward(model):
    """A jitted forward of ``model`` over split state: f(state, x, t, ctx)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, x, t, ctx):
        return nnx.merge(graphdef, state)(x, t, ctx)

    return f, state


def _randomize_lora(lora: LoRA, seed=3, std=0.1):
    key = jax.random.PRNGKey(seed)
    for layer in lora.layers:
        key, ka, kb = jax.random.split(key, 3)
        layer.lora_A.value = std * jax.random.normal(ka, layer.lora_A.value.shape)
        layer.lora_B.value = std * jax.random.normal(kb, layer.lora_B.value.shape)


@pytest.fixture(scope="module")
def unet():
    return _tiny_unet()


def test_presets_select_down_and_all(unet):
    proj = attention_projections(unet)
    down = LoRA(unet, LoRAConfig(targets="down"))
    all_ = LoRA(unet, LoRAConfig(targets="all"))
    assert set(all_.paths) == set(proj)
    assert all_.paths and all(p.startswith("down_blocks.") for p in down.paths)
    # tiny: 1 cross-attn down block x 1 layer x (attn1, attn2) x 4 projections
    assert len(down.paths) == 8
    # all: + mid (1 transformer) + 1 cross-attn up block with 2 layers
    assert len(all_.paths) == 8 * 4
    assert {p.rsplit(".", 1)[-1] for p in all_.paths} == {"to_q", "to_k", "to_v", "0"}
    custom = LoRA(unet, LoRAConfig(targets=["up_blocks.*.attn2.to_k", "mid_block.*.to_out.0"]))
    assert len(custom.paths) == 2 + 2
    with pytest.raises(KeyError, match="matches no attention projection"):
        LoRA(unet, LoRAConfig(targets=["down_blocks.*.ff.to_q"]))
    with pytest.raises(ValueError, match="unknown LoRA target preset"):
        LoRAConfig(targets="middle")
    # parameters are LoRAParam; B starts at zero; A (in, r)
    layer = all_.layer("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")
    assert isinstance(layer.lora_A, LoRAParam) and layer.lora_A.value.shape == (32, 4)
    assert layer.lora_B.value.shape == (4, 64) and not np.any(np.asarray(layer.lora_B.value))


def test_fresh_lora_is_bit_identical(unet):
    x, ctx = _inputs()
    t = jnp.array([10, 990])
    base_f, base_state = _forward(unet)
    model = apply_lora(unet, LoRAConfig(rank=4, alpha=4, targets="all", tau=None), nnx.Rngs(7))
    lora_f, lora_state = _forward(model)
    base = np.asarray(base_f(base_state, x, t, ctx))
    ours = np.asarray(lora_f(lora_state, x, t, ctx))
    print(f"fresh LoRA: max|diff| = {np.abs(base - ours).max():.1e} (bit-identical: "
          f"{np.array_equal(base, ours)})")
    assert np.array_equal(base, ours)


def test_gate_switches_inside_one_compiled_function(unet):
    x, ctx = _inputs()
    base_f, base_state = _forward(unet)
    model = LoRAUNet(unet, LoRA(unet, LoRAConfig(tau=0.5), rngs=nnx.Rngs(1)))
    _randomize_lora(model.lora)
    lora_f, lora_state = _forward(model)
    results = {}
    for t in ([100, 900], [499, 500], [0, 999]):
        t = jnp.asarray(t)
        results[tuple(np.asarray(t))] = (np.asarray(base_f(base_state, x, t, ctx)),
                                         np.asarray(lora_f(lora_state, x, t, ctx)))
    assert lora_f._cache_size() == 1  # one compiled program for every timestep
    for (t_lo, t_hi), (base, ours) in results.items():
        assert np.array_equal(base[0], ours[0]), f"adapter acted at t={t_lo} < tau*T"
        assert np.abs(base[1] - ours[1]).max() > 1e-3, f"adapter inactive at t={t_hi} >= tau*T"
    # scalar timestep too
    lo = np.asarray(lora_f(lora_state, x, jnp.asarray(300), ctx))
    assert np.array_equal(lo, np.asarray(base_f(base_state, x, jnp.asarray(300), ctx)))


def test_merge_matches_unmerged_and_unmerge_restores(unet):
    x, ctx = _inputs()
    t = jnp.array([10, 990])
    lora = LoRA(unet, LoRAConfig(rank=4, alpha=8, tau=None), rngs=nnx.Rngs(2))
    _randomize_lora(lora)
    model = LoRAUNet(unet, lora)
    before = {k: np.array(v) for k, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))}
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, r: nnx.merge(graphdef, s)(x, t, ctx, lora_ratio=r))
    unmerged = np.asarray(f(state, 0.5))
    merge_lora(unet, lora, ratio=0.5)
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(unet, lora)
    merged = np.asarray(_forward(unet)[0](nnx.state(unet), x, t, ctx))
    err = np.abs(merged - unmerged).max() / unmerged.std()
    unmerge_lora(unet, lora)
    after = {k: np.array(v) for k, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))}
    restore = max(np.abs(after[k] - before[k]).max() for k in before)
    changed = sum(not np.array_equal(after[k], before[k]) for k in before)
    print(f"merge(0.5) vs unmerged ratio 0.5: max|diff|/std = {err:.2e}; unmerge restores kernels "
          f"to max|diff| = {restore:.1e} ({changed} kernels not bit-exact)")
    assert err < 1e-5
    assert restore <= 1e-6


def test_one_step_touches_only_adapter_params(unet):
    x, ctx = _inputs()
    model = apply_lora(unet, LoRAConfig(tau=0.5), nnx.Rngs(4))
    base_before = {k: np.array(v) for k, v in nnx.to_flat_state(nnx.state(model, is_base_param))}
    lora_before = {k: np.array(v) for k, v in nnx.to_flat_state(nnx.state(model, LoRAParam))}

    def loss_fn(m, batch, key):
        noise = jax.random.normal(key, batch["x"].shape)
        eps = m(batch["x"], batch["t"], batch["ctx"])
        return jnp.mean((eps - noise) ** 2), {}

    state = init_adapter_training(model, optax.adamw(1e-2, weight_decay=1e-2))
    step = make_adapter_train_step(loss_fn, state)
    batch = {"x": x, "t": jnp.array([900, 950]), "ctx": ctx}
    loss, _ = state.step(step, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))
    state.write_back(model)

    base_after = {k: np.array(v) for k, v in nnx.to_flat_state(nnx.state(model, is_base_param))}
    lora_after = {k: np.array(v) for k, v in nnx.to_flat_state(nnx.state(model, LoRAParam))}
    assert base_after.keys() == base_before.keys()
    assert all(np.array_equal(base_after[k], base_before[k]) for k in base_before)
    moved = sum(not np.array_equal(lora_after[k], lora_before[k]) for k in lora_before)
    assert moved >= len(lora_before) // 2  # every B moves (A's gradient is 0 while B == 0)

    # the optimizer state covers exactly the adapter parameters
    n_adapter = len(lora_before)
    n_base = len(base_before)
    adapter_paths = {tuple(str(p) for p in k) for k in lora_before}
    opt_leaves = jax.tree_util.tree_leaves_with_path(state.opt_state)
    array_leaves = [(path, v) for path, v in opt_leaves if np.ndim(v) > 0]
    shapes = {tuple(np.shape(v)) for _, v in array_leaves}
    base_shapes = {v.shape for v in base_before.values()} - {v.shape for v in lora_before.values()}
    print(f"adapter params: {n_adapter} tensors ({sum(v.size for v in lora_before.values())} "
          f"values); base params: {n_base} tensors; optimizer state: {len(array_leaves)} tensors "
          f"(adam mu + nu), {len(opt_leaves) - len(array_leaves)} scalars")
    assert len(array_leaves) == 2 * n_adapter
    assert not shapes & base_shapes
    for path, _ in array_leaves:
        keys = tuple(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        assert any(keys[i:i + len(a)] == a for a in adapter_paths for i in range(len(keys))), keys

    # nnx.Optimizer with wrt=LoRAParam sees the same set
    opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=LoRAParam)
    n_opt = sum(np.ndim(v) > 0 for v in jax.tree.leaves(nnx.state(opt, nnx.optimizer.OptState)))
    assert n_opt == 2 * n_adapter


def test_adapter_files_roundtrip_and_refuse_other_model(tmp_path, unet):
    lora = LoRA(unet, LoRAConfig(rank=2, alpha=3, targets="down", tau=0.9), rngs=nnx.Rngs(5))
    _randomize_lora(lora)
    folder = save_adapter(tmp_path / "lora", lora)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 64 * 1024
    back = load_adapter(folder, unet)
    assert back.config == lora.config and back.paths == lora.paths
    for a, b in zip(lora.layers, back.layers):
        assert np.array_equal(a.lora_A.value, b.lora_A.value)
        assert np.array_equal(a.lora_B.value, b.lora_B.value)
    # the same architecture with other widths (abstract: building the adapter needs shapes only)
    other = nnx.eval_shape(lambda: _tiny_unet(block_out_channels=(16, 64)))
    with pytest.raises(AdapterLoadError,
                       match=r"wrong shape.*down_blocks\.0\.attentions\.0\.transformer_blocks\.0"
                             r"\.attn1\.to_q\.lora_A: file has \(32, 2\), model expects \(16, 2\)"):
        load_adapter(folder, other)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tmp_path / "nowhere", unet)


def test_diffusers_export_loads_with_load_lora_weights(tmp_path):
    import torch
    from diffusers import DiffusionPipeline
    from diffusers import UNet2DConditionModel as TorchUNet
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from reference import nchw, nhwc, randomize_, rel_err

    from jaxvedit.models.loading import load_unet

    torch.manual_seed(0)
    ref = randomize_(TorchUNet(**TINY).eval(), 0)
    ref.save_pretrained(tmp_path / "unet")
    ours = load_unet(tmp_path)
    # alpha != rank: the scale alpha/r = 2 must travel with the file
    lora = LoRA(ours, LoRAConfig(rank=4, alpha=8, targets="all", tau=None), rngs=nnx.Rngs(6))
    _randomize_lora(lora, std=0.1)
    files = {fold: export_lora_diffusers(lora, tmp_path / f"export_{fold}", fold_alpha=fold)
             for fold in (False, True)}

    class Pipe(DiffusionPipeline, StableDiffusionLoraLoaderMixin):  # SD's LoRA loader, UNet only
        def __init__(self, unet, text_encoder=None):
            super().__init__()
            self.register_modules(unet=unet, text_encoder=text_encoder)

    pipe = Pipe(ref)
    r = np.random.RandomState(0)
    x = r.randn(2, 4, 16, 16).astype(np.float32)
    ctx = r.randn(2, 7, 32).astype(np.float32)
    t = np.array([10, 990])

    def torch_out():
        with torch.no_grad():
            return ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()

    before = torch_out()
    after = {}
    for fold, file in files.items():
        pipe.load_lora_weights(str(file.parent), weight_name=file.name)
        n_lora = sum(1 for n, _ in ref.named_parameters() if "lora_" in n)
        assert n_lora == 2 * len(lora.paths)
        after[fold] = torch_out()
        pipe.unload_lora_weights()
    assert np.array_equal(torch_out(), before)

    f, state = _forward(LoRAUNet(ours, lora))
    out = nchw(f(state, jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx)))
    effect = rel_err(before, after[False])
    for fold in (False, True):
        err = rel_err(out, after[fold])
        print(f"diffusers load_lora_weights (fold_alpha={fold}): max|diff|/std = {err:.2e} "
              f"(LoRA effect on the output: max|diff|/std = {effect:.2f})")
        assert err <= 1e-4
    assert effect > 0.05

    # and back: the exported files import into the same adapter
    for fold, file in files.items():
        back = import_lora_diffusers(file, ours)
        assert back.paths == lora.paths and back.config.rank == 4
        for a, b in zip(lora.layers, back.layers):
            np.testing.assert_array_equal(a.lora_A.value, b.lora_A.value)
            np.testing.assert_allclose(back.config.scale * np.asarray(b.lora_B.value),
                                       lora.config.scale * np.asarray(a.lora_B.value), rtol=1e-6)


def test_adapter_params_are_their_own_type(unet):
    model = apply_lora(unet, LoRAConfig(), nnx.Rngs(0))
    n_lora = len(jax.tree.leaves(nnx.state(model, LoRAParam)))
    n_adapter = len(jax.tree.leaves(nnx.state(model, AdapterParam)))
    n_base = len(jax.tree.leaves(nnx.state(model, is_base_param)))
    n_all = len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_lora == n_adapter == 2 * len(model.lora.paths)
    assert n_base + n_adapter == n_all
    assert n_base == len(jax.tree.leaves(nnx.state(unet, nnx.Param)))


def test_sd15_presets_and_sizes():
    """Preset sizes on the full SD1.5 UNet (abstract: no weights are materialised)."""
    from reference import SD15_UNET_CONFIG

    full = nnx.eval_shape(lambda: UNet2DConditionModel(SD15_UNET_CONFIG, rngs=nnx.Rngs(0)))
    sizes = {}
    for preset in ("down", "all"):
        lora = nnx.eval_shape(lambda: LoRA(full, LoRAConfig(rank=4, targets=preset)))
        n = sum(int(np.prod(v.value.shape)) for v in jax.tree.leaves(
            nnx.state(lora, LoRAParam), is_leaf=lambda x: isinstance(x, nnx.Variable)))
        sizes[preset] = (len(lora.paths), n)
    print(f"SD1.5 LoRA rank 4: down = {sizes['down'][0]} projections, {sizes['down'][1]} params; "
          f"all = {sizes['all'][0]} projections, {sizes['all'][1]} params")
    assert sizes["down"][0] == 3 * 2 * 2 * 4  # 3 cross-attn down blocks x 2 layers x 2 attns x 4
    assert sizes["all"][0] == (6 + 1 + 9) * 2 * 4  # + mid + 3 cross-attn up blocks x 3 layers


def test_combined_step_lora_and_prompt_tokens_with_temporal_loss(unet):
    """One jitted step trains LoRA and prompt tokens together on the gated total loss (temporal
    features tapped by hooks); the gate switches without recompiling; base stays bit-identical."""
    from jaxvedit.adapters import PromptTokenConfig, PromptTokens
    from jaxvedit.losses.total import LossConfig, total_loss
    from jaxvedit.models.hooks import FeatureHooks

    class Adapted(nnx.Module):
        def __init__(self, unet):
            self.model = apply_lora(unet, LoRAConfig(tau=0.5), nnx.Rngs(0))
            self.tokens = PromptTokens(PromptTokenConfig(n_share=2, vision_dim=16, context_dim=32),
                                       rngs=nnx.Rngs(1))

    tap = "up_blocks.1.attentions.*.transformer_blocks.0.attn1"
    m = Adapted(unet)
    base_before = [np.array(v) for v in jax.tree.leaves(nnx.state(m, is_base_param))]

    def loss_fn(mod, batch, key):
        frames = batch["x"].shape[0]
        noise = jax.random.normal(key, batch["x"].shape)
        ctx = mod.tokens.context(batch["vision"], batch["text"])
        hooks = FeatureHooks(capture=[tap])
        eps = mod.model(batch["x"] + noise, batch["t"], ctx, hooks=hooks)
        loss, parts = total_loss(eps, noise, dict(hooks.captured), batch["t"][0],
                                 LossConfig(lambda_temporal=1.0))
        assert len(hooks.captured) == 2 and frames == 4
        return loss, parts

    state = init_adapter_training(m, optax.adam(1e-3))
    step = make_adapter_train_step(loss_fn, state)
    x, text = _inputs(batch=4, ctx_len=3)
    vision = jnp.asarray(np.random.RandomState(2).randn(4, 8, 16), jnp.float32)
    gates = []
    for t in (900, 100, 700):
        batch = {"x": x, "t": jnp.full((4,), t), "vision": vision, "text": text}
        _, parts = state.step(step, batch, jax.random.PRNGKey(t))
        gates.append(float(parts["gate"]))
    assert gates == [1.0, 0.0, 1.0]
    assert step._cache_size() == 1
    state.write_back(m)
    assert all(np.array_equal(a, b) for a, b in
               zip(base_before, jax.tree.leaves(nnx.state(m, is_base_param))))
    assert np.any(np.asarray(m.model.lora.layers[0].lora_B.value))
    assert not np.array_equal(m.tokens.shared.value,
                              PromptTokens(m.tokens.config, rngs=nnx.Rngs(1)).shared.value)
