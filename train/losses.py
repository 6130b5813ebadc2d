"""Training losses as pure functions of explicit parameter trees: `loss(config, params..., batch, key) → (loss,
metrics)`, with the `TrainConfig` bound by `functools.partial`.

A batch is a dict of global arrays:
  source  [B, F, H, W, 16]        source-video latents (the DiT's input channels 16–31)
  target  [B, F, H, W, 16]        edited-video latents
  context [B, L, text_dim]        prompt embeddings (rows past the prompt zero)
The null prompt of classifier-free guidance is the all-zero context: text dropout trains it in stages 1–2 and the
real score's unconditional branch uses it in stage 3.

Flow matching (as in Wan2.1 and Self-Forcing): x_t = (1 − σ)·x0 + σ·ε with σ = t/1000 and the DiT predicts
v = ε − x0. DMD (Self-Forcing's `model/dmd.py`) compares a frozen real score and a trained fake score, both
bidirectional models of the same DiT, on re-noised generator samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liveedit_jax.dit import Params, dit_forward, text_kv_per_layer
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.schedule import TRAIN_TIMESTEPS, add_noise, flow_target, sample_timesteps, x0_from_flow
from train.configs import TrainConfig
from train.rollout import exit_forward, rollout

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def drop_text(key: jax.Array, context: jax.Array, rate: float) -> jax.Array:
  """Replaces each sample's context [B, L, D] by zeros with probability `rate`."""
  if rate == 0.0:
    return context
  keep = jax.random.bernoulli(key, 1.0 - rate, (context.shape[0], 1, 1))
  return jnp.where(keep, context, 0.0).astype(context.dtype)


def _noisy_input(key: jax.Array, batch: Batch, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(DiT input x_t ‖ source [B, F, H, W, 32], flow target ε − x0 [B, F, H, W, 16]); t [B] or [B, F]."""
  target = batch["target"]
  eps = jax.random.normal(key, target.shape, jnp.float32)
  x_t = add_noise(target, eps, t / TRAIN_TIMESTEPS)
  return jnp.concatenate([x_t, batch["source"]], -1), flow_target(target, eps)


def flow_matching_loss(config: TrainConfig, params: Params, batch: Batch, key: jax.Array) -> tuple[jax.Array,
                                                                                                      Metrics]:
  """Stage 1: bidirectional flow-matching MSE on (source, target) pairs, one shifted t per sample."""
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  b = batch["target"].shape[0]
  t = sample_timesteps(k_t, (b,), config.shift)
  x, v = _noisy_input(k_eps, batch, t)
  context = drop_text(k_drop, batch["context"], config.text_dropout)
  loss = jnp.mean(jnp.square(dit_forward(config.dit(), params, x, t, context) - v))
  return loss, {"loss": loss}


def teacher_forcing_loss(config: TrainConfig, params: Params, batch: Batch, key: jax.Array) -> tuple[jax.Array,
                                                                                                        Metrics]:
  """Stage 2: chunk-causal flow matching with teacher forcing, one shifted t per chunk.

  Noisy chunk c sees the clean target chunks < c and itself (spec §9): the clean half is target ‖ source at t = 0.
  """
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  b, f = batch["target"].shape[:2]
  c = config.chunk_frames
  t = jnp.repeat(sample_timesteps(k_t, (b, f // c), config.shift), c, axis=1)  # [B, F]
  x, v = _noisy_input(k_eps, batch, t)
  clean = jnp.concatenate([batch["target"], batch["source"]], -1)
  context = drop_text(k_drop, batch["context"], config.text_dropout)
  flow = dit_forward(config.dit(), params, x, t, context, chunk_frames=c, clean_x=clean)
  loss = jnp.mean(jnp.square(flow - v))
  return loss, {"loss": loss}


def generate(config: TrainConfig, params: Params, batch: Batch, key: jax.Array, *,
             with_grad: bool) -> tuple[jax.Array, Metrics]:
  """Generator samples x̂ [B, F, H, W, 16] by the self-forcing rollout (`train/rollout.py`) with a random exit step.

  with_grad: differentiate x̂ through each chunk's exit-step forward; otherwise x̂ is a constant.
  """
  dit = config.dit()
  steps = len(config.timesteps)
  k_exit, k_noise = jax.random.split(key)
  exit_step = jax.random.randint(k_exit, (), 0, steps)
  source = batch["source"]
  noise = jax.random.normal(k_noise, (steps, *source.shape), jnp.float32)
  text_kv = text_kv_per_layer(dit, params, batch["context"])
  mask_cache = MaskCacheConfig(prune_ratio=config.pruned_rollout) if config.pruned_rollout else None
  roll = rollout(dit, params, text_kv, source, noise, exit_step, config.timesteps, config.chunk_frames, mask_cache)
  metrics = {"exit_step": exit_step.astype(jnp.float32)}
  if not with_grad:
    return roll.samples, metrics
  t = jnp.full((source.shape[0],), jnp.asarray(config.timesteps, jnp.float32)[exit_step])
  return exit_forward(dit, params, text_kv, roll.kv, roll.exit_inputs, source, t, config.chunk_frames), metrics


def _score_timesteps(config: TrainConfig, key: jax.Array, batch_size: int) -> jax.Array:
  """DMD and critic t [B]: shifted, clamped to [t_min, t_max] (spec §5.3 step 2)."""
  return sample_timesteps(key, (batch_size,), config.shift, config.t_min, config.t_max)


def predict_x0(config: TrainConfig, params: Params, x_t: jax.Array, source: jax.Array, t: jax.Array,
               context: jax.Array, guidance: float = 0.0) -> jax.Array:
  """A bidirectional score's x̂0 [B, F, H, W, 16]; guidance g > 0 adds x0_c + g·(x0_c − x0_u) with the null prompt.

  Both guidance branches run as one forward of batch 2B.
  """
  if guidance != 0.0:
    x_t, source, t = (jnp.concatenate([a, a]) for a in (x_t, source, t))
    context = jnp.concatenate([context, jnp.zeros_like(context)])
  flow = dit_forward(config.dit(), params, jnp.concatenate([x_t, source], -1), t, context)
  x0 = x0_from_flow(x_t, flow, t / TRAIN_TIMESTEPS)
  if guidance == 0.0:
    return x0
  cond, uncond = jnp.split(x0, 2)
  return cond + guidance * (cond - uncond)


def dmd_objective(x_hat: jax.Array, x0_real: jax.Array, x0_fake: jax.Array) -> jax.Array:
  """The DMD surrogate 0.5·mean((x̂ − sg(x̂ − Δ))²), whose gradient in x̂ is Δ/N (N = x̂.size).

  Δ = (x0_fake − x0_real) / n with n = mean|x̂ − x0_real| per sample (no gradient; NaN/Inf → finite).
  """
  x = jax.lax.stop_gradient(x_hat).astype(jnp.float32)
  x0_real, x0_fake = jax.lax.stop_gradient((x0_real, x0_fake))
  norm = jnp.mean(jnp.abs(x - x0_real), axis=tuple(range(1, x.ndim)), keepdims=True)
  delta = jnp.nan_to_num((x0_fake - x0_real) / norm)
  # x̂ − sg(x̂ − Δ) written as (x̂ − sg(x̂)) + Δ: the same value and gradient, without float32 cancellation in
  # x̂ − Δ (Self-Forcing computes the loss in float64 instead).
  return 0.5 * jnp.mean(jnp.square(x_hat - x + delta))


def dmd_generator_loss(config: TrainConfig, gen_params: Params, real_params: Params, fake_params: Params,
                       batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
  """Stage 3 generator loss: L_DMD + λ·MSE(x̂, target latent), differentiable in gen_params only."""
  k_roll, k_t, k_eps = jax.random.split(key, 3)
  x_hat, metrics = generate(config, gen_params, batch, k_roll, with_grad=True)
  b = x_hat.shape[0]
  t = _score_timesteps(config, k_t, b)
  eps = jax.random.normal(k_eps, x_hat.shape, jnp.float32)
  x_t = add_noise(jax.lax.stop_gradient(x_hat), eps, t / TRAIN_TIMESTEPS)
  real_params, fake_params = jax.lax.stop_gradient((real_params, fake_params))
  x0_fake = predict_x0(config, fake_params, x_t, batch["source"], t, batch["context"])
  x0_real = predict_x0(config, real_params, x_t, batch["source"], t, batch["context"], config.guidance)
  dmd = dmd_objective(x_hat, x0_real, x0_fake)
  mse = jnp.mean(jnp.square(x_hat - batch["target"]))
  loss = dmd + config.mse_weight * mse
  return loss, {**metrics, "gen_loss": loss, "dmd": dmd, "mse": mse, "dmd_t": jnp.mean(t)}


def fake_score_loss(config: TrainConfig, fake_params: Params, gen_params: Params, batch: Batch,
                    key: jax.Array) -> tuple[jax.Array, Metrics]:
  """Stage 3 critic loss: flow matching of the fake score on generator samples (rollout without gradient)."""
  k_roll, k_t, k_eps = jax.random.split(key, 3)
  x_gen, metrics = generate(config, jax.lax.stop_gradient(gen_params), batch, k_roll, with_grad=False)
  b = x_gen.shape[0]
  t = _score_timesteps(config, k_t, b)
  eps = jax.random.normal(k_eps, x_gen.shape, jnp.float32)
  x_t = add_noise(x_gen, eps, t / TRAIN_TIMESTEPS)
  flow = dit_forward(config.dit(), fake_params, jnp.concatenate([x_t, batch["source"]], -1), t, batch["context"])
  loss = jnp.mean(jnp.square(flow - flow_target(x_gen, eps)))
  return loss, {"critic_loss": loss, "critic_exit_step": metrics["exit_step"]}
