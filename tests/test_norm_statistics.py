"""GroupNorm / LayerNorm variance forms (``layers.norm_statistics``): the one-pass form, a speed
lever of bench/levers.py, against PyTorch's kernels; the default stays the two-pass form."""

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from jaxvedit.models import layers
from jaxvedit.models.layers import GroupNorm, LayerNorm, Precision, norm_statistics


def _group_norm(groups=8, channels=32):
    gn = GroupNorm(groups, channels, 1e-5, Precision(jnp.float32, jnp.float32))
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal(channels).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    gn.scale.value, gn.bias.value = jnp.asarray(w), jnp.asarray(b)
    ref = torch.nn.GroupNorm(groups, channels, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b))
    return gn, ref


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_one_pass_group_norm_matches_torch(offset):
    gn, ref = _group_norm()
    x = (np.random.default_rng(1).standard_normal((2, 16, 16, 32)) * 2 + offset).astype(np.float32)
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    with norm_statistics("one-pass"):
        got = np.asarray(gn(jnp.asarray(x)))
    with norm_statistics("two-pass"):
        two = np.asarray(gn(jnp.asarray(x)))
    assert np.abs(got - want).max() <= 2e-5
    assert np.abs(two - want).max() <= 2e-5
    assert not np.array_equal(got, two)  # a different computation, not the same one renamed


def test_one_pass_layer_norm_matches_torch():
    ln = LayerNorm(48, 1e-5, Precision(jnp.float32, jnp.float32))
    ref = torch.nn.LayerNorm(48, eps=1e-5)
    x = np.random.default_rng(2).standard_normal((3, 7, 48)).astype(np.float32) + 1.0
    want = ref(torch.from_numpy(x)).detach().numpy()
    with norm_statistics("one-pass"):
        got = np.asarray(ln(jnp.asarray(x)))
    assert np.abs(got - want).max() <= 2e-5


def test_default_is_two_pass(monkeypatch):
    gn, _ = _group_norm()
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 8, 8, 32)).astype(np.float32) + 5)
    monkeypatch.delenv("JAXVEDIT_NORM_STATS", raising=False)
    default = np.asarray(gn(x))
    with norm_statistics("two-pass"):
        two = np.asarray(gn(x))
    np.testing.assert_array_equal(default, two)
    monkeypatch.setenv("JAXVEDIT_NORM_STATS", "one-pass")
    with norm_statistics("one-pass"):
        one = np.asarray(gn(x))
    np.testing.assert_array_equal(np.asarray(gn(x)), one)  # the environment sets the default


def test_bad_modes_are_named(monkeypatch):
    with pytest.raises(ValueError, match="norm statistics 'fast'"):
        with norm_statistics("fast"):
            pass
    gn, _ = _group_norm()
    monkeypatch.setenv("JAXVEDIT_NORM_STATS", "welford")
    with pytest.raises(ValueError, match="JAXVEDIT_NORM_STATS='welford'"):
        gn(jnp.zeros((1, 4, 4, 32)))
    assert layers.NORM_STATISTICS == ("two-pass", "one-pass")
