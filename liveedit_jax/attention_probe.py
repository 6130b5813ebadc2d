"""An attention probe: how a block's queries spread their self-attention over key frames, per head.

For chosen layers, `dit_forward(..., probe=ProbeConfig(layers=(0, 5)))` and `stream_step.stream_probe` also return a
`ProbeStats`: for every query frame and key frame, the attention probability the frame's queries give that key
frame's keys (summed over the keys, averaged over the queries), per head, and optionally the part of it that falls
within a spatial radius of the query. Notebooks read it through `mass_by_distance` and `past_frame_entropy`
(style habit 16: typed intermediates behind a flag, the forward is never patched).

Full [T, S] maps are never built: the probe loops over (query frame, key frame) blocks of [P, P] logits and keeps
each block's log-sum-exp per query, [B, N, P]; a query's total log-sum-exp is that over its key frames, and the
mass of key frame j is exp(lse_j − lse), all in float32. At the real size (21 frames of 1,560 tokens, 12 heads) a
block's logits are 117 MB where the full map would be 51 GB; blocks the mask hides are skipped (`lax.cond`).
Every mask of `attention.py` and the KV cache's valid prefix are whole frames (chunks are whole frames), so
visibility is a [Fq, Fk] frame matrix: `frame_visibility` derives it from the same `AttentionMask.dense`.

Off by default at zero cost: without a probe the forward traces none of this code (tests/test_attention_probe.py
checks it). With one, the attention output is untouched (the probe only reads q and k), and layers that are not
probed take the cond's empty branch inside the layer scan. The probabilities are those of the "xla" reference
(float32 logits of the compute-dtype q and k), whatever `impl` the forward itself uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from liveedit_jax.attention import AttentionMask
from liveedit_jax.kv_cache import KVCache
from liveedit_jax.plans import Plan, WrappedAttention


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Which layers to probe and the spatial radii (in patches, Euclidean on the h × w token grid) to split out."""

  layers: tuple[int, ...]
  radii: tuple[float, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "layers", tuple(self.layers))
    object.__setattr__(self, "radii", tuple(float(r) for r in self.radii))
    if not self.layers:
      raise ValueError("ProbeConfig.layers is empty: name at least one layer to probe")
    if len(set(self.layers)) != len(self.layers):
      raise ValueError(f"ProbeConfig.layers {self.layers} names a layer twice")
    if any(r < 0 for r in self.radii):
      raise ValueError(f"ProbeConfig.radii must be ≥ 0, got {self.radii}")

  def check(self, num_layers: int, name: str) -> None:
    bad = [layer for layer in self.layers if not 0 <= layer < num_layers]
    if bad:
      raise ValueError(f"probe layers {bad} are out of range: config {name!r} has {num_layers} layers (0…"
                       f"{num_layers - 1})")


@flax.struct.dataclass
class ProbeStats:
  """Attention mass over key frames for the probed layers (index i of the first axis is `layers[i]`).

  Under teacher forcing the first half of the query and key frames is the clean sequence, the second the noisy one
  (both at positions offset … offset+F−1); in the streaming probe the key frames are the chunk's and the cache's in
  time order, empty cache slots last (key_frame −1, mass 0).
  """

  mass: jax.Array  # [L', B, N, Fq, Fk] float32: mean over the query frame's queries of Σ_{keys of frame} p
  local: jax.Array | None  # [L', B, N, Fq, Fk, R]: the part of mass within radii[r] of the query (None: no radii)
  query_frame: jax.Array  # [Fq] int32 frame position of each query frame
  key_frame: jax.Array  # [Fk] int32 frame position of each key frame, −1 for an empty cache slot
  layers: tuple[int, ...] = flax.struct.field(pytree_node=False)
  radii: tuple[float, ...] = flax.struct.field(pytree_node=False)

  def in_time_order(self) -> "ProbeStats":
    """The key-frame axis sorted by key_frame, empty slots (−1) last."""
    order = jnp.argsort(jnp.where(self.key_frame >= 0, self.key_frame, jnp.iinfo(jnp.int32).max), stable=True)
    local = None if self.local is None else jnp.take(self.local, order, axis=-2)
    return self.replace(mass=jnp.take(self.mass, order, axis=-1), local=local, key_frame=self.key_frame[order])


def frame_visibility(mask: AttentionMask, frame_tokens: int, frames: int) -> np.ndarray:
  """The token mask of `attention` at frame granularity: [frames, frames] bool (True = visible)."""
  if mask.kind == "full":
    return np.ones((frames, frames), bool)
  if mask.chunk_tokens % frame_tokens:
    raise ValueError(f"mask chunks of {mask.chunk_tokens} tokens are not whole frames of {frame_tokens} tokens")
  return AttentionMask(mask.kind, mask.chunk_tokens // frame_tokens).dense(frames, frames)


def cache_key_frames(kv: KVCache, chunk_frames: int, first_frame: jax.Array | int) -> jax.Array:
  """Frame positions of the streaming keys [chunk ‖ cache slots]: [chunk_frames + cache_frames] int32, −1 = empty.

  first_frame: the chunk's first frame; with `state.frame_index` the positions are absolute frame indices until
  the stream's first RoPE re-base (after it, ring frames keep their exact distance to the chunk, sink frames are
  still reported as frames 0 … sink_frames−1).
  The ring (slots [sink, cache_frames)) holds the last cache_frames − sink frames before the chunk, oldest at
  `write_frame` (see `kv_cache.py`); before it fills, slot j holds frame j, which the same formula gives.
  """
  slot = jnp.arange(kv.cache_frames, dtype=jnp.int32)
  ring = kv.cache_frames - kv.sink_frames
  ring_frame = first_frame - ring + jnp.mod(slot - kv.write_frame, ring)
  frame = jnp.where(slot < kv.sink_frames, slot, ring_frame)
  frame = jnp.where(slot * kv.frame_tokens < kv.length, frame, -1)
  chunk = first_frame + jnp.arange(chunk_frames, dtype=jnp.int32)
  return jnp.concatenate([chunk, frame]).astype(jnp.int32)


def _within(grid: tuple[int, int], radii: tuple[float, ...]) -> jax.Array:
  """[P, P, R] bool: key token within radius r of the query token on the h × w grid (from iotas, no constant)."""
  h, w = grid
  pos = jnp.arange(h * w)
  dy = (pos // w)[:, None] - (pos // w)[None, :]
  dx = (pos % w)[:, None] - (pos % w)[None, :]
  dist2 = (dy * dy + dx * dx).astype(jnp.float32)
  return dist2[..., None] <= jnp.square(jnp.asarray(radii, jnp.float32))


def key_frame_mass(q: jax.Array, k: jax.Array, visible: jax.Array | np.ndarray, grid: tuple[int, int],
                   radii: tuple[float, ...] = ()) -> tuple[jax.Array, jax.Array | None]:
  """Per-query attention mass over key frames, block by block over frames.

  q: [B, Fq·P, N, E], k: [B, Fk·P, N, E] (P = h·w tokens a frame, frame-major); visible: [Fq, Fk] bool;
  grid: (h, w). Scale 1/√E, float32 logits as `attention_reference`.
  Returns (mass [B, N, Fq, P, Fk], local [B, N, Fq, P, Fk, R] or None without radii); mass sums to 1 over the key
  frames for every query that sees a key (0 where none).
  """
  b, _, n, e = q.shape
  p = grid[0] * grid[1]
  fq, fk = q.shape[1] // p, k.shape[1] // p
  if q.shape[1] != fq * p or k.shape[1] != fk * p or np.shape(visible) != (fq, fk):
    raise ValueError(f"probe: q {q.shape} and k {k.shape} must be whole frames of {grid[0]}×{grid[1]} tokens and "
                     f"visibility [{fq}, {fk}], got {np.shape(visible)}")
  scale = e ** -0.5
  within = _within(grid, radii) if radii else None
  q_frames = jnp.moveaxis(q.reshape(b, fq, p, n, e), 1, 0)  # [Fq, B, P, N, E]
  k_frames = jnp.moveaxis(k.reshape(b, fk, p, n, e), 1, 0)
  parts = 1 + len(radii)

  def block_lse(qi, kj):  # → [B, N, P, 1 + R]: log-sum-exp over the frame's keys, then over each neighbourhood
    logits = jnp.einsum("bpne,bsne->bnps", qi, kj, preferred_element_type=jnp.float32) * scale
    lse = [jax.nn.logsumexp(logits, axis=-1)]
    if within is not None:
      lse += [jax.nn.logsumexp(jnp.where(within[:, :, r], logits, -jnp.inf), axis=-1) for r in range(len(radii))]
    return jnp.stack(lse, axis=-1)

  hidden = jnp.full((b, n, p, parts), -jnp.inf, jnp.float32)

  def query_frame(args):
    qi, row = args
    lse = jax.lax.map(lambda a: jax.lax.cond(a[1], block_lse, lambda *_: hidden, qi, a[0]), (k_frames, row))
    total = jax.nn.logsumexp(lse[..., 0], axis=0)  # [B, N, P] over every visible key of every frame
    seen = jnp.isfinite(total)[None, ..., None]
    return jnp.where(seen, jnp.exp(lse - jnp.where(seen, total[None, ..., None], 0.0)), 0.0)  # [Fk, B, N, P, 1+R]

  out = jax.lax.map(query_frame, (q_frames, jnp.asarray(visible, bool)))  # [Fq, Fk, B, N, P, 1 + R]
  out = jnp.transpose(out, (2, 3, 0, 4, 1, 5))  # [B, N, Fq, P, Fk, 1 + R]
  return out[..., 0], (out[..., 1:] if radii else None)


@flax.struct.dataclass
class ProbedAttention(WrappedAttention):
  """An attention plan whose probed layers also keep their attention mass per key frame (the output unchanged).

  The probe reads q and `attention.keys(k)`. Keeps (the inner plan's kept, (mass [B, N, Fq, Fk], local
  [B, N, Fq, Fk, R] or None)); pass `collect` what the forward stacks.
  """

  layer: jax.Array  # [L] int32: each layer's index, to pick the probed ones inside the layer scan
  visible: jax.Array | np.ndarray  # [Fq, Fk] bool: which key frames each query frame sees
  probe: ProbeConfig = flax.struct.field(pytree_node=False)
  grid: tuple[int, int] = flax.struct.field(pytree_node=False)  # (h, w) tokens of a frame
  layer_fields = ("attention", "layer")

  def _frame_means(self, q, k):
    mass, local = key_frame_mass(q, k, self.visible, self.grid, self.probe.radii)
    return mass.mean(axis=3), (None if local is None else local.mean(axis=3))

  def attend(self, q, k, v, impl):
    o, kept = self.attention.attend(q, k, v, impl)
    b, _, n, _ = q.shape
    shape = (b, n, *np.shape(self.visible))  # [B, N, Fq, Fk]
    empty = (jnp.zeros(shape), jnp.zeros((*shape, len(self.probe.radii))) if self.probe.radii else None)
    probed_layer = jnp.any(self.layer == jnp.asarray(self.probe.layers, jnp.int32))
    stats = jax.lax.cond(probed_layer, self._frame_means, lambda *_: empty, q, self.attention.keys(k))
    return o, (kept, stats)


def probed(plan: Plan, probe: ProbeConfig, num_layers: int, visible: jax.Array | np.ndarray,
           grid: tuple[int, int]) -> ProbedAttention:
  """`plan` under the probe of `probe.layers`; visible [Fq, Fk] bool, grid (h, w)."""
  return ProbedAttention(plan, jnp.arange(num_layers, dtype=jnp.int32), visible, probe, grid)


def collect(probe: ProbeConfig, layer_outputs: Any, query_frame: jax.Array,
            key_frame: jax.Array) -> tuple[Any, ProbeStats]:
  """What a forward stacked of a `ProbedAttention` plan → (the inner plan's kept, ProbeStats)."""
  inner, (mass, local) = layer_outputs
  index = np.asarray(probe.layers)
  return inner, ProbeStats(mass[index], None if local is None else local[index],
                           jnp.asarray(query_frame, jnp.int32), jnp.asarray(key_frame, jnp.int32), probe.layers,
                           probe.radii)


def mass_by_distance(mass, query_frame, key_frame) -> tuple[np.ndarray, np.ndarray]:
  """Attention mass against temporal distance d = query frame − key frame (host side, numpy float64).

  mass: [..., Fq, Fk] (`ProbeStats.mass`, or `local[..., r]`); query_frame [Fq], key_frame [Fk] (−1 = empty).
  Returns (distances [D] int, by_distance [..., D]): per query frame the mass on key frames at distance d, averaged
  over the query frames that have a key frame at that distance (hidden ones count, with mass 0). Under teacher
  forcing pass the noisy half (`mass[..., F:, :]`, `query_frame[F:]`): a query sees at most one frame per distance.
  """
  mass = np.asarray(mass, np.float64)
  qf, kf = np.asarray(query_frame), np.asarray(key_frame)
  d = qf[:, None] - kf[None, :]
  exists = np.broadcast_to(kf[None, :] >= 0, d.shape)
  distances = np.unique(d[exists])
  out = np.empty((*mass.shape[:-2], len(distances)))
  for i, dist in enumerate(distances):
    at = exists & (d == dist)  # [Fq, Fk]
    rows = at.any(axis=1)
    out[..., i] = (mass * at).sum(axis=-1)[..., rows].mean(axis=-1)
  return distances, out


def past_frame_entropy(mass, query_frame, key_frame) -> np.ndarray:
  """Entropy (nats) of each query frame's attention over strictly earlier key frames: [..., Fq], float64.

  mass: [..., Fq, Fk]; the mass on frames before the query frame is renormalised to a distribution first (so this
  is the entropy of the frame-averaged attention, not the mean of per-query entropies); NaN where a query frame
  gives no mass to the past. Divide by log(number of past frames) for a 0–1 scale.
  """
  mass = np.asarray(mass, np.float64)
  qf, kf = np.asarray(query_frame), np.asarray(key_frame)
  past = (kf[None, :] >= 0) & (kf[None, :] < qf[:, None])
  m = np.where(past, mass, 0.0)
  total = m.sum(axis=-1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    p = m / total
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return np.where(total[..., 0] > 0, h, np.nan)
