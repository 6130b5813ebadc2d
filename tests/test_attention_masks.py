"""The attention masks' geometry (`AttentionMask.row_intervals`) against the masks' definitions, element by
element, and everything read off it: the dense mask (numpy and traced), the visible-pair count, the row groups and
the cuDNN path's prefix loop (run here with the XLA reference as its attend, against the dense-masked reference)."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.attention import FULL, AttentionMask, _prefix_loop, attention_reference
from tests.numerics import FP32_RTOL, rel_err

CASES = [(FULL, 70, 90), (AttentionMask("chunk_causal", 40), 150, 150), (AttentionMask("chunk_causal", 40), 160, 160),
         (AttentionMask("chunk_causal", 7), 45, 45), (AttentionMask("teacher_forcing", 40), 200, 200),
         (AttentionMask("teacher_forcing", 40), 160, 160), (AttentionMask("teacher_forcing", 30), 140, 140)]


def defined_visible(mask: AttentionMask, q_len: int, kv_len: int) -> np.ndarray:
  """The masks as the papers state them, one (query, key) pair at a time."""
  c, half = mask.chunk_tokens, q_len // 2
  out = np.zeros((q_len, kv_len), bool)
  for i in range(q_len):
    for j in range(kv_len):
      if mask.kind == "full":
        out[i, j] = True
      elif mask.kind == "chunk_causal":  # own chunk and earlier ones
        out[i, j] = j // c <= i // c
      else:  # [clean ‖ noisy]: clean chunk-causal; noisy chunk sees earlier clean chunks and itself
        i_noisy, j_noisy = i >= half, j >= half
        ci, cj = (i - half * i_noisy) // c, (j - half * j_noisy) // c
        out[i, j] = ((not i_noisy and not j_noisy and cj <= ci) or (i_noisy and not j_noisy and cj < ci)
                     or (i_noisy and j_noisy and cj == ci))
  return out


@pytest.mark.parametrize("mask, q_len, kv_len", CASES)
def test_intervals_dense_and_pairs_are_the_definition(mask, q_len, kv_len):
  want = defined_visible(mask, q_len, kv_len)
  iv = mask.row_intervals(q_len, kv_len)
  assert iv.shape == (q_len, 4) and iv.dtype == np.int32
  assert np.all((0 <= iv[:, 0::2]) & (iv[:, 0::2] <= iv[:, 1::2]) & (iv[:, 1::2] <= kv_len))
  np.testing.assert_array_equal(mask.dense(q_len, kv_len), want)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda: mask.dense(q_len, kv_len, jnp))()), want)
  assert mask.visible_pairs(q_len, kv_len) == want.sum()


@pytest.mark.parametrize("mask, q_len, kv_len", CASES)
def test_row_groups_tile_the_rows_with_their_keys(mask, q_len, kv_len):
  want = defined_visible(mask, q_len, kv_len)
  groups = mask.row_groups(q_len, kv_len)
  assert [g[0] for g in groups] == [0, *[g[1] for g in groups[:-1]]] and groups[-1][1] == q_len
  for start, stop, intervals in groups:
    seen = np.zeros(kv_len, bool)
    for lo, hi in intervals:
      seen[lo:hi] = True
    np.testing.assert_array_equal(want[start:stop], np.broadcast_to(seen, (stop - start, kv_len)))
  if mask.kind == "chunk_causal":  # one call per chunk: the loop is as short as the mask allows
    assert len(groups) == -(-q_len // mask.chunk_tokens)


@pytest.mark.parametrize("mask, q_len, kv_len", [case for case in CASES if case[0].kind != "full"])
def test_prefix_loop_is_the_masked_reference(mask, q_len, kv_len):
  seed = random.SystemRandom().randrange(2**31)
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((2, n, 3, 16)), jnp.float32) for n in (q_len, kv_len, kv_len))
  got = _prefix_loop(q, k, v, mask, attention_reference)
  want = attention_reference(q, k, v, defined_visible(mask, q_len, kv_len))
  assert rel_err(got, want) <= FP32_RTOL, f"seed {seed}"
