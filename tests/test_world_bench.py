"""The world benchmark on its reduced suite (CPU, shipped world model and adapter): every table
entry comes from the run; the reference rows score as their definition says; bad input is named."""

import json

import numpy as np
import pytest

from jaxvedit.world.bench import BenchConfig, results_markdown, run_bench, suite_edits
from jaxvedit.world.metrics import score_edit
from jaxvedit.world.render import render


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-bench")
    cfg = BenchConfig(suite="world-mini", rows=("source (no edit)", "oracle through the VAE", "plain",
                                                "adapter"),
                      output_dir=str(out), progress=False, workers=1)
    return out, run_bench(cfg)


def test_table_comes_from_the_run(report):
    out, rep = report
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] and list(saved["rows"]) == list(rep["rows"])
    assert (out / "results.md").read_text() == results_markdown(rep)
    for kind in ("colour", "shape", "background"):
        assert (out / f"strip_{kind}.png").is_file()
    assert len(list((out / "videos").glob("*.mp4"))) == 4
    for name, row in rep["rows"].items():
        assert len(row["edits"]) == 2 * 3
        # the summary is the mean of the per-edit scores the run produced
        assert row["summary"]["psnr"] == pytest.approx(np.mean([e["psnr"] for e in row["edits"]]))


def test_reference_rows_score_as_defined(report):
    _, rep = report
    src = rep["rows"]["source (no edit)"]["summary"]
    # the unedited source never shows the target's new colour / shape / background ...
    for kind in ("colour", "shape", "background"):
        assert src[f"{kind}_attribute_accuracy"] <= 0.05
    # ... and keeps the background of colour and shape edits exactly
    assert src["background_psnr"] == float("inf")
    oracle = rep["rows"]["oracle through the VAE"]["summary"]
    assert oracle["psnr"] > 30 and oracle["attribute_accuracy"] >= 0.9 and oracle["object_iou"] > 0.85


def test_scoring_the_oracle_itself_is_perfect():
    spec, edits = suite_edits(1, 8)[0]
    for e in edits:
        tgt = render(e.target)
        s = score_edit(tgt.frames, e, render(e.source), tgt)
        assert s["psnr"] > 90 and s["object_iou"] == 1.0
        assert s["attribute_accuracy"] == 1.0 and s["all_attributes_accuracy"] == 1.0
        assert s["warp_error_gt"] < 2.5e-3  # uint8 rounding only


def test_bad_bench_input_is_named():
    with pytest.raises(ValueError, match="unknown suite 'davis'"):
        BenchConfig(suite="davis")
    with pytest.raises(ValueError, match="unknown row"):
        BenchConfig(rows=("magic",))
