"""Small Linen layers shared by the DiT, VAE and text encoder, with Wan's precision policy.

Matmuls run in a compute dtype with float32 accumulation; norms compute their statistics in float32.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# torch's default Conv/Linear init (kaiming_uniform, a=√5): U(±1/√fan_in).
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def init_key(key: jax.Array) -> jax.Array:
  """A key drawn from `key` for a Flax `init` of many parameters, of JAX's `unsafe_rbg` implementation.

  Flax folds one key per module and draws one stream per parameter; with threefry each is a loop that XLA:CPU
  compiles in about 0.2 s, so jitting the tiny VAE's init (196 parameters) took 68 s to compile, the tiny TAEHV's
  64 s. `unsafe_rbg` keys split, fold and draw with XLA's RngBitGenerator, one op each (8 s and 7 s). The
  distributions are the initializers' own; the values follow `key` on one backend (XLA's generator may differ
  between backends)."""
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="unsafe_rbg")


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
