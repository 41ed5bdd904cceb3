"""Scenes of the procedural world: the vocabulary, scene specs, sampling from a seed, motion
trajectories, the caption grammar and the edited counterparts (oracle targets).

A scene is a static achromatic background and one or two coloured shapes, each with its own
motion; later objects are drawn in front of earlier ones (occlusion order = list order). Every
quantity a video shows is a deterministic function of its :class:`SceneSpec`, and a spec is a
deterministic function of a seed (:func:`sample_scene`). The first object is the *subject*: the
colour and shape edits change it, the background edit changes the background.

Geometry is in pixels; pixel ``(i, j)`` (row, column) has its centre at ``(x, y) = (j + 0.5,
i + 0.5)``. An object's pose in frame ``t`` is its centre ``(cx, cy)`` and a scale ``s`` that
multiplies its size (the half-extent of the shape, in pixels).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------------------------
# vocabulary

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = {  # linear RGB in [0, 1]; saturated, so they separate from the achromatic backgrounds
    "red": (0.88, 0.12, 0.12),
    "green": (0.12, 0.70, 0.20),
    "blue": (0.14, 0.30, 0.92),
    "yellow": (0.95, 0.85, 0.08),
    "purple": (0.58, 0.18, 0.78),
    "orange": (1.00, 0.52, 0.04),
}
BACKGROUNDS = ("plain", "gradient", "striped", "checkered")
MOTIONS = ("linear", "circular", "bouncing", "static", "scaling")
DIRECTIONS = {  # unit steps in (x, y), y pointing down
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
    "up and left": (-1, -1), "up and right": (1, -1),
    "down and left": (-1, 1), "down and right": (1, 1),
}
SPEEDS = {"slowly": 1.0, "steadily": 2.0, "quickly": 3.0}  # pixels per frame per axis at 128 px
SCALINGS = {"grows": (0.7, 1.3), "shrinks": (1.3, 0.7)}
EDIT_KINDS = ("colour", "shape", "background")
MAX_OBJECTS = 2
EXTENT = 1.4  # the farthest any shape reaches from its centre, in units of its size


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r} in scene spec; choose from {list(choices)}")


# ----------------------------------------------------------------------------------------------
# specs


@dataclass(frozen=True)
class ObjectSpec:
    """One shape and its motion. Positions and sizes are in pixels of the scene's frame size.

    ``motion`` parameters: ``linear`` uses ``direction`` and ``speed``; ``bouncing`` moves by
    ``velocity`` (px/frame) and reflects off the frame borders; ``circular`` orbits ``start``'s
    circle centre ``orbit_centre`` with ``orbit_radius`` and ``orbit_speed`` (rad/frame);
    ``scaling`` interpolates the scale linearly over the clip as ``scaling`` says; ``static``
    stays at ``start``.
    """

    shape: str
    colour: str
    motion: str
    size: float  # half-extent in px at scale 1
    start: tuple[float, float]  # centre (x, y) at frame 0 (orbit: the circle's centre)
    direction: str | None = None  # linear
    speed: str | None = None  # linear
    velocity: tuple[float, float] | None = None  # bouncing
    orbit_radius: float | None = None  # circular
    orbit_phase: float = 0.0  # circular, radians at frame 0
    orbit_speed: float | None = None  # circular, radians per frame (sign: direction)
    scaling: str | None = None  # scaling: "grows" / "shrinks"

    def __post_init__(self):
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("motion", self.motion, MOTIONS)
        if not self.size > 0:
            raise ValueError(f"object size must be > 0 pixels, got {self.size}")
        need = {"linear": ("direction", "speed"), "bouncing": ("velocity",),
                "circular": ("orbit_radius", "orbit_speed"), "scaling": ("scaling",), "static": ()}
        for name in need[self.motion]:
            if getattr(self, name) is None:
                raise ValueError(f"motion {self.motion!r} needs {name!r} in the object spec")
        if self.direction is not None:
            _check_choice("direction", self.direction, DIRECTIONS)
        if self.speed is not None:
            _check_choice("speed", self.speed, SPEEDS)
        if self.scaling is not None:
            _check_choice("scaling", self.scaling, SCALINGS)

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]


@dataclass(frozen=True)
class SceneSpec:
    background: str
    objects: tuple[ObjectSpec, ...]
    frames: int = 16
    size: int = 128  # square frames
    seed: int | None = None  # the seed it was sampled from, if any (informational)

    def __post_init__(self):
        _check_choice("background", self.background, BACKGROUNDS)
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.size < 32:
            raise ValueError(f"frame size must be >= 32 pixels, got {self.size}")
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def subject(self) -> ObjectSpec:
        return self.objects[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SceneSpec":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown scene spec key(s) {unknown}")
        objs = []
        names = {f.name for f in dataclasses.fields(ObjectSpec)}
        for o in d.pop("objects"):
            bad = sorted(set(o) - names)
            if bad:
                raise ValueError(f"unknown object spec key(s) {bad}")
            o = {k: tuple(v) if isinstance(v, list) else v for k, v in o.items()}
            objs.append(ObjectSpec(**o))
        return cls(objects=tuple(objs), **d)


# ----------------------------------------------------------------------------------------------
# trajectories


def _bounce(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position at times ``t`` of a point moving at ``v`` from ``p0`` reflecting in [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return np.full(t.shape, (lo + hi) / 2)
    u = np.mod(p0 - lo + v * t, 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


def trajectory(obj: ObjectSpec, frames: int, size: int) -> np.ndarray:
    """``(frames, 3)`` float64: centre x, centre y and scale of ``obj`` in each frame."""
    t = np.arange(frames, dtype=np.float64)
    x0, y0 = obj.start
    scale = np.ones(frames)
    unit = size / 128.0  # speeds are given at 128 px and scale with the frame
    if obj.motion == "linear":
        dx, dy = DIRECTIONS[obj.direction]
        v = SPEEDS[obj.speed] * unit
        x, y = x0 + dx * v * t, y0 + dy * v * t
    elif obj.motion == "bouncing":
        vx, vy = obj.velocity
        lo, hi = EXTENT * obj.size, size - EXTENT * obj.size
        x, y = _bounce(x0, vx, lo, hi, t), _bounce(y0, vy, lo, hi, t)
    elif obj.motion == "circular":
        a = obj.orbit_phase + obj.orbit_speed * t
        x, y = x0 + obj.orbit_radius * np.cos(a), y0 + obj.orbit_radius * np.sin(a)
    elif obj.motion == "scaling":
        s0, s1 = SCALINGS[obj.scaling]
        x, y = np.full(frames, x0), np.full(frames, y0)
        scale = s0 + (s1 - s0) * (t / max(frames - 1, 1))
    else:  # static
        x, y = np.full(frames, x0), np.full(frames, y0)
    return np.stack([x, y, scale], axis=-1)


def trajectories(spec: SceneSpec) -> np.ndarray:
    """``(frames, n_objects, 3)``: every object's pose in every frame."""
    return np.stack([trajectory(o, spec.frames, spec.size) for o in spec.objects], axis=1)


# ----------------------------------------------------------------------------------------------
# sampling


def _linear_start(rng, size, r, dx, dy, dist):
    """A start point from which moving ``dist`` px along (dx, dy) keeps the shape in frame."""
    def axis(d):
        lo, hi = EXTENT * r, size - EXTENT * r
        if d > 0:
            hi = max(lo, hi - dist)
        elif d < 0:
            lo = min(hi, lo + dist)
        return rng.uniform(lo, hi)
    return float(axis(dx)), float(axis(dy))


def sample_object(rng: np.random.Generator, frames: int, size: int, *, shape=None, colour=None,
                  motion=None) -> ObjectSpec:
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    motion = motion or MOTIONS[rng.integers(len(MOTIONS))]
    unit = size / 128.0
    r = float(rng.uniform(15.0, 24.0) * unit)
    m = EXTENT * r  # margin that keeps the whole shape in frame
    common = dict(shape=shape, colour=colour, motion=motion, size=round(r, 3))
    if motion == "linear":
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        speed = list(SPEEDS)[rng.integers(len(SPEEDS))]
        dx, dy = DIRECTIONS[direction]
        start = _linear_start(rng, size, r, dx, dy, SPEEDS[speed] * unit * (frames - 1))
        return ObjectSpec(**common, start=start, direction=direction, speed=speed)
    if motion == "bouncing":
        ang = rng.uniform(0, 2 * math.pi)
        v = rng.uniform(4.0, 6.0) * unit
        start = (float(rng.uniform(m, size - m)), float(rng.uniform(m, size - m)))
        return ObjectSpec(**common, start=start, velocity=(v * math.cos(ang), v * math.sin(ang)))
    if motion == "circular":
        rad = float(rng.uniform(12.0, 22.0) * unit)
        c = (float(rng.uniform(m + rad, size - m - rad)), float(rng.uniform(m + rad, size - m - rad)))
        speed = float(rng.uniform(0.25, 0.45)) * (1 if rng.integers(2) else -1)
        return ObjectSpec(**common, start=c, orbit_radius=rad, orbit_phase=float(rng.uniform(0, 2 * math.pi)),
                          orbit_speed=speed)
    if motion == "scaling":
        how = list(SCALINGS)[rng.integers(len(SCALINGS))]
        rmax = m * 1.3
        start = (float(rng.uniform(rmax, size - rmax)), float(rng.uniform(rmax, size - rmax)))
        return ObjectSpec(**common, start=start, scaling=how)
    start = (float(rng.uniform(m, size - m)), float(rng.uniform(m, size - m)))
    return ObjectSpec(**common, start=start)


def sample_scene(seed: int, *, frames: int = 16, size: int = 128, n_objects: int | None = None,
                 two_object_probability: float = 0.4) -> SceneSpec:
    """The scene of ``seed`` (deterministic): a background and 1-2 objects of distinct colours."""
    rng = np.random.default_rng([seed, 0x5CE7E])
    if n_objects is None:
        n_objects = 2 if rng.random() < two_object_probability else 1
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1..{MAX_OBJECTS}, got {n_objects}")
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    objs = [sample_object(rng, frames, size)]
    if n_objects == 2:
        others = [c for c in COLOURS if c != objs[0].colour]
        objs.append(sample_object(rng, frames, size, colour=others[rng.integers(len(others))]))
    return SceneSpec(background=background, objects=tuple(objs), frames=frames, size=size, seed=seed)


# ----------------------------------------------------------------------------------------------
# captions


def motion_phrase(obj: ObjectSpec) -> str:
    if obj.motion == "linear":
        return f"moves {obj.direction} {obj.speed}"
    return {"circular": "moves in a circle", "bouncing": "bounces around", "static": "stays still",
            "scaling": obj.scaling or ""}[obj.motion]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: ObjectSpec, *, with_motion: bool = True) -> str:
    words = f"{_article(obj.colour)} {obj.colour} {obj.shape}"
    return f"{words} {motion_phrase(obj)}" if with_motion else words


def caption(spec: SceneSpec, *, with_motion: bool = True) -> str:
    """The grammar: ``<object> [and <object>] over a <background> background``; an object is
    ``a <colour> <shape> <motion>``. The second object (if any) is in front of the first."""
    objs = " and ".join(object_phrase(o, with_motion=with_motion) for o in spec.objects)
    return f"{objs} over {_article(spec.background)} {spec.background} background"


def vocabulary_words() -> list[str]:
    """Every word the grammar can produce (the world tokenizer makes each a single token)."""
    words = {"a", "an", "and", "over", "background", "moves", "in", "circle", "bounces", "around",
             "stays", "still"}
    words |= set(SHAPES) | set(COLOURS) | set(BACKGROUNDS) | set(SPEEDS) | set(SCALINGS)
    for d in DIRECTIONS:
        words |= set(d.split())
    return sorted(words)


# ----------------------------------------------------------------------------------------------
# edits (the oracle targets)


@dataclass(frozen=True)
class Edit:
    kind: str  # colour / shape / background
    source: SceneSpec
    target: SceneSpec
    old: str
    new: str

    @property
    def source_caption(self) -> str:
        return caption(self.source)

    @property
    def target_caption(self) -> str:
        return caption(self.target)


def edit_scene(spec: SceneSpec, kind: str, new: str | None = None, *, seed: int = 0) -> Edit:
    """``spec`` with one attribute changed: the subject's colour or shape, or the background.
    Motion, positions, sizes and the other object stay exactly as they are. ``new`` picks the
    new value (default: drawn from ``seed`` among the values different from the old one and,
    for a colour, from the other object's colour)."""
    _check_choice("edit type", kind, EDIT_KINDS)
    rng = np.random.default_rng([seed, 0xED17])
    subj = spec.subject
    if kind == "colour":
        old = subj.colour
        taken = {o.colour for o in spec.objects}
        choices = [c for c in COLOURS if c not in taken]
    elif kind == "shape":
        old = subj.shape
        choices = [s for s in SHAPES if s != old]
    else:
        old = spec.background
        choices = [b for b in BACKGROUNDS if b != old]
    if new is None:
        new = choices[rng.integers(len(choices))]
    elif new == old:
        raise ValueError(f"edit {kind!r}: the new value {new!r} equals the old one")
    else:
        _check_choice(kind, new, {"colour": COLOURS, "shape": SHAPES, "background": BACKGROUNDS}[kind])
    if kind == "background":
        target = dataclasses.replace(spec, background=new)
    else:
        obj = dataclasses.replace(subj, **{kind: new})
        target = dataclasses.replace(spec, objects=(obj,) + tuple(spec.objects[1:]))
    return Edit(kind, spec, target, old, new)


@dataclass(frozen=True)
class Split:
    """Disjoint seed ranges: training scenes, validation, the held-out captions of the
    text-to-image check, and the held-out editing benchmark suite."""

    train: range = field(default_factory=lambda: range(0, 5_000_000))
    valid: range = field(default_factory=lambda: range(5_000_000, 6_000_000))
    t2i: range = field(default_factory=lambda: range(9_000_000, 9_500_000))
    suite: range = field(default_factory=lambda: range(9_500_000, 10_000_000))


SPLIT = Split()
