#!/usr/bin/env python3
"""Checks what mla_bench wrote for the smoke sweep: the public columns in order, one JSONL record per
CSV row, positive and ordered times, FLOP and byte counts that are consistent with the rates, the
fast path's attention workspace below the standard path's wherever a step has several query rows,
and (when the PyTorch baseline ran) its output equal to ours within docs/design.md's tolerance.

Usage: check_bench_csv.py CSV JSONL [--expect-rows N] [--expect-worlds 1,2]
                          [--require-baseline | --require-baseline-if-torch PYTHON]
                          [--expect-variants compile,graph]

--expect-variants: the baseline's other variants (bench.torch_variants) at every uniform point, each
either timed (its columns filled and consistent, its output equal to ours) or not run with a reason
and empty columns; a CUDA graph never on a cpu point.
"""
import argparse
import csv
import json
import math
import subprocess
import sys

PUBLIC_COLUMNS = ["backend", "world", "threads", "batch", "seq_len", "phase", "attention", "formulation",
                  "compute_dtype", "weights_dtype", "path_chosen", "formulation_chosen", "median_ms", "min_ms",
                  "p90_ms", "allreduce_ms", "gflops", "gbps", "workspace_bytes", "peak_rss_bytes"]
# docs/design.md, Precision and tolerances: ours and the baseline each sit within these of the exact result.
TOLERANCE = {"fp32": 1e-5 * 2, "bf16": 2e-2 * 2}

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("jsonl")
    parser.add_argument("--expect-rows", type=int)
    parser.add_argument("--expect-worlds")
    parser.add_argument("--require-baseline", action="store_true")
    parser.add_argument("--expect-variants", help="comma-separated: compile, graph")
    parser.add_argument("--require-baseline-if-torch", metavar="PYTHON",
                        help="require the baseline's columns when this interpreter imports torch")
    return run_checks(parser.parse_args())


def check_context_bytes(row, config, where):
    """context_bytes: what a rank receives from the rest of its context group in a step, the
    gathered queries and the exchanged outputs and log-sum-exps of every token for the group's most
    heads a rank; empty without a split."""
    group = int(row["context_parallel"])
    if group <= 1:
        check(row["context_bytes"] == "", f"{where}: context_bytes without a split")
        return
    model = {key.split(".", 1)[1]: int(float(value)) for key, value in config.items() if key.startswith("model.")}
    absorb = row["formulation_chosen"] == "absorb"
    query = model["kv_lora_rank"] + model["qk_rope_head_dim"] if absorb else \
        model["qk_nope_head_dim"] + model["qk_rope_head_dim"]
    value = model["kv_lora_rank"] if absorb else model["v_head_dim"]
    heads = -(-model["n_heads"] // int(row["world"]))  # the first ranks hold one more where uneven
    expected = (group - 1) * int(row["step_total_tokens"]) * heads * (query + value + 1) * 4
    check(int(row["context_bytes"]) == expected, f"{where}: context_bytes {row['context_bytes']}, expected {expected}")


def check_variants(row, record, expected, where):
    """The compile and graph variants of one row: timed and consistent, or not run with a reason."""
    variants = record.get("baseline_variants", {})
    check(sorted(variants) == sorted(expected), f"{where}: baseline variants {sorted(variants)}, expected {expected}")
    for name, answer in variants.items():
        columns = [f"torch_{name}_median_ms", f"speedup_vs_torch_{name}", f"torch_{name}_rel_l2"]
        if isinstance(answer, dict) and answer.get("ok"):
            check(answer.get("variant") == name, f"{where}: the {name} answer ran variant {answer.get('variant')}")
            check(name != "graph" or row["backend"] == "cuda", f"{where}: a CUDA graph timed on a cpu point")
            median = float(row[columns[0]])
            check(median > 0 and math.isclose(median, answer["median_ms"], rel_tol=1e-4),
                  f"{where}: {columns[0]} {median} is not the answer's {answer['median_ms']}")
            check(math.isclose(float(row[columns[1]]), median / float(row["median_ms"]), rel_tol=1e-3),
                  f"{where}: {columns[1]} != {name} / ours")
            check(float(row[columns[2]]) <= TOLERANCE[row["compute_dtype"]],
                  f"{where}: ours vs the {name} baseline differ by {row[columns[2]]}")
        else:
            error = answer.get("error", "") if isinstance(answer, dict) else str(answer)
            check(error and "\n" not in error, f"{where}: the {name} variant did not run and says no reason")
            check(all(row[c] == "" for c in columns), f"{where}: {name} did not run but its columns are filled")
            if name == "graph" and row["backend"] != "cuda":
                check(error.startswith("not run: a CUDA graph needs a cuda point"),
                      f"{where}: graph on a cpu point: {error}")


def check_reused_answers(rows, records):
    """A baseline answer kept from an earlier point names it, and that point has the same numbers."""
    by_point = {}
    for i, record in enumerate(records):
        answers = {"eager": record.get("baseline")}
        answers.update(record.get("baseline_variants", {}))
        for name, answer in answers.items():
            if not isinstance(answer, dict) or not answer.get("ok"):
                continue
            source = answer.get("timed_at_point")
            if source is None:
                by_point[(record["point"], name)] = answer
                continue
            first = by_point.get((source, name))
            check(first is not None, f"row {i + 2}: {name} answer kept from {source!r}, not an earlier point")
            if first is not None:
                check(first["median_ms"] == answer["median_ms"] and first["reps"] == answer["reps"],
                      f"row {i + 2}: {name} answer kept from {source!r} differs from it")


def run_checks(args):
    if args.require_baseline_if_torch:
        probe = subprocess.run([args.require_baseline_if_torch, "-c", "import torch"], capture_output=True)
        args.require_baseline = probe.returncode == 0
        print(f"check_bench_csv: baseline {'required' if args.require_baseline else 'not required (no torch)'}")

    with open(args.csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [dict(zip(header, values)) for values in reader]
    check(header[:len(PUBLIC_COLUMNS)] == PUBLIC_COLUMNS,
          f"the first columns are {header[:len(PUBLIC_COLUMNS)]}, expected {PUBLIC_COLUMNS}")
    with open(args.jsonl) as f:
        records = [json.loads(line) for line in f if line.strip()]
    check(len(records) == len(rows), f"{len(rows)} CSV rows but {len(records)} JSONL records")
    if args.expect_rows is not None:
        check(len(rows) == args.expect_rows, f"{len(rows)} rows, expected {args.expect_rows}")
    if args.expect_worlds:
        worlds = sorted({int(r["world"]) for r in rows})
        check(worlds == sorted(int(w) for w in args.expect_worlds.split(",")), f"worlds {worlds}")
    for record in records:
        for key in ("machine", "config", "times_ms", "result"):
            check(key in record, f"a JSONL record has no '{key}'")
        check("cpu_model" in record.get("machine", {}) and "git_commit" in record.get("machine", {}),
              "a JSONL record's machine lacks cpu_model or git_commit")

    for i, r in enumerate(rows):
        where = f"row {i + 2} ({r['phase']} seq {r['seq_len']} {r['attention']}/{r['formulation']} world {r['world']})"
        check_context_bytes(r, records[i]["config"], where)
        median, low, p90 = float(r["median_ms"]), float(r["min_ms"]), float(r["p90_ms"])
        check(0 < low <= median <= p90, f"{where}: times not 0 < min <= median <= p90: {low} {median} {p90}")
        check(0 <= float(r["allreduce_ms"]) <= p90, f"{where}: all-reduce time {r['allreduce_ms']} outside [0, p90]")
        if int(r["world"]) == 1:
            check(float(r["allreduce_ms"]) < 0.5 * median, f"{where}: a world of one spends half its step in all-reduce")
        flop, moved = float(r["flop"]), float(r["bytes"])
        check(flop > 0 and moved > 0, f"{where}: flop {flop} or bytes {moved} not positive")
        check(math.isclose(float(r["gflops"]), flop / median / 1e6, rel_tol=1e-3), f"{where}: gflops != flop / time")
        check(math.isclose(float(r["gbps"]), moved / median / 1e6, rel_tol=1e-3), f"{where}: gbps != bytes / time")
        check(int(r["peak_rss_bytes"]) > 0 and int(r["workspace_bytes"]) > 0, f"{where}: memory not reported")
        attention_ms, attention_bytes = float(r["attention_ms"]), int(r["attention_bytes"])
        check(attention_ms > 0 and attention_bytes > 0, f"{where}: attention time or bytes not positive")
        check(math.isclose(float(r["attention_gbps"]), attention_bytes / attention_ms / 1e6, rel_tol=1e-3),
              f"{where}: attention_gbps != attention_bytes / attention_ms")
        attention_flop = float(r["attention_flop"])
        check(0 < attention_flop < flop, f"{where}: attention_flop {attention_flop} not within (0, flop)")
        check(math.isclose(float(r["attention_tflops"]), attention_flop / attention_ms / 1e9, rel_tol=1e-3),
              f"{where}: attention_tflops != attention_flop / attention_ms")
        check(int(r["step_byte_floor"]) > attention_bytes + int(r["weight_bytes"]),
              f"{where}: step_byte_floor not above the attention's and the weights' bytes")
        kv_len, total, batch = int(r["kv_len"]), int(r["step_total_tokens"]), int(r["batch"])
        if r["phase"] in ("ragged_decode", "mixed"):  # each sequence has its own start_pos and step_tokens
            check(r["start_pos"] == "" and r["step_tokens"] == "" and kv_len == int(r["seq_len"]),
                  f"{where}: start_pos, step_tokens or kv_len of a ragged step")
            check(0 < float(r["mean_kv_len"]) <= kv_len, f"{where}: mean_kv_len {r['mean_kv_len']} outside (0, kv_len]")
            expected_total = batch if r["phase"] == "ragged_decode" else int(r["chunk"]) + batch - 1
        else:
            start_pos, step = int(r["start_pos"]), int(r["step_tokens"])
            check(kv_len == start_pos + step == int(r["seq_len"]), f"{where}: kv_len != start_pos + step_tokens")
            check(float(r["mean_kv_len"]) == kv_len, f"{where}: mean_kv_len {r['mean_kv_len']} != kv_len")
            expected_step = {"prefill": kv_len, "decode": 1, "chunked_prefill": int(r["chunk"])}[r["phase"]]
            check(step == expected_step, f"{where}: step of {step} tokens for phase {r['phase']}")
            expected_total = batch * step
        check(total == expected_total, f"{where}: {total} tokens in the step for phase {r['phase']}")
        if r["attention"] != "auto":
            # fast_path_max_len auto: 256, but a decode step in absorb takes the fused kernel at any length.
            decode_absorb = r["phase"] in ("decode", "ragged_decode") and r["formulation_chosen"] == "absorb"
            fits = kv_len <= 256 or decode_absorb
            wanted = r["attention"] if r["attention"] == "standard" or fits else "standard"
            check(r["path_chosen"] == wanted, f"{where}: path {r['path_chosen']}, expected {wanted}")
        if r["formulation"] != "auto":
            check(r["formulation_chosen"] == r["formulation"], f"{where}: formulation not the one asked for")
        if r["torch_median_ms"]:
            check(float(r["torch_median_ms"]) > 0, f"{where}: baseline time not positive")
            check(math.isclose(float(r["speedup_vs_torch"]), float(r["torch_median_ms"]) / median, rel_tol=1e-3),
                  f"{where}: speedup_vs_torch != torch / ours")
            error = float(r["torch_rel_l2"])
            check(error <= TOLERANCE[r["compute_dtype"]], f"{where}: ours vs the baseline differ by {error:.3g}")
        elif args.require_baseline and r["phase"] not in ("ragged_decode", "mixed"):  # uniform steps only
            check(False, f"{where}: no baseline time")
        check((r["torch_peak_bytes"] != "") == (r["backend"] == "cuda" and r["torch_median_ms"] != ""),
              f"{where}: torch_peak_bytes '{r['torch_peak_bytes']}' on a {r['backend']} point")
        if r["backend"] != "cuda":  # the driver's per-process figures are the GPU's
            check(r["device_process_bytes"] == r["torch_device_process_bytes"] == "",
                  f"{where}: per-process device bytes on a {r['backend']} point")
        elif r["device_process_bytes"]:  # at least a CUDA context
            check(int(r["device_process_bytes"]) > 0, f"{where}: the driver accounts nothing to the process")
        check((r["cuda_graph_replays"] != "") == (r["backend"] == "cuda"),
              f"{where}: cuda_graph_replays '{r['cuda_graph_replays']}' on a {r['backend']} point")
        check(r["copy_gbps"] != "" and float(r["copy_gbps"]) > 0, f"{where}: no copy bandwidth ({r['copy_gbps']!r})")
        if r["cuda_graph_replays"]:
            check(0 <= int(r["cuda_graph_replays"]) <= int(r["reps"]),
                  f"{where}: {r['cuda_graph_replays']} graph replays of {r['reps']} timed steps")
        if args.expect_variants and r["phase"] not in ("ragged_decode", "mixed"):
            check_variants(r, records[i], args.expect_variants.split(","), where)
    check_reused_answers(rows, records)

    # The claim's memory half: with several query rows per step the fast path keeps four score rows
    # per thread where the standard path materializes a chunk of rows.
    standard = {}
    for r in rows:
        if r["path_chosen"] == "standard":
            standard[(r["world"], r["phase"], r["batch"], r["seq_len"], r["chunk"], r["formulation_chosen"])] = r
    compared = 0
    for r in rows:
        key = (r["world"], r["phase"], r["batch"], r["seq_len"], r["chunk"], r["formulation_chosen"])
        if r["path_chosen"] == "fast" and int(r["step_total_tokens"]) > int(r["batch"]) and key in standard:
            compared += 1
            check(int(r["workspace_bytes"]) < int(standard[key]["workspace_bytes"]),
                  f"fast workspace {r['workspace_bytes']} >= standard {standard[key]['workspace_bytes']} at {key}")
    check(compared > 0, "no fast/standard pair with several query rows to compare memory on")

    # The split's memory half: a rank's cache pool falls as 1/G (within rounding to whole pages).
    def point(r):
        return (r["world"], r["phase"], r["batch"], r["seq_len"], r["chunk"], r["attention"], r["formulation"],
                r["kv_cache"])
    whole = {point(r): r for r in rows if int(r["context_parallel"]) == 1}
    for r in rows:
        group = int(r["context_parallel"])
        if group > 1 and point(r) in whole:
            base = int(whole[point(r)]["kv_pool_bytes"])
            check(int(r["kv_pool_bytes"]) * group <= 1.25 * base,
                  f"groups of {group}: a rank's pool {r['kv_pool_bytes']} is not about 1/{group} of {base}")

    for failure in failures:
        print("FAIL:", failure)
    print(f"check_bench_csv: {len(rows)} rows, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
