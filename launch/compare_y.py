#!/usr/bin/env python3
"""Compares the outputs of two mla_run runs (safetensors, F32) by relative L2 error.

Usage: compare_y.py WANT.safetensors GOT.safetensors [--max-rel-l2 1e-5] [--label TEXT]
The outputs are the tensor "y", or with run.schedule.requests the tensors "y.<name>": both files
must hold the same names and shapes. The error is over all of them together, and the worst one is
named. Prints one line (the label, the error, whether the bytes are identical); exit 0 within the
bound, 1 over it or on a name or shape mismatch, 2 on a file it cannot read. Needs only Python's
standard library (it runs on bare GPU machines too).
"""
import argparse
import json
import math
import struct
import sys
from array import array


def read_outputs(path):
    """{name: (shape, values, raw bytes)} of the F32 tensors "y" and "y.<name>"."""
    outputs = {}
    try:
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_length))
            names = sorted(name for name in header if name == "y" or name.startswith("y."))
            if not names:
                raise ValueError('no tensor "y" or "y.<name>"')
            for name in names:
                info = header[name]
                if info["dtype"] != "F32":
                    raise ValueError(f"{name} is {info['dtype']}, not F32")
                begin, end = info["data_offsets"]
                handle.seek(8 + header_length + begin)
                data = handle.read(end - begin)
                values = array("f")
                values.frombytes(data)
                if sys.byteorder != "little":
                    values.byteswap()
                outputs[name] = (info["shape"], values, data)
    except (OSError, KeyError, ValueError, struct.error) as error:
        print(f"compare_y: {path}: {error}")
        sys.exit(2)
    return outputs


def squared_sums(got, want):
    diff = sum((float(g) - float(w)) ** 2 for g, w in zip(got, want))
    return diff, sum(float(w) ** 2 for w in want)


def relative(diff, norm):
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("want")
    parser.add_argument("got")
    parser.add_argument("--max-rel-l2", type=float, default=1e-5)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    want = read_outputs(args.want)
    got = read_outputs(args.got)
    label = args.label or f"{args.got} vs {args.want}"
    if sorted(want) != sorted(got):
        print(f"{label}: FAILED: tensors {sorted(got)} against {sorted(want)}")
        return 1
    total_diff = total_norm = 0.0
    worst_name, worst = "", -1.0
    identical = True
    for name in sorted(want):
        want_shape, want_values, want_bytes = want[name]
        got_shape, got_values, got_bytes = got[name]
        if want_shape != got_shape:
            print(f"{label}: FAILED: {name} has shape {got_shape} against {want_shape}")
            return 1
        diff, norm = squared_sums(got_values, want_values)
        total_diff += diff
        total_norm += norm
        one = relative(diff, norm)
        if not worst_name or math.isnan(one) or one > worst:  # a NaN is the worst, and stays so
            worst_name, worst = name, one
        identical = identical and got_bytes == want_bytes
    error = relative(total_diff, total_norm)
    ok = error <= args.max_rel_l2  # NaN fails
    worst_text = f", worst {worst_name} {worst:.3g}" if len(want) > 1 else ""
    print(f"{label}: {'ok' if ok else 'FAILED'}: relative L2 {error:.3g} (bound {args.max_rel_l2:g}){worst_text}, "
          f"{'bitwise identical' if identical else 'not bitwise identical'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
