"""`python -m liveedit_jax.bench <name> [options]`: runs `liveedit_jax.bench.<name>.main(argv)`.

Each benchmark prints a JSON line per measurement (and a table), so results can be pasted into docs/benchmarks.md.
"""

import importlib
import pkgutil

import liveedit_jax.bench as bench_pkg
from liveedit_jax import cli

NAMES = sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if m.name not in ("timing", "__main__"))


def main(argv: list[str]) -> None:
  # The name alone is parsed here; the rest of the line is the benchmark's own (its --help included).
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.bench", description=__doc__)
  parser.add_argument("name", choices=NAMES, help="the benchmark, then its options (python -m liveedit_jax.bench "
                      "NAME --help)")
  name = parser.parse_args(argv[:1]).name
  importlib.import_module(f"liveedit_jax.bench.{name}").main(argv[1:])


if __name__ == "__main__":
  cli.run(main)
