"""DiT mechanics not covered by the parity tests: remat, input validation, teacher-forcing layout."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward, init_dit_params
from tests.numerics import FP32_RTOL, rel_err

CFG = DiTConfig.preset("tiny")


def _batch(seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((1, 6, 4, 4, 32)), jnp.float32)
  t = jnp.asarray(rng.uniform(0, 1000, (1,)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((1, CFG.text_len, CFG.text_dim)), jnp.float32)
  return x, t, ctx


def test_remat_gives_the_same_gradients():
  seed = random.SystemRandom().randrange(2**31)
  params = init_dit_params(CFG, jax.random.key(seed))
  x, t, ctx = _batch(seed)

  def loss(p, cfg):
    return jnp.mean(jnp.square(dit_forward(cfg, p, x, t, ctx, chunk_frames=3, clean_x=x)))

  g_plain = jax.jit(jax.grad(loss), static_argnums=1)(params, CFG)
  g_remat = jax.jit(jax.grad(loss), static_argnums=1)(params, CFG.replace(remat=True))
  flat_plain, flat_remat = jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)
  assert rel_err(np.concatenate([a.ravel() for a in flat_remat]),
                 np.concatenate([a.ravel() for a in flat_plain])) <= FP32_RTOL


def test_bad_inputs_are_explained():
  params = jax.eval_shape(lambda: init_dit_params(CFG, jax.random.key(0)))
  x, t, ctx = _batch(0)
  with pytest.raises(ValueError, match="x has 16 channels; config 'tiny' expects in_channels=32"):
    dit_forward(CFG, params, x[..., :16], t, ctx)
  with pytest.raises(ValueError, match=r"must be \[B\]=1 or \[B, F\]=\[1, 6\], got shape \(2,\)"):
    dit_forward(CFG, params, x, jnp.zeros(2), ctx)
  with pytest.raises(ValueError, match="6 latent frames are not a whole number of chunks of 4"):
    dit_forward(CFG, params, x, t, ctx, chunk_frames=4)
  with pytest.raises(ValueError, match=r"context must be \[B=1, L, 40\]"):
    dit_forward(CFG, params, x, t, ctx[..., :8])
  with pytest.raises(ValueError, match="clean_x .teacher forcing. needs chunk_frames"):
    dit_forward(CFG, params, x, t, ctx, clean_x=x)


def test_config_presets_and_validation():
  for name in ("wan2.1-t2v-1.3b", "liveedit-1.3b", "wan2.1-t2v-14b", "tiny"):
    cfg = DiTConfig.preset(name)
    assert DiTConfig.from_json(cfg.to_json()) == cfg
  assert DiTConfig.preset("liveedit-1.3b").in_channels == 32
  with pytest.raises(ValueError, match=r"unknown DiT preset 'big'; valid presets: \["):
    DiTConfig.preset("big")
  with pytest.raises(ValueError, match="in_channels must be"):
    DiTConfig.preset("tiny", in_channels=20)
  with pytest.raises(ValueError, match="kernels must be one of"):
    DiTConfig.preset("tiny", kernels="flash")
