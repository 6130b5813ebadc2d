"""The command line shared by `python -m train.stage1|stage2|stage3`: a preset plus field overrides.

    python -m train.stage3 --config liveedit-1.3b --steps 10 --lr 1e-4 --workdir runs/try

Every `TrainConfig` field is an option (underscores as dashes); booleans take true/false, tuples comma-separated
values. Multi-process jobs (SLURM, or JAX_COORDINATOR_ADDRESS) initialise `jax.distributed` first. Mistakes (an
unknown preset, a bad value, a missing --data-dir, --init or --score-init) are one line on stderr before any work
starts (`liveedit_jax.cli.run`; --debug for the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from liveedit_jax import cli
from liveedit_jax.param_io import read_config
from train.configs import TRAIN_PRESETS, TrainConfig
from train.loop import log_to_stderr, maybe_initialize_distributed, summary, train
from train.shards import LatentShards


def _bool(text: str) -> bool:
  if text.lower() not in ("true", "false", "1", "0"):
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
  return text.lower() in ("true", "1")


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:  # argparse would only say "invalid _floats value"
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _shown(value: typing.Any) -> str:
  """A default as it would be typed on the command line."""
  if isinstance(value, tuple):
    return ",".join(map(str, value))
  return '""' if value == "" else str(value).lower() if isinstance(value, bool) else str(value)


def preset_defaults(stage: int, field: str) -> str:
  """The help's default of `field`: one value when every preset agrees, else each preset's, as --config picks one."""
  values = {name: _shown(getattr(stages[stage], field)) for name, stages in sorted(TRAIN_PRESETS.items())
            if stage in stages}
  if len(set(values.values())) == 1:
    return next(iter(values.values()))
  return ", ".join(f"{name}={value}" for name, value in values.items())


def _parser(stage: int) -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(prog=f"python -m train.stage{stage}",
                              description=f"Stage {stage} training; see train/configs.py for the presets. An "
                              "option not given takes the --config preset's value (listed per preset where they "
                              "differ).")
  parser.add_argument("--config", required=True, choices=sorted(TRAIN_PRESETS), help="preset name")
  hints = typing.get_type_hints(TrainConfig)
  for field in dataclasses.fields(TrainConfig):
    if field.name in ("name", "stage"):
      continue
    kind = hints[field.name]
    parse = _bool if kind is bool else _floats if typing.get_origin(kind) is tuple else kind
    # SUPPRESS keeps an option not given out of the overrides (the preset decides), so the default is spelled out
    # here rather than by the help formatter, which shows argparse defaults only.
    shown = preset_defaults(stage, field.name).replace("%", "%%")
    parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=parse, default=argparse.SUPPRESS,
                        help=f"(default: {shown})")
  return parser


def parse_config(stage: int, argv: list[str] | None = None) -> TrainConfig:
  """The preset named by --config for `stage`, with the given fields overridden."""
  args = vars(_parser(stage).parse_args(argv))
  args.pop("debug", None)  # `cli.run` takes --debug out; a direct `main(argv)` call may still pass it
  return TrainConfig.preset(args.pop("config"), stage, **args)


def check_inputs(config: TrainConfig) -> None:
  """Fails in one line now, not minutes into building the mesh and the state, when an input directory is wrong."""
  if config.data_dir:
    try:
      LatentShards(config.data_dir)
    except (OSError, ValueError) as err:
      raise cli.UserError(f"--data-dir {err}") from err
  for option, path in (("--init", config.init), ("--score-init", config.score_init)):
    if path:
      try:
        read_config(path, "dit")
      except (OSError, ValueError) as err:
        raise cli.UserError(f"{option} {err}") from err


def main(stage: int, argv: list[str] | None = None) -> None:
  config = parse_config(stage, argv)
  check_inputs(config)
  log_to_stderr()
  maybe_initialize_distributed()
  history = train(config)
  print(json.dumps(history[-1] if history else {}))
  print(summary(history))
