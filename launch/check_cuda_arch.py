#!/usr/bin/env python3
"""Checks the machine code of the CUDA kernels: every kernel in every architecture the build
promises (MLA_CUDA_GENCODE: sm_90a for Hopper, sm_80 for A100 users), and each kernel's registers
and static shared memory within what those GPUs give a block.

Usage: check_cuda_arch.py LIBRARY --arch sm_80 --arch sm_90a
  LIBRARY: the kernels' static library (build/kernels/cuda/libmla_kernels_cuda.a)
Reads it with cuobjdump (CUDA's own, on PATH or beside nvcc, or PyPI's nvidia-cuda-cuobjdump:
pip install nvidia-cuda-cuobjdump). Exit 0 when every check holds, 1 naming each that does not,
77 (skipped) when no cuobjdump is found.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

# Per block, for every architecture checked: 255 registers a thread, 48 KiB of static shared
# memory (more must be dynamic and opted into: the fast kernels size theirs at launch, and
# tests/gpu/test_cuda_ops.cpp checks those sizes against an A100's 163 KiB).
MAX_REGISTERS = 255
MAX_STATIC_SHARED_BYTES = 48 * 1024


def find_cuobjdump():
    candidates = [os.environ.get("CUOBJDUMP", ""), shutil.which("cuobjdump") or "", "/usr/local/cuda/bin/cuobjdump"]
    try:
        import nvidia  # PyPI's nvidia-cuda-cuobjdump installs nvidia/cu*/bin/cuobjdump
        for root in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "cu*", "bin", "cuobjdump")), reverse=True)
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def run(cuobjdump, *args):
    result = subprocess.run([cuobjdump, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"check_cuda_arch: {cuobjdump} {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library")
    parser.add_argument("--arch", action="append", required=True, help="an architecture every kernel must have")
    args = parser.parse_args()
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        print("SKIPPED: no cuobjdump (not beside nvcc; pip install nvidia-cuda-cuobjdump brings one)")
        return 77
    if not os.path.isfile(args.library):
        print(f"check_cuda_arch: {args.library}: no such file")
        return 1

    # arch -> {kernel: (registers, static shared bytes, local bytes)}, from the resource usage.
    kernels = {}
    arch = None
    for line in run(cuobjdump, "--dump-resource-usage", args.library).splitlines():
        match = re.match(r"\s*arch = (\S+)", line)
        if match:
            arch = match.group(1)
            kernels.setdefault(arch, {})
            continue
        match = re.match(r"\s*Function (\S+):", line)
        if match:
            function = match.group(1)
            continue
        match = re.match(r"\s*REG:(\d+) STACK:\d+ SHARED:(\d+) LOCAL:(\d+)", line)
        if match and arch is not None:
            kernels[arch][function] = tuple(int(value) for value in match.groups())

    problems = []
    everywhere = set().union(*kernels.values()) if kernels else set()
    if not everywhere:
        problems.append(f"{args.library}: no kernel found")
    for wanted in args.arch:
        missing = sorted(everywhere - set(kernels.get(wanted, {})))
        if wanted not in kernels:
            problems.append(f"no {wanted} machine code at all")
        elif missing:
            problems.append(f"{len(missing)} kernel(s) without {wanted} machine code: {', '.join(missing[:5])}")
    spills = []
    for arch_name, functions in sorted(kernels.items()):
        for function, (registers, shared, local) in sorted(functions.items()):
            if registers > MAX_REGISTERS:
                problems.append(f"{arch_name} {function}: {registers} registers a thread (at most {MAX_REGISTERS})")
            if shared > MAX_STATIC_SHARED_BYTES:
                problems.append(f"{arch_name} {function}: {shared} B of static shared memory "
                                f"(at most {MAX_STATIC_SHARED_BYTES})")
            if local > 0:
                spills.append(f"{arch_name} {function}: {local} B of local memory (register spills)")
    for spill in spills:
        print(f"check_cuda_arch: note: {spill}")
    for problem in problems:
        print(f"check_cuda_arch: {problem}")
    counts = ", ".join(f"{name} {len(functions)}" for name, functions in sorted(kernels.items()))
    print(f"check_cuda_arch: {len(everywhere)} kernels ({counts}) with {cuobjdump}: "
          f"{'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
