"""Stage 2 training: chunk-causal teacher forcing.

    python -m train.stage2 --config NAME [--field value ...]   (presets: train/configs.py; options: train/cli.py)
"""

from __future__ import annotations

from liveedit_jax.cli import run
from train import cli


def main(argv: list[str] | None = None) -> None:
  cli.main(2, argv)


if __name__ == "__main__":
  run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
