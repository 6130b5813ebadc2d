"""The command line shared by `python -m train.stage1|stage2|stage3`: a preset plus field overrides.

    python -m train.stage3 --config liveedit-1.3b --steps 10 --lr 1e-4 --workdir runs/try

Every `TrainConfig` field is an option (underscores as dashes); booleans take true/false, tuples comma-separated
values. Multi-process jobs (SLURM, or JAX_COORDINATOR_ADDRESS) initialise `jax.distributed` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from train.configs import TRAIN_PRESETS, TrainConfig
from train.loop import log_to_stderr, maybe_initialize_distributed, summary, train


def _bool(text: str) -> bool:
  if text.lower() not in ("true", "false", "1", "0"):
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
  return text.lower() in ("true", "1")


def _floats(text: str) -> tuple[float, ...]:
  return tuple(float(v) for v in text.split(","))


def _parser(stage: int) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"python -m train.stage{stage}",
                                   description=f"Stage {stage} training; see train/configs.py for the presets.")
  parser.add_argument("--config", required=True, choices=sorted(TRAIN_PRESETS), help="preset name")
  hints = typing.get_type_hints(TrainConfig)
  for field in dataclasses.fields(TrainConfig):
    if field.name in ("name", "stage"):
      continue
    kind = hints[field.name]
    parse = _bool if kind is bool else _floats if typing.get_origin(kind) is tuple else kind
    parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=parse, default=argparse.SUPPRESS,
                        help="default: the preset's value (train/configs.py)")
  return parser


def parse_config(stage: int, argv: list[str] | None = None) -> TrainConfig:
  """The preset named by --config for `stage`, with the given fields overridden."""
  args = vars(_parser(stage).parse_args(argv))
  return TrainConfig.preset(args.pop("config"), stage, **args)


def main(stage: int, argv: list[str] | None = None) -> None:
  log_to_stderr()
  maybe_initialize_distributed()
  history = train(parse_config(stage, argv))
  print(json.dumps(history[-1] if history else {}))
  print(summary(history))
