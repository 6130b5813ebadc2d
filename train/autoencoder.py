"""Trains an autoencoder of the Wan VAE architecture on procedural clips: the default model's VAE.

    python -m train.autoencoder --vae synth --workdir runs/synth/vae --steps 3000

The clips are rendered once by `liveedit_jax.synthetic` (train split, sources and targets alike) in worker
processes and held in memory; each step draws a batch of them, cut to random `crop` × `crop` windows (the
network is convolutional apart from its per-frame middle attention, and a quarter of the pixels per clip buys
four times the clips per step); the test PSNR is measured on whole frames. The loss is the decoded clip's mean squared error
plus 0.1 × its mean absolute error (PSNR is what the benchmark asks of it), optionally `chroma_weight` × the squared
error of its colour alone (x − its mean over R, G, B; 0 in the shipped model's recipe: at 1.0, with 12 × 48² crops a
step and lr 5e-4, the 49-frame run still settled on a grey reconstruction, docs/benchmarks.md), and a small L2 on
the latents, which the Wan VAE's KL term bounded in its training. Before decoding, the latents get Gaussian noise
of `latent_noise` times their RMS, so the decoder also reconstructs from latents a little off the encoder's: the
DiT's edits are.

The run checkpoints with Orbax every `checkpoint_every` steps and resumes from the latest checkpoint, so it can
be spread over several short commands. At the end it measures the per-channel mean and standard deviation of the
latents over `stat_clips` training clips (the DiT is trained on latents normalised by them, as Wan's are) and the
PSNR on `val_clips` clips of the test split, and exports `<workdir>/export`, a VAE directory `load_vae` reads, with
those statistics in its config and a `metrics.json` beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tensorboardX import SummaryWriter
from tqdm import tqdm

from liveedit_jax import cli, param_io
from liveedit_jax import metrics as video_metrics
from liveedit_jax.vae import VAEConfig, init_vae_params, vae_decode, vae_encode
from train import sharding
from train.synthetic_data import rendered_examples

log = logging.getLogger("train.autoencoder")


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """An autoencoder training run."""

  vae: str = "synth"  # VAE preset (liveedit_jax.vae.VAE_PRESETS)
  # VAEConfig fields changed on the preset, as (name, value) pairs, e.g. (("temporal_downsample", (False, False)),)
  vae_overrides: tuple[tuple[str, Any], ...] = ()
  compute_dtype: str = "bfloat16"
  # per training clip, 1 + 4k. Longer than the DiT's clips: trained on 9-frame clips (3 latents), every causal
  # window held the first frame's zero padding, and reconstruction broke after frame 9 (29 dB on frames 0–8, 10 to
  # 15 dB after on 33-frame clips); a stream needs windows far from its start.
  frames: int = 49
  # A curriculum: the first `short_steps` steps train on `short_batch` clips cut to their first `short_frames`
  # frames. 0 in the shipped recipe. Runs on 49-frame clips alone keep the luma and drop the colour (chroma PSNR at
  # a grey clip's ≈ 25 dB, whatever the clips per step, latent noise, width or precision), where 24 clips of 9
  # frames a step kept it (docs/benchmarks.md, 2026-12-04): this starts the long clips from a coloured model.
  short_steps: int = 0
  short_frames: int = 9
  short_batch: int = 24
  # "default": Wan's (torch's) random init; "per_frame": `per_frame_init`, the network starting as a per-frame
  # image autoencoder (so later frames start on the first frame's path, not behind four random temporal convs).
  temporal_init: str = "default"
  height: int = 128
  width: int = 128
  clips: int = 1024  # rendered training clips (each gives its source and its target)
  crop: int = 64  # each step trains on crop × crop windows at random places (0: whole frames); tested whole
  batch_size: int = 6  # clips per step: 6 × 49 frames of crop² (1.4× the compute of 24 × 9)
  steps: int = 3000
  lr: float = 1e-3
  warmup: int = 100
  weight_decay: float = 1e-4
  clip_norm: float = 1.0
  latent_l2: float = 1e-4
  chroma_weight: float = 0.0
  latent_noise: float = 0.05
  # A diagnostic: > 0 computes the reconstruction loss on the first `loss_frames` frames of each clip alone (the
  # whole clip is still encoded and decoded), to tell whether later frames' gradients or their forward pass is what
  # a change of clip length changes.
  loss_frames: int = 0
  seed: int = 0
  workdir: str = "runs/synth/vae"
  checkpoint_every: int = 500
  log_every: int = 50
  stat_clips: int = 256
  val_clips: int = 64
  workers: int = 0  # render processes; 0: one per CPU core

  def model(self) -> VAEConfig:
    preset = VAEConfig.preset(self.vae, compute_dtype=self.compute_dtype)
    return VAEConfig.from_dict({**preset.to_dict(), **dict(self.vae_overrides)}) if self.vae_overrides else preset


def parse_overrides(text: str, what: str) -> dict[str, Any]:
  """'{"field": value, ...}' → AutoencoderConfig fields to replace (`check_overrides`); a user mistake raises
  `cli.UserError` naming `what`."""
  return check_overrides(_json_object(text, what), what)


def check_overrides(overrides: dict[str, Any], what: str) -> dict[str, Any]:
  """AutoencoderConfig fields to replace (workdir excluded: the caller's), checked, `vae_overrides` as pairs."""
  known = {f.name for f in dataclasses.fields(AutoencoderConfig)} - {"workdir"}
  if unknown := sorted(set(overrides) - known):
    raise cli.UserError(f"{what}: unknown AutoencoderConfig fields {unknown}")
  if "vae_overrides" in overrides:
    overrides = {**overrides, "vae_overrides": _vae_overrides(overrides["vae_overrides"], what)}
  return overrides


def _json_object(text: str, what: str) -> Any:
  try:
    value = json.loads(text)
  except json.JSONDecodeError as err:
    raise cli.UserError(f"{what}: not JSON ({err})") from None
  if not isinstance(value, dict):
    raise cli.UserError(f'{what}: expected one JSON object {{"field": value, ...}}, got {text!r}')
  return value


def _vae_overrides(fields: Any, what: str) -> tuple[tuple[str, Any], ...]:
  """{VAEConfig field: value} (JSON) → the `vae_overrides` pairs (lists as tuples), the fields checked."""
  if not isinstance(fields, dict):
    raise cli.UserError(f'{what}: vae_overrides is a JSON object {{"VAEConfig field": value}}, got {fields!r}')
  known = {f.name for f in dataclasses.fields(VAEConfig)}
  if unknown := sorted(set(fields) - known):
    raise cli.UserError(f"{what}: unknown VAEConfig fields {unknown} in vae_overrides")
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in fields.items())


def render_clips(split: str, count: int, frames: int, height: int, width: int, workers: int = 0) -> np.ndarray:
  """`count` examples of `split` as clips uint8 [2·count, T, H, W, 3] (sources and targets interleaved)."""
  examples = rendered_examples(split, 0, count, frames=frames, height=height, width=width, workers=workers)
  return np.stack([clip for e in examples for clip in (e.source, e.target)])


def random_crops(rng: np.random.Generator, clips: np.ndarray, count: int, crop: int) -> np.ndarray:
  """`count` clips drawn from uint8 [N, T, H, W, 3], each cut to a crop × crop window at a random place."""
  picked = clips[rng.integers(0, len(clips), count)]
  if not crop:
    return picked
  ys = rng.integers(0, clips.shape[2] - crop + 1, count)
  xs = rng.integers(0, clips.shape[3] - crop + 1, count)
  return np.stack([clip[:, y:y + crop, x:x + crop] for clip, y, x in zip(picked, ys, xs)])


def per_frame_init(params: Any) -> Any:
  """VAE params (`init_vae_params`) changed so that, at init, every frame takes the first frame's path.

  Wan's first frame skips the resamplers' temporal convs, while later frames go through them: at a random init two
  plain (non-residual) random channel mixings in the encoder and two in the decoder that the first frame never
  meets. Here the temporal convs start as the identity on their last tap (the encoder's keeps each pair's later
  frame, the decoder's copies a frame to both of its outputs), and each causal 3-D conv keeps only its last
  (current-frame) tap, scaled by √kt so its output keeps the default init's scale. The network then starts as a
  per-frame autoencoder of every 4th frame (the open-sora-plan causal VAE's "tail init" idea); training learns the
  temporal taps from there.
  """
  def visit(path, kernel):
    names = [getattr(key, "key", None) for key in path]
    if names[-1] != "kernel" or kernel.ndim != 5:
      return kernel
    if "time_conv" in names:
      c_in, c_out = kernel.shape[-2:]
      identity = jnp.tile(jnp.eye(c_in, dtype=kernel.dtype), (1, c_out // c_in))  # [I] or [I | I]
      return jnp.zeros_like(kernel).at[-1, 0, 0].set(identity)
    return jnp.zeros_like(kernel).at[-1].set(kernel[-1] * kernel.shape[0] ** 0.5)

  return jax.tree_util.tree_map_with_path(visit, params)


def training_batch(config: AutoencoderConfig, rng: np.random.Generator, clips: np.ndarray, step: int) -> np.ndarray:
  """Step `step`'s (from 1) batch of uint8 clips [N, T, H, W, 3]: `short_batch` crops of their first `short_frames`
  frames during the first `short_steps` steps, else `batch_size` crops of whole clips."""
  if step <= config.short_steps:
    return random_crops(rng, clips[:, :config.short_frames], config.short_batch, config.crop)
  return random_crops(rng, clips, config.batch_size, config.crop)


def to_video(clips: np.ndarray) -> np.ndarray:
  """uint8 clips → float32 in [−1, 1] (the VAE's input range)."""
  return clips.astype(np.float32) / 127.5 - 1.0


def _psnr_of_mse(mse: jax.Array) -> jax.Array:
  """dB of a mean squared error on [−1, 1] (peak-to-peak 2)."""
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def psnr(reconstruction: jax.Array, video: jax.Array) -> jax.Array:
  """PSNR in dB of clips in [−1, 1], per clip [B] (peak-to-peak 2)."""
  return _psnr_of_mse(jnp.mean(jnp.square(reconstruction - video), axis=tuple(range(1, video.ndim))))


def reconstruction_errors(reconstruction: jax.Array, video: jax.Array) -> dict[str, jax.Array]:
  """Mean squared, mean absolute and colour-only squared error of clips [B, T, H, W, 3] in [−1, 1]; the colour of
  a pixel is its value minus its mean over R, G, B (`liveedit_jax.metrics.chroma_psnr`'s)."""
  error = reconstruction - video
  chroma = error - jnp.mean(error, axis=-1, keepdims=True)
  return {"mse": jnp.mean(jnp.square(error)), "l1": jnp.mean(jnp.abs(error)),
          "chroma_mse": jnp.mean(jnp.square(chroma))}


def loss_fn(config: AutoencoderConfig, vae: VAEConfig, params: Any, video: jax.Array, key: jax.Array):
  """(loss, metrics) of one batch: video [B, T, H, W, 3] in [−1, 1]."""
  mu = vae_encode(vae, params, video, chunked=False)
  rms = jax.lax.stop_gradient(jnp.sqrt(jnp.mean(jnp.square(mu)) + 1e-6))
  noisy = mu + config.latent_noise * rms * jax.random.normal(key, mu.shape)
  reconstruction = vae_decode(vae, params, noisy, chunked=False)
  if config.loss_frames:
    reconstruction, video = reconstruction[:, :config.loss_frames], video[:, :config.loss_frames]
  errors = reconstruction_errors(reconstruction, video)
  latent = jnp.mean(jnp.square(mu))
  loss = (errors["mse"] + 0.1 * errors["l1"] + config.chroma_weight * errors["chroma_mse"]
          + config.latent_l2 * latent)
  return loss, {"loss": loss, "mse": errors["mse"], "psnr": jnp.mean(psnr(reconstruction, video)),
                "chroma_psnr": _psnr_of_mse(errors["chroma_mse"]), "latent_rms": rms}


def make_optimizer(config: AutoencoderConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup, max(config.steps, config.warmup + 1),
                                                end_value=config.lr * 0.02)
  return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                     optax.adamw(schedule, weight_decay=config.weight_decay))


def _train_step(config: AutoencoderConfig, vae: VAEConfig, optimizer, state: dict, video: jax.Array):
  key = jax.random.fold_in(jax.random.key(config.seed), state["step"])
  (_, metrics), grads = jax.value_and_grad(functools.partial(loss_fn, config, vae), has_aux=True)(
      state["params"], video, key)
  metrics["grad_norm"] = optax.tree.norm(grads)  # before clipping: shows the spikes the clip absorbs
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnums=0)
def _encode_mean(vae: VAEConfig, params: Any, video: jax.Array) -> jax.Array:
  return vae_encode(vae, params, video, chunked=False)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(vae: VAEConfig, params: Any, video: jax.Array) -> jax.Array:
  return vae_decode(vae, params, vae_encode(vae, params, video, chunked=False), chunked=False)


def latent_statistics(vae: VAEConfig, params: Any, clips: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation [z] of the un-normalised latents of clips uint8 [N, T, H, W, 3]."""
  total = np.zeros(vae.z_dim)
  squares = np.zeros(vae.z_dim)
  count = 0
  for i in range(0, len(clips), batch):
    mu = np.asarray(_encode_mean(vae, params, jnp.asarray(to_video(clips[i:i + batch]))), np.float64)
    mu = mu * np.asarray(vae.latents_std) + np.asarray(vae.latents_mean)
    total += mu.reshape(-1, vae.z_dim).sum(0)
    squares += np.square(mu).reshape(-1, vae.z_dim).sum(0)
    count += mu.size // vae.z_dim
  mean = total / count
  return mean, np.sqrt(np.maximum(squares / count - mean ** 2, 1e-12))


def evaluate_reconstruction(vae: VAEConfig, params: Any, clips: np.ndarray, batch: int) -> dict[str, Any]:
  """Scores of the reconstructions of uint8 clips [N, T, H, W, 3]: `psnr` and `chroma_psnr`, the means over clips
  of `metrics.psnr` and `metrics.chroma_psnr`; `frame_psnr` and `frame_chroma_psnr` [T], of each frame's squared
  error (of the colour alone for the latter) pooled over the clips (dB; peak 255 on uint8 is peak 2 on [−1, 1]).
  The chroma PSNR catches an autoencoder that drops colour, which PSNR alone hides on the benchmark's pastel
  scenes; the per-frame scores one that breaks far from the start, and where along the clip colour goes."""
  values, chroma, frame_errors, frame_chroma_errors = [], [], [], []
  for i in range(0, len(clips), batch):
    reconstruction = (np.asarray(_reconstruct(vae, params, jnp.asarray(to_video(clips[i:i + batch])))) + 1) / 2
    reconstruction = np.clip(reconstruction, 0.0, 1.0)
    values.append(video_metrics.psnr(reconstruction, clips[i:i + batch]))
    chroma.append(video_metrics.chroma_psnr(reconstruction, clips[i:i + batch]))
    error = reconstruction - clips[i:i + batch] / 255.0
    frame_errors.append(np.square(error).mean(axis=(2, 3, 4)))
    frame_chroma_errors.append(np.square(error - error.mean(-1, keepdims=True)).mean(axis=(2, 3, 4)))

  def per_frame(errors):
    return (10.0 * np.log10(1.0 / np.maximum(np.concatenate(errors).mean(axis=0), 1e-12))).tolist()

  return {"psnr": float(np.mean(np.concatenate(values))), "chroma_psnr": float(np.mean(np.concatenate(chroma))),
          "frame_psnr": per_frame(frame_errors), "frame_chroma_psnr": per_frame(frame_chroma_errors)}


def _check(config: AutoencoderConfig, vae: VAEConfig, devices: int) -> None:
  """Raises ValueError naming the first field that cannot run with `vae` on `devices` devices."""
  for name in ("batch_size", "short_batch"):
    if getattr(config, name) % devices:
      raise ValueError(f"{name} {getattr(config, name)} must divide over {devices} devices")
  if config.short_steps and (config.short_frames % vae.temporal_factor != 1 or config.short_frames > config.frames):
    raise ValueError(f"short_frames {config.short_frames} must be 1 + {vae.temporal_factor}·k frames and at most "
                     f"frames ({config.frames})")
  if config.crop and (config.crop % vae.spatial_factor or config.crop > min(config.height, config.width)):
    raise ValueError(f"crop {config.crop} must be a multiple of the VAE's {vae.spatial_factor}× downsampling and "
                     f"fit the {config.height}×{config.width} clips")
  if config.temporal_init not in ("default", "per_frame"):
    raise ValueError(f"temporal_init must be 'default' or 'per_frame', got {config.temporal_init!r}")


def _start(config: AutoencoderConfig, vae: VAEConfig, optimizer: optax.GradientTransformation,
           manager: ocp.CheckpointManager, replicated: jax.sharding.Sharding) -> dict[str, Any]:
  """The state {"params", "opt_state", "step"}: the latest checkpoint's, else a fresh init from `seed`."""

  def init(key):
    params = init_vae_params(vae, key)
    if config.temporal_init == "per_frame":
      params = per_frame_init(params)
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

  start = manager.latest_step()
  if start is None:
    return jax.jit(init, out_shardings=replicated)(jax.random.key(config.seed))
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
  log.info("resumed from %s at step %d", manager.directory, start)
  return manager.restore(start, args=ocp.args.StandardRestore(abstract))


def train(config: AutoencoderConfig, deadline: float | None = None) -> dict[str, Any] | None:
  """Runs (or resumes) the run to `config.steps` and exports it; returns the final metrics.

  deadline: a `time.time()` after which the run checkpoints and returns None, to be resumed by a later call.
  """
  workdir = Path(config.workdir).absolute()
  vae = config.model()
  mesh = sharding.make_mesh(-1, 1)
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  _check(config, vae, mesh.size)
  optimizer = make_optimizer(config)
  manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
      save_interval_steps=config.checkpoint_every, max_to_keep=2, create=True))
  state = _start(config, vae, optimizer, manager, replicated)

  started = time.perf_counter()
  clips = render_clips("train", config.clips, config.frames, config.height, config.width, config.workers)
  log.info("rendered %d training clips of %d×%d×%d in %.1f s", len(clips), config.frames, config.height,
           config.width, time.perf_counter() - started)
  step_fn = jax.jit(functools.partial(_train_step, config, vae, optimizer), donate_argnums=0,
                    in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated))
  rng = np.random.default_rng([config.seed, int(state["step"])])
  writer = SummaryWriter(str(workdir / "tensorboard"))
  first = int(state["step"])
  metrics: dict[str, float] = {}
  with tqdm(total=config.steps, initial=first, desc="autoencoder") as bar:
    for step in range(first + 1, config.steps + 1):
      batch = jnp.asarray(to_video(training_batch(config, rng, clips, step)))
      state, device_metrics = step_fn(state, jax.device_put(batch, batch_sharding))
      bar.update(1)
      if step % config.log_every == 0 or step == config.steps:
        metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        bar.set_postfix(psnr=f"{metrics['psnr']:.2f}")
        for k, v in metrics.items():
          writer.add_scalar(f"autoencoder/{k}", v, step)
      out_of_time = deadline is not None and time.time() > deadline
      manager.save(step, args=ocp.args.StandardSave(state), force=step == config.steps or out_of_time)
      if out_of_time:
        break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  if int(state["step"]) < config.steps:
    log.info("stopped at step %d of %d (deadline); resume with the same command", int(state["step"]), config.steps)
    return None
  return export(config, vae, state["params"], clips)


def export(config: AutoencoderConfig, vae: VAEConfig, params: Any, clips: np.ndarray) -> dict[str, Any]:
  """Measures the latent statistics and the test PSNR (whole clips, and per frame); writes `<workdir>/export` and
  its metrics.json."""
  workdir = Path(config.workdir).absolute()
  stat_batch = max(1, min(config.batch_size, 16))
  mean, std = latent_statistics(vae, params, clips[:config.stat_clips], stat_batch)
  trained = vae.replace(latents_mean=tuple(float(v) for v in mean), latents_std=tuple(float(v) for v in std),
                        compute_dtype="float32")
  test = render_clips("test", config.val_clips, config.frames, config.height, config.width, config.workers)
  test_scores = evaluate_reconstruction(trained, params, test, stat_batch)
  train_scores = evaluate_reconstruction(trained, params, clips[:config.val_clips], stat_batch)
  scores = {"test_psnr": test_scores["psnr"], "test_chroma_psnr": test_scores["chroma_psnr"],
            "train_psnr": train_scores["psnr"], "train_chroma_psnr": train_scores["chroma_psnr"],
            "steps": config.steps, "test_frame_psnr": [round(v, 2) for v in test_scores["frame_psnr"]],
            "test_frame_chroma_psnr": [round(v, 2) for v in test_scores["frame_chroma_psnr"]]}
  host = jax.device_get(params)
  param_io.save_params(workdir / "export", "vae", trained.to_dict(), host, overwrite=True)
  (workdir / "export" / "metrics.json").write_text(json.dumps(scores, indent=2))
  log.info("exported %s: %s", workdir / "export", scores)
  return scores


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m train.autoencoder", description=__doc__)
  defaults = AutoencoderConfig()
  for field in dataclasses.fields(AutoencoderConfig):
    if field.name == "vae_overrides":
      parser.add_argument("--vae-overrides", metavar="JSON", help='VAEConfig fields to change on the --vae preset, '
                          'e.g. \'{"temporal_downsample": [false, false]}\'')
      continue
    # The default spelled out in the help: the formatter would hide a default of 0 (it equals False).
    parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=type(field.default),
                        default=field.default, help="(default: %(default)s)")
  args = vars(parser.parse_args(argv))
  overrides = args.pop("vae_overrides")
  if overrides is not None:
    args["vae_overrides"] = _vae_overrides(_json_object(overrides, "--vae-overrides"), "--vae-overrides")
  args.pop("debug", None)  # `cli.run` takes --debug out; a direct `main(argv)` call may still pass it
  config = dataclasses.replace(defaults, **args)
  config.model()  # an unknown --vae preset fails here, before the logging starts
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  print(json.dumps(train(config)))


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
