"""Stage 2 training: chunk-causal teacher forcing.

    python -m train.stage2 --config NAME [--field value ...]   (presets: train/configs.py; options: train/cli.py)
"""

from __future__ import annotations

import sys

from train import cli


def main(argv: list[str] | None = None) -> None:
  cli.main(2, argv)


if __name__ == "__main__":
  main(sys.argv[1:])
