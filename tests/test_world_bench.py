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
    cfg = BenchConfig(suite="world-mini", rows=("source (no edit)", "oracle (exact)", "oracle through the VAE",
                                                "plain", "adapter", "symmetric-latent"),
                      output_dir=str(out), progress=False, workers=1)
    return out, run_bench(cfg)


def test_table_comes_from_the_run(report):
    out, rep = report
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] and list(saved["rows"]) == list(rep["rows"])
    assert (out / "results.md").read_text() == results_markdown(rep)
    for kind in ("colour", "shape", "background"):
        assert (out / f"strip_{kind}.png").is_file()
    assert len(list((out / "videos").glob("*.mp4"))) == 6
    for name, row in rep["rows"].items():
        assert len(row["edits"]) == 2 * 3
        # the summary is the mean of the per-edit scores the run produced
        assert row["summary"]["psnr"] == pytest.approx(np.mean([e["psnr"] for e in row["edits"]]))


def test_symmetric_row_filters_the_inversion(report):
    # the symmetric fixed-guide filter (docs/theory.md) changes the inversion, hence the edits
    _, rep = report
    sym = [e["psnr"] for e in rep["rows"]["symmetric-latent"]["edits"]]
    plain = [e["psnr"] for e in rep["rows"]["plain"]["edits"]]
    assert all(np.isfinite(sym)) and not np.allclose(sym, plain, rtol=0, atol=1e-3)


def test_reference_rows_score_as_defined(report):
    _, rep = report
    src = rep["rows"]["source (no edit)"]["summary"]
    # the unedited source never shows the target's new colour / shape / background ...
    for kind in ("colour", "shape", "background"):
        assert src[f"{kind}_attribute_accuracy"] <= 0.05
    # ... and keeps the background of colour and shape edits exactly
    assert src["background_psnr"] == float("inf")
    # the oracle through the VAE reaches the judge's ceiling on this suite: the score of the exact
    # oracle renders themselves (below 1 where the subject is occluded: a partly hidden shape
    # cannot be told by its silhouette; see docs/world.md)
    exact = rep["rows"]["oracle (exact)"]["summary"]
    ceiling = np.mean([score_edit(render(e.target).frames, e, render(e.source), render(e.target))
                       ["attribute_accuracy"] for _, edits in suite_edits(2, 8) for e in edits])
    assert exact["attribute_accuracy"] == pytest.approx(ceiling) and exact["psnr"] > 140  # MSE floored at 1e-10
    oracle = rep["rows"]["oracle through the VAE"]["summary"]
    print(f"oracle through the VAE: attribute accuracy {oracle['attribute_accuracy']:.3f}, "
          f"the exact oracle's {ceiling:.3f}")
    assert oracle["psnr"] > 30 and oracle["object_iou"] > 0.85
    assert oracle["attribute_accuracy"] >= ceiling - 0.05


def test_scoring_the_oracle_itself():
    """The exact oracle target scored as an edit: pixel scores perfect up to uint8 rounding,
    the attributes perfect wherever the subject is in full view; where another object hides
    part of it, its shape (and, at the occluder's edge, its colour) can be misjudged: that is
    the judge's ceiling, which test_reference_rows_score_as_defined measures."""
    (_, occluded), (_, visible) = suite_edits(2, 8)
    for e in occluded + visible:
        tgt = render(e.target)
        s = score_edit(tgt.frames, e, render(e.source), tgt)
        assert s["psnr"] > 90 and s["object_iou"] > 0.9  # IoU: anti-aliased edges
        assert s["warp_error_gt"] < 2.5e-3  # uint8 rounding only
        assert s["background_accuracy"] == 1.0
    for e in visible:
        tgt = render(e.target)
        assert (tgt.masks[:, 0] >= 0.5).sum() >= 0.95 * (tgt.amodal[:, 0] > 0.5).sum()  # in full view
        s = score_edit(tgt.frames, e, render(e.source), tgt)
        assert s["attribute_accuracy"] == 1.0 and s["all_attributes_accuracy"] == 1.0


def test_append_keeps_every_row_of_the_file_and_runs_the_missing_ones(report, tmp_path):
    """``--append`` with ``--rows X``: the rows already in results.json stay as they are (a GPU run's
    rows survive a later CPU run of other rows), only X runs, and it scores as in a full run."""
    out, rep = report
    old = json.loads((out / "results.json").read_text())
    dropped = old["rows"].pop("oracle through the VAE")
    (tmp_path / "results.json").write_text(json.dumps(old))
    new = run_bench(BenchConfig(suite="world-mini", rows=("oracle through the VAE",), append=True,
                                output_dir=str(tmp_path), progress=False, workers=1))
    assert set(new["rows"]) == set(rep["rows"])
    for name in ("source (no edit)", "plain", "adapter"):
        assert new["rows"][name]["edits"] == old["rows"][name]["edits"]
    assert [e["psnr"] for e in new["rows"]["oracle through the VAE"]["edits"]] == pytest.approx(
        [e["psnr"] for e in dropped["edits"]], abs=1e-3)


def test_bad_bench_input_is_named():
    with pytest.raises(ValueError, match="unknown suite 'davis'"):
        BenchConfig(suite="davis")
    with pytest.raises(ValueError, match="unknown row"):
        BenchConfig(rows=("magic",))


def test_adapter_tokens_ablation_reaches_the_contexts():
    """``--adapter-tokens``: all = the SPEC's [T_share; Z_unshare; text], shared = T_share only,
    none = the text alone (the LoRA acts alone)."""
    from jaxvedit.world.bench import BenchContext

    class FakeEditor:
        def contexts(self, frames, prompts, tokens, *, shared_only=False):
            self.seen = (tokens, not shared_only)
            return [np.zeros((1, 3, 2)) for _ in prompts]

    frames = np.zeros((4, 8, 8, 3), np.uint8)
    for mode, want in (("all", (True, True)), ("shared", (True, False)), ("none", (False, True))):
        ctx = BenchContext.__new__(BenchContext)
        ctx.cfg, ctx.editor = BenchConfig(suite="world-mini", adapter_tokens=mode), FakeEditor()
        out = ctx.contexts(frames, ["a", "b"], True)
        assert ctx.editor.seen == want
        assert [c.shape for c in out] == [(4, 3, 2)] * 2
        ctx.contexts(frames, ["a"], False)  # rows without the adapter: never tokens
        assert ctx.editor.seen[0] is False
    with pytest.raises(ValueError, match="adapter_tokens 'half'"):
        BenchConfig(adapter_tokens="half")
