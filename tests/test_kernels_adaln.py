"""Fused adaLN modulation (kernels/adaln.py, jax-triton) against the model's XLA math."""

import importlib.util
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.adaln import adaln_modulate, adaln_modulate_reference
from tests.numerics import BF16_RTOL, rel_err


@pytest.mark.skipif(importlib.util.find_spec("jax_triton") is not None, reason="jax_triton is installed")
def test_triton_without_jax_triton_names_the_fix():
  x = jnp.zeros((1, 2, 3, 8))
  with pytest.raises(ImportError, match="jax-triton"):
    adaln_modulate(x, x[:, :, :1], x[:, :, :1], implementation="triton")


def test_rejects_mismatched_modulation():
  x = jnp.zeros((1, 2, 3, 8))
  with pytest.raises(ValueError, match="shift, scale"):
    adaln_modulate(x, x, x[:, :, :1])


@pytest.mark.gpu
@pytest.mark.parametrize("frames, tokens, width", [(21, 1560, 1536), (3, 7, 96)])
def test_gpu_adaln_triton(frames, tokens, width):
  """The real block input (21 frames × 1,560 tokens × 1,536) and a ragged small one, bf16 out."""
  pytest.importorskip("jax_triton")
  seed = random.SystemRandom().randrange(2**31)
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = 3.0 * jax.random.normal(k1, (1, frames, tokens, width), jnp.float32) + 1.0
  shift, scale = (jax.random.normal(k, (1, frames, 1, width), jnp.float32) for k in (k2, k3))
  got = jax.jit(lambda *a: adaln_modulate(*a, implementation="triton"))(x, shift, scale)
  want = adaln_modulate_reference(x, shift, scale)
  assert got.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(got)))
  assert rel_err(got, want) <= BF16_RTOL, f"seed {seed}"
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)
