"""Block-sparse flash attention for Hopper (sm90) in Pallas Mosaic GPU: wgmma, TMA, warp specialisation.

    out = hopper_attention(q, k, v, AttentionMask("chunk_causal", 4680))      # q, k, v [B, T, N, E], bf16

The masks of `liveedit_kernels.flash_attention` (full, chunk_causal, teacher_forcing) with the FlashAttention-3 layout:

  forward   CTA = 2 compute warpgroups × 64 query rows + 1 TMA warpgroup that streams [128, E] K and V tiles
            through a ring of SMEM stages. QKᵀ and PV on wgmma, exp2 online softmax in fp32 (the scale folded
            into one FFMA per logit, 3-5 % faster than scaling the logits first). Each compute warpgroup issues
            QKᵀ of tile s and PV of tile s - 1 together and runs the softmax of s while its PV is on the tensor
            cores (FlashAttention-3's intra-warpgroup overlap: 2.6 % fewer cycles for teacher forcing); the two
            warpgroups take turns issuing (ping-pong), so one's softmax also overlaps the other's matmuls.
            Writes out and the log2-domain LSE (m + log2 l of the scaled logits).
  backward  one kernel of 2 warpgroups, each owning 64 of the CTA's 128 keys and its dK, dV [64, E] as fp32 wgmma
            accumulators for the whole loop. No TMA warpgroup: with two warpgroups each gets 255 registers and
            ptxas spills 16 bytes per thread (with a third, at 240, it spilled 200-300 bytes and ran 10-25 %
            slower).
            Warpgroup 0 issues the TMA loads of Q, dO [64, E], LSE and delta [64] a step ahead into a ring. Per
            query tile each warpgroup runs Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, dV += Pᵀ dO, publishes dSᵀ to SMEM, meets the
            other warpgroup there, then issues dQ[:, its 64 columns] = dS K over all 128 keys and dK += dSᵀ Q, and
            adds its dQ slice to an fp32 dQ in HBM with a TMA reduce-add. dK += dSᵀ Q stays on the tensor cores
            into the next step (3 % fewer cycles for chunk-causal). Five matmuls per tile pair, where a dQ
            pass plus a dK/dV pass needs seven (the FlashAttention-3 backward).

Both passes visit only the tiles the mask does not hide entirely: a CTA sees at most two runs of tiles of the
other axis, computed in-kernel from the static mask (`_Geometry`); tiles cut by a mask edge (a chunk edge, the
end of the sequence) are masked elementwise, all others run unmasked.

Lengths need not be multiples of the tiles, and nothing is padded to the tiles in HBM: the kernels see q, k, v,
out and the gradients as a view [B·halves, L, N, E] (a reshape; two halves for teacher forcing, so that no tile
holds clean and noisy rows; L rounded up to 8 rows, the one copy, only where T / halves is not a multiple of 8)
and address tiles in padded coordinates, each half rounded up to the tiles. The part of a tile past L is a TMA
copy out of bounds: it loads as zeros and is not stored. Padding keys are seen by no row; padding rows see at
least one real key (so their LSE stays finite), have zero dO, and are not stored. Only the per-row statistics,
LSE and delta [B, N, padded], live in padded coordinates. Head dim: a multiple of 64, at most 128 (the backward
keeps dK, dV and a dQ tile in registers). bf16 or fp16 inputs, fp32 statistics and accumulation.

GPU only (sm90). JAX 0.10.2's Mosaic GPU interpreter cannot run these kernels on CPU: it has no transposed
wgmma operands (TransposeTransform), no `pl.run_state` and no TMA reduction. On CPU, tests/test_kernels_hopper.py
checks `_Geometry` (the tile runs and masks both kernels follow) against the dense mask; on an H100/H200 it checks
the kernels against XLA and cuDNN.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from liveedit_jax.attention import FULL, AttentionMask
from liveedit_kernels import common

_LOG2E = math.log2(math.e)
_MASKED = -1e30  # a masked logit: finite, so a row whose first visited tile is all masked gets no NaN
_COMPUTE_WGS = 2
_BWD_KEYS = 64  # keys per compute warpgroup in the backward (a wgmma M tile); a backward CTA holds 2 × 64
_DQ_COLS = 64  # dQ columns per backward warpgroup (a 128-byte swizzled column tile of K)


@dataclasses.dataclass(frozen=True)
class HopperBlocks:
  """Tiles of the two kernels. block_q: query rows per compute warpgroup (the forward CTA holds 2); block_kv: keys
  per forward K/V tile; bwd_block_q: query rows per backward step (a backward CTA holds 2 × 64 keys); stages,
  bwd_stages: depth of the SMEM rings of K/V tiles (forward) and of Q/dO tiles (backward; 3 measured slower)."""

  block_q: int = 64
  block_kv: int = 128
  stages: int = 2
  bwd_block_q: int = 64
  bwd_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_kv", "bwd_block_q"):
      if getattr(self, name) % 64:
        raise ValueError(f"HopperBlocks.{name} must be a multiple of 64 (a wgmma tile), got {getattr(self, name)}")
    if self.stages < 2 or self.bwd_stages < 2:
      raise ValueError(f"HopperBlocks stages must be ≥ 2, got {self.stages}, {self.bwd_stages}")

  @property
  def multiple(self) -> int:
    """Padded lengths (per half for teacher forcing) are multiples of this."""
    return math.lcm(_COMPUTE_WGS * self.block_q, self.block_kv, _COMPUTE_WGS * _BWD_KEYS, self.bwd_block_q)


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """A static mask's `AttentionMask.row_intervals`, moved to the padded coordinates the kernels see and computed
  in-kernel (traced, not a table). Every method takes int32 scalars or arrays.

  Row r sees keys [0, hi0) ∪ [lo1, hi1) (`row_bounds`). chunk_causal: hi0 = min((c+1)·C, kv_len), c = r // C.
  teacher_forcing, [clean ‖ pad ‖ noisy ‖ pad], each half `half_pad` long: clean chunk c sees [0, min((c+1)·C, L));
  noisy chunk c sees [0, min(c·C, L)) and its own chunk [P + c·C, P + min((c+1)·C, L)), L = half length, P =
  half_pad. Rows of one chunk share their bounds, so a tile of ≤ C rows holds at most two kinds of row, split at
  `next_boundary`.
  """

  kind: str
  chunk: int
  q_len: int  # real rows (per half for teacher forcing)
  kv_len: int  # real keys (per half for teacher forcing)
  q_pad: int  # rows the kernels see (both halves for teacher forcing)
  kv_pad: int
  half_pad: int = 0

  def row_bounds(self, r):
    """(hi0, lo1, hi1) of rows r."""
    zero = jnp.zeros_like(r)
    if self.kind == "full":
      return zero + self.kv_len, zero, zero
    c_tok = self.chunk
    if self.kind == "chunk_causal":
      return jnp.minimum((r // c_tok + 1) * c_tok, self.kv_len), zero, zero
    p, n = self.half_pad, self.kv_len
    noisy = r >= p
    c = (r - jnp.where(noisy, p, 0)) // c_tok
    start, stop = jnp.minimum(c * c_tok, n), jnp.minimum((c + 1) * c_tok, n)
    return jnp.where(noisy, start, stop), jnp.where(noisy, p + start, 0), jnp.where(noisy, p + stop, 0)

  @property
  def halves(self) -> int:
    return 2 if self.kind == "teacher_forcing" else 1

  def locate(self, r):
    """Padded rows (or keys) r as (half, row within the [B·halves, L, ...] view) for the TMA copies."""
    if self.kind != "teacher_forcing":
      return 0, r
    half = (r >= self.half_pad).astype(jnp.int32)
    return half, r - half * self.half_pad

  def next_boundary(self, r):
    """The first row after r whose bounds may differ from r's."""
    if self.kind == "full":
      return jnp.full_like(r, 2 ** 30)
    if self.kind == "chunk_causal":
      return (r // self.chunk + 1) * self.chunk
    base = jnp.where(r >= self.half_pad, self.half_pad, 0)
    return base + ((r - base) // self.chunk + 1) * self.chunk

  def visible(self, rows, keys, first_row):
    """Bool array: rows see keys (int arrays of one shape) in a tile of ≤ C rows starting at `first_row`."""
    late = (rows >= self.next_boundary(first_row)).astype(jnp.int32)  # 0/1, arithmetic rather than a select
    early_bounds, late_bounds = self.row_bounds(first_row), self.row_bounds(self.next_boundary(first_row))
    hi0, lo1, hi1 = (a + late * (z - a) for a, z in zip(early_bounds, late_bounds))
    return (keys < hi0) | ((keys >= lo1) & (keys < hi1))

  def tile_is_full(self, r0, r1, k0, k1):
    """Whether every row in [r0, r1) sees every key in [k0, k1) (bounds are monotone within a half)."""
    first, last = self.row_bounds(r0), self.row_bounds(r1 - 1)
    return (k1 <= first[0]) | ((k0 >= last[1]) & (k1 <= first[2]))

  def kv_runs(self, r0, r1, block):
    """Key tiles seen by rows [r0, r1) as two runs: tiles [0, n0) and [a1, a1 + n1)."""
    first, last = self.row_bounds(r0), self.row_bounds(r1 - 1)
    n0 = pl.cdiv(last[0], block)
    a1 = first[1] // block
    n1 = jnp.where(last[2] > first[1], pl.cdiv(last[2], block) - a1, 0)
    return n0, a1, n1

  def q_runs(self, k0, k1, block):
    """Query tiles that see some key in [k0, k1), as two runs: tiles [a0, a0 + n0) and [a1, a1 + n1)."""
    n_tiles = self.q_pad // block
    c_tok = self.chunk
    zero = jnp.zeros_like(k0)
    if self.kind == "full":
      return zero, jnp.where(k0 < self.kv_len, n_tiles, 0), zero, zero
    if self.kind == "chunk_causal":
      a0 = (k0 // c_tok) * c_tok // block
      return a0, jnp.where(k0 < self.kv_len, n_tiles - a0, 0), zero, zero
    p, n, half_tiles = self.half_pad, self.kv_len, self.half_pad // block
    # clean keys: clean rows from the key's chunk on; noisy rows of later chunks
    clean_a0 = (k0 // c_tok) * c_tok // block
    clean_a1 = jnp.minimum(p + (k0 // c_tok + 1) * c_tok, 2 * p) // block
    # noisy keys: noisy rows of the chunks the keys belong to
    j0, j1 = k0 - p, jnp.minimum(k1 - p, n)
    noisy_a0 = (p + (j0 // c_tok) * c_tok) // block
    noisy_end = pl.cdiv(p + jnp.minimum(((j1 - 1) // c_tok + 1) * c_tok, p), block)
    is_clean = k0 < p
    valid = jnp.where(is_clean, k0 < n, j0 < n)
    a0 = jnp.where(is_clean, clean_a0, noisy_a0)
    n0 = jnp.where(valid, jnp.where(is_clean, half_tiles - clean_a0, noisy_end - noisy_a0), 0)
    n1 = jnp.where(valid & is_clean, 2 * half_tiles - clean_a1, 0)
    return a0, n0, clean_a1, n1


def geometry(mask: AttentionMask, q_len: int, kv_len: int, multiple: int) -> _Geometry:
  """The padded geometry of `mask` over q_len × kv_len (teacher forcing: q_len = kv_len = 2 × half)."""
  if mask.kind == "full":
    return _Geometry("full", 0, q_len, kv_len, common.round_up(q_len, multiple), common.round_up(kv_len, multiple))
  if q_len != kv_len:
    raise ValueError(f"mask {mask.kind!r} needs equal query and key lengths, got {q_len} and {kv_len}")
  if mask.kind == "chunk_causal":
    pad = common.round_up(q_len, multiple)
    return _Geometry("chunk_causal", mask.chunk_tokens, q_len, kv_len, pad, pad)
  if q_len % 2:
    raise ValueError(f"teacher forcing needs an even sequence [clean ‖ noisy], got length {q_len}")
  half = q_len // 2
  half_pad = common.round_up(half, multiple)
  return _Geometry("teacher_forcing", mask.chunk_tokens, half, half, 2 * half_pad, 2 * half_pad, half_pad)


_VIEW_ROWS = 8  # TMA copies of a tiled [8, 64] SMEM tile need the view's row count to be a multiple of 8


def _to_view(geo: _Geometry, x: jax.Array) -> jax.Array:
  """x [B, T, N, E] as the kernels' view [B·halves, L, N, E], L = T / halves rounded up to 8 (a reshape, and a
  zero-padding copy only where T / halves is not a multiple of 8)."""
  view = x.reshape(x.shape[0] * geo.halves, x.shape[1] // geo.halves, *x.shape[2:])
  return common.pad_axis(view, 1, common.round_up(view.shape[1], _VIEW_ROWS))


def _from_view(geo: _Geometry, x: jax.Array, shape) -> jax.Array:
  """The view [B·halves, L, N, E] back as [B, T, N, E] (`shape`)."""
  return x[:, :shape[1] // geo.halves].reshape(shape)


def _padded_rows(geo: _Geometry, x: jax.Array) -> jax.Array:
  """Per-row statistics x [B, N, T] in padded coordinates [B, N, q_pad] (each half padded on its own)."""
  halves = jnp.split(x, geo.halves, axis=2)
  return jnp.concatenate([common.pad_axis(h, 2, geo.q_pad // geo.halves) for h in halves], axis=2)


def _tile(geo: _Geometry, ref, b, r, size: int, *trailing):
  """The [size, ...] tile of the view ref [B·halves, L, N, ...] at padded rows r of batch entry b (part of it may
  lie past L: TMA loads those rows as zeros and does not store them)."""
  half, local = geo.locate(r)
  return ref.at[(b * geo.halves + half, pl.ds(local, size), *trailing)]


def _mma(acc: jax.Array, a, b) -> jax.Array:
  """acc + a @ b on the tensor cores (acc: fp32 in the wgmma register layout)."""
  def accumulate(ref):
    plgpu.wgmma(ref, a, b)
  return pl.run_state(accumulate)(plgpu.ACC.init(acc))


_LOAD_TAKES_INDEX = inspect.signature(plgpu.load).parameters["idx"].default is inspect.Parameter.empty


def _load(ref, layout) -> jax.Array:
  """A whole SMEM ref into registers of `layout` (JAX 0.10's plgpu.load needs an index, 0.11 deprecates it)."""
  return plgpu.load(ref, (), layout=layout) if _LOAD_TAKES_INDEX else plgpu.load(ref, layout=layout)


def _swizzled(shape, dtype) -> plgpu.SMEM:
  """An SMEM tile in the wgmma operand layout (8 × 64 tiles, 128-byte swizzle)."""
  return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128)))


@dataclasses.dataclass(frozen=True)
class _Static:
  geo: _Geometry
  blocks: HopperBlocks


def _forward_kernel(st: _Static, dtype, head_dim: int, n_q_ctas: int):
  geo, bs = st.geo, st.blocks
  bq, bkv, stages = bs.block_q, bs.block_kv, bs.stages
  scale = head_dim ** -0.5 * _LOG2E

  def body(q_ref, k_ref, v_ref, o_ref, lse_ref, qo_smem, k_smem, v_smem, lse_smem, q_bar, k_bar, v_bar, k_free,
           v_free, turn):
    b, h, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    cta_row = (n_q_ctas - 1 - lax.axis_index("q")) * (_COMPUTE_WGS * bq)  # heaviest tiles first
    n0, a1, n1 = geo.kv_runs(cta_row, cta_row + _COMPUTE_WGS * bq, bkv)
    n_steps = n0 + n1

    def kv_tile(s):
      return jnp.where(s < n0, s, a1 + s - n0)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(240, action="increase")
      row = cta_row + wg * bq
      q_smem = qo_smem.at[wg]
      plgpu.copy_gmem_to_smem(_tile(geo, q_ref, b, row, bq, h), q_smem, q_bar.at[wg])
      plgpu.barrier_wait(q_bar.at[wg])

      def take_turn(logits_ref, s, issue_pv=lambda: None):  # issue QKᵀ of tile s (and a PV) on the tensor cores
        plgpu.barrier_wait(turn.at[wg])
        slot = lax.rem(s, stages)
        plgpu.barrier_wait(k_bar.at[slot])
        plgpu.wgmma(logits_ref, q_smem, k_smem.at[slot].transpose((1, 0)))
        issue_pv()
        plgpu.barrier_arrive(turn.at[1 - wg])

      def softmax(s, logits, m, l):  # logits [bq, bkv] unscaled: the scale goes into exp2's FFMA
        plgpu.barrier_arrive(k_free.at[lax.rem(s, stages)])
        key0 = kv_tile(s) * bkv

        def mask_edge(x):  # iotas built here, not hoisted: held across the loop they would cost 64 registers
          rows = row + plgpu.broadcasted_iota(jnp.int32, x.shape, 0, layout=plgpu.Layout.WGMMA)
          keys = key0 + plgpu.broadcasted_iota(jnp.int32, x.shape, 1, layout=plgpu.Layout.WGMMA)
          return jnp.where(geo.visible(rows, keys, row), x, _MASKED)

        logits = lax.cond(geo.tile_is_full(row, row + bq, key0, key0 + bkv), lambda x: x, mask_edge, logits)
        m_new = jnp.maximum(m, logits.max(axis=1))  # m: the running maximum of the unscaled logits
        alpha = jnp.exp2((m - m_new) * scale)
        p = jnp.exp2(logits * scale - lax.broadcast_in_dim(m_new * scale, logits.shape, [0]))
        return p, m_new, l * alpha + p.sum(axis=1), alpha

      def first_step(logits_ref):
        take_turn(logits_ref, 0)
        return plgpu.wgmma_accumulator_load(logits_ref)

      def step(s, carry):  # QKᵀ of tile s and PV of tile s - 1 on the tensor cores while the softmax of s runs
        acc, m, l, p16 = carry
        prev = lax.rem(s - 1, stages)

        def overlapped(refs):
          acc_ref, p_ref, m_ref, l_ref, alpha_ref = refs

          def issue_pv():
            plgpu.barrier_wait(v_bar.at[prev])
            plgpu.wgmma(acc_ref, p16, v_smem.at[prev])

          def logits_of_s(logits_ref):
            take_turn(logits_ref, s, issue_pv)
            return plgpu.wgmma_accumulator_load(logits_ref, wait_n=1)  # PV of s - 1 still on the tensor cores

          logits = pl.run_scoped(logits_of_s, plgpu.ACC((bq, bkv), jnp.float32))
          p_ref[...], m_ref[...], l_ref[...], alpha_ref[...] = softmax(s, logits, m_ref[...], l_ref[...])

        acc, p, m, l, alpha = pl.run_state(overlapped)(  # p and alpha: outputs only, their initial values unused
            (plgpu.ACC.init(acc), jnp.zeros((bq, bkv), jnp.float32), m, l, m))
        plgpu.barrier_arrive(v_free.at[prev])
        return acc * lax.broadcast_in_dim(alpha, acc.shape, [0]), m, l, p.astype(dtype)

      # turn[w]: warpgroup w may issue its matmuls; each passes the turn on once they are issued. 0 goes first.
      pl.when(wg == 1)(lambda: plgpu.barrier_arrive(turn.at[0]))
      row_vector = plgpu.Layout.WGMMA.reduce(1)
      p, m, l, _ = softmax(0, pl.run_scoped(first_step, plgpu.ACC((bq, bkv), jnp.float32)),
                           plgpu.layout_cast(jnp.full((bq,), -jnp.inf, jnp.float32), row_vector),
                           plgpu.layout_cast(jnp.zeros((bq,), jnp.float32), row_vector))
      acc = plgpu.layout_cast(jnp.zeros((bq, head_dim), jnp.float32), plgpu.Layout.WGMMA)
      acc, m, l, p16 = lax.fori_loop(1, n_steps, step, (acc, m, l, p.astype(dtype)))
      last = lax.rem(n_steps - 1, stages)
      plgpu.barrier_wait(v_bar.at[last])
      acc = _mma(acc, p16, v_smem.at[last])
      plgpu.barrier_arrive(v_free.at[last])
      q_smem[...] = (acc / lax.broadcast_in_dim(l, acc.shape, [0])).astype(dtype)
      lse_smem.at[wg][...] = m * scale + jnp.log2(l)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_smem, _tile(geo, o_ref, b, row, bq, h))
      plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(row, bq)])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _COMPUTE_WGS)
    def _memory():
      plgpu.set_max_registers(24, action="decrease")

      def load(ref, smem, bar, s, slot):
        plgpu.copy_gmem_to_smem(_tile(geo, ref, b, kv_tile(s) * bkv, bkv, h), smem.at[slot], bar.at[slot])

      for s in range(stages):
        @pl.when(s < n_steps)
        def _():
          load(k_ref, k_smem, k_bar, s, s)
          load(v_ref, v_smem, v_bar, s, s)

      @pl.loop(stages, n_steps)
      def _(s):  # refill a slot's K once both compute warpgroups have its logits, its V once both ran its PV
        slot = lax.rem(s, stages)
        plgpu.barrier_wait(k_free.at[slot])
        load(k_ref, k_smem, k_bar, s, slot)
        plgpu.barrier_wait(v_free.at[slot])
        load(v_ref, v_smem, v_bar, s, slot)

  def entry(q_ref, k_ref, v_ref, o_ref, lse_ref):
    scratch = (_swizzled((_COMPUTE_WGS, bq, head_dim), dtype), _swizzled((stages, bkv, head_dim), dtype),
               _swizzled((stages, bkv, head_dim), dtype), plgpu.SMEM((_COMPUTE_WGS, bq), jnp.float32))
    barriers = (plgpu.Barrier(num_barriers=_COMPUTE_WGS), plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
                plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
                plgpu.Barrier(num_barriers=_COMPUTE_WGS))
    pl.run_scoped(lambda *refs: body(q_ref, k_ref, v_ref, o_ref, lse_ref, *refs), *scratch, *barriers,
                  collective_axes="wg")

  return entry


def _backward_kernel(st: _Static, dtype, head_dim: int):
  geo, bs = st.geo, st.blocks
  bq, stages, bkv = bs.bwd_block_q, bs.bwd_stages, _BWD_KEYS
  dq_groups = head_dim // _DQ_COLS  # warpgroups that compute a 64-column slice of dQ (both for E = 128)
  scale = head_dim ** -0.5 * _LOG2E

  def body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, k_smem, v_smem, q_smem,
           do_smem, lse_smem, delta_smem, ds_smem, dq_smem, kv_bar, tile_bar, ds_ready, done):
    b, h, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    cta_key = lax.axis_index("kv") * (_COMPUTE_WGS * bkv)
    a0, n0, a1, n1 = geo.q_runs(cta_key, cta_key + _COMPUTE_WGS * bkv, bq)
    n_steps = n0 + n1

    def q_tile(s):
      return jnp.where(s < n0, a0 + s, a1 + s - n0)

    def load(s, slot):  # issued by warpgroup 0; one barrier (4 arrivals) for the step's four copies
      row = q_tile(s) * bq
      rows = pl.ds(row, bq)
      plgpu.copy_gmem_to_smem(_tile(geo, q_ref, b, row, bq, h), q_smem.at[slot], tile_bar.at[slot])
      plgpu.copy_gmem_to_smem(_tile(geo, do_ref, b, row, bq, h), do_smem.at[slot], tile_bar.at[slot])
      plgpu.copy_gmem_to_smem(lse_ref.at[b, h, rows], lse_smem.at[slot], tile_bar.at[slot])
      plgpu.copy_gmem_to_smem(delta_ref.at[b, h, rows], delta_smem.at[slot], tile_bar.at[slot])

    @pl.when(wg == 0)
    def _prologue():
      for s in range(stages - 1):
        pl.when(s < n_steps)(functools.partial(load, s, s))

    key = cta_key + wg * bkv
    my_k, my_v = k_smem.at[wg], v_smem.at[wg]
    plgpu.copy_gmem_to_smem(_tile(geo, k_ref, b, key, bkv, h), my_k, kv_bar.at[wg])
    plgpu.barrier_wait(kv_bar.at[wg])
    plgpu.copy_gmem_to_smem(_tile(geo, v_ref, b, key, bkv, h), my_v, kv_bar.at[wg])
    plgpu.barrier_wait(kv_bar.at[wg])
    cols = pl.ds(jnp.minimum(wg, dq_groups - 1) * _DQ_COLS, _DQ_COLS)  # E = 64: warpgroup 1's dQ is dropped

    def step(s, accumulators):  # dK, dV stay wgmma accumulators for the whole loop (no per-step copies)
      dk_acc, dv_acc = accumulators
      slot = lax.rem(s, stages)
      row = q_tile(s) * bq
      plgpu.barrier_wait(tile_bar.at[slot])

      def mask_edge(x):  # [keys, rows]; iotas built here, not hoisted out of the loop (registers)
        keys = key + plgpu.broadcasted_iota(jnp.int32, x.shape, 0, layout=plgpu.Layout.WGMMA)
        rows = row + plgpu.broadcasted_iota(jnp.int32, x.shape, 1, layout=plgpu.Layout.WGMMA)
        return jnp.where(geo.visible(rows, keys, row), x, 0.0)

      def scores(refs):  # Pᵀ and dSᵀ [keys, rows] of this step, in the compute dtype
        st_ref, dpt_ref = refs
        plgpu.wgmma(st_ref, my_k, q_smem.at[slot].transpose((1, 0)))
        plgpu.wgmma(dpt_ref, my_v, do_smem.at[slot].transpose((1, 0)))
        s_t = plgpu.wgmma_accumulator_load(st_ref, wait_n=1)  # dPᵀ still on the tensor cores
        lse = _load(lse_smem.at[slot], plgpu.Layout.WGMMA.reduce(0))
        p_t = jnp.exp2(s_t * scale - lax.broadcast_in_dim(lse, s_t.shape, [1]))
        p_t = lax.cond(geo.tile_is_full(row, row + bq, key, key + bkv), lambda x: x, mask_edge, p_t)
        dp_t = plgpu.wgmma_accumulator_load(dpt_ref, wait_n=0)
        delta = _load(delta_smem.at[slot], plgpu.Layout.WGMMA.reduce(0))
        ds_t = p_t * (dp_t - lax.broadcast_in_dim(delta, dp_t.shape, [1]))
        return p_t.astype(dtype), ds_t.astype(dtype)

      p16, ds16 = pl.run_scoped(scores, (plgpu.ACC((bkv, bq), jnp.float32),) * 2)
      plgpu.wgmma(dv_acc, p16, do_smem.at[slot])
      ds_slot = lax.rem(s, 2)
      ds_smem.at[ds_slot, wg][...] = ds16
      plgpu.commit_smem()
      plgpu.barrier_arrive(ds_ready.at[ds_slot])
      plgpu.barrier_wait(ds_ready.at[ds_slot])
      # both warpgroups are past step s - 1, so its ring slot may be refilled, here, a step ahead of its use
      refill = s + stages - 1
      pl.when((wg == 0) & (refill < n_steps))(lambda: load(refill, lax.rem(refill, stages)))

      def dq_and_dk(ref):  # dQ[rows, cols] = dS [rows, 128 keys] K[128 keys, cols], issued before dK += dSᵀ Q
        for half in range(_COMPUTE_WGS):
          plgpu.wgmma(ref, ds_smem.at[ds_slot, half].transpose((1, 0)), k_smem.at[half, :, cols])
        plgpu.wgmma(dk_acc, ds16, q_smem.at[slot])
        return plgpu.wgmma_accumulator_load(ref, wait_n=1)  # dV and dQ done, dK still running

      dq = pl.run_scoped(dq_and_dk, plgpu.ACC((bq, _DQ_COLS), jnp.float32))

      @pl.when(wg < dq_groups)
      def _add_dq():
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous reduce-add has read dq_smem
        dq_smem.at[wg][...] = dq
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(dq_smem.at[wg], _tile(geo, dq_ref, b, row, bq, h, cols), reduction_op="add")

      return dk_acc, dv_acc  # dK += dSᵀ Q still on the tensor cores: the next step's wait for Sᵀ covers it

    def accumulate(dk_acc, dv_acc):
      dk_acc, dv_acc = lax.fori_loop(0, n_steps, step, (dk_acc, dv_acc))
      return dk_acc[...], dv_acc[...]

    dk, dv = pl.run_scoped(accumulate, *(plgpu.ACC((bkv, head_dim), jnp.float32),) * 2)
    plgpu.barrier_arrive(done)  # both warpgroups are past their last dQ: K may be overwritten
    plgpu.barrier_wait(done)
    my_k[...] = (dk * (head_dim ** -0.5)).astype(dtype)
    my_v[...] = dv.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(my_k, _tile(geo, dk_ref, b, key, bkv, h))
    plgpu.copy_smem_to_gmem(my_v, _tile(geo, dv_ref, b, key, bkv, h))
    plgpu.wait_smem_to_gmem(0)

  def entry(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref):
    scratch = (_swizzled((_COMPUTE_WGS, bkv, head_dim), dtype), _swizzled((_COMPUTE_WGS, bkv, head_dim), dtype),
               _swizzled((stages, bq, head_dim), dtype), _swizzled((stages, bq, head_dim), dtype),
               plgpu.SMEM((stages, bq), jnp.float32), plgpu.SMEM((stages, bq), jnp.float32),
               _swizzled((2, _COMPUTE_WGS, bkv, bq), dtype),
               plgpu.SMEM((dq_groups, bq, _DQ_COLS), jnp.float32))
    barriers = (plgpu.Barrier(num_barriers=_COMPUTE_WGS), plgpu.Barrier(num_arrivals=4, num_barriers=stages),
                plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=2), plgpu.Barrier(num_arrivals=_COMPUTE_WGS))
    pl.run_scoped(lambda *refs: body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *refs),
                  *scratch, *barriers, collective_axes="wg")

  return entry


def _kernel_call(entry, out_type, grid, grid_names, name, warpgroups: int):
  """The kernel as f(*operands) -> outputs; under `common.poisoned_outputs()` the outputs start as NaN."""
  # pl.kernel rather than plgpu.kernel: the latter's custom_vmap wrapper rejects a kernel that writes a Ref operand
  mesh = plgpu.Mesh(grid=grid, grid_names=grid_names, num_threads=warpgroups, thread_name="wg", kernel_name=name)
  kernel = functools.partial(pl.kernel, entry, mesh=mesh, compiler_params=plgpu.CompilerParams(approx_math=True))
  if not common.outputs_poisoned():
    return kernel(out_type=out_type)

  def call(*operands):  # outputs as NaN-filled refs after the operands: the kernel sees the same argument list
    outs = [jax.new_ref(jnp.full(o.shape, jnp.nan, o.dtype)) for o in out_type]
    kernel(out_type=())(*operands, *outs)
    return tuple(o[...] for o in outs)

  return call


def _forward(q, k, v, st: _Static):
  """q, k, v [B, T, N, E] → out [B, T, N, E] and the log2-domain LSE [B, N, q_pad] (padded coordinates)."""
  geo = st.geo
  b, _, n, e = q.shape
  n_q_ctas = geo.q_pad // (_COMPUTE_WGS * st.blocks.block_q)
  q4, k4, v4 = (_to_view(geo, x) for x in (q, k, v))
  out_type = (jax.ShapeDtypeStruct(q4.shape, q.dtype), jax.ShapeDtypeStruct((b, n, geo.q_pad), jnp.float32))
  call = _kernel_call(_forward_kernel(st, q.dtype, e, n_q_ctas), out_type, (n, n_q_ctas, b),
                      ("heads", "q", "batch"), "hopper_attention_fwd", _COMPUTE_WGS + 1)
  out, lse = call(q4, k4, v4)
  return _from_view(geo, out, q.shape), lse


def _backward(q, k, v, out, lse, d_out, st: _Static):
  """dq, dk, dv [B, T, N, E] from the forward's out and LSE and the cotangent d_out [B, T, N, E]."""
  geo = st.geo
  b, _, n, e = q.shape
  delta = _padded_rows(geo, jnp.einsum("btne,btne->bnt", out.astype(jnp.float32), d_out.astype(jnp.float32)))
  q4, k4, v4, do4 = (_to_view(geo, x) for x in (q, k, v, d_out))
  dq_acc = jax.new_ref(jnp.zeros(q4.shape, jnp.float32))
  out_type = (jax.ShapeDtypeStruct(k4.shape, k.dtype),) * 2
  n_kv_ctas = geo.kv_pad // (_COMPUTE_WGS * _BWD_KEYS)
  call = _kernel_call(_backward_kernel(st, q.dtype, e), out_type, (n, n_kv_ctas, b), ("heads", "kv", "batch"),
                      "hopper_attention_bwd", _COMPUTE_WGS)
  dk, dv = call(q4, k4, v4, do4, lse, delta, dq_acc)
  dq = (dq_acc[...] * e ** -0.5).astype(q.dtype)
  return _from_view(geo, dq, q.shape), _from_view(geo, dk, k.shape), _from_view(geo, dv, v.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, st: _Static):
  return _forward(q, k, v, st)[0]


def _attention_fwd(q, k, v, st: _Static):
  out, lse = _forward(q, k, v, st)
  return out, (q, k, v, out, lse)


def _attention_bwd(st: _Static, res, d_out):
  q, k, v, out, lse = res
  return _backward(q, k, v, out, lse, d_out.astype(q.dtype), st)


_attention.defvjp(_attention_fwd, _attention_bwd)


def hopper_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask = FULL, *,
                     blocks: HopperBlocks | None = None) -> jax.Array:
  """Attention of q [B, T, N, E] over k, v [B, S, N, E] under `mask`, scale 1/√E; [B, T, N, E] in q's dtype.

  Differentiable in q, k, v. Runs on an sm90 GPU (H100/H200).
  """
  blocks = blocks or HopperBlocks()
  if jax.default_backend() != "gpu":
    raise RuntimeError(f"hopper_attention runs on an sm90 GPU (H100/H200), not on {jax.default_backend()!r}; "
                       "use liveedit_kernels.flash_attention (interpret mode) or liveedit_jax.attention "
                       "with impl='xla'")
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"hopper_attention expects q [B, T, N, E] and k, v [B, S, N, E]; got q {q.shape}, "
                     f"k {k.shape}, v {v.shape}")
  if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
    raise ValueError(f"hopper_attention needs bf16 or fp16 q, k, v of one dtype, got {q.dtype}, {k.dtype}, "
                     f"{v.dtype}")
  e = q.shape[-1]
  if e % 64 or e > 128:
    raise ValueError(f"hopper_attention needs a head dim of 64 or 128, got {e}")
  if mask.kind != "full" and mask.chunk_tokens < max(blocks.block_q, blocks.bwd_block_q, 64):
    raise ValueError(f"hopper_attention needs chunks of ≥ {max(blocks.block_q, blocks.bwd_block_q, 64)} tokens "
                     f"(a tile holds at most one chunk edge), got {mask.chunk_tokens}")
  geo = geometry(mask, q.shape[1], k.shape[1], blocks.multiple)
  return _attention(q, k, v, _Static(geo, blocks))
