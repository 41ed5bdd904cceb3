"""python -m jaxvedit.compare on the tiny model: results.json / results.md / strip.png / videos,
metric columns, errors; the reconstruction helper."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from jaxvedit.adapters import LoRAConfig, apply_lora, save_adapter
from jaxvedit.compare import CompareConfig, main, run_compare
from jaxvedit.data.video import probe_video, synthetic_frames, write_video
from jaxvedit.editing import reconstruction_metrics
from jaxvedit.models import load_unet
from jaxvedit.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    tiny = make_tiny_model(root / "tiny")
    frames, caption = synthetic_frames(5, 64, seed=4)
    write_video(root / "clip.mp4", frames, 10)
    lora = apply_lora(load_unet(tiny), LoRAConfig(rank=2, targets="all"), nnx.Rngs(0)).lora
    rng = np.random.default_rng(0)
    for layer in lora.layers:
        layer.lora_B.value = 0.5 * rng.standard_normal(layer.lora_B.value.shape).astype(np.float32)
    save_adapter(root / "adapter" / "lora", lora)
    return root, tiny, caption


def test_compare_writes_table_and_strip(setup):
    root, tiny, caption = setup
    cfg = CompareConfig(video=str(root / "clip.mp4"), model=str(tiny), adapter=str(root / "adapter"),
                        prompt="a green circle", source_prompt=caption, resolution=64, steps=3,
                        guidance_scale=3.0, lora_tau=0.0,
                        variants=("plain", "bilateral-latent", "adapter"), strip_frames=3,
                        output_dir=str(root / "out"), progress=False)
    results = run_compare(cfg)
    out = root / "out"
    data = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in data["variants"]] == ["plain", "bilateral-latent", "adapter"]
    for r in data["variants"]:
        for k in ("flicker", "warp_error", "recon_psnr", "recon_ssim", "clip_frame_consistency"):
            assert np.isfinite(r[k]), (r["variant"], k)
        assert 0 <= r["flicker"] <= 1 and -1 <= r["recon_ssim"] <= 1
        assert probe_video(out / "videos" / f"{r['variant'].replace('+', '_')}.mp4").num_frames == 5
    # the filter and the adapter change the edit
    flick = {r["variant"]: r["flicker"] for r in data["variants"]}
    assert len(set(flick.values())) == 3
    src = data["source"]
    assert src["flicker"] > 0 and np.isfinite(src["warp_error"]) and np.isfinite(src["vae_psnr"])
    assert results["frames"] == 5 and results["fps"] == 10.0
    assert "clip_text_alignment" in " ".join(data["notes"])  # tiny text encoder: no projection
    md = (out / "results.md").read_text()
    assert "| plain | no | none |" in md and "| adapter | yes | none |" in md
    assert "warp error" in md and "inversion recon PSNR" in md
    import matplotlib.image

    img = matplotlib.image.imread(out / "strip.png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_compare_errors(setup, tmp_path, capsys):
    root, tiny, _ = setup
    with pytest.raises(ValueError, match="unknown variant"):
        CompareConfig(variants=("sharpen",))
    base = ["--video", root / "clip.mp4", "--model", tiny, "--prompt", "a cat", "--resolution", 64]
    rc = main([str(a) for a in base + ["--variants", "adapter", "--output-dir", tmp_path / "o"]])
    assert rc == 2 and "need --adapter" in capsys.readouterr().err
    rc = main([str(a) for a in base + ["--output-dir", tmp_path / "missing" / "o"]])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_reconstruction_metrics_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    got = reconstruction_metrics(a, b)
    want_psnr = np.mean([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)])
    want_ssim = np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)])
    assert got["psnr"] == pytest.approx(want_psnr, abs=1e-9)
    assert got["ssim"] == pytest.approx(want_ssim, abs=1e-9)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_metrics(a, b[:2])


def test_compare_demo_runs_from_an_empty_folder(tmp_path):
    """The embedded demo (no --video / --model) works in a fresh folder: it creates runs/ itself."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "jaxvedit.compare", "--no-progress", "--steps", "3",
                           "--demo-adapter-steps", "1", "--variants", "plain", "adapter"],
                          cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "compare-demo"
    for name in ("results.json", "results.md", "strip.png"):
        assert (out / name).is_file(), name
    assert "real weights" in proc.stderr
