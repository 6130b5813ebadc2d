"""Stage 3 training: DMD distillation of the 4-step chunk-causal generator.

    python -m train.stage3 --config NAME [--field value ...]   (presets: train/configs.py; options: train/cli.py)
"""

from __future__ import annotations

from liveedit_jax.cli import run
from train import cli


def main(argv: list[str] | None = None) -> None:
  cli.main(3, argv)


if __name__ == "__main__":
  run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
