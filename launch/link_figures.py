"""Published interconnect figures for H100/H200 SXM nodes, with their sources: what
scaling_model.py and context_parallel_model.py cost collectives with where nothing was measured."""

GPUS_PER_NODE = 8
SOURCES = {
    "hgx_h100": ("https://developer.nvidia.com/blog/introducing-nvidia-hgx-h100-an-accelerated-server-platform-"
                 "for-ai-and-high-performance-computing/",
                 "HGX H100 8-GPU: four NVSwitches connect all eight GPUs; NVLink runs at 900 GB/s bidirectional "
                 "per GPU, i.e. 450 GB/s each way"),
    "dgx_h100_nics": ("https://docs.nvidia.com/dgx-basepod/reference-architecture-infrastructure-foundation-"
                      "enterprise-ai/latest/core-components.html",
                      "DGX H100: eight single-port ConnectX-7 (one per GPU) for the compute fabric, up to 400 Gb/s "
                      "InfiniBand each"),
    "busbw": ("https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md",
              "all-reduce: t = (S / B) * 2(n-1)/n at best, so busbw = algbw * 2(n-1)/n is comparable with the "
              "per-rank link bandwidth B"),
    "nvlink_busbw": ("https://github.com/NVIDIA/nccl-tests/issues/212",
                     "NCCL maintainer: 450 GB/s is the NVLink line rate, ~370 GB/s effective after protocol "
                     "overhead (ring); with NVLink SHARP 8 H100 reach a peak all-reduce busbw of ~480 GB/s at "
                     "large sizes"),
    "nvls_by_world": ("https://github.com/NVIDIA/nccl/issues/1455",
                      "8x H100 SXM, 2-4 GB messages: ring busbw 365-370 GB/s for 2..8 GPUs; NVLS ~370 up to 4 GPUs, "
                      "then 420 / 440 / 460 / 480 GB/s for 5 / 6 / 7 / 8"),
    "ib_per_nic": ("https://github.com/NVIDIA/nccl-tests/issues/290",
                   "NVIDIA: ~476 GB/s is the expected single-node H100 all-reduce busbw; with NDR 400 Gb/s NICs "
                   "expect 46-48 GB/s per NIC across nodes"),
    "nvlink_latency": ("https://github.com/NVIDIA/nccl/issues/1259",
                       "8x H100 HGX, NCCL 2.20, CUDA graphs: a 128 B - 64 KiB all-reduce over NVLink (NVLS) takes "
                       "~6 us on 2 GPUs"),
    "ib_latency": ("https://github.com/NVIDIA/nccl/issues/1453",
                   "NCCL's own tuning model (NCCL_DEBUG=INFO) predicts ~25 us for a 4 B all-reduce over IB on a "
                   "3-node H100 cluster"),
    "ib_latency_measured": ("https://github.com/NVIDIA/nccl/issues/1244",
                            "2 nodes x 8 H20 with 16 ConnectX-7 NDR: ~46 us for all-reduces up to 1 KiB (NVLSTree)"),
}

# NCCL all-reduce bus bandwidth inside one H100 SXM node (GB/s): ~370 with rings at any width (protocol
# overhead on the 450 GB/s line rate), more with NVLink SHARP from 5 GPUs on (nvls_by_world, nvlink_busbw).
NVLINK_BUSBW_GBPS = {2: 370.0, 4: 370.0, 5: 420.0, 6: 440.0, 7: 460.0, 8: 480.0}
NVLINK_ALPHA_US = 6.0          # nvlink_latency
IB_NDR_PER_NIC_GBPS = 47.0     # ib_per_nic: 46-48 GB/s per 400 Gb/s NIC
IB_ALPHA_US = 25.0             # assumption: NCCL's own model says ~25 us [ib_latency], 46 us measured [..._measured]
INTRA_NODE_RING_GBPS = 370.0   # nvlink_busbw: a ring that also crosses NVLink is held to this
