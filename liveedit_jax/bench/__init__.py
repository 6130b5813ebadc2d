"""GPU benchmarks: `python -m liveedit_jax.bench <name> [options]`, one module per name (see __main__)."""
