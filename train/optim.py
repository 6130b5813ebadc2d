"""The optimizers of the trained trees, the update that a non-finite step skips, and the EMA."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from liveedit_jax.dit import Params
from train.configs import TrainConfig


def optimizer(config: TrainConfig, tree: str) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (the fake score at `critic_lr`)."""
  lr = config.critic_lr if tree == "fake_score" else config.lr
  return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                     optax.adamw(lr, b1=config.b1, b2=config.b2, eps=1e-8, weight_decay=config.weight_decay))


def guarded_update(config: TrainConfig, tree: str, params: Params, opt_state: Any, grads: Params,
                   ok: jax.Array) -> tuple[Params, Any]:
  """`tree`'s optimizer step, or the params and optimizer state unchanged where `ok` (bool []) is false."""
  updates, new_opt = optimizer(config, tree).update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
  return keep(new_params, params), keep(new_opt, opt_state)


def ema_update(config: TrainConfig, ema: Params, params: Params, step: jax.Array) -> Params:
  """Tracks the weights until `ema_start`, then decays (Self-Forcing starts the EMA from the weights then)."""
  d = jnp.where(step < config.ema_start, 0.0, config.ema_decay)
  return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)


def all_finite(*values: jax.Array) -> jax.Array:
  return functools.reduce(jnp.logical_and, [jnp.isfinite(v) for v in values])
