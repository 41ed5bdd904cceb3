"""The world benchmark's rows of other edit methods on one reduced-suite video (CPU, shipped world
models): TokenFlow, the depth ControlNet and LoRA-Edit each edit, are scored, and do what their
method says (the ControlNet changes the edit; LoRA-Edit keeps the region its mask keeps)."""

import json

import numpy as np
import pytest

from jaxvedit.world.bench import BenchConfig, merge_results, run_bench, suite_edits
from jaxvedit.world.bench_rows import lora_edit_keep_mask
from jaxvedit.world.render import render


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-bench-rows")
    cfg = BenchConfig(suite="world-mini", videos=1, steps=3, lora_edit_steps=2,
                      rows=("plain", "controlnet", "tokenflow", "lora-edit"),
                      output_dir=str(out), progress=False, workers=1)
    return out, run_bench(cfg)


def test_every_row_edits_and_is_scored(report):
    _, rep = report
    for name in ("controlnet", "tokenflow", "lora-edit"):
        row = rep["rows"][name]
        assert len(row["edits"]) == 3 and all(np.isfinite(e["psnr"]) for e in row["edits"])
    plain = [e["psnr"] for e in rep["rows"]["plain"]["edits"]]
    ctl = [e["psnr"] for e in rep["rows"]["controlnet"]["edits"]]
    assert not np.allclose(plain, ctl, rtol=0, atol=1e-3)  # the residuals reach the UNet


def test_lora_edit_keeps_what_its_mask_keeps(report):
    _, rep = report
    (spec, edits), = suite_edits(1, 8)
    src = render(spec)
    for k, e in enumerate(edits):
        keep = lora_edit_keep_mask(src, render(e.target), e.kind)
        assert keep[0].any() and (~keep).any()
        if e.kind == "background":  # the objects are kept, the background regenerated
            assert not keep[src.background_mask].any()
        else:  # the subject's region is regenerated, the rest kept
            assert not keep[render(e.target).masks[:, 0] > 0].any() and not keep[src.masks[:, 0] > 0].any()
    # kept pixels stay close to the source (blended back after every step; VAE round trip)
    bg = rep["rows"]["lora-edit"]["summary"]["background_psnr"]
    assert bg > 24, bg


def test_merge_joins_rows_of_one_run_and_refuses_another(report, tmp_path):
    out, rep = report
    full = json.loads((out / "results.json").read_text())
    a = {**full, "rows": {k: v for k, v in full["rows"].items() if k in ("plain", "controlnet")}}
    b = {**full, "rows": {k: v for k, v in full["rows"].items() if k in ("tokenflow", "lora-edit")}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    merged = merge_results([tmp_path / "a.json", tmp_path / "b.json"])
    assert list(merged["rows"]) == ["plain", "controlnet", "tokenflow", "lora-edit"]
    assert merged["rows"]["lora-edit"]["summary"]["psnr"] == pytest.approx(
        rep["rows"]["lora-edit"]["summary"]["psnr"])
    (tmp_path / "c.json").write_text(json.dumps({**b, "steps": 50}))
    with pytest.raises(ValueError, match="another run"):
        merge_results([tmp_path / "a.json", tmp_path / "c.json"])


class _CellEditor:
    """A stand-in VAE: a latent cell is the mean colour of an 8x8 pixel block (+ a constant
    channel), decoding repeats each cell; enough to check what the composite puts where."""

    batch_frames = 8

    def encode_frames(self, frames):
        f = np.asarray(frames, np.float32)
        t, h, w, _ = f.shape
        cells = f.reshape(t, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4))
        return np.concatenate([cells, np.ones(cells.shape[:3] + (1,), np.float32)], axis=-1)

    def decode_latents(self, z):
        return np.clip(np.repeat(np.repeat(z[..., :3], 8, axis=1), 8, axis=2), 0, 255).round().astype(np.uint8)


def test_oracle_in_the_lora_edit_mask_composes_source_and_oracle_by_the_mask():
    from jaxvedit.diffusion.inpaint import resize_mask_nearest
    from jaxvedit.world.bench import EDIT_KINDS
    from jaxvedit.world.bench_rows import lora_edit_oracle

    (spec, edits), = suite_edits(1, 4)
    src = render(spec)
    tgts = [render(e.target) for e in edits]
    ed = _CellEditor()
    out = lora_edit_oracle(ed, src.frames[None], [src], [tgts], tuple(e.kind for e in edits))
    assert out.shape == (1, 3) + src.frames.shape and out.dtype == np.uint8
    assert tuple(e.kind for e in edits) == EDIT_KINDS
    s_lat = ed.encode_frames(src.frames)
    for k, (e, tgt) in enumerate(zip(edits, tgts)):
        t_lat = ed.encode_frames(tgt.frames)
        keep = lora_edit_keep_mask(src, tgt, e.kind)
        regen = resize_mask_nearest((~keep).astype(np.float32)[..., None], s_lat.shape[1:3])[..., 0] > 0
        regen[0] = True  # frame 0: the edited (oracle) frame, whole
        assert regen[1:].any() and (~regen[1:]).any()
        want = np.where(regen[..., None], t_lat, s_lat)
        np.testing.assert_array_equal(out[0, k], ed.decode_latents(want))
