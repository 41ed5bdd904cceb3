"""The world renderer, scene grammar, edits, judge and tokenizer (no trained model needed)."""

import dataclasses

import numpy as np
import pytest

from jaxvedit.world import judge
from jaxvedit.world.render import evaluate, render
from jaxvedit.world.scene import (BACKGROUNDS, COLOURS, MOTIONS, SHAPES, ObjectSpec, SceneSpec,
                                  caption, edit_scene, sample_scene, vocabulary_words)


def _centres(size):
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    return np.stack([xs, ys], -1).reshape(-1, 2)


def test_vocabulary_sizes():
    assert len(SHAPES) >= 5 and len(COLOURS) >= 6 and len(BACKGROUNDS) >= 4 and len(MOTIONS) >= 5


def test_same_seed_same_video_and_different_seed_differs():
    a, b = render(sample_scene(7)), render(sample_scene(7))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.flow, b.flow)
    assert not np.array_equal(a.frames, render(sample_scene(8)).frames)
    assert a.frames.shape == (16, 128, 128, 3) and a.frames.dtype == np.uint8


@pytest.mark.parametrize("seed", [3, 11, 25])
def test_ground_truth_flow_maps_frame_t_onto_t_plus_1(seed):
    """At every valid pixel, the scene evaluated at p + flow(p) in frame t+1 has exactly the
    colour pixel p has in frame t (objects carry a shading texture, so this is not trivial)."""
    spec = sample_scene(seed, n_objects=2)
    r = render(spec)
    xy = _centres(spec.size)
    for t in range(spec.frames - 1):
        valid = r.flow_valid[t].reshape(-1)
        assert valid.mean() > 0.5
        q = xy[valid] + r.flow[t].reshape(-1, 2)[valid]
        rgb1 = evaluate(spec, t + 1, q)[0]
        np.testing.assert_allclose(rgb1, r.frames_float[t].reshape(-1, 3)[valid], atol=2e-6)
        moving = np.linalg.norm(r.flow[t], axis=-1).reshape(-1)[valid] > 0.5
        if t == 0:
            assert moving.any() or all(o.motion in ("static", "scaling") for o in spec.objects)


def test_integer_motion_warps_pixels_exactly():
    obj = ObjectSpec("star", "red", "linear", size=18.0, start=(40.0, 64.0), direction="right",
                     speed="steadily")
    spec = SceneSpec("checkered", (obj,), frames=6)
    r = render(spec)
    for t in range(5):
        v = r.flow_valid[t]
        f = np.rint(r.flow[t]).astype(int)
        assert np.array_equal(f, r.flow[t])  # 2 px per frame: integer flow
        ys, xs = np.nonzero(v)
        np.testing.assert_array_equal(r.frames[t + 1][ys + f[ys, xs, 1], xs + f[ys, xs, 0]],
                                      r.frames[t][ys, xs])
        assert (np.abs(f[..., 0]) == 2).sum() > 500


def test_masks_match_the_rendered_objects():
    spec = sample_scene(5, n_objects=2)
    r = render(spec)
    for t in (0, 9):
        full = r.masks[t] >= 1.0
        for k, obj in enumerate(spec.objects):
            px = r.frames_float[t][full[k]]
            assert len(px) > 100
            # inside an object's full mask every pixel is a shade of the object's colour
            chroma = px - px.mean(-1, keepdims=True)
            ref = np.array(obj.rgb) - np.mean(obj.rgb)
            cos = chroma @ ref / (np.linalg.norm(chroma, axis=-1) * np.linalg.norm(ref))
            assert cos.min() > 0.999
        assert set(np.unique(r.layers[t])) <= {0, 1, 2}
        assert np.array_equal(r.layers[t] == 2, r.masks[t, 1] >= 0.5)
        # outside all coverage the frame is the bare background
        away = r.background_mask[t]
        bg = render(SceneSpec(spec.background, (dataclasses.replace(spec.objects[0], size=0.01),),
                              frames=spec.frames))
        np.testing.assert_allclose(r.frames_float[t][away], bg.frames_float[t][away], atol=1e-6)
        assert r.depth[t][full[-1]].min() > r.depth[t][away].max()  # objects are nearer


@pytest.mark.parametrize("kind", ["colour", "shape", "background"])
def test_oracle_differs_only_where_the_attribute_is(kind):
    spec = sample_scene(21, n_objects=2)
    e = edit_scene(spec, kind, seed=1)
    src, tgt = render(e.source), render(e.target)
    diff = np.abs(src.frames_float - tgt.frames_float).max(-1) > 1e-6
    if kind == "background":
        where = ~(src.amodal.max(1) >= 1.0)  # wherever the background shows at all
        assert e.target.objects == spec.objects
    else:
        subject_visible = np.maximum(src.masks[:, 0], tgt.masks[:, 0]) > 0
        where = subject_visible
        assert e.target.objects[1:] == spec.objects[1:] and e.target.background == spec.background
    assert diff.any() and not (diff & ~where).any()
    assert caption(e.target) != caption(e.source) and e.new in caption(e.target)


def test_judge_reads_rendered_attributes():
    for seed in range(200, 215):
        spec = sample_scene(seed, n_objects=1)
        r = render(spec)
        for t in (0, 15):
            j = judge.judge_frame(r.frames[t])
            assert j == {"colour": spec.subject.colour, "shape": spec.subject.shape,
                         "background": spec.background}, (seed, t, j)


def test_caption_grammar_and_tokenizer(tmp_path):
    from jaxvedit.models.clip import load_tokenizer, tokenize
    from jaxvedit.world.tokenizer import write_world_tokenizer

    spec = SceneSpec("striped", (ObjectSpec("circle", "red", "linear", 20.0, (64.0, 64.0),
                                            direction="left", speed="quickly"),))
    assert caption(spec) == "a red circle moves left quickly over a striped background"
    write_world_tokenizer(tmp_path / "tokenizer")
    tok = load_tokenizer(tmp_path)
    for w in vocabulary_words():
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    ids = tokenize(tok, [caption(sample_scene(0, n_objects=2))])[0]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids and len(ids) == 32
    assert len(tok("a zebra", add_special_tokens=False).input_ids) > 2  # byte-level fallback


@pytest.mark.parametrize("field,value,match", [
    ("shape", "hexagon", "unknown shape 'hexagon'"),
    ("colour", "teal", "unknown colour 'teal'"),
    ("motion", "teleport", "unknown motion 'teleport'"),
])
def test_bad_object_spec_is_named(field, value, match):
    kw = dict(shape="circle", colour="red", motion="static", size=10.0, start=(5.0, 5.0))
    kw[field] = value
    with pytest.raises(ValueError, match=match):
        ObjectSpec(**kw)


def test_bad_scene_spec_and_edit_are_named():
    obj = ObjectSpec("circle", "red", "static", 10.0, (5.0, 5.0))
    with pytest.raises(ValueError, match="unknown background 'marble'"):
        SceneSpec("marble", (obj,))
    with pytest.raises(ValueError, match="unknown edit type 'size'"):
        edit_scene(SceneSpec("plain", (obj,)), "size")
    with pytest.raises(ValueError, match="unknown scene spec key"):
        SceneSpec.from_dict({"background": "plain", "objects": [], "lighting": 1})
    with pytest.raises(ValueError, match="motion 'linear' needs 'direction'"):
        ObjectSpec("circle", "red", "linear", 10.0, (5.0, 5.0))


def test_frame_size_the_models_cannot_take():
    from jaxvedit.world.models import check_frame_size

    check_frame_size(128)
    for bad in (100, 48):
        with pytest.raises(ValueError, match="multiples of 32"):
            check_frame_size(bad)
