# mla_allreduce_bench as smoke tests: worlds 2 and 3 (odd, where busbw's 2(W-1)/W is not 1), 8 B to
# 1 MiB, a few calls per size. A run passes when it exits 0 (every element of every sum right) and its
# CSV starts with exactly the documented columns, one row per size, transport and placement, each ok.
# A bad flag must exit 2. The NCCL transport runs at world 1 where a GPU is (skipped elsewhere, exit
# 77), and is a flag error in a build without CUDA.
#
# This file has two roles: include()d from tests/bench/CMakeLists.txt it registers the tests; run
# with `cmake -P` (CMAKE_SCRIPT_MODE_FILE set) it is the test itself, so that the run and the check
# of its CSV are one step with no stale file from an earlier run in between.

set(MLA_ALLREDUCE_CSV_COLUMNS
    "transport,world,bytes,count,dtype,in_place,reps,time_us,algbw_gbps,busbw_gbps,max_abs_error,ok")

if(NOT CMAKE_SCRIPT_MODE_FILE)
  set(script ${CMAKE_CURRENT_LIST_FILE})
  set(bench $<TARGET_FILE:mla_allreduce_bench>)
  foreach(ranks 2 3)
    add_test(NAME bench_allreduce_world${ranks}
             COMMAND ${CMAKE_COMMAND} -DMODE=run -DMPIEXEC=${MPIEXEC_EXECUTABLE} -DNP_FLAG=${MPIEXEC_NUMPROC_FLAG}
                     -DRANKS=${ranks} -DBENCH=${bench} -DTRANSPORT=mpi
                     -DCSV=${CMAKE_CURRENT_BINARY_DIR}/allreduce_world${ranks}.csv -P ${script})
  endforeach()
  add_test(NAME bench_allreduce_bad_flag
           COMMAND ${CMAKE_COMMAND} -DMODE=bad_flag -DMPIEXEC=${MPIEXEC_EXECUTABLE} -DNP_FLAG=${MPIEXEC_NUMPROC_FLAG}
                   -DBENCH=${bench} -P ${script})
  set(tests bench_allreduce_world2 bench_allreduce_world3 bench_allreduce_bad_flag)
  if(MLA_HAVE_CUDA)
    add_test(NAME bench_allreduce_nccl_world1
             COMMAND ${CMAKE_COMMAND} -DMODE=run -DMPIEXEC=${MPIEXEC_EXECUTABLE} -DNP_FLAG=${MPIEXEC_NUMPROC_FLAG}
                     -DRANKS=1 -DBENCH=${bench} -DTRANSPORT=nccl
                     -DCSV=${CMAKE_CURRENT_BINARY_DIR}/allreduce_nccl_world1.csv -P ${script})
    # The script ends with this line when the benchmark exits 77 (no CUDA device).
    set_tests_properties(bench_allreduce_nccl_world1 PROPERTIES SKIP_REGULAR_EXPRESSION "allreduce test skipped:")
    list(APPEND tests bench_allreduce_nccl_world1)
  else()
    add_test(NAME bench_allreduce_nccl_needs_cuda
             COMMAND ${CMAKE_COMMAND} -DMODE=no_cuda -DMPIEXEC=${MPIEXEC_EXECUTABLE} -DNP_FLAG=${MPIEXEC_NUMPROC_FLAG}
                     -DBENCH=${bench} -P ${script})
    list(APPEND tests bench_allreduce_nccl_needs_cuda)
  endif()
  set_tests_properties(${tests} PROPERTIES ENVIRONMENT "${MLA_BENCH_TEST_ENVIRONMENT}" TIMEOUT 120 LABELS bench)
  return()
endif()

# ---- script mode: one test ---------------------------------------------------------------------

# Runs the benchmark under mpiexec with `ranks` ranks; sets rc, out (stdout and stderr together).
function(run_bench ranks)
  execute_process(COMMAND ${MPIEXEC} ${NP_FLAG} ${ranks} --oversubscribe ${BENCH} ${ARGN}
                  RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  set(rc "${result}" PARENT_SCOPE)
  set(out "${output}" PARENT_SCOPE)
endfunction()

if(MODE STREQUAL "bad_flag")
  run_bench(2 --iters 0)
  if(NOT rc EQUAL 2 OR NOT out MATCHES "mla_allreduce_bench: error: --iters: ")
    message(FATAL_ERROR "--iters 0: expected exit 2 and an error naming --iters, got exit ${rc}:\n${out}")
  endif()
  return()
endif()

if(MODE STREQUAL "no_cuda")
  run_bench(1 --transport nccl)
  if(NOT rc EQUAL 2 OR NOT out MATCHES "--transport nccl: this build has no CUDA backend")
    message(FATAL_ERROR "--transport nccl without CUDA: expected exit 2, got exit ${rc}:\n${out}")
  endif()
  return()
endif()

# MODE run: 8 B to 1 MiB, x2: 18 sizes.
file(REMOVE ${CSV})
run_bench(${RANKS} --transport ${TRANSPORT} --min-bytes 8 --max-bytes 1048576 --warmup 2 --iters 5
          --max-seconds-per-size 0.1 --timeout-s 60 --csv ${CSV})
if(rc EQUAL 77)
  message("${out}")
  message("allreduce test skipped: no CUDA device for --transport ${TRANSPORT}")
  return()
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mla_allreduce_bench with ${RANKS} ranks exited ${rc}:\n${out}")
endif()
file(STRINGS ${CSV} lines)
list(POP_FRONT lines header)
string(FIND "${header}" "${MLA_ALLREDUCE_CSV_COLUMNS}," column_position)
if(NOT column_position EQUAL 0)
  message(FATAL_ERROR "${CSV}: header\n  ${header}\ndoes not start with\n  ${MLA_ALLREDUCE_CSV_COLUMNS},")
endif()
set(expected_rows 72)  # 18 sizes x 2 placements x 2 transports (mpi, mpi-raw)
if(TRANSPORT STREQUAL "nccl")
  set(expected_rows 36)
endif()
list(LENGTH lines rows)
if(NOT rows EQUAL expected_rows)
  message(FATAL_ERROR "${CSV}: ${rows} rows, expected ${expected_rows}")
endif()
foreach(line IN LISTS lines)
  string(REPLACE "," ";" fields "${line}")
  list(GET fields 1 world)
  list(GET fields 7 time_us)
  list(GET fields 11 ok)
  if(NOT world EQUAL RANKS OR NOT ok EQUAL 1 OR NOT time_us GREATER 0)
    message(FATAL_ERROR "${CSV}: bad row (world ${RANKS}; ok 1 and a positive time expected):\n  ${line}")
  endif()
endforeach()
message("${out}")
