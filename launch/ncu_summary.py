#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (--metrics gpu__time_duration.sum --csv) per kernel name.

Usage: python3 launch/ncu_summary.py NCU.csv   prints kernels by total time, with launch counts
"""
import csv
import sys
from collections import defaultdict


def main():
    totals, counts = defaultdict(float), defaultdict(int)
    with open(sys.argv[1], newline="") as file:
        rows = [line for line in file if line.startswith('"')]  # ncu's own log lines start with ==
    for row in csv.DictReader(rows):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}.get(row.get("Metric Unit"), None)
        if scale is None:
            continue
        name = row["Kernel Name"].split("(")[0][:70]
        totals[name] += float(row["Metric Value"].replace(",", "")) * scale
        counts[name] += 1
    whole = sum(totals.values())
    print(f"{'kernel':70} {'launches':>8} {'ms':>8} {'share':>6}")
    for name, ms in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{name:70} {counts[name]:8d} {ms:8.3f} {ms / whole:6.1%}")
    print(f"{'all kernels':70} {sum(counts.values()):8d} {whole:8.3f}")


if __name__ == "__main__":
    main()
