"""Stage 1 training: bidirectional flow matching on (source, target) latent pairs.

    python -m train.stage1 --config NAME [--field value ...]   (presets: train/configs.py; options: train/cli.py)
"""

from __future__ import annotations

from liveedit_jax.cli import run
from train import cli


def main(argv: list[str] | None = None) -> None:
  cli.main(1, argv)


if __name__ == "__main__":
  run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
