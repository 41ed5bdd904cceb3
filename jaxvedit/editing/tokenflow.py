"""TokenFlow as the host editor (``--method tokenflow``; Geyer et al., ICLR 2024), with the
adapter plugged in as the GE-Adapter authors' script does. See ``docs/editing.md``.

Reference code: ``omerbt/TokenFlow`` (``preprocess.py``: DDIM inversion keeping the latents of
every sampling step; ``run_tokenflow_pnp.py``: the sampling loop; ``tokenflow_utils.py``:
``register_extended_attention_pnp``, ``register_conv_injection``, ``register_pivotal``,
``register_batch_idx``, ``make_tokenflow_attention_block``; ``configs/config_pnp.yaml``: the
defaults) and ``codepassionor/Tokenflow_adapter`` (``test/tokenflow/run_tokenflow_pnp_lora.py``:
LoRA switched on for a timestep window of the sampling).

One sampling step of the host, for every frame batch of ``batch_size`` frames:

1. *keyframe pass*: one random frame (the pivot) per batch; the UNet runs on the keyframes in
   three branches ``[source latents at t (source prompt); x_t (negative); x_t (target)]``. Every
   self-attention (``attn1``) is *extended*: the source branch attends within each frame, the
   other branches attend to the tokens of **all** keyframes of their branch. For the first
   ``pnp_attn_t`` of the steps the queries and keys of the chosen up-block self-attentions of
   the edit branches are replaced by the source branch's, and for the first ``pnp_f_t`` the
   residual-branch output (``conv2``) of ``up_blocks.1.resnets.1`` (plug-and-play injection).
   The pass keeps, per transformer block, the source branch's ``norm1`` output and the ``attn1``
   output of every branch; its noise prediction is dropped.
2. *batch pass* per batch ``b``: the UNet on the batch's frames in the three branches, where no
   self-attention is computed: each token's ``attn1`` output is that of its nearest neighbour
   (cosine of the source branch's ``norm1`` outputs) in keyframe ``b`` and in keyframe ``b - 1``,
   blended ``w * out_b + (1 - w) * out_{b-1}`` with the host's weight
   ``w = sigmoid(d_{b-1} / (d_b + d_{b-1}))`` (``d``: the frame's distance to the batch centres;
   batch 0 takes keyframe 0's alone). Conv injection as in the keyframe pass. Classifier-free
   guidance, one DDIM step.

Ours runs each step as one compiled program per *keyframe group*: the keyframe pass of up to
``keyframe_group`` keyframes, then a ``lax.scan`` over their batches; the last keyframe's
features are carried to the next group (its first batch needs keyframe ``b - 1``). With one group
(``keyframe_group=0`` or at least the number of batches) this is the host's step exactly; with
several, extended attention spans the keyframes of a group, so device memory does not grow with
the number of frames (the latents and the per-step source latents stay on the host and go to the
device one group at a time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.diffusion import BilateralFilterConfig, ddim_invert, default_feature_paths
from jaxvedit.diffusion.ddim import ddim_step
from jaxvedit.models import layers as _layers
from jaxvedit.models.hooks import FeatureHooks
from jaxvedit.models.layers import attention

#: ``omerbt/TokenFlow`` ``configs/config_pnp.yaml`` (and the adapter authors' configs).
TOKENFLOW_DEFAULTS = dict(pnp_f_t=0.8, pnp_attn_t=0.5, batch_size=8, steps=50, guidance_scale=7.5)
#: The negative prompt of those configs (ours defaults to the empty prompt).
TOKENFLOW_NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"


# ----------------------------------------------------------------------------------------------
# which layers


def default_conv_paths(unet) -> tuple[str, ...]:
    """The host's conv injection: ``up_blocks[1].resnets[1]`` (its ``conv2`` output)."""
    i = 1 if len(unet.up_blocks) > 1 else 0
    j = 1 if len(unet.up_blocks[i].resnets) > 1 else 0
    return (f"up_blocks.{i}.resnets.{j}.conv2",)


def default_attn_paths(unet) -> tuple[str, ...]:
    """The host's q/k injection: the first transformer block's ``attn1`` of every up-block
    attention but the first one (SD1.5: ``up_blocks.1.attentions.1-2``, ``up_blocks.2`` and
    ``up_blocks.3.attentions.0-2``, the host's "blocks 4 - 11 of the decoder")."""
    paths = [f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1"
             for i, block in enumerate(unet.up_blocks) if block.attentions is not None
             for j in range(len(block.attentions))]
    return tuple(paths[1:])


def injection_steps(steps: int, pnp_f_t: float, pnp_attn_t: float) -> tuple[int, int]:
    """``(conv, qk)``: how many of the first sampling steps inject (the host:
    ``int(n_timesteps * pnp_f_t)``, ``int(n_timesteps * pnp_attn_t)``)."""
    return int(steps * pnp_f_t), int(steps * pnp_attn_t)


# ----------------------------------------------------------------------------------------------
# the pieces, each testable on its own


def _tile_source(y, branches: int, flag):
    """Replace every branch by branch 0 (the source) where ``flag`` (traced bool) is set."""
    n = y.shape[0] // branches
    return jnp.where(flag, jnp.tile(y[:n], (branches,) + (1,) * (y.ndim - 1)), y)


def extended_attention(attn, x, branches: int, *, inject=None, kv_frames=None):
    """TokenFlow's keyframe self-attention (``register_extended_attention_pnp``'s ``sa_forward``).

    ``x (branches * K, N, C)``: the ``attn1`` input of ``K`` keyframes per branch, branch 0 the
    source. ``inject`` (traced bool or ``None``): replace the queries and keys of the other
    branches by the source's (plug-and-play). The source branch attends within each frame; every
    other branch's queries attend to the ``K * N`` keys of its branch (only the first
    ``kv_frames`` keyframes' when given: the rest are padding). Returns the ``attn1`` output
    (after ``to_out``), ``(branches * K, N, C)``.
    """
    b, n, _ = x.shape
    k_frames = b // branches
    q, k, v = attn.qkv(x)
    if inject is not None:
        q, k = _tile_source(q, branches, inject), _tile_source(k, branches, inject)
    inner = q.shape[-1]
    own = attention(q[:k_frames], k[:k_frames], v[:k_frames], attn.heads, attn.attention_implementation)

    def joined(a):  # each edit branch: its K frames as one sequence of K * N tokens
        return a[k_frames:].reshape(branches - 1, k_frames * n, inner)

    kv_len = None if kv_frames is None else kv_frames * n
    ext = attention(joined(q), joined(k), joined(v), attn.heads, attn.attention_implementation,
                    kv_length=kv_len)
    return attn.out(jnp.concatenate([own, ext.reshape(b - k_frames, n, inner)]))


def nearest_neighbours(q, k):
    """``argmax_j cos(q_i, k_j)`` for ``q (L, C)``, ``k (M, C)`` (the host's
    ``batch_cosine_sim(...).argmax(-1)``), in query chunks under the attention score budget."""
    qn = q.astype(jnp.float32)
    kn = k.astype(jnp.float32)
    qn = qn / jnp.linalg.norm(qn, axis=-1, keepdims=True)
    kn = kn / jnp.linalg.norm(kn, axis=-1, keepdims=True)
    lq, m = qn.shape[0], kn.shape[0]
    budget = _layers._ATTENTION_CHUNK.get()
    if budget is None or lq * m <= budget:
        return jnp.argmax(qn @ kn.T, axis=-1)
    chunk = max(1, budget // m)
    n = -(-lq // chunk)
    qs = jnp.pad(qn, ((0, n * chunk - lq), (0, 0))).reshape(n, chunk, -1)
    return jax.lax.map(lambda qc: jnp.argmax(qc @ kn.T, axis=-1), qs).reshape(-1)[:lq]


def propagation_weights(batch_index, batch_size: int):
    """Weight of keyframe ``b`` (against ``b - 1``) for the frames of batch ``b``, as the host
    computes it: ``sigmoid(d2 / (d1 + d2))`` with ``d1, d2`` the distances of the frame index to
    ``b * n + n // 2`` and ``(b - 1) * n + n // 2`` (batch centres, not the pivots); 1 for
    batch 0 (keyframe 0 alone). Traced ``batch_index`` is fine."""
    b = jnp.asarray(batch_index, jnp.int32)
    s = jnp.arange(batch_size, dtype=jnp.int32) + b * batch_size
    d1 = jnp.abs(s - (b * batch_size + batch_size // 2)).astype(jnp.float32)
    d2 = jnp.abs(s - ((b - 1) * batch_size + batch_size // 2)).astype(jnp.float32)
    return jnp.where(b > 0, jax.nn.sigmoid(d2 / (d1 + d2)), 1.0)


def propagate(x_src, current, previous, weights):
    """TokenFlow's feature propagation (``make_tokenflow_attention_block``, non-pivotal pass).

    ``x_src (n, N, C)``: the source branch's ``norm1`` output of the batch frames;
    ``current`` / ``previous``: ``(src (N, C), out (branches, N, C))`` of keyframes ``b`` and
    ``b - 1`` (their source ``norm1`` output and every branch's ``attn1`` output); ``weights
    (n,)``: :func:`propagation_weights`. Returns the ``attn1`` output of every branch,
    ``(branches * n, N, C)``: each token takes its nearest keyframe tokens' outputs, blended.
    """
    n, tokens, c = x_src.shape
    q = x_src.reshape(n * tokens, c)
    out_c, out_p = current[1], previous[1]
    branches = out_c.shape[0]
    a1 = jnp.take(out_c, nearest_neighbours(q, current[0]), axis=1).reshape(branches, n, tokens, -1)
    a2 = jnp.take(out_p, nearest_neighbours(q, previous[0]), axis=1).reshape(branches, n, tokens, -1)
    w = weights.astype(jnp.float32).reshape(1, n, 1, 1)
    out = w * a1.astype(jnp.float32) + (1 - w) * a2.astype(jnp.float32)
    return out.astype(out_c.dtype).reshape(branches * n, tokens, -1)


class KeyframePass:
    """Attention processor of the keyframe pass: extended attention in every ``attn1`` (q/k
    injection in ``inject_paths`` when ``inject``), recording the features the batch passes
    need in ``self.features[path] = (src norm1 output (K, N, C), attn1 output (branches, K, N, C))``."""

    def __init__(self, branches: int, inject_paths=(), inject=None, kv_frames=None):
        self.branches, self.inject_paths = branches, tuple(inject_paths)
        self.inject, self.kv_frames = inject, kv_frames
        self.features: dict = {}

    def __call__(self, attn, x, context):
        if context is not None or not attn.path.endswith("attn1"):
            return None
        inj = self.inject if attn.path in self.inject_paths else None
        h = extended_attention(attn, x, self.branches, inject=inj, kv_frames=self.kv_frames)
        k = x.shape[0] // self.branches
        self.features[attn.path] = (x[:k], h.reshape((self.branches, k) + h.shape[1:]))
        return h


class BatchPass:
    """Attention processor of a batch pass: every ``attn1`` output is propagated from the
    keyframe features (``current`` / ``previous``: ``{path: (src (N, C), out (branches, N, C))}``)."""

    def __init__(self, branches: int, current: dict, previous: dict, weights):
        self.branches, self.current, self.previous, self.weights = branches, current, previous, weights

    def __call__(self, attn, x, context):
        if context is not None or not attn.path.endswith("attn1"):
            return None
        if attn.path not in self.current:
            raise KeyError(f"TokenFlow: no keyframe features for {attn.path}")
        n = x.shape[0] // self.branches
        return propagate(x[:n], self.current[attn.path], self.previous[attn.path], self.weights)


def conv_injection(branches: int, flag):
    """Feature-hook transform: the edit branches' output of the hooked module becomes the
    source branch's where ``flag`` (``register_conv_injection``)."""
    return lambda h: _tile_source(h, branches, flag)


# ----------------------------------------------------------------------------------------------
# one compiled program per (step, keyframe group)


@dataclasses.dataclass(frozen=True)
class _Spec:
    branches: int  # 3 with classifier-free guidance ([src, uncond, cond]), else 2
    group: int  # keyframes (= batches) per group
    batch: int  # frames per batch
    conv_paths: tuple[str, ...]
    attn_paths: tuple[str, ...]
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float


class _Trace:
    count = 0  # traces of the step program (tests check it compiles once)


def _keyframe_pass(model, spec: _Spec, x, src, ctx, pivots, t, inj_conv, inj_attn, kv_frames):
    kx, ks = x[pivots], src[pivots]
    lat = [ks] + [kx] * (spec.branches - 1)
    hooks = FeatureHooks(transform={p: conv_injection(spec.branches, inj_conv) for p in spec.conv_paths})
    proc = KeyframePass(spec.branches, spec.attn_paths, inj_attn, kv_frames)
    with _layers.attention_processor(proc):
        model(jnp.concatenate(lat), t, jnp.concatenate([c[pivots] for c in ctx]), hooks=hooks)
    hooks.check_all_matched()
    missing = [p for p in spec.attn_paths if p not in proc.features]
    if missing:
        raise KeyError(f"TokenFlow q/k injection: no self-attention at {missing}; "
                       f"self-attentions: {sorted(proc.features)[:6]}...")
    return proc.features


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _group_step(state, x, src, ctx, pivots, kv_frames, first_batch, prev, t, a_t, a_prev,
                guidance, inj_conv, inj_attn, *, graphdef, spec: _Spec):
    """One DDIM step of the frames of one keyframe group: ``x``, ``src (G * n, h, w, c)``,
    ``ctx``: one ``(G * n, L, D)`` context per branch; ``pivots (G,)`` local frame indices;
    ``prev``: the previous group's last keyframe features. Returns the stepped latents and this
    group's last keyframe features."""
    _Trace.count += 1
    model = nnx.merge(graphdef, state)
    feats = _keyframe_pass(model, spec, x, src, ctx, pivots, t, inj_conv, inj_attn, kv_frames)
    n, nb = spec.batch, spec.branches

    def keyframe(p, k):  # keyframe k of this group: (src (N, C), out (branches, N, C))
        return feats[p][0][k], feats[p][1][:, k]

    def batch_pass(j, xb, sb, cb):
        gb = first_batch + j
        cur = {p: keyframe(p, j) for p in feats}
        # keyframe b - 1: the previous in this group, the carried one for the group's first
        # batch, none for batch 0 (then its own, with weight 0)
        before = {p: keyframe(p, jnp.maximum(j - 1, 0)) for p in feats}
        prv = {p: tuple(jnp.where(gb == 0, c, jnp.where(j == 0, q, b))
                        for c, q, b in zip(cur[p], prev[p], before[p])) for p in feats}
        hooks = FeatureHooks(transform={p: conv_injection(nb, inj_conv) for p in spec.conv_paths})
        with _layers.attention_processor(BatchPass(nb, cur, prv, propagation_weights(gb, n))):
            eps = model(jnp.concatenate([sb] + [xb] * (nb - 1)), t, jnp.concatenate(cb), hooks=hooks)
        eps = jnp.asarray(eps, jnp.float32)
        if nb == 3:
            e_u, e_c = eps[n:2 * n], eps[2 * n:]
            e = e_u + guidance * (e_c - e_u)  # classifier-free guidance
        else:
            e = eps[n:]
        return ddim_step(xb, e, a_t, a_prev, prediction_type=spec.prediction_type,
                         clip_sample=spec.clip_sample, clip_sample_range=spec.clip_sample_range,
                         stochastic=False).astype(xb.dtype)

    def body(_, j):
        xb, sb = (jax.lax.dynamic_slice_in_dim(a, j * n, n) for a in (x, src))
        cb = [jax.lax.dynamic_slice_in_dim(c, j * n, n) for c in ctx]
        # padded batches of the last group (no real frame) are skipped
        xn = jax.lax.cond(j < kv_frames, lambda: batch_pass(j, xb, sb, cb), lambda: xb)
        return None, xn

    _, xs = jax.lax.scan(body, None, jnp.arange(spec.group))
    last = {p: (f[0][-1], f[1][:, -1]) for p, f in feats.items()}
    return xs.reshape(x.shape), last


# ----------------------------------------------------------------------------------------------
# the edit


def check_tokenflow_options(num_frames: int, *, batch_size: int, keyframe_group: int, pnp_f_t: float,
                            pnp_attn_t: float, steps: int) -> None:
    """Keyframe settings that do not fit the video, out-of-range fractions: ``ValueError``."""
    if batch_size < 1:
        raise ValueError(f"tokenflow batch size {batch_size} must be >= 1 (frames per keyframe)")
    if batch_size > num_frames:
        raise ValueError(f"tokenflow batch size {batch_size} does not fit the video: it has "
                         f"{num_frames} frames, and every batch of {batch_size} frames gets one "
                         f"keyframe (use --tokenflow-batch <= {num_frames})")
    if keyframe_group < 0:
        raise ValueError(f"keyframe group {keyframe_group} must be >= 0 (0: all keyframes)")
    for name, v in (("pnp_f_t", pnp_f_t), ("pnp_attn_t", pnp_attn_t)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v} must be in [0, 1] (fraction of the steps that inject)")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")


def keyframe_groups(num_frames: int, batch_size: int, keyframe_group: int) -> tuple[int, int]:
    """``(groups, keyframes per group)``: the ``ceil(T / batch_size)`` keyframes in groups of
    ``min(keyframe_group, keyframes)`` (0: one group). Every video with at least that many
    keyframes runs the same compiled program; the last group is padded (its padded keyframes
    are masked out of the extended attention, its padded batches skipped)."""
    batches = -(-num_frames // batch_size)
    g = batches if keyframe_group == 0 else min(keyframe_group, batches)
    return -(-batches // g), g


def draw_pivots(rng: np.random.Generator, num_frames: int, batch_size: int) -> np.ndarray:
    """One random frame per batch (the host: ``randint(batch_size) + arange(0, T, batch_size)``;
    a last, shorter batch draws among its own frames)."""
    starts = np.arange(0, num_frames, batch_size)
    sizes = np.minimum(batch_size, num_frames - starts)
    return starts + rng.integers(0, sizes)


def tokenflow_edit(editor, frames: np.ndarray, source_prompt: str, prompt: str, *,
                   negative_prompt: str = "", steps: int = 50, guidance_scale: float = 7.5,
                   pnp_f_t: float = 0.8, pnp_attn_t: float = 0.5, batch_size: int = 8,
                   keyframe_group: int = 8, seed: int = 0, filter: BilateralFilterConfig | None = None,
                   inversion_guidance: float = 1.0, use_adapter: bool = True, lora_tau: float = 0.9,
                   lora_ratio: float = 0.5, latents: np.ndarray | None = None,
                   progress: bool = True):
    """Edit ``frames (T, H, W, 3) uint8`` with TokenFlow on ``editor``'s model
    (a :class:`jaxvedit.editing.Editor`); returns an :class:`~jaxvedit.editing.EditResult`
    (``.frames``: the edited uint8 frames).

    The inversion (``filter``: the bilateral filter, chunks of ``editor.batch_frames`` frames)
    uses the plain model and the text prompt, as the host's ``preprocess.py``; the sampling runs
    the adapter when ``use_adapter`` (LoRA gated at ``t >= lora_tau * 1000`` on every branch,
    prompt tokens of each frame). ``seed`` draws the pivots.
    """
    from tqdm.auto import tqdm

    from jaxvedit.adapters import merged_lora
    from jaxvedit.editing.pipeline import EditResult, chunk_indices
    from jaxvedit.editing.predictor import EditPredictor

    if not prompt or not prompt.strip():
        raise ValueError("empty prompt: give the target prompt")
    if negative_prompt and float(guidance_scale) == 1.0:
        raise ValueError("a negative prompt needs guidance_scale != 1 (at guidance 1 the "
                         "unconditional branch, where the negative prompt goes, is not evaluated)")
    frames = np.asarray(frames)
    t_frames = len(frames) if latents is None else len(latents)
    check_tokenflow_options(t_frames, batch_size=batch_size, keyframe_group=keyframe_group,
                            pnp_f_t=pnp_f_t, pnp_attn_t=pnp_attn_t, steps=steps)
    t0 = time.perf_counter()
    x0 = editor.encode_frames(frames) if latents is None else np.asarray(latents, np.float32)
    t_enc = time.perf_counter() - t0
    schedule = editor.schedule
    flt = filter if filter is not None else BilateralFilterConfig.none()
    if flt.mode == "features" and flt.feature_paths is None:
        flt = dataclasses.replace(flt, feature_paths=default_feature_paths(editor.unet))
    use_lora = use_adapter and editor.lora is not None
    merge = use_lora and getattr(editor, "lora_merge", False)  # merged for the sampling only
    groups, g = keyframe_groups(t_frames, batch_size, keyframe_group)
    inv_chunks = chunk_indices(t_frames, min(editor.batch_frames, t_frames), carry_first=False)
    bar = tqdm(total=len(inv_chunks) + steps * groups, desc="tokenflow", unit="pass",
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    stack = contextlib.ExitStack()
    try:
        # 1. inversion, keeping the latents of every step (on the host)
        t1 = time.perf_counter()
        inv_src, inv_unc = editor.contexts(frames, [source_prompt, ""], use_tokens=False)
        inv_pred = EditPredictor(editor.unet)
        traj = np.zeros((steps + 1,) + x0.shape, np.float32)
        per_frame = lambda c, idx: c[idx] if c.shape[0] == t_frames and t_frames > 1 else c
        inv_g = float(inversion_guidance)
        for ci, (idx, keep) in enumerate(inv_chunks):
            bar.set_postfix_str(f"invert {ci + 1}/{len(inv_chunks)}", refresh=False)
            _, tr = ddim_invert(inv_pred, jnp.asarray(x0[idx]), jnp.asarray(per_frame(inv_src, idx)),
                                schedule, num_inference_steps=steps, guidance_scale=inv_g,
                                uncond_context=jnp.asarray(per_frame(inv_unc, idx)) if inv_g != 1 else None,
                                filter=flt, return_trajectory=True)
            sel, dst = np.asarray(keep), np.asarray(idx)[keep]
            traj[:, dst] = np.asarray(tr)[:, sel]  # blocks until the chunk is done
            bar.update()
        t_inv = time.perf_counter() - t1

        # 2. sampling
        t2 = time.perf_counter()
        cfg = float(guidance_scale) != 1.0
        prompts = [source_prompt] + ([negative_prompt] if cfg else []) + [prompt]
        ctxs = editor.contexts(frames, prompts, use_adapter, lora_ratio if use_adapter else None)
        pred = EditPredictor(editor.unet, editor.lora if use_lora and not merge else None,
                             lora_tau=lora_tau, lora_ratio=lora_ratio,
                             dape=getattr(editor, "dape", None) if use_adapter else None)
        if merge:  # ungated, at this edit's ratio; the exact base kernels come back in finally
            stack.enter_context(merged_lora(editor.unet, editor.lora, ratio=lora_ratio))
        rng = np.random.default_rng(seed)
        x = traj[steps].copy()  # x_T
        step_s = []
        for i in range(steps):
            ts0 = time.perf_counter()
            x = tokenflow_step(pred, schedule, steps, i, x, traj[steps - i], ctxs,
                               draw_pivots(rng, t_frames, batch_size), guidance_scale=guidance_scale,
                               batch_size=batch_size, keyframe_group=keyframe_group, pnp_f_t=pnp_f_t,
                               pnp_attn_t=pnp_attn_t,
                               on_group=lambda gi, i=i: (bar.set_postfix_str(
                                   f"step {i + 1}/{steps}, group {gi + 1}/{groups}", refresh=False),
                                   bar.update()))
            step_s.append(time.perf_counter() - ts0)
        t_samp = time.perf_counter() - t2
    finally:
        stack.close()
        bar.close()
    t3 = time.perf_counter()
    edited = editor.decode_latents(x)
    t_dec = time.perf_counter() - t3
    return EditResult(edited, x, traj[steps], None,
                      {"encode_s": t_enc, "inversion_s": t_inv, "sampling_s": t_samp,
                       "diffusion_s": t_inv + t_samp, "decode_s": t_dec, "step_s": step_s,
                       "groups": groups,
                       "keyframes_per_group": g, "batches": -(-t_frames // batch_size),
                       "pnp_conv_steps": injection_steps(steps, pnp_f_t, pnp_attn_t)[0],
                       "pnp_attn_steps": injection_steps(steps, pnp_f_t, pnp_attn_t)[1]})


_PREV_ZEROS: dict = {}


def _no_previous(graphdef, state, spec: _Spec, args, scal):
    """Zero features of one keyframe: the carry of the first group (which has no previous
    keyframe; never used). Their shapes come from tracing the keyframe pass once (cached)."""
    x, src, ctx, piv, kv, _ = args
    key = (graphdef, spec, x.shape, x.dtype, tuple((c.shape, c.dtype) for c in ctx))
    if key not in _PREV_ZEROS:
        def f(s):
            feats = _keyframe_pass(nnx.merge(graphdef, s), spec, x, src, ctx, piv, scal[0], scal[4],
                                   scal[5], kv)
            return {p: (v[0][0], v[1][:, 0]) for p, v in feats.items()}

        shapes = jax.eval_shape(f, state)
        _PREV_ZEROS[key] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return _PREV_ZEROS[key]


def tokenflow_step(predictor, schedule, steps: int, i: int, x: np.ndarray, src: np.ndarray,
                   contexts, pivots, *, guidance_scale: float = 7.5, batch_size: int = 8,
                   keyframe_group: int = 8, pnp_f_t: float = 0.8, pnp_attn_t: float = 0.5,
                   conv_paths=None, attn_paths=None, on_group=None) -> np.ndarray:
    """Sampling step ``i`` of ``steps`` (timestep ``schedule.timesteps(steps)[i]``) of every frame.

    ``predictor``: an NNX noise predictor with the UNet's call signature and ``hooks`` (e.g.
    :class:`~jaxvedit.editing.EditPredictor`; its ``unet`` gives the default layers); ``x``,
    ``src (T, h, w, c)``: the current latents and the source latents at this noise level (host
    arrays); ``contexts``: one ``(T or 1, L, D)`` context per branch, ``[source, negative,
    target]`` (or ``[source, target]``: no guidance); ``pivots (ceil(T / batch_size),)``: the
    keyframe of each batch (global frame indices, :func:`draw_pivots`). ``on_group(g)`` is
    called after each keyframe group has finished on the device. Returns the stepped latents.
    """
    t_frames = len(x)
    branches = len(contexts)
    if branches not in (2, 3):
        raise ValueError(f"contexts: [source, target] or [source, negative, target], got {branches}")
    unet = getattr(predictor, "unet", predictor)
    groups, g = keyframe_groups(t_frames, batch_size, keyframe_group)
    graphdef, state = nnx.split(predictor)
    spec = _Spec(branches=branches, group=g, batch=batch_size,
                 conv_paths=tuple(conv_paths or default_conv_paths(unet)),
                 attn_paths=tuple(attn_paths if attn_paths is not None else default_attn_paths(unet)),
                 prediction_type=schedule.prediction_type, clip_sample=schedule.clip_sample,
                 clip_sample_range=float(schedule.clip_sample_range))
    ts, a_t, a_prev = schedule.sampling_table(steps)
    if not np.array_equal(ts, schedule.inverse_timesteps(steps)[::-1]):
        raise ValueError("TokenFlow needs the sampling timesteps to be the inversion's reversed "
                         f"(schedule spacing {schedule.timestep_spacing!r})")
    n_conv, n_attn = injection_steps(steps, pnp_f_t, pnp_attn_t)
    pivots = np.asarray(pivots)
    span = g * batch_size
    scal = (np.int32(ts[i]), np.float32(a_t[i]), np.float32(a_prev[i]), np.float32(guidance_scale),
            np.bool_(i < n_conv), np.bool_(i < n_attn))

    def group_ctx(c, idx):
        c = np.asarray(c)
        return jnp.asarray(c[idx] if c.shape[0] > 1 else np.broadcast_to(c, (span,) + c.shape[1:]))

    out_x = np.empty_like(np.asarray(x, np.float32))
    prev = None
    for gi in range(groups):
        idx = np.minimum(np.arange(gi * span, (gi + 1) * span), t_frames - 1)  # padded: last frame
        real = int(np.clip(t_frames - gi * span, 0, span))
        kb = np.arange(gi * g, (gi + 1) * g)  # global batch indices of the group
        piv = np.where(kb < len(pivots), pivots[np.minimum(kb, len(pivots) - 1)] - gi * span,
                       (kb - gi * g) * batch_size).astype(np.int32)
        args = (jnp.asarray(np.asarray(x, np.float32)[idx]), jnp.asarray(np.asarray(src, np.float32)[idx]),
                [group_ctx(c, idx) for c in contexts], jnp.asarray(piv),
                np.int32(min(g, -(-real // batch_size))), np.int32(gi * g))
        if prev is None:
            prev = _no_previous(graphdef, state, spec, args, scal)
        out, prev = _group_step(state, *args, prev, *scal, graphdef=graphdef, spec=spec)
        out_x[gi * span:gi * span + real] = np.asarray(out)[:real]  # blocks until finished
        if on_group is not None:
            on_group(gi)
    return out_x


__all__ = ["TOKENFLOW_DEFAULTS", "TOKENFLOW_NEGATIVE_PROMPT", "BatchPass", "KeyframePass",
           "check_tokenflow_options", "conv_injection", "default_attn_paths", "default_conv_paths",
           "draw_pivots", "extended_attention", "injection_steps", "keyframe_groups",
           "nearest_neighbours", "propagate", "propagation_weights", "tokenflow_edit",
           "tokenflow_step"]
