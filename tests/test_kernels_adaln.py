"""Fused adaLN modulation (liveedit_kernels/adaln.py, jax-triton) against the model's XLA math."""

import importlib.util
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.fused import modulated_layer_norm_reference
from liveedit_kernels.adaln import modulated_layer_norm
from tests.numerics import BF16_RTOL, rel_err


@pytest.mark.skipif(importlib.util.find_spec("jax_triton") is not None, reason="jax_triton is installed")
def test_triton_without_jax_triton_names_the_fix():
  x = jnp.zeros((1, 2, 3, 8))
  with pytest.raises(ImportError, match="jax-triton"):
    modulated_layer_norm(x, x[:, :, :1], x[:, :, :1], implementation="triton")


def test_rejects_mismatched_modulation():
  x = jnp.zeros((1, 2, 3, 8))
  with pytest.raises(ValueError, match="shift, scale"):
    modulated_layer_norm(x, x, x[:, :, :1])


@pytest.mark.gpu
@pytest.mark.parametrize("frames, tokens, width", [(21, 1560, 1536), (3, 7, 96)])
def test_gpu_adaln_triton(frames, tokens, width):
  """The real block input (21 frames × 1,560 tokens × 1,536) and a ragged small one, bf16 out."""
  pytest.importorskip("jax_triton")
  seed = random.SystemRandom().randrange(2**31)
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = 3.0 * jax.random.normal(k1, (1, frames, tokens, width), jnp.float32) + 1.0
  shift, scale = (jax.random.normal(k, (1, frames, 1, width), jnp.float32) for k in (k2, k3))
  got = jax.jit(lambda *a: modulated_layer_norm(*a, implementation="triton"))(x, shift, scale)
  want = modulated_layer_norm_reference(x, shift, scale, eps=1e-6, out_dtype=jnp.bfloat16)
  assert got.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(got)))
  assert rel_err(got, want) <= BF16_RTOL, f"seed {seed}"
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_adaln_triton_gradients():
  """The custom_vjp's gradients (XLA's gradient of the reference) for x, shift and scale."""
  pytest.importorskip("jax_triton")
  seed = random.SystemRandom().randrange(2**31)
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(k1, (2, 3, 10, 96), jnp.float32)
  shift, scale = (jax.random.normal(k, (2, 3, 1, 96), jnp.float32) for k in (k2, k3))
  d_out = jax.random.normal(k4, x.shape, jnp.bfloat16)

  def grads(impl):
    f = lambda *a: modulated_layer_norm(*a, implementation=impl)  # noqa: E731
    return jax.jit(lambda *a: jax.vjp(f, *a)[1](d_out))(x, shift, scale)

  for g, w in zip(grads("triton"), grads("xla")):
    assert rel_err(g, w) <= BF16_RTOL, f"seed {seed}"
