"""Stage 1 training: bidirectional flow matching on (source, target) latent pairs.

    python -m train.stage1 --config NAME [--field value ...]   (presets: train/configs.py; options: train/cli.py)
"""

from __future__ import annotations

import sys

from train import cli


def main(argv: list[str] | None = None) -> None:
  cli.main(1, argv)


if __name__ == "__main__":
  main(sys.argv[1:])
