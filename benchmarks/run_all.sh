#!/usr/bin/env bash
# Every benchmark behind benchmarks/RESULTS.md, one after another (run on an otherwise idle machine).
#   bash benchmarks/run_all.sh /tmp/bench        # logs and reports go to /tmp/bench
# Needs ../shared/data (cookies, bsdata); the peer comparisons need /work/venv_anomalib and
# /work/venv_anomavision (see benchmarks/RESULTS.md for how they were made).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/bench}"
data="${PADIM_DATA:-../shared/data}"
threads="${THREADS:-2}"
mkdir -p "$out"
py=python
run() {  # run NAME CMD...: time it, keep its output
    local name=$1; shift
    echo "== $name: $*" | tee -a "$out/commands.txt"
    /usr/bin/time -v "$@" >"$out/$name.log" 2>"$out/$name.err"
    grep -E "Elapsed|Maximum resident" "$out/$name.err" | sed "s/^/   /" | tee -a "$out/commands.txt"
}

# 1. Accuracy with default options, full-resolution metrics.
for set in cookies bsdata; do
    run "fit_$set" padim fit "$data/$set/train/good" -o "$out/$set.padim" --threads "$threads" --quiet
    run "eval_$set" padim eval "$out/$set.padim" "$data/$set" -o "$out/report_$set" --threads "$threads" --quiet
done

# 2. BSData at native resolution (1130×460 → 1136×464, as tiles with enough overlap give) against
#    resizing (256² area), on the same 200 training images.
mkdir -p "$out/bsdata200/train/good"
ls "$data/bsdata/train/good" | sort | head -200 | while read -r f; do
    ln -sf "$(realpath "$data/bsdata/train/good/$f")" "$out/bsdata200/train/good/$f"; done
ln -sfn "$(realpath "$data/bsdata/test")" "$out/bsdata200/test"
ln -sfn "$(realpath "$data/bsdata/ground_truth")" "$out/bsdata200/ground_truth"
run fit_bs_resize padim fit "$out/bsdata200/train/good" -o "$out/bs_resize.padim" --threads "$threads" --quiet
run eval_bs_resize padim eval "$out/bs_resize.padim" "$out/bsdata200" -o "$out/report_bs_resize" --threads "$threads" --quiet
run fit_bs_native padim fit "$out/bsdata200/train/good" -o "$out/bs_native.padim" --image-size 464x1136 \
    --threads "$threads" --quiet
run eval_bs_native padim eval "$out/bs_native.padim" "$out/bsdata200" -o "$out/report_bs_native" --threads "$threads" --quiet

# 3. Huge images: 100 synthetic 3872×3200 training images, default options.
run large $py benchmarks/large_images.py --root "${LARGE_ROOT:-/tmp/padim_large}" --work "$out/large" --threads "$threads"

# 4. Fit memory against the number of training images (Gaussian fit only, then with calibration).
run fit_memory $py benchmarks/fit_memory.py --data "$data/bsdata/train/good" --sizes 50 200 800 --threads "$threads"
run fit_memory_cal $py benchmarks/fit_memory.py --data "$data/bsdata/train/good" --sizes 50 200 800 \
    --threads "$threads" --folds 5

# 5. Throughput per backbone and size (random weights for torchvision backbones: speed only).
run throughput $py benchmarks/throughput.py --sizes 224 448 --random-weights --threads "$threads"

# 6. Side by side with anomalib (one thread each).
if [ -x /work/venv_anomalib/bin/python ]; then
    run anomalib_bsdata $py benchmarks/anomalib_compare.py --data "$data/bsdata" --n-train 209 --d 100 \
        --out "$out/anomalib.jsonl" --workdir "$out/anomalib_bsdata"
    run anomalib_cookies $py benchmarks/anomalib_compare.py --data "$data/cookies" --d 100 \
        --out "$out/anomalib.jsonl" --workdir "$out/anomalib_cookies"
fi
# 7. At the defaults, side by side with anomalib and AnomaVision (each in its own venv), same threads.
if [ -x /work/venv_anomalib/bin/python ] && [ -x /work/venv_anomavision/bin/python ]; then
    run peers_bsdata $py benchmarks/peers_compare.py --data "$data/bsdata" --n-train 209 --threads "$threads" \
        --out "$out/peers.jsonl"
    run peers_cookies $py benchmarks/peers_compare.py --data "$data/cookies" --threads "$threads" \
        --out "$out/peers.jsonl"
fi

# 8. Fit cost by phase (features, sums, finalize, calibration), peak RSS and model file size.
run fit_cost $py benchmarks/fit_cost.py --data "$data/bsdata/train/good" --sizes 50 209 568 --configs current --no-compare --threads "$threads"
echo "done: $out"
