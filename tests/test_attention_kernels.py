"""The Pallas attention kernels of ``jaxvedit.models.attention_kernels`` (issue 15's attention
levers) on CPU: the Triton kernel in Pallas interpret mode against a float64 NumPy reference
(outputs and gradients, head dim 40, a non-power-of-two sequence), the Mosaic GPU kernel's wrapper
(prescale, head padding, float16) with the kernel swapped for the module's own unscaled
reference (Mosaic GPU kernels do not run in interpret mode: its interpreter lacks ``run_state``),
the applicability rules, the dispatch through ``layers.attention`` and the errors."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jaxvedit.models import attention_kernels as ak
from jaxvedit.models import layers

INTERPRET = ak.TritonConfig(block_q=32, block_k=32, block_q_dkv=32, block_kv_dkv=32, block_q_dq=32,
                            block_kv_dq=32, interpret=True)


def _qkvw(b, lq, lk, h, d, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in
            ((b, lq, h, d), (b, lk, h, d), (b, lk, h, d), (b, lq, h, d))]


def _reference(q, k, v, w):
    """float64 attention (scale D**-0.5) and the gradients of sum(w * out), by hand."""
    q, k, v, w = (np.asarray(a, np.float64).transpose(0, 2, 1, 3) for a in (q, k, v, w))  # (B,h,L,D)
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    dv = p.swapaxes(-1, -2) @ w
    dp = w @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(q.shape[-1])
    dq, dk = ds @ k, ds.swapaxes(-1, -2) @ q
    return [a.transpose(0, 2, 1, 3) for a in (out, dq, dk, dv)]


def _out_and_grads(fn, q, k, v, w):
    out, vjp = jax.vjp(fn, *(jnp.asarray(a) for a in (q, k, v)))
    return [np.asarray(a, np.float64) for a in (out, *vjp(jnp.asarray(w, out.dtype)))]


def _max_rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("shape,pad_heads", [((1, 64, 2, 40), False), ((1, 64, 1, 40), True),
                                             ((1, 96, 1, 16), False)])  # SD1.5's 40; L=96: 3 blocks
def test_triton_kernel_matches_reference(shape, pad_heads):
    b, lq, h, d = shape
    q, k, v, w = _qkvw(b, lq, lq, h, d)
    config = ak.dataclasses.replace(INTERPRET, pad_heads=pad_heads)
    assert ak.why_not("pallas-triton", q.shape, k.shape, jnp.bfloat16, config=config) is None
    got = _out_and_grads(lambda *a: ak.triton_attention(*a, config), q, k, v, w)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, _reference(q, k, v, w)):
        assert _max_rel(g, r) < 1e-5, name


def test_mosaic_wrapper_prescales_pads_and_casts(monkeypatch):
    from jax.experimental.pallas.ops.gpu import attention_mgpu

    seen = {}

    def unscaled_reference(q, k, v, tuning):  # the kernel's contract: softmax(q k^T) v, no scale
        seen.update(shape=q.shape, dtype=q.dtype, tuning=tuning)
        return attention_mgpu.attention_reference(q, k, v).astype(q.dtype)

    monkeypatch.setattr(ak, "_mosaic_kernel", lambda: (unscaled_reference, attention_mgpu.TuningConfig))
    q, k, v, w = _qkvw(2, 128, 128, 2, 40, seed=1)
    config = ak.MosaicConfig()
    assert ak.why_not("mosaic", q.shape, k.shape, jnp.bfloat16, backend="gpu", device_kind="9.0",
                      config=config) is None
    got = _out_and_grads(lambda *a: ak.mosaic_attention(*a, config), q, k, v, w)
    assert seen["shape"] == (2, 128, 2, 64) and seen["dtype"] == jnp.float16
    assert seen["tuning"].compute_wgs_bwd == 2 and seen["tuning"].block_kv == 128
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, _reference(q, k, v, w)):
        assert _max_rel(g, r) < 3e-3, name  # float16 inputs: ~1e-3
    # without the prescale the result would be the unscaled softmax: far off
    unscaled = np.asarray(attention_mgpu.attention_reference(*(jnp.asarray(a) for a in (q, k, v))))
    assert _max_rel(unscaled, _reference(q, k, v, w)[0]) > 0.05


def test_applicability_rules():
    gpu = {"backend": "gpu", "device_kind": "9.0"}
    tri = ak.TritonConfig()
    bf16 = jnp.bfloat16
    for shape in [(4, 4096, 8, 40), (16, 1024, 8, 80), (4, 256, 8, 64)]:  # SD1.5 self-attention
        assert ak.why_not("pallas-triton", shape, shape, bf16, config=tri, **gpu) is None
        assert ak.why_not("mosaic", shape, shape, bf16, config=ak.MosaicConfig(), **gpu) is None
    sd_cross = ((4, 4096, 8, 40), (4, 77, 8, 40))
    assert "sequence 77" in ak.why_not("pallas-triton", *sd_cross, bf16, config=tri, **gpu)
    assert "multiple of block_kv" in ak.why_not("mosaic", *sd_cross, bf16, config=ak.MosaicConfig(), **gpu)
    self160 = (4, 256, 8, 160)
    assert "head dim 160" in ak.why_not("pallas-triton", self160, self160, bf16, config=tri, **gpu)
    assert "padded to 192" in ak.why_not("mosaic", self160, self160, bf16, config=ak.MosaicConfig(), **gpu)
    assert ak.why_not("mosaic", self160, self160, bf16, config=ak.MosaicConfig(max_head_dim=256), **gpu) is None
    assert "backward" in ak.why_not("pallas-triton", (1, 256, 8, 40), (1, 512, 8, 40), bf16, config=tri,
                                    **gpu)
    s = (4, 4096, 8, 40)
    assert "float32" in ak.why_not("pallas-triton", s, s, jnp.float32, config=tri, **gpu)
    assert "kv_length" in ak.why_not("mosaic", s, s, bf16, kv_length=10, config=ak.MosaicConfig(), **gpu)
    assert "cpu backend" in ak.why_not("pallas-triton", s, s, bf16, config=tri, backend="cpu")
    assert "Hopper" in ak.why_not("mosaic", s, s, bf16, config=ak.MosaicConfig(), backend="cpu")
    assert "capability 8.0" in ak.why_not("mosaic", s, s, bf16, config=ak.MosaicConfig(), backend="gpu",
                                          device_kind="8.0")


def test_chooser_and_env_errors(monkeypatch):
    monkeypatch.delenv("JAXVEDIT_ATTENTION", raising=False)
    default = layers.choose_attention_implementation(None, jnp.bfloat16, 40)  # None on CPU
    for kernel in ak.KERNELS:
        monkeypatch.setenv("JAXVEDIT_ATTENTION", kernel)
        assert layers.choose_attention_implementation(None, jnp.bfloat16, 40) == kernel
        assert layers.choose_attention_implementation("xla", jnp.bfloat16, 40) == "xla"  # asked wins
    assert layers.choose_attention_implementation("default", jnp.bfloat16, 40) == default
    monkeypatch.setenv("JAXVEDIT_ATTENTION", "triton")
    with pytest.raises(ValueError, match="JAXVEDIT_ATTENTION='triton': choose from"):
        layers.choose_attention_implementation(None, jnp.bfloat16, 40)
    monkeypatch.setenv("JAXVEDIT_ATTENTION_OPTIONS", "block_q=64, num_warps=8,interpret=1,pad_heads=1")
    assert ak.parse_options("pallas-triton") == ak.TritonConfig(block_q=64, num_warps=8, interpret=True,
                                                                pad_heads=True)
    for bad, match in [("blockq=64", "name=value with a name"), ("block_q", "name=value"),
                       ("block_q=big", "whole number"), ("block_q=0", "must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            ak.parse_options("pallas-triton", bad)
    with pytest.raises(ValueError, match="dtype='int8'"):
        ak.parse_options("mosaic", "dtype=int8")
    with pytest.raises(ValueError, match="attention kernel 'flash'"):
        ak.parse_options("flash", "")


def test_layers_dispatch_uses_kernel_where_it_applies(monkeypatch):
    """Through ``layers.attention`` with ``JAXVEDIT_ATTENTION=pallas-triton`` (interpret mode): the
    self-attention call runs the Pallas kernel and matches the reference; the 77-key cross
    attention and a float32 call fall back to the default path, bit-identical to it."""
    heads, d = 2, 40
    q, k, v, w = _qkvw(1, 64, 64, heads, d, seed=2)
    flat = [jnp.asarray(a.reshape(1, a.shape[1], heads * d), jnp.bfloat16) for a in (q, k, v)]
    _, kc, vc, _ = _qkvw(1, 64, 77, heads, d, seed=3)
    cross = [flat[0], *(jnp.asarray(a.reshape(1, 77, heads * d), jnp.bfloat16) for a in (kc, vc))]
    f = lambda *a: layers.attention(*a, heads)  # noqa: E731
    monkeypatch.delenv("JAXVEDIT_ATTENTION", raising=False)
    base_cross = np.asarray(jax.jit(f)(*cross), np.float32)
    base_f32 = np.asarray(jax.jit(f)(*(a.astype(jnp.float32) for a in cross)))
    monkeypatch.setenv("JAXVEDIT_ATTENTION", "pallas-triton")
    monkeypatch.setenv("JAXVEDIT_ATTENTION_OPTIONS", "block_q=32,block_k=32,block_q_dkv=32,"
                       "block_kv_dkv=32,block_q_dq=32,block_kv_dq=32,interpret=1")
    assert "pallas_call" in str(jax.make_jaxpr(f)(*flat))
    assert "pallas_call" not in str(jax.make_jaxpr(f)(*cross))
    got = np.asarray(jax.jit(f)(*flat), np.float64).reshape(q.shape)
    want = _reference(*(np.asarray(a, np.float32).reshape(q.shape) for a in flat), w)[0]
    assert _max_rel(got, want) < 1e-2  # bf16 output
    np.testing.assert_array_equal(np.asarray(jax.jit(f)(*cross), np.float32), base_cross)
    np.testing.assert_array_equal(np.asarray(jax.jit(f)(*(a.astype(jnp.float32) for a in cross))), base_f32)


def test_bench_tiny_runs_checks_and_reports(tmp_path, monkeypatch):
    """bench/attention_kernels.py --tiny (CPU): the Triton lever runs in interpret mode and agrees
    with XLA float32 as closely as XLA's own bf16 attention; the rest is reported n/a, with why."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from attention_kernels import main  # noqa: E402  (bench/attention_kernels.py)

    monkeypatch.setenv("OUT", str(tmp_path))
    rows = main(["--tiny", "--clips", "1", "--variants", "xla", "cudnn", "pallas-triton", "mosaic",
                 "--shapes", "self-d40", "cross-d40", "--compile-threads", "2"])
    by = {(r["shape"], r["variant"]): r for r in rows}
    assert len(by) == 8
    assert by["self-d40", "pallas-triton"]["status"] == "ok" and by["cross-d40", "xla"]["status"] == "ok"
    assert "sequence 77" in by["cross-d40", "pallas-triton"]["status"]
    assert by["self-d40", "mosaic"]["status"].startswith("n/a: cpu backend")
    assert by["self-d40", "cudnn"]["status"].startswith("n/a: cuDNN")
    xla, tri = by["self-d40", "xla"], by["self-d40", "pallas-triton"]
    for key in ("err_out", "err_dq", "err_dk", "err_dv"):
        assert 0 < tri[key] < max(3 * xla[key], 1e-2), key
    assert tri["fwd_ms"] > 0 and tri["fwd_bwd_ms"] > 0 and tri["speedup_fwd_bwd"] > 0
    saved = json.loads((tmp_path / "attention_kernels_tiny.json").read_text())
    assert saved["tiny"] and len(saved["rows"]) == 8
