"""``--method tokenflow`` (jaxvedit/editing/tokenflow.py) against its references: one whole
sampling step against the host's PyTorch code (``tests/tokenflow_reference.py``: omerbt/TokenFlow's
``tokenflow_utils.py`` on a diffusers UNet with the same weights); extended attention against a
NumPy transcription of its definition; plug-and-play injection of the model's own features = no
change; propagation against a brute-force nearest-neighbour search; keyframe groups; the edit
end to end (non-square, negative prompt, seed); the CLI (audio kept, preview strip, errors)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvedit.data.video import synthetic_frames, write_video
from jaxvedit.editing import EditPredictor, Editor
from jaxvedit.editing import tokenflow as tf
from jaxvedit.models import FeatureHooks
from jaxvedit.models import layers
from jaxvedit.models.tiny import make_tiny_model

# every tiny-model test below uses these, so the compiled programs are shared between them
H, W, T, BATCH, GROUP, STEPS = 64, 128, 5, 2, 2, 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tokenflow") / "tiny")


@pytest.fixture(scope="module")
def editor(tiny) -> Editor:
    return Editor(str(tiny), batch_frames=4)


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames(T, (H, W), seed=4)[0]


# ---------------------------------------------------------------------------------------------
# one sampling step against the host's PyTorch code


def test_step_matches_host_tokenflow(tmp_path):
    """omerbt/TokenFlow's register_extended_attention_pnp + register_conv_injection +
    set_tokenflow on a diffusers UNet (SD1.5 block layout, small widths) vs ``tokenflow_step``
    on our port with the same weights: keyframe pass, propagation, guidance, DDIM step."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from reference import nchw, nhwc, randomize_, rel_err

    import tokenflow_reference as host
    from jaxvedit.diffusion.schedules import SD15_SCHEDULER_CONFIG, NoiseSchedule
    from jaxvedit.models.loading import load_unet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the host's per-head loops crawl with threads on a busy machine
    torch.manual_seed(0)
    config = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=16,
                  cross_attention_dim=32, attention_head_dim=8, sample_size=8)
    ref = randomize_(UNet2DConditionModel(**config).eval(), 0)
    ref.save_pretrained(tmp_path / "unet")
    ours = load_unet(tmp_path)
    n_frames, bs, steps, g = 6, 2, 10, 7.5  # 3 batches: keyframes 1, 2, 5
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_frames, 4, 8, 8)).astype(np.float32)
    src = (x + 0.5 * rng.standard_normal(x.shape)).astype(np.float32)
    c_src, c_unc, c_tgt = (rng.standard_normal((n_frames, 7, 32)).astype(np.float32) for _ in range(3))
    pivots = np.array([1, 2, 5])
    sched = {k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k[0] != "_" and k != "skip_prk_steps"}
    hostflow = host.HostTokenFlow(ref, DDIMScheduler(**sched), steps, 0.8, 0.5, bs, g)
    assert tf.default_attn_paths(ours) == tuple(
        f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1"
        for i, js in {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}.items() for j in js)  # the host's res_dict
    assert tf.injection_steps(steps, 0.8, 0.5) == (8, 5)
    for i in (0, 6, 9):  # conv + q/k injection; conv only; none
        t = hostflow.scheduler.timesteps[i]
        expected = hostflow.batched_denoise_step(
            torch.from_numpy(x), t, torch.arange(n_frames), torch.from_numpy(pivots),
            torch.from_numpy(src), torch.from_numpy(c_src),
            (torch.from_numpy(c_unc), torch.from_numpy(c_tgt))).numpy()
        got = nchw(tf.tokenflow_step(ours, NoiseSchedule.sd15(), steps, i, nhwc(x), nhwc(src),
                                     [c_src, c_unc, c_tgt], pivots, guidance_scale=g, batch_size=bs,
                                     keyframe_group=0))
        err = rel_err(got, expected)
        print(f"TokenFlow step {i} (t={int(t)}) vs the host: max|diff|/std = {err:.2e}")
        assert err < 1e-4
        assert np.abs(expected - x).std() > 1e-2  # the step moved the latents
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# the pieces


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _extended_attention_numpy(x, wq, wk, wv, wo, bo, heads, branches, inject, kv_frames):
    """The definition (the host's sa_forward): q/k/v projections; with injection the edit
    branches' q and k are the source's; the source branch attends within each frame, every
    other branch's queries to all keys of its branch (the first ``kv_frames`` frames')."""
    x = x.astype(np.float64)
    q, k, v = x @ wq, x @ wk, x @ wv
    b, n, c = q.shape
    kf = b // branches
    if inject:
        q = np.concatenate([q[:kf]] * branches)
        k = np.concatenate([k[:kf]] * branches)
    d = c // heads
    out = np.zeros_like(q)
    for br in range(branches):
        for f in range(kf):
            i = br * kf + f
            if br == 0:
                keys, vals = k[i], v[i]
            else:
                sl = slice(br * kf, br * kf + kv_frames)
                keys, vals = k[sl].reshape(-1, c), v[sl].reshape(-1, c)
            for h in range(heads):
                hs = slice(h * d, (h + 1) * d)
                p = _softmax(q[i][:, hs] @ keys[:, hs].T / np.sqrt(d))
                out[i][:, hs] = p @ vals[:, hs]
    return out @ wo + bo


def test_extended_attention_matches_numpy_definition():
    attn = layers.Attention(16, 2, 8, layers.Precision(), nnx.Rngs(0), path="x.attn1")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3 * 4, 10, 16)).astype(np.float32)  # 3 branches x 4 keyframes
    w = [np.asarray(m.kernel.value, np.float64) for m in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])]
    bo = np.asarray(attn.to_out[0].bias.value, np.float64)
    cases = [(inject, kv, budget) for inject, kv in ((None, None), (True, 3)) for budget in (None, 200)]

    @jax.jit
    def run(x):  # every case (unchunked and query-chunked) traced into one program
        out = []
        for inject, kv, budget in cases:
            with layers.attention_chunking(budget):
                out.append(tf.extended_attention(attn, x, 3, kv_frames=kv,
                                                 inject=None if inject is None else jnp.asarray(inject)))
        return out

    for (inject, kv, _), got in zip(cases, run(jnp.asarray(x))):
        ref = _extended_attention_numpy(x, *w, bo, 2, 3, bool(inject), 4 if kv is None else kv)
        np.testing.assert_allclose(np.asarray(got), ref, atol=2e-5 * ref.std())
    # one keyframe per branch: extended attention is the plain self-attention
    one = x[[0, 4, 8]]
    np.testing.assert_allclose(np.asarray(tf.extended_attention(attn, jnp.asarray(one), 3)),
                               np.asarray(attn(jnp.asarray(one))), atol=1e-5)


def _brute_force_propagation(x_src, cur, prev, w):
    """Per token, a loop over every keyframe token (float64 cosine), argmax, gather, blend."""
    n, tokens, c = x_src.shape
    out = np.zeros((cur[1].shape[0], n * tokens, cur[1].shape[-1]))
    q = x_src.reshape(-1, c).astype(np.float64)
    for i, qi in enumerate(q):
        best = []
        for src, _ in (cur, prev):
            cos = [qi @ kj / (np.linalg.norm(qi) * np.linalg.norm(kj)) for kj in src.astype(np.float64)]
            best.append(int(np.argmax(cos)))
        wi = w[i // tokens]
        out[:, i] = wi * cur[1][:, best[0]] + (1 - wi) * prev[1][:, best[1]]
    return out.reshape(-1, tokens, out.shape[-1])


def _host_weights(batch_idx, n):
    """The weight lines of the host's TokenFlowBlock.forward, in torch."""
    import torch

    s = torch.arange(0, n) + batch_idx * n
    p1 = batch_idx * n + n // 2
    p2 = (batch_idx - 1) * n + n // 2
    d1, d2 = torch.abs(s - p1), torch.abs(s - p2)
    return torch.sigmoid(d2 / (d1 + d2)).numpy()


def test_propagation_matches_brute_force_nearest_neighbours():
    rng = np.random.default_rng(2)
    n, tokens, c, branches = 3, 12, 6, 3
    x_src = rng.standard_normal((n, tokens, c)).astype(np.float32)
    cur = (rng.standard_normal((tokens, c)).astype(np.float32),
           rng.standard_normal((branches, tokens, 5)).astype(np.float32))
    prev = (rng.standard_normal((tokens, c)).astype(np.float32),
            rng.standard_normal((branches, tokens, 5)).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(tf.propagation_weights(0, n)), np.ones(n))
    for b in (1, 4):
        np.testing.assert_allclose(np.asarray(tf.propagation_weights(b, n)), _host_weights(b, n), rtol=1e-6)
    for b in (0, 4):
        w = np.asarray(tf.propagation_weights(b, n))
        ref = _brute_force_propagation(x_src, cur, prev, w)
        for budget in (None, 7):
            with layers.attention_chunking(budget):
                got = tf.propagate(jnp.asarray(x_src), cur, prev, jnp.asarray(w))
            np.testing.assert_allclose(np.asarray(got), ref, atol=1e-6)
    # the nearest neighbours themselves
    idx = np.asarray(tf.nearest_neighbours(jnp.asarray(x_src.reshape(-1, c)), jnp.asarray(cur[0])))
    qn = x_src.reshape(-1, c) / np.linalg.norm(x_src.reshape(-1, c), axis=1, keepdims=True)
    kn = cur[0] / np.linalg.norm(cur[0], axis=1, keepdims=True)
    np.testing.assert_array_equal(idx, np.argmax(qn.astype(np.float64) @ kn.T.astype(np.float64), 1))


def test_pivots_batches_and_groups():
    rng = np.random.default_rng(0)
    for n, bs in ((16, 8), (13, 4), (5, 2)):
        p = tf.draw_pivots(rng, n, bs)
        starts = np.arange(0, n, bs)
        assert len(p) == len(starts) and np.all(p >= starts) and np.all(p < np.minimum(starts + bs, n))
    assert tf.keyframe_groups(200, 8, 8) == (4, 8)  # 25 keyframes: 4 groups of 8 (7 padded)
    assert tf.keyframe_groups(40, 8, 0) == (1, 5) and tf.keyframe_groups(40, 8, 8) == (1, 5)
    assert tf.keyframe_groups(5, 2, 2) == (2, 2)


@functools.partial(jax.jit, static_argnums=0)
def _keyframe_pass_jit(graphdef, state, lat, ctx, inj_conv, inj_attn):
    model = nnx.merge(graphdef, state)
    conv = tf.default_conv_paths(model)[0]
    hooks = FeatureHooks(capture=[conv], transform={conv: tf.conv_injection(3, inj_conv)})
    with layers.attention_processor(tf.KeyframePass(3, tf.default_attn_paths(model), inj_attn)):
        eps = model(lat, jnp.asarray(601, jnp.int32), ctx, hooks=hooks)
    return eps, hooks.captured[conv]


def _tiny_pass(unet, lat, ctx, inj_conv, inj_attn):
    graphdef, state = nnx.split(unet)
    out = _keyframe_pass_jit(graphdef, state, lat, ctx, jnp.asarray(inj_conv), jnp.asarray(inj_attn))
    return [np.asarray(a) for a in out]


def test_pnp_injection_of_own_features_changes_nothing(editor):
    """Branches [source; edit; edit] with the source's own latent and context: injecting the
    source's conv features and q/k is injecting the edit branches' own, so the output equals
    the uninjected one. With other edit inputs the
    injection acts: the hooked conv output of every branch is then the source's."""
    unet = editor.unet
    rng = np.random.default_rng(3)
    lat = jnp.asarray(np.repeat(rng.standard_normal((1, 8, 8, 4)), 3, 0), jnp.float32)
    ctx = jnp.asarray(np.repeat(rng.standard_normal((1, 7, 32)), 3, 0), jnp.float32)
    on, _ = _tiny_pass(unet, lat, ctx, True, True)
    off, _ = _tiny_pass(unet, lat, ctx, False, False)
    np.testing.assert_allclose(on, off, atol=1e-5 * off.std())
    other = lat.at[1:].set(jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32))
    runs = {(c, a): _tiny_pass(unet, other, ctx, c, a) for c, a in ((True, True), (False, False),
                                                                    (True, False), (False, True))}
    base = runs[False, False][0]
    for key in ((True, True), (True, False), (False, True)):  # each injection acts
        assert np.abs(runs[key][0][1:] - base[1:]).max() > 1e-3 * base.std(), key
        np.testing.assert_allclose(runs[key][0][0], base[0], atol=1e-6 * base.std())  # source kept
    conv = runs[True, False][1]
    np.testing.assert_array_equal(conv[1], conv[0])
    np.testing.assert_array_equal(conv[2], conv[0])
    assert np.abs(runs[False, False][1][1] - runs[False, False][1][0]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# keyframe groups and the whole edit (tiny model, 64x128 frames)


def _contexts(editor, frames):
    return editor.contexts(frames, ["a red square", "blurry", "a blue square"], use_tokens=False)


def test_keyframe_groups_are_streamed(editor, frames):
    """Two groups of two keyframes: group 0's frames do not see group 1's, group 1 sees group
    0's last keyframe (the carried features), and one program serves both groups and steps."""
    rng = np.random.default_rng(5)
    n = 8
    x = rng.standard_normal((n, H // 8, W // 8, 4)).astype(np.float32)
    src = rng.standard_normal(x.shape).astype(np.float32)
    ctxs = _contexts(editor, frames)
    pivots = np.array([1, 2, 4, 7])
    pred = EditPredictor(editor.unet)
    before = tf._Trace.count
    step = lambda x, src, i=0: tf.tokenflow_step(pred, editor.schedule, STEPS, i, x, src, ctxs, pivots,
                                                 batch_size=BATCH, keyframe_group=GROUP)
    base = step(x, src)
    x2, src2 = x.copy(), src.copy()
    x2[4:] += 1.0
    src2[4:] -= 1.0
    later = step(x2, src2)
    np.testing.assert_array_equal(later[:4], base[:4])  # group 0 is causal
    x3 = x.copy()
    x3[2] += 1.0  # keyframe 1 (frame 2) is the last keyframe of group 0: carried into group 1
    carried = step(x3, src)
    assert np.abs(carried[4:6] - base[4:6]).max() > 1e-4  # group 1's first batch uses it
    step(x, src, i=STEPS - 1)  # another timestep and injection flags: the same program
    assert tf._Trace.count - before <= 1


def test_tokenflow_edit_tiny(editor, frames):
    kw = dict(negative_prompt="blurry", steps=STEPS, batch_size=BATCH, keyframe_group=GROUP,
              progress=False)
    a = tf.tokenflow_edit(editor, frames, "a red square", "a blue square", seed=1, **kw)
    assert a.frames.shape == (T, H, W, 3) and a.frames.dtype == np.uint8
    assert a.latents.shape == (T, H // 8, W // 8, 4) and np.isfinite(a.latents).all()
    assert a.timings["groups"] == 2 and a.timings["batches"] == 3
    again = tf.tokenflow_edit(editor, frames, "a red square", "a blue square", seed=1, **kw)
    np.testing.assert_array_equal(again.latents, a.latents)
    other = tf.tokenflow_edit(editor, frames, "a red square", "a blue square", seed=2, **kw)
    assert np.abs(other.latents - a.latents).max() > 1e-4  # other pivots
    with pytest.raises(ValueError, match="tokenflow batch size 6 does not fit the video: it has 5 frames"):
        tf.tokenflow_edit(editor, frames, "a", "b", batch_size=6)
    with pytest.raises(ValueError, match="negative prompt needs guidance_scale != 1"):
        tf.tokenflow_edit(editor, frames, "a", "b", negative_prompt="x", guidance_scale=1.0)
    with pytest.raises(ValueError, match=r"pnp_f_t=1.5 must be in \[0, 1\]"):
        tf.tokenflow_edit(editor, frames, "a", "b", pnp_f_t=1.5, batch_size=2)


def test_tokenflow_with_adapter(tmp_path, tiny, frames):
    """The adapter as the authors' script plugs it in: the LoRA acts on every branch only for
    t >= tau * 1000 (the steps here are at t = 667, 334, 1), the prompt tokens are each frame's
    own; the inversion runs the plain model."""
    from jaxvedit.adapters import (LoRAConfig, PromptTokenConfig, PromptTokens, apply_lora,
                                   save_adapter)
    from jaxvedit.models import load_unet

    lora = apply_lora(load_unet(tiny), LoRAConfig(rank=2, targets="all"), nnx.Rngs(1)).lora
    rng = np.random.default_rng(3)
    for layer in lora.layers:  # B = 0 at init would be a no-op adapter
        layer.lora_B.value = jnp.asarray(0.5 * rng.standard_normal(layer.lora_B.value.shape), jnp.float32)
    save_adapter(tmp_path / "adapter" / "lora", lora)
    save_adapter(tmp_path / "adapter" / "prompt_tokens",
                 PromptTokens(PromptTokenConfig(n_share=2, vision_dim=32, context_dim=32,
                                                pooling="stride:2"), rngs=nnx.Rngs(2)))
    ed = Editor(str(tiny), adapter=str(tmp_path / "adapter"), batch_frames=4)
    ctx = ed.contexts(frames, ["a"], use_tokens=True)[0]
    assert ctx.shape[0] == T and np.abs(ctx[0] - ctx[-1]).max() > 1e-3  # per-frame tokens
    kw = dict(steps=STEPS, batch_size=BATCH, keyframe_group=GROUP, progress=False)
    run = lambda tau: tf.tokenflow_edit(ed, frames, "a red square", "a blue square", lora_tau=tau, **kw)
    closed, above, open_ = run(1.0), run(0.7), run(0.5)
    np.testing.assert_array_equal(above.latents, closed.latents)  # no step at t >= 700
    assert np.abs(open_.latents - closed.latents).max() > 1e-3  # step 0 (t = 667) with the LoRA
    np.testing.assert_array_equal(open_.inverted, closed.inverted)  # inversion: plain model


# ---------------------------------------------------------------------------------------------
# the command line: non-square, audio kept, preview strip, seed, negative prompt; errors


def _cli(argv, capsys):
    from jaxvedit.edit import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory):
    from av_clips import write_clip_with_audio

    path = tmp_path_factory.mktemp("av") / "clip.mp4"
    return write_clip_with_audio(path, synthetic_frames(T + 1, (H, W), seed=6)[0], 12)


def test_cli_tokenflow_keeps_size_fps_audio(tmp_path, tiny, clip_with_audio, capsys):
    import cv2

    from jaxvedit.data.audio import audio_info
    from jaxvedit.data.video import probe_video

    out = tmp_path / "edited.mp4"
    rc, err = _cli(["--video", clip_with_audio, "--model", tiny, "--method", "tokenflow",
                    "--width", W, "--height", H, "--start", 1, "--max-frames", T, "--steps", STEPS,
                    "--tokenflow-batch", BATCH, "--keyframe-group", GROUP, "--batch-frames", 4,
                    "--filter", "none", "--negative-prompt", "blurry", "--seed", 3,
                    "--source-prompt", "a red square", "--prompt", "a blue square", "--out", out,
                    "--no-progress"], capsys)
    assert rc == 0, err
    v = probe_video(out)
    assert (v.num_frames, v.fps, v.height, v.width) == (T, 12.0, H, W)
    a = audio_info(out)
    assert a is not None and a["codec"] == "aac" and abs(a["duration"] - T / 12) < 0.05
    strip = cv2.imread(str(tmp_path / "edited_preview.png"))
    assert strip.shape == (2 * H + 4, 4 * W + 3 * 4, 3)


def test_cli_errors(tmp_path, tiny, clip_with_audio, capsys):
    base = ["--video", clip_with_audio, "--model", tiny, "--prompt", "a cat", "--out", tmp_path / "o.mp4"]
    rc, err = _cli(base + ["--width", 100], capsys)
    assert rc == 2 and "width=100 must be a positive multiple of 64" in err and "64 or 128" in err
    rc, err = _cli(base + ["--resolution", 96], capsys)
    assert rc == 2 and "resolution=96 must be a positive multiple of 64" in err
    rc, err = _cli(base + ["--negative-prompt", "blurry", "--guidance-scale", 1], capsys)
    assert rc == 2 and "a negative prompt needs --guidance-scale != 1" in err
    rc, err = _cli(base + ["--method", "tokenflow", "--tokenflow-batch", 9, "--resolution", 64], capsys)
    assert rc == 2 and "tokenflow batch size 9 does not fit the video: it has 6 frames" in err
    rc, err = _cli(base + ["--method", "tokenflow", "--pnp-attn-t", 2], capsys)
    assert rc == 2 and "pnp_attn_t=2.0 must be in [0, 1]" in err
    rc, err = _cli(base + ["--keyframe-group", -1], capsys)
    assert rc == 2 and "keyframe_group=-1 >= 0" in err


def test_memory_bench_tiny(tmp_path, monkeypatch, capsys, editor):
    """bench/edit_memory.py (the GPU memory table) in its CPU mode, in this process (on the
    already loaded tiny editor)."""
    import json

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    monkeypatch.setenv("OUT", str(tmp_path))
    import edit_memory

    monkeypatch.setattr(edit_memory, "build_editor", lambda args: editor)
    rc = edit_memory.main([str(a) for a in (
        "--tiny", "--inprocess", "--methods", "tokenflow", "--frames", T, T + 1, "--size", f"{W}x{H}",
        "--steps", STEPS, "--tokenflow-batch", BATCH, "--keyframe-group", GROUP, "--batch-frames", 4)])
    assert rc == 0
    out = json.loads((tmp_path / "edit_memory_tiny.json").read_text())
    rows = out["rows"]
    assert [r["frames"] for r in rows] == [T, T + 1] and all(r["method"] == "tokenflow" for r in rows)
    assert all(r["peak_mem_gib"] > 0 and r["measure"] == "process peak RSS" for r in rows)
    assert rows[0]["s_per_frame_50_steps"] is None and rows[1]["s_per_frame_50_steps"] > 0
    assert "| tokenflow |" in capsys.readouterr().out
