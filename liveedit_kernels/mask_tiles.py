"""The attention masks of this model as key intervals per query row, and the tile plans the kernels loop over.

Every `liveedit_jax.attention.AttentionMask` shows a query row at most two contiguous key intervals,
`AttentionMask.row_intervals` (lo0, hi0, lo1, hi1), an empty interval being (0, 0); a kernel masks one element with
`lo0 ≤ k < hi0 or lo1 ≤ k < hi1`.

A kernel's grid runs over tiles of one axis (q tiles for the forward and dQ, kv tiles for dK/dV) and loops over
tiles of the other. `tile_plan` classifies every (q tile, kv tile) pair as empty, partial or full from the static
mask and, per outer tile, lists the runs of consecutive full tiles (looped without masking) and of partial tiles
(masked elementwise); empty tiles are never visited. The plans are numpy constants, cached per shape.

Padding rows (q ≥ q_len) see no key and padding keys (k ≥ kv_len) are seen by no row, so a tile holding either
is at best partial. `kv_length_plan` builds the same tables in jnp for the full mask with a dynamic per-batch
valid length (fixed-size KV caches).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from liveedit_jax.attention import AttentionMask

Major = Literal["q", "k"]  # the axis whose tiles form the grid


def padded_intervals(mask: AttentionMask, q_len: int, kv_len: int, q_pad: int) -> np.ndarray:
  """[4, q_pad] int32: `mask.row_intervals` transposed (one contiguous row per bound), padding rows empty."""
  iv = np.zeros((4, q_pad), np.int32)
  iv[:, :q_len] = mask.row_intervals(q_len, kv_len).T
  return iv


def tile_classes(intervals: np.ndarray, block_q: int, block_k: int, kv_pad: int) -> np.ndarray:
  """[n_q_tiles, n_kv_tiles] int8 from `padded_intervals`: 0 nothing visible, 1 partly, 2 every pair visible."""
  q_pad = intervals.shape[1]
  if q_pad % block_q or kv_pad % block_k:
    raise ValueError(f"padded lengths {q_pad}, {kv_pad} must be multiples of the blocks {block_q}, {block_k}")
  # Rows of one chunk share their intervals: count visible keys per tile for each distinct row, then weight.
  kinds, kind_of_row = np.unique(intervals.T.astype(np.int64), axis=0, return_inverse=True)
  edges = np.arange(0, kv_pad + 1, block_k)
  below = sum(np.clip(edges[None, :] - kinds[:, lo, None], 0, (kinds[:, hi] - kinds[:, lo])[:, None])
              for lo, hi in ((0, 1), (2, 3)))  # [kinds, n_kv + 1]: visible keys below each edge
  per_kind = np.diff(below, axis=1)
  rows_of_kind = np.zeros((q_pad // block_q, len(kinds)), np.int64)
  np.add.at(rows_of_kind, (np.arange(q_pad) // block_q, kind_of_row.reshape(-1)), 1)
  visible = rows_of_kind @ per_kind
  return np.where(visible == 0, 0, np.where(visible == block_q * block_k, 2, 1)).astype(np.int8)


@dataclasses.dataclass(frozen=True, eq=False)
class TilePlan:
  """One row per outer tile, heaviest first: the tile's index, then `n_full` runs of full inner tiles and
  `n_part` runs of partial ones, each as (start, stop) in inner-tile units; unused runs are (0, 0).

  table: [n_outer, 1 + 2 · (n_full + n_part)] int32. The kernels' grid walks the rows in order, so the tiles
  with the longest loops start first (longest-processing-time-first scheduling of uneven chunk-causal work).
  """

  table: np.ndarray
  n_full: int
  n_part: int

  @property
  def visited_tiles(self) -> int:
    return int(np.sum(self.table[:, 2::2] - self.table[:, 1::2]))


def _runs(row: np.ndarray, cls: int) -> list[tuple[int, int]]:
  hit = np.concatenate([[0], (row == cls).astype(np.int8), [0]])
  change = np.flatnonzero(np.diff(hit))
  return list(zip(change[0::2].tolist(), change[1::2].tolist()))


def plan_from_classes(classes: np.ndarray) -> TilePlan:
  """The runs of full and partial tiles along each row of a class matrix, rows sorted by visited tiles."""
  full = [_runs(row, 2) for row in classes]
  part = [_runs(row, 1) for row in classes]
  n_full, n_part = max(1, *map(len, full)), max(1, *map(len, part))
  table = np.zeros((classes.shape[0], 1 + 2 * (n_full + n_part)), np.int32)
  table[:, 0] = np.arange(classes.shape[0])
  for i, runs in enumerate(zip(full, part)):
    for offset, tile_runs in zip((0, n_full), runs):
      for j, (start, stop) in enumerate(tile_runs):
        table[i, 1 + 2 * (offset + j):3 + 2 * (offset + j)] = start, stop
  work = np.count_nonzero(classes, axis=1)
  return TilePlan(table[np.argsort(-work, kind="stable")], n_full, n_part)


@functools.lru_cache(maxsize=128)
def tile_plan(mask: AttentionMask, q_len: int, kv_len: int, q_pad: int, kv_pad: int, block_q: int, block_k: int,
              major: Major) -> TilePlan:
  """The static plan of one kernel. major "q": per q tile, runs of kv tiles; "k": per kv tile, runs of q tiles."""
  classes = tile_classes(padded_intervals(mask, q_len, kv_len, q_pad), block_q, block_k, kv_pad)
  return plan_from_classes(classes if major == "q" else classes.T)


def kv_length_intervals(kv_length: jax.Array, q_len: int, kv_len: int, q_pad: int) -> jax.Array:
  """[B, 4, q_pad] int32 for the full mask with keys [0, kv_length[b]) valid; padding rows empty."""
  b = kv_length.shape[0]
  rows = (jnp.arange(q_pad) < q_len)[None, :]
  hi = jnp.where(rows, jnp.clip(kv_length.astype(jnp.int32), 0, kv_len)[:, None], 0)
  zeros = jnp.zeros((b, q_pad), jnp.int32)
  return jnp.stack([zeros, hi, zeros, zeros], axis=1)


def kv_length_plan(kv_length: jax.Array, q_len: int, kv_len: int, q_pad: int, kv_pad: int, block_q: int,
                   block_k: int, major: Major) -> jax.Array:
  """[B, n_outer, 5] int32: `TilePlan` tables (one full run, one partial run) for the full mask with kv_length,
  rows in tile order (every tile has about the same work)."""
  kv = jnp.clip(kv_length.astype(jnp.int32), 0, kv_len)[:, None]  # [B, 1]
  n_q, n_k = q_pad // block_q, kv_pad // block_k
  whole_q_tiles = q_len // block_q  # q tiles without padding rows
  if major == "q":
    outer = jnp.arange(n_q)[None, :]
    full_stop = jnp.where(outer < whole_q_tiles, kv // block_k, 0)
    part_stop = jnp.broadcast_to(-(-kv // block_k), full_stop.shape)
  else:
    outer = jnp.arange(n_k)[None, :]
    full_stop = jnp.where((outer + 1) * block_k <= kv, whole_q_tiles, 0)
    part_stop = jnp.where(outer * block_k < kv, n_q, 0)
  tile = jnp.broadcast_to(outer, full_stop.shape)
  return jnp.stack([tile, jnp.zeros_like(full_stop), full_stop, full_stop, part_stop], axis=-1).astype(jnp.int32)
