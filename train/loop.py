"""The training loop of all three stages: mesh, state, data, compile, steps, logging, checkpoints.

    history = train(TrainConfig.preset("tiny", stage=1, data_dir="data/tiny"))

Where the state comes from, first that applies:
  1. the latest checkpoint in <workdir>/checkpoints (a resumed run: params, optimizer states, EMA, step, PRNG key
     and the data position);
  2. the converted weights named by `init` (and, stage 3, `score_init` for the fake score);
  3. a random init from `seed`.
The frozen trees (stage 3's real score) are loaded on every run, from `score_init` or the random init.

A step whose loss or gradient is not finite is skipped inside the jitted step (the weights do not move) and logged;
`max_nonfinite` such steps in a row stop the run with `NonFiniteError`, after the last finite checkpoint, which is
left as it was. The run ends with a checkpoint and exports the trained weights and their EMA (`checkpoint.export`).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
from tensorboardX import SummaryWriter
from tqdm import tqdm

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Params, init_dit_params
from liveedit_jax.param_io import load_params, read_config
from train import checkpoint, sharding, stages, step as train_step
from train.configs import TrainConfig
from train.data import Batches
from train.flops import peak_flops_per_device

log = logging.getLogger("train")


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when the environment describes a multi-process job.

  JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES and JAX_PROCESS_ID), or SLURM / Open MPI variables naming more
  than one task; JAX reads the rest from the environment. Returns whether it initialised.
  """
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    jax.distributed.initialize()
    return True
  return False


def load_dit_params(path: str, config: TrainConfig, mesh: jax.sharding.Mesh) -> Params:
  """A converted DiT directory's params, restored straight into their shardings, after checking its config."""
  stored = DiTConfig.from_dict(read_config(path, "dit"))
  want = config.dit()
  runtime = dict(name=want.name, compute_dtype=want.compute_dtype, param_dtype=want.param_dtype, remat=want.remat,
                 kernels=want.kernels)
  if stored.replace(**runtime) != want:
    raise ValueError(f"{path} holds a DiT {stored}, but config {config.name!r} trains {want}")
  shapes = jax.eval_shape(lambda: init_dit_params(want, jax.random.key(0)))
  shardings = sharding.tree_shardings(shapes, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
  return load_params(path, abstract)


def initial_state(config: TrainConfig, mesh: jax.sharding.Mesh,
                  fresh: bool) -> tuple[train_step.TrainState | None, dict[str, Params]]:
  """(a step-0 state, or None unless `fresh` (a checkpoint will provide it), the frozen trees).

  From the converted weights of the stage's `inits` (`init`: stages 1–2's model, stage 3's generator; `score_init`:
  stage 3's real score, which also initialises the fake score); without them, a random init from `seed`.
  """
  stage = stages.of(config)
  unused = [f for f in stages.INIT_FIELDS if getattr(config, f) and f not in stage.inits]
  if unused:
    raise ValueError(f"{unused[0]} names a DiT that stage {config.stage} does not load; it starts from "
                     f"{' and '.join(stage.inits)} only")
  given = [f for f in stage.inits if getattr(config, f)]
  if not given:
    state, frozen = train_step.random_init(config, mesh)
    return (state if fresh else None), frozen
  if len(given) != len(stage.inits):
    raise ValueError(f"stage {config.stage} loads {' and '.join(stage.inits)}; set all of them, or none for a "
                     f"random init")
  load = functools.partial(load_dit_params, config=config, mesh=mesh)
  frozen = {tree: load(getattr(config, field)) for tree, field in stage.frozen_loads.items()}
  if not fresh:
    return None, frozen
  trained = {tree: load(getattr(config, field)) for tree, field in stage.loads.items()}
  return train_step.init_from(config, mesh, trained), frozen


def _host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _start(config: TrainConfig, mesh: jax.sharding.Mesh, data: Batches, checkpoints: checkpoint.Checkpoints):
  """(the state to train from, the frozen trees, the state's abstract shape): resumed, loaded or random."""
  abstract = train_step.abstract_state(config, mesh)
  start = checkpoints.latest_step()
  state, frozen = initial_state(config, mesh, fresh=start is None)
  if start is not None:
    state = checkpoints.restore(start, abstract, data.restore_args())
    log.info("resumed from %s at step %d", Path(config.workdir) / "checkpoints", start)
  else:
    sources = [f"{f} {getattr(config, f)}" for f in ("init", "score_init") if getattr(config, f)]
    log.info("starting at step 0 from %s", ", ".join(sources) if sources else f"a random init (seed {config.seed})")
  log.info("%.1f%% of the trained parameter bytes are sharded over fsdp=%d",
           100 * sharding.sharded_fraction(state.params, jax.tree.map(lambda a: a.sharding, state.params)),
           mesh.shape["fsdp"])
  return state, frozen, abstract


class _StepLog:
  """The logged steps: host copies of their metrics with rates (steps, tokens, MFU) to TensorBoard and the
  progress bar, and the non-finite check of every step."""

  def __init__(self, config: TrainConfig, first: int, checkpoints: checkpoint.Checkpoints, primary: bool):
    self.config, self.checkpoints = config, checkpoints
    self.flops = stages.of(config).flops(config, config.batch_size)["step"]
    self.peak = peak_flops_per_device(config)
    _, ph, pw = config.dit().patch_size
    self.tokens_per_step = config.batch_size * config.frames * (config.height // ph) * (config.width // pw)
    self.writer = SummaryWriter(str(Path(config.workdir) / "tensorboard")) if primary else None
    self.bar = tqdm(total=config.steps, initial=first, disable=not primary, desc=f"stage {config.stage}")
    self.last_time, self.last_step = time.perf_counter(), first
    self.history: list[dict[str, float]] = []

  def check(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Logs a skipped (non-finite) step; raises `NonFiniteError` after `max_nonfinite` in a row."""
    streak = int(metrics["nonfinite"])
    if streak:
      log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", step, streak)
      if self.writer:
        self.writer.add_scalar("train/skipped", 1.0, step)
    if streak >= self.config.max_nonfinite:
      raise NonFiniteError(f"steps {step - streak + 1}–{step} had non-finite losses or gradients; the last "
                           f"checkpoint ({self.checkpoints.latest_step()}) holds the last good state")

  def write(self, step: int, metrics: dict[str, jax.Array]) -> None:
    host = _host_metrics(metrics)
    now = time.perf_counter()
    steps_per_s = (step - self.last_step) / (now - self.last_time)
    self.last_time, self.last_step = now, step
    host.update(steps_per_s=steps_per_s, tokens_per_s=steps_per_s * self.tokens_per_step,
                **stages.of(self.config).learning_rates(self.config))
    if self.peak:
      host["mfu"] = self.flops * steps_per_s / (self.peak * jax.device_count())
    self.history.append({"step": step, **host})
    self.bar.set_postfix({k: f"{host[k]:.4g}" for k in ("loss", "critic_loss", "gen_loss") if k in host})
    if self.writer:
      for k, v in host.items():
        self.writer.add_scalar(f"train/{k}", v, step)

  def close(self) -> None:
    self.bar.close()
    if self.writer:
      self.writer.close()


def train(config: TrainConfig, *, stop_at: int | None = None) -> list[dict[str, float]]:
  """Runs (or resumes) `config` up to `config.steps`; returns the metrics of every logged step.

  stop_at: end after this step as if the job were killed there: no final checkpoint, no export (tests).
  """
  workdir = Path(config.workdir)
  mesh = sharding.make_mesh(config.mesh_data, config.mesh_fsdp)
  data = Batches(config, mesh)
  checkpoints = checkpoint.Checkpoints(workdir / "checkpoints", config.checkpoint_every, config.keep_checkpoints)
  state, frozen, abstract = _start(config, mesh, data, checkpoints)
  log.info("compiling the stage-%d step ...", config.stage)
  compile_start = time.perf_counter()
  step_fn = train_step.compile_step(config, mesh, abstract, data.abstract(), frozen)
  log.info("compiled the stage-%d step in %.1f s; memory: %s", config.stage, time.perf_counter() - compile_start,
           step_fn.memory_analysis())

  first = int(state.step)
  end = config.steps if stop_at is None else min(stop_at, config.steps)
  steps = _StepLog(config, first, checkpoints, primary=jax.process_index() == 0)
  previous = None  # (step, metrics) of the step before: checked after the next one is dispatched
  stage, generator_metrics = stages.of(config), {}
  try:
    for i in range(first, end):
      state, metrics = step_fn(state, next(data), frozen)
      step = i + 1
      if stage.generator_metrics and i % config.gen_every == 0:  # the generator's turn
        generator_metrics = {k: metrics[k] for k in stage.generator_metrics}
      if previous is not None:
        steps.check(*previous)
      previous = (step, metrics)
      steps.bar.update(1)
      if step % config.log_every == 0 or step == end:
        steps.check(*previous)
        previous = None
        steps.write(step, {**metrics, **generator_metrics})
      if (step % config.checkpoint_every == 0 or step == config.steps) and int(metrics["nonfinite"]) == 0:
        checkpoints.save(step, state, data.save_args(), force=step == config.steps)
    if previous is not None:
      steps.check(*previous)
  finally:
    steps.close()
    checkpoints.close()
  if end == config.steps and first < end:
    checkpoint.export(workdir / "export", config.dit(), state.params[stage.ema_of])
    checkpoint.export(workdir / "export_ema", config.dit(), state.ema)
  return steps.history


def log_to_stderr() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  for noisy in ("absl", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def summary(history: list[dict[str, Any]]) -> str:
  """The last logged step's losses, one line."""
  if not history:
    return "no steps run"
  last = history[-1]
  return " ".join(f"{k}={last[k]:.4g}" for k in sorted(last) if k == "step" or "loss" in k)

