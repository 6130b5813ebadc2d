"""Fused q/k RMSNorm + RoPE (liveedit_kernels/rms_norm_rope.py, jax-triton) against the model's XLA math."""

import functools
import importlib.util
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Block, dit_forward, frame_rope, init_dit_params
from liveedit_jax.fused import rms_norm_rope_reference
from liveedit_jax.layers import rms_normalize
from liveedit_jax.rope import apply_rope
from liveedit_kernels import dispatch
from liveedit_kernels.common import with_reference_gradient
from liveedit_kernels.rms_norm_rope import rms_norm_rope
from tests.numerics import BF16_RTOL, FP32_RTOL, rel_err


def _inputs(seed, b, t, heads, head_dim, dtype=jnp.bfloat16, per_sample_rope=False):
  ks = jax.random.split(jax.random.key(seed), 3)
  d = heads * head_dim
  x = (2.0 * jax.random.normal(ks[0], (b, t, d), jnp.float32) + 0.5).astype(dtype)
  scale = 1 + 0.2 * jax.random.normal(ks[1], (d,), jnp.float32)
  angle = jax.random.uniform(ks[2], ((b,) if per_sample_rope else ()) + (t, head_dim // 2), jnp.float32, 0, 6.3)
  return x, scale, jnp.cos(angle), jnp.sin(angle)


@pytest.mark.skipif(importlib.util.find_spec("jax_triton") is not None, reason="jax_triton is installed")
def test_triton_without_jax_triton_names_the_fix():
  with pytest.raises(ImportError, match="jax-triton"):
    rms_norm_rope(*_inputs(0, 1, 4, 2, 8), num_heads=2, implementation="triton")


@pytest.mark.parametrize("change, match", [
    (lambda a: (a[0][0], *a[1:]), "x"),
    (lambda a: (a[0], a[1][:8], *a[2:]), "scale"),
    (lambda a: (*a[:2], a[2][:, :2], a[3][:, :2]), "cos and sin"),
    (lambda a: (a[0].astype(jnp.float32), *a[1:]), "bfloat16"),
])
def test_rejects_bad_input(change, match):
  with pytest.raises(ValueError, match=match):
    rms_norm_rope(*change(_inputs(0, 1, 4, 2, 8)), num_heads=2, implementation="triton")


def test_with_reference_gradient_routes_forward_to_the_kernel_and_gradient_to_the_reference():
  """The custom_vjp both jax-triton kernels use, with a stand-in kernel (zeros) so each route is visible on CPU."""
  seed = random.SystemRandom().randrange(2**31)
  args = _inputs(seed, 2, 6, 3, 8, dtype=jnp.float32)
  reference = functools.partial(rms_norm_rope_reference, num_heads=3, eps=1e-6)
  fn = with_reference_gradient(lambda *a: jnp.zeros_like(reference(*a)), reference)
  d_out = jax.random.normal(jax.random.key(seed + 1), (2, 6, 3, 8))
  out, vjp = jax.vjp(fn, *args)
  assert not np.any(np.asarray(out))
  for got, want in zip(vjp(d_out), jax.vjp(reference, *args)[1](d_out)):
    assert rel_err(got, want) <= FP32_RTOL, f"seed {seed}"


def test_reference_is_wan_math():
  """The reference against the math written out: RMSNorm · scale over the width, then each head's pairs rotated."""
  seed = random.SystemRandom().randrange(2**31)
  x, scale, cos, sin = _inputs(seed, 2, 6, 3, 8, dtype=jnp.float32, per_sample_rope=True)
  y = np.asarray(rms_normalize(x, 1e-6) * scale).reshape(2, 6, 3, 4, 2)
  c, s = np.asarray(cos)[:, :, None, :], np.asarray(sin)[:, :, None, :]
  want = np.stack([y[..., 0] * c - y[..., 1] * s, y[..., 0] * s + y[..., 1] * c], -1).reshape(2, 6, 3, 8)
  assert rel_err(rms_norm_rope(x, scale, cos, sin, num_heads=3), want) <= FP32_RTOL, f"seed {seed}"


def test_blocks_q_and_k_are_the_reference():
  """Block.self_attention_qkv's q and k equal RMSNorm, scale and RoPE of its projections (fp32 tiny model, with every
  parameter moved off its initial value so the norm scales count)."""
  cfg = DiTConfig.preset("tiny")
  block = Block(cfg)
  seed = random.SystemRandom().randrange(2**31)
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  f, h, w = 2, 2, 3
  u = jax.random.normal(k1, (1, f, h * w, cfg.dim), jnp.float32)
  params = block.init(k2, u, u.reshape(1, -1, cfg.dim), method=lambda m, u, c: m.self_attn(c, c))
  leaves, tree = jax.tree.flatten(params)
  noise = jax.random.split(k3, len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(n, x.shape) for x, n in zip(leaves, noise)])
  cos, sin = frame_rope(cfg, jnp.arange(f, dtype=jnp.int32) + 5, h, w)
  q, k, _ = block.apply(params, u, cos, sin, method=Block.self_attention_qkv)
  attn = params["params"]["self_attn"]
  tokens = u.reshape(1, -1, cfg.dim)
  for got, name in ((q, "q"), (k, "k")):
    projected = tokens @ attn[name]["kernel"] + attn[name]["bias"]
    normed = rms_normalize(projected, cfg.eps) * attn[f"norm_{name}"]["scale"]
    want = apply_rope(normed.reshape(*got.shape), cos, sin)
    assert rel_err(got, want) <= FP32_RTOL, f"{name}, seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("b, t, heads, head_dim, per_sample_rope", [
    (1, 21 * 1560, 12, 128, False),  # a full 81-frame 480×832 clip of the 1.3B model
    (2, 37, 3, 32, True),             # ragged tokens, heads not a power of two, per-sample positions
    (1, 9, 2, 24, False),             # pairs not a power of two
])
def test_gpu_rms_norm_rope_triton(b, t, heads, head_dim, per_sample_rope):
  pytest.importorskip("jax_triton")
  seed = random.SystemRandom().randrange(2**31)
  args = _inputs(seed, b, t, heads, head_dim, per_sample_rope=per_sample_rope)
  got = np.asarray(jax.jit(lambda *a: rms_norm_rope(*a, num_heads=heads, implementation="triton"))(*args), np.float32)
  want = np.asarray(rms_norm_rope_reference(*args, num_heads=heads, eps=1e-6), np.float32)
  assert got.shape == (b, t, heads, head_dim)
  assert rel_err(got, want) <= BF16_RTOL, f"seed {seed}"
  np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_rms_norm_rope_gradients():
  """The custom_vjp's gradients (XLA's gradient of the reference) for every input."""
  pytest.importorskip("jax_triton")
  seed = random.SystemRandom().randrange(2**31)
  args = _inputs(seed, 2, 100, 12, 128)
  d_out = jax.random.normal(jax.random.key(seed + 1), (2, 100, 12, 128), jnp.bfloat16)

  def grads(impl):
    f = lambda *a: rms_norm_rope(*a, num_heads=12, implementation=impl)  # noqa: E731
    return jax.jit(lambda *a: jax.vjp(f, *a)[1](d_out))(*args)

  for g, w in zip(grads("triton"), grads("xla")):
    assert rel_err(np.asarray(g, np.float32), np.asarray(w, np.float32)) <= BF16_RTOL, f"seed {seed}"


@pytest.mark.gpu
def test_gpu_dit_pallas_runs_the_triton_kernels(tmp_path):
  """A bf16 chunk-causal DiT forward with kernels="pallas" and a table that ranks both jax-triton kernels first:
  the compiled program calls them, and the output matches cuDNN's within bf16 tolerance."""
  pytest.importorskip("jax_triton")
  seed = random.SystemRandom().randrange(2**31)
  rng = np.random.default_rng(seed)
  table = tmp_path / "table.json"
  table.write_text(json.dumps({"cases": {case: {"ms": {"triton": 1.0, "xla": 2.0}}
                                         for case in ("adaln", "rms_norm_rope")}}))
  cfg = DiTConfig.preset("tiny", compute_dtype="bfloat16")
  params = init_dit_params(cfg, jax.random.key(seed))
  x = jnp.asarray(rng.standard_normal((1, 4, 8, 8, cfg.in_channels)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((1, cfg.text_len, cfg.text_dim)), jnp.float32)
  t = jnp.asarray([500.0])
  run = jax.jit(lambda c, *a: dit_forward(c, *a, chunk_frames=2), static_argnums=0)
  pallas = DiTConfig.preset("tiny", compute_dtype="bfloat16", kernels="pallas")
  dispatch.enable(table)
  try:
    hlo = run.lower(pallas, params, x, t, ctx).compile().as_text()
    got = run(pallas, params, x, t, ctx)
  finally:
    dispatch.enable()
  assert hlo.count("triton_kernel_call") >= 4  # two adaLN inputs, q and k (once in the layer scan's body, or more)
  want = run(DiTConfig.preset("tiny", compute_dtype="bfloat16", kernels="cudnn"), params, x, t, ctx)
  assert rel_err(np.asarray(got, np.float32), np.asarray(want, np.float32)) <= BF16_RTOL, f"seed {seed}"
