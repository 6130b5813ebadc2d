"""The editing metrics against hand computations on small arrays, slow per-pixel loops and a torch CLIP."""

import json
import math
import zlib

import numpy as np
import pytest

from liveedit_jax import metrics as M

RED, BLUE = (220, 40, 40), (40, 70, 220)


def _rng(request):
  """Random inputs per test, reproducible from the test's name."""
  return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ------------------------------------------------------------------------------------------------------ PSNR

def test_psnr_of_a_constant_error(request):
  rng = _rng(request)
  target = rng.uniform(0.1, 0.8, (2, 3, 4, 4, 3))
  delta = np.array([0.05, 0.013])[:, None, None, None, None]
  np.testing.assert_allclose(M.psnr(target + delta, target), -20 * np.log10([0.05, 0.013]), rtol=1e-12)
  # uint8 frames are divided by 255: an error of 5 steps is 20·log10(255 / 5) dB.
  t8 = rng.integers(10, 200, (2, 3, 4, 4, 3), dtype=np.uint8)
  np.testing.assert_allclose(M.psnr(t8 + np.uint8(5), t8), 20 * math.log10(255 / 5), rtol=1e-12)
  # equal frames: the cap, not inf
  np.testing.assert_array_equal(M.psnr(t8, t8), [M.PSNR_CAP, M.PSNR_CAP])


def test_masked_psnr_and_the_edit_background_partition(request):
  rng = _rng(request)
  target = rng.uniform(0.2, 0.7, (2, 3, 4, 4, 3))
  mask = rng.random((2, 3, 4, 4)) < 0.4
  e_in, e_out = np.array([0.1, 0.03]), np.array([0.02, 0.15])
  err = np.where(mask, e_in[:, None, None, None], e_out[:, None, None, None])[..., None]
  pred = target + err * np.array([1.0, -1.0, 1.0])  # the sign does not matter to a square
  np.testing.assert_allclose(M.edit_psnr(pred, target, mask), -20 * np.log10(e_in), rtol=1e-12)
  np.testing.assert_allclose(M.background_psnr(pred, target, mask), -20 * np.log10(e_out), rtol=1e-12)
  np.testing.assert_allclose(M.psnr(pred, target, mask), -20 * np.log10(e_in), rtol=1e-12)
  n_in = mask.reshape(2, -1).sum(1)
  n = mask[0].size
  pooled = (n_in * e_in ** 2 + (n - n_in) * e_out ** 2) / n
  np.testing.assert_allclose(M.psnr(pred, target), -10 * np.log10(pooled), rtol=1e-12)


def test_chroma_psnr_sees_colour_that_psnr_misses(request):
  """A brightness error with the colour right: PSNR finite, chroma PSNR at the cap. Grey frames of the right
  brightness: all their error is colour (chroma PSNR = PSNR), the slow per-pixel value."""
  rng = _rng(request)
  target = rng.uniform(0.35, 0.65, (2, 3, 4, 4, 3))
  brighter = target + rng.uniform(-0.3, 0.3, target.shape[:-1] + (1,))
  np.testing.assert_array_equal(M.chroma_psnr(brighter, target), [M.PSNR_CAP, M.PSNR_CAP])
  assert (M.psnr(brighter, target) < 20).all()
  grey = np.repeat(target.mean(-1, keepdims=True), 3, -1)
  for b in range(2):
    err = [(float(t) - float(t_c.mean())) ** 2 for t_c in target[b].reshape(-1, 3) for t in t_c]
    assert M.chroma_psnr(grey, target)[b] == pytest.approx(-10 * math.log10(np.mean(err)), rel=1e-12)
  mask = rng.random((2, 3, 4, 4)) < 0.5
  np.testing.assert_allclose(M.chroma_psnr(grey, target, mask), M.psnr(grey, target, mask), rtol=1e-12)


def test_empty_mask_gives_nan_for_the_edit_and_the_whole_clip_for_the_background(request):
  rng = _rng(request)
  target = rng.uniform(0.2, 0.7, (2, 3, 4, 4, 3))
  pred = target + 0.04
  mask = np.zeros((2, 3, 4, 4), bool)
  mask[1, 2, 1:3, 0] = True
  edit = M.edit_psnr(pred, target, mask)
  assert np.isnan(edit[0]) and edit[1] == pytest.approx(-20 * math.log10(0.04), rel=1e-12)
  np.testing.assert_allclose(M.background_psnr(pred, target, mask), -20 * math.log10(0.04), rtol=1e-12)
  assert np.isnan(M.background_psnr(pred, target, np.ones_like(mask))).all()


# ------------------------------------------------------------------------------------------------------ SSIM

def _reflect(i, n):
  """Mirror index with the edge repeated (… b a | a b … z | z y …), folded until inside [0, n)."""
  while i < 0 or i >= n:
    i = -i - 1 if i < 0 else 2 * n - i - 1
  return i


def _ssim_map_slow(x, y):
  """x, y: float [H, W, 3] → [H, W]: the SSIM formula evaluated at each pixel and channel from its 11×11 window."""
  h, w, _ = x.shape
  g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
  g /= g.sum()
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  out = np.zeros((h, w))
  for i in range(h):
    rows = [_reflect(i + d, h) for d in range(-5, 6)]
    for j in range(w):
      cols = [_reflect(j + d, w) for d in range(-5, 6)]
      wts = np.outer(g, g)
      for c in range(3):
        px, py = x[np.ix_(rows, cols, [c])][..., 0], y[np.ix_(rows, cols, [c])][..., 0]
        mx, my = (wts * px).sum(), (wts * py).sum()
        vx, vy = (wts * (px - mx) ** 2).sum(), (wts * (py - my) ** 2).sum()
        cxy = (wts * (px - mx) * (py - my)).sum()
        out[i, j] += ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)) / 3
  return out


@pytest.mark.parametrize("hw", [(4, 4), (7, 13)])
def test_ssim_map_matches_a_slow_per_pixel_formula(request, hw):
  rng = _rng(request)
  x = rng.random((1, 2, *hw, 3))
  y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
  fast = M.ssim_map(x, y)
  slow = np.stack([_ssim_map_slow(x[0, t], y[0, t]) for t in range(2)])[None]
  np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_ssim_of_constant_frames_and_of_a_clip_with_itself(request):
  rng = _rng(request)
  a, b = 0.3, 0.7
  x, y = np.full((1, 2, 5, 6, 3), a), np.full((1, 2, 5, 6, 3), b)
  np.testing.assert_allclose(M.ssim(x, y), (2 * a * b + 1e-4) / (a * a + b * b + 1e-4), rtol=1e-12)
  z = rng.integers(0, 256, (2, 3, 9, 8, 3), dtype=np.uint8)
  np.testing.assert_allclose(M.ssim(z, z), 1.0, rtol=1e-12)
  mask = rng.random((2, 3, 9, 8)) < 0.5
  np.testing.assert_allclose(M.edit_ssim(z, z, mask), 1.0, rtol=1e-12)
  assert (M.ssim(z, np.clip(z.astype(int) + rng.integers(-60, 60, z.shape), 0, 255).astype(np.uint8)) < 0.95).all()


def test_masked_ssim_averages_each_frames_masked_pixels_then_frames(request):
  rng = _rng(request)
  x = rng.random((2, 3, 5, 6, 3))
  y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
  mask = rng.random((2, 3, 5, 6)) < 0.4
  mask[0, 1] = False  # a frame with no edit pixels drops out of the edit mean
  mask[1] = False      # a clip with none has no edit SSIM
  full = np.stack([np.stack([_ssim_map_slow(x[b, t], y[b, t]) for t in range(3)]) for b in range(2)])
  edit0 = np.mean([full[0, t][mask[0, t]].mean() for t in (0, 2)])
  back = [np.mean([full[b, t][~mask[b, t]].mean() for t in range(3)]) for b in range(2)]
  got = M.edit_ssim(x, y, mask)
  assert got[0] == pytest.approx(edit0, rel=1e-10) and np.isnan(got[1])
  np.testing.assert_allclose(M.background_ssim(x, y, mask), back, rtol=1e-10)
  np.testing.assert_allclose(M.ssim(x, y), full.mean((1, 2, 3)), rtol=1e-10)


# ------------------------------------------------------------------------------------------- edit and motion

def test_edit_accuracy_counts_masked_pixels_nearer_the_instructed_colour(request):
  rng = _rng(request)
  b, t, h, w = 2, 3, 4, 4
  pred = np.zeros((b, t, h, w, 3), np.uint8)
  mask = rng.random((b, t, h, w)) < 0.6
  blue_like = rng.random((b, t, h, w)) < 0.5
  noise = rng.integers(-20, 21, (b, t, h, w, 3))
  pred[:] = np.clip(np.where(blue_like[..., None], BLUE, RED) + noise, 0, 255)
  pred[~mask] = BLUE  # outside the mask nothing counts
  src, new = np.array([RED, RED]), np.array([BLUE, BLUE])
  expected = [(blue_like[i] & mask[i]).sum() / mask[i].sum() for i in range(b)]
  np.testing.assert_allclose(M.edit_accuracy(pred, mask, src, new), expected, rtol=1e-12)
  # float frames are the same colours /255; swapping the colours gives the complement
  np.testing.assert_allclose(M.edit_accuracy(pred / 255.0, mask, src, new), expected, rtol=1e-12)
  np.testing.assert_allclose(M.edit_accuracy(pred, mask, new, src), 1 - np.array(expected), rtol=1e-12)


def test_edit_accuracy_ties_and_an_empty_mask():
  mid = (np.array(RED) + np.array(BLUE)) // 2  # (130, 55, 130), equidistant: not nearer the instructed colour
  pred = np.broadcast_to(mid.astype(np.uint8), (2, 1, 2, 2, 3))
  mask = np.zeros((2, 1, 2, 2), bool)
  mask[0] = True
  got = M.edit_accuracy(pred, mask, np.array([RED, RED]), np.array([BLUE, BLUE]))
  assert got[0] == 0.0 and np.isnan(got[1])


def test_flicker_zero_for_the_same_motion_and_the_offset_steps_otherwise(request):
  rng = _rng(request)
  target = rng.uniform(0.2, 0.6, (2, 5, 4, 4, 3))
  np.testing.assert_allclose(M.flicker(target + 0.1, target), 0.0, atol=1e-15)
  offsets = rng.uniform(-0.1, 0.1, (2, 5))
  pred = target + offsets[:, :, None, None, None]
  np.testing.assert_allclose(M.flicker(pred, target), np.abs(np.diff(offsets, axis=1)).mean(1), rtol=1e-10)
  assert np.isnan(M.flicker(target[:, :1], target[:, :1])).all()


def test_chunk_errors_splits_the_frames(request):
  rng = _rng(request)
  target = rng.uniform(0.2, 0.7, (2, 7, 4, 4, 3))
  mask = rng.random((2, 7, 4, 4)) < 0.3
  mask[1, 3:] = False  # clip 1's second chunk has no edit pixels
  e = np.array([0.01, 0.02, 0.02, 0.05, 0.05, 0.05, 0.05])  # chunk (3, 4): errors 0.01/0.02 mixed, then 0.05
  pred = target + np.where(mask, 0.1, e[None, :, None, None])[..., None]
  got = M.chunk_errors(pred, target, (3, 4), mask, where="background")
  # background of chunk 0: the pooled MSE of its frames' unmasked errors
  for b in range(2):
    out = ~mask[b, :3]
    mse = (out * e[:3, None, None] ** 2).sum() / out.sum()
    assert got[b, 0] == pytest.approx(-10 * math.log10(mse), rel=1e-12)
  np.testing.assert_allclose(got[:, 1], -20 * math.log10(0.05), rtol=1e-12)
  edit = M.chunk_errors(pred, target, (3, 4), mask, where="edit")
  np.testing.assert_allclose(edit[:, 0], 20.0, rtol=1e-12)
  assert edit[0, 1] == pytest.approx(20.0, rel=1e-12) and np.isnan(edit[1, 1])
  every = M.chunk_errors(pred, target, [3, 4], where="all")
  np.testing.assert_allclose(every, np.stack([M.psnr(pred[:, :3], target[:, :3]),
                                              M.psnr(pred[:, 3:], target[:, 3:])], 1), rtol=1e-12)
  with pytest.raises(ValueError, match=r"summing to T = 7"):
    M.chunk_errors(pred, target, (3, 3), mask)
  with pytest.raises(ValueError, match="needs the edit mask"):
    M.chunk_errors(pred, target, (3, 4))
  with pytest.raises(ValueError, match="where='middle'"):
    M.chunk_errors(pred, target, (3, 4), mask, where="middle")


# ------------------------------------------------------------------------------------------------- tokens

def test_token_mask_on_a_hand_made_mask():
  mask = np.zeros((1, 9, 8, 8), bool)  # T = 9 → F = 3: {0}, {1..4}, {5..8}; 4×4-pixel tokens → 2×2
  mask[0, 0, 1, 1] = True   # frame 0 alone → latent 0, token (0, 0)
  mask[0, 1, 5, 2] = True   # frame 1 → latent 1, token (1, 0)
  mask[0, 4, 0, 7] = True   # frame 4 → still latent 1, token (0, 1)
  mask[0, 5, 7, 7] = True   # frame 5 → latent 2, token (1, 1)
  expected = np.zeros((1, 3, 2, 2), bool)
  expected[0, 0, 0, 0] = expected[0, 1, 1, 0] = expected[0, 1, 0, 1] = expected[0, 2, 1, 1] = True
  np.testing.assert_array_equal(M.token_mask(mask, pixels_per_token=(4, 4)), expected)


def test_token_mask_against_a_loop(request):
  rng = _rng(request)
  tf, (ph, pw) = 2, (2, 3)
  mask = rng.random((2, 7, 6, 9)) < 0.03
  got = M.token_mask(mask, temporal_factor=tf, pixels_per_token=(ph, pw))
  f = 1 + (7 - 1) // tf
  want = np.zeros((2, f, 3, 3), bool)
  for b, t, y, x in zip(*np.nonzero(mask)):
    want[b, 0 if t == 0 else (t + tf - 1) // tf, y // ph, x // pw] = True
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="T = 8 frames, expected 1 \\+ 4k"):
    M.token_mask(np.zeros((1, 8, 16, 16), bool))
  with pytest.raises(ValueError, match="16×24 are not a whole number of 16×16"):
    M.token_mask(np.zeros((1, 5, 16, 24), bool))


def test_mask_iou(request):
  rng = _rng(request)
  a = np.zeros((4, 2, 3), bool)
  b = np.zeros((4, 2, 3), bool)
  a[1, 0, :3] = True                      # |A| 3
  b[1, 0, 1:] = b[1, 1, 0] = b[1, 1, 2] = True  # |B| 4, |A∩B| 2, |A∪B| 5
  a[2, 0, 0], b[2, 1, 1] = True, True     # disjoint
  a[3], b[3] = True, True                 # equal
  np.testing.assert_allclose(M.mask_iou(a, b), [1.0, 2 / 5, 0.0, 1.0], rtol=1e-12)
  x, y = rng.random((3, 5, 7)) < 0.4, rng.random((3, 5, 7)) < 0.4
  sets = lambda m: {tuple(i) for i in np.argwhere(m)}
  want = [len(sets(x[i]) & sets(y[i])) / len(sets(x[i]) | sets(y[i])) for i in range(3)]
  np.testing.assert_allclose(M.mask_iou(x, y), want, rtol=1e-12)
  with pytest.raises(ValueError, match=r"\[3, 5, 7\] vs \[3, 35\]"):
    M.mask_iou(x, y.reshape(3, 35))


def test_summarize_skips_none_and_nan():
  records = [{"a": 1.0, "b": None, "c": float("nan")}, {"a": 2.5, "b": None, "c": 4.0},
             {"a": float("nan"), "b": float("nan"), "c": 5.0}]
  assert M.summarize(records, ["a", "b", "c"]) == {"a": 1.75, "b": None, "c": 4.5}
  with pytest.raises(KeyError, match="record 0 has no key 'd'"):
    M.summarize(records, ["d"])


def test_bad_inputs_name_the_shapes():
  x = np.zeros((2, 3, 4, 4, 3), np.uint8)
  with pytest.raises(ValueError, match=r"pred and target: shapes differ, \[2, 3, 4, 4, 3\] vs \[2, 3, 4, 5, 3\]"):
    M.psnr(x, np.zeros((2, 3, 4, 5, 3), np.uint8))
  with pytest.raises(ValueError, match=r"mask: expected shape \[2, 3, 4, 4\].*got \[2, 3, 4\]"):
    M.edit_ssim(x, x, np.zeros((2, 3, 4), bool))
  with pytest.raises(ValueError, match=r"pred: expected frames \[B, T, H, W, 3\], got shape \[3, 4, 4, 3\]"):
    M.flicker(x[0], x[0])
  with pytest.raises(ValueError, match=r"float frames must lie in \[0, 1\], got min 255.0 max 255.0"):
    M.psnr(x + 255.0, x)
  with pytest.raises(ValueError, match=r"source_rgb: expected colours \[B, 3\] = \[2, 3\]"):
    M.edit_accuracy(x, np.ones((2, 3, 4, 4), bool), [RED], [BLUE, BLUE])


# ------------------------------------------------------------------------------------------------ CLIP (TA)

def _tiny_clip(directory):
  """A random CLIP with 16×16 images and a character-level tokenizer written by hand (no download)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  letters = "abcdefghijklmnopqrstuvwxyz"
  vocab = {c: i for i, c in enumerate(letters)}
  vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
  vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
  (directory / "vocab.json").write_text(json.dumps(vocab))
  (directory / "merges.txt").write_text("#version: 0.2\n")
  tokenizer = transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
  end = vocab["<|endoftext|>"]
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=40, bos_token_id=end - 1,
                       eos_token_id=end, pad_token_id=end),
      vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=16, patch_size=8),
      projection_dim=8)
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  images = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
  model.save_pretrained(directory)
  transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
  return torch, model, tokenizer, images


def test_clip_text_alignment_matches_the_torch_model(tmp_path, request):
  torch, model, tokenizer, images = _tiny_clip(tmp_path)
  rng = _rng(request)
  frames = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
  texts = ["make the red circle blue", "remove the square"]
  got = M.clip_text_alignment(frames, texts, tmp_path, batch_frames=4)  # groups straddle the clips
  # By hand: each text alone (no padding), each frame normalised as CLIP does (16×16 needs no resize or crop).
  mean, std = np.array(images.image_mean), np.array(images.image_std)
  want = np.zeros(2)
  with torch.no_grad():
    for b in range(2):
      ids = torch.tensor([tokenizer(texts[b])["input_ids"]])
      text = M._features(model.get_text_features(input_ids=ids))[0]
      for t in range(3):
        pixels = torch.tensor(((frames[b, t] / 255.0 - mean) / std).transpose(2, 0, 1)[None], dtype=torch.float32)
        image = M._features(model.get_image_features(pixel_values=pixels))[0]
        want[b] += 100 * torch.nn.functional.cosine_similarity(image, text, dim=0).item() / 3
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(FileNotFoundError, match="no_such_clip"):
    M.clip_text_alignment(frames, texts, tmp_path / "no_such_clip")
  with pytest.raises(ValueError, match="texts: expected 2 strings"):
    M.clip_text_alignment(frames, texts[:1], tmp_path)
