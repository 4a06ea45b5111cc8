#!/usr/bin/env python3
"""Compares the y of two mla_run outputs (safetensors, tensor "y", f32) by relative L2 error.

Usage: compare_y.py WANT.safetensors GOT.safetensors [--max-rel-l2 1e-5] [--label TEXT]
Prints one line (the label, the error, whether the bytes are identical); exit 0 within the bound,
1 over it or on a shape mismatch, 2 on a file it cannot read. Needs only Python's standard library
(it runs on bare GPU machines too).
"""
import argparse
import json
import math
import struct
import sys
from array import array


def read_y(path):
    try:
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_length))
            info = header["y"]
            if info["dtype"] != "F32":
                raise ValueError(f"y is {info['dtype']}, not F32")
            begin, end = info["data_offsets"]
            handle.seek(8 + header_length + begin)
            data = handle.read(end - begin)
    except (OSError, KeyError, ValueError, struct.error) as error:
        print(f"compare_y: {path}: {error}")
        sys.exit(2)
    values = array("f")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return info["shape"], values, data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("want")
    parser.add_argument("got")
    parser.add_argument("--max-rel-l2", type=float, default=1e-5)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    want_shape, want, want_bytes = read_y(args.want)
    got_shape, got, got_bytes = read_y(args.got)
    label = args.label or f"{args.got} vs {args.want}"
    if want_shape != got_shape:
        print(f"{label}: FAILED: shape {got_shape} against {want_shape}")
        return 1
    diff = sum((float(g) - float(w)) ** 2 for g, w in zip(got, want))
    norm = sum(float(w) ** 2 for w in want)
    error = math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)
    ok = error <= args.max_rel_l2  # NaN fails
    identical = "bitwise identical" if got_bytes == want_bytes else "not bitwise identical"
    print(f"{label}: {'ok' if ok else 'FAILED'}: relative L2 {error:.3g} (bound {args.max_rel_l2:g}), {identical}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
