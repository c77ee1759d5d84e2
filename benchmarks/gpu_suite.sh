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
if ! "$py" -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" 2>/dev/null; then
    echo "no GPU visible to JAX (jax.devices() lists none): nothing to run" | tee -a "$log"
    exit 2
fi
# name, seconds, extra arguments: the throughput step and the NUTS comparison first, they are the
# issue's anchors; the bucketed rows' per-task FLOP count (8 compiles a row) does not fit the limit
for spec in "train_throughput 240 --no-task-flops" "amortised_vs_mcmc 150" "layer_cost 90" "small_cholesky 60"; do
    set -- $spec
    name=$1 limit=$2
    shift 2
    echo "== $name (limit $limit s)" | tee -a "$log"
    timeout "$limit" "$py" "benchmarks/$name.py" --device gpu --quick "$@" > "$out/$name.tmp" 2>&1
    echo "exit $?" >> "$out/$name.tmp"
    tail -n 25 "$out/$name.tmp"
    cat "$out/$name.tmp" >> "$log" && rm "$out/$name.tmp"
    cp "benchmarks/results/$name.gpu.json" "$out/" 2>/dev/null || echo "no JSON from $name"
done
