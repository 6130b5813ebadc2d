"""Mask-cache routed attention: active queries gathered by index attend to all keys, outputs scattered into a cache.

    out = routed_attention(q, k, v, active_idx, cached_out, kv_length)   # one kernel, forward only (inference)

LiveEdit's mask cache (liveedit_jax/mask_cache.py) recomputes self-attention only for the active tokens of a chunk
and takes the others' output from a cache. Done in XLA that is a gather, an attention and a scatter, each a pass
over memory; here one kernel reads the active query rows by index, runs the flash forward of
`liveedit_kernels.flash_attention` over the valid keys and writes each output row at its index into the cache buffer,
which is aliased to the output (rows not active are never touched).

Shapes: q [B, T, N, E] (gather_q=True: rows active_idx are read) or [B, A, N, E] (gather_q=False: already the
active queries, in active_idx order); k, v [B, S, N, E]; active_idx [B, A] int32, distinct, in [0, T);
cached_out [B, T, N, E]; kv_length [B] int32 (keys ≥ kv_length masked). Returns [B, T, N, E] in cached_out's dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from liveedit_jax.attention import attention_reference
from liveedit_kernels import common, mask_tiles
from liveedit_kernels.flash_attention import BlockSizes, online_softmax

Implementation = Literal["triton", "xla"]


def routed_attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, active_idx: jax.Array,
                               cached_out: jax.Array, kv_length: jax.Array | None = None, *,
                               gather_q: bool = True) -> jax.Array:
  """Gather, XLA attention, scatter."""
  batch = jnp.arange(q.shape[0])[:, None]
  q_active = q[batch, active_idx] if gather_q else q
  out = attention_reference(q_active, k, v, None, kv_length)
  return cached_out.at[batch, active_idx].set(out.astype(cached_out.dtype))


def _kernel(tab_ref, iv_ref, idx_ref, q_ref, k_ref, v_ref, cache_ref, o_ref, *, block_q: int, gather_q: bool,
            **softmax_args):
  del cache_ref  # the same buffer as o_ref (aliased); rows this kernel does not write keep their cached values
  row = pl.program_id(0)
  slots = pl.ds(pl.multiple_of(tab_ref[row, 0] * block_q, block_q), block_q)
  idx = idx_ref[slots]
  q = q_ref[idx, :] if gather_q else q_ref[slots, :]
  out, _ = online_softmax(q, [iv_ref[r, slots] for r in range(4)], k_ref, v_ref, tab_ref, row, **softmax_args)
  o_ref[idx, :] = out.astype(o_ref.dtype)


def routed_attention(q: jax.Array, k: jax.Array, v: jax.Array, active_idx: jax.Array, cached_out: jax.Array,
                     kv_length: jax.Array | None = None, *, gather_q: bool = True,
                     block_sizes: BlockSizes | None = None, implementation: Implementation = "triton",
                     interpret: bool | None = None) -> jax.Array:
  """See the module docstring. Uses block_sizes.block_q (active rows per tile) and block_k."""
  if implementation not in ("triton", "xla"):
    raise ValueError(f"implementation must be 'triton' or 'xla', got {implementation!r}")
  b, a = active_idx.shape
  t = cached_out.shape[1]
  want_q = (b, t if gather_q else a, *cached_out.shape[2:])
  if q.shape != want_q or k.shape != v.shape or k.shape[0] != b or k.shape[2:] != q.shape[2:]:
    raise ValueError(f"routed_attention expects q {want_q} (gather_q={gather_q}), k and v [B, S, N, E] and "
                     f"cached_out [B, T, N, E]; got q {q.shape}, k {k.shape}, v {v.shape}, cached_out "
                     f"{cached_out.shape}, active_idx {active_idx.shape}")
  if implementation == "xla":
    return routed_attention_reference(q, k, v, active_idx, cached_out, kv_length, gather_q=gather_q)
  bs = block_sizes or BlockSizes()
  interpret = common.interpret_default() if interpret is None else interpret
  n, e = q.shape[2:]
  s = k.shape[1]
  a_pad = common.round_up(a, bs.block_q)
  kv_pad = common.round_up(s, bs.block_k)
  # Pad the active list by repeating its last entry: a repeated row is computed twice and written twice with the
  # same value, so no store needs a mask.
  idx = jnp.pad(active_idx.astype(jnp.int32), ((0, 0), (0, a_pad - a)), mode="edge")
  q = q if gather_q else jnp.pad(q, ((0, 0), (0, a_pad - a), (0, 0), (0, 0)), mode="edge")
  kp, vp = common.pad_axis(k, 1, kv_pad), common.pad_axis(v, 1, kv_pad)
  lengths = jnp.full((b,), s, jnp.int32) if kv_length is None else kv_length
  table = mask_tiles.kv_length_plan(lengths, a_pad, s, a_pad, kv_pad, bs.block_q, bs.block_k, "q")
  intervals = mask_tiles.kv_length_intervals(lengths, a_pad, s, a_pad)

  seq = lambda x: pl.BlockSpec((None, x.shape[1], None, e), lambda i, bi, h: (bi, 0, h, 0))  # noqa: E731
  per_batch = lambda x: pl.BlockSpec((None, *x.shape[1:]), lambda i, bi, h: (bi,) + (0,) * (x.ndim - 1))  # noqa: E731
  kernel = functools.partial(_kernel, block_q=bs.block_q, gather_q=gather_q, block_k=bs.block_k, n_full=1,
                             n_part=1, qk_scale=e ** -0.5 * math.log2(math.e))
  triton = common.triton_backend()
  (out,) = common.pallas_call(
      kernel, out_shape=[jax.ShapeDtypeStruct(cached_out.shape, cached_out.dtype)], grid=(a_pad // bs.block_q, b, n),
      in_specs=[per_batch(table), per_batch(intervals), per_batch(idx), seq(q), seq(kp), seq(vp), seq(cached_out)],
      out_specs=[seq(cached_out)], aliases={6: 0}, interpret=interpret,
      compiler_params=triton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
      name="routed_attention")(table, intervals, idx, q, kp, vp, cached_out)
  return out
