"""Train state and the train step of each stage, jitted once over the mesh.

    state, frozen = random_init(config, mesh)                # born sharded (or init_from / a restore)
    step = compile_step(config, mesh, state, batch, frozen)  # lowered and compiled before the loop
    state, metrics = step(state, batch, frozen)              # state donated

`train_step(config, state, batch, frozen)` is pure: the PRNG key is the state's, folded with `state.step`.
What a stage trains, reads frozen and how it updates is its `train.stages.Stage`. `frozen` holds the trees a stage
reads but never trains ({"real_score": params} in stage 3, {} otherwise); they are reloaded every run and never
checkpointed.

A step whose loss or gradient norm is not finite leaves the trained params, optimizer states and EMA unchanged
(`jnp.where` on the update, inside the step); it still counts as a step, and `state.nonfinite` counts such steps in
a row so the loop can stop.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from liveedit_jax.attention import attention_input_sharding
from liveedit_jax.dit import Params
from train import sharding, stages
from train.configs import TrainConfig
from train.losses import Batch
from train.optim import optimizer

# Fields the step never reads: runs that differ only in these share one compiled step (the config is static).
HOST_FIELDS = ("name", "data_dir", "data_seed", "data_threads", "mesh_data", "mesh_fsdp", "workdir", "steps", "seed",
               "log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite", "peak_tflops", "init",
               "score_init")
# Keys draw their bits with XLA's RngBitGenerator: a noise draw compiles in ~0.3 s where a threefry draw of the
# same shape takes ~5 s on CPU, and the values do not depend on the mesh (tests/test_train_mesh.py).
RNG_IMPL = "rbg"


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: steps taken (stage 3: critic updates)
  params: dict[str, Params]  # the stage's trained trees: {"model"} in stages 1–2, {"generator", "fake_score"} in 3
  opt_state: dict[str, Any]  # one optax state per trained tree
  ema: Params  # EMA of params[stage.ema_of]
  rng: jax.Array  # uint32 [4]: raw key data of an RNG_IMPL key (checkpointable)
  nonfinite: jax.Array  # int32 []: steps in a row whose update was skipped for a non-finite loss or gradient


def step_config(config: TrainConfig) -> TrainConfig:
  """The config with host-only fields reset: the static argument of the jitted step."""
  defaults = TrainConfig()
  return config.replace(**{f: getattr(defaults, f) for f in HOST_FIELDS})


def new_state(config: TrainConfig, params: dict[str, Params], rng: jax.Array) -> TrainState:
  """Step 0 for the trained trees `params`: fresh optimizer states, the EMA equal to the weights.

  rng: an RNG_IMPL key; the state keeps its raw data.
  """
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state={name: optimizer(config, name).init(p) for name, p in params.items()},
      ema=jax.tree.map(jnp.copy, params[stages.of(config).ema_of]), rng=jax.random.key_data(rng),
      nonfinite=jnp.zeros((), jnp.int32))


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
  shapes = jax.eval_shape(lambda: new_state(config, stages.of(config).random_params(config, key)[0], key))
  return _with_shardings(shapes, state_shardings(shapes, mesh))


def abstract_frozen(config: TrainConfig, mesh: Mesh) -> dict[str, Params]:
  shapes = jax.eval_shape(lambda: stages.of(config).random_params(config, jax.random.key(0, impl=RNG_IMPL))[1])
  return _with_shardings(shapes, sharding.tree_shardings(shapes, mesh))


def _random_init(config: TrainConfig, seed: jax.Array) -> tuple[TrainState, dict[str, Params]]:
  k_init, k_state = jax.random.split(jax.random.key(seed, impl=RNG_IMPL))
  trained, frozen = stages.of(config).random_params(config, k_init)
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


def train_step(config: TrainConfig, state: TrainState, batch: Batch,
               frozen: dict[str, Params]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step of `config.stage`. Returns the next state and float32 scalar metrics."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=RNG_IMPL), state.step)
  params, opt_state, ema, ok, metrics = stages.of(config).update(config, state, batch, frozen, key)
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
