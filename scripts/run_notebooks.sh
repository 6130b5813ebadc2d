#!/usr/bin/env bash
# Executes the notebooks in place with their default (full) sizes, so their committed outputs are regenerated:
#   pip install -e '.[notebooks]'
#   bash scripts/run_notebooks.sh                       # every notebook under notebooks/
#   bash scripts/run_notebooks.sh notebooks/cache_placement.ipynb
# The environment variables the notebooks document (LIVEEDIT_DIT, LIVEEDIT_NOTEBOOK_CHUNKS, ...) pass through,
# e.g. LIVEEDIT_DIT=runs/real/dit bash scripts/run_notebooks.sh to study a converted checkpoint.
# MPLBACKEND is unset: nbconvert's kernel then uses the inline backend, which embeds the plots as PNG.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
  set -- notebooks/*.ipynb
fi
for notebook in "$@"; do
  echo "executing $notebook" >&2
  # No cell timeout: the full run takes minutes on a 2-core CPU.
  env -u MPLBACKEND jupyter nbconvert --to notebook --execute --inplace \
    --ExecutePreprocessor.timeout=-1 "$notebook"
  echo "$notebook: $(du -h "$notebook" | cut -f1)" >&2
done
