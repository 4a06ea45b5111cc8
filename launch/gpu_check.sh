#!/usr/bin/env bash
# The GPU check in one call: builds the CUDA backend on a bare GPU machine, runs the GPU tests,
# the seed-table benchmark (mla_cuda_bench) and our PyTorch eager baseline on the same shapes
# (gpu_torch_seed.py), and writes logs and CSVs under $OUT (results/gpu without it).
#
#   Here, once (needs Debian's googletest and nlohmann-json3-dev, which launch/setup.sh installs):
#     bash launch/gpu_check.sh prepare      # copies their sources into .device/ (git-ignored)
#   On the GPU machine (the device tool's run, carrying .device):
#     bash launch/gpu_check.sh run          # GPU_CHECK_TORCH=0 skips the PyTorch baseline
#     bash launch/gpu_check.sh profile      # per-kernel times of one step by Nsight Compute;
#                                           # PROFILE_POINTS, PROFILE_KERNEL: see below
#
# The GPU machine has CUDA, cmake, ninja and PyTorch (with its NCCL) but no MPI, yaml-cpp,
# GoogleTest or BLAS: MLA_GPU_CHECK_ONLY builds the layer, the CUDA backend, the GPU tests and the
# benchmark without them (the CPU oracle runs its GEMMs as plain loops there).
set -euo pipefail
cd "$(dirname "$0")/.."

build_gpu() {
  # Needs $out; leaves LD_LIBRARY_PATH pointing at the NCCL it linked.
  # NCCL: beside the CUDA toolkit, or else the one inside PyTorch's Python packages.
  nccl_root=""
  if [ ! -e /usr/local/cuda/include/nccl.h ]; then
    pip_nccl=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
    if [ -n "$pip_nccl" ]; then
      nccl_root=$PWD/build-gpu/nccl
      mkdir -p "$nccl_root"
      ln -sfn "$pip_nccl/lib" "$nccl_root/lib"
      if [ -e "$pip_nccl/include/nccl.h" ]; then ln -sfn "$pip_nccl/include" "$nccl_root/include"
      else ln -sfn "$PWD/.device/nccl/include" "$nccl_root/include"; fi
    fi
  fi
  set -o pipefail
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLA_GPU_CHECK_ONLY=ON -DMLA_WARNINGS_AS_ERRORS=OFF \
    -DMLA_GTEST_SOURCE_DIR="$PWD/.device/googletest" -DMLA_NLOHMANN_INCLUDE_DIR="$PWD/.device/include" \
    -DMLA_NCCL_ROOT="$nccl_root" -DMLA_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" 2>&1 | tee "$out/build.log"
  cmake --build build-gpu -j "$(nproc)" 2>&1 | tee -a "$out/build.log"
  [ -z "$nccl_root" ] || export LD_LIBRARY_PATH="$nccl_root/lib:${LD_LIBRARY_PATH:-}"
}

case "${1:-run}" in
  prepare)
    rm -rf .device
    mkdir -p .device/include .device/nccl/include
    cp -r /usr/src/googletest .device/googletest
    cp -r /usr/include/nlohmann .device/include/
    cp /usr/local/cuda/include/nccl.h .device/nccl/include/  # used only where the GPU machine has none
    du -sh .device
    ;;
  run)
    [ -d .device/googletest ] || { echo "gpu_check: run 'bash launch/gpu_check.sh prepare' here first, and carry .device" >&2; exit 2; }
    out=${OUT:-results/gpu}
    mkdir -p "$out"
    { nvidia-smi; nvidia-smi -q -d CLOCK; nvcc --version; nproc; } > "$out/machine.txt" 2>&1 || true
    build_gpu
    set +e
    # Each stage has its own time limit, so one that hangs still leaves the others' logs in $out.
    timeout "${GPU_TESTS_TIMEOUT_S:-300}" ./build-gpu/tests/gpu/mla_gpu_tests ${GPU_TESTS_FILTER:+--gtest_filter=$GPU_TESTS_FILTER} \
      --gtest_output=xml:"$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1
    tests_rc=$?
    grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Failure|error' "$out/gpu_tests.log" | head -60
    timeout "${GPU_BENCH_TIMEOUT_S:-150}" ./build-gpu/mla_cuda_bench --csv "$out/seed_table_gpu.csv" 2>&1 | tee "$out/bench.log"
    bench_rc=${PIPESTATUS[0]}
    # The same shapes through our PyTorch eager baseline, on the PyTorch of this machine.
    [ "${GPU_CHECK_TORCH:-1}" = 0 ] || timeout "${GPU_TORCH_TIMEOUT_S:-150}" python3 launch/gpu_torch_seed.py --csv "$out/seed_table_gpu_torch.csv" 2>&1 \
      | tee "$out/torch_bench.log"
    torch_rc=${PIPESTATUS[0]}
    echo "gpu_check: GPU tests exit $tests_rc, benchmark exit $bench_rc, PyTorch baseline exit $torch_rc; logs in $out"
    [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$torch_rc" -eq 0 ]
    ;;
  profile)
    # Kernel times of one step per point, by Nsight Compute (clocks left as they are).
    # Points: PROFILE_POINTS="phase:seq:attention ...".
    out=${OUT:-results/gpu}
    mkdir -p "$out"
    [ -x build-gpu/mla_cuda_bench ] || build_gpu > "$out/build.log" 2>&1
    for point in ${PROFILE_POINTS:-prefill:256:fast prefill:256:standard decode:256:fast decode:256:standard}; do
      IFS=: read -r phase seq attention <<< "$point"
      raw=$(mktemp -d)/ncu.csv  # the device tool brings back few files: only the summaries go to $out
      timeout 120 ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \
        --log-file "$raw" ./build-gpu/mla_cuda_bench --warmup 2 --reps 1 --phase "$phase" --seq "$seq" \
        --attention "$attention" > "$raw.log" 2>&1 || { echo "profile: $point failed (exit $?)"; tail -5 "$raw.log"; }
      { echo "== $point"; python3 launch/ncu_summary.py "$raw"; } | tee -a "$out/profile.txt" | head -14 || true
      if [ -n "${PROFILE_KERNEL:-}" ]; then  # where the time of one kernel goes: its stall reasons, occupancy
        timeout 120 ncu --clock-control none --profile-from-start off --kernel-name "regex:$PROFILE_KERNEL" --launch-count 1 \
          --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
          --section MemoryWorkloadAnalysis ./build-gpu/mla_cuda_bench --warmup 2 --reps 1 --phase "$phase" \
          --seq "$seq" --attention "$attention" 2>&1 | grep -v "^==PROF==" >> "$out/profile.txt"
      fi
    done
    ;;
  *)
    echo "usage: bash launch/gpu_check.sh prepare|run|profile" >&2
    exit 2
    ;;
esac
