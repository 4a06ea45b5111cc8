#!/usr/bin/env python3
"""Checks launch/context_parallel_model.py's rows: a node holds G times the tokens with groups of G,
the cache read per step falls as 1/G, the collectives cost nothing at G = 1 and grow with G, and every
time is positive. Exit 0 when all hold, 1 naming the first that does not."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "launch"))
import context_parallel_model as model  # noqa: E402


def main():
    for cache_dtype in ("bf16", "fp8"):
        rows = list(model.rows(batch=8, contexts=[4096], cache_dtype=cache_dtype))
        by_key = {(r["world"], r["group"]): r for r in rows}
        for (world, group), r in by_key.items():
            one = by_key[(world, 1)]
            checks = [
                (abs(r["tokens_per_node"] - group * one["tokens_per_node"]) < 1e-6 * r["tokens_per_node"],
                 "tokens held grow as G"),
                (r["t_step_us"] > 0 and r["t_memory_us"] > 0, "positive times"),
                ((r["t_context_us"] == 0) == (group == 1), "collectives only with groups"),
                (group == 1 or r["t_memory_us"] < one["t_memory_us"], "less cache read with groups"),
                (abs(r["t_step_us"] - r["t_memory_us"] - r["t_context_us"] - r["t_allreduce_us"]) < 1e-9,
                 "the step is its parts"),
            ]
            for ok, what in checks:
                if not ok:
                    print(f"check_context_parallel_model: {cache_dtype}, TP {world}, groups of {group}: {what} fails")
                    return 1
    print("check_context_parallel_model: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
