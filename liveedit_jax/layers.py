"""Small Linen layers shared by the DiT, VAE and text encoder, with Wan's precision policy.

Matmuls run in a compute dtype with float32 accumulation; norms compute their statistics in float32.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


class Dense(nn.Module):
  """`y = x @ kernel + bias` in `dtype` with float32 accumulation; returns `out_dtype` (default `dtype`).

  kernel: [in, out] (a torch Linear weight transposed).
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  out_dtype: Any = None
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype),
                   preferred_element_type=jnp.float32)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(jnp.float32)
    return y.astype(self.out_dtype or self.dtype)


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
  """x * rsqrt(mean(x², last axis) + eps), in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def layer_normalize(x: jax.Array, eps: float) -> jax.Array:
  """(x − mean) * rsqrt(var + eps) over the last axis, in float32 (no affine)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class RMSNorm(nn.Module):
  """RMS norm over the last axis (`features` wide) with a learned scale; float32 output."""

  features: int
  eps: float = 1e-6
  param_dtype: Any = jnp.float32

  def setup(self):
    self.scale = self.param("scale", nn.initializers.ones_init(), (self.features,), self.param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_normalize(x, self.eps) * self.scale.astype(jnp.float32)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, optionally affine; float32 output."""

  eps: float = 1e-6
  affine: bool = True
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = layer_normalize(x, self.eps)
    if self.affine:
      scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],), self.param_dtype)
      bias = self.param("bias", nn.initializers.zeros_init(), (x.shape[-1],), self.param_dtype)
      y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y


def gelu_tanh(x: jax.Array) -> jax.Array:
  """GELU with the tanh approximation (torch `approximate='tanh'`)."""
  return jax.nn.gelu(x, approximate=True)
