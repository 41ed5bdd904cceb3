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
