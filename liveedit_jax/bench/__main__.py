"""`python -m liveedit_jax.bench <name> [options]`: runs `liveedit_jax.bench.<name>.main(argv)`.

Each benchmark prints a JSON line per measurement (and a table), so results can be pasted into docs/benchmarks.md.
"""

import importlib
import pkgutil
import sys

import liveedit_jax.bench as bench_pkg


def main() -> None:
  names = sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if m.name not in ("timing",))
  if len(sys.argv) < 2 or sys.argv[1] not in names:
    sys.exit(f"usage: python -m liveedit_jax.bench {{{','.join(names)}}} [options]")
  importlib.import_module(f"liveedit_jax.bench.{sys.argv[1]}").main(sys.argv[2:])


if __name__ == "__main__":
  main()
