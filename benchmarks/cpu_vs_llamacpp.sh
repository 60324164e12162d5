#!/bin/bash
# The CPU figures of issue #4 in one go: our interleaved W4/W3/W2 A8 GEMV against torch fp32 and torch int4
# (5 runs at M=1, 3 at M=8 and with one thread; medians of the within-run ratios), then llama.cpp's own
# Q4_0 measurement side by side when its test-backend-ops binary is given:
#   LLAMACPP_TEST_BACKEND_OPS=/path/to/test-backend-ops bash benchmarks/cpu_vs_llamacpp.sh
# test-backend-ops runs half the hardware threads; the 2-thread row needs a build that reads PERF_THREADS
# (a one-line local edit; without it both rows run its default).
set -u
cd "$(dirname "$0")/.."
B="${LLAMACPP_TEST_BACKEND_OPS:-}"
echo "=== M=1, 5 runs"
python benchmarks/bench_cpu_lowbit.py --quick --repeat 5 --batches 1 \
  --ops "ours W4A8-il" "ours W3A8-il" "ours W2A8-il" "torch int4" "torch fp32"
echo "=== M=8, 3 runs"
python benchmarks/bench_cpu_lowbit.py --quick --repeat 3 --batches 8 --ops "ours W4A8-il" "torch int4" "torch fp32"
echo "=== one thread, 3 runs"
python benchmarks/bench_cpu_lowbit.py --quick --repeat 3 --threads 1 --batches 1 8 --ops "ours W4A8-il" "torch int4"
if [ -n "$B" ]; then
  for t in 2 1; do
    echo "=== llama.cpp test-backend-ops Q4_0, $t thread(s), hot"
    PERF_THREADS=$t "$B" perf -o MUL_MAT -b CPU -p 'type_a=q4_0,type_b=f32,m=4096,n=(1|8),k=14336,' 2>&1 |
      sed 's/\x1b\[[0-9;]*m//g' | grep "MUL_MAT"
  done
fi
