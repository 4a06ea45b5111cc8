#!/usr/bin/env python3
"""Checks that the source folders use only the folders below them (README.md, "Layout").

Every #include "folder/file" of a file in a layered folder must name a file in the same folder
or a lower one; one pointing up is reported with its file and line, and the exit status is 1.
"""
import pathlib
import re
import sys

# Lowest first: a folder may include itself and anything to its left.
LAYERS = [
    "runtime/base",
    "kernels/cpu",
    "kernels/cuda",
    "parallel",
    "runtime/io",
    "runtime/layer",
    "runtime/bench",
    "runtime/commands",
]
SOURCE_SUFFIXES = {".h", ".cpp", ".cu", ".cuh"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def layer_of(path: str):
    folder = str(pathlib.PurePosixPath(path).parent)
    return LAYERS.index(folder) if folder in LAYERS else None


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    problems = []
    checked = 0
    for folder in LAYERS:
        directory = root / folder
        if not directory.is_dir():
            problems.append(f"{folder}: the folder is missing")
            continue
        for source in sorted(directory.iterdir()):
            if source.suffix not in SOURCE_SUFFIXES:
                continue
            checked += 1
            relative = source.relative_to(root).as_posix()
            own = layer_of(relative)
            for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
                match = INCLUDE.match(line)
                if not match:
                    continue
                target = match.group(1)
                target_layer = layer_of(target)
                if target_layer is None:
                    if "/" in target:
                        problems.append(f"{relative}:{number}: includes {target}, outside the layered folders")
                    continue
                if target_layer > own:
                    problems.append(f"{relative}:{number}: includes {target}: {LAYERS[own]} may not use "
                                    f"{LAYERS[target_layer]}, which is above it")
    for problem in problems:
        print(problem)
    print(f"check_layout: {checked} files, {len(problems)} include(s) pointing up or out")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
