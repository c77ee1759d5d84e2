#!/usr/bin/env bash
# The prepared GPU run: the speed anchors with --device gpu --quick, each under its own time
# limit so the whole stays under 10 minutes. Writes benchmarks/results/NAME.gpu.json beside the
# CPU files, and copies the JSON and one log to $OUT when it is set (the device tool's folder).
#
#   bash benchmarks/gpu_suite.sh            # from the repository root, on a machine with a GPU
#
# Needs jax with CUDA, flax, optax, numpyro, chex, tqdm, pyyaml; the package is imported from
# the checkout (PYTHONPATH), so nothing is installed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_suite}"
mkdir -p "$out"
py="${PYTHON:-python3}"
log="$out/suite.log"  # one log and at most four JSON files: the device tool returns 8 files at most
nvidia-smi -L 2>&1 | tee "$log"
"$py" -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$log"
# name, seconds: the throughput step and the NUTS comparison first, they are the issue's anchors
for spec in "train_throughput 240" "amortised_vs_mcmc 150" "layer_cost 90" "small_cholesky 60"; do
    set -- $spec
    echo "== $1 (limit $2 s)" | tee -a "$log"
    timeout "$2" "$py" "benchmarks/$1.py" --device gpu --quick > "$out/$1.tmp" 2>&1
    echo "exit $?" >> "$out/$1.tmp"
    tail -n 25 "$out/$1.tmp"
    cat "$out/$1.tmp" >> "$log" && rm "$out/$1.tmp"
    cp "benchmarks/results/$1.gpu.json" "$out/" 2>/dev/null || echo "no JSON from $1"
done
