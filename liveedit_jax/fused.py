"""The block's memory-bound elementwise ops, with pluggable fused implementations.

  modulated_layer_norm   LayerNorm(x) · (1 + scale) + shift, the adaLN input of the self-attention and the FFN
  rms_norm_rope          RMSNorm over the width with a learned scale, head split, 3-D RoPE: q and k of the
                         self-attention

Each runs Wan's float32 math and returns the compute dtype. `impl` names an implementation family, the model's
`DiTConfig.kernels`: the built-in attention families ("auto", "xla", "cudnn") have no fused version and run the
XLA reference here; "pallas" (`liveedit_kernels.dispatch`, imported on first use) runs the jax-triton kernels of
`liveedit_kernels/` where they were measured faster. Any other family must have registered the op, or the call
raises: a missing kernel never turns silently into the reference.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, get_args

import jax
import jax.numpy as jnp

from liveedit_jax.attention import load_impl_family
from liveedit_jax.layers import layer_normalize, rms_normalize
from liveedit_jax.rope import apply_rope

FusedOp = Literal["modulated_layer_norm", "rms_norm_rope"]
_IMPLS: dict[tuple[str, str], Callable] = {}
_REFERENCE_FAMILIES = ("auto", "xla", "cudnn")


def register_fused_impl(impl: str, op: FusedOp, fn: Callable) -> None:
  """Adds `fn`, with `op`'s signature, as implementation family `impl`'s version of `op`
  (used by `liveedit_kernels/`)."""
  if op not in get_args(FusedOp):
    raise ValueError(f"unknown fused op {op!r}")
  _IMPLS[(impl, op)] = fn


def _implementation(impl: str, op: FusedOp, reference: Callable) -> Callable:
  if impl in _REFERENCE_FAMILIES:
    return reference
  load_impl_family(impl)
  if (impl, op) not in _IMPLS:
    registered = sorted({family for family, registered_op in _IMPLS if registered_op == op})
    raise ValueError(f"{op}: implementation family {impl!r} is not available; known: "
                     f"{[*_REFERENCE_FAMILIES, *registered]}")
  return _IMPLS[(impl, op)]


def modulated_layer_norm_reference(x: jax.Array, shift: jax.Array, scale: jax.Array, *, eps: float,
                                   out_dtype: Any) -> jax.Array:
  """x [B, F, P, D] float32; shift, scale [B, F, 1, D] float32 → [B, F, P, D] out_dtype."""
  return (layer_normalize(x, eps) * (1 + scale) + shift).astype(out_dtype)


def modulated_layer_norm(x: jax.Array, shift: jax.Array, scale: jax.Array, *, eps: float, out_dtype: Any,
                         impl: str = "xla") -> jax.Array:
  """LayerNorm(x) · (1 + scale) + shift over the last axis. x [B, F, P, D]; shift, scale [B, F, 1, D]."""
  fn = _implementation(impl, "modulated_layer_norm", modulated_layer_norm_reference)
  return fn(x, shift, scale, eps=eps, out_dtype=out_dtype)


def rms_norm_rope_reference(x: jax.Array, scale: jax.Array, cos: jax.Array, sin: jax.Array, *, num_heads: int,
                            eps: float) -> jax.Array:
  """x [B, T, D] (a projection, compute dtype); scale [D]; cos, sin [T, E/2] or [B, T, E/2] float32
  → roped heads [B, T, N, E] in x's dtype."""
  y = rms_normalize(x, eps) * scale.astype(jnp.float32)
  return apply_rope(y.reshape(*y.shape[:-1], num_heads, -1), cos, sin).astype(x.dtype)


def rms_norm_rope(x: jax.Array, scale: jax.Array, cos: jax.Array, sin: jax.Array, *, num_heads: int, eps: float,
                  impl: str = "xla") -> jax.Array:
  """RMSNorm(x) · scale over the width, split into `num_heads` heads, each rotated by RoPE (`rms_norm_rope_reference`
  gives the shapes)."""
  fn = _implementation(impl, "rms_norm_rope", rms_norm_rope_reference)
  return fn(x, scale, cos, sin, num_heads=num_heads, eps=eps)
