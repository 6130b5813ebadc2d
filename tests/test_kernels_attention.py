"""Block-sparse flash attention and routed attention (liveedit_kernels/) against the XLA reference.

CPU: the Pallas kernels run in interpret mode at a few chunks of 40–100 tokens, lengths that are not multiples of
the tiles, with every output poisoned (NaN) before the kernels write. GPU (`gpu` marker): the real shapes.
Inputs are fresh random draws every run; the seed is in each failure message.
"""

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.attention import FULL, AttentionMask, attention
from liveedit_kernels import common, mask_tiles
from liveedit_kernels.flash_attention import SMALL_BLOCKS, BlockSizes, flash_attention, flash_attention_reference
from liveedit_kernels.routed_attention import routed_attention, routed_attention_reference
from tests.numerics import BF16_RTOL, FP32_RTOL, rel_err

C_REAL = 4680  # one chunk at the real size: 3 latent frames × 30 × 52 tokens at 480×832
CC = AttentionMask("chunk_causal", 40)
TF = AttentionMask("teacher_forcing", 40)


def _rng():
  seed = random.SystemRandom().randrange(2**31)
  return seed, np.random.default_rng(seed)


def _normal(rng, shape, dtype):
  return jnp.asarray(rng.standard_normal(shape), dtype)


def _tol(dtype):
  return FP32_RTOL if dtype == jnp.float32 else BF16_RTOL


# --- tile plans ---------------------------------------------------------------------------------------------------

MASK_CASES = [(FULL, 70, 90), (CC, 150, 150), (CC, 160, 160), (AttentionMask("chunk_causal", 7), 45, 45),
              (TF, 200, 200), (TF, 160, 160), (AttentionMask("teacher_forcing", 30), 140, 140)]


@pytest.mark.parametrize("major", ["q", "k"])
@pytest.mark.parametrize("mask, q_len, kv_len", MASK_CASES)
def test_tile_plan_visits_exactly_the_visible_tiles(mask, q_len, kv_len, major):
  """Full runs hold exactly the tiles where every pair is visible, partial runs the others with any visible pair."""
  bq, bk = 32, 16
  q_pad, kv_pad = -(-q_len // bq) * bq, -(-kv_len // bk) * bk
  dense = np.zeros((q_pad, kv_pad), bool)
  dense[:q_len, :kv_len] = mask.dense(q_len, kv_len)
  tiles = dense.reshape(q_pad // bq, bq, kv_pad // bk, bk).sum(axis=(1, 3))
  want = np.where(tiles == 0, 0, np.where(tiles == bq * bk, 2, 1))
  plan = mask_tiles.tile_plan(mask, q_len, kv_len, q_pad, kv_pad, bq, bk, major)
  got = np.zeros_like(want if major == "q" else want.T)
  for row in plan.table:
    for r in range(plan.n_full + plan.n_part):
      start, stop = row[1 + 2 * r:3 + 2 * r]
      assert np.all(got[row[0], start:stop] == 0), "a tile is visited twice"
      got[row[0], start:stop] = 2 if r < plan.n_full else 1
  np.testing.assert_array_equal(got, want if major == "q" else want.T)
  work = np.count_nonzero(got, axis=1)[plan.table[:, 0]]
  assert np.all(np.diff(work) <= 0), "rows are not ordered heaviest first"


def _visited(table: np.ndarray, n_inner: int) -> np.ndarray:
  """[outer, inner] tile classes a one-full-run, one-partial-run plan table visits."""
  classes = np.zeros((table.shape[0], n_inner), np.int8)
  for tile, full_start, full_stop, part_start, part_stop in table:
    classes[tile, full_start:full_stop] = 2
    classes[tile, part_start:part_stop] = 1
  return classes


@pytest.mark.parametrize("major", ["q", "k"])
def test_kv_length_plan_matches_static_plan(major):
  """The jnp plan for a dynamic kv_length visits the tiles the static plan finds for the same valid length."""
  seed, rng = _rng()
  q_len, kv_len, bq, bk = 70, 90, 32, 16
  q_pad, kv_pad = 96, 96
  n_inner = kv_pad // bk if major == "q" else q_pad // bq
  lengths = jnp.asarray(rng.integers(0, kv_len + 1, size=3), jnp.int32)
  dynamic = np.asarray(mask_tiles.kv_length_plan(lengths, q_len, kv_len, q_pad, kv_pad, bq, bk, major))
  intervals = np.asarray(mask_tiles.kv_length_intervals(lengths, q_len, kv_len, q_pad))
  for b, length in enumerate(np.asarray(lengths).tolist()):
    expect = np.zeros((q_pad, 4), np.int32)
    expect[:q_len, 1] = length
    np.testing.assert_array_equal(intervals[b].T, expect, err_msg=f"seed {seed}")
    static = mask_tiles.tile_plan(FULL, q_len, length, q_pad, kv_pad, bq, bk, major)
    assert static.n_full == static.n_part == 1
    np.testing.assert_array_equal(_visited(dynamic[b], n_inner), _visited(static.table, n_inner),
                                  err_msg=f"seed {seed}, kv_length {length}")


# --- flash attention (interpret mode) -----------------------------------------------------------------------------

FLASH_CASES = [  # mask, T, S, E, dtype
    pytest.param(CC, 150, 150, 64, jnp.float32, id="chunk_causal-fp32"),
    pytest.param(TF, 200, 200, 64, jnp.float32, id="teacher_forcing-fp32"),
    pytest.param(CC, 220, 220, 128, jnp.bfloat16, id="chunk_causal-bf16"),
    pytest.param(AttentionMask("teacher_forcing", 45), 180, 180, 128, jnp.bfloat16, id="teacher_forcing-bf16"),
    pytest.param(FULL, 70, 90, 64, jnp.float32, id="full-fp32"),
]


def _grads(fn, q, k, v, d_out):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(d_out))


@pytest.mark.parametrize("mask, t, s, e, dtype", FLASH_CASES)
def test_flash_attention_forward_and_grads(mask, t, s, e, dtype):
  seed, rng = _rng()
  b, n = 1, 2
  q, k, v = (_normal(rng, (b, length, n, e), dtype) for length in (t, s, s))
  d_out = _normal(rng, (b, t, n, e), dtype)
  kernel = lambda q, k, v: flash_attention(q, k, v, mask, block_sizes=SMALL_BLOCKS, interpret=True)  # noqa: E731
  with common.poisoned_outputs():
    got = jax.jit(lambda *x: _grads(kernel, *x))(q, k, v, d_out)
  want = _grads(lambda q, k, v: flash_attention_reference(q, k, v, mask), q, k, v, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == w.dtype
    err = rel_err(g, w)
    assert err <= _tol(dtype), f"{mask.kind} {name}: rel err {err:.2e} (seed {seed})"


def test_flash_attention_kv_length():
  """Fixed-size caches: keys ≥ kv_length are masked, a zero length gives zeros, and gradients stop at the length."""
  seed, rng = _rng()
  b, t, s, n, e = 3, 40, 75, 2, 64
  q, k, v = (_normal(rng, (b, length, n, e), jnp.float32) for length in (t, s, s))
  d_out = _normal(rng, (b, t, n, e), jnp.float32)
  lengths = jnp.asarray([int(rng.integers(1, s)), 0, s], jnp.int32)
  def kernel(q, k, v):
    return flash_attention(q, k, v, FULL, lengths, block_sizes=SMALL_BLOCKS, interpret=True)

  with common.poisoned_outputs():
    got = jax.jit(lambda *x: _grads(kernel, *x))(q, k, v, d_out)
  want = _grads(lambda q, k, v: flash_attention_reference(q, k, v, FULL, lengths), q, k, v, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert rel_err(g, w) <= FP32_RTOL, f"{name}: rel err {rel_err(g, w):.2e} (seed {seed}, lengths {lengths})"
  assert np.all(np.asarray(got[0][1]) == 0.0)


def test_flash_attention_rejects_bad_arguments():
  q = jnp.zeros((1, 40, 2, 64))
  with pytest.raises(ValueError, match="kv_length"):
    flash_attention(q, q, q, CC, jnp.array([10]))
  with pytest.raises(ValueError, match="power-of-two head dim"):
    flash_attention(jnp.zeros((1, 40, 2, 48)), jnp.zeros((1, 40, 2, 48)), jnp.zeros((1, 40, 2, 48)), CC)
  with pytest.raises(ValueError, match="power of two"):
    BlockSizes(block_q=96)


def test_interpret_mode_poisons_unwritten_outputs():
  """The poisoning the tests rely on: an output element no kernel writes reads back as NaN."""
  from jax.experimental import pallas as pl

  def write_half(x_ref, o_ref):
    o_ref[:4] = x_ref[:4]

  x = jnp.ones((8,), jnp.float32)
  with common.poisoned_outputs():
    (out,) = common.pallas_call(write_half, out_shape=[jax.ShapeDtypeStruct((8,), jnp.float32)], interpret=True,
                                compiler_params=None, in_specs=[pl.BlockSpec((8,), lambda: (0,))],
                                out_specs=[pl.BlockSpec((8,), lambda: (0,))])(x)
  np.testing.assert_array_equal(np.isnan(np.asarray(out)), np.arange(8) >= 4)


# --- routed attention (interpret mode) ----------------------------------------------------------------------------

@pytest.mark.parametrize("gather_q, dtype", [pytest.param(True, jnp.float32, id="gather-fp32"),
                                             pytest.param(False, jnp.float32, id="active-fp32"),
                                             pytest.param(True, jnp.bfloat16, id="gather-bf16")])
def test_routed_attention(gather_q, dtype):
  """Active rows match gather → attention → scatter; the NaN-poisoned cache rows that are not active stay NaN."""
  seed, rng = _rng()
  b, t, s, n, e, a = 2, 90, 130, 2, 64, 27
  idx = jnp.asarray(np.stack([rng.permutation(t)[:a] for _ in range(b)]), jnp.int32)
  q = _normal(rng, (b, t if gather_q else a, n, e), dtype)
  k, v = (_normal(rng, (b, s, n, e), dtype) for _ in range(2))
  cache = jnp.full((b, t, n, e), jnp.nan, dtype)
  lengths = jnp.asarray([int(rng.integers(1, s)), s], jnp.int32)
  got = jax.jit(lambda *x: routed_attention(*x, gather_q=gather_q, block_sizes=SMALL_BLOCKS, interpret=True))(
      q, k, v, idx, cache, lengths)
  want = routed_attention_reference(q, k, v, idx, cache, lengths, gather_q=gather_q)
  active = np.zeros((b, t), bool)
  active[np.arange(b)[:, None], np.asarray(idx)] = True
  got, want = np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32))
  assert np.all(np.isnan(got[~active])), f"an inactive row was written (seed {seed})"
  err = rel_err(got[active], want[active])
  assert err <= _tol(dtype), f"rel err {err:.2e} (seed {seed})"


# --- lowering for CUDA (CPU) -------------------------------------------------------------------------------------

def test_kernels_lower_to_triton_at_real_shapes():
  """Every kernel lowers through Pallas to Triton IR for CUDA at the real shapes (exported from this CPU machine;
  catches unsupported ops and non-power-of-two tiles; Triton's own compilation to PTX still needs a GPU)."""
  from jax import export
  bf16 = jnp.bfloat16
  target = getattr(common.triton_backend(), "CUSTOM_CALL_TARGET_NAME", "__gpu$xla.gpu.triton")  # named in 0.11
  lower = lambda f, *shapes: export.export(  # noqa: E731
      jax.jit(f), platforms=["cuda"],
      disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(*shapes).mlir_module()
  for mask, t in [(AttentionMask("chunk_causal", C_REAL), 7 * C_REAL),
                  (AttentionMask("teacher_forcing", C_REAL), 14 * C_REAL)]:
    x = jax.ShapeDtypeStruct((1, t, 12, 128), bf16)
    kernel = functools.partial(flash_attention, mask=mask, interpret=False)
    fwd_bwd = lambda q, k, v: jax.vjp(kernel, q, k, v)[1](q)  # noqa: B023,E731
    assert lower(fwd_bwd, x, x, x).count(target) == 3  # forward, dQ, dK/dV
  q = jax.ShapeDtypeStruct((1, C_REAL, 12, 128), bf16)
  kv = jax.ShapeDtypeStruct((1, 7 * C_REAL, 12, 128), bf16)
  lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
  assert target in lower(lambda q, k, v, n: flash_attention(q, k, v, FULL, n, interpret=False), q, kv, kv, lengths)
  idx = jax.ShapeDtypeStruct((1, int(0.3 * C_REAL)), jnp.int32)
  assert target in lower(lambda *x: routed_attention(*x, interpret=False), q, kv, kv, idx, q)


# --- GPU, real shapes ---------------------------------------------------------------------------------------------


def _gpu_case(mask, t, dtype=jnp.bfloat16, n=12, e=128):
  seed, rng = _rng()
  key = jax.random.key(seed)
  q, k, v, d_out = (jax.random.normal(kk, (1, t, n, e), dtype) for kk in jax.random.split(key, 4))
  return seed, q, k, v, d_out


@pytest.mark.gpu
@pytest.mark.parametrize("mask, t", [(AttentionMask("chunk_causal", C_REAL), 7 * C_REAL),
                                     (AttentionMask("teacher_forcing", C_REAL), 14 * C_REAL)])
def test_gpu_flash_attention_real_shapes(mask, t):
  """32,760-token chunk-causal and 65,520-token teacher forcing against the cuDNN per-chunk loop (a dense XLA
  reference would need 51 GB of logits), forward and gradients."""
  seed, q, k, v, d_out = _gpu_case(mask, t)
  with common.poisoned_outputs():
    got = jax.jit(lambda *x: _grads(lambda q, k, v: flash_attention(q, k, v, mask), *x))(q, k, v, d_out)
  want = jax.jit(lambda *x: _grads(lambda q, k, v: attention(q, k, v, mask=mask, impl="cudnn"), *x))(q, k, v, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert rel_err(g, w) <= BF16_RTOL, f"{mask.kind} {name}: rel err {rel_err(g, w):.2e} (seed {seed})"


@pytest.mark.gpu
@pytest.mark.parametrize("mask", [AttentionMask("chunk_causal", C_REAL), AttentionMask("teacher_forcing", C_REAL)])
def test_gpu_flash_attention_against_xla(mask):
  """Two chunks (9,360 tokens, 2 heads) against the dense XLA reference, forward and gradients."""
  t = 2 * C_REAL
  seed, q, k, v, d_out = _gpu_case(mask, t, n=2)
  with common.poisoned_outputs():
    got = jax.jit(lambda *x: _grads(lambda q, k, v: flash_attention(q, k, v, mask), *x))(q, k, v, d_out)
  want = jax.jit(lambda *x: _grads(lambda q, k, v: flash_attention_reference(q, k, v, mask), *x))(q, k, v, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert rel_err(g, w) <= BF16_RTOL, f"{mask.kind} {name}: rel err {rel_err(g, w):.2e} (seed {seed})"


@pytest.mark.gpu
@pytest.mark.parametrize("cached", [C_REAL, 3 * C_REAL])
def test_gpu_streaming_kv_length(cached):
  """A 4,680-query chunk against a 32,760-key buffer with `cached` + 4,680 valid keys, against cuDNN."""
  seed, rng = _rng()
  key = jax.random.key(seed)
  q = jax.random.normal(key, (1, C_REAL, 12, 128), jnp.bfloat16)
  k, v = (jax.random.normal(kk, (1, 7 * C_REAL, 12, 128), jnp.bfloat16) for kk in jax.random.split(key, 2))
  lengths = jnp.asarray([C_REAL + cached], jnp.int32)
  with common.poisoned_outputs():
    got = jax.jit(lambda *x: flash_attention(*x, FULL, lengths))(q, k, v)
  want = jax.jit(lambda *x: attention(*x, kv_length=lengths, impl="cudnn"))(q, k, v)
  assert rel_err(got, want) <= BF16_RTOL, f"rel err {rel_err(got, want):.2e} (seed {seed})"


@pytest.mark.gpu
def test_gpu_routed_attention_real_shapes():
  """30 % of a 4,680-token chunk active against 14,040 keys; the NaN cache rows that are not active stay NaN."""
  seed, rng = _rng()
  t, s, a = C_REAL, 3 * C_REAL, int(0.3 * C_REAL)
  key = jax.random.key(seed)
  q = jax.random.normal(key, (1, t, 12, 128), jnp.bfloat16)
  k, v = (jax.random.normal(kk, (1, s, 12, 128), jnp.bfloat16) for kk in jax.random.split(key, 2))
  idx = jnp.asarray(rng.permutation(t)[:a][None], jnp.int32)
  cache = jnp.full((1, t, 12, 128), jnp.nan, jnp.bfloat16)
  got = np.asarray(jax.jit(routed_attention)(q, k, v, idx, cache).astype(jnp.float32))
  want = np.asarray(routed_attention_reference(q, k, v, idx, cache).astype(jnp.float32))
  active = np.zeros((1, t), bool)
  active[0, np.asarray(idx[0])] = True
  assert np.all(np.isnan(got[~active]))
  assert rel_err(got[active], want[active]) <= BF16_RTOL, f"seed {seed}"
