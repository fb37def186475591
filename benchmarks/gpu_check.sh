#!/usr/bin/env bash
# One GPU check in one go: versions; tests/test_cuda.py (GPU against CPU) and tests/test_amp.py
# (CPU, under the machine's torch); the KD step benchmark on the GPU (about 2 minutes in all).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh     # from the repository root
#
# Installs nothing: the repository goes on PYTHONPATH and runs under the machine's own python3
# (it needs torch with CUDA, torchvision, numpy, pytest, hypothesis; matplotlib is not used).
# Writes, under $OUT (6 files): log.txt (everything printed), versions.txt, pytest.txt,
# cuda_checks.jsonl (what tests/test_cuda.py measured), step_overhead_cuda.json (the benchmark)
# and benchmarks.md (the page as the benchmark re-rendered it: only its GPU section changes).
# In the repository's copy it writes the same two results under benchmarks/results/ (ignored
# by git) and adds the GPU section to docs/benchmarks.md; bring them home with
#   cp $OUT/step_overhead_cuda.json $OUT/cuda_checks.jsonl benchmarks/results/
#   python benchmarks/report.py --section step_overhead_cuda
# A failing step is reported and the next one still runs; the exit status is the first failure.
set -u -o pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ROUNDS=${ROUNDS:-20}  # interleaved rounds; a round times 41 whole training steps
status=0
fail() { [ "$status" != 0 ] || status=$1; }  # keep the first failure's code

main() {
    echo "== versions"
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        nvidia-smi
        "$PY" -c 'import sys, torch, torchvision, numpy
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "torchvision", torchvision.__version__,
      "numpy", numpy.__version__)
print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'
    } 2>&1 | tee "$OUT/versions.txt" || fail 1

    echo "== tests: CUDA checks (tests/test_cuda.py) and the CPU AMP tests (tests/test_amp.py)"
    rm -f benchmarks/results/cuda_checks.jsonl
    mkdir -p benchmarks/results
    MOKD_CUDA_CHECKS="$PWD/benchmarks/results/cuda_checks.jsonl" \
        timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_amp.py \
        2>&1 | tee "$OUT/pytest.txt" || fail 2
    cp benchmarks/results/cuda_checks.jsonl "$OUT/" 2>/dev/null

    echo "== benchmark: KD step overhead on the GPU (224 px, batch 64, bf16 autocast)"
    timeout 270 "$PY" benchmarks/step_overhead.py --device cuda --rounds "$ROUNDS" \
        || fail 3
    cp benchmarks/results/step_overhead_cuda.json docs/benchmarks.md "$OUT/" 2>/dev/null
    echo "== done: status $status"
    return "$status"
}

main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
