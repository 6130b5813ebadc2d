"""GPU: the cuDNN attention paths against the XLA reference, and the bf16 streaming step against fp32.

Skipped on CPU (`gpu` marker). Fresh random inputs each run; bf16 tolerance 1e-2 relative.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.attention import AttentionMask, attention, attention_reference
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward, init_dit_params
from tests.numerics import BF16_RTOL, rel_err

pytestmark = pytest.mark.gpu


def _qkv(key, b, t, s, n=12, e=128, dtype=jnp.bfloat16):
  kq, kk, kv = jax.random.split(key, 3)
  return (jax.random.normal(kq, (b, t, n, e), dtype), jax.random.normal(kk, (b, s, n, e), dtype),
          jax.random.normal(kv, (b, s, n, e), dtype))


@pytest.mark.parametrize("kind, length, chunk", [("chunk_causal", 7 * 1560, 3 * 1560),
                                                 ("teacher_forcing", 2 * 6 * 1560, 3 * 1560)])
def test_cudnn_chunk_masks_match_reference(kind, length, chunk):
  q, k, v = _qkv(jax.random.key(random.SystemRandom().randrange(2**31)), 1, length, length, n=4)
  mask = AttentionMask(kind, chunk)
  out = jax.jit(lambda q, k, v: attention(q, k, v, mask=mask, impl="cudnn"))(q, k, v)
  ref = attention_reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                            mask.dense(length, length))
  assert rel_err(out, ref) <= BF16_RTOL


def test_cudnn_kv_length_matches_reference():
  key = jax.random.key(random.SystemRandom().randrange(2**31))
  q, k, v = _qkv(key, 2, 4680, 4680 + 14040)
  kv_length = jnp.array([4680 + 7800, 4680 + 14040], jnp.int32)
  out = jax.jit(lambda q, k, v, n: attention(q, k, v, kv_length=n, impl="cudnn"))(q, k, v, kv_length)
  ref = attention_reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), None, kv_length)
  assert rel_err(out, ref) <= BF16_RTOL


def test_bf16_cudnn_dit_matches_fp32_xla():
  """Two layers at the real widths, chunk-causal, bf16 + cuDNN against fp32 + XLA."""
  cfg = DiTConfig.preset("liveedit-1.3b", num_layers=2)
  seed = random.SystemRandom().randrange(2**31)
  params = init_dit_params(cfg, jax.random.key(seed))
  params["head"]["proj"]["kernel"] = 0.02 * jax.random.normal(jax.random.key(seed + 1),
                                                              params["head"]["proj"]["kernel"].shape)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((1, 6, 30, 52, 32)), jnp.float32)
  t = jnp.asarray(rng.uniform(0, 1000, (1, 6)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((1, 512, 4096)), jnp.float32)
  fwd = jax.jit(dit_forward, static_argnums=0, static_argnames="chunk_frames")
  ref = fwd(cfg.replace(kernels="xla"), params, x, t, ctx, chunk_frames=3)
  out = fwd(cfg.replace(compute_dtype="bfloat16", kernels="cudnn"), params, x, t, ctx, chunk_frames=3)
  assert rel_err(out, ref) <= BF16_RTOL
