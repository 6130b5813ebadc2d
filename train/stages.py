"""The three training stages as strategies: what each trains, reads frozen and loads, its update and its FLOPs.

    stage = STAGES[config.stage]
    stage.trained, stage.frozen_loads, stage.ema_of   # ("model",), {}, "model" in stages 1-2
    params, opt_state, ema, ok, metrics = stage.update(config, state, batch, frozen, key)

The step (`train.step`), the loop (`train.loop`), the FLOP count and the train benchmark read the stage from here
instead of branching on its number. A stage's trees are loaded from, or randomly drawn for, the `TrainConfig`
fields that name converted DiTs: "init" (the model; stage 3's generator) and "score_init" (stage 3's real score,
which also starts the fake score). A random init draws one set of weights per field, so the fake score starts
equal to the real score either way.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from liveedit_jax.dit import Params, init_dit_params
from train import flops
from train.configs import TrainConfig
from train.losses import Batch, dmd_generator_loss, fake_score_loss, flow_matching_loss, teacher_forcing_loss
from train.optim import all_finite, ema_update, guarded_update

INIT_FIELDS = ("init", "score_init")  # the TrainConfig fields naming converted DiTs, in their random draw's order
# (params, opt_state, ema, ok, metrics) of one update, from (config, state, batch, frozen, key)
Update = Callable[[TrainConfig, Any, Batch, dict[str, Params], jax.Array], tuple[Any, Any, Params, jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage."""

  number: int
  loads: Mapping[str, str]  # trained tree → the INIT_FIELDS field it starts from; each has its own optimizer
  frozen_loads: Mapping[str, str]  # tree it reads but never trains or checkpoints → its field
  ema_of: str  # the trained tree whose EMA is kept and exported
  update: Update
  flops: Callable[[TrainConfig, int], dict[str, float]]  # (config, batch) → {"step": the average step, ...}
  # Stage 3 alternates: a generator turn (its metrics, `generator_metrics`, only then) every `gen_every` steps.
  generator_metrics: tuple[str, ...] = ()

  @property
  def trained(self) -> tuple[str, ...]:
    return tuple(self.loads)

  @property
  def inits(self) -> tuple[str, ...]:
    """The fields a run loads all of, or none of for a random init."""
    used = {*self.loads.values(), *self.frozen_loads.values()}
    return tuple(field for field in INIT_FIELDS if field in used)

  def random_params(self, config: TrainConfig, key: jax.Array) -> tuple[dict[str, Params], dict[str, Params]]:
    """(trained, frozen) trees with Wan's initialisation, one draw per field of `inits`."""
    dit = config.dit()
    keys = dict(zip(INIT_FIELDS, jax.random.split(key)))
    drawn = {field: init_dit_params(dit, keys[field]) for field in self.inits}
    return ({tree: drawn[field] for tree, field in self.loads.items()},
            {tree: drawn[field] for tree, field in self.frozen_loads.items()})

  def turns(self, config: TrainConfig) -> list[str]:
    """The kinds of step of one round: ["step"], or stage 3's generator turn and its critic-only steps."""
    return ["generator"] + ["critic"] * (config.gen_every - 1) if self.generator_metrics else ["step"]

  def turn_flops(self, config: TrainConfig) -> dict[str, float]:
    """FLOPs of each kind of `turns` (the generator turn also updates the critic)."""
    counted = self.flops(config, config.batch_size)
    if not self.generator_metrics:
      return {"step": counted["step"]}
    return {"generator": counted["generator"] + counted["critic"], "critic": counted["critic"]}

  def learning_rates(self, config: TrainConfig) -> dict[str, float]:
    return {"lr": config.lr, **({"critic_lr": config.critic_lr} if "fake_score" in self.loads else {})}


def _model_update(loss_fn: Callable, config: TrainConfig, state: Any, batch: Batch, frozen: dict[str, Params],
                  key: jax.Array):
  del frozen  # stages 1-2 read no frozen tree
  params, opt_state = state.params["model"], state.opt_state["model"]
  (loss, metrics), grads = jax.value_and_grad(functools.partial(loss_fn, config), has_aux=True)(params, batch, key)
  grad_norm = optax.tree.norm(grads)
  ok = all_finite(loss, grad_norm)
  params, opt_state = guarded_update(config, "model", params, opt_state, grads, ok)
  ema = ema_update(config, state.ema, params, state.step)
  return {"model": params}, {"model": opt_state}, ema, ok, {**metrics, "grad_norm": grad_norm}


GENERATOR_METRICS = ("gen_loss", "dmd", "mse", "dmd_t", "exit_step", "gen_grad_norm")


def _dmd_update(config: TrainConfig, state: Any, batch: Batch, frozen: dict[str, Params], key: jax.Array):
  """A critic update every step, preceded every `gen_every` steps by a generator update (spec §5.6)."""
  k_gen, k_critic = jax.random.split(key)
  gen, fake = state.params["generator"], state.params["fake_score"]

  def generator_update(carry):
    gen, opt_state, ema = carry
    loss_fn = functools.partial(dmd_generator_loss, config)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(gen, frozen["real_score"], fake, batch, k_gen)
    grad_norm = optax.tree.norm(grads)
    ok = all_finite(loss, grad_norm)
    gen, opt_state = guarded_update(config, "generator", gen, opt_state, grads, ok)
    metrics = {**metrics, "gen_grad_norm": grad_norm}
    return (gen, opt_state, ema_update(config, ema, gen, state.step)), ok, {k: metrics[k] for k in GENERATOR_METRICS}

  def no_generator_update(carry):
    return carry, jnp.array(True), {k: jnp.zeros((), jnp.float32) for k in GENERATOR_METRICS}

  (gen, gen_opt, ema), gen_ok, gen_metrics = jax.lax.cond(
      state.step % config.gen_every == 0, generator_update, no_generator_update,
      (gen, state.opt_state["generator"], state.ema))
  loss_fn = functools.partial(fake_score_loss, config)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(fake, gen, batch, k_critic)
  grad_norm = optax.tree.norm(grads)
  ok = all_finite(loss, grad_norm)
  fake, fake_opt = guarded_update(config, "fake_score", fake, state.opt_state["fake_score"], grads, ok)
  return ({"generator": gen, "fake_score": fake}, {"generator": gen_opt, "fake_score": fake_opt}, ema,
          ok & gen_ok, {**metrics, **gen_metrics, "critic_grad_norm": grad_norm})


STAGES = {
    1: Stage(1, {"model": "init"}, {}, "model", functools.partial(_model_update, flow_matching_loss),
             flops.bidirectional_step_flops),
    2: Stage(2, {"model": "init"}, {}, "model", functools.partial(_model_update, teacher_forcing_loss),
             flops.teacher_forcing_step_flops),
    3: Stage(3, {"generator": "init", "fake_score": "score_init"}, {"real_score": "score_init"}, "generator",
             _dmd_update, flops.dmd_step_flops, GENERATOR_METRICS),
}


def of(config: TrainConfig) -> Stage:
  return STAGES[config.stage]
