#!/usr/bin/env python3
"""The seed's table through our PyTorch eager baseline on a GPU, for mla_cuda_bench to stand beside.

Same shapes as mla_cuda_bench: a DeepSeek-V3 slice (dim 7168, q_lora_rank 1536, kv_lora_rank 512,
16 local heads as at TP 8), bf16, batch 32, kv length 64/128/256/512; prefill (S tokens from
position 0, the naive formulation: "the original attention") and decode (one token at kv length S,
both formulations). The layer is launch/torch_mla_baseline.py's MlaRank, unchanged; weights are
random, scaled by 1/sqrt(fan-in). Timing: CUDA events around each step after warm-up, median, min
and p90; peak bytes from torch.cuda.max_memory_allocated over the timed steps, and the device memory
the driver reports in use (the CUDA context and libraries included), as mla_cuda_bench reports both.

Usage: python3 launch/gpu_torch_seed.py [--csv FILE] [--reps N] [--batch B]
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mla_baseline as baseline  # noqa: E402

SEED_MODEL = {"dim": 7168, "n_local_heads": 16, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
              "qk_rope_head_dim": 64, "v_head_dim": 128, "max_seq_len": 512, "original_seq_len": 4096,
              "rope_theta": 10000.0, "rope_factor": 40.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0}


def random_weights(shape, generator):
    weights = {}
    for name, dims in shape.expected_weight_shapes().items():
        if name.endswith("_norm"):
            values = 1.0 + 0.2 * torch.randn(dims, generator=generator, device="cuda")
        else:
            values = torch.randn(dims, generator=generator, device="cuda") / math.sqrt(dims[1])
        weights[name] = values.to(torch.bfloat16)
    return weights


def time_steps(layer, x, start_pos, formulation, reps):
    for _ in range(3):
        layer(x, start_pos, formulation)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        layer(x, start_pos, formulation)
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    # The statistic of runtime/bench/harness.h (summarize_times), so both sides of the table agree:
    # the mean of the middle two for an even count, and the value at rank ceil(0.9 n) as p90.
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    return median, times[0], times[math.ceil(0.9 * n) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", default="")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_torch_seed.py: torch.cuda.is_available() is false; nothing measured", file=sys.stderr)
        return 77
    shape = baseline.ModelShape(SEED_MODEL)
    generator = torch.Generator(device="cuda").manual_seed(1)
    weights = random_weights(shape, generator)
    rows = []
    header = "device,torch,phase,seq_len,batch,formulation,median_ms,min_ms,p90_ms,peak_bytes,device_used_bytes"
    print(f"{'phase':8} {'seq':>5} {'form':7} {'median_ms':>10} {'min_ms':>10} {'p90_ms':>10} {'peak_MB':>10}")
    with torch.inference_mode():
        for phase in ("prefill", "decode"):
            for seq_len in (64, 128, 256, 512):
                for formulation in (("naive",) if phase == "prefill" else ("naive", "absorb")):
                    layer = baseline.MlaRank(shape, weights, torch.bfloat16, "cuda", seq_len)
                    layer.allocate_cache(args.batch, seq_len, formulation)
                    tokens = torch.rand(args.batch, seq_len, shape.dim, generator=generator, device="cuda")
                    tokens = tokens.to(torch.bfloat16)
                    if phase == "decode":
                        layer(tokens[:, :seq_len - 1], 0, formulation)
                        x, start_pos = tokens[:, seq_len - 1:].contiguous(), seq_len - 1
                    else:
                        x, start_pos = tokens, 0
                    median, low, p90 = time_steps(layer, x, start_pos, formulation, args.reps)
                    peak = torch.cuda.max_memory_allocated()
                    free, total = torch.cuda.mem_get_info()  # the driver's view, as mla_cuda_bench reports it
                    used = total - free
                    print(f"{phase:8} {seq_len:5d} {formulation:7} {median:10.3f} {low:10.3f} {p90:10.3f} "
                          f"{peak / 1e6:10.1f}")
                    rows.append(f"{torch.cuda.get_device_name()},{torch.__version__},{phase},{seq_len},{args.batch},"
                                f"{formulation},{median:.4f},{low:.4f},{p90:.4f},{peak},{used}")
                    del layer
                    torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv + ".tmp", "w") as file:
            file.write(header + "\n" + "\n".join(rows) + "\n")
        os.replace(args.csv + ".tmp", args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
