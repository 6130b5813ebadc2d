"""Wan's 3-D rotary position embedding (interleaved pairs, split frame/height/width).

For head dim E there are E/2 complex pairs (x[2p], x[2p+1]). Pairs [0, P_f) rotate with the frame index,
[P_f, P_f + P_h) with the patch row and the rest with the patch column, where P_h = P_w = ⌊E/2 / 3⌋ and
P_f = E/2 − 2·P_h (22/21/21 at E = 128). Axis `a` of width n = 2·P_a has frequencies
ω_j = θ^(−2j/n). As in Wan, tables cover positions [0, max_positions) per axis, built in float64
(Wan2.1's `rope_params`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def rope_pair_split(head_dim: int) -> tuple[int, int, int]:
  """Number of rotary pairs given to (frame, row, column)."""
  pairs = head_dim // 2
  p_hw = pairs // 3
  return pairs - 2 * p_hw, p_hw, p_hw


@functools.lru_cache(maxsize=8)
def rope_tables(head_dim: int, max_positions: int, theta: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """(cos, sin) tables per axis (frame, row, column), each [max_positions, P_axis] float32 from float64 angles."""
  tables = []
  for pairs in rope_pair_split(head_dim):
    width = 2 * pairs
    omega = theta ** (-np.arange(0, width, 2, dtype=np.float64) / width)
    angle = np.outer(np.arange(max_positions, dtype=np.float64), omega)
    tables.append((np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)))
  return tuple(tables)


def rope_cos_sin(frame_positions: jax.Array, height: int, width: int, *, head_dim: int, max_positions: int,
                 theta: float) -> tuple[jax.Array, jax.Array]:
  """cos and sin of the rotation angle for every token of a (frames, rows, columns) grid.

  frame_positions: [F] int32 absolute frame indices (may be traced); rows and columns start at 0.
  Returns (cos, sin), each [F·height·width, E/2] float32, tokens in (f, h, w) row-major order.
  """
  f = frame_positions.shape[0]
  indices = (frame_positions[:, None, None], jnp.arange(height)[None, :, None], jnp.arange(width)[None, None, :])
  cos_parts, sin_parts = [], []
  for (cos_table, sin_table), index in zip(rope_tables(head_dim, max_positions, theta), indices):
    shape = (f, height, width, cos_table.shape[1])
    cos_parts.append(jnp.broadcast_to(jnp.asarray(cos_table)[index], shape))
    sin_parts.append(jnp.broadcast_to(jnp.asarray(sin_table)[index], shape))
  tokens = f * height * width
  return (jnp.concatenate(cos_parts, -1).reshape(tokens, head_dim // 2),
          jnp.concatenate(sin_parts, -1).reshape(tokens, head_dim // 2))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate interleaved pairs of x: [B, T, N, E] with cos/sin [T, E/2] (or per sample, [B, T, E/2]).

  float32 math, x's dtype out.
  """
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  even, odd = xf[..., 0], xf[..., 1]
  c, s = (cos[None, :, None, :], sin[None, :, None, :]) if cos.ndim == 2 else (cos[:, :, None, :], sin[:, :, None, :])
  out = jnp.stack([even * c - odd * s, even * s + odd * c], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)
