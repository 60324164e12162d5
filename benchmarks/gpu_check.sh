#!/usr/bin/env bash
# One check for a GPU session (written for an H200, Python 3.12, torch 2.11, Triton 3.6, 16 cores, no
# internet), under 9 minutes in all:
#   1. build the extensions in place (CPU + CUDA C++),
#   2. run every test marked `cuda` (Triton + CUDA C++ kernels at real sizes, opcheck, compile, CUDA graphs),
#   3. autotune the Triton kernels -> kernels/configs/<gpu>.json,
#   4. run the benchmark (Llama-3 8B/70B shapes x M in {1,16,64,256,2048}),
# copy logs, the tuned JSON and the results into $OUT, and print a short speed-up table last.
# Each stage has a time cap taken from what is left of the 9 minutes; a failed stage is reported, and the
# next ones still run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
unset TRITON_INTERPRET

TOTAL_S=${GPU_CHECK_TOTAL_S:-530}
start=$(date +%s)
left() { echo $(( TOTAL_S - ($(date +%s) - start) )); }
cap() { local want=$1 reserve=$2 l; l=$(( $(left) - reserve )); (( l < want )) && want=$l; (( want < 10 )) && want=10; echo "$want"; }
log() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*"; }
declare -A STATUS

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

log "1/4 build (MAX_JOBS=16 setup.py build_ext --inplace)"
if MAX_JOBS=16 timeout "$(cap 200 330)" python setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  STATUS[build]=ok
else
  STATUS[build]="FAILED rc=$? (tail in build.log); Triton only"
  tail -n 15 "$OUT/build.log"
fi
python -c "import llmlite_kernels as L; print(L.backends())" 2>&1 | tee "$OUT/backends.txt"

log "2/4 GPU tests (pytest -m cuda tests)"
timeout "$(cap 170 230)" python -m pytest tests -m cuda -q -p no:cacheprovider -rs --junitxml="$OUT/tests.xml" \
  >"$OUT/tests.log" 2>&1
rc=$?; STATUS[tests]=$([[ $rc == 0 ]] && echo ok || echo "FAILED rc=$rc")
tail -n 25 "$OUT/tests.log"

log "3/4 autotune -> kernels/configs/<gpu>.json"
budget=$(( $(cap 110 140) - 30 ))
timeout "$(( budget + 40 ))" python -c "import llmlite_kernels.ops.triton_backend as t; t.load()
from llmlite_kernels.kernels import autotune; raise SystemExit(autotune.main(['--budget-s', '$budget']))" \
  >"$OUT/autotune.log" 2>&1
rc=$?; STATUS[autotune]=$([[ $rc == 0 ]] && echo ok || echo "FAILED rc=$rc")
tail -n 20 "$OUT/autotune.log"
cp kernels/configs/*.json "$OUT/" 2>/dev/null

log "4/4 benchmark"
bench_s=$(cap 240 15)
timeout "$bench_s" python benchmarks/bench_gpu_lowbit.py --ops "g128 asym" cuda_cpp "2:4" --budget-s $(( bench_s > 60 ? bench_s - 40 : 20 )) \
  --csv "$OUT/bench.csv" --json "$OUT/bench.json" --png "$OUT/bench.png" >"$OUT/bench.txt" 2>&1
rc=$?; STATUS[bench]=$([[ $rc == 0 ]] && echo ok || echo "FAILED rc=$rc")
tail -n 3 "$OUT/bench.txt"

log "done; stages: build=${STATUS[build]} tests=${STATUS[tests]} autotune=${STATUS[autotune]} bench=${STATUS[bench]}"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 1
# Short table last: speed-up vs cuBLAS fp16 per op (columns) for every shape and M (rows).
python - "$OUT/bench.json" <<'EOF' || echo "(no benchmark results)"
import json, sys
data = json.load(open(sys.argv[1]))
rows = data["rows"]
ops = [o for o in dict.fromkeys(r["op"] for r in rows) if o != "cuBLAS fp16"]
cells = {(r["shape"], r["M"], r["op"]): r for r in rows}
short = lambda o: (o.replace("torch int4pack W4 g128", "int4pack").replace("triton ", "").replace("cuda_cpp ", "cpp ")
                   .replace(" asym", "a"))[:12]
print("# " + data["header"])
print("speed-up vs cuBLAS fp16 (µs of cuBLAS fp16 in the first column)")
print(f"{'shape':<12}{'M':>5}{'fp16 µs':>9}" + "".join(f"{short(o):>13}" for o in ops))
for shape, m in dict.fromkeys((r["shape"], r["M"]) for r in rows):
    base = cells.get((shape, m, "cuBLAS fp16"))
    line = f"{shape:<12}{m:>5}{(base['us'] if base else float('nan')):>9.1f}"
    line += "".join(f"{cells[(shape, m, o)]['x_fp16']:>13.2f}" if (shape, m, o) in cells else f"{'-':>13}" for o in ops)
    print(line)
EOF
