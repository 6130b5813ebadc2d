"""Hand-written GPU kernels behind liveedit_jax's dispatch; each ships with its jnp reference and tests.

  hopper_attention  block-sparse flash attention for H100/H200 (Pallas Mosaic GPU: wgmma, TMA, warp-specialised;
                    one-kernel backward) for the full, chunk-causal and teacher-forcing masks
  flash_attention   block-sparse flash attention (forward + custom_vjp backward) for the chunk-causal and
                    teacher-forcing masks and fixed-size KV caches (Pallas, Triton lowering; interpret-mode tests)
  routed_attention  mask-cache attention: gather active queries, attend, scatter into the cached output, one kernel
  adaln             LayerNorm + adaLN modulation fused (jax-triton, optional GPU extra)
  rms_norm_rope      q/k RMSNorm + 3-D RoPE fused, both projections in one pass (jax-triton, optional GPU extra)
  mask_tiles        the static masks as per-row key intervals and per-tile loop plans
  dispatch          attention impl "pallas": the fastest measured path per case (`enable(table)` ranks by another table)
  bench             `python -m liveedit_kernels.bench`: the measurements that table is made of

liveedit_jax imports none of this statically: `DiTConfig(kernels="pallas")` imports `dispatch` on its first call,
which registers the kernels with liveedit_jax.attention and liveedit_jax.fused.
"""
