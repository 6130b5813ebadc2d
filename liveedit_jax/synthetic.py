"""Procedural video-editing examples with exactly known ground truth (issue 16).

    ex = make_example("train", 7, frames=17, height=128, width=128)
    ex.source, ex.target    # uint8 [T, H, W, 3]: one scene rendered without and with the edit
    ex.mask                 # bool [T, H, W]: exactly the pixels where target != source
    ex.instruction          # "make the red circle blue"; ex.edit names it as data

A scene is a procedurally textured background (two octaves of smooth colour noise over a rotated brick pattern)
larger than the frame, seen through a camera that pans and zooms slowly (resampled bilinearly), and 1–4 objects
(SHAPES × PALETTE × TEXTURES, radius 6–15 % of the frame's short side) that move on curved paths, turn slowly,
enter and leave the frame and occlude each other in a fixed depth order. Edges are anti-aliased by analytic pixel
coverage, clip(0.5 − d, 0, 1) with d the signed distance to the edge in pixels (a box filter over the pixel for a
straight edge, one evaluation instead of 4–16 supersamples); textures are anti-aliased the same way and their
periods are ≥ 9 px at 128×128. The target renders the same scene after `apply_edit`: same camera, motion and
occlusion, so a removed object reveals exactly the background and the objects behind it.

World units: 1 = the frame's short side at zoom 1; y points down; t in seconds at FPS, 0 at the clip's middle
frame. An example is a pure function of (seed, split, frames, height, width): `np.random.default_rng(seed)` draws
the scene, and scenes whose edited object is visible (a third of its area in frame and unoccluded) in fewer than
60 % of the frames are redrawn from the same generator.

Splits draw disjoint seeds (`example_seed`). train / val / test never edit a HELDOUT (colour, shape, kind)
combination; heldout always does (and only recolor / retexture / remove edits), so a model can be tested on
combinations it never saw while every colour and every shape occurs in training.

Speed (numpy on this project's 2-core CPU, 2026-12-02, source and target together, `python -m liveedit_jax.synthetic
--bench`):
  128×128: ~850 frames/s for 17-frame clips (~1250 for 81 frames; 1-frame clips ~250, the per-clip cost of
  drawing the scene and its canvas); 480×832: ~49 frames/s. One process; examples are independent, so a loader
  can spread them over processes.
`python -m liveedit_jax.synthetic --picture docs/synthetic_edits.png` draws one val example per edit kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from pathlib import Path as _FilePath
from typing import Sequence

import numpy as np

FPS = 16  # the project's frame rate: paths and camera speeds are in world units per second

# Well separated in RGB (the closest pair, orange and yellow, is 83 apart); a texture's second colour is the
# object's own colour at half brightness, so "the red circle" stays red whatever its pattern.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star", "ring")
TEXTURES = ("solid", "stripes", "checker", "dots")
EDIT_KINDS = ("recolor", "retexture", "remove", "background", "none")
BACKGROUND_STYLES = ("dark", "grayscale", "inverted", "sepia")
SPLITS = ("train", "val", "test", "heldout")
OBJECT_EDITS = ("recolor", "retexture", "remove")

# Seeds per split: train from 0, val from 1e8, ...; a split holds at most 1e8 examples.
_SPLIT_STRIDE = 10**8
# recolor / retexture / remove / background equally often, none 10 %.
_KIND_WEIGHTS = (0.225, 0.225, 0.225, 0.225, 0.1)

# Ten (object colour, shape, edit kind) triples seen only in `heldout`: each colour at most twice, each shape twice,
# each kind three or four times, so every colour, shape and kind (and most of their pairs) still occur in training.
HELDOUT: frozenset[tuple[str, str, str]] = frozenset({
    ("red", "circle", "recolor"),
    ("green", "star", "recolor"),
    ("cyan", "square", "recolor"),
    ("blue", "ring", "recolor"),
    ("blue", "triangle", "retexture"),
    ("purple", "square", "retexture"),
    ("white", "circle", "retexture"),
    ("yellow", "ring", "remove"),
    ("orange", "star", "remove"),
    ("green", "triangle", "remove"),
})

_RECOLOR = ("make the {c} {s} {n}", "turn the {c} {s} {n}", "change the colour of the {c} {s} to {n}")
_RETEXTURE = {
    "solid": ("make the {c} {s} plain", "make the {c} {s} a solid colour", "remove the pattern from the {c} {s}"),
    "stripes": ("make the {c} {s} striped", "give the {c} {s} stripes"),
    "checker": ("give the {c} {s} a checker pattern", "make the {c} {s} checkered"),
    "dots": ("make the {c} {s} dotted", "give the {c} {s} dots", "cover the {c} {s} in dots"),
}
_REMOVE = ("remove the {c} {s}", "delete the {c} {s}", "make the {c} {s} disappear")
_BACKGROUND = {
    "dark": ("make the background dark", "darken the background", "make the background night-time dark"),
    "grayscale": ("turn the background grey", "make the background black and white"),
    "inverted": ("invert the colours of the background", "make the background a negative"),
    "sepia": ("give the background a sepia tone", "make the background look like an old photo"),
}
_NONE = ("keep the video as it is", "leave it unchanged", "do not change anything")

# Geometry (world units unless said otherwise).
_RADIUS = (0.06, 0.15)           # object radius: diameter 12–30 % of the short side
_EXTENT = 1.1                    # every shape lies inside this radius, in units of its own radius
_STRIPE_PERIOD = 0.075           # 9.6 px at 128×128
_CHECKER_PERIOD = 0.08           # two cells, 5.1 px each at 128×128
_DOT_PERIOD, _DOT_RADIUS = 0.085, 0.024
_SHADE = 0.5                     # a texture's second colour: the object's colour at half brightness
_VISIBLE_AREA = 1 / 3            # an object is visible in a frame when this much of its area shows
_VISIBLE_FRAMES = 0.6            # ... and the edited object must be visible in this fraction of the frames
_MAX_DRAWS = 200
_CHUNK = 8                       # frames rendered together (bounds memory at 480×832 to ~100 MB)


@dataclasses.dataclass(frozen=True)
class Edit:
  """What the instruction asks for. Object edits name the object by its source (colour, shape), unique in a scene."""
  kind: str                 # one of EDIT_KINDS
  shape: str | None         # the edited object's shape (None for background / none)
  colour: str | None        # the edited object's source colour name
  texture: str | None       # the edited object's source texture
  new_colour: str | None    # recolor
  new_texture: str | None   # retexture
  style: str | None         # background


@dataclasses.dataclass(frozen=True)
class EditExample:
  source: np.ndarray        # uint8 [T, H, W, 3]
  target: np.ndarray        # uint8 [T, H, W, 3]: the same scene rendered with the edit
  mask: np.ndarray          # bool [T, H, W]: exactly the pixels where target != source (any channel)
  instruction: str          # e.g. "make the red circle blue"
  edit: Edit
  split: str
  index: int                # position in the split (-1 when the seed lies outside the split's range)
  seed: int


@dataclasses.dataclass(frozen=True)
class Path:
  """A smooth curved path: p(t) = mid + velocity·t + amplitude·sin(2π·freq·t + phase), per axis; θ(t) = θ0 + ω·t."""
  mid: tuple[float, float]
  velocity: tuple[float, float]
  amplitude: tuple[float, float]
  freq: tuple[float, float]
  phase: tuple[float, float]
  theta0: float = 0.0
  omega: float = 0.0

  def at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t: [T] seconds → x, y, θ: [T] each (float32)."""
    x, y = (self.mid[k] + self.velocity[k] * t + self.amplitude[k] * np.sin(2 * np.pi * self.freq[k] * t
                                                                             + self.phase[k]) for k in (0, 1))
    return x.astype(np.float32), y.astype(np.float32), (self.theta0 + self.omega * t).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Camera:
  """The view's centre follows `path`; zoom(t) = zoom0·exp(zoom_rate·t) (> 1 magnifies)."""
  path: Path
  zoom0: float
  zoom_rate: float

  def at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t: [T] → centre x, y and zoom: [T] each (float32)."""
    x, y, _ = self.path.at(t)
    return x, y, (self.zoom0 * np.exp(self.zoom_rate * t)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Background:
  """Smooth colour noise (hashed lattices, seeded by `seed`) over a brick pattern turned by `angle`."""
  seed: int
  base: tuple[float, float, float]   # mean colour, 0–255
  brick: tuple[float, float]         # brick width and height
  angle: float
  style: str | None = None           # one of BACKGROUND_STYLES, applied after sampling (the background edit)


@dataclasses.dataclass(frozen=True)
class SceneObject:
  shape: str
  colour: str
  texture: str
  radius: float
  path: Path


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything a clip shows; `objects` are drawn back to front."""
  background: Background
  camera: Camera
  objects: tuple[SceneObject, ...]


# ---------------------------------------------------------------------------------------------------------------
# Splits, seeds and instructions


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")


def example_seed(split: str, index: int) -> int:
  """The seed of example `index` of `split`: the splits draw from disjoint ranges of 10**8 seeds."""
  _check_split(split)
  if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < _SPLIT_STRIDE:
    raise ValueError(f"example index {index!r} of split {split!r}: expected an int in [0, {_SPLIT_STRIDE})")
  return SPLITS.index(split) * _SPLIT_STRIDE + int(index)


def _check_sizes(frames: int, height: int, width: int) -> None:
  for name, value in (("height", height), ("width", width)):
    if not isinstance(value, (int, np.integer)) or value <= 0 or value % 16:
      raise ValueError(f"{name}={value!r}: expected a positive multiple of 16")
  if not isinstance(frames, (int, np.integer)) or frames < 1:
    raise ValueError(f"frames={frames!r}: expected an int ≥ 1")


def instruction_templates(edit: Edit) -> tuple[str, ...]:
  """Every phrasing of `edit`, already filled in."""
  names = dict(c=edit.colour, s=edit.shape, n=edit.new_colour)
  if edit.kind == "recolor":
    templates = _RECOLOR
  elif edit.kind == "retexture":
    templates = _RETEXTURE[edit.new_texture]
  elif edit.kind == "remove":
    templates = _REMOVE
  elif edit.kind == "background":
    templates = _BACKGROUND[edit.style]
  elif edit.kind == "none":
    templates = _NONE
  else:
    raise ValueError(f"unknown edit kind {edit.kind!r}: expected one of {EDIT_KINDS}")
  return tuple(t.format(**names) for t in templates)


@functools.cache
def _instructions() -> tuple[str, ...]:
  texts = set(_NONE)
  for style in BACKGROUND_STYLES:
    texts.update(_BACKGROUND[style])
  for colour in PALETTE:
    for shape in SHAPES:
      for kind in OBJECT_EDITS:
        for new_colour in ([n for n in PALETTE if n != colour] if kind == "recolor" else (None,)):
          for new_texture in (TEXTURES if kind == "retexture" else (None,)):
            edit = Edit(kind, shape, colour, None, new_colour, new_texture, None)
            texts.update(instruction_templates(edit))
  return tuple(sorted(texts))


def instructions() -> list[str]:
  """Every instruction the templates can produce, sorted and unique (the corpus of the project's tokenizer)."""
  return list(_instructions())


# ---------------------------------------------------------------------------------------------------------------
# Drawing a scene


def clip_times(frames: int) -> np.ndarray:
  """Frame times in seconds, 0 at the middle frame: [T] float64."""
  return (np.arange(frames) - (frames - 1) / 2) / FPS


def _capped_speed(rng, low: float, high: float, travel: float, duration: float) -> tuple[float, float]:
  """A velocity of random direction and speed in [low, high], slowed so the clip travels at most `travel`."""
  speed = rng.uniform(low, high)
  if duration > 0:
    speed = min(speed, travel / duration)
  angle = rng.uniform(0, 2 * np.pi)
  return speed * math.cos(angle), speed * math.sin(angle)


def _draw_path(rng, mid, *, speed, travel, wobble, duration, spin) -> Path:
  return Path(mid=(float(mid[0]), float(mid[1])),
              velocity=_capped_speed(rng, *speed, travel, duration),
              amplitude=tuple(float(a) for a in rng.uniform(*wobble, size=2)),
              freq=tuple(float(f) for f in rng.uniform(0.2, 0.8, size=2)),
              phase=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=2)),
              theta0=float(rng.uniform(0, 2 * np.pi)), omega=float(rng.uniform(-spin, spin)))


def _edit_choice(rng, split: str) -> tuple[str, str | None, str | None]:
  """(kind, colour, shape) of the edit; colour and shape None for background / none."""
  if split == "heldout":
    triples = sorted(HELDOUT)
    colour, shape, kind = triples[rng.integers(len(triples))]
    return kind, colour, shape
  kind = EDIT_KINDS[rng.choice(len(EDIT_KINDS), p=_KIND_WEIGHTS)]
  if kind not in OBJECT_EDITS:
    return kind, None, None
  pairs = [(c, s) for c in PALETTE for s in SHAPES if (c, s, kind) not in HELDOUT]
  colour, shape = pairs[rng.integers(len(pairs))]
  return kind, colour, shape


def _draw_once(rng, kind, colour, shape, frames, height, width) -> tuple[Scene, Edit, int]:
  duration = (frames - 1) / FPS
  short = min(height, width)
  camera = Camera(_draw_path(rng, (0.0, 0.0), speed=(0.05, 0.2), travel=0.6, wobble=(0.005, 0.03),
                             duration=duration, spin=0.0),
                  zoom0=float(rng.uniform(0.95, 1.05)),
                  zoom_rate=float(rng.choice((-1, 1)) * min(rng.uniform(0.02, 0.12), 0.2 / max(duration, 1e-6))))
  half = np.array([width, height], np.float64) / (2 * short * camera.zoom0)   # the view's half extents at t = 0
  background = Background(seed=int(rng.integers(2**31)),
                          base=tuple(float(v) for v in rng.uniform(85, 165) + rng.uniform(-20, 20, size=3)),
                          brick=(float(w := rng.uniform(0.2, 0.4)), float(w * rng.uniform(0.45, 0.8))),
                          angle=float(rng.uniform(0, np.pi)))

  count = int(rng.integers(1, 5))
  others = [(c, s) for c in PALETTE for s in SHAPES if (c, s) != (colour, shape)]
  picked = [others[i] for i in rng.choice(len(others), size=count, replace=False)]
  if shape is not None:
    picked[0] = (colour, shape)   # the edited object; for background / none edits picked[0] is just as visible
  order = rng.permutation(count)                 # depth: objects[order[k]] is drawn k-th
  objects = []
  for k, (c, s) in enumerate(picked):
    radius = float(rng.uniform(*_RADIUS))
    if k == 0:
      # The edited object starts near the middle of the view and travels at most one short side.
      mid = rng.uniform(-1, 1, size=2) * np.maximum(half - radius - 0.05, 0) * 0.6
      travel = 1.0
    else:
      mid = rng.uniform(-1, 1, size=2) * (half + 0.05)  # may start or end outside the frame
      travel = 1.5
    path = _draw_path(rng, mid, speed=(0.1, 0.35), travel=travel, wobble=(0.02, 0.12), duration=duration,
                      spin=0.6)
    objects.append(SceneObject(s, c, TEXTURES[rng.integers(len(TEXTURES))], radius, path))
  objects = tuple(objects[i] for i in order)
  target = int(np.argmax(order == 0))
  scene = Scene(background, camera, objects)

  if shape is None:
    style = BACKGROUND_STYLES[rng.integers(len(BACKGROUND_STYLES))] if kind == "background" else None
    return scene, Edit(kind, None, None, None, None, None, style), target
  texture = objects[target].texture
  new_colour = new_texture = None
  if kind == "recolor":
    # The recoloured object must stay the only one of its (colour, shape) in the scene.
    taken = {(o.colour, o.shape) for o in objects}
    choices = [n for n in PALETTE if n != colour and (n, shape) not in taken]
    new_colour = choices[rng.integers(len(choices))]
  elif kind == "retexture":
    choices = [x for x in TEXTURES if x != texture]
    new_texture = choices[rng.integers(len(choices))]
  return scene, Edit(kind, shape, colour, texture, new_colour, new_texture, None), target


def draw_scene(seed: int, *, frames: int, height: int, width: int,
               split: str = "train") -> tuple[Scene, Edit]:
  """The scene and edit of `seed` (what `render_example` renders), redrawn until the edited object (for background
  and none edits, the first object drawn) shows enough."""
  _check_split(split)
  _check_sizes(frames, height, width)
  rng = np.random.default_rng(seed)
  kind, colour, shape = _edit_choice(rng, split)
  times = clip_times(frames)
  for _ in range(_MAX_DRAWS):
    scene, edit, target = _draw_once(rng, kind, colour, shape, frames, height, width)
    shown = visible_fraction(scene, target, times, height, width)
    if np.mean(shown >= _VISIBLE_AREA) >= _VISIBLE_FRAMES:
      return scene, edit
  raise RuntimeError(f"seed {seed}: no scene in {_MAX_DRAWS} draws shows the edited object in "
                     f"{_VISIBLE_FRAMES:.0%} of {frames} frames at {height}×{width}")


def apply_edit(scene: Scene, edit: Edit) -> Scene:
  """The scene the edit asks for (the object is found by its source colour and shape)."""
  if edit.kind == "none":
    return scene
  if edit.kind == "background":
    return dataclasses.replace(scene, background=dataclasses.replace(scene.background, style=edit.style))
  matches = [i for i, o in enumerate(scene.objects) if (o.colour, o.shape) == (edit.colour, edit.shape)]
  if len(matches) != 1:
    raise ValueError(f"edit names the {edit.colour} {edit.shape}: the scene holds {len(matches)} of them")
  i = matches[0]
  objects = list(scene.objects)
  if edit.kind == "remove":
    del objects[i]
  elif edit.kind == "recolor":
    objects[i] = dataclasses.replace(objects[i], colour=edit.new_colour)
  elif edit.kind == "retexture":
    objects[i] = dataclasses.replace(objects[i], texture=edit.new_texture)
  else:
    raise ValueError(f"unknown edit kind {edit.kind!r}: expected one of {EDIT_KINDS}")
  return dataclasses.replace(scene, objects=tuple(objects))


# ---------------------------------------------------------------------------------------------------------------
# Shapes: signed distances in units of the object's radius (negative inside), from local coordinates u, v


_STAR_INNER = 0.45
_STAR_TIP = np.array([1.0, 0.0])
_STAR_NOTCH = _STAR_INNER * np.array([math.cos(np.pi / 5), math.sin(np.pi / 5)])
_STAR_NORMAL = np.array([_STAR_NOTCH[1] - _STAR_TIP[1], _STAR_TIP[0] - _STAR_NOTCH[0]])
_STAR_NORMAL /= np.linalg.norm(_STAR_NORMAL)     # outward normal of the edge tip → notch


def shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Signed distance to the outline (exact along edges, approximate only off corners, where coverage is 0 or 1)."""
  if shape == "circle":
    return np.hypot(u, v) - 1
  if shape == "ring":
    return np.abs(np.hypot(u, v) - 0.7) - 0.3
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) - 0.75
  if shape == "triangle":
    # Equilateral, circumradius 1 (inradius 0.5), a vertex at -v (up in the image).
    d = v - 0.5
    for angle in (np.pi / 6, 5 * np.pi / 6):
      d = np.maximum(d, -(math.cos(angle) * u + math.sin(angle) * v) - 0.5)
    return d
  if shape == "star":
    # Five tips at radius 1: fold the angle into the half-sector [0, π/5] between a tip (at -v) and a notch,
    # where the outline is one straight edge.
    rho = np.hypot(u, v)
    angle = np.arctan2(u, -v)
    folded = np.abs(np.mod(angle + np.pi / 5, 2 * np.pi / 5) - np.pi / 5)
    x, y = rho * np.cos(folded) - _STAR_TIP[0], rho * np.sin(folded) - _STAR_TIP[1]
    return _STAR_NORMAL[0] * x + _STAR_NORMAL[1] * y
  raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")


def _soft_step(d_px: np.ndarray) -> np.ndarray:
  """The covered fraction of a pixel at signed distance d (pixels, negative inside) from a straight edge."""
  return np.clip(0.5 - d_px, 0, 1)


def _band(coordinate: np.ndarray, period_px: np.ndarray) -> np.ndarray:
  """±1 on alternating half periods of `coordinate` (in periods), anti-aliased over one pixel."""
  tri = np.abs(np.mod(coordinate, 1) - 0.5)           # 0 … 0.5, the half periods meet at 0.25
  return np.clip((tri - 0.25) * period_px * 2, -1, 1)


def texture_weight(texture: str, x: np.ndarray, y: np.ndarray, px_per_unit: np.ndarray) -> np.ndarray | None:
  """The fraction of each pixel in the texture's second colour; x, y: object-local world units; None for solid."""
  if texture == "solid":
    return None
  if texture == "stripes":
    return 0.5 - 0.5 * _band(x / _STRIPE_PERIOD, _STRIPE_PERIOD * px_per_unit)
  if texture == "checker":
    p = _CHECKER_PERIOD * px_per_unit
    return 0.5 - 0.5 * _band(x / _CHECKER_PERIOD, p) * _band(y / _CHECKER_PERIOD, p)
  if texture == "dots":
    fx = np.mod(x / _DOT_PERIOD, 1) - 0.5
    fy = np.mod(y / _DOT_PERIOD, 1) - 0.5
    return _soft_step((np.hypot(fx, fy) * _DOT_PERIOD - _DOT_RADIUS) * px_per_unit)
  raise ValueError(f"unknown texture {texture!r}: expected one of {TEXTURES}")


# ---------------------------------------------------------------------------------------------------------------
# Background


def _hash01(seed: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """A uniform [0, 1) value per integer lattice point (a, b): the same point gives the same value whatever the
  canvas, so the background does not depend on how far the camera moves."""
  h = (a.astype(np.int64).astype(np.uint32) * np.uint32(0x9E3779B1)) ^ (
      b.astype(np.int64).astype(np.uint32) * np.uint32(0x85EBCA77)) ^ np.uint32(seed & 0xFFFFFFFF)
  h ^= h >> np.uint32(15)
  h *= np.uint32(0x2C1B3C6D)
  h ^= h >> np.uint32(12)
  h *= np.uint32(0x297A2D39)
  h ^= h >> np.uint32(15)
  return h.astype(np.float64) / 2.0**32


def _interp_matrix(coords: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
  """Smoothstep interpolation weights [len(coords), n] from lattice points of spacing `cell`, and their indices."""
  g = coords / cell
  lo = np.floor(g)
  lattice = np.arange(lo.min(), lo.max() + 2)
  s = g - lo
  s = s * s * (3 - 2 * s)
  weights = np.zeros((len(coords), len(lattice)))
  column = (lo - lattice[0]).astype(np.int64)
  weights[np.arange(len(coords)), column] = 1 - s
  weights[np.arange(len(coords)), column + 1] = s
  return weights, lattice


def _value_noise(seed: int, xs: np.ndarray, ys: np.ndarray, cell: float) -> np.ndarray:
  """Smooth colour noise in [-1, 1]: [len(ys), len(xs), 3]."""
  wx, lx = _interp_matrix(xs, cell)
  wy, ly = _interp_matrix(ys, cell)
  out = np.empty((len(ys), len(xs), 3))
  for c in range(3):
    lattice = _hash01(seed + 7919 * c, lx[None, :], ly[:, None]) * 2 - 1
    out[..., c] = wy @ lattice @ wx.T
  return out


def _background_canvas(background: Background, xs: np.ndarray, ys: np.ndarray, px_per_unit: float) -> np.ndarray:
  """The background sampled at world points xs × ys: float32 [len(ys), len(xs), 3], 0–255, before any style."""
  seed = background.seed
  # Mostly light and dark, a little hue: saturated backgrounds would compete with the palette's colours.
  coarse, fine = _value_noise(seed, xs, ys, 0.8), _value_noise(seed + 1, xs, ys, 0.3)
  colour = (np.asarray(background.base) + 40 * coarse.mean(-1, keepdims=True) + 18 * coarse
            + 16 * fine.mean(-1, keepdims=True) + 8 * fine)
  # Bricks in a turned frame: a light-or-dark offset per brick and a darker joint between bricks.
  cos, sin = math.cos(background.angle), math.sin(background.angle)
  u = xs[None, :] * cos + ys[:, None] * sin
  v = -xs[None, :] * sin + ys[:, None] * cos
  bw, bh = background.brick
  row = np.floor(v / bh)
  u = u + bw * _hash01(seed + 3, row, row)
  col = np.floor(u / bw)
  colour += (24 * (_hash01(seed + 4, col, row) * 2 - 1))[..., None]
  fu, fv = u / bw - col, v / bh - row
  joint_px = np.minimum(np.minimum(fu, 1 - fu) * bw, np.minimum(fv, 1 - fv) * bh) * px_per_unit
  joint = np.clip(0.5 + 0.006 * px_per_unit - joint_px, 0, 1)[..., None]
  colour = colour * (1 - 0.35 * joint)
  return np.clip(colour, 0, 255).astype(np.float32)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)


def style_background(frames: np.ndarray, style: str | None) -> np.ndarray:
  """A background edit, pixel by pixel: float32 [..., 3] in 0–255 → the same."""
  if style is None:
    return frames
  if style == "dark":
    return frames * np.float32(0.35)
  if style == "grayscale":
    return np.repeat(frames @ _LUMA[:, None], 3, axis=-1)
  if style == "inverted":
    return np.float32(255) - frames
  if style == "sepia":
    return np.minimum(frames @ _SEPIA.T, np.float32(255))
  raise ValueError(f"unknown background style {style!r}: expected one of {BACKGROUND_STYLES}")


# ---------------------------------------------------------------------------------------------------------------
# Rendering


@dataclasses.dataclass(frozen=True)
class _View:
  """Per-frame camera of a clip at one size: screen = (world − centre)·zoom·px + (W, H)/2."""
  times: np.ndarray      # [T] seconds
  cx: np.ndarray         # [T]
  cy: np.ndarray         # [T]
  zoom: np.ndarray       # [T]
  px: int                # pixels per world unit at zoom 1 (the short side)
  height: int
  width: int


def _view(camera: Camera, frames: int, height: int, width: int) -> _View:
  times = clip_times(frames)
  cx, cy, zoom = camera.at(times)
  return _View(times, cx, cy, zoom, min(height, width), height, width)


def _screen(view: _View, x: np.ndarray, y: np.ndarray, frames=slice(None)) -> tuple[np.ndarray, np.ndarray]:
  """World points [T, ...] → pixel coordinates (pixel k spans [k, k + 1))."""
  expand = (...,) + (None,) * (x.ndim - 1)     # x, y: [T] or [T, P]
  scale = (view.zoom[frames] * view.px)[expand]
  return ((x - view.cx[frames][expand]) * scale + view.width / 2,
          (y - view.cy[frames][expand]) * scale + view.height / 2)


def visible_fraction(scene: Scene, index: int, times: np.ndarray, height: int, width: int) -> np.ndarray:
  """The fraction of object `index`'s area that is in frame and not behind a later object: [T] float."""
  view = _view(scene.camera, len(times), height, width)
  obj = scene.objects[index]
  grid = np.linspace(-1, 1, 24)
  u, v = np.meshgrid(grid, grid)
  inside = shape_distance(obj.shape, u, v) < 0
  u, v = u[inside], v[inside]                                           # [P] points of the shape
  x, y, theta = obj.path.at(times)
  cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
  wx = x[:, None] + obj.radius * (cos * u - sin * v)                    # [T, P] world points
  wy = y[:, None] + obj.radius * (sin * u + cos * v)
  sx, sy = _screen(view, wx, wy)
  shown = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
  for front in scene.objects[index + 1:]:
    fx, fy, ftheta = front.path.at(times)
    fcos, fsin = np.cos(ftheta)[:, None], np.sin(ftheta)[:, None]
    dx, dy = (wx - fx[:, None]) / front.radius, (wy - fy[:, None]) / front.radius
    shown &= shape_distance(front.shape, fcos * dx + fsin * dy, -fsin * dx + fcos * dy) >= 0
  return shown.mean(axis=1)


_PIXEL = np.dtype((np.void, 12))     # one float32 RGB pixel


def _sample_canvas(canvas: np.ndarray, x0: float, y0: float, view: _View, frames: range) -> np.ndarray:
  """Bilinear resampling of the canvas (pixel (0, 0) centred on world (x0, y0)) by the camera: [t, H, W, 3]."""
  out = np.empty((len(frames), view.height, view.width, 3), np.float32)
  jx, iy = np.arange(view.width) + 0.5, np.arange(view.height) + 0.5
  for k, f in enumerate(frames):
    step = 1 / view.zoom[f]            # canvas pixels per frame pixel (the canvas has view.px per unit)
    cx = (view.cx[f] - x0) * view.px + (jx - view.width / 2) * step
    cy = (view.cy[f] - y0) * view.px + (iy - view.height / 2) * step
    xi, yi = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    wx, wy = (cx - xi).astype(np.float32)[None, :, None], (cy - yi).astype(np.float32)[:, None, None]
    xi = np.clip(xi, 0, canvas.shape[1] - 2)
    yi = np.clip(yi, 0, canvas.shape[0] - 2)
    lo, hi = xi.min(), xi.max() + 2
    rows, below = canvas[yi, lo:hi], canvas[yi + 1, lo:hi]                # [H, W', 3] each
    below -= rows
    below *= wy
    rows += below
    # Gathering whole pixels (12-byte items) along the row is ~2× faster than gathering [..., 3] floats.
    pixels = rows.view(_PIXEL)[..., 0]
    left, right = pixels[:, xi - lo][..., None].view(np.float32), pixels[:, xi + 1 - lo][..., None].view(np.float32)
    right -= left
    right *= wx
    out[k] = left + right
  return out


def _canvas_for(background: Background, view: _View) -> tuple[np.ndarray, float, float]:
  """The background over every point the camera sees during the clip, one canvas pixel per frame pixel at zoom 1."""
  half_x = view.width / (2 * view.px * view.zoom)
  half_y = view.height / (2 * view.px * view.zoom)
  margin = 2 / view.px
  x0 = float(np.min(view.cx - half_x)) - margin
  y0 = float(np.min(view.cy - half_y)) - margin
  nx = int(math.ceil((float(np.max(view.cx + half_x)) + margin - x0) * view.px)) + 2
  ny = int(math.ceil((float(np.max(view.cy + half_y)) + margin - y0) * view.px)) + 2
  xs = x0 + (np.arange(nx) + 0.5) / view.px
  ys = y0 + (np.arange(ny) + 0.5) / view.px
  # Canvas pixel k is centred on x0 + (k + 0.5) / px: shift the origin by half a pixel for _sample_canvas.
  return _background_canvas(background, xs, ys, view.px), x0 + 0.5 / view.px, y0 + 0.5 / view.px


@dataclasses.dataclass
class _Layer:
  """One object over a chunk of frames, in a box of fixed size that follows it."""
  ox: np.ndarray          # [t] int: the box's left column in the frame
  oy: np.ndarray          # [t] int
  coverage: np.ndarray    # [t, B, B] float32 in [0, 1]
  x: np.ndarray           # [t, B, B] object-local world coordinates (for textures)
  y: np.ndarray
  px_per_unit: np.ndarray  # [t, 1, 1]


def _object_layer(obj: SceneObject, view: _View, frames: range) -> _Layer:
  f = np.asarray(frames)
  box = int(math.ceil(2 * _EXTENT * obj.radius * float(view.zoom.max()) * view.px)) + 2
  x, y, theta = obj.path.at(view.times[f])
  cx, cy = _screen(view, x, y, f)
  scale = view.zoom[f] * view.px                                          # [t] pixels per world unit
  ox = np.floor(cx - box / 2).astype(np.int64)
  oy = np.floor(cy - box / 2).astype(np.int64)
  ramp = np.arange(box, dtype=np.float32) + np.float32(0.5)
  dx = ((ox - cx)[:, None] + ramp)[:, None, :] / scale[:, None, None]    # [t, 1, B] world offsets from the centre
  dy = ((oy - cy)[:, None] + ramp)[:, :, None] / scale[:, None, None]    # [t, B, 1]
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  lx, ly = (cos * dx + sin * dy).astype(np.float32), (cos * dy - sin * dx).astype(np.float32)
  px_per_unit = scale.astype(np.float32)[:, None, None]
  d = shape_distance(obj.shape, lx / np.float32(obj.radius), ly / np.float32(obj.radius))
  coverage = _soft_step(d * (np.float32(obj.radius) * px_per_unit)).astype(np.float32)
  return _Layer(ox, oy, coverage, lx, ly, px_per_unit)


def _object_colour(obj: SceneObject, layer: _Layer) -> np.ndarray:
  """The object's colour per box pixel: float32 [t, B, B, 3], or [3] for a solid object."""
  colour = np.asarray(PALETTE[obj.colour], np.float32)
  weight = texture_weight(obj.texture, layer.x, layer.y, layer.px_per_unit)
  if weight is None:
    return colour
  shade = np.round(colour * np.float32(_SHADE))
  weight = weight.astype(np.float32)[..., None]
  return colour * (1 - weight) + shade * weight


def _composite(out: np.ndarray, layer: _Layer, colour: np.ndarray) -> None:
  """out[t, H, W, 3] ← out·(1 − a) + colour·a over the layer's box (a = 0 leaves out bit-identical, a = 1 gives
  the colour exactly)."""
  box = layer.coverage.shape[-1]
  height, width = out.shape[1:3]
  for k in range(out.shape[0]):
    x0, y0 = int(layer.ox[k]), int(layer.oy[k])
    xa, xb, ya, yb = max(x0, 0), min(x0 + box, width), max(y0, 0), min(y0 + box, height)
    if xa >= xb or ya >= yb:
      continue
    a = layer.coverage[k, ya - y0:yb - y0, xa - x0:xb - x0, None]
    c = colour if colour.ndim == 1 else colour[k, ya - y0:yb - y0, xa - x0:xb - x0]
    region = out[k, ya:yb, xa:xb]
    out[k, ya:yb, xa:xb] = region * (1 - a) + c * a


def _geometry_key(obj: SceneObject):
  return obj.shape, obj.radius, obj.path


def render_scenes(scenes: Sequence[Scene], *, frames: int, height: int, width: int) -> list[np.ndarray]:
  """Several versions of one scene (same camera and background up to its style), sharing the work they have in
  common: uint8 [T, H, W, 3] each. Each output equals `render_scene` of its scene bit for bit."""
  _check_sizes(frames, height, width)
  first = scenes[0]
  for scene in scenes[1:]:
    if scene.camera != first.camera or dataclasses.replace(scene.background, style=None) != dataclasses.replace(
        first.background, style=None):
      raise ValueError("render_scenes: the scenes must share camera and background (up to its style)")
  view = _view(first.camera, frames, height, width)
  canvas, x0, y0 = _canvas_for(first.background, view)
  outputs = [np.empty((frames, height, width, 3), np.uint8) for _ in scenes]
  for start in range(0, frames, _CHUNK):
    chunk = range(start, min(start + _CHUNK, frames))
    plain = _sample_canvas(canvas, x0, y0, view, chunk)
    layers, colours = {}, {}
    for k, (scene, output) in enumerate(zip(scenes, outputs)):
      out = style_background(plain, scene.background.style)
      if out is plain and k < len(scenes) - 1:    # later scenes still need the plain background
        out = plain.copy()
      for obj in scene.objects:
        key = _geometry_key(obj)
        if key not in layers:
          layers[key] = _object_layer(obj, view, chunk)
        if (key, obj.colour, obj.texture) not in colours:
          colours[key, obj.colour, obj.texture] = _object_colour(obj, layers[key])
        _composite(out, layers[key], colours[key, obj.colour, obj.texture])
      # Backgrounds, styles and blends all stay within [0, 255], so rounding needs no clip.
      output[start:start + len(chunk)] = np.rint(out, out=out)
  return outputs


def render_scene(scene: Scene, *, frames: int, height: int, width: int) -> np.ndarray:
  """One scene: uint8 [T, H, W, 3]."""
  return render_scenes([scene], frames=frames, height=height, width=width)[0]


# ---------------------------------------------------------------------------------------------------------------
# Examples


def changed_pixels(source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """(source != target).any(-1) for [..., 3] arrays, channel by channel (3× faster than a reduce over 3)."""
  diff = source != target
  return diff[..., 0] | diff[..., 1] | diff[..., 2]


def render_example(seed: int, *, frames: int, height: int, width: int, split: str = "train") -> EditExample:
  """The example of `seed`; the split decides which (colour, shape, edit) combinations may be drawn."""
  scene, edit = draw_scene(seed, frames=frames, height=height, width=width, split=split)
  if edit.kind == "none":
    source = render_scene(scene, frames=frames, height=height, width=width)
    target = source.copy()
  else:
    source, target = render_scenes([scene, apply_edit(scene, edit)], frames=frames, height=height, width=width)
  phrasings = instruction_templates(edit)
  # The phrasing comes from its own generator so that adding a template does not change any scene.
  phrasing = phrasings[np.random.default_rng([seed, 1]).integers(len(phrasings))]
  offset = SPLITS.index(split) * _SPLIT_STRIDE
  index = seed - offset if 0 <= seed - offset < _SPLIT_STRIDE else -1
  return EditExample(source=source, target=target, mask=changed_pixels(source, target), instruction=phrasing,
                     edit=edit, split=split, index=index, seed=int(seed))


def make_example(split: str, index: int, *, frames: int, height: int, width: int) -> EditExample:
  """Example `index` of `split`: the same arrays on every call."""
  return render_example(example_seed(split, index), frames=frames, height=height, width=width, split=split)


# ---------------------------------------------------------------------------------------------------------------
# Picture and speed


def save_picture(path: str, *, frames: int = 16, height: int = 128, width: int = 128, split: str = "val") -> None:
  """One row per edit kind: source | target | mask at the frame where the mask is largest, instruction above."""
  from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415  (only the picture needs PIL)

  rows, index = {}, 0
  while len(rows) < len(EDIT_KINDS):
    scene, edit = draw_scene(example_seed(split, index), frames=frames, height=height, width=width, split=split)
    if edit.kind not in rows and (edit.kind != "retexture" or edit.texture == "solid"):
      rows[edit.kind] = make_example(split, index, frames=frames, height=height, width=width)
    index += 1
  gap, text_h, header = 6, 18, 18
  picture = Image.new("RGB", (3 * width + 4 * gap, header + len(EDIT_KINDS) * (text_h + height + gap)), "white")
  draw = ImageDraw.Draw(picture)
  font = ImageFont.load_default(size=12)
  for c, name in enumerate(("source", "target", "mask")):
    draw.text((gap + c * (width + gap), 2), name, fill="black", font=font)
  for r, kind in enumerate(EDIT_KINDS):
    ex = rows[kind]
    f = int(np.argmax(ex.mask.sum((1, 2)))) if ex.mask.any() else frames // 2
    top = header + r * (text_h + height + gap)
    draw.text((gap, top + 2), f"{kind}: \"{ex.instruction}\" (frame {f})", fill="black", font=font)
    cells = (ex.source[f], ex.target[f], np.repeat(ex.mask[f, :, :, None] * np.uint8(255), 3, -1))
    for c, cell in enumerate(cells):
      picture.paste(Image.fromarray(cell), (gap + c * (width + gap), top + text_h))
  _FilePath(path).parent.mkdir(parents=True, exist_ok=True)
  picture.save(path, optimize=True)


def measure_speed(*, frames: int, height: int, width: int, examples: int) -> float:
  """Frames per second (source and target together) over `examples` val examples, after one warm-up."""
  make_example("val", 0, frames=frames, height=height, width=width)
  start = time.perf_counter()
  for i in range(examples):
    make_example("val", i + 1, frames=frames, height=height, width=width)
  return examples * frames / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--picture", help="write the one-row-per-edit-kind picture here (PNG)")
  parser.add_argument("--bench", action="store_true", help="print frames/s at 128×128 and 480×832")
  args = parser.parse_args(argv)
  if args.picture:
    save_picture(args.picture)
  if args.bench:
    for frames, height, width, examples in ((17, 128, 128, 40), (17, 480, 832, 4)):
      fps = measure_speed(frames=frames, height=height, width=width, examples=examples)
      print(f"{frames} frames at {height}×{width}: {fps:.0f} frames/s")
  if not (args.picture or args.bench):
    parser.print_help()


if __name__ == "__main__":
  main()
