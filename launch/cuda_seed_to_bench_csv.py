#!/usr/bin/env python3
"""Writes mla_cuda_bench's seed table (and gpu_torch_seed.py's PyTorch times beside it) as rows of
mla_bench's CSV, so that plot_bench.py draws the GPU's seed table, memory and ours-vs-PyTorch plots.

`launch/gpu_check.sh run` runs mla_cuda_bench, not mla_bench (it builds without MPI or yaml-cpp).
Columns it does not measure (threads, op-count rates, RSS) are left empty. device_peak_bytes is the
measured peak where the table has it (older tables: the layer's device memory report); torch_median_ms is PyTorch's time at the same point, with the
formulation PyTorch users run there (naive for prefill, absorbed for decode).

Usage: cuda_seed_to_bench_csv.py SEED_TABLE_GPU.csv [--torch SEED_TABLE_GPU_TORCH.csv] --out OUT.csv
"""
import argparse
import csv
import os
import sys

COLUMNS = ["backend", "world", "threads", "batch", "seq_len", "phase", "attention", "formulation", "compute_dtype",
           "weights_dtype", "path_chosen", "formulation_chosen", "median_ms", "min_ms", "p90_ms", "allreduce_ms",
           "gflops", "gbps", "workspace_bytes", "peak_rss_bytes", "device_peak_bytes", "torch_median_ms",
           "torch_min_ms", "torch_p90_ms", "torch_formulation", "device"]
OURS_COLUMNS = {"device", "phase", "seq_len", "batch", "attention", "path_chosen", "formulation_chosen", "median_ms",
                "min_ms", "p90_ms", "attention_workspace_bytes", "layer_device_bytes"}
TORCH_COLUMNS = {"phase", "seq_len", "batch", "formulation", "median_ms", "min_ms", "p90_ms"}


def read(path, required):
    try:
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            missing = required - set(reader.fieldnames or [])
            if missing:
                sys.exit(f"cuda_seed_to_bench_csv.py: {path}: missing column(s) {', '.join(sorted(missing))}")
            return list(reader)
    except OSError as error:
        sys.exit(f"cuda_seed_to_bench_csv.py: cannot read {path}: {error.strerror}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ours")
    parser.add_argument("--torch", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch = {}
    if args.torch:
        for row in read(args.torch, TORCH_COLUMNS):
            torch[(row["phase"], row["seq_len"], row["batch"], row["formulation"])] = row
    rows = []
    for row in read(args.ours, OURS_COLUMNS):
        torch_row = torch.get((row["phase"], row["seq_len"], row["batch"],
                               "naive" if row["phase"] == "prefill" else "absorb"), {})
        rows.append({
            "backend": "cuda", "world": 1, "threads": "", "batch": row["batch"], "seq_len": row["seq_len"],
            "phase": row["phase"], "attention": row["attention"], "formulation": "auto", "compute_dtype": "bf16",
            "weights_dtype": "bf16", "path_chosen": row["path_chosen"], "formulation_chosen": row["formulation_chosen"],
            "median_ms": row["median_ms"], "min_ms": row["min_ms"], "p90_ms": row["p90_ms"], "allreduce_ms": 0,
            "gflops": "", "gbps": "", "workspace_bytes": row["attention_workspace_bytes"], "peak_rss_bytes": "",
            "device_peak_bytes": row.get("device_peak_bytes") or row["layer_device_bytes"], "torch_median_ms": torch_row.get("median_ms", ""),
            "torch_min_ms": torch_row.get("min_ms", ""), "torch_p90_ms": torch_row.get("p90_ms", ""),
            "torch_formulation": torch_row.get("formulation", ""),
            "device": row["device"]})
    temporary = args.out + ".tmp"
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, args.out)
    print(f"cuda_seed_to_bench_csv.py: {len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
