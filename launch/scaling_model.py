#!/usr/bin/env python3
"""A tensor-parallel scaling model of one MLA layer step, from single-rank times and all-reduce costs.

Usage: scaling_model.py --bench CSV [CSV ...] --allreduce CSV [CSV ...] --out DIR [--dim 7168]
                        [--ib-nics-per-node 8]

The model. A world-1 row of mla_bench gives t1 = median_ms for one shape (phase, batch, seq_len, ...).
The projections every rank repeats (they are not split by heads) take t_rep = t1 * replicated_flop / flop;
the rest, t_split = t1 - t_rep, divides over the W ranks. Each rank then holds a partial fp32
[batch, step_tokens, dim] sum of the output projection, which one all-reduce combines:

    t(W)    = t_rep + t_split / W + t_ar(W, m)
    m       = batch * step_tokens * dim * 4 bytes            (dim is not in the CSV: --dim)
    t_ar    = alpha(W) + m * 2(W-1)/W / busbw(W)             (busbw as nccl-tests defines it)
    eff(W)  = t(1) / (W * t(W))

alpha (small-message time) and busbw come from
  (a) a fit of mla_allreduce_bench's CSV, at the worlds it measured: our MPI communicator (transport
      "mpi", in place, as the layer calls it) for CPU ranks; NCCL for CUDA ranks where it was measured;
  (b) published figures for H100 SXM nodes (SOURCES): NVLink 4 through NVSwitch for TP 2..8 inside a
      node, InfiniBand NDR across nodes for TP 16..64.
Without a world-1 CUDA row there is no GPU compute time: the GPU rows then carry only t_ar, and the
summary gives the Amdahl cap 1 / (1 + (W-1) r) that the replicated share r = replicated_flop / flop
(a FLOP ratio, the same on any hardware) puts on the efficiency, and how long a single-GPU step must
be for TP at W to keep a target efficiency (--target-efficiency, default 50%).

Writes DIR/scaling_model.csv and DIR/scaling_model.png, and a Markdown summary on stdout.
"""
import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_bench import SHAPE_COLUMNS, fail, group_by, log2_axis, note, pick_config, read_csvs, text  # noqa: E402

from link_figures import (GPUS_PER_NODE, IB_ALPHA_US, IB_NDR_PER_NIC_GBPS, INTRA_NODE_RING_GBPS,  # noqa: E402
                          NVLINK_ALPHA_US, NVLINK_BUSBW_GBPS, SOURCES)
import matplotlib.pyplot as plt  # noqa: E402  (plot_bench chose the Agg backend)
from matplotlib.lines import Line2D  # noqa: E402

WORLDS = (1, 2, 4, 8, 16, 32, 64)
OUTPUT_COLUMNS = ("source_backend", "phase", "batch", "seq_len", "world", "link", "t_compute_ms", "t_allreduce_ms",
                  "t_step_ms", "efficiency", "measured_ms",
                  # beyond the contract: what the row was computed from
                  "compute_dtype", "config", "step_tokens", "message_bytes", "alpha_us", "busbw_gbps",
                  "replicated_share")

class Link:
    """How an all-reduce of m bytes over W ranks costs: alpha(W) + m 2(W-1)/W / busbw(W)."""

    def __init__(self, name, worlds, alpha_us, busbw_gbps, basis):
        self.name, self.worlds, self.basis = name, tuple(worlds), basis
        self.alpha_us, self.busbw_gbps = alpha_us, busbw_gbps  # callables of W

    def time_ms(self, world, message_bytes):
        if world == 1:
            return 0.0
        wire_bytes = message_bytes * 2.0 * (world - 1) / world
        return (self.alpha_us(world) + wire_bytes / (self.busbw_gbps(world) * 1e3)) / 1e3  # 1 GB/s = 1e3 B/us


def published_links(nics_per_node):
    # Rail-optimised rings leave each node through every NIC at once; a ring hop inside the node still
    # runs over NVLink, so the per-rank bandwidth is the smaller of the two.
    ib_gbps = min(nics_per_node * IB_NDR_PER_NIC_GBPS, INTRA_NODE_RING_GBPS)
    return [
        Link("nvlink-h100", (2, 4, 8), lambda w: NVLINK_ALPHA_US, lambda w: NVLINK_BUSBW_GBPS[w],
             f"alpha {NVLINK_ALPHA_US:g} us [nvlink_latency]; busbw 370 GB/s at 2-4 GPUs, 480 at 8 "
             "[nvlink_busbw, nvls_by_world]; line rate 450 GB/s each way [hgx_h100]"),
        Link(f"ib-ndr-{nics_per_node}nic", (16, 32, 64), lambda w: IB_ALPHA_US, lambda w: ib_gbps,
             f"alpha {IB_ALPHA_US:g} us (assumption [ib_latency, ib_latency_measured]); busbw min({nics_per_node} "
             f"NICs x {IB_NDR_PER_NIC_GBPS:g}, {INTRA_NODE_RING_GBPS:g}) = {ib_gbps:g} GB/s [ib_per_nic, "
             "dgx_h100_nics, nvlink_busbw]"),
        Link("ib-ndr-1nic", (16, 32, 64), lambda w: IB_ALPHA_US, lambda w: IB_NDR_PER_NIC_GBPS,
             f"worst case: all of a node's traffic through one NIC, busbw {IB_NDR_PER_NIC_GBPS:g} GB/s "
             "[ib_per_nic]; alpha as above"),
    ]


# ---- fitting the measured all-reduce -------------------------------------------------------------------

def fit_alpha_busbw(rows, world):
    """(alpha_us, busbw_gbps) of t = alpha + x / B, x = bytes 2(W-1)/W, by least squares weighted by 1/t^2,
    so that the small messages (which set alpha) count as much as the large ones (which set B)."""
    points = [(r["bytes"] * 2.0 * (world - 1) / world, r["time_us"]) for r in rows if r["time_us"] > 0]
    weights = [1.0 / t**2 for _x, t in points]
    s, sx = sum(weights), sum(w * x for w, (x, _t) in zip(weights, points))
    st, sxx = sum(w * t for w, (_x, t) in zip(weights, points)), sum(w * x * x for w, (x, _t) in zip(weights, points))
    sxt = sum(w * x * t for w, (x, t) in zip(weights, points))
    det = s * sxx - sx * sx
    slope = (s * sxt - sx * st) / det if det > 0 else 0.0
    alpha = (st - slope * sx) / s if det > 0 else min(t for _x, t in points)
    if alpha < 0:  # refit through the origin rather than report a negative latency
        alpha, slope = 0.0, sxt / sxx
    if slope <= 0:  # flat times (sizes too small to see the bandwidth): take the best busbw measured
        return alpha, max(r["busbw_gbps"] for r in rows)
    return alpha, 1e-3 / slope  # slope in us per byte; 1 B/us = 1e-3 GB/s


def measured_links(allreduce_rows):
    """{transport: Link over the worlds it was measured at}, from in-place rows (as the layer calls it)."""
    links, fits = {}, []
    for (transport,), rows in group_by(allreduce_rows, ("transport",)).items():
        in_place = [r for r in rows if r.get("in_place") == 1] or rows
        params = {}
        for (world,), world_rows in group_by(in_place, ("world",)).items():
            if world and world > 1 and len(world_rows) >= 2:
                params[world] = fit_alpha_busbw(world_rows, world)
                fits.append((transport, world, len(world_rows), min(r["bytes"] for r in world_rows),
                             max(r["bytes"] for r in world_rows)) + params[world])
        if params:
            links[transport] = Link(f"{transport}-measured", sorted(params), lambda w, p=params: p[w][0],
                                    lambda w, p=params: p[w][1], f"fit of mla_allreduce_bench ({transport}, in place)")
    return links, fits


# ---- shapes and predictions ----------------------------------------------------------------------------

def step_tokens(row):
    """Query tokens per step: the CSV's column, else what the phase implies (older CSVs lack the column)."""
    if row.get("step_tokens"):
        return row["step_tokens"]
    return {"prefill": row["seq_len"], "chunked_prefill": row.get("chunk") or row["seq_len"]}.get(row["phase"], 1)


def shapes(bench_rows):
    """One entry per shape with a world-1 row: its t1, replicated share and the measured times at other worlds."""
    found, without_flop = [], 0
    for key, rows in group_by(bench_rows, SHAPE_COLUMNS).items():
        single = [r for r in rows if r["world"] == 1]
        if not single:
            continue
        config = pick_config(rows)
        if not any((r["attention"], r["formulation"]) == config for r in single):
            config = pick_config(single)
        chosen = [r for r in rows if (r["attention"], r["formulation"]) == config]
        base = next(r for r in chosen if r["world"] == 1)
        flop, replicated = base.get("flop"), base.get("replicated_flop")
        share = replicated / flop if flop and replicated is not None else 0.0
        without_flop += not flop or replicated is None
        measured = {}
        for r in chosen:
            measured.setdefault(r["world"], r)
        found.append(dict(zip(SHAPE_COLUMNS, key), config=f"{config[0]}/{config[1]}", t1_ms=base["median_ms"],
                          replicated_share=share, measured=measured, step_tokens=step_tokens(base)))
    if without_flop:
        note(f"{without_flop} shape(s) without flop / replicated_flop: all of their t1 taken as split over the ranks")
    return found


def message_bytes(shape, dim):
    return shape["batch"] * shape["step_tokens"] * dim * 4  # fp32 partial outputs [B, S, dim]


def prediction(shape, link, world, dim, with_compute=True):
    m = message_bytes(shape, dim)
    t_ar = link.time_ms(world, m) if link else 0.0
    row = {"source_backend": shape["backend"] if with_compute else "none", "phase": shape["phase"],
           "batch": shape["batch"], "seq_len": shape["seq_len"], "world": world,
           "link": link.name if link else "none", "t_allreduce_ms": t_ar, "compute_dtype": shape["compute_dtype"],
           "config": shape["config"], "step_tokens": shape["step_tokens"], "message_bytes": m,
           "alpha_us": link.alpha_us(world) if link and world > 1 else None,
           "busbw_gbps": link.busbw_gbps(world) if link and world > 1 else None,
           "replicated_share": shape["replicated_share"]}
    if with_compute:
        t1, share = shape["t1_ms"], shape["replicated_share"]
        row["t_compute_ms"] = t1 * share + t1 * (1 - share) / world
        row["t_step_ms"] = row["t_compute_ms"] + t_ar
        row["efficiency"] = t1 / (world * row["t_step_ms"])
        measured = shape["measured"].get(world)
        row["measured_ms"] = measured["median_ms"] if measured else None
    return row


def predict(all_shapes, links_by_transport, published, dim):
    """Rows for scaling_model.csv: measured links for every shape's backend, published links for CUDA (or,
    lacking a CUDA t1, all-reduce only rows for the GPU links)."""
    rows = []
    have_cuda = any(s["backend"] == "cuda" for s in all_shapes)
    for shape in all_shapes:
        rows.append(prediction(shape, None, 1, dim))
        transports = ("nccl",) if shape["backend"] == "cuda" else ("mpi", "mpi-raw")
        measured = next((links_by_transport[t] for t in transports if t in links_by_transport), None)
        links = ([measured] if measured else []) + (published if shape["backend"] == "cuda" else [])
        rows += [prediction(shape, link, w, dim) for link in links for w in link.worlds]
    if not have_cuda:
        seen = set()
        for shape in all_shapes:
            key = (shape["phase"], shape["batch"], shape["seq_len"], shape["step_tokens"])
            if key not in seen:
                seen.add(key)
                rows += [prediction(shape, link, w, dim, with_compute=False) for link in published
                         for w in link.worlds]
    return rows


def csv_cell(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(OUTPUT_COLUMNS)
        writer.writerows([csv_cell(row.get(c)) for c in OUTPUT_COLUMNS] for row in rows)


def amdahl_cap(share, world):
    """The efficiency the replicated work alone allows: t1 / (W (r t1 + (1-r) t1 / W))."""
    return 1.0 / (1.0 + (world - 1) * share)


def t1_for_efficiency(share, world, t_ar_ms, target):
    """The single-rank step time (ms) from which t(W) keeps `target` efficiency, None if the cap is below it:
    t1 / (t1 (1 + (W-1) r) + W t_ar) >= target."""
    room = 1.0 - target * (1.0 + (world - 1) * share)
    return target * world * t_ar_ms / room if room > 0 else None


# ---- the plot ------------------------------------------------------------------------------------------

LINE_KINDS = (  # (label, test on a row, style)
    ("CPU ranks: model with the measured all-reduce", lambda r: r["source_backend"] == "cpu",
     {"linestyle": "-", "marker": "o"}),
    ("GPU: model, NVLink to 8, then IB NDR (all NICs)", lambda r: r["source_backend"] == "cuda" and
     not r["link"].endswith("-1nic"), {"linestyle": "--", "marker": "s"}),
    ("GPU: IB NDR through one NIC per node (worst case)", lambda r: r["source_backend"] == "cuda" and
     r["link"].endswith("-1nic"), {"linestyle": ":", "marker": "s"}),
    ("GPU all-reduce only (no GPU step measured): NVLink, IB", lambda r: r["source_backend"] == "none" and
     not r["link"].endswith("-1nic"), {"linestyle": "-.", "marker": "^"}),
    ("GPU all-reduce only, one NIC per node", lambda r: r["source_backend"] == "none" and
     r["link"].endswith("-1nic"), {"linestyle": ":", "marker": "^"}),
)


def curve(rows, world_one):
    """Points of one line by world; a line of cross-node links starts from the W=8 NVLink point."""
    points = {r["world"]: r for r in rows}
    if world_one and 1 not in points:
        points[1] = world_one
    return [points[w] for w in sorted(points)]


def draw_phase(time_ax, eff_ax, rows, phase_shapes, colors):
    for (backend, batch, seq_len), shape_rows in group_by(rows, ("source_backend", "batch", "seq_len")).items():
        color = colors[(batch, seq_len)]
        world_one = next((r for r in shape_rows if r["world"] == 1), None)
        for _label, test, style in LINE_KINDS:
            kind_rows = [r for r in shape_rows if test(r) and r["world"] > 1]
            if not kind_rows:
                continue
            starts_at_one = backend != "none"
            if kind_rows[0]["link"].endswith("-1nic"):  # branches off the NVLink line at the node boundary
                kind_rows += [r for r in shape_rows if r["link"].startswith("nvlink") and r["world"] == 8]
                starts_at_one = False
            points = curve(kind_rows, world_one if starts_at_one else None)
            value = "t_allreduce_ms" if backend == "none" else "t_step_ms"
            time_ax.plot([p["world"] for p in points], [p[value] for p in points], color=color, markersize=4,
                         **style)
            if backend != "none":
                eff_ax.plot([p["world"] for p in points], [p["efficiency"] for p in points], color=color,
                            markersize=4, **style)
    for shape in phase_shapes:
        color = colors[(shape["batch"], shape["seq_len"])]
        measured = sorted(shape["measured"].items())
        time_ax.plot([w for w, _r in measured], [r["median_ms"] for _w, r in measured], "X", color=color,
                     markeredgecolor="black", markersize=9, linestyle="none")
        eff_ax.plot([w for w, _r in measured], [shape["t1_ms"] / (w * r["median_ms"]) for w, r in measured], "X",
                    color=color, markeredgecolor="black", markersize=9, linestyle="none")
    for index, share in enumerate(sorted({round(s["replicated_share"], 2) for s in phase_shapes})):
        eff_ax.plot(WORLDS, [amdahl_cap(share, w) for w in WORLDS], color="0.55", linewidth=0.9, alpha=0.7)
        eff_ax.annotate(f"cap, r={share:g}", (WORLDS[-1 - index % 3], amdahl_cap(share, WORLDS[-1 - index % 3])),
                        fontsize=6, color="0.4", textcoords="offset points", xytext=(-2, 3), ha="right")


def style_axes(time_ax, eff_ax, phase, colors):
    for ax in (time_ax, eff_ax):
        log2_axis(ax, WORLDS, "tensor-parallel degree W (ranks)")
        ax.axvline(math.sqrt(GPUS_PER_NODE * 2 * GPUS_PER_NODE), color="0.6", linewidth=0.8, linestyle="--")
        ax.text(math.sqrt(GPUS_PER_NODE * 2 * GPUS_PER_NODE), 0.98, " node boundary (8 GPUs)",
                transform=ax.get_xaxis_transform(), fontsize=7, color="0.4", va="top")
        ax.grid(alpha=0.3, which="both")
    time_ax.set_yscale("log")
    time_ax.set_ylabel("ms per layer step (all-reduce only\nfor the GPU rows with no step measured)")
    time_ax.set_title(f"{phase}: predicted step time", fontsize=10)
    eff_ax.set_ylim(0, 1.05)
    eff_ax.set_ylabel("efficiency t(1) / (W t(W))")
    eff_ax.set_title(f"{phase}: efficiency (grey: cap 1/(1+(W-1)r) from replicated FLOPs)", fontsize=10)
    shape_handles = [Line2D([], [], color=c, linewidth=3, label=f"batch {b}, kv {s}") for (b, s), c in colors.items()]
    eff_ax.legend(handles=shape_handles, fontsize=7, loc="upper right", title="shape", title_fontsize=7)


def plot(rows, all_shapes, out_path, title):
    phases = list(group_by(rows, ("phase",)))
    fig, axes = plt.subplots(len(phases), 2, figsize=(14, 4.8 * len(phases) + 1.2), squeeze=False)
    for (time_ax, eff_ax), (phase,) in zip(axes, phases):
        phase_rows = [r for r in rows if r["phase"] == phase]
        keys = list(group_by(phase_rows, ("batch", "seq_len")))
        colors = {key: f"C{i % 10}" for i, key in enumerate(keys)}
        draw_phase(time_ax, eff_ax, phase_rows, [s for s in all_shapes if s["phase"] == phase], colors)
        style_axes(time_ax, eff_ax, phase, colors)
    kinds = {label for label, test, _s in LINE_KINDS if any(test(r) for r in rows)}
    handles = [Line2D([], [], color="0.3", label=label, **style) for label, _t, style in LINE_KINDS if label in kinds]
    handles.append(Line2D([], [], color="0.5", marker="X", markeredgecolor="black", linestyle="none",
                          label="measured (mla_bench rows)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


# ---- the Markdown summary ------------------------------------------------------------------------------

def table(headers, rows):
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(" --- " for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(text(v) for v in row) + " |")
    print()


def summarize(rows, all_shapes, fits, published, args):
    print("## Tensor-parallel scaling model\n")
    print("```\nt(W)   = t_rep + t_split / W + t_ar(W, m)       t_rep = t1 * replicated_flop / flop,"
          " t_split = t1 - t_rep\nm      = batch * step_tokens * dim * 4 bytes    "
          f"(fp32 partial outputs; dim = {args.dim})\nt_ar   = alpha(W) + m * 2(W-1)/W / busbw(W)\n"
          "eff(W) = t(1) / (W * t(W))\n```\n")
    print("t1 is the world-1 median of mla_bench for the shape, from the auto/auto rows where they ran, else "
          "from the fastest path and formulation at world 1 (column `config`).\n")
    print("### All-reduce costs\n")
    table(["link", "worlds", "alpha (us)", "busbw (GB/s)", "basis"],
          [(link.name, ", ".join(map(str, link.worlds)), per_world(link.alpha_us, link.worlds),
            per_world(link.busbw_gbps, link.worlds), link.basis) for link in published])
    if fits:
        print("Measured (fit of `t = alpha + bytes 2(W-1)/W / busbw` to mla_allreduce_bench's in-place rows):\n")
        table(["transport", "W", "sizes", "bytes from", "bytes to", "alpha (us)", "busbw (GB/s)"], fits)
    else:
        print("No all-reduce rows: no measured link; CPU shapes get only W = 1.\n")
    with_compute = [r for r in rows if r["source_backend"] != "none"]
    if with_compute:
        print("### Predicted step times\n")
        table(["source", "phase", "batch", "seq_len", "config", "r", "W", "link", "t_compute ms", "t_ar ms",
               "t_step ms", "eff", "measured ms", "measured eff"],
              [(r["source_backend"], r["phase"], r["batch"], r["seq_len"], r["config"], r["replicated_share"],
                r["world"], r["link"], r["t_compute_ms"], r["t_allreduce_ms"], r["t_step_ms"], r["efficiency"],
                r["measured_ms"], measured_efficiency(r, all_shapes)) for r in with_compute])
    summarize_comm_only([r for r in rows if r["source_backend"] == "none"], args.target_efficiency)
    summarize_notes(all_shapes)
    print("### Sources\n")
    for key, (url, what) in SOURCES.items():
        print(f"- [{key}] {url}: {what}")
    print()


def per_world(parameter, worlds):
    values = [parameter(w) for w in worlds]
    if len(set(values)) == 1:
        return f"{values[0]:g}"
    return ", ".join(f"{v:g} (W={w})" for w, v in zip(worlds, values))


def measured_efficiency(row, all_shapes):
    if row["measured_ms"] is None:
        return None
    t1 = next(s["t1_ms"] for s in all_shapes if (s["backend"], s["phase"], s["batch"], s["seq_len"], s["config"],
                                                 s["compute_dtype"]) == (row["source_backend"], row["phase"],
                                                                         row["batch"], row["seq_len"], row["config"],
                                                                         row["compute_dtype"]))
    return t1 / (row["world"] * row["measured_ms"])


def summarize_comm_only(rows, target):
    if not rows:
        return
    print("### GPU: all-reduce only\n")
    print("No world-1 CUDA row was measured, so there is no GPU compute time to split. These rows give the "
          "all-reduce time alone (t(W) >= t_ar), the efficiency cap that the replicated projections set, and "
          f"the single-GPU step time t1 from which the model keeps {target:.0%} efficiency at that W (empty: "
          "the cap is below it).\n")
    table(["phase", "batch", "seq_len", "step_tokens", "message MiB", "W", "link", "t_ar ms", "r", "eff cap",
           f"t1 for {target:.0%} eff (ms)"],
          [(r["phase"], r["batch"], r["seq_len"], r["step_tokens"], r["message_bytes"] / 2**20, r["world"],
            r["link"], r["t_allreduce_ms"], r["replicated_share"], amdahl_cap(r["replicated_share"], r["world"]),
            t1_for_efficiency(r["replicated_share"], r["world"], r["t_allreduce_ms"], target)) for r in rows])


def summarize_notes(all_shapes):
    threads = {}
    for shape in all_shapes:
        if shape["backend"] == "cpu":
            for world, row in shape["measured"].items():
                threads.setdefault(world, set()).add(row.get("threads"))
    if threads:
        print("CPU threads per rank by world: " + ", ".join(
            f"W={w}: {'/'.join(str(t) for t in sorted(ts, key=str))}" for w, ts in sorted(threads.items())) +
            ". Ranks on one host share its cores and memory bandwidth, so the measured CPU efficiency also "
            "shows that sharing, which the model (each rank with its own hardware) does not.\n")
    print("r = replicated_flop / flop of the world-1 row; the split part assumes the heads divide evenly.\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", nargs="+", required=True, help="mla_bench CSV files")
    parser.add_argument("--allreduce", nargs="+", required=True, help="mla_allreduce_bench CSV files")
    parser.add_argument("--out", required=True, help="folder for scaling_model.csv and .png (created)")
    parser.add_argument("--dim", type=int, default=7168, help="model dim, the width of the all-reduced output")
    parser.add_argument("--ib-nics-per-node", type=int, default=GPUS_PER_NODE,
                        help="400 Gb/s NICs per 8-GPU node that carry the cross-node all-reduce")
    parser.add_argument("--target-efficiency", type=float, default=0.5,
                        help="for GPU rows without a measured step: the efficiency whose single-GPU t1 is reported")
    parser.add_argument("--title", default="Tensor-parallel scaling model of the MLA layer step")
    args = parser.parse_args()
    if args.dim <= 0 or args.ib_nics_per_node <= 0 or not 0 < args.target_efficiency < 1:
        fail("--dim and --ib-nics-per-node must be positive, --target-efficiency between 0 and 1")
    bench, _ = read_csvs(args.bench)
    _, allreduce = read_csvs(args.allreduce)
    all_shapes = shapes(bench)
    if not all_shapes:
        fail("no world-1 rows in the --bench CSVs: the model scales from single-rank times")
    if not allreduce:
        note("no rows in the --allreduce CSVs: only the published links are used")
    links, fits = measured_links(allreduce)
    published = published_links(args.ib_nics_per_node)
    rows = predict(all_shapes, links, published, args.dim)
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "scaling_model.csv"), rows)
    plot(rows, all_shapes, os.path.join(args.out, "scaling_model.png"), args.title)
    summarize(rows, all_shapes, fits, published, args)


if __name__ == "__main__":
    main()
