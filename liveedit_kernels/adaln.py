"""Fused adaLN modulation, a jax-triton kernel: y = LayerNorm(x) · (1 + scale) + shift, fp32 math, bf16 out.

    impl = liveedit_kernels.dispatch.policy().choose("adaln", ("triton", "xla"), "xla")
    u = modulated_layer_norm(x, shift, scale, implementation=impl)

Every Wan block computes this twice before its self-attention and FFN projections
(liveedit_jax.fused.modulated_layer_norm, called by liveedit_jax/dit.py `Block.self_attention_input` and
`feed_forward_input`): x [B, F, P, D] float32 residual stream, shift and scale
[B, F, 1, D] float32 per frame. The kernel reads each row of x once, keeps it in registers for both statistics and
the modulation, and writes the compute dtype directly. XLA on an H200 also makes it one fusion, so the two are
within noise of each other: 0.77-1.12x XLA's speed over eight measurements (`python -m liveedit_kernels.bench --only
adaln`, docs/benchmarks.md); the dispatch table picks whichever measured faster.

jax-triton needs JAX ≥ 0.11 (the `gpu` extra), so it is imported on first use only.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from liveedit_jax.fused import modulated_layer_norm_reference
from liveedit_kernels.common import jax_triton_modules, with_reference_gradient

Implementation = Literal["triton", "xla"]
_ROWS_PER_PROGRAM = 4  # tokens per Triton program: [4, D] tiles keep more loads in flight than one row each


@functools.cache
def _triton_kernel():
  """The Triton kernel, built on first use (triton and jax_triton are optional GPU dependencies)."""
  jax_triton, triton, tl = jax_triton_modules("modulated_layer_norm")

  @triton.jit
  def kernel(x_ptr, shift_ptr, scale_ptr, out_ptr, n_rows: tl.constexpr, tokens_per_frame: tl.constexpr,
             d: tl.constexpr, eps: tl.constexpr, block_rows: tl.constexpr, block_d: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * block_rows + tl.arange(0, block_rows)  # B·F·P·D may pass 2³¹
    cols = tl.arange(0, block_d)
    valid = (rows < n_rows)[:, None] & (cols < d)[None, :]
    offsets = rows[:, None] * d + cols[None, :]
    frame_offsets = (rows // tokens_per_frame)[:, None] * d + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / d
    centred = tl.where(valid, x - mean[:, None], 0.0)
    inv_std = tl.rsqrt(tl.sum(centred * centred, axis=1) / d + eps)
    scale = tl.load(scale_ptr + frame_offsets, mask=valid, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + frame_offsets, mask=valid, other=0.0).to(tl.float32)
    y = centred * inv_std[:, None] * (1.0 + scale) + shift
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=valid)

  return jax_triton, triton, kernel


def _triton(x, shift, scale, *, eps: float, out_dtype: Any) -> jax.Array:
  jax_triton, triton, kernel = _triton_kernel()
  b, f, p, d = x.shape
  block_d = triton.next_power_of_2(d)
  n_rows = b * f * p
  return jax_triton.triton_call(
      x.astype(jnp.float32), shift.astype(jnp.float32), scale.astype(jnp.float32), kernel=kernel,
      out_shape=jax.ShapeDtypeStruct(x.shape, out_dtype), grid=(-(-n_rows // _ROWS_PER_PROGRAM),),
      n_rows=n_rows, tokens_per_frame=p, d=d, eps=eps, block_rows=_ROWS_PER_PROGRAM, block_d=block_d,
      num_warps=min(16, max(4, _ROWS_PER_PROGRAM * block_d // 1024)), name="modulated_layer_norm")


def modulated_layer_norm(x: jax.Array, shift: jax.Array, scale: jax.Array, *, eps: float = 1e-6,
                         out_dtype: Any = jnp.bfloat16, implementation: Implementation = "xla") -> jax.Array:
  """LayerNorm(x) · (1 + scale) + shift over the last axis. x [B, F, P, D]; shift, scale [B, F, 1, D].

  The Triton kernel's backward pass is XLA's gradient of the reference (`jax.custom_vjp`)."""
  if implementation not in ("triton", "xla"):
    raise ValueError(f"implementation must be 'triton' or 'xla', got {implementation!r}")
  b, f, p, d = x.shape
  if shift.shape != (b, f, 1, d) or scale.shape != (b, f, 1, d):
    raise ValueError(f"modulated_layer_norm expects x [B, F, P, D] and shift, scale [B, F, 1, D]; got x {x.shape}, "
                     f"shift {shift.shape}, scale {scale.shape}")
  if implementation == "xla":
    return modulated_layer_norm_reference(x, shift, scale, eps=eps, out_dtype=out_dtype)
  static = dict(eps=eps, out_dtype=out_dtype)
  return with_reference_gradient(functools.partial(_triton, **static),
                                 functools.partial(modulated_layer_norm_reference, **static))(x, shift, scale)
