"""Bilateral filters: agreement with OpenCV / independent references, and property tests."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax.numpy as jnp

from jaxvedit.diffusion import bilateral_filter_frames, bilateral_filter_latent, gaussian_blur_latent

HYP = settings(max_examples=15, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _cv2_reference(x, radius, sigma_spatial, sigma_range):
    """cv2.bilateralFilter per image and per channel (single-channel float32, so the range
    weight compares values within the channel), replicated borders, d = 2r+1 (disk window)."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[-1]):
            out[b, :, :, c] = cv2.bilateralFilter(np.ascontiguousarray(x[b, :, :, c]), 2 * radius + 1,
                                                  sigma_range, sigma_spatial, borderType=cv2.BORDER_REPLICATE)
    return out


def _loop_reference(x, radius, sigma_spatial, sigma_range, window="square"):
    """Direct float64 evaluation of eq. 9-11 with edge padding (per image, per channel)."""
    x = x.astype(np.float64)
    B, H, W, C = x.shape
    r = radius
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    sr = np.broadcast_to(np.asarray(sigma_range, np.float64), (B, 1, 1, C))
    num = np.zeros_like(x)
    den = np.zeros_like(x)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if window == "disk" and dy * dy + dx * dx > r * r:
                continue
            nb = xp[:, r + dy: r + dy + H, r + dx: r + dx + W, :]
            w = np.exp(-(dy * dy + dx * dx) / (2 * sigma_spatial**2)) * np.exp(-((nb - x) ** 2) / (2 * sr**2))
            num += w * nb
            den += w
    return num / den


CV2_CASES = [(1, 0.7, 0.2), (2, 1.0, 0.5), (3, 1.5, 1.0), (4, 2.0, 3.0)]


@pytest.mark.parametrize("radius,sigma_spatial,sigma_range", CV2_CASES)
def test_latent_filter_matches_opencv(radius, sigma_spatial, sigma_range):
    rng = np.random.default_rng(radius)
    x = rng.normal(size=(2, 17, 12, 4)).astype(np.float32)
    ours = np.asarray(bilateral_filter_latent(x, radius=radius, sigma_spatial=sigma_spatial,
                                              sigma_range=sigma_range, window="disk"))
    ref = _cv2_reference(x, radius, sigma_spatial, sigma_range)
    d = float(np.abs(ours - ref).max())
    print(f"[bilateral] cv2.bilateralFilter r={radius} ss={sigma_spatial} sr={sigma_range}: max abs diff {d:.2e}")
    assert d <= 1e-5


@pytest.mark.parametrize("window", ["square", "disk"])
def test_latent_filter_matches_direct_evaluation(window):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 9, 11, 2)).astype(np.float32)
    ours = bilateral_filter_latent(x, radius=2, sigma_spatial=1.3, sigma_range=0.4, window=window)
    np.testing.assert_allclose(np.asarray(ours), _loop_reference(x, 2, 1.3, 0.4, window), atol=1e-5, rtol=0)
    # (H, W, C) input is one image
    one = bilateral_filter_latent(x[1], radius=2, sigma_spatial=1.3, sigma_range=0.4, window=window)
    np.testing.assert_allclose(np.asarray(one), np.asarray(ours[1]), atol=1e-6)


def test_relative_range_uses_each_images_channel_std():
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(2, 8, 8, 3)) * np.array([0.1, 1.0, 5.0])).astype(np.float32)
    rel = 0.5
    ours = bilateral_filter_latent(x, radius=2, sigma_range=rel, range_mode="relative")
    std = x.astype(np.float64).std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(ours), _loop_reference(x, 2, 1.0, rel * std), atol=1e-5, rtol=1e-5)
    # scale equivariance: relative mode commutes with scaling the latent
    np.testing.assert_allclose(np.asarray(bilateral_filter_latent(3 * x, radius=2, sigma_range=rel,
                                                                  range_mode="relative")),
                               3 * np.asarray(ours), atol=1e-4, rtol=1e-5)


# ---------------------------------------------------------------- properties (hypothesis)

# few distinct (shape, radius, window, mode) combinations: each is one compiled program
SHAPES = [(2, 7, 5, 3)]
images = st.tuples(st.sampled_from(SHAPES), st.integers(0, 2**31 - 1), st.floats(0.05, 20.0))


def _draw_image(spec):
    shape, seed, scale = spec
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * scale
    if seed % 3 == 0:  # piecewise-constant images with edges, too
        x = np.round(x / scale) * scale
    return x.astype(np.float32)


@HYP
@given(shape=st.sampled_from(SHAPES), value=st.floats(-1e3, 1e3, allow_nan=False, width=32),
       radius=st.integers(1, 2), ss=st.floats(0.3, 4.0), sr=st.floats(1e-3, 1e3),
       mode=st.sampled_from(["absolute", "relative"]))
def test_constant_image_is_unchanged(shape, value, radius, ss, sr, mode):
    x = np.full(shape, value, np.float32)
    out = bilateral_filter_latent(x, radius=radius, sigma_spatial=ss, sigma_range=sr, range_mode=mode)
    np.testing.assert_array_equal(np.asarray(out), x)


@HYP
@given(spec=images, radius=st.integers(1, 2), ss=st.floats(0.3, 4.0), sr=st.floats(1e-2, 1e2),
       window=st.sampled_from(["square", "disk"]))
def test_output_is_within_neighbourhood_min_max(spec, radius, ss, sr, window):
    x = _draw_image(spec)
    out = np.asarray(bilateral_filter_latent(x, radius=radius, sigma_spatial=ss, sigma_range=sr, window=window))
    r = radius
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    H, W = x.shape[1:3]
    nbs = np.stack([xp[:, r + dy: r + dy + H, r + dx: r + dx + W, :]
                    for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                    if window == "square" or dy * dy + dx * dx <= r * r])
    lo, hi = nbs.min(0), nbs.max(0)
    tol = 1e-6 * (1 + np.abs(x).max())
    assert np.all(out >= lo - tol) and np.all(out <= hi + tol)


@HYP
@given(spec=images, radius=st.integers(1, 2), ss=st.floats(0.3, 4.0))
def test_infinite_range_sigma_is_gaussian_blur(spec, radius, ss):
    x = _draw_image(spec)
    blur = np.asarray(gaussian_blur_latent(x, radius=radius, sigma_spatial=ss))
    tol = 1e-5 * (1 + np.abs(x).max())
    out_inf = np.asarray(bilateral_filter_latent(x, radius=radius, sigma_spatial=ss, sigma_range=np.inf))
    np.testing.assert_allclose(out_inf, blur, atol=tol, rtol=0)
    # the limit: a range sigma far above the data's spread converges to the same blur
    spread = float(x.max() - x.min()) + 1e-3
    out_big = np.asarray(bilateral_filter_latent(x, radius=radius, sigma_spatial=ss, sigma_range=1e4 * spread))
    np.testing.assert_allclose(out_big, blur, atol=1e-4 * (1 + np.abs(x).max()), rtol=0)


# ---------------------------------------------------------------- features (frames) form


def _authors_style_frames_reference(x, kernel_size, sigma_spatial, sigma_range):
    """torch, frame axis last, reflect padding, per-element range weights, weights normalised
    to sum one: the definition of the authors' 1-D filter (their hook permutes (B, N, d) to
    (N, d, B))."""
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 0, -1))).reshape(1, -1, x.shape[0])
    h = kernel_size // 2
    win = F.pad(t, (h, h), mode="reflect").unfold(2, kernel_size, 1)
    k = torch.arange(-h, h + 1, dtype=t.dtype)
    w = torch.exp(-k**2 / (2 * sigma_spatial**2)) * torch.exp(-(win - t.unsqueeze(-1)) ** 2 / (2 * sigma_range**2))
    out = (w / w.sum(-1, keepdim=True) * win).sum(-1)
    return np.moveaxis(out.reshape(*x.shape[1:], x.shape[0]).numpy(), -1, 0)


@pytest.mark.parametrize("T,k,ss,sr", [(5, 5, 1.0, 1.0), (8, 3, 0.7, 0.3), (6, 5, 2.0, 5.0), (9, 7, 1.5, 0.5)])
def test_frames_filter_matches_reference(T, k, ss, sr):
    rng = np.random.default_rng(T)
    x = rng.normal(size=(T, 16, 6)).astype(np.float32)  # (frames, tokens, channels)
    ours = np.asarray(bilateral_filter_frames(x, kernel_size=k, sigma_spatial=ss, sigma_range=sr))
    ref = _authors_style_frames_reference(x, k, ss, sr)
    d = float(np.abs(ours - ref).max())
    print(f"[bilateral] frames filter T={T} k={k}: max abs diff vs torch reference {d:.2e}")
    assert d <= 1e-5


@HYP
@given(T=st.sampled_from([1, 2, 5]), seed=st.integers(0, 2**31 - 1), k=st.sampled_from([3, 5]),
       sr=st.floats(0.05, 10.0))
def test_frames_filter_properties(T, seed, k, sr):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, 4, 3)).astype(np.float32)
    out = np.asarray(bilateral_filter_frames(x, kernel_size=k, sigma_range=sr))
    assert out.shape == x.shape
    lo, hi = x.min(0), x.max(0)  # reflect padding only repeats frames of the clip
    assert np.all(out >= lo - 1e-5) and np.all(out <= hi + 1e-5)
    c = np.full_like(x, 0.37)
    np.testing.assert_array_equal(np.asarray(bilateral_filter_frames(c, kernel_size=k, sigma_range=sr)), c)
    if T == 1:
        np.testing.assert_array_equal(out, x)


# ---------------------------------------------------------------- input checks


def test_input_checks():
    x = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="rank"):
        bilateral_filter_latent(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="rank"):
        bilateral_filter_latent(np.zeros((1, 2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="radius"):
        bilateral_filter_latent(x, radius=0)
    with pytest.raises(ValueError, match="radius"):
        bilateral_filter_latent(x, radius=1.5)
    with pytest.raises(ValueError, match="sigma_spatial"):
        bilateral_filter_latent(x, sigma_spatial=0.0)
    with pytest.raises(ValueError, match="sigma_spatial"):
        bilateral_filter_latent(x, sigma_spatial=np.inf)
    with pytest.raises(ValueError, match="sigma_range"):
        bilateral_filter_latent(x, sigma_range=-1.0)
    with pytest.raises(ValueError, match="sigma_range"):
        bilateral_filter_latent(x, sigma_range=np.nan)
    with pytest.raises(ValueError, match="range_mode"):
        bilateral_filter_latent(x, range_mode="percent")
    bad = x.copy()
    bad[0, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        bilateral_filter_latent(bad)
    bad[0, 1, 1, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        bilateral_filter_frames(bad)
    with pytest.raises(ValueError, match="kernel_size"):
        bilateral_filter_frames(x, kernel_size=4)
    with pytest.raises(ValueError, match="kernel_size"):
        bilateral_filter_frames(x, kernel_size=1)
    with pytest.raises(ValueError, match="sigma_range"):
        bilateral_filter_frames(x, sigma_range=0)
    with pytest.raises(ValueError, match="rank"):
        bilateral_filter_frames(np.float32(1.0))
    # extreme but valid sigmas: a vanishing range/spatial sigma is the identity, not nan
    rng = np.random.default_rng(0)
    y = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(bilateral_filter_latent(y, sigma_range=1e-30)), y)
    np.testing.assert_array_equal(np.asarray(bilateral_filter_latent(y, sigma_spatial=1e-30)), y)
    np.testing.assert_array_equal(np.asarray(bilateral_filter_frames(y, sigma_range=1e-30)), y)
    # dtype is kept
    assert bilateral_filter_latent(jnp.zeros((4, 4, 2), jnp.bfloat16)).dtype == jnp.bfloat16
