#!/usr/bin/env bash
# GPU tests and benchmarks in one call; results under $OUT (or ./out).
#
#   scripts/gpu_check.sh [SECTION ...]     SECTION: env tests stream mask vae kernels train e2e (default: all),
#                                          or one of the sections below
#
#   scripts/gpu_check.sh hopper            the Mosaic GPU kernel alone: its GPU tests, then chunk-causal and teacher
#                                          forcing against cuDNN
#   scripts/gpu_check.sh cycles            SM cycles of the Mosaic GPU kernels under Nsight Compute (clock-independent,
#                                          for comparing kernel versions on a power-capped GPU)
#   scripts/gpu_check.sh triton            the jax-triton kernels (adaLN, q/k RMSNorm + RoPE): GPU tests and bench
#   RECIPE_ARGS="--until data --max-seconds 400" scripts/gpu_check.sh recipe
#                                          the default model's recipe (train.recipe synth) in /tmp/synth, resumable
#                                          by the next call on the same machine; the autoencoder's metrics to $OUT;
#                                          RECIPE_AUTOENCODER='{"latent_noise": 0}' passes --autoencoder (one word)
#   scripts/gpu_check.sh recipe_pack       the finished recipe's packages (bf16): the default model (stage 3 pruned)
#                                          and the DiTs of stages 1, 2, 3 (the studies'), as $OUT/models.tar.part*
#                                          (≤ 15 MB each: `cat models.tar.part* | tar -x`) with the TensorBoard logs
#   AE_SWEEP='{"a": {"steps": 400}, "b": {"steps": 600, "short_steps": 400}}' scripts/gpu_check.sh ae_sweep
#                                          short autoencoder variants (scripts/autoencoder_sweep.py)
#
# Runs from the repository root with the device's own JAX (no install; pytest in one process, `-o addopts=-ra`:
# one GPU, and no pytest-xdist there); optional wheels in .whl/ (jax-triton;
# tokamax with the dependencies the image lacks, docs/benchmarks.md, fifth session; for the recipe, stream and
# evaluate sections the project's dependencies the image lacks: grain, array_record, portpicker, tensorboardX, ftfy,
# wcwidth, e.g. `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
# --platform any grain array_record portpicker tensorboardX ftfy wcwidth -d .whl`) are installed into /tmp/site
# first (see the device README). Each section has its own time limit so one slow section does not
# lose the others' results.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(env tests stream mask vae kernels train e2e)

run() {  # run NAME LIMIT_S CMD...: tee output to $OUT/NAME.log, keep going on failure
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -vE '^(W|I)[0-9]{4} ' | tail -n 60
  echo "=== $name exit ${PIPESTATUS[0]}"
}

for section in "${sections[@]}"; do
  case $section in
    env) run env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
         python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"' ;;
    tests) run gpu_tests 480 python3 -m pytest -o addopts=-ra -q -m gpu -p no:cacheprovider tests/test_gpu_attention.py \
             tests/test_kernels_attention.py tests/test_kernels_hopper.py tests/test_kernels_dispatch.py \
             tests/test_kernels_adaln.py tests/test_kernels_rms_norm_rope.py ;;
    stream) run bench_stream 300 python3 -m liveedit_jax.bench stream --refresh clean none --chunks 10 ;;
    mask) run bench_mask 570 python3 -m liveedit_jax.bench stream --cache-on self_attn ffn --static-kv recompute reuse \
            --prune 0 0.5 0.7 0.9 --chunks 8 ;;
    vae) run bench_vae 240 python3 -m liveedit_jax.bench vae ;;
    hopper) run hopper_tests 300 python3 -m pytest -o addopts=-ra -q -x -m gpu -p no:cacheprovider --tb=short tests/test_kernels_hopper.py
            run bench_hopper 270 python3 -m liveedit_kernels.bench --impls hopper,cudnn --only _ ;;
    cycles) run ncu_cycles 300 bash -c '/usr/local/cuda/bin/ncu --clock-control none --csv --print-units base \
              --metrics gpu__time_duration.sum,sm__cycles_elapsed.max -k regex:entry_mosaic --log-file "$0" \
              python3 -m liveedit_kernels.bench --impls hopper --only _ --iters 3 >/dev/null' "$OUT/ncu_cycles.csv"
            run ncu_summary 30 python3 scripts/ncu_summary.py "$OUT/ncu_cycles.csv" ;;
    triton) run triton_tests 240 python3 -m pytest -o addopts=-ra -q -m gpu -p no:cacheprovider --tb=short \
              tests/test_kernels_adaln.py tests/test_kernels_rms_norm_rope.py
            run bench_adaln 120 python3 -m liveedit_kernels.bench --only adaln --iters 20
            run bench_rms_norm_rope 120 python3 -m liveedit_kernels.bench --only rms_norm_rope --iters 20 ;;
    kernels) run bench_kernels 330 python3 -m liveedit_kernels.bench --write-table "$OUT/measured_kernels.json" ;;
    train) run bench_train 540 python3 -m liveedit_jax.bench train --stage 3 --config liveedit-1.3b ;;
    e2e) run bench_e2e 420 python3 -m liveedit_jax.bench e2e
         # TAEHV (taew2_1's sizes, random weights) decoding after Wan's encoder, then both ways
         run bench_e2e_taehv_decoder 420 python3 -m liveedit_jax.bench e2e --decoder-preset taew2_1
         run bench_e2e_taehv_both 420 python3 -m liveedit_jax.bench e2e --encoder-preset taew2_1 \
           --decoder-preset taew2_1
         # With several GPUs: the autoencoders on one and the DiT on another, pipelined (issue 23: >= 1.8x the
         # one-GPU bench_e2e above, in the same run)
         if [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" -gt 1 ]; then
           run bench_e2e_devices2 420 python3 -m liveedit_jax.bench e2e --devices 2
           run bench_e2e_devices2_taehv_decoder 420 python3 -m liveedit_jax.bench e2e --devices 2 --decoder-preset taew2_1
         fi ;;
    recipe) run recipe 590 python3 -m train.recipe synth --workdir "${RECIPE_WORKDIR:-/tmp/synth}" ${RECIPE_ARGS:-} \
              ${RECIPE_AUTOENCODER:+--autoencoder "$RECIPE_AUTOENCODER"}
            cp "${RECIPE_WORKDIR:-/tmp/synth}/vae/export/metrics.json" "$OUT/autoencoder_metrics.json" 2>/dev/null ;;
    recipe_pack) run recipe_pack 300 bash -c 'set -e; w=${RECIPE_WORKDIR:-/tmp/synth}
              rm -rf /tmp/models /tmp/pack_*; mkdir -p /tmp/models
              for stage in stage3_pruned stage1 stage2 stage3; do
                [ -d "$w/$stage/export_ema" ] || { echo "no $stage export in $w"; continue; }
                python3 -m train.recipe synth --workdir "$w" --package "/tmp/pack_$stage" --dit "$stage" \
                  ${RECIPE_AUTOENCODER:+--autoencoder "$RECIPE_AUTOENCODER"}
                if [ $stage = stage3_pruned ]; then mv "/tmp/pack_$stage" /tmp/models/synth
                else mv "/tmp/pack_$stage/dit" "/tmp/models/${stage}_dit"; fi
              done
              (cd "$w" && find . -path "*tensorboard*" -type f | tar -cf /tmp/models/tensorboard.tar -T -)
              (cd /tmp && tar -cf - models) | split -b 15m - "$0/models.tar.part"; ls -la "$0"' "$OUT" ;;
    ae_sweep) run ae_sweep 590 python3 scripts/autoencoder_sweep.py --root /tmp/ae_sweep --out "$OUT/ae_sweep.json" \
                "${AE_SWEEP:?set AE_SWEEP to the variants}" ;;
    *) echo "unknown section $section" ;;
  esac
done
