# The rows of docs/results.md: one `python -m liveedit_jax.evaluate` call each, JSON under runs/eval (CPU, ~40 min);
# runs/synth holds the recipe's exports (python -m train.recipe synth). Then: python scripts/results_table.py
set -ex
cd "$(dirname "$0")/.."
mkdir -p runs/eval
E="python -m liveedit_jax.evaluate --split test --clips 8 --overwrite"
R=runs/synth
$E --editor source --json runs/eval/source.json
$E --editor stream --json runs/eval/s3p_sa07.json --videos runs/eval/videos --video-clips 4
$E --editor stream --dit $R/stage3_pruned/export_ema --cache-on none --json runs/eval/s3p_none.json
$E --editor stream --prune 0.5 --json runs/eval/s3p_sa05.json
$E --editor stream --prune 0.9 --json runs/eval/s3p_sa09.json
$E --editor stream --cache-on ffn --prune 0.7 --json runs/eval/s3p_ffn07.json
$E --editor stream --dit $R/stage3/export_ema --vae $R/vae/export --cache-on none --json runs/eval/s3_none.json
$E --editor stream --dit $R/stage3/export_ema --vae $R/vae/export --prune 0.7 --json runs/eval/s3_sa07.json
$E --editor stream --dit $R/stage3/export_ema --vae $R/vae/export --cache-on ffn --prune 0.7 --json runs/eval/s3_ffn07.json
python -m liveedit_jax.evaluate --split heldout --clips 8 --overwrite --editor stream --json runs/eval/heldout_s3p_sa07.json
python -m liveedit_jax.evaluate --split heldout --clips 8 --overwrite --editor source --json runs/eval/heldout_source.json
python -m liveedit_jax.evaluate --split test --clips 1 --frames 241 --overwrite --editor stream --json runs/eval/drift_241.json
$E --editor sampler --chunk-causal --dit $R/stage2/export_ema --vae $R/vae/export --steps 50 --guidance 3 --json runs/eval/s2_sampler.json
