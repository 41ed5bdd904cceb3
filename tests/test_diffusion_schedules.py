"""Noise schedules and timestep tables equal diffusers' DDIMScheduler / DDIMInverseScheduler."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

import jax.numpy as jnp

from jaxvedit.diffusion import (
    SD15_SCHEDULER_CONFIG,
    NoiseSchedule,
    add_noise,
    ddim_inverse_timesteps,
    ddim_timesteps,
    load_schedule,
    sd15_schedule,
    torch_linspace_float32,
)

CONFIGS = {
    "sd15": dict(SD15_SCHEDULER_CONFIG),
    "linear-default": {},  # DDIMScheduler defaults: linear 1e-4..0.02, clip, set_alpha_to_one
    "cosine": dict(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=True, num_train_timesteps=1000),
    "scaled-zero-snr": dict(SD15_SCHEDULER_CONFIG, rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    "short": dict(beta_schedule="scaled_linear", num_train_timesteps=97, beta_start=0.001, beta_end=0.03),
}


def test_torch_linspace_float32_is_bit_exact():
    for a, b, n in [(0.00085**0.5, 0.012**0.5, 1000), (1e-4, 0.02, 1000), (0.3, 0.9, 4097), (0.1, 0.7, 2),
                    (2.0, -1.0, 33), (0.5, 0.5, 7)]:
        ref = torch.linspace(a, b, n, dtype=torch.float32).numpy()
        np.testing.assert_array_equal(torch_linspace_float32(a, b, n), ref)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_schedule_tables_bit_exact(name):
    cfg = CONFIGS[name]
    ref = DDIMScheduler.from_config(cfg)
    ours = NoiseSchedule.from_config(cfg)
    if cfg.get("rescale_betas_zero_snr"):
        # torch's vectorised float32 sqrt (SLEEF, 0.5001 ulp) is not always correctly rounded:
        # a few ulps in alphas_cumprod, amplified in betas = 1 - alphas by cancellation
        np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=1e-9)
        return
    np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    assert float(ours.final_alpha_cumprod) == float(ref.final_alpha_cumprod)
    inv = DDIMInverseScheduler.from_config(cfg)
    assert float(ours.final_alpha_cumprod) == float(inv.initial_alpha_cumprod)


def test_sd15_constants():
    s = sd15_schedule()
    b = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(s.betas, b, rtol=2e-6)
    assert s.steps_offset == 1 and not s.set_alpha_to_one and s.timestep_spacing == "leading"
    assert float(s.final_alpha_cumprod) == float(s.alphas_cumprod[0])
    assert s.timesteps(50)[0] == 981 and s.timesteps(50)[-1] == 1
    assert list(s.inverse_timesteps(50)[:3]) == [1, 21, 41]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_set_timesteps(spacing, offset):
    for T in (1000, 97):
        for n in sorted({n for n in (1, 3, 7, 10, 25, 50, 333, T) if n <= T}):
            ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
            ref.set_timesteps(n)
            np.testing.assert_array_equal(ddim_timesteps(n, T, spacing, offset), ref.timesteps.numpy())
            if spacing != "linspace":  # DDIMInverseScheduler rejects linspace
                inv = DDIMInverseScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
                inv.set_timesteps(n)
                np.testing.assert_array_equal(ddim_inverse_timesteps(n, T, spacing, offset), inv.timesteps.numpy())


def test_inversion_table_reverses_sampling_table():
    s = sd15_schedule()
    for spacing in ("leading", "trailing"):
        ss = s.replace(timestep_spacing=spacing)
        t_s, a_t, a_prev = ss.sampling_table(50)
        t_i, a_from, a_to = ss.inversion_table(50)
        np.testing.assert_array_equal(t_i, t_s[::-1])
        np.testing.assert_array_equal(a_from, a_prev[::-1])
        np.testing.assert_array_equal(a_to, a_t[::-1])


def test_from_config_path_and_folder(tmp_path):
    (tmp_path / "scheduler").mkdir()
    p = tmp_path / "scheduler" / "scheduler_config.json"
    p.write_text(json.dumps(SD15_SCHEDULER_CONFIG))
    a = load_schedule(p)
    b = load_schedule(tmp_path)  # model folder: finds scheduler/scheduler_config.json
    np.testing.assert_array_equal(a.alphas_cumprod, sd15_schedule().alphas_cumprod)
    np.testing.assert_array_equal(b.alphas_cumprod, a.alphas_cumprod)
    with pytest.raises(FileNotFoundError, match="scheduler config"):
        load_schedule(tmp_path / "nope.json")


def test_config_errors():
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule.from_config({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="timestep_spacing"):
        NoiseSchedule.from_config({"timestep_spacing": "middle"})
    with pytest.raises(ValueError, match="thresholding"):
        NoiseSchedule.from_config({"thresholding": True})
    with pytest.raises(ValueError, match="num_inference_steps"):
        sd15_schedule().timesteps(1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sd15_schedule().timesteps(0)


def test_add_noise_matches_diffusers():
    cfg = SD15_SCHEDULER_CONFIG
    ref = DDIMScheduler.from_config(cfg)
    s = NoiseSchedule.from_config(cfg)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    nz = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 500, 999])
    r = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(nz), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(np.asarray(add_noise(s, jnp.asarray(x0), jnp.asarray(nz), jnp.asarray(t))), r,
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(s.add_noise(x0, nz, t)), r, atol=1e-6, rtol=0)
    # scalar timestep broadcasts over the batch
    r1 = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(nz), torch.tensor(321)).numpy()
    np.testing.assert_allclose(np.asarray(add_noise(s, x0, nz, 321)), r1, atol=1e-6, rtol=0)
