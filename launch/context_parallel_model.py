#!/usr/bin/env python3
"""A model of the latent cache split across ranks (parallel.context_parallel) for DeepSeek-V3's
attention on H200 nodes: how many cached tokens a node holds, and what a decode step costs, at
tensor parallelism W = 8 (one node) and 16 (two), with groups of G = 1, 2, 4, 8 ranks.

Usage: context_parallel_model.py [--csv FILE] [--batch 32] [--context 32768 131072] [--cache-dtype bf16]

Per GPU (every figure is DeepSeek-V3's or the H200's, SOURCES in link_figures.py, unless marked):
  cache room   = HBM - weights / W - reserve      weights: 671e9 B of fp8 for the whole model, spread
                                                  evenly over the W GPUs (an assumption: expert
                                                  placement is not modelled); reserve 10 GB (assumed)
  a token      = layers * (C + dr) * bytes        (bf16: 1 152 B a layer, fp8 rows: 656 B)
  tokens held  = G * cache room / a token         each position is kept once per group of G (W/G
                                                  copies in the TP group instead of W)
A decode step of one layer, `batch` sequences of `context` positions, with H/W heads per GPU:
  t_memory     = (layer weights read + batch * context / G * row bytes) / HBM bandwidth
                 (decode is bound by memory: compute is not modelled; the bandwidth is 90% of the
                 4.8 TB/s peak, an assumption)
  t_context    = 2 * alpha + (G-1) * batch * H/W * ((C + dr) * 2 + C * 2 + 4) B / link
                 the gather of the bf16 queries and the exchange of bf16 partial outputs and fp32
                 log-sum-exps, inside a node (NVLink; groups never cross a node here)
  t_allreduce  = the output projection's sum over W (NVLink inside a node, InfiniBand across,
                 costed as scaling_model.py does)
  t_step       = t_memory + t_context + t_allreduce, and times 61 layers for the whole model's attention.
Prints a Markdown table and, with --csv, writes every row.
"""
import argparse
import csv
import sys

from link_figures import (GPUS_PER_NODE, IB_ALPHA_US, IB_NDR_PER_NIC_GBPS, INTRA_NODE_RING_GBPS, NVLINK_ALPHA_US,
                          NVLINK_BUSBW_GBPS)

# DeepSeek-V3 [deepseek_v3]
LAYERS, HEADS, LATENT, ROPE, DIM, Q_LORA, NOPE, V_DIM = 61, 128, 512, 64, 7168, 1536, 128, 128
MODEL_BYTES = 671e9  # fp8 weights
# H200 [h200]
HBM_BYTES, HBM_PEAK_GBPS = 141e9, 4800.0
HBM_GBPS = 0.9 * HBM_PEAK_GBPS  # assumption: what a decode kernel reaches
RESERVE_BYTES = 10e9  # assumption: activations, workspaces, the runtime
ROW_BYTES = {"bf16": (LATENT + ROPE) * 2, "fp8": LATENT + LATENT // 128 * 4 + ROPE * 2}


def layer_weight_bytes(world):
    """One layer's attention weights a GPU reads per step, fp8: the replicated projections and its heads' share."""
    heads = HEADS // world
    replicated = Q_LORA * DIM + (LATENT + ROPE) * DIM
    sharded = heads * (NOPE + ROPE) * Q_LORA + heads * (NOPE + V_DIM) * LATENT + DIM * heads * V_DIM
    return replicated + sharded


def allreduce_ms(world, message_bytes):
    if world == 1:
        return 0.0
    if world <= GPUS_PER_NODE:
        alpha_us, busbw = NVLINK_ALPHA_US, NVLINK_BUSBW_GBPS[world]
    else:  # rail-optimised: every NIC of a node at once, held to the NVLink ring inside it
        alpha_us, busbw = IB_ALPHA_US, min(GPUS_PER_NODE * IB_NDR_PER_NIC_GBPS, INTRA_NODE_RING_GBPS)
    return (alpha_us + message_bytes * 2.0 * (world - 1) / world / (busbw * 1e3)) / 1e3


def context_ms(world, group, batch):
    if group == 1:
        return 0.0, 0
    heads = HEADS // world
    per_peer = batch * heads * ((LATENT + ROPE) * 2 + LATENT * 2 + 4)
    moved = (group - 1) * per_peer
    return (2 * NVLINK_ALPHA_US + moved / (INTRA_NODE_RING_GBPS * 1e3)) / 1e3, moved


def rows(batch, contexts, cache_dtype):
    row_bytes = ROW_BYTES[cache_dtype]
    token_bytes = LAYERS * row_bytes
    for world in (8, 16):
        room = HBM_BYTES - MODEL_BYTES / world - RESERVE_BYTES
        for group in (1, 2, 4, 8):
            tokens_per_group = group * room / token_bytes  # the TP group's W GPUs hold W/G copies
            tokens_per_node = tokens_per_group * GPUS_PER_NODE / world
            t_context, moved = context_ms(world, group, batch)
            t_allreduce = allreduce_ms(world, batch * DIM * 2)
            for context in contexts:
                cache_read = batch * context / group * row_bytes
                t_memory = (layer_weight_bytes(world) + cache_read) / (HBM_GBPS * 1e6)
                t_step = t_memory + t_context + t_allreduce
                yield {
                    "world": world, "group": group, "cache_dtype": cache_dtype,
                    "cache_room_gb": room / 1e9, "tokens_per_node": tokens_per_node,
                    "sequences_per_node": tokens_per_node / context, "batch": batch, "context": context,
                    # the TP group holds the batch: W / GPUS_PER_NODE nodes of it
                    "fits": batch * context <= tokens_per_group,
                    "t_memory_us": t_memory * 1e3, "t_context_us": t_context * 1e3,
                    "t_allreduce_us": t_allreduce * 1e3, "t_step_us": t_step * 1e3,
                    "t_61_layers_ms": t_step * LAYERS, "context_bytes": moved,
                }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--cache-dtype", choices=sorted(ROW_BYTES), default="bf16")
    args = parser.parse_args()
    table = list(rows(args.batch, args.context, args.cache_dtype))
    print(f"DeepSeek-V3 attention on H200 nodes, {args.cache_dtype} cache rows, decode batch {args.batch} "
          "(a model: see the script's docstring for every assumption)\n")
    print("| TP | groups of | cache room / GPU | tokens held / node | context | sequences / node | batch fits "
          "| memory us | context us | all-reduce us | layer step us | 61 layers ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['world']} | {r['group']} | {r['cache_room_gb']:.0f} GB | {r['tokens_per_node'] / 1e6:.2f} M "
              f"| {r['context'] // 1024}k | {r['sequences_per_node']:.1f} | {'yes' if r['fits'] else 'no'} "
              f"| {r['t_memory_us']:.1f} "
              f"| {r['t_context_us']:.1f} | {r['t_allreduce_us']:.1f} | {r['t_step_us']:.1f} "
              f"| {r['t_61_layers_ms']:.2f} |")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
