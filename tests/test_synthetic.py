"""The procedural editing generator: determinism, exact masks, the edits' ground truth, splits and shapes."""

import dataclasses
import math

import numpy as np
import pytest

from liveedit_jax import synthetic as syn

SIZE = dict(frames=8, height=32, width=48)


def _find(split, want, *, start=0, limit=400, **size):
  """The first index from `start` whose drawn (scene, edit) satisfies `want`."""
  size = size or SIZE
  for index in range(start, start + limit):
    scene, edit = syn.draw_scene(syn.example_seed(split, index), split=split, **size)
    if want(scene, edit):
      return index, scene, edit
  raise AssertionError("no such example")


def _erode(mask, radius):
  """mask [T, H, W] → the pixels whose whole (2r+1)² neighbourhood is in the mask."""
  t, h, w = mask.shape
  padded = np.zeros((t, h + 2 * radius, w + 2 * radius), bool)
  padded[:, radius:radius + h, radius:radius + w] = mask
  out = np.ones_like(mask)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      out &= padded[:, dy:dy + h, dx:dx + w]
  return out


def test_same_index_same_example_and_indices_differ():
  a = syn.make_example("train", 3, **SIZE)
  b = syn.make_example("train", 3, **SIZE)
  for field in ("source", "target", "mask"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert (a.instruction, a.edit, a.seed, a.index, a.split) == (b.instruction, b.edit, b.seed, b.index, b.split)
  assert a.source.dtype == np.uint8 and a.source.shape == (8, 32, 48, 3) and a.mask.shape == (8, 32, 48)
  c = syn.make_example("train", 4, **SIZE)
  assert not np.array_equal(a.source, c.source)
  assert a.index == 3 and a.seed == syn.example_seed("train", 3)


def test_mask_is_exactly_the_changed_pixels_for_every_kind():
  seen = set()
  for index in range(40):
    ex = syn.make_example("val", index, **SIZE)
    seen.add(ex.edit.kind)
    np.testing.assert_array_equal(ex.mask, (ex.source != ex.target).any(-1))
    np.testing.assert_array_equal(ex.source[~ex.mask], ex.target[~ex.mask])
    if ex.edit.kind == "none":
      assert not ex.mask.any()
    else:
      # The edited object shows in ≥ 60 % of the frames (background edits change nearly everything).
      assert ex.mask.any((1, 2)).mean() >= 0.6, (index, ex.edit)
    # The pair renderer shares work between source and target; rendering each scene alone gives the same bits.
    scene, edit = syn.draw_scene(ex.seed, split="val", **SIZE)
    assert edit == ex.edit
    np.testing.assert_array_equal(syn.render_scene(scene, **SIZE), ex.source)
    np.testing.assert_array_equal(syn.render_scene(syn.apply_edit(scene, edit), **SIZE), ex.target)
  assert seen == set(syn.EDIT_KINDS)


def test_removal_reveals_the_background_and_the_objects_behind():
  # Only object removed: the target is the bare background, rendered with no objects at all.
  index, scene, edit = _find("train", lambda s, e: e.kind == "remove" and len(s.objects) == 1)
  ex = syn.make_example("train", index, **SIZE)
  bare = syn.render_scene(dataclasses.replace(scene, objects=()), **SIZE)
  np.testing.assert_array_equal(ex.target, bare)
  assert ex.mask.any()
  # Removed from several: the target is the scene rendered from the list without it, the others (in front and
  # behind) untouched.
  index, scene, edit = _find("train", lambda s, e: e.kind == "remove" and len(s.objects) >= 3
                             and (s.objects[0].colour, s.objects[0].shape) != (e.colour, e.shape))
  ex = syn.make_example("train", index, **SIZE)
  rest = tuple(o for o in scene.objects if (o.colour, o.shape) != (edit.colour, edit.shape))
  assert len(rest) == len(scene.objects) - 1
  np.testing.assert_array_equal(ex.target, syn.render_scene(dataclasses.replace(scene, objects=rest), **SIZE))


def test_recolor_fills_the_object_with_the_new_palette_colour():
  size = dict(frames=4, height=64, width=64)
  checked = 0
  for start in (0, 200, 400):
    index, scene, edit = _find("test", lambda s, e: e.kind == "recolor" and e.texture == "solid", start=start,
                               **size)
    ex = syn.make_example("test", index, **size)
    interior = _erode(ex.mask, 2)         # two pixels from the anti-aliased edges and from occluders' edges
    assert interior.sum() > 20
    np.testing.assert_array_equal(ex.target[interior], np.broadcast_to(syn.PALETTE[edit.new_colour],
                                                                       (interior.sum(), 3)))
    np.testing.assert_array_equal(ex.source[interior], np.broadcast_to(syn.PALETTE[edit.colour],
                                                                       (interior.sum(), 3)))
    # The edge is anti-aliased: some changed pixels are neither the old colour nor the new one.
    edge = ex.mask & ~interior
    plain = (ex.source[edge] == syn.PALETTE[edit.colour]).all(-1)
    assert (~plain).sum() > 0
    checked += 1
  assert checked == 3


def test_background_edit_is_the_style_applied_to_the_background():
  index, scene, edit = _find("train", lambda s, e: e.kind == "background" and e.style == "inverted")
  ex = syn.make_example("train", index, **SIZE)
  bare = syn.render_scene(dataclasses.replace(scene, objects=()), **SIZE).astype(np.int64)
  styled = syn.render_scene(dataclasses.replace(scene, objects=(), background=dataclasses.replace(
      scene.background, style="inverted")), **SIZE).astype(np.int64)
  # Inversion of the float background before rounding: 255 − round(x) and round(255 − x) agree to one level.
  assert np.abs(styled - (255 - bare)).max() <= 1
  # Away from objects (a pixel from anything that differs from the bare background: an edge pixel covered by a
  # sliver rounds to the background in the source but not in the inverted target) the target is the inverted one.
  free = _erode((ex.source == bare).all(-1), 1)
  assert free.mean() > 0.5
  np.testing.assert_array_equal(ex.target[free], styled[free])


def test_split_seeds_are_disjoint_and_checked():
  last = {s: syn.example_seed(s, 10**8 - 1) for s in syn.SPLITS}
  first = {s: syn.example_seed(s, 0) for s in syn.SPLITS}
  ranges = sorted((first[s], last[s]) for s in syn.SPLITS)
  assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))
  with pytest.raises(ValueError, match="-1"):
    syn.example_seed("train", -1)
  with pytest.raises(ValueError, match="'training'"):
    syn.example_seed("training", 0)


def test_heldout_triples_only_in_heldout():
  size = dict(frames=8, height=32, width=32)
  colours, shapes, kinds = set(), set(), []
  for split in ("train", "val", "test"):
    for index in range(120):
      scene, edit = syn.draw_scene(syn.example_seed(split, index), split=split, **size)
      kinds.append(edit.kind)
      pairs = [(o.colour, o.shape) for o in scene.objects]
      assert len(set(pairs)) == len(pairs)                # "the red circle" names one object
      if edit.kind in syn.OBJECT_EDITS:
        assert (edit.colour, edit.shape, edit.kind) not in syn.HELDOUT
        assert (edit.colour, edit.shape) in pairs
        colours.add(edit.colour)
        shapes.add(edit.shape)
  assert colours == set(syn.PALETTE) and shapes == set(syn.SHAPES)
  counts = {k: kinds.count(k) / len(kinds) for k in syn.EDIT_KINDS}
  assert all(0.15 < counts[k] < 0.3 for k in syn.OBJECT_EDITS + ("background",)), counts
  assert 0.04 < counts["none"] < 0.17, counts
  for index in range(40):
    scene, edit = syn.draw_scene(syn.example_seed("heldout", index), split="heldout", **size)
    assert (edit.colour, edit.shape, edit.kind) in syn.HELDOUT
  # Every colour and shape of HELDOUT is edited in training too, in other combinations.
  assert {c for c, _, _ in syn.HELDOUT} <= colours and {s for _, s, _ in syn.HELDOUT} <= shapes


@pytest.mark.parametrize("size, name", [(dict(frames=8, height=40, width=48), "height=40"),
                                        (dict(frames=8, height=32, width=0), "width=0"),
                                        (dict(frames=0, height=32, width=48), "frames=0")])
def test_bad_sizes_raise(size, name):
  with pytest.raises(ValueError, match=name):
    syn.make_example("train", 0, **size)


def test_unknown_split_raises():
  with pytest.raises(ValueError, match="'dev'"):
    syn.render_example(0, split="dev", **SIZE)


def test_instructions_cover_every_example():
  corpus = syn.instructions()
  assert corpus == sorted(set(corpus))
  for text in ("make the red circle blue", "turn the red circle blue", "change the colour of the red circle to blue",
               "make the red square striped", "give the red square a checker pattern", "make the red square dotted",
               "make the red square plain", "remove the red circle", "delete the red circle",
               "make the red circle disappear", "make the background dark", "turn the background grey",
               "keep the video as it is", "leave it unchanged"):
    assert text in corpus
  assert "make the red circle red" not in corpus
  for index in range(30):
    ex = syn.make_example("train", index, frames=1, height=16, width=16)
    assert ex.instruction in corpus
    assert ex.instruction in syn.instruction_templates(ex.edit)


def _polygon(shape):
  """The outline as a polygon, built from the shapes' definitions (vertices, not distances)."""
  def ring(radii):
    angles = np.arange(len(radii)) * 2 * np.pi / len(radii)
    return np.stack([radii * np.sin(angles), -radii * np.cos(angles)], -1)    # the first vertex at −v (up)
  if shape == "square":
    return np.array([[-0.75, -0.75], [0.75, -0.75], [0.75, 0.75], [-0.75, 0.75]])
  if shape == "triangle":
    return ring(np.ones(3))
  return ring(np.tile([1.0, 0.45], 5))


def _segment_distance(points, polygon):
  """Distance from points [P, 2] to the polygon's edges, and where on its edge the nearest point lies (0–1)."""
  a, b = polygon, np.roll(polygon, -1, axis=0)
  ab = b - a
  t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)     # [P, E]
  d = np.linalg.norm(points[:, None] - (a + t[..., None] * ab), axis=-1)
  nearest = d.argmin(1)
  return d[np.arange(len(points)), nearest], t[np.arange(len(points)), nearest]


def _inside(points, polygon):
  """Even-odd ray casting."""
  x, y = points[:, 0, None], points[:, 1, None]
  a, b = polygon, np.roll(polygon, -1, axis=0)
  crosses = (a[:, 1] > y) != (b[:, 1] > y)
  x_at = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1] + 1e-300)
  return (crosses & (x < x_at)).sum(1) % 2 == 1


@pytest.mark.parametrize("shape", ["square", "triangle", "star"])
def test_shape_distance_matches_the_polygon(shape):
  rng = np.random.default_rng()
  points = rng.uniform(-1.2, 1.2, size=(20000, 2))
  polygon = _polygon(shape)
  distance, along = _segment_distance(points, polygon)
  sd = syn.shape_distance(shape, points[:, 0], points[:, 1])
  inside = _inside(points, polygon)
  clear = distance > 1e-6
  np.testing.assert_array_equal(sd[clear] < 0, inside[clear])
  # Exact near an edge's middle: the distance that the anti-aliasing turns into coverage.
  edge = (distance < 0.05) & (along > 0.2) & (along < 0.8)
  assert edge.sum() > 300
  np.testing.assert_allclose(np.abs(sd[edge]), distance[edge], rtol=1e-5, atol=1e-7)


def test_round_shapes_against_radii():
  rng = np.random.default_rng()
  u, v = rng.uniform(-1.2, 1.2, size=(2, 5000))
  rho = np.hypot(u, v)
  np.testing.assert_allclose(syn.shape_distance("circle", u, v), rho - 1, rtol=1e-6)
  expected = np.where(rho > 0.7, rho - 1, 0.4 - rho)
  np.testing.assert_allclose(syn.shape_distance("ring", u, v), expected, rtol=1e-6, atol=1e-12)


def test_coverage_is_the_area_seen_by_dense_supersampling():
  """Each pixel's anti-aliased coverage against a 16×16 point sample of the pixel, for every shape."""
  rng = np.random.default_rng()
  frames, height, width = 2, 32, 48
  for shape in syn.SHAPES:
    path = syn.Path(mid=tuple(rng.uniform(-0.2, 0.2, 2)), velocity=(0.3, -0.1), amplitude=(0.0, 0.0),
                    freq=(0.0, 0.0), phase=(0.0, 0.0), theta0=float(rng.uniform(0, 6.3)), omega=0.5)
    obj = syn.SceneObject(shape, "red", "solid", 0.3, path)
    camera = syn.Camera(syn.Path((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)), 1.0, 0.0)
    view = syn._view(camera, frames, height, width)
    layer = syn._object_layer(obj, view, range(frames))
    box = layer.coverage.shape[-1]
    x, y, theta = path.at(view.times)
    for f in range(frames):
      sub = (np.arange(16) + 0.5) / 16
      px = layer.ox[f] + np.arange(box)[:, None] + sub[None, :]          # [B, 16] sample columns
      py = layer.oy[f] + np.arange(box)[:, None] + sub[None, :]
      wx = (px - width / 2) / view.px - x[f]                             # world offsets (camera at 0, zoom 1)
      wy = (py - height / 2) / view.px - y[f]
      WX, WY = wx[None, None, :, :], wy[:, :, None, None]                # [By, 16, Bx, 16]
      c, s = math.cos(theta[f]), math.sin(theta[f])
      u, v = (c * WX + s * WY) / 0.3, (c * WY - s * WX) / 0.3
      dense = (syn.shape_distance(shape, u, v) < 0).mean((1, 3))         # [By, Bx]
      error = np.abs(layer.coverage[f] - dense)
      # Edges and arcs match to the 1/16 sampling; within 1.5 px of a polygon's vertex the distance is only a bound
      # (a corner pixel is up to ~0.4 too covered: the corner looks rounded by a fraction of a pixel).
      far = np.ones_like(error, bool)
      if shape in ("square", "triangle", "star"):
        pu, pv = _polygon(shape).T
        vx, vy = 0.3 * (c * pu - s * pv), 0.3 * (s * pu + c * pv)                          # local → world
        vx, vy = (vx + x[f]) * view.px + width / 2, (vy + y[f]) * view.px + height / 2     # vertices in pixels
        cx = layer.ox[f] + np.arange(box) + 0.5
        cy = layer.oy[f] + np.arange(box) + 0.5
        near = np.hypot(cx[None, :, None] - vx, cy[:, None, None] - vy).min(-1)
        far = near > 1.5
      assert error[far].max() < 0.07, shape
      assert error.max() < 0.45, shape
      np.testing.assert_allclose(layer.coverage[f].sum(), dense.sum(), rtol=0.015)
      assert ((layer.coverage[f] > 0) & (layer.coverage[f] < 1)).sum() > 10   # an anti-aliased rim exists


def test_camera_and_objects_move():
  ex = syn.make_example("train", 5, frames=6, height=64, width=64)
  steps = np.abs(np.diff(ex.source.astype(np.int64), axis=0)).mean((1, 2, 3))
  assert (steps > 0.5).all()
  one = syn.make_example("train", 5, frames=1, height=64, width=64)
  assert one.source.shape == (1, 64, 64, 3)


def _dark_reference(texture, x, y):
  """Where a texture shows its second colour, from the pattern's definition (points, no distances)."""
  if texture == "stripes":
    return np.abs(np.mod(x / syn._STRIPE_PERIOD, 1) - 0.5) < 0.25
  if texture == "checker":
    cell = lambda c: np.floor(2 * c / syn._CHECKER_PERIOD + 0.5) % 2 == 1      # the bands centred on half periods
    return cell(x) != cell(y)
  nearest = lambda c: (np.floor(c / syn._DOT_PERIOD) + 0.5) * syn._DOT_PERIOD
  return np.hypot(x - nearest(x), y - nearest(y)) < syn._DOT_RADIUS


@pytest.mark.parametrize("texture", ["stripes", "checker", "dots"])
def test_texture_weight_is_the_supersampled_pattern(texture):
  rng = np.random.default_rng()
  px = 128.0                                                  # pixels per world unit, as at 128×128
  angle, shift = rng.uniform(0, np.pi), rng.uniform(0, 1, 2)
  c, s = math.cos(angle), math.sin(angle)
  size, sub = 40, 16
  def local(points):                                          # pixel coordinates → turned object-local units
    gx, gy = points
    return (c * gx + s * gy) / px + shift[0], (c * gy - s * gx) / px + shift[1]
  centres = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
  weight = syn.texture_weight(texture, *local(centres), np.float32(px))
  fine = np.meshgrid((np.arange(size * sub) + 0.5) / sub, (np.arange(size * sub) + 0.5) / sub)
  dense = _dark_reference(texture, *local(fine)).reshape(size, sub, size, sub).mean((1, 3))
  error = np.abs(weight - dense)
  # Straight pattern edges are exact to the sampling; the checker's corners and the dots' curvature are near.
  assert error.mean() < 0.015, error.mean()
  assert error.max() < (0.12 if texture == "checker" else 0.1), error.max()
  assert 0.1 < weight.mean() < 0.6 and ((weight > 0.05) & (weight < 0.95)).any()
  assert syn.texture_weight("solid", *local(centres), np.float32(px)) is None


def test_picture_entry_point(tmp_path):
  from PIL import Image
  path = tmp_path / "edits.png"
  syn.main(["--picture", str(path)])
  with Image.open(path) as picture:
    assert picture.size == (3 * 128 + 4 * 6, 18 + 5 * (18 + 128 + 6))
    pixels = np.asarray(picture.convert("RGB"))
  assert path.stat().st_size < 300_000
  # The third column of the none row is an empty mask: black.
  top = 18 + 4 * (18 + 128 + 6) + 18
  left = 6 + 2 * (128 + 6)
  assert (pixels[top:top + 128, left:left + 128] == 0).all()
