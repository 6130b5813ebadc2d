"""The Flax DiT against diffusers' WanTransformer3DModel (CPU, fp32, fresh random weights and inputs each run).

Reference: diffusers as installed from PyPI (`pip install -e '.[dev]'`), classic Wan layout
(top-level `scale_shift_table`, `proj_out`), checked at v0.35 and 0.42.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert.wan_dit import convert_dit
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward
from tests.numerics import BF16_RTOL, FP32_RTOL, rel_err
from tests.torch_reference import diffusers_dit_forward, make_diffusers_dit


def _seed() -> int:
  return random.SystemRandom().randrange(2**31)


def _inputs(cfg: DiTConfig, rng: np.random.Generator, b: int, f: int, h: int, w: int, text_rows: int):
  x = rng.standard_normal((b, f, h, w, cfg.in_channels)).astype(np.float32)
  context = np.zeros((b, cfg.text_len, cfg.text_dim), np.float32)
  context[:, :text_rows] = rng.standard_normal((b, text_rows, cfg.text_dim))  # zero rows past the prompt
  t = rng.uniform(0, 1000, size=(b,)).astype(np.float32)
  return x, t, context


def _converted(tmp_path, model, cfg):
  model.save_pretrained(tmp_path / "ref")
  got_cfg, params = convert_dit(tmp_path / "ref", preset=cfg.name if cfg.name == "tiny" else None)
  assert got_cfg.replace(name=cfg.name) == cfg
  return jax.tree.map(jnp.asarray, params)


def _reference_and_ours(tmp_path, cfg, b, f, h, w, text_rows, per_frame_t=False):
  """A fresh random diffusers model, converted: (seed, inputs (x, t, ctx), params, our output, its output)."""
  seed = _seed()
  model = make_diffusers_dit(cfg, seed)
  params = _converted(tmp_path, model, cfg)
  rng = np.random.default_rng(seed)
  x, t, ctx = _inputs(cfg, rng, b=b, f=f, h=h, w=w, text_rows=text_rows)
  if per_frame_t:
    t = rng.uniform(0, 1000, size=(b, f)).astype(np.float32)
  return seed, (x, t, ctx), params, dit_forward(cfg, params, x, t, ctx), diffusers_dit_forward(model, x, t, ctx)


def test_tiny_matches_diffusers(tmp_path):
  seed, _, _, ours, ref = _reference_and_ours(tmp_path, DiTConfig.preset("tiny"), b=2, f=3, h=6, w=10, text_rows=5)
  err = rel_err(ours, ref)
  assert err <= FP32_RTOL, f"seed {seed}: relative error {err:.2e}"


def test_per_frame_timesteps_match_diffusers_per_token(tmp_path):
  """diffusers accepts per-token timesteps [B, tokens]; per-frame t is that with each frame's tokens sharing t."""
  cfg = DiTConfig.preset("tiny")
  seed, (x, t, ctx), params, ours, ref = _reference_and_ours(tmp_path, cfg, b=2, f=4, h=4, w=6, text_rows=7,
                                                             per_frame_t=True)
  err = rel_err(ours, ref)
  assert err <= FP32_RTOL, f"seed {seed}: relative error {err:.2e}"
  # and per-frame t really changes the output per frame (frame 0's t everywhere would differ)
  uniform = dit_forward(cfg, params, x, t[:, 0], ctx)
  assert rel_err(uniform[:, 1:], ours[:, 1:]) > 1e-3


@pytest.mark.slow
def test_real_widths_two_layers_match_diffusers(tmp_path):
  """The 1.3B widths (dim 1536, 12 heads × 128, ffn 8960, text 512 × 4096) with 2 layers on a small latent."""
  cfg = DiTConfig.preset("wan2.1-t2v-1.3b").replace(num_layers=2, name="converted")
  seed, _, _, ours, ref = _reference_and_ours(tmp_path, cfg, b=1, f=2, h=4, w=6, text_rows=11)
  err = rel_err(ours, ref)
  assert err <= FP32_RTOL, f"seed {seed}: relative error {err:.2e}"


def test_bf16_compute_close_to_fp32():
  cfg = DiTConfig.preset("tiny")
  seed = _seed()
  from liveedit_jax.dit import init_dit_params  # noqa: PLC0415

  params = init_dit_params(cfg, jax.random.key(seed))
  # Wan zero-initialises the head; give it weights so the comparison sees the whole network.
  params["head"]["proj"]["kernel"] = jax.random.normal(jax.random.key(seed + 1), params["head"]["proj"]["kernel"].shape) * 0.1
  x, t, ctx = _inputs(cfg, np.random.default_rng(seed), b=2, f=3, h=6, w=6, text_rows=4)
  fp32 = dit_forward(cfg, params, x, t, ctx)
  bf16 = dit_forward(cfg.replace(compute_dtype="bfloat16"), params, x, t, ctx)
  assert bf16.dtype == jnp.float32
  err = rel_err(bf16, fp32)
  assert err <= BF16_RTOL, f"seed {seed}: bf16 vs fp32 relative error {err:.2e}"
