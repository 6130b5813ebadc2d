"""Train state, optimizers and the train step of each stage, jitted once over the mesh.

    state, frozen = random_init(config, mesh)                # born sharded (or init_from / a restore)
    step = compile_step(config, mesh, state, batch, frozen)  # lowered and compiled before the loop
    state, metrics = step(state, batch, frozen)              # state donated

`train_step(config, state, batch, frozen)` is pure: the PRNG key is the state's, folded with `state.step`.
`frozen` holds the trees a stage reads but never trains ({"real_score": params} in stage 3, {} otherwise); they are
reloaded every run and never checkpointed.

A step whose loss or gradient norm is not finite leaves the trained params, optimizer states and EMA unchanged
(`jnp.where` on the update, inside the step); it still counts as a step, and `state.nonfinite` counts such steps in
a row so the loop can stop.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from liveedit_jax.attention import attention_input_sharding
from liveedit_jax.dit import Params, init_dit_params
from train import sharding
from train.configs import TrainConfig
from train.losses import Batch, dmd_generator_loss, fake_score_loss, flow_matching_loss, teacher_forcing_loss

# The trained tree whose EMA is kept, per stage.
EMA_OF = {1: "model", 2: "model", 3: "generator"}
# Fields the step never reads: runs that differ only in these share one compiled step (the config is static).
HOST_FIELDS = ("name", "data_dir", "data_seed", "data_threads", "mesh_data", "mesh_fsdp", "workdir", "steps", "seed",
               "log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite", "peak_tflops", "init",
               "score_init")
GENERATOR_METRICS = ("gen_loss", "dmd", "mse", "dmd_t", "exit_step", "gen_grad_norm")
# Keys draw their bits with XLA's RngBitGenerator: a noise draw compiles in ~0.3 s where a threefry draw of the
# same shape takes ~5 s on CPU, and the values do not depend on the mesh (tests/test_train_mesh.py).
RNG_IMPL = "rbg"


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: steps taken (stage 3: critic updates)
  params: dict[str, Params]  # the trained trees: {"model"} in stages 1–2, {"generator", "fake_score"} in stage 3
  opt_state: dict[str, Any]  # one optax state per trained tree
  ema: Params  # EMA of params[EMA_OF[stage]]
  rng: jax.Array  # uint32 [4]: raw key data of an RNG_IMPL key (checkpointable)
  nonfinite: jax.Array  # int32 []: steps in a row whose update was skipped for a non-finite loss or gradient


def step_config(config: TrainConfig) -> TrainConfig:
  """The config with host-only fields reset: the static argument of the jitted step."""
  defaults = TrainConfig()
  return config.replace(**{f: getattr(defaults, f) for f in HOST_FIELDS})


def optimizer(config: TrainConfig, tree: str) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (the fake score at `critic_lr`)."""
  lr = config.critic_lr if tree == "fake_score" else config.lr
  return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                     optax.adamw(lr, b1=config.b1, b2=config.b2, eps=1e-8, weight_decay=config.weight_decay))


def new_state(config: TrainConfig, params: dict[str, Params], rng: jax.Array) -> TrainState:
  """Step 0 for the trained trees `params`: fresh optimizer states, the EMA equal to the weights.

  rng: an RNG_IMPL key; the state keeps its raw data.
  """
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state={name: optimizer(config, name).init(p) for name, p in params.items()},
      ema=jax.tree.map(jnp.copy, params[EMA_OF[config.stage]]), rng=jax.random.key_data(rng),
      nonfinite=jnp.zeros((), jnp.int32))


def random_params(config: TrainConfig, key: jax.Array) -> tuple[dict[str, Params], dict[str, Params]]:
  """(trained, frozen) trees with Wan's initialisation. Stage 3's fake score starts equal to the real score."""
  dit = config.dit()
  k_model, k_score = jax.random.split(key)
  if config.stage != 3:
    return {"model": init_dit_params(dit, k_model)}, {}
  score = init_dit_params(dit, k_score)
  return {"generator": init_dit_params(dit, k_model), "fake_score": score}, {"real_score": score}


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
  """NamedShardings for a state (of arrays or ShapeDtypeStructs): trees by the rule table, scalars replicated."""
  rep = sharding.replicated(mesh)
  return TrainState(step=rep, params=sharding.tree_shardings(state.params, mesh),
                    opt_state=sharding.tree_shardings(state.opt_state, mesh),
                    ema=sharding.tree_shardings(state.ema, mesh), rng=rep, nonfinite=rep)


def _with_shardings(shapes: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def abstract_state(config: TrainConfig, mesh: Mesh) -> TrainState:
  """The state's ShapeDtypeStructs, each carrying its target sharding (for restores and compiles)."""
  key = jax.random.key(0, impl=RNG_IMPL)
  shapes = jax.eval_shape(lambda: new_state(config, random_params(config, key)[0], key))
  return _with_shardings(shapes, state_shardings(shapes, mesh))


def abstract_frozen(config: TrainConfig, mesh: Mesh) -> dict[str, Params]:
  shapes = jax.eval_shape(lambda: random_params(config, jax.random.key(0, impl=RNG_IMPL))[1])
  return _with_shardings(shapes, sharding.tree_shardings(shapes, mesh))


def _random_init(config: TrainConfig, seed: jax.Array) -> tuple[TrainState, dict[str, Params]]:
  k_init, k_state = jax.random.split(jax.random.key(seed, impl=RNG_IMPL))
  trained, frozen = random_params(config, k_init)
  return new_state(config, trained, k_state), frozen


def random_init(config: TrainConfig, mesh: Mesh) -> tuple[TrainState, dict[str, Params]]:
  """A step-0 state and the frozen trees from a random init of `config.seed`, born sharded."""
  shardings = jax.tree.map(lambda a: a.sharding, (abstract_state(config, mesh), abstract_frozen(config, mesh)))
  init = jax.jit(_random_init, static_argnums=0, out_shardings=shardings)
  return init(step_config(config), jnp.int32(config.seed))


def _init_from(config: TrainConfig, params: dict[str, Params], seed: jax.Array) -> TrainState:
  return new_state(config, params, jax.random.split(jax.random.key(seed, impl=RNG_IMPL))[1])


def init_from(config: TrainConfig, mesh: Mesh, params: dict[str, Params]) -> TrainState:
  """A step-0 state around loaded trained trees (already on the mesh), born sharded; `params` is donated."""
  shardings = jax.tree.map(lambda a: a.sharding, abstract_state(config, mesh))
  init = jax.jit(_init_from, static_argnums=0, out_shardings=shardings, donate_argnums=1)
  return init(step_config(config), params, jnp.int32(config.seed))


def _update(config: TrainConfig, tree: str, params: Params, opt_state: Any, grads: Params,
            ok: jax.Array) -> tuple[Params, Any]:
  updates, new_opt = optimizer(config, tree).update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
  return keep(new_params, params), keep(new_opt, opt_state)


def _ema(config: TrainConfig, ema: Params, params: Params, step: jax.Array) -> Params:
  """Tracks the weights until `ema_start`, then decays (Self-Forcing starts the EMA from the weights then)."""
  d = jnp.where(step < config.ema_start, 0.0, config.ema_decay)
  return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)


def _finite(*values: jax.Array) -> jax.Array:
  return functools.reduce(jnp.logical_and, [jnp.isfinite(v) for v in values])


def _model_step(config: TrainConfig, state: TrainState, batch: Batch, key: jax.Array):
  loss_fn = flow_matching_loss if config.stage == 1 else teacher_forcing_loss
  params, opt_state = state.params["model"], state.opt_state["model"]
  (loss, metrics), grads = jax.value_and_grad(functools.partial(loss_fn, config), has_aux=True)(params, batch, key)
  grad_norm = optax.tree.norm(grads)
  ok = _finite(loss, grad_norm)
  params, opt_state = _update(config, "model", params, opt_state, grads, ok)
  ema = _ema(config, state.ema, params, state.step)
  return {"model": params}, {"model": opt_state}, ema, ok, {**metrics, "grad_norm": grad_norm}


def _dmd_step(config: TrainConfig, state: TrainState, batch: Batch, frozen: dict[str, Params], key: jax.Array):
  """A critic update every step, preceded every `gen_every` steps by a generator update (spec §5.6)."""
  k_gen, k_critic = jax.random.split(key)
  gen, fake = state.params["generator"], state.params["fake_score"]

  def generator_update(carry):
    gen, opt_state, ema = carry
    loss_fn = functools.partial(dmd_generator_loss, config)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(gen, frozen["real_score"], fake, batch, k_gen)
    grad_norm = optax.tree.norm(grads)
    ok = _finite(loss, grad_norm)
    gen, opt_state = _update(config, "generator", gen, opt_state, grads, ok)
    metrics = {**metrics, "gen_grad_norm": grad_norm}
    return (gen, opt_state, _ema(config, ema, gen, state.step)), ok, {k: metrics[k] for k in GENERATOR_METRICS}

  def no_generator_update(carry):
    return carry, jnp.array(True), {k: jnp.zeros((), jnp.float32) for k in GENERATOR_METRICS}

  (gen, gen_opt, ema), gen_ok, gen_metrics = jax.lax.cond(
      state.step % config.gen_every == 0, generator_update, no_generator_update,
      (gen, state.opt_state["generator"], state.ema))
  loss_fn = functools.partial(fake_score_loss, config)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(fake, gen, batch, k_critic)
  grad_norm = optax.tree.norm(grads)
  ok = _finite(loss, grad_norm)
  fake, fake_opt = _update(config, "fake_score", fake, state.opt_state["fake_score"], grads, ok)
  return ({"generator": gen, "fake_score": fake}, {"generator": gen_opt, "fake_score": fake_opt}, ema,
          ok & gen_ok, {**metrics, **gen_metrics, "critic_grad_norm": grad_norm})


def train_step(config: TrainConfig, state: TrainState, batch: Batch,
               frozen: dict[str, Params]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step of `config.stage`. Returns the next state and float32 scalar metrics."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=RNG_IMPL), state.step)
  if config.stage == 3:
    params, opt_state, ema, ok, metrics = _dmd_step(config, state, batch, frozen, key)
  else:
    params, opt_state, ema, ok, metrics = _model_step(config, state, batch, key)
  nonfinite = jnp.where(ok, 0, state.nonfinite + 1).astype(jnp.int32)
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema, nonfinite=nonfinite)
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
  return state, {**metrics, "skipped": 1.0 - ok.astype(jnp.float32), "nonfinite": nonfinite.astype(jnp.float32)}


def compile_step(config: TrainConfig, mesh: Mesh, state: TrainState, batch: Batch, frozen: dict[str, Params]):
  """Lowers and compiles the step for these (possibly abstract) arguments; returns the compiled executable.

  Runs that share the mesh, the shapes and `step_config(config)` reuse one compilation within a process.
  """
  state_sh = state_shardings(state, mesh)
  jitted = jax.jit(train_step, static_argnums=0, donate_argnums=1,
                   in_shardings=(state_sh, sharding.batch_sharding(mesh), sharding.tree_shardings(frozen, mesh)),
                   out_shardings=(state_sh, sharding.replicated(mesh)))
  with attention_input_sharding(sharding.batch_sharding(mesh)):
    return jitted.lower(step_config(config), state, batch, frozen).compile()
