"""The Hopper (Mosaic GPU) flash attention: its tile plans on CPU against the dense mask; the kernels on an H100/H200.

CPU: `_Geometry` (the per-row key intervals, the elementwise mask, the full-tile test and the runs of tiles each
CTA visits, in both passes) against `AttentionMask.dense` in the kernels' padded layout, at lengths that are not
multiples of the tiles. GPU (`gpu` marker, sm90): forward and gradients with poisoned (NaN) outputs against the
dense XLA reference at a few thousand tokens, and against cuDNN's per-chunk loop at the real shapes.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.attention import FULL, AttentionMask, attention
from liveedit_kernels import common, dispatch
from liveedit_kernels.flash_attention import flash_attention_reference
from liveedit_kernels.hopper_attention import (HopperBlocks, _from_view, _padded_rows, _to_view, geometry,
                                               hopper_attention)
from tests.numerics import BF16_RTOL, rel_err

C_REAL = 4680


def _real_positions(geo, length: int) -> np.ndarray:
  """Where the real rows (keys) of a sequence of `length` sit in the kernels' padded layout."""
  if geo.kind != "teacher_forcing":
    return np.arange(length)
  half = length // 2
  return np.concatenate([np.arange(half), geo.half_pad + np.arange(half)])


def _geometry_dense(geo) -> np.ndarray:
  """[q_pad, kv_pad] bool from the geometry's per-row intervals."""
  hi0, lo1, hi1 = (np.asarray(x)[:, None] for x in geo.row_bounds(jnp.arange(geo.q_pad)))
  keys = np.arange(geo.kv_pad)[None, :]
  return (keys < hi0) | ((keys >= lo1) & (keys < hi1))


GEOMETRY_CASES = [(FULL, 200, 330), (AttentionMask("chunk_causal", 64), 200, 200),
                  (AttentionMask("chunk_causal", 100), 1000, 1000), (AttentionMask("chunk_causal", 200), 800, 800),
                  (AttentionMask("teacher_forcing", 64), 400, 400), (AttentionMask("teacher_forcing", 90), 1000, 1000),
                  (AttentionMask("teacher_forcing", 100), 1000, 1000)]


def _tile_view(x, rows, keys):
  """[n_row_tiles, n_key_tiles, rows, keys] tiles of a 2-D array."""
  return x.reshape(x.shape[0] // rows, rows, x.shape[1] // keys, keys).transpose(0, 2, 1, 3)


def _check_pass(geo, dense, block_rows, block_keys, cta_axis: int, runs):
  """One kernel pass: per warpgroup tile the elementwise mask and the full test; per CTA (two warpgroups along
  `cta_axis`: 0 rows, 1 keys) the runs of tiles of the other axis it visits, which must be exactly the tiles
  holding a visible pair."""
  n_r, n_k = geo.q_pad // block_rows, geo.kv_pad // block_keys
  r0 = (np.arange(n_r) * block_rows)[:, None, None, None]
  k0 = (np.arange(n_k) * block_keys)[None, :, None, None]
  rows = r0 + np.arange(block_rows)[None, None, :, None]
  keys = k0 + np.arange(block_keys)[None, None, None, :]
  vis = np.asarray(geo.visible(jnp.asarray(rows), jnp.asarray(keys), jnp.asarray(r0)))
  tiles = _tile_view(dense, block_rows, block_keys)
  np.testing.assert_array_equal(vis, tiles)
  full = np.asarray(geo.tile_is_full(jnp.asarray(r0[..., 0, 0]), jnp.asarray(r0[..., 0, 0] + block_rows),
                                     jnp.asarray(k0[..., 0, 0]), jnp.asarray(k0[..., 0, 0] + block_keys)))
  np.testing.assert_array_equal(full, tiles.all(axis=(2, 3)))
  needed = tiles.any(axis=(2, 3))  # [n_r, n_k]
  if cta_axis == 1:
    needed = needed.T
  needed = needed.reshape(needed.shape[0] // 2, 2, -1).any(axis=1)  # per CTA of two warpgroup tiles
  for t, (lo0, n0, lo1, n1) in enumerate(runs(len(needed))):
    visited = np.zeros(needed.shape[1], bool)
    visited[lo0:lo0 + n0] = True
    visited[lo1:lo1 + n1] = True
    assert n0 + n1 == visited.sum(), f"CTA {t}: runs overlap"
    np.testing.assert_array_equal(visited, needed[t], err_msg=f"CTA {t}")


@pytest.mark.parametrize("mask, q_len, kv_len", GEOMETRY_CASES)
def test_geometry_is_the_dense_mask(mask, q_len, kv_len):
  blocks = HopperBlocks()
  geo = geometry(mask, q_len, kv_len, blocks.multiple)
  dense = _geometry_dense(geo)
  real_rows, real_keys = _real_positions(geo, q_len), _real_positions(geo, kv_len)
  np.testing.assert_array_equal(dense[np.ix_(real_rows, real_keys)], mask.dense(q_len, kv_len))
  pad_keys = np.setdiff1d(np.arange(geo.kv_pad), real_keys)
  assert not dense[:, pad_keys].any(), "a row sees a padding key"
  assert dense.any(axis=1).all(), "a row sees no key (its LSE would be -inf)"

  bq, bkv = blocks.block_q, blocks.block_kv
  fwd_runs = lambda n: [(0, *(int(x) for x in geo.kv_runs(t * 2 * bq, (t + 1) * 2 * bq, bkv))) for t in range(n)]
  _check_pass(geo, dense, bq, bkv, 0, fwd_runs)
  bwd_runs = lambda n: [tuple(int(x) for x in geo.q_runs(t * 128, (t + 1) * 128, blocks.bwd_block_q))
                        for t in range(n)]
  _check_pass(geo, dense, blocks.bwd_block_q, 64, 1, bwd_runs)


@pytest.mark.parametrize("mask, q_len, kv_len", GEOMETRY_CASES)
def test_tiles_address_the_unpadded_view(mask, q_len, kv_len):
  """The kernels copy tiles of the [B·halves, L, N, E] view at padded positions: each real position must land on
  its own row of the view, each padding position past L (where TMA drops it), and no tile may span two halves;
  the view holds x's rows there (L rounded up to 8) and maps back to x."""
  blocks = HopperBlocks()
  geo = geometry(mask, q_len, kv_len, blocks.multiple)
  for length, padded in ((q_len, geo.q_pad), (kv_len, geo.kv_pad)):
    view_len = length // geo.halves
    half, local = (np.broadcast_to(np.asarray(x), (padded,)) for x in geo.locate(jnp.arange(padded)))
    real = _real_positions(geo, length)
    np.testing.assert_array_equal(half[real] * view_len + local[real], np.arange(length))
    pad = np.setdiff1d(np.arange(padded), real)
    assert (local[pad] >= view_len).all(), "a padding position addresses a real row"
    tiles = half.reshape(-1, 64)
    assert (tiles == tiles[:, :1]).all(), "a tile spans both halves"
  x = jax.random.normal(jax.random.key(random.randrange(2**31)), (2, q_len, 3, 8))
  view = np.asarray(_to_view(geo, x))
  assert view.shape[1] % 8 == 0 and view.shape[1] - q_len // geo.halves < 8, view.shape
  rows = geo.locate(jnp.asarray(_real_positions(geo, q_len)))
  half, local = (np.broadcast_to(np.asarray(r), (q_len,)) for r in rows)
  np.testing.assert_array_equal(view[np.arange(2)[:, None] * geo.halves + half, local], np.asarray(x))
  np.testing.assert_array_equal(np.asarray(_from_view(geo, jnp.asarray(view), x.shape)), np.asarray(x))
  stats = jax.random.normal(jax.random.key(random.randrange(2**31)), (2, 3, q_len))
  padded_stats = np.asarray(_padded_rows(geo, stats))
  np.testing.assert_array_equal(padded_stats[..., _real_positions(geo, q_len)], np.asarray(stats))
  assert not padded_stats[..., np.setdiff1d(np.arange(geo.q_pad), _real_positions(geo, q_len))].any()


def test_hopper_attention_rejects_bad_arguments(monkeypatch):
  q = jnp.zeros((1, 256, 2, 128), jnp.bfloat16)
  if jax.default_backend() != "gpu":
    with pytest.raises(RuntimeError, match="sm90 GPU"):
      hopper_attention(q, q, q)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the argument checks come before any lowering
  with pytest.raises(ValueError, match="bf16 or fp16"):
    hopper_attention(q.astype(jnp.float32), q.astype(jnp.float32), q.astype(jnp.float32))
  with pytest.raises(ValueError, match="head dim"):
    hopper_attention(q[..., :96], q[..., :96], q[..., :96])
  with pytest.raises(ValueError, match="chunks of ≥ 64"):
    hopper_attention(q, q, q, AttentionMask("chunk_causal", 40))
  with pytest.raises(ValueError, match="equal query and key lengths"):
    hopper_attention(q, q[:, :128], q[:, :128], AttentionMask("chunk_causal", 64))


# --- GPU ------------------------------------------------------------------------------------------------------------


def _grads(fn, q, k, v, d_out):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(d_out))


def _case(t, s, n, e):
  seed = random.SystemRandom().randrange(2**31)
  keys = jax.random.split(jax.random.key(seed), 4)
  q, d_out = (jax.random.normal(kk, (2 if t < 20000 else 1, t, n, e), jnp.bfloat16) for kk in keys[::3])
  k, v = (jax.random.normal(kk, (q.shape[0], s, n, e), jnp.bfloat16) for kk in keys[1:3])
  return seed, q, k, v, d_out


def _is_hopper() -> bool:
  return jax.default_backend() == "gpu" and any(name in jax.devices()[0].device_kind for name in dispatch.SM90)


@pytest.mark.gpu
@pytest.mark.parametrize("mask, t, s, e", [
    pytest.param(AttentionMask("chunk_causal", 700), 3000, 3000, 128, id="chunk_causal"),
    pytest.param(AttentionMask("chunk_causal", 64), 500, 500, 64, id="chunk_causal-small-chunks-e64"),
    pytest.param(AttentionMask("teacher_forcing", 600), 3000, 3000, 128, id="teacher_forcing"),
    pytest.param(FULL, 1000, 2500, 128, id="full"),
])
def test_gpu_hopper_attention_against_xla(mask, t, s, e):
  """Forward and gradients, lengths off the tiles, every output poisoned, against the dense XLA reference."""
  if not _is_hopper():
    pytest.skip("needs an sm90 GPU (H100/H200)")
  seed, q, k, v, d_out = _case(t, s, 2, e)
  with common.poisoned_outputs():
    got = jax.jit(lambda *x: _grads(lambda q, k, v: hopper_attention(q, k, v, mask), *x))(q, k, v, d_out)
  want = jax.jit(lambda *x: _grads(lambda q, k, v: flash_attention_reference(q, k, v, mask), *x))(
      *(x.astype(jnp.float32) for x in (q, k, v, d_out)))
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == jnp.bfloat16
    assert rel_err(g, w) <= BF16_RTOL, f"{mask.kind} {name}: rel err {rel_err(g, w):.2e} (seed {seed})"


@pytest.mark.gpu
@pytest.mark.parametrize("mask, t", [(AttentionMask("chunk_causal", C_REAL), 7 * C_REAL),
                                     (AttentionMask("teacher_forcing", C_REAL), 14 * C_REAL)])
def test_gpu_hopper_attention_real_shapes(mask, t):
  """32,760-token chunk-causal and 65,520-token teacher forcing, 12 heads, against cuDNN's per-chunk loop."""
  if not _is_hopper():
    pytest.skip("needs an sm90 GPU (H100/H200)")
  seed, q, k, v, d_out = _case(t, t, 12, 128)
  with common.poisoned_outputs():
    got = jax.jit(lambda *x: _grads(lambda q, k, v: hopper_attention(q, k, v, mask), *x))(q, k, v, d_out)
  want = jax.jit(lambda *x: _grads(lambda q, k, v: attention(q, k, v, mask=mask, impl="cudnn"), *x))(q, k, v, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert rel_err(g, w) <= BF16_RTOL, f"{mask.kind} {name}: rel err {rel_err(g, w):.2e} (seed {seed})"
