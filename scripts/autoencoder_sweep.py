"""Short autoencoder runs side by side: each variant is `train.autoencoder`'s run with a few config fields changed.

    python scripts/autoencoder_sweep.py --root /tmp/ae_sweep --out sweep.json \\
        '{"long": {"steps": 400}, "curriculum": {"steps": 600, "short_steps": 400}, "colour": {"chroma_weight": 10}}'

Each NAME: {fields} trains `AutoencoderConfig` with those fields (the rest the synth recipe's, its workdir
`<root>/NAME`, resumable like any autoencoder run) and exports it; the summary (one metrics.json per variant: test
PSNR, chroma PSNR and PSNR per frame on whole test clips) is rewritten to `--out` after every variant, so a command
that runs out of time keeps the finished ones. The variants run one after another in this process: two processes
on one GPU would each preallocate most of its memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from liveedit_jax import cli
from train import autoencoder


def parse_variants(text: str) -> dict[str, dict]:
  """'{"NAME": {fields}, ...}' → {NAME: fields}, the fields checked against AutoencoderConfig."""
  try:
    variants = json.loads(text)
  except json.JSONDecodeError as err:
    raise SystemExit(f"the variants are not JSON ({err})") from None
  if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
    raise SystemExit('the variants are one JSON object {"NAME": {"field": value, ...}, ...}')
  try:
    return {name: autoencoder.check_overrides(fields, f"variant {name}")
            for name, fields in variants.items()}
  except cli.UserError as err:
    raise SystemExit(str(err)) from None


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("variants", help='{"NAME": {AutoencoderConfig fields}, ...}')
  parser.add_argument("--root", type=Path, required=True, help="each variant's workdir is ROOT/NAME")
  parser.add_argument("--out", type=Path, required=True, help="the summary JSON")
  parser.add_argument("--base", default="synth", help="the recipe whose autoencoder config the variants change")
  args = parser.parse_args(argv)
  from train.recipe import RECIPES  # noqa: PLC0415 (after argument errors, which need no JAX)

  variants = parse_variants(args.variants)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  summary = {}
  for name, overrides in variants.items():
    config = dataclasses.replace(RECIPES[args.base].autoencoder, **overrides, workdir=str(args.root / name))
    summary[name] = {"overrides": overrides, "metrics": autoencoder.train(config)}
    args.out.write_text(json.dumps(summary, indent=1))
    print(name, json.dumps(summary[name]), flush=True)


if __name__ == "__main__":
  main()
