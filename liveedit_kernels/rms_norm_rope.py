"""q/k RMSNorm fused with Wan's 3-D RoPE, a jax-triton kernel: a projection in, its roped heads out.

    impl = liveedit_kernels.dispatch.policy().choose("rms_norm_rope", ("triton", "xla"), "xla")
    q = rms_norm_rope(q_proj, q_scale, cos, sin, num_heads=12, implementation=impl)

Wan's self-attention normalises q and k over the full width (RMSNorm with a learned scale), splits heads and rotates
interleaved pairs (liveedit_jax.fused.rms_norm_rope_reference). XLA makes that a float32 normalised copy of the
projection and a second pass that reads it for the rotation. The kernel reads each token's row once, keeps it in
registers for the statistic, the scale and the rotation, and writes the roped heads in bf16.

A token's row [D] of bf16 is read as D/2 32-bit words, one rotation pair (even, odd) each, laid out [heads padded
to a power of two, E/2]: Triton's tensors have power-of-two sides, every load and store stays contiguous and
vectorised, and a bf16 becomes its float32 by a shift (the pair's halves need no gather or shuffle).
The backward pass is XLA's gradient of the reference (`jax.custom_vjp`), recomputed from the inputs.

jax-triton needs JAX ≥ 0.11 (the `gpu` extra), so it is imported on first use only.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from liveedit_jax.fused import rms_norm_rope_reference
from liveedit_kernels.common import jax_triton_modules, with_reference_gradient

Implementation = Literal["triton", "xla"]
_TOKENS_PER_PROGRAM = 8  # with 4 warps: 0.081-0.092 ms at 32,760 × 1,536 on an H200; 2 × 4, 4 × 8: 0.095-0.108
_NUM_WARPS = 4


@functools.cache
def _triton_kernel():
  """The Triton kernel, built on first use (triton and jax_triton are optional GPU dependencies)."""
  jax_triton, triton, tl = jax_triton_modules("rms_norm_rope")

  @triton.jit
  def kernel(x_ptr, scale_ptr, cos_ptr, sin_ptr, out_ptr, tokens: tl.constexpr, heads: tl.constexpr,
             pairs: tl.constexpr, cos_batch_stride: tl.constexpr, eps: tl.constexpr, block_tokens: tl.constexpr,
             block_heads: tl.constexpr, block_pairs: tl.constexpr):
    """Rows as words [tokens, heads, pairs]. scale: [2, D/2] float32, the even elements' scales, then the odd's."""
    batch = tl.program_id(1)
    t = tl.program_id(0) * block_tokens + tl.arange(0, block_tokens)
    h = tl.arange(0, block_heads)
    j = tl.arange(0, block_pairs)
    t_valid = t < tokens
    pair = h[:, None] * pairs + j[None, :]  # the pair's index within the row
    pair_valid = (h < heads)[:, None] & (j < pairs)[None, :]
    offsets = (batch * tokens + t).to(tl.int64)[:, None, None] * (heads * pairs) + pair[None]  # B·T·D may pass 2³¹
    valid = t_valid[:, None, None] & pair_valid[None]
    words = tl.load(x_ptr.to(tl.pointer_type(tl.uint32)) + offsets, mask=valid, other=0)
    even = (words << 16).to(tl.float32, bitcast=True)  # a bf16 is the high half of its float32
    odd = (words & 0xFFFF0000).to(tl.float32, bitcast=True)
    inv_rms = tl.rsqrt(tl.sum(tl.sum(even * even + odd * odd, axis=2), axis=1) / (2 * heads * pairs) + eps)
    even *= inv_rms[:, None, None] * tl.load(scale_ptr + pair, mask=pair_valid, other=0.0)[None]
    odd *= inv_rms[:, None, None] * tl.load(scale_ptr + heads * pairs + pair, mask=pair_valid, other=0.0)[None]
    cs_offsets = (batch * cos_batch_stride + t).to(tl.int64)[:, None, None] * pairs + j[None, None, :]
    cs_valid = t_valid[:, None, None] & (j < pairs)[None, None, :]
    cos = tl.load(cos_ptr + cs_offsets, mask=cs_valid, other=0.0)  # [tokens, 1, pairs]: shared by the heads
    sin = tl.load(sin_ptr + cs_offsets, mask=cs_valid, other=0.0)
    out_even = (even * cos - odd * sin).to(tl.bfloat16).to(tl.uint16, bitcast=True).to(tl.uint32)
    out_odd = (even * sin + odd * cos).to(tl.bfloat16).to(tl.uint16, bitcast=True).to(tl.uint32)
    tl.store(out_ptr.to(tl.pointer_type(tl.uint32)) + offsets, out_even | (out_odd << 16), mask=valid)

  return jax_triton, triton, kernel


def _triton(x, scale, cos, sin, *, num_heads: int, eps: float):
  jax_triton, triton, kernel = _triton_kernel()
  b, t, d = x.shape
  pairs = d // num_heads // 2
  return jax_triton.triton_call(
      x, scale.astype(jnp.float32).reshape(d // 2, 2).T, cos.astype(jnp.float32), sin.astype(jnp.float32),
      kernel=kernel, out_shape=jax.ShapeDtypeStruct((b, t, num_heads, 2 * pairs), x.dtype),
      grid=(-(-t // _TOKENS_PER_PROGRAM), b), tokens=t, heads=num_heads, pairs=pairs,
      cos_batch_stride=t if cos.ndim == 3 else 0, eps=eps, block_tokens=_TOKENS_PER_PROGRAM,
      block_heads=triton.next_power_of_2(num_heads), block_pairs=triton.next_power_of_2(pairs),
      num_warps=_NUM_WARPS, name="rms_norm_rope")


def rms_norm_rope(x: jax.Array, scale: jax.Array, cos: jax.Array, sin: jax.Array, *, num_heads: int,
                  eps: float = 1e-6, implementation: Implementation = "xla") -> jax.Array:
  """RMSNorm(x) · scale over the width, split into heads, roped.

  x: [B, T, D] a projection in the compute dtype (bfloat16 for the Triton kernel); scale: [D]; cos, sin: [T, E/2]
  or [B, T, E/2] float32 (liveedit_jax.rope.rope_cos_sin). Returns [B, T, N, E] in x's dtype, E = D / N.
  """
  if implementation not in ("triton", "xla"):
    raise ValueError(f"implementation must be 'triton' or 'xla', got {implementation!r}")
  if x.ndim != 3:
    raise ValueError(f"rms_norm_rope expects x [B, T, D]; got {x.shape}")
  b, t, d = x.shape
  if d % (2 * num_heads):
    raise ValueError(f"width {d} does not split into {num_heads} heads of an even size")
  pairs = d // num_heads // 2
  if scale.shape != (d,):
    raise ValueError(f"scale must be [{d}]; got {scale.shape}")
  if cos.shape != sin.shape or cos.shape not in ((t, pairs), (b, t, pairs)):
    raise ValueError(f"cos and sin must be [T, E/2] = [{t}, {pairs}] or [B, T, E/2]; got {cos.shape}, {sin.shape}")
  if implementation == "xla":
    return rms_norm_rope_reference(x, scale, cos, sin, num_heads=num_heads, eps=eps)
  if x.dtype != jnp.bfloat16:
    raise ValueError(f"rms_norm_rope(implementation='triton') takes a bfloat16 x, got {x.dtype}")
  static = dict(num_heads=num_heads, eps=eps)
  return with_reference_gradient(functools.partial(_triton, **static),
                                 functools.partial(rms_norm_rope_reference, **static))(x, scale, cos, sin)
