"""Training-step benchmark: one compiled train step of a stage, timed, with memory and MFU.

    python -m liveedit_jax.bench train --stage 3 --config liveedit-1.3b --frames 21 --height 480 --width 832
    python -m liveedit_jax.bench train --stage 3 --config tiny --frames 6 --height 32 --width 32 --iters 1  # CPU

Random params of the preset's model, born sharded on a ("data", "fsdp") mesh over every local device (fsdp = all
of them, as the presets train), a random batch of `--batch` clips (default one per device), and the step of
`python -m train.stageN` (same config, precision, remat, donation), compiled once. --height/--width are pixels
(latents are 8× smaller), --frames latent frames.

Stage 3 alternates two kinds of step, timed apart: a generator step (generator update + critic update) once per
gen_every, critic-only steps otherwise; "average" weighs them 1 : gen_every − 1. The exit step is random, so a
stage-3 time averages over it.

FLOPs are analytic (`train/flops.py`: model FLOPs, no remat recompute; XLA's cost_analysis counts a scanned layer
once); MFU divides by the device's dense bf16 peak (`train.flops.PEAK_TFLOPS`, or --peak-tflops). One JSON line per
measurement, then a table.
"""

from __future__ import annotations

import json
import statistics
import time

import jax

from liveedit_jax import cli
from liveedit_jax.bench.timing import peak_memory_gib
from train import sharding, stages, step as train_step
from train.configs import TRAIN_PRESETS, TrainConfig
from train.flops import peak_flops_per_device


def _random_batch(config: TrainConfig, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  dit = config.dit()
  latent = (config.batch_size, config.frames, config.height, config.width, dit.latent_channels)

  def make(key):
    ks = jax.random.split(key, 3)
    return {"source": jax.random.normal(ks[0], latent), "target": jax.random.normal(ks[1], latent),
            "context": jax.random.normal(ks[2], (config.batch_size, dit.text_len, dit.text_dim))}

  return jax.jit(make, out_shardings=sharding.batch_sharding(mesh))(jax.random.key(1, impl=train_step.RNG_IMPL))


def _parse_args(argv: list[str]):
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.bench train", description=__doc__)
  parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=3)
  parser.add_argument("--config", choices=sorted(TRAIN_PRESETS), default="liveedit-1.3b")
  parser.add_argument("--frames", type=int, default=21, help="latent frames")
  parser.add_argument("--height", type=int, default=480, help="pixels, a multiple of 16")
  parser.add_argument("--width", type=int, default=832, help="pixels, a multiple of 16")
  parser.add_argument("--batch", type=int, help="global batch (default: one clip per device)")
  parser.add_argument("--peak-tflops", type=float, default=0.0, help="per device, for MFU (default: by device)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (a round: gen_every steps in stage 3)")
  parser.add_argument("--iters", type=int, default=3, help="timed rounds")
  return parser.parse_args(argv)


def _time_steps(step_fn, state, batch, frozen, kinds: list[str], warmup: int, iters: int) -> dict[str, float]:
  """The median seconds of each kind of step, over `iters` rounds of `kinds` after `warmup` untimed ones."""
  times: dict[str, list[float]] = {k: [] for k in kinds}
  for round_index in range(warmup + iters):
    for kind in kinds:
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch, frozen)
      jax.block_until_ready(metrics)
      if round_index >= warmup:
        times[kind].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def _print_table(rows: list[dict]) -> None:
  print(f"\n{'step':<11}{'ms':>10}{'TFLOP':>10}{'TFLOP/s/dev':>13}{'MFU':>7}{'compile s':>11}{'peak GiB':>10}")
  for r in rows:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    peak_gib = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
    print(f"{r['step']:<11}{r['ms']:>10.1f}{r['model_tflop']:>10.2f}{r['tflops_per_device']:>13.2f}{mfu:>7}"
          f"{r['compile_s']:>11.1f}{peak_gib:>10}")


def main(argv: list[str]) -> None:
  args = _parse_args(argv)
  devices = jax.local_devices()
  config = TrainConfig.preset(args.config, args.stage, frames=args.frames, height=args.height // 8,
                              width=args.width // 8, batch_size=args.batch or len(devices), mesh_data=1,
                              mesh_fsdp=len(devices), peak_tflops=args.peak_tflops)
  mesh = sharding.make_mesh(config.mesh_data, config.mesh_fsdp, devices)
  state, frozen = train_step.random_init(config, mesh)
  batch = _random_batch(config, mesh)
  start = time.perf_counter()
  step_fn = train_step.compile_step(config, mesh, state, batch, frozen)
  compile_s = time.perf_counter() - start
  memory = step_fn.memory_analysis()

  stage = stages.of(config)
  kind_flops = stage.turn_flops(config)
  seconds = _time_steps(step_fn, state, batch, frozen, stage.turns(config), args.warmup, args.iters)

  peak = peak_flops_per_device(config)
  n = len(devices)
  base = {"bench": "train", "stage": config.stage, "config": args.config, "frames": config.frames,
          "height": args.height, "width": args.width, "batch": config.batch_size, "devices": n,
          "mesh": dict(mesh.shape), "dtype": config.compute_dtype, "remat": config.remat,
          "device": devices[0].device_kind, "compile_s": compile_s, "peak_gib": peak_memory_gib(),
          "compiled_temp_gib": memory.temp_size_in_bytes / 2**30 if memory else None,
          "compiled_argument_gib": memory.argument_size_in_bytes / 2**30 if memory else None,
          "flops_source": "analytic (train/flops.py)"}
  if len(seconds) > 1:  # stage 3's turns, and their average step
    seconds["average"] = sum(seconds[kind] for kind in stage.turns(config)) / config.gen_every
    kind_flops["average"] = stage.flops(config, config.batch_size)["step"]
  rows = []
  for kind, s in seconds.items():
    tflops = kind_flops[kind] / s / n / 1e12
    row = {**base, "step": kind, "ms": 1e3 * s, "model_tflop": kind_flops[kind] / 1e12, "tflops_per_device": tflops,
           "mfu": tflops * 1e12 / peak if peak else None}
    rows.append(row)
    print(json.dumps(row), flush=True)
  _print_table(rows)
