#!/usr/bin/env python3
"""Plots the CSVs that mla_bench and mla_allreduce_bench write, and prints on stdout one Markdown table per
plot with the numbers plotted (for docs to paste).

Usage: plot_bench.py CSV [CSV ...] --out DIR [--title TEXT]

Which tool wrote a CSV is told by its header. The plots, each skipped with a one-line note on stderr when
its rows are absent:
  seed_table_time.png    time vs seq_len of the fast, standard and auto paths, one panel per
                         backend / phase / dtype / batch, with the original proposal's A100 claim on CUDA
                         prefill panels
  seed_table_memory.png  attention score workspace, process peak RSS and device peak vs seq_len
  world_scaling.png      time and all-reduce time vs world, and parallel efficiency t(1) / (W t(W))
  vs_torch.png           ours vs the PyTorch baseline of the same rank-0 slice (eager, and torch.compile
                         or a CUDA graph where the sweep timed them), with the speedups
  allreduce.png          all-reduce bus bandwidth and time vs message size
scaling_model.py reads the same CSVs through read_csvs() and pick_config() below.
"""
import argparse
import csv
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines that run sweeps
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

PROG = os.path.splitext(os.path.basename(sys.argv[0]))[0]  # this script, or scaling_model importing it
TEXT_COLUMNS = {"backend", "phase", "attention", "formulation", "compute_dtype", "weights_dtype", "path_chosen",
                "formulation_chosen", "torch_formulation", "sweep", "transport", "dtype", "host", "ranks_per_node"}
BENCH_HEADER = {"backend", "world", "phase", "seq_len", "attention", "formulation", "median_ms"}
ALLREDUCE_HEADER = {"transport", "world", "bytes", "in_place", "time_us", "busbw_gbps"}
PHASE_ORDER = {"prefill": 0, "chunked_prefill": 1, "decode": 2}

# One shape of the layer step; the rows of a shape differ by world (and by path and formulation).
SHAPE_COLUMNS = ("backend", "phase", "batch", "seq_len", "chunk", "step_tokens", "compute_dtype", "weights_dtype")
PANEL_COLUMNS = ("backend", "world", "phase", "compute_dtype", "weights_dtype", "batch")
SERIES_EXTRAS = ("chunk", "threads", "sweep")  # named in a series' label only where they vary in a panel

# The original proposal's table: ms per prefill step on an A100 at batch 32. Its fast-path row equals the
# original at 512, as the proposal printed it.
CLAIMED_A100_MS = (
    ("claimed (A100, batch 32): original attention", {64: 0.42, 128: 0.89, 256: 1.82, 512: 3.75}, "0.35", "x"),
    ("claimed: fast path", {64: 0.31, 128: 0.65, 256: 1.31, 512: 3.75}, "0.6", "+"),
)
ATTENTION_COLOR = {"fast": "tab:blue", "standard": "tab:orange", "auto": "tab:green"}
FORMULATION_STYLE = {"naive": ("-", "o"), "absorb": ("--", "s"), "auto": (":", "^")}


# ---- reading -------------------------------------------------------------------------------------------

def cell(column, text):
    text = (text or "").strip()
    if column in TEXT_COLUMNS:
        return text
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csvs(paths):
    """(bench rows, all-reduce rows) from every CSV, each row a dict of numbers, text or None (empty cell)."""
    bench, allreduce = [], []
    for path in paths:
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                columns = set(reader.fieldnames or [])
                rows = [{k: cell(k, v) for k, v in row.items() if k is not None} for row in reader]
        except OSError as error:
            fail(f"cannot read {path}: {error.strerror}")
        if BENCH_HEADER <= columns:
            bench += complete(path, rows, ("world", "batch", "seq_len", "median_ms"))
        elif ALLREDUCE_HEADER <= columns:
            allreduce += complete(path, rows, ("world", "bytes", "time_us", "busbw_gbps"))
        else:
            note(f"{path}: header is neither mla_bench's nor mla_allreduce_bench's; ignored")
    return bench, allreduce


def complete(path, rows, columns):
    """The rows whose `columns` all hold numbers; a note names how many others were left out."""
    kept = [r for r in rows if all(isinstance(r.get(c), (int, float)) for c in columns)]
    if len(kept) < len(rows):
        note(f"{path}: {len(rows) - len(kept)} row(s) without {', '.join(columns)} left out")
    return kept


def fail(message):
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(2)


def note(message):
    print(f"{PROG}: {message}", file=sys.stderr)


# ---- grouping ------------------------------------------------------------------------------------------

def order(value):
    """Sort key that puts phases in step order and never compares a number with text or None."""
    if value in PHASE_ORDER:
        return (0, PHASE_ORDER[value], "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


def group_by(rows, columns):
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row.get(c) for c in columns), []).append(row)
    return dict(sorted(groups.items(), key=lambda item: tuple(order(v) for v in item[0])))


def varying(rows, columns):
    return tuple(c for c in columns if len({r.get(c) for r in rows}) > 1)


def pick_config(rows):
    """The (attention, formulation) that stands for a shape across worlds: auto/auto when it ran (what a user
    gets), else the fastest at the smallest world measured."""
    if any((r["attention"], r["formulation"]) == ("auto", "auto") for r in rows):
        return ("auto", "auto")
    smallest = min(r["world"] for r in rows)
    best = min((r for r in rows if r["world"] == smallest), key=lambda r: r["median_ms"])
    return (best["attention"], best["formulation"])


def scaling_groups(rows):
    """(shape, config, {world: row}) for every shape measured at more than one world, one config each."""
    groups = []
    for shape, shape_rows in group_by(rows, SHAPE_COLUMNS).items():
        if len({r["world"] for r in shape_rows}) < 2:
            continue
        config = pick_config(shape_rows)
        by_world = {}
        for row in shape_rows:
            if (row["attention"], row["formulation"]) == config:
                by_world.setdefault(row["world"], row)
        if len(by_world) > 1:
            groups.append((dict(zip(SHAPE_COLUMNS, shape)), config, dict(sorted(by_world.items()))))
    return groups


# ---- output helpers ------------------------------------------------------------------------------------

def text(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(title, headers, rows):
    print(f"### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(" --- " for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(text(v) for v in row) + " |")
    print()


def binary_bytes(value, _position=None):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.3g} {unit}"
        value /= 1024.0


def mib(value):
    return None if value is None else value / 2**20


def grid(n_panels, n_columns=3, width=5.4, height=4.0):
    n_columns = max(1, min(n_columns, n_panels))
    n_rows = math.ceil(n_panels / n_columns)
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(width * n_columns, height * n_rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def save(fig, out_dir, name, what, title):
    """Writes the figure; `what` says what it shows, under the user's --title when one was given."""
    lines = 2 if title else 1
    height = fig.get_figheight()
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=12, y=1 - 0.1 / height)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.15 + 0.25 * lines) / height))
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    plt.close(fig)


def log2_axis(ax, values, label):
    values = sorted({v for v in values if v})
    ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def auto_log_y(ax, values):
    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > 30:
        ax.set_yscale("log")


def series_style(attention, formulation):
    linestyle, marker = FORMULATION_STYLE.get(formulation, ("-.", "d"))
    return {"color": ATTENTION_COLOR.get(attention, "tab:purple"), "linestyle": linestyle, "marker": marker}


def series(rows):
    """(attention, formulation, label, rows by seq_len) per line of a panel."""
    extras = varying(rows, SERIES_EXTRAS)
    lines = []
    for key, line_rows in group_by(rows, ("attention", "formulation") + extras).items():
        label = f"{key[0]} / {key[1]}" + "".join(f", {c} {v}" for c, v in zip(extras, key[2:]))
        lines.append((key[0], key[1], label, sorted(line_rows, key=lambda r: r["seq_len"])))
    return lines


def panel_title(key):
    backend, world, phase, compute_dtype, weights_dtype, batch = key
    return f"{backend} W={world} {phase}\ncompute {compute_dtype}, weights {weights_dtype}, batch {batch}"


# ---- seed_table_time.png / seed_table_memory.png -------------------------------------------------------

def seed_rows(rows):
    """The paths compared, at each backend's smallest world (world_scaling.png shows the other worlds)."""
    rows = [r for r in rows if r["attention"] in ATTENTION_COLOR]
    smallest = {}
    for r in rows:
        smallest[r["backend"]] = min(r["world"], smallest.get(r["backend"], r["world"]))
    return [r for r in rows if r["world"] == smallest[r["backend"]]]


def fell_back(row):
    return row["attention"] in ("fast", "standard") and row.get("path_chosen") not in (None, "", row["attention"])


def draw_claim(ax, backend):
    if backend != "cuda":
        ax.text(0.98, 0.03, "claim was for an A100; CPU times not comparable", transform=ax.transAxes,
                fontsize=7, color="0.35", ha="right", va="bottom")
        return
    for label, points, color, marker in CLAIMED_A100_MS:
        ax.plot(list(points), list(points.values()), linestyle="--", color=color, marker=marker, label=label)


def draw_time_panel(ax, key, rows):
    times = []
    for attention, formulation, label, points in series(rows):
        xs, ys = [p["seq_len"] for p in points], [p["median_ms"] for p in points]
        low = [max(0.0, p["median_ms"] - (p.get("min_ms") or p["median_ms"])) for p in points]
        high = [max(0.0, (p.get("p90_ms") or p["median_ms"]) - p["median_ms"]) for p in points]
        ax.errorbar(xs, ys, yerr=[low, high], capsize=2, markersize=4, label=label,
                    **series_style(attention, formulation))
        times += ys
        for p in filter(fell_back, points):
            ax.plot(p["seq_len"], p["median_ms"], "o", markersize=11, markerfacecolor="none", color="black")
    if any(map(fell_back, rows)):
        ax.plot([], [], "o", markersize=9, markerfacecolor="none", color="black", label="ran the other path")
    if key[2] == "prefill":
        draw_claim(ax, key[0])
    log2_axis(ax, [r["seq_len"] for r in rows], "seq_len (kv length at the end of the step, tokens)")
    auto_log_y(ax, times)
    ax.set_ylabel("ms per layer step\n(median; bars min..p90)")
    ax.set_title(panel_title(key), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_seed_time(bench, _allreduce, out_dir, title):
    rows = seed_rows(bench)
    if not rows:
        return "no rows with attention fast, standard or auto"
    panels = group_by(rows, PANEL_COLUMNS)
    fig, axes = grid(len(panels))
    for ax, (key, panel_rows) in zip(axes, panels.items()):
        draw_time_panel(ax, key, panel_rows)
    save(fig, out_dir, "seed_table_time.png", "Layer step time vs sequence length, by attention path", title)
    markdown("seed_table_time.png", ["backend", "W", "phase", "dtype", "batch", "seq_len", "attention",
                                     "formulation", "ran", "median ms", "min ms", "p90 ms"],
             [(r["backend"], r["world"], r["phase"], r["compute_dtype"], r["batch"], r["seq_len"], r["attention"],
               r["formulation"], f"{r.get('path_chosen')}/{r.get('formulation_chosen')}", r["median_ms"],
               r.get("min_ms"), r.get("p90_ms")) for key_rows in panels.values() for _a, _f, _l, points
              in series(key_rows) for r in points])
    return None


def byte_unit(values):
    """(divisor, name) of the largest binary unit that keeps the biggest value at 1 or more."""
    top = max(values, default=1)
    for power, name in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if top >= 1024**power:
            return 1024**power, name
    return 1, "bytes"


def draw_memory_panel(ax, rows, column, dotted_column=None, log2_y=False):
    """One line per series of `column` (and of `dotted_column`, dotted, where nonzero), in one binary unit."""
    lines = series(rows)
    values = [p.get(c) or 0 for _a, _f, _l, points in lines for p in points for c in (column, dotted_column) if c]
    divisor, unit = byte_unit(values)
    for attention, formulation, label, points in lines:
        style = series_style(attention, formulation)
        for name, linestyle, line_label in ((column, style["linestyle"], label), (dotted_column, ":", None)):
            kept = [p for p in points if name and (p.get(name) or 0) > 0]
            if kept:
                ax.plot([p["seq_len"] for p in kept], [p[name] / divisor for p in kept], label=line_label,
                        markersize=4, **dict(style, linestyle=linestyle))
    if dotted_column and any(v > 0 for v in (p.get(dotted_column) or 0 for p in rows)):
        ax.plot([], [], ":", color="0.3", label=f"dotted: {dotted_column}")
    log2_axis(ax, [r["seq_len"] for r in rows], "seq_len (kv length at the end of the step, tokens)")
    if log2_y:  # workspaces grow by powers of two with seq_len and batch
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    else:
        auto_log_y(ax, [v / divisor for v in values])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return unit


def plot_seed_memory(bench, _allreduce, out_dir, title):
    rows = [r for r in seed_rows(bench) if (r.get("workspace_bytes") or 0) > 0 or (r.get("peak_rss_bytes") or 0) > 0]
    if not rows:
        return "no rows with workspace_bytes or peak_rss_bytes"
    panels = group_by(rows, PANEL_COLUMNS)
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.0 * len(panels)), squeeze=False)
    for (left, right), (key, panel_rows) in zip(axes, panels.items()):
        unit = draw_memory_panel(left, panel_rows, "workspace_bytes", log2_y=True)
        left.set_ylabel(f"attention score workspace ({unit})")
        left.set_title("workspace: " + panel_title(key), fontsize=9)
        unit = draw_memory_panel(right, panel_rows, "peak_rss_bytes", "device_peak_bytes")
        right.set_ylabel(f"process peak RSS, device peak dotted ({unit})")
        right.set_title("peak memory: " + panel_title(key), fontsize=9)
    save(fig, out_dir, "seed_table_memory.png", "Attention workspace and peak memory vs sequence length",
         title)
    markdown("seed_table_memory.png", ["backend", "W", "phase", "dtype", "batch", "seq_len", "attention",
                                       "formulation", "ran", "workspace MiB", "peak RSS MiB", "device peak MiB"],
             [(r["backend"], r["world"], r["phase"], r["compute_dtype"], r["batch"], r["seq_len"], r["attention"],
               r["formulation"], r.get("path_chosen"), mib(r.get("workspace_bytes")), mib(r.get("peak_rss_bytes")),
               mib(r.get("device_peak_bytes")) if r.get("device_peak_bytes") else None)
              for key_rows in panels.values() for _a, _f, _l, points in series(key_rows) for r in points])
    return None


# ---- world_scaling.png ---------------------------------------------------------------------------------

def efficiency(by_world, world):
    """t(w0) w0 / (t(W) W), w0 the smallest world measured: t(1) / (W t(W)) when world 1 ran."""
    base = min(by_world)
    return by_world[base]["median_ms"] * base / (by_world[world]["median_ms"] * world)


def draw_scaling_panel(time_ax, eff_ax, key, panel_groups):
    """Time (with its all-reduce part) and efficiency vs world for the shapes of one panel; the table rows."""
    worlds, times, table = [], [], []
    for index, (shape, config, by_world) in enumerate(panel_groups):
        color = f"C{index % 10}"
        label = f"kv{shape['seq_len']} b{shape['batch']} ({config[0]}/{config[1]})"
        ws = list(by_world)
        ts = [by_world[w]["median_ms"] for w in ws]
        # world 1 reduces nothing: its allreduce_ms is the call's overhead, so the overlay starts at 2
        ar_worlds = [w for w in ws if w > 1 and by_world[w].get("allreduce_ms")]
        ar = [by_world[w]["allreduce_ms"] for w in ar_worlds]
        time_ax.plot(ws, ts, "-o", color=color, label=label)
        time_ax.plot(ar_worlds, ar, ":", marker=".", color=color)
        eff_ax.plot(ws, [efficiency(by_world, w) for w in ws], "-o", color=color, label=label)
        worlds += ws
        times += ts + ar
        table += [(shape["backend"], shape["phase"], shape["seq_len"], shape["batch"], f"{config[0]}/{config[1]}",
                   w, by_world[w].get("threads"), by_world[w]["median_ms"], by_world[w].get("allreduce_ms"),
                   efficiency(by_world, w)) for w in ws]
    time_ax.plot([], [], ":", marker=".", color="0.3", label="all-reduce part (allreduce_ms)")
    for ax in (time_ax, eff_ax):
        log2_axis(ax, worlds, "world (tensor-parallel ranks)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    auto_log_y(time_ax, times)
    time_ax.set_ylabel("ms per layer step (median, rank 0)")
    time_ax.set_title(f"{key[0]} {key[1]}, compute {key[2]}, weights {key[3]}", fontsize=9)
    eff_ax.axhline(1.0, color="0.5", linewidth=0.8)
    eff_ax.set_ylim(bottom=0)
    eff_ax.set_ylabel("parallel efficiency t(1) / (W t(W))\n(t(1): the smallest world run)")
    return table


def plot_world_scaling(bench, _allreduce, out_dir, title):
    groups = scaling_groups(bench)
    if not groups:
        return "no shape measured at more than one world"
    panels = {}
    for shape, config, by_world in groups:
        key = (shape["backend"], shape["phase"], shape["compute_dtype"], shape["weights_dtype"])
        panels.setdefault(key, []).append((shape, config, by_world))
    fig, axes = plt.subplots(2, len(panels), figsize=(5.6 * len(panels), 8.4), squeeze=False)
    table = []
    for column, (key, panel_groups) in enumerate(panels.items()):
        table += draw_scaling_panel(axes[0][column], axes[1][column], key, panel_groups)
    save(fig, out_dir, "world_scaling.png", "Tensor-parallel scaling: step time and efficiency vs world", title)
    markdown("world_scaling.png", ["backend", "phase", "seq_len", "batch", "config", "W", "threads/rank",
                                   "median ms", "allreduce ms", "efficiency"], table)
    return None


# ---- vs_torch.png --------------------------------------------------------------------------------------

def torch_labels(rows):
    """Like "decode kv128 fp32", plus whatever else varies among the points (backend, world, batch, ...)."""
    extras = varying(rows, ("backend", "world", "batch", "weights_dtype", "chunk"))
    paths = varying(rows, ("attention", "formulation"))
    short = {"chunked_prefill": "chunked"}
    prefix = {"world": "W", "batch": "b", "weights_dtype": "w ", "chunk": "chunk "}
    return [" ".join([short.get(r["phase"], r["phase"]), f"kv{r['seq_len']}", r["compute_dtype"]] +
                     [f"{prefix.get(c, '')}{r.get(c)}" for c in extras] +
                     ([f"{r['attention']}/{r['formulation']}"] if paths else [])) for r in rows]


def geometric_means(rows, speedups):
    """{backend: (first index, last index, geometric mean speedup)}; rows come sorted by backend."""
    spans = {}
    for index, (row, value) in enumerate(zip(rows, speedups)):
        first, _last, logs = spans.get(row["backend"], (index, index, []))
        spans[row["backend"]] = (first, index, logs + [math.log(value)])
    return {b: (first, last, math.exp(sum(logs) / len(logs))) for b, (first, last, logs) in spans.items()}


# The baseline's variants (bench.torch_variants): column, legend, colour.
TORCH_VARIANTS = (("torch_median_ms", "PyTorch eager", "tab:gray"),
                  ("torch_compile_median_ms", "torch.compile", "tab:orange"),
                  ("torch_graph_median_ms", "PyTorch in a CUDA graph", "tab:purple"))


def timed(row, column):
    return isinstance(row.get(column), (int, float)) and row[column] > 0


def plot_vs_torch(bench, _allreduce, out_dir, title):
    variants = [v for v in TORCH_VARIANTS if any(timed(r, v[0]) for r in bench)]
    rows = [r for r in bench if any(timed(r, column) for column, _, _ in variants)]
    if not rows:
        return "no rows with a PyTorch time (the baseline did not run)"
    rows.sort(key=lambda r: tuple(order(r.get(c)) for c in ("backend", "phase", "compute_dtype", "seq_len", "batch",
                                                             "attention", "formulation", "world")))
    labels = torch_labels(rows)
    ours = [r["median_ms"] for r in rows]
    # speedups[v][i]: variant v's time over ours at point i, None where v did not run there.
    speedups = [[r[column] / r["median_ms"] if timed(r, column) else None for r in rows] for column, _, _ in variants]
    xs = list(range(len(rows)))
    width = 0.8 / (1 + len(variants))
    fig, (bars, ratio) = plt.subplots(2, 1, figsize=(max(8.0, 0.55 * len(rows) * (1 + len(variants)) / 2 + 3), 8.5),
                                      sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    offset = [(i - len(variants) / 2) * width for i in range(1 + len(variants))]
    bars.bar([x + offset[0] for x in xs], ours, width, label="ours (median)", color="tab:blue")
    times = list(ours)
    for index, (column, name, colour) in enumerate(variants):
        heights = [r[column] if timed(r, column) else 0 for r in rows]
        bars.bar([x + offset[index + 1] for x in xs], heights, width, label=f"{name} (median)", color=colour)
        times += [h for h in heights if h > 0]
    auto_log_y(bars, times)
    bars.set_ylabel("ms per layer step (rank-0 slice)")
    bars.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    bars.grid(alpha=0.3, axis="y")
    means_table = []
    for index, ((_column, name, colour), values) in enumerate(zip(variants, speedups)):
        at = [(x, v) for x, v in zip(xs, values) if v is not None]
        ratio.bar([x + offset[index + 1] for x, _ in at], [v for _, v in at], width, color=colour,
                  edgecolor=["tab:green" if v >= 1 else "tab:red" for _, v in at], linewidth=1.2)
        timed_rows = [r for r, v in zip(rows, values) if v is not None]
        for backend, (first, last, mean) in geometric_means(timed_rows, [v for _, v in at]).items():
            label = f"vs {name}: geometric mean {backend} {mean:.2f}x"
            ratio.hlines(mean, at[first][0] - 0.4, at[last][0] + 0.4, colors=colour, linestyles="--", label=label)
            means_table.append((f"**geometric mean, {backend}, vs {name}**", name, mean))
    ratio.axhline(1.0, color="black", linewidth=0.8, label="parity")
    ratio.set_ylabel("speedup = PyTorch / ours")
    ratio.set_xticks(xs)
    ratio.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ratio.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ratio.grid(alpha=0.3, axis="y")
    save(fig, out_dir, "vs_torch.png", "Ours vs the PyTorch baseline, same rank-0 slice", title)
    headers = ["point", "ours ms"]
    for _column, name, _colour in variants:
        headers += [f"{name} ms", f"speedup vs {name}"]
    headers += ["torch formulation", "eager rel L2"]
    table = []
    for i, (label, r) in enumerate(zip(labels, rows)):
        cells = [label, r["median_ms"]]
        for (column, _name, _colour), values in zip(variants, speedups):
            cells += [r[column] if timed(r, column) else None, values[i]]
        table.append(tuple(cells + [r.get("torch_formulation"), r.get("torch_rel_l2")]))
    for label, name, mean in means_table:  # the mean under its variant's speedup column
        cells = [label] + [None] * (len(headers) - 1)
        cells[headers.index(f"speedup vs {name}")] = mean
        table.append(tuple(cells))
    markdown("vs_torch.png", headers, table)
    return None


# ---- allreduce.png -------------------------------------------------------------------------------------

def allreduce_label(key):
    transport, world, in_place = key
    return f"{transport} W={world} {'in-place' if in_place else 'out-of-place'}"


def plot_allreduce(_bench, allreduce, out_dir, title):
    if not allreduce:
        return "no all-reduce CSV given"
    lines = group_by(allreduce, ("transport", "world", "in_place"))
    fig, (bw_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 5))
    colors = {}
    for key, rows in lines.items():
        rows = sorted(rows, key=lambda r: r["bytes"])
        color = colors.setdefault(key[:2], f"C{len(colors) % 10}")
        style = {"color": color, "linestyle": "-" if key[2] else "--", "marker": "o" if key[2] else "s",
                 "markersize": 3, "label": allreduce_label(key)}
        sizes = [r["bytes"] for r in rows]
        bw_ax.plot(sizes, [max(r["busbw_gbps"], 1e-6) for r in rows], **style)
        time_ax.plot(sizes, [r["time_us"] for r in rows], **style)
        wrong = [r for r in rows if r.get("ok") == 0]
        if wrong:
            bw_ax.plot([r["bytes"] for r in wrong], [max(r["busbw_gbps"], 1e-6) for r in wrong], "x", color="red",
                       markersize=9, label="wrong result (ok = 0)")
    for ax, ylabel in ((bw_ax, "bus bandwidth busbw = algbw 2(W-1)/W (GB/s)"), (time_ax, "time per call (us, median)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(binary_bytes))
        ax.set_xlabel("message size (bytes per rank)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    bw_ax.set_title("all-reduce bus bandwidth", fontsize=10)
    time_ax.set_title("all-reduce time", fontsize=10)
    save(fig, out_dir, "allreduce.png", "All-reduce bus bandwidth and time (mla_allreduce_bench)", title)
    sizes = sorted({r["bytes"] for r in allreduce})
    cells = {(k, r["bytes"]): f"{r['busbw_gbps']:.3g} ({r['time_us']:.3g})" for k, rows in lines.items() for r in rows}
    markdown("allreduce.png: busbw GB/s (time us)", ["bytes"] + [allreduce_label(k) for k in lines],
             [[size] + [cells.get((k, size), "") for k in lines] for size in sizes])
    return None


PLOTS = (("seed_table_time.png", plot_seed_time), ("seed_table_memory.png", plot_seed_memory),
         ("world_scaling.png", plot_world_scaling), ("vs_torch.png", plot_vs_torch),
         ("allreduce.png", plot_allreduce))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", help="mla_bench and/or mla_allreduce_bench CSV files")
    parser.add_argument("--out", required=True, help="folder for the PNGs (created)")
    parser.add_argument("--title", default="", help="title over every figure")
    args = parser.parse_args()
    bench, allreduce = read_csvs(args.csv)
    os.makedirs(args.out, exist_ok=True)
    for name, plot in PLOTS:
        skipped = plot(bench, allreduce, args.out, args.title)
        if skipped:
            note(f"{name} skipped: {skipped}")


if __name__ == "__main__":
    main()
