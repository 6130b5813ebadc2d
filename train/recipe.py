"""The default model's whole recipe, from nothing to the shipped weights, with fixed seeds.

    python -m train.recipe synth                                  # every phase not yet done, in order
    python -m train.recipe synth --until stage1                   # stop after a phase
    python -m train.recipe synth --max-seconds 540                # start no phase after 9 minutes (resumable)
    python -m train.recipe synth --package liveedit_jax/models/synth --dit stage3_pruned

Phases (each skipped when its output exists, and each resumable from its checkpoints, so the recipe can run as a
series of short commands on one machine):
  text_encoder   a word-level tokenizer over the benchmark's instructions + a random-init umT5 (train.text_encoder)
  autoencoder    the VAE on procedural clips (train.autoencoder)
  data           `clips` training examples encoded by both (train.prepare_data --synthetic-edits)
  stage1         bidirectional flow matching from scratch                      (train.stage1 --config synth)
  stage2         chunk-causal teacher forcing from stage 1's EMA               (train.stage2 --config synth)
  stage3         DMD: generator from stage 2's EMA, real and fake score from stage 1's EMA (train.stage3)
  stage3_pruned  stage 3 with LiveEdit's pruned-noise rollout (the Mask Cache at prune 0.7 in the self-rollout)
Every phase logs to TensorBoard under its directory (`<workdir>/<phase>/tensorboard`). `--package` writes the
shipped directories (bfloat16 safetensors): `dit` (the chosen stage 3's EMA), `vae`, `text_encoder`, and a
`recipe.json` with the clip size, the sources and the sha256 of every file (`liveedit_jax.default_model` checks
them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_dtypes

from liveedit_jax import cli, param_io
from liveedit_jax.synthetic import FPS
from liveedit_jax.vae import VAEConfig
from train import autoencoder, text_encoder
from train.configs import TrainConfig

log = logging.getLogger("train.recipe")

PHASES = ("text_encoder", "autoencoder", "data", "stage1", "stage2", "stage3", "stage3_pruned")
PRUNE_RATIO = 0.7  # the pruned-noise rollout's, the streaming default's


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One model family's recipe: the clip size, the parts' presets and the training presets."""

  name: str
  train: str  # training preset (train.configs.TRAIN_PRESETS)
  text_encoder: str  # umT5 preset
  autoencoder: autoencoder.AutoencoderConfig
  clips: int  # training examples of the data phase
  height: int
  width: int
  workdir: str
  stage_overrides: tuple[tuple[str, Any], ...] = ()  # applied to every stage's TrainConfig (tests)

  @property
  def frames(self) -> int:
    """Video frames per training clip: the training preset's latent clip of F frames through the autoencoder's k×
    time compression, 1 + k·(F − 1) (so an autoencoder of another k keeps the DiT's clip, and its cost)."""
    return 1 + self.autoencoder.model().temporal_factor * (TrainConfig.preset(self.train, 1).frames - 1)

  def stage(self, phase: str) -> TrainConfig:
    """The TrainConfig of a stage phase, its inputs the earlier phases' outputs."""
    out = self.outputs()
    stage = int(phase[len("stage")])
    init = {1: {}, 2: {"init": str(out["stage1"])},
            3: {"init": str(out["stage2"]), "score_init": str(out["stage1"])}}[stage]
    pruned = {"pruned_rollout": PRUNE_RATIO} if phase == "stage3_pruned" else {}
    return TrainConfig.preset(self.train, stage, workdir=str(Path(self.workdir) / phase), data_dir=str(out["data"]),
                              **init, **pruned, **dict(self.stage_overrides))

  def outputs(self) -> dict[str, Path]:
    """Each phase's finished output."""
    root = Path(self.workdir)
    return {"text_encoder": root / "text_encoder", "autoencoder": root / "vae" / "export",
            "data": root / "data" / "train",
            **{phase: root / phase / "export_ema" for phase in PHASES if phase.startswith("stage")}}


RECIPES = {
    # 9 latent frames of 32×32 (3 chunks): 33-frame clips at 128×128 through the synth VAE (4× space and time).
    # On one H200 (2026-12-03): text encoder + autoencoder (49-frame clips) 10 min, data 2.5, stages 1 to 3-pruned 9.
    "synth": Recipe(name="synth", train="synth", text_encoder="synth",
                    autoencoder=autoencoder.AutoencoderConfig(workdir="runs/synth/vae"), clips=6144,
                    height=128, width=128, workdir="runs/synth"),
    # Toy sizes for the CPU test of the whole recipe (seconds per phase): the tiny VAE (8×), umT5 and DiT.
    "tiny": Recipe(name="tiny", train="tiny", text_encoder="tiny",
                   autoencoder=autoencoder.AutoencoderConfig(
                       vae="tiny", compute_dtype="float32", frames=5, height=32, width=32, clips=4, crop=0,
                       batch_size=2, steps=2, warmup=1, checkpoint_every=1, log_every=1, stat_clips=2, val_clips=2,
                       workers=1, workdir="runs/tiny-recipe/vae"),
                   clips=4, height=32, width=32, workdir="runs/tiny-recipe",
                   stage_overrides=(("steps", 2), ("batch_size", 2), ("checkpoint_every", 1), ("ema_start", 0),
                                    ("gen_every", 1), ("data_threads", 1))),
}


def with_workdir(recipe: Recipe, workdir: str) -> Recipe:
  """The recipe writing under `workdir` (the autoencoder under `<workdir>/vae`)."""
  return dataclasses.replace(recipe, workdir=workdir, autoencoder=dataclasses.replace(
      recipe.autoencoder, workdir=str(Path(workdir) / "vae")))


def check_autoencoder(recipe: Recipe) -> None:
  """Raises `cli.UserError` if the exported autoencoder is not the one `recipe` describes: the clip length of the
  data and of the package follows its time compression, so every call of a run passes the same --autoencoder."""
  export = recipe.outputs()["autoencoder"]
  if not export.exists():
    return
  trained = VAEConfig.from_dict(param_io.read_config(export, "vae")).temporal_factor
  asked = recipe.autoencoder.model().temporal_factor
  if trained != asked:
    raise cli.UserError(f"{export} compresses time {trained}×, this run's --autoencoder {asked}×: pass the "
                        f"--autoencoder the autoencoder phase was run with")


def run_phase(recipe: Recipe, phase: str, deadline: float | None) -> bool:
  """Runs one phase; returns whether it finished (the autoencoder stops at the deadline, to be resumed)."""
  out = recipe.outputs()
  if phase == "text_encoder":
    text_encoder.build(out[phase], recipe.text_encoder)
  elif phase == "autoencoder":
    return autoencoder.train(recipe.autoencoder, deadline) is not None
  elif phase == "data":
    from train import prepare_data  # noqa: PLC0415 (imports Grain)

    prepare_data.main(["--synthetic-edits", str(recipe.clips), "--split", "train", "--vae", str(out["autoencoder"]),
                       "--text-encoder", str(out["text_encoder"]), "--frames", str(recipe.frames), "--height",
                       str(recipe.height), "--width", str(recipe.width), "--out", str(out[phase])])
  else:
    from train.loop import train  # noqa: PLC0415 (imports Grain)

    train(recipe.stage(phase))
  return True


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def package(recipe: Recipe, destination: Path, dit_phase: str = "stage3") -> Path:
  """Writes the shipped model directories (bfloat16 safetensors) and their recipe.json under `destination`."""
  out = recipe.outputs()
  sources = {"dit": out[dit_phase], "vae": out["autoencoder"], "text_encoder": out["text_encoder"]}
  kinds = {"dit": "dit", "vae": "vae", "text_encoder": "umt5"}
  for name, source in sources.items():
    meta = json.loads((source / param_io.CONFIG_FILE).read_text())
    params = param_io.cast_tree(jax.device_get(param_io.load_params(source)), ml_dtypes.bfloat16)
    files = {str(p.relative_to(source)): p for p in source.rglob("*") if p.is_file()
             and p.relative_to(source).parts[0] not in (param_io.PARAMS_DIR, param_io.SAFETENSORS_FILE, param_io.CONFIG_FILE,
                                                  "metrics.json")}
    param_io.save_params(destination / name, kinds[name], meta["config"], params, overwrite=True, files=files,
                         safetensors=True)
  hashes = {str(p.relative_to(destination)): _sha256(p) for name in sources
            for p in sorted((destination / name).rglob("*")) if p.is_file()}
  (destination / "recipe.json").write_text(json.dumps(
      {"recipe": recipe.name, "frames": recipe.frames, "height": recipe.height, "width": recipe.width, "fps": FPS,
       "sources": {name: f"{source} ({dit_phase})" if name == "dit" else str(source)
                   for name, source in sources.items()},
       "files": hashes}, indent=2) + "\n")
  return destination


def run(recipe: Recipe, until: str = PHASES[-1], max_seconds: float | None = None) -> bool:
  """Runs every phase up to `until` whose output is missing; returns whether all of them are done."""
  deadline = None if max_seconds is None else time.time() + max_seconds
  check_autoencoder(recipe)
  for phase in PHASES[:PHASES.index(until) + 1]:
    if recipe.outputs()[phase].exists():
      log.info("%s: done (%s)", phase, recipe.outputs()[phase])
      continue
    if deadline is not None and time.time() > deadline:
      log.info("out of time before %s; the next call resumes there", phase)
      return False
    started = time.perf_counter()
    log.info("%s: starting", phase)
    if not run_phase(recipe, phase, deadline):
      return False
    log.info("%s: finished in %.0f s", phase, time.perf_counter() - started)
  return True


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m train.recipe", description=__doc__)
  parser.add_argument("recipe", choices=sorted(RECIPES), help="the model family")
  parser.add_argument("--workdir", help="where the phases write (default: the recipe's, e.g. runs/synth)")
  parser.add_argument("--until", choices=PHASES, default=PHASES[-1], help="the last phase to run")
  parser.add_argument("--max-seconds", type=float, help="start no phase after this long, and stop the autoencoder "
                      "at it (checkpointed; the next call resumes)")
  parser.add_argument("--autoencoder", metavar="JSON", help='AutoencoderConfig fields to change for this run, e.g. '
                      '\'{"vae_overrides": {"temporal_downsample": [false, true]}}\' (every call of one run '
                      'passes the same: the data\'s clip length follows the autoencoder\'s time compression)')
  parser.add_argument("--package", type=Path, metavar="DIR", help="write the shipped model directories there")
  parser.add_argument("--dit", choices=[p for p in PHASES if p.startswith("stage")], default="stage3",
                      help="the stage whose EMA --package ships as the DiT (the default model's is a stage 3; the "
                      "earlier stages' packages serve the notebook studies)")
  args = parser.parse_args(argv)
  recipe = RECIPES[args.recipe] if args.workdir is None else with_workdir(RECIPES[args.recipe], args.workdir)
  if args.autoencoder:
    recipe = dataclasses.replace(recipe, autoencoder=dataclasses.replace(
        recipe.autoencoder, **autoencoder.parse_overrides(args.autoencoder, "--autoencoder")))
  if args.package:
    # Before loading anything: a phase not yet run would otherwise surface as a missing config.json deep inside.
    out = recipe.outputs()
    missing = [f"{phase} ({out[phase]})" for phase in ("text_encoder", "autoencoder", args.dit)
               if not out[phase].exists()]
    if missing:
      command = f"python -m train.recipe {args.recipe}" + (f" --workdir {args.workdir}" if args.workdir else "")
      raise cli.UserError(f"--package needs the finished phases {', '.join(missing)}; run `{command}` first")
    check_autoencoder(recipe)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save lines
  if args.package:
    print(package(recipe, args.package, args.dit))
    return
  run(recipe, args.until, args.max_seconds)


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
