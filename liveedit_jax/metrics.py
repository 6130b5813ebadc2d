"""Video-editing metrics: pure numpy functions over batched clips (issue 16).

    metrics.psnr(pred, target)                   # [B] dB over every pixel, capped at PSNR_CAP
    metrics.background_psnr(pred, target, mask)  # [B] outside the edit mask (what the edit must leave alone)
    metrics.chroma_psnr(pred, target)            # [B] of the colour alone (grey frames score low)
    metrics.edit_accuracy(pred, mask, src, new)  # [B] fraction of masked pixels nearer the instructed colour
    np.nanmean(metrics.edit_psnr(pred, target, mask))  # NaN for a clip with an empty mask: skip it

Frames are [B, T, H, W, 3]: an integer dtype (uint8, 0..255) is divided by 255, a float dtype must lie in [0, 1].
Masks are bool [B, T, H, W] (the pixels the edit changes, `synthetic.EditExample.mask` with a batch axis). Every
function returns one float64 value per clip, [B], unless its docstring says otherwise, and NaN where the value
is undefined (a region with no pixels), so that a caller averages with np.nanmean. Sums run in float64.

PSNR is capped at PSNR_CAP = 100 dB: identical frames would give +inf, which would make every mean over clips
infinite. 100 dB is an MSE of 1e-10 (peak 1): one value off by one uint8 step, (1/255)², reaches it only in a
region of more than 51 000 pixels, so in practice only equal frames (or all but a few stray values) score it.

SSIM is Wang et al. 2004 with an 11-tap Gaussian window (σ 1.5, normalised to sum 1), C1 = 0.01², C2 = 0.03²
(peak 1), computed per RGB channel and averaged over the channels at each pixel (as skimage's
`structural_similarity(..., channel_axis=-1, gaussian_weights=True, use_sample_covariance=False,
data_range=1)` does), without the sample-covariance correction, as in the paper. The map keeps the frame's size:
frames are padded by mirror reflection (edge pixel repeated, scipy's mode "reflect"), so that every masked pixel
has a value; skimage instead drops a 5-pixel border from its mean. A clip's value is the mean over its frames of
each frame's mean over the masked pixels (frames without masked pixels are skipped).

`clip_text_alignment` is the paper's text alignment (TA) for real videos and needs real CLIP weights in a local
directory; the rest needs nothing but numpy.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PSNR_CAP = 100.0  # dB; see the module docstring

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = 0.01 ** 2
_SSIM_C2 = 0.03 ** 2
# SSIM filters blocks of frames at once; this many float64 values per filtered map (32 MiB) bounds the memory
# at any resolution while keeping numpy's per-call overhead small at 128×128.
_SSIM_BLOCK_VALUES = 1 << 22
_WHERE = ("background", "edit", "all")
_FLOAT_SLACK = 1e-3  # float frames may overshoot [0, 1] by this much (a decoder's round-off) before it is an error


# ------------------------------------------------------------------------------------------------ input checks

def _frames(x, name: str) -> np.ndarray:
  """x: [B, T, H, W, 3], integer (0..255) or float in [0, 1] → float64 in [0, 1]."""
  x = np.asarray(x)
  if x.ndim != 5 or x.shape[-1] != 3:
    raise ValueError(f"{name}: expected frames [B, T, H, W, 3], got shape {list(x.shape)}")
  if np.issubdtype(x.dtype, np.integer):
    return x.astype(np.float64) / 255.0
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name}: expected an integer (0..255) or float ([0, 1]) dtype, got {x.dtype}")
  x = x.astype(np.float64)
  if x.size:
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= -_FLOAT_SLACK and hi <= 1 + _FLOAT_SLACK):  # also catches NaN
      raise ValueError(f"{name}: float frames must lie in [0, 1], got min {lo} max {hi} (pass 0..255 frames as uint8)")
  return x


def _same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{names}: shapes differ, {list(a.shape)} vs {list(b.shape)}")


def _mask(mask, frames: np.ndarray, name: str = "mask") -> np.ndarray:
  """mask: bool [B, T, H, W] matching frames [B, T, H, W, 3]."""
  mask = np.asarray(mask)
  if mask.dtype != np.bool_:
    raise ValueError(f"{name}: expected a bool array, got dtype {mask.dtype}")
  if mask.shape != frames.shape[:-1]:
    raise ValueError(f"{name}: expected shape {list(frames.shape[:-1])} (the frames' [B, T, H, W]), "
                     f"got {list(mask.shape)}")
  return mask


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
  pred, target = _frames(pred, "pred"), _frames(target, "target")
  _same_shape(pred, target, "pred and target")
  return pred, target


# ------------------------------------------------------------------------------------------------------ PSNR

def _psnr_from_mse(sse: np.ndarray, count: np.ndarray) -> np.ndarray:
  """sse, count: [...] sums of squared errors and their number of values → PSNR (peak 1), capped, NaN if count 0."""
  with np.errstate(divide="ignore", invalid="ignore"):
    mse = sse / count
    out = np.minimum(-10.0 * np.log10(mse), PSNR_CAP)
  return np.where(count > 0, out, np.nan)


def _psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  """Checked float64 frames [B, T, H, W, 3], mask [B, T, H, W] or None → [B] PSNR over the masked values."""
  sq = np.square(pred - target).sum(-1)  # [B, T, H, W]
  b = pred.shape[0]
  if mask is None:
    sse, count = sq.reshape(b, -1).sum(1), np.full(b, sq[0].size * 3.0)
  else:
    sse, count = np.where(mask, sq, 0.0).reshape(b, -1).sum(1), mask.reshape(b, -1).sum(1) * 3.0
  return _psnr_from_mse(sse, count)


def psnr(pred, target, mask=None) -> np.ndarray:
  """PSNR in dB (peak 1) per clip over the pixels where `mask` (every pixel if None), all 3 channels.

  pred, target: [B, T, H, W, 3]; mask: bool [B, T, H, W] or None. Returns float64 [B] in [0, PSNR_CAP] for
  [0, 1] frames (at most 1 per value squared error, so ≥ 0 dB): 10·log10(1 / MSE) with the MSE pooled over the
  clip's masked values, capped at PSNR_CAP = 100 dB (equal frames; +inf uncapped); NaN where the mask is empty.
  """
  pred, target = _pair(pred, target)
  return _psnr(pred, target, None if mask is None else _mask(mask, pred))


def chroma_psnr(pred, target, mask=None) -> np.ndarray:
  """`psnr` of the colour alone: of x − mean(x over R, G, B) per pixel. It separates a loss of colour from an error
  of brightness, which PSNR pools: a grey rendering scores the colour's own size however right its brightness
  (about 20 dB on the benchmark's pastel scenes, where PSNR alone looks like a blurry reconstruction's).

  pred, target: [B, T, H, W, 3]; mask as in `psnr`. Returns [B] dB (peak 1), capped; NaN for an empty mask.
  """
  pred, target = _pair(pred, target)
  pred, target = pred - pred.mean(-1, keepdims=True), target - target.mean(-1, keepdims=True)
  return _psnr(pred, target, None if mask is None else _mask(mask, pred))


def edit_psnr(pred, target, mask) -> np.ndarray:
  """`psnr` inside the edit mask: how well the edit itself matches the ground truth. [B]; NaN for an empty mask."""
  pred, target = _pair(pred, target)
  return _psnr(pred, target, _mask(mask, pred))


def background_psnr(pred, target, mask) -> np.ndarray:
  """`psnr` outside the edit mask: how well the edit preserves the rest. [B]; NaN where the mask is everything."""
  pred, target = _pair(pred, target)
  return _psnr(pred, target, ~_mask(mask, pred))


# ------------------------------------------------------------------------------------------------------ SSIM

@functools.cache
def _gaussian_taps() -> np.ndarray:
  r = _SSIM_WINDOW // 2
  taps = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float64) / _SSIM_SIGMA) ** 2)
  return taps / taps.sum()


def _blur(x: np.ndarray, axis: int) -> np.ndarray:
  """The Gaussian window along `axis` of x, same size out (mirror padding that repeats the edge value)."""
  taps, r = _gaussian_taps(), _SSIM_WINDOW // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  # numpy's "symmetric" is scipy.ndimage's "reflect" (d c b a | a b c d); it also folds again when the frame is
  # narrower than the window's radius.
  padded = np.pad(x, pad, mode="symmetric")
  n = x.shape[axis]
  out = np.zeros_like(x)
  for k, w in enumerate(taps):
    out += w * np.take(padded, np.arange(k, k + n), axis=axis)
  return out


def ssim_map(pred, target) -> np.ndarray:
  """The SSIM map per frame and pixel, averaged over the 3 channels (see the module docstring for the definition).

  pred, target: [B, T, H, W, 3]. Returns float64 [B, T, H, W] in [-1, 1]; 1 where the two windows are equal.
  """
  pred, target = _pair(pred, target)
  return _ssim_map(pred, target)


def _ssim_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  b, t, h, w, c = pred.shape
  x, y = pred.reshape(b * t, h, w, c), target.reshape(b * t, h, w, c)
  out = np.empty((b * t, h, w), np.float64)
  step = max(1, _SSIM_BLOCK_VALUES // max(1, h * w * c))
  for start in range(0, b * t, step):
    xs, ys = x[start:start + step], y[start:start + step]
    # The five local moments in one stack, so that each axis is filtered in one pass.
    moments = _blur(_blur(np.stack([xs, ys, xs * xs, ys * ys, xs * ys]), 2), 3)
    mx, my, exx, eyy, exy = moments
    vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
    s = ((2 * mx * my + _SSIM_C1) * (2 * cxy + _SSIM_C2)
         / ((mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2)))
    out[start:start + step] = s.mean(-1)
  return out.reshape(b, t, h, w)


def _masked_frame_mean(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  """values: [B, T, H, W]; mask bool [B, T, H, W] or None → [B]: the mean over frames that have masked pixels
  of each frame's mean over them; NaN where no frame has one."""
  if mask is None:
    return values.mean((2, 3)).mean(1)
  count = mask.sum((2, 3))  # [B, T]
  with np.errstate(invalid="ignore"):
    per_frame = np.where(mask, values, 0.0).sum((2, 3)) / count
    has = count > 0
    return np.where(has, per_frame, 0.0).sum(1) / has.sum(1)


def ssim(pred, target, mask=None) -> np.ndarray:
  """Mean SSIM per clip: the map's mean over the masked pixels of each frame, then over the frames.

  pred, target: [B, T, H, W, 3]; mask: bool [B, T, H, W] or None (every pixel). Returns float64 [B] in [-1, 1]
  (1 for equal clips); NaN where the mask is empty. Frames without masked pixels are left out of the mean.
  """
  pred, target = _pair(pred, target)
  mask = None if mask is None else _mask(mask, pred)
  return _masked_frame_mean(_ssim_map(pred, target), mask)


def edit_ssim(pred, target, mask) -> np.ndarray:
  """`ssim` inside the edit mask (windows centred on masked pixels). [B]; NaN for an empty mask."""
  pred, target = _pair(pred, target)
  return _masked_frame_mean(_ssim_map(pred, target), _mask(mask, pred))


def background_ssim(pred, target, mask) -> np.ndarray:
  """`ssim` outside the edit mask. [B]; NaN where the mask covers every pixel."""
  pred, target = _pair(pred, target)
  return _masked_frame_mean(_ssim_map(pred, target), ~_mask(mask, pred))


# ------------------------------------------------------------------------------------------- edit and motion

def _colours(rgb, b: int, name: str) -> np.ndarray:
  rgb = np.asarray(rgb, np.float64)
  if rgb.shape != (b, 3):
    raise ValueError(f"{name}: expected colours [B, 3] = {[b, 3]} (0..255), got shape {list(rgb.shape)}")
  return rgb


def edit_accuracy(pred, mask, source_rgb, instructed_rgb) -> np.ndarray:
  """The fraction of masked pixels whose colour is nearer the instructed colour than the source colour.

  pred: [B, T, H, W, 3]; mask: bool [B, T, H, W] (the pixels that should take the new colour); source_rgb,
  instructed_rgb: [B, 3] on the 0..255 scale (`synthetic.PALETTE` values). Distances are Euclidean in RGB on the
  0..255 scale; a tie counts as not edited. Returns float64 [B] in [0, 1]; NaN for an empty mask.
  """
  x = _frames(pred, "pred") * 255.0
  mask = _mask(mask, x)
  b = x.shape[0]
  src = _colours(source_rgb, b, "source_rgb")[:, None, None, None]
  new = _colours(instructed_rgb, b, "instructed_rgb")[:, None, None, None]
  nearer = np.square(x - new).sum(-1) < np.square(x - src).sum(-1)
  count = mask.reshape(b, -1).sum(1)
  with np.errstate(invalid="ignore"):
    return (nearer & mask).reshape(b, -1).sum(1) / np.where(count > 0, count, np.nan)


def flicker(pred, target) -> np.ndarray:
  """Temporal consistency against the ground truth: the mean absolute error of the frame-to-frame differences,
  mean over t, pixels and channels of |(pred[t+1] − pred[t]) − (target[t+1] − target[t])|.

  pred, target: [B, T, H, W, 3]. Returns float64 [B] in [0, 2] for [0, 1] frames: 0 when pred moves exactly as
  target does (a perfect edit, or any constant offset from it), more where pred flickers or lags; NaN for T < 2.
  """
  pred, target = _pair(pred, target)
  b = pred.shape[0]
  if pred.shape[1] < 2:
    return np.full(b, np.nan)
  return np.abs(np.diff(pred, axis=1) - np.diff(target, axis=1)).reshape(b, -1).mean(1)


def chunk_errors(pred, target, chunk_sizes: Sequence[int], mask=None, where: str = "background") -> np.ndarray:
  """PSNR (as `psnr`, capped) per chunk of consecutive frames: drift along a long stream.

  pred, target: [B, T, H, W, 3]; chunk_sizes: positive frame counts summing to T, e.g. (9, 12, 12, …) for the
  stream's chunking; mask: bool [B, T, H, W], needed unless where="all"; where: "background" (outside the mask),
  "edit" (inside) or "all" (every pixel; mask ignored). Returns float64 [B, len(chunk_sizes)]; NaN for a chunk
  with no pixel in the region.
  """
  if where not in _WHERE:
    raise ValueError(f"where={where!r}: expected one of {_WHERE}")
  pred, target = _pair(pred, target)
  sizes = [int(s) for s in chunk_sizes]
  if not sizes or min(sizes) < 1 or sum(sizes) != pred.shape[1]:
    raise ValueError(f"chunk_sizes {tuple(sizes)}: expected positive frame counts summing to T = {pred.shape[1]}")
  if where == "all":
    region = None
  elif mask is None:
    raise ValueError(f"chunk_errors(where={where!r}) needs the edit mask")
  else:
    region = _mask(mask, pred)
    region = ~region if where == "background" else region
  bounds = np.cumsum([0] + sizes)
  return np.stack([_psnr(pred[:, a:e], target[:, a:e], None if region is None else region[:, a:e])
                   for a, e in zip(bounds[:-1], bounds[1:])], axis=1)


# ------------------------------------------------------------------------------------------------- tokens

def token_mask(mask, *, temporal_factor: int = 4, pixels_per_token: tuple[int, int] = (16, 16)) -> np.ndarray:
  """The latent tokens an edit truly touches, from its pixel mask.

  mask: bool [B, T, H, W] with T = 1 + temporal_factor·(F − 1). Latent frame 0 covers video frame 0 alone and
  latent frame i ≥ 1 video frames tf·i − tf + 1 … tf·i (Wan's causal VAE encodes the first frame alone; tf = 4:
  frames 4i−3 … 4i). A token is pixels_per_token = (ph, pw) pixels (VAE factor × DiT patch, 8 × 2 for Wan 2.1)
  and is touched if any pixel of its footprint in any of its video frames is in the mask. Returns bool
  [B, F, H / ph, W / pw].
  """
  mask = np.asarray(mask)
  if mask.dtype != np.bool_ or mask.ndim != 4:
    raise ValueError(f"mask: expected bool [B, T, H, W], got {mask.dtype} of shape {list(mask.shape)}")
  tf, (ph, pw) = int(temporal_factor), (int(p) for p in pixels_per_token)
  if tf < 1 or ph < 1 or pw < 1:
    raise ValueError(f"temporal_factor={temporal_factor}, pixels_per_token={tuple(pixels_per_token)}: "
                     "expected positive ints")
  b, t, h, w = mask.shape
  if t < 1 or (t - 1) % tf:
    raise ValueError(f"mask: T = {t} frames, expected 1 + {tf}k (the causal VAE's first frame alone, then "
                     f"groups of {tf})")
  if h % ph or w % pw:
    raise ValueError(f"mask: frames {h}×{w} are not a whole number of {ph}×{pw}-pixel tokens")
  f, hh, ww = 1 + (t - 1) // tf, h // ph, w // pw
  spatial = mask.reshape(b, t, hh, ph, ww, pw).any((3, 5))  # [B, T, h, w]
  first = spatial[:, :1]
  rest = spatial[:, 1:].reshape(b, f - 1, tf, hh, ww).any(2)
  return np.concatenate([first, rest], axis=1)


def mask_iou(recomputed, touched) -> np.ndarray:
  """Intersection over union of two token sets per clip: |A ∩ B| / |A ∪ B|.

  recomputed, touched: bool [B, ...] of one shape (e.g. [B, N, P]: per chunk, per spatial token); every axis but
  the batch is flattened. Returns float64 [B] in [0, 1], 1.0 when both sets are empty (they agree exactly).
  """
  a, b_ = np.asarray(recomputed), np.asarray(touched)
  for name, x in (("recomputed", a), ("touched", b_)):
    if x.dtype != np.bool_ or x.ndim < 1:
      raise ValueError(f"{name}: expected a bool array [B, ...], got {x.dtype} of shape {list(x.shape)}")
  _same_shape(a, b_, "recomputed and touched")
  a, b_ = a.reshape(len(a), -1), b_.reshape(len(b_), -1)
  inter, union = (a & b_).sum(1), (a | b_).sum(1)
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


# ------------------------------------------------------------------------------------------------- summary

def summarize(records: Sequence[Mapping[str, float | None]], keys: Sequence[str]) -> dict[str, float | None]:
  """The mean over records of each key, skipping None and NaN; None for a key with no value at all.

  records: e.g. the per-clip dicts of the evaluate CLI; every record must hold every key (None for undefined).
  """
  out: dict[str, float | None] = {}
  for key in keys:
    values = []
    for i, record in enumerate(records):
      if key not in record:
        raise KeyError(f"record {i} has no key {key!r} (has {sorted(record)})")
      if record[key] is not None and not math.isnan(v := float(record[key])):
        values.append(v)
    out[key] = float(np.mean(np.asarray(values, np.float64))) if values else None
  return out


# ------------------------------------------------------------------------------------------------ CLIP (TA)

@functools.lru_cache(maxsize=2)
def _load_clip(model_dir: str):
  # transformers and torch take seconds to import: only this metric needs them.
  import torch
  from transformers import CLIPModel, CLIPProcessor
  try:
    model = CLIPModel.from_pretrained(model_dir, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
  except OSError as e:
    raise FileNotFoundError(f"{model_dir}: not a CLIP model directory (CLIPModel + CLIPProcessor files): {e}") from e
  model.eval()
  return torch, model, processor


def _features(out):
  """transformers < 5 returns the projected embeddings; 5.x a BaseModelOutputWithPooling holding them."""
  return getattr(out, "pooler_output", out)


def clip_text_alignment(frames, texts: Sequence[str], model_dir: str | os.PathLike,
                        *, batch_frames: int = 32) -> np.ndarray:
  """The paper's text alignment (TA): CLIP similarity of each clip's frames with its instruction (or caption).

  frames: [B, T, H, W, 3] (uint8, or float in [0, 1]); texts: B strings; model_dir: a LOCAL directory holding a
  transformers CLIPModel and its CLIPProcessor (tokenizer + image processor), e.g. `save_pretrained` output;
  nothing is downloaded (local_files_only=True), and a missing directory raises FileNotFoundError naming it.
  Returns float64 [B]: per clip, the mean over frames of 100 · cos(image embedding, text embedding), the
  projected CLIP embeddings; unlike CLIPScore as torchmetrics defines it (100 · max(cos, 0)) no clamp at 0, so
  values lie in [-100, 100]. Frames go through the processor's resize and crop in groups of `batch_frames`.
  The model is cached per directory (the last 2) across calls.

  Its numbers mean nothing without real CLIP weights (e.g. openai/clip-vit-large-patch14), which this project
  cannot download: its tests check the computation on a tiny random CLIP only.
  """
  x = _frames(frames, "frames")
  b, t = x.shape[:2]
  texts = list(texts)
  if len(texts) != b or not all(isinstance(s, str) for s in texts):
    raise ValueError(f"texts: expected {b} strings (one per clip), got {len(texts)} items")
  path = Path(model_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"CLIP model directory {str(path)!r} does not exist")
  torch, model, processor = _load_clip(str(path.resolve()))
  # Integer frames go to the processor as uint8 so that it applies its own rescale (1/255) and normalisation.
  pixels = np.round(x * 255.0).clip(0, 255).astype(np.uint8).reshape(b * t, *x.shape[2:])
  max_len = model.config.text_config.max_position_embeddings
  with torch.no_grad():
    tokens = processor.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    text = _features(model.get_text_features(input_ids=tokens["input_ids"],
                                             attention_mask=tokens["attention_mask"]))
    text = text.double().numpy()
    image = []
    for start in range(0, b * t, batch_frames):
      inputs = processor.image_processor(list(pixels[start:start + batch_frames]), return_tensors="pt")
      image.append(_features(model.get_image_features(pixel_values=inputs["pixel_values"])).double().numpy())
  image = np.concatenate(image).reshape(b, t, -1)
  text = text / np.linalg.norm(text, axis=-1, keepdims=True)
  image = image / np.linalg.norm(image, axis=-1, keepdims=True)
  return 100.0 * np.einsum("btd,bd->bt", image, text).mean(1)
