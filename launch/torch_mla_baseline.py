#!/usr/bin/env python3
"""PyTorch eager baseline of one tensor-parallel rank's MLA layer, timed by mla_bench.

The layer is written the way PyTorch users write MLA (F.linear, einsum, absorbed decode, an fp32
softmax), from docs/design.md. mla_bench (runtime/bench/bench_baseline.cpp) starts it once per sweep
and asks it to time the same shapes, weights and threads as each of its own points.

Usage
  python3 torch_mla_baseline.py --serve            worker: JSON lines on stdin, answers on stdout
  python3 torch_mla_baseline.py --once REQ.json    run one request from a file, print its answer
  python3 torch_mla_baseline.py --self-test        float64 checks of the layer, a few seconds

Protocol of --serve
  On start: one line {"ok": true, "torch_version": "...", "cuda": true|false} (or {"ok": false,
  "error": ...} when torch does not import, then exit 2). Then one JSON request per line on stdin,
  one JSON answer line per request on stdout; blank lines are skipped; EOF exits 0. Only answers go
  to stdout: everything else, libraries' C-level prints included, is sent to stderr. A failed request
  answers {"ok": false, "error": "<one line>"} and the worker keeps serving.

  {"cmd": "run", "weights": W, "x": X, "y_out": Y, "model": {...}, "batch": B, "start_pos": p,
   "step_len": S, "formulation": "naive"|"absorb"|"auto", "compute_dtype": "fp32"|"bf16",
   "threads": n, "device": "cpu"|"cuda", "warmup": w, "min_reps": a, "max_seconds": t, "max_reps": b,
   "variant": "eager"|"compile"|"graph"}
  - W: safetensors, F32 tensors of this rank's slice: wq [Hl*dq, D] (q_lora_rank == 0) or wq_a
    [q_lora_rank, D], q_norm [q_lora_rank], wq_b [Hl*dq, q_lora_rank]; wkv_a [C+dr, D], kv_norm [C],
    wkv_b [Hl*(dn+dv), C], wo [D, Hl*dv]. Loaded sets are kept by (path, inode, size, mtime), at
    most two, so a file rewritten in place is read again.
  - X: raw little-endian f32 [rows, D], rows >= end = p + S; positions 0..end-1 of one sequence,
    repeated B times. Y: written with the timed step's output for sequence 0, f32 [S, D], the rank's
    partial output (after wo, before the all-reduce), from the last timed repetition.
  - model: dim, n_local_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
    v_head_dim, max_seq_len, original_seq_len, rope_theta, rope_factor, beta_fast, beta_slow, mscale.
  - The KV cache holds [B, end]; for p > 0 it is first filled untimed by a causal forward of
    positions 0..p-1. Every repetition runs tokens p..end-1 at start_pos p (causal: query p+s sees
    keys t <= p+s). "auto" is naive for S > 1 and absorb for S == 1.
  - variant (optional, default eager): how the timed step runs. eager: the module as written.
    compile: the same module through torch.compile (fullgraph, static shapes, compiled afresh for
    each request, so a guard failing at one point can never fall back to eager unseen); its first
    call compiles, untimed. graph: the step captured once in a torch.cuda.CUDAGraph (cuda only) and
    replayed; the cache rows it writes are the same every replay, as in eager's repetitions. The
    prefix fill is eager in every variant.
  - Timing: w untimed repetitions, then timed ones while fewer than a were timed or their sum is
    below t seconds, never more than b.
  Answer: {"ok": true, "median_ms", "min_ms", "p90_ms", "reps", "formulation" (the one used),
  "threads" (torch.get_num_threads()), "peak_bytes" (cuda: max_memory_allocated since the request
  started; cpu: null), "process_device_bytes" (cuda: what the driver accounts to this process, from
  nvidia-smi, with the layer still held; null on the cpu or where the driver does not list this
  process), "variant", "prepare_s" (compile: the compiling call; graph: warm-up and capture;
  eager: null)}.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import OrderedDict

try:
    import torch
    import torch.nn.functional as F
except ImportError as import_error:  # the C++ side shows this greeting as the reason
    print(json.dumps({"ok": False, "error": f"cannot import torch with {sys.executable}: {import_error}"}), flush=True)
    sys.exit(2)


class RequestError(Exception):
    """A problem with a request, reported to the caller as one line."""


MODEL_INT_FIELDS = ("dim", "n_local_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                    "v_head_dim", "max_seq_len", "original_seq_len")
MODEL_FLOAT_FIELDS = ("rope_theta", "rope_factor", "beta_fast", "beta_slow", "mscale")
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
RMS_NORM_EPS = 1e-6


class ModelShape:
    """The model fields of a request (docs/design.md names, for one rank: n_local_heads = Hl)."""

    def __init__(self, fields):
        if not isinstance(fields, dict):
            raise RequestError("model: expected an object")
        for name in MODEL_INT_FIELDS:
            value, minimum = fields.get(name), 0 if name == "q_lora_rank" else 1  # q_lora_rank 0: plain wq
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise RequestError(f"model.{name}: expected an integer >= {minimum}, got {value!r}")
            setattr(self, name, value)
        for name in MODEL_FLOAT_FIELDS:
            value = fields.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise RequestError(f"model.{name}: expected a positive number, got {value!r}")
            setattr(self, name, float(value))
        if self.qk_rope_head_dim % 2:
            raise RequestError(f"model.qk_rope_head_dim: RoPE rotates pairs, so it must be even, "
                               f"got {self.qk_rope_head_dim}")

    @property
    def qk_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def yarn_active(self):
        return self.max_seq_len > self.original_seq_len

    def softmax_scale(self):
        scale = self.qk_head_dim ** -0.5
        if self.yarn_active:  # docs/design.md, Shapes and symbols: YaRN's attention temperature, squared
            mscale = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            scale *= mscale * mscale
        return scale

    def expected_weight_shapes(self):
        heads, dq, kv_rank = self.n_local_heads, self.qk_head_dim, self.kv_lora_rank
        if self.q_lora_rank == 0:
            shapes = {"wq": [heads * dq, self.dim]}
        else:
            shapes = {"wq_a": [self.q_lora_rank, self.dim], "q_norm": [self.q_lora_rank],
                      "wq_b": [heads * dq, self.q_lora_rank]}
        shapes.update({"wkv_a": [kv_rank + self.qk_rope_head_dim, self.dim], "kv_norm": [kv_rank],
                       "wkv_b": [heads * (self.qk_nope_head_dim + self.v_head_dim), kv_rank],
                       "wo": [self.dim, heads * self.v_head_dim]})
        return shapes


def rope_frequencies(shape):
    """f_i per docs/design.md "RoPE and YaRN", in double precision like the C++ table."""
    dr, theta = shape.qk_rope_head_dim, shape.rope_theta
    freqs = [theta ** (-2.0 * i / dr) for i in range(dr // 2)]
    if not shape.yarn_active:
        return freqs

    def correction_dim(rotations):
        return dr * math.log(shape.original_seq_len / (rotations * 2.0 * math.pi)) / (2.0 * math.log(theta))

    low = max(math.floor(correction_dim(shape.beta_fast)), 0)
    high = min(math.ceil(correction_dim(shape.beta_slow)), dr - 1)
    if low == high:
        high += 0.001
    ramps = [min(max((i - low) / (high - low), 0.0), 1.0) for i in range(dr // 2)]
    return [f / shape.rope_factor * ramp + f * (1.0 - ramp) for f, ramp in zip(freqs, ramps)]


def rms_norm(x, weight, accum_dtype):
    # Mean of squares in fp32 (or wider): bf16's 8-bit mantissa would lose the small terms of the sum.
    wide = x.to(accum_dtype)
    normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS) * weight.to(accum_dtype)
    return normed.to(x.dtype)


def apply_rope(x, cos, sin):
    """Rotates interleaved pairs (x[2i], x[2i+1]) of x [..., dr]; cos/sin broadcast to [..., dr/2]."""
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class MlaRank(torch.nn.Module):
    """One rank's MLA layer with its KV cache, in one compute dtype (float64 only for the self-test)."""

    def __init__(self, shape, weights, dtype, device, kv_len):
        super().__init__()
        self.shape = shape
        self.dtype = dtype
        # RoPE, norms and the softmax run in fp32 for fp32/bf16 compute (docs/design.md steps 2-4, 7).
        self.accum_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.weights = weights
        self.scale = shape.softmax_scale()
        positions = torch.arange(kv_len, dtype=torch.float64)
        angles = torch.outer(positions, torch.tensor(rope_frequencies(shape), dtype=torch.float64))
        self.rope_cos = angles.cos().to(device=device, dtype=self.accum_dtype)  # [kv_len, dr/2]
        self.rope_sin = angles.sin().to(device=device, dtype=self.accum_dtype)
        self.device = device
        self.cache = {}

    def allocate_cache(self, batch, kv_len, formulation):
        s, options = self.shape, {"dtype": self.dtype, "device": self.device}
        if formulation == "naive":  # per-head keys and values, as a plain attention layer keeps them
            self.cache = {"k": torch.zeros(batch, kv_len, s.n_local_heads, s.qk_head_dim, **options),
                          "v": torch.zeros(batch, kv_len, s.n_local_heads, s.v_head_dim, **options)}
        else:  # MLA's latent cache, shared by all heads
            self.cache = {"c_n": torch.zeros(batch, kv_len, s.kv_lora_rank, **options),
                          "k_pe": torch.zeros(batch, kv_len, s.qk_rope_head_dim, **options)}

    def forward(self, x, start_pos, formulation):
        """x [B, S, D] at positions start_pos..start_pos+S-1 -> this rank's partial output [B, S, D]."""
        s, w = self.shape, self.weights
        batch, step_len, _ = x.shape
        end_pos = start_pos + step_len
        if s.q_lora_rank == 0:
            q = F.linear(x, w["wq"])
        else:
            q = F.linear(rms_norm(F.linear(x, w["wq_a"]), w["q_norm"], self.accum_dtype), w["wq_b"])
        q = q.view(batch, step_len, s.n_local_heads, s.qk_head_dim)
        q_nope, q_pe = torch.split(q, [s.qk_nope_head_dim, s.qk_rope_head_dim], dim=-1)
        cos, sin = self.rope_cos[start_pos:end_pos], self.rope_sin[start_pos:end_pos]
        q_pe = apply_rope(q_pe, cos.unsqueeze(1), sin.unsqueeze(1))  # [B, S, Hl, dr]
        c, k_pe = torch.split(F.linear(x, w["wkv_a"]), [s.kv_lora_rank, s.qk_rope_head_dim], dim=-1)
        k_pe = apply_rope(k_pe, cos, sin)  # [B, S, dr], one per token, shared by all heads
        c_n = rms_norm(c, w["kv_norm"], self.accum_dtype)  # [B, S, C]
        # docs/design.md step 6: the general causal rule, so chunked prefill (p > 0, S > 1) is right too.
        mask = None
        if step_len > 1:
            mask = torch.full((step_len, end_pos), float("-inf"), device=x.device).triu_(start_pos + 1).to(x.dtype)
        attend = self.attend_naive if formulation == "naive" else self.attend_absorb
        o = attend(q_nope, q_pe, c_n, k_pe, start_pos, mask)  # [B, S, Hl, dv]
        return F.linear(o.flatten(2), w["wo"])

    def softmax(self, scores, mask):
        if mask is not None:
            scores = scores + mask.unsqueeze(1)  # [S, 1, T] over [B, S, Hl, T]
        return torch.softmax(scores, dim=-1, dtype=self.accum_dtype).to(self.dtype)

    def attend_naive(self, q_nope, q_pe, c_n, k_pe, start_pos, mask):
        s = self.shape
        batch, step_len, heads, _ = q_nope.shape
        end_pos = start_pos + step_len
        kv = F.linear(c_n, self.weights["wkv_b"]).view(batch, step_len, heads, s.qk_nope_head_dim + s.v_head_dim)
        k_nope, v = torch.split(kv, [s.qk_nope_head_dim, s.v_head_dim], dim=-1)
        k_cache, v_cache = self.cache["k"], self.cache["v"]
        k_cache[:batch, start_pos:end_pos] = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, heads, -1)], dim=-1)
        v_cache[:batch, start_pos:end_pos] = v
        q = torch.cat([q_nope, q_pe], dim=-1)
        scores = torch.einsum("bshd,bthd->bsht", q, k_cache[:batch, :end_pos]) * self.scale
        return torch.einsum("bsht,bthd->bshd", self.softmax(scores, mask), v_cache[:batch, :end_pos])

    def attend_absorb(self, q_nope, q_pe, c_n, k_pe, start_pos, mask):
        s = self.shape
        batch, step_len, heads, _ = q_nope.shape
        end_pos = start_pos + step_len
        wkv_b = self.weights["wkv_b"].view(heads, s.qk_nope_head_dim + s.v_head_dim, s.kv_lora_rank)
        w_k, w_v = wkv_b[:, :s.qk_nope_head_dim], wkv_b[:, s.qk_nope_head_dim:]
        # Folding Wk[h] into the query lets every head score against the shared latent cache.
        q_latent = torch.einsum("bshd,hdc->bshc", q_nope, w_k)  # [B, S, Hl, C]
        latent_cache, pe_cache = self.cache["c_n"], self.cache["k_pe"]
        latent_cache[:batch, start_pos:end_pos] = c_n
        pe_cache[:batch, start_pos:end_pos] = k_pe
        scores = (torch.einsum("bshc,btc->bsht", q_latent, latent_cache[:batch, :end_pos]) +
                  torch.einsum("bshr,btr->bsht", q_pe, pe_cache[:batch, :end_pos])) * self.scale
        o_latent = torch.einsum("bsht,btc->bshc", self.softmax(scores, mask), latent_cache[:batch, :end_pos])
        return torch.einsum("bshc,hdc->bshd", o_latent, w_v)


def read_safetensors_f32(path):
    """{name: float32 tensor} of a safetensors file; every tensor must be F32."""
    try:
        with open(path, "rb") as file:
            data = bytearray(file.read())
    except OSError as error:
        raise RequestError(f"weights {path}: cannot read: {error.strerror}")
    if len(data) < 8:
        raise RequestError(f"weights {path}: {len(data)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise RequestError(f"weights {path}: header length {header_len} runs past the end of the file")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except ValueError as error:
        raise RequestError(f"weights {path}: the header is not JSON ({error})")
    body_start, tensors = 8 + header_len, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise RequestError(f"weights {path}: header entry {name} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype != "F32":
            raise RequestError(f"weights {path}: tensor {name} is {dtype}, expected F32")
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise RequestError(f"weights {path}: tensor {name}: shape {shape!r} is not a list of sizes")
        count = math.prod(shape)
        begin, end = offsets if isinstance(offsets, list) and len(offsets) == 2 else (None, None)
        if not (isinstance(begin, int) and end == begin + 4 * count and body_start + end <= len(data)):
            raise RequestError(f"weights {path}: tensor {name}: data_offsets {offsets} do not hold {shape} F32 values")
        if count == 0:  # frombuffer refuses an empty view
            tensors[name] = torch.empty(shape)
        else:  # a view: fp32 CPU weights share the file's bytes instead of copying them
            flat = torch.frombuffer(data, dtype=torch.float32, count=count, offset=body_start + begin)
            tensors[name] = flat.view(shape)
    return tensors


class WeightSets:
    """Loaded weights by file identity, dtype and device; the oldest set goes first past `capacity`."""

    def __init__(self, capacity=2):
        self.capacity = capacity
        self.sets = OrderedDict()

    def get(self, path, shape, dtype, device):
        try:
            info = os.stat(path)
        except OSError as error:
            raise RequestError(f"weights {path}: {error.strerror}")
        # mla_bench rewrites the same path when its weights change, so the path alone is not a key.
        key = (os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns, dtype, device)
        if key not in self.sets:
            while len(self.sets) >= self.capacity:
                self.sets.popitem(last=False)
            self.sets[key] = load_weights(path, dtype, device)
        self.sets.move_to_end(key)
        weights = self.sets[key]
        for name, expected in shape.expected_weight_shapes().items():
            if name not in weights:
                raise RequestError(f"weights {path}: no tensor {name} (model.q_lora_rank = {shape.q_lora_rank})")
            if list(weights[name].shape) != expected:
                raise RequestError(f"weights {path}: tensor {name} is {list(weights[name].shape)}, expected {expected} "
                                   f"for model.n_local_heads = {shape.n_local_heads}")
        return weights


def load_weights(path, dtype, device):
    weights = {}
    for name, tensor in read_safetensors_f32(path).items():
        # Norm weights stay fp32: the norms are computed in fp32 in every mode.
        target = torch.float32 if name.endswith("_norm") else dtype
        weights[name] = tensor.to(device=device, dtype=target).contiguous()
    return weights


def read_tokens(path, kv_len, dim):
    try:
        with open(path, "rb") as file:
            data = bytearray(file.read())
    except OSError as error:
        raise RequestError(f"x {path}: cannot read: {error.strerror}")
    if len(data) % (4 * dim) or len(data) // (4 * dim) < kv_len:
        raise RequestError(f"x {path}: {len(data)} bytes, expected at least {kv_len} tokens of {dim} f32 "
                           f"(start_pos + step_len rows of model.dim)")
    return torch.frombuffer(data, dtype=torch.float32, count=kv_len * dim).view(kv_len, dim)


def write_f32(path, tensor):
    values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().flatten()
    raw = bytearray(4 * values.numel())
    torch.frombuffer(raw, dtype=torch.float32).copy_(values)
    try:
        with open(path, "wb") as file:
            file.write(raw)
    except OSError as error:
        raise RequestError(f"y_out {path}: cannot write: {error.strerror}")


def field(request, name, kind, minimum=None, choices=None):
    """request[name], checked: kind int, float (an int is accepted) or str; a minimum or a set of choices."""
    value = request.get(name)
    kinds = (int, float) if kind is float else kind
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and choices is not None:
        ok = value in choices
    if not ok:
        if choices is not None:
            wanted = "one of " + ", ".join(sorted(choices))
        else:
            wanted = {int: "an integer", float: "a number", str: "a string"}[kind]
            wanted += f" >= {minimum}" if minimum is not None else ""
        raise RequestError(f"{name}: expected {wanted}, got {value!r}")
    return value


def choose_formulation(requested, step_len):
    if requested == "auto":  # what PyTorch MLA code does: expand K/V for prefill, absorb for decode
        return "naive" if step_len > 1 else "absorb"
    return requested


def summarize_ms(times_s):
    ordered = sorted(t * 1e3 for t in times_s)
    n, middle = len(ordered), len(ordered) // 2
    median = ordered[middle] if n % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
    return {"median_ms": median, "min_ms": ordered[0], "p90_ms": ordered[math.ceil(0.9 * n) - 1], "reps": n}


_interop_threads_set = False


def set_threads(threads):
    global _interop_threads_set
    if not _interop_threads_set:
        _interop_threads_set = True
        try:  # allowed only before the first parallel work of the process
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
    torch.set_num_threads(threads)


VARIANTS = ("eager", "compile", "graph")


def process_device_bytes():
    """What the driver accounts to this process over every GPU (nvidia-smi), or None where it does not list it."""
    try:
        listing = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    mib, listed = 0, False
    for line in listing.stdout.splitlines() if listing.returncode == 0 else []:
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()) and used.strip().isdigit():  # "[N/A]" where the driver cannot say
            mib, listed = mib + int(used), True
    return mib << 20 if listed else None


def compiled_step(layer, step_x, start_pos, formulation, synchronize):
    """(step, seconds): the layer through torch.compile, compiled by one untimed call."""
    if not hasattr(torch, "compile"):
        raise RequestError(f"variant compile: torch {torch.__version__} has no torch.compile (PyTorch >= 2.0 has)")
    # Guards from an earlier request would recompile here, and past dynamo's recompile limit it runs
    # the frame eagerly without a word: start every request from an empty cache instead.
    torch._dynamo.reset()
    step = torch.compile(layer, fullgraph=True, dynamic=False)
    synchronize()
    started = time.perf_counter()
    step(step_x, start_pos, formulation)
    synchronize()
    return step, time.perf_counter() - started


def captured_step(layer, step_x, start_pos, formulation, synchronize):
    """(step, seconds): the layer's step captured in a CUDA graph; step() replays it."""
    started = time.perf_counter()
    # Warm-ups on a side stream before capture, as torch.cuda.graphs asks: cuBLAS handles and
    # workspaces are created there, not inside the graph.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            layer(step_x, start_pos, formulation)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = layer(step_x, start_pos, formulation)
    synchronize()

    def replay(*_):
        graph.replay()
        return y_static

    return replay, time.perf_counter() - started


def run_request(request, weight_sets):
    shape = ModelShape(request.get("model"))
    batch = field(request, "batch", int, 1)
    start_pos = field(request, "start_pos", int, 0)
    step_len = field(request, "step_len", int, 1)
    formulation = choose_formulation(field(request, "formulation", str, choices={"naive", "absorb", "auto"}), step_len)
    dtype = COMPUTE_DTYPES[field(request, "compute_dtype", str, choices=set(COMPUTE_DTYPES))]
    device = field(request, "device", str, choices={"cpu", "cuda"})
    warmup, min_reps = field(request, "warmup", int, 0), field(request, "min_reps", int, 1)
    max_reps, max_seconds = field(request, "max_reps", int, 1), field(request, "max_seconds", float, 0)
    paths = {name: field(request, name, str) for name in ("weights", "x", "y_out")}
    variant = field(request, "variant", str, choices=set(VARIANTS)) if "variant" in request else "eager"
    if variant == "graph" and device != "cuda":
        raise RequestError("variant graph: a CUDA graph needs device cuda")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RequestError("device: cuda requested, but torch.cuda.is_available() is false in this worker")
        torch.cuda.reset_peak_memory_stats()
    set_threads(field(request, "threads", int, 1))
    end_pos = start_pos + step_len
    weights = weight_sets.get(paths["weights"], shape, dtype, device)
    tokens = read_tokens(paths["x"], end_pos, shape.dim).to(device=device, dtype=dtype)
    # The batch is one sequence repeated; contiguous copies made here stay out of the timed region.
    prefix = tokens[:start_pos].expand(batch, -1, -1).contiguous()
    step_x = tokens[start_pos:end_pos].expand(batch, -1, -1).contiguous()

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        layer = MlaRank(shape, weights, dtype, device, end_pos)
        layer.allocate_cache(batch, end_pos, formulation)
        if start_pos > 0:
            layer(prefix, 0, formulation)
        step, prepare_s = layer, None
        if variant == "compile":
            step, prepare_s = compiled_step(layer, step_x, start_pos, formulation, synchronize)
        elif variant == "graph":
            step, prepare_s = captured_step(layer, step_x, start_pos, formulation, synchronize)
        for _ in range(warmup):
            step(step_x, start_pos, formulation)
        times_s, y = [], None
        while len(times_s) < max_reps and (len(times_s) < min_reps or sum(times_s) < max_seconds):
            synchronize()
            started = time.perf_counter()
            y = step(step_x, start_pos, formulation)
            synchronize()
            times_s.append(time.perf_counter() - started)
        process_bytes = process_device_bytes() if device == "cuda" else None  # the layer still held
    write_f32(paths["y_out"], y[0])
    answer = {"ok": True, **summarize_ms(times_s), "formulation": formulation, "threads": torch.get_num_threads(),
              "peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
              "process_device_bytes": process_bytes, "variant": variant,
              "prepare_s": prepare_s}
    return answer


def handle_line(line, weight_sets):
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise RequestError("a request must be a JSON object")
        if request.get("cmd") != "run":
            raise RequestError(f"cmd: expected \"run\", got {request.get('cmd')!r}")
        return run_request(request, weight_sets)
    except RequestError as error:
        return {"ok": False, "error": str(error)}
    except json.JSONDecodeError as error:
        return {"ok": False, "error": f"the request is not JSON: {error}"}
    except Exception as error:  # the worker must keep serving; the trace goes to stderr
        traceback.print_exc(file=sys.stderr)
        first_line = (str(error).strip().splitlines() or [""])[0]
        answer = {"ok": False, "error": f"{type(error).__name__}: {first_line}"}
        out_of_memory = isinstance(error, MemoryError) or "out of memory" in first_line
    # Out of memory: free the weights too, now that the traceback no longer holds the step's tensors.
    if out_of_memory:
        weight_sets.sets.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return answer


def serve():
    # Answers get a private copy of stdout; fd 1 itself goes to stderr so that nothing else a library
    # prints (OpenMP, CUDA warnings) can break the one-line-per-request stream.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def send(message):
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    send({"ok": True, "torch_version": torch.__version__, "cuda": torch.cuda.is_available()})
    weight_sets = WeightSets()
    for line in sys.stdin.buffer:  # bytes: a line that is not UTF-8 gets an error answer, not a crash
        if line.strip():
            send(handle_line(line, weight_sets))
    return 0


def run_once(path):
    try:
        with open(path) as file:
            line = file.read()
    except OSError as error:
        print(json.dumps({"ok": False, "error": f"{path}: cannot read: {error.strerror}"}))
        return 1
    answer = handle_line(line, WeightSets())
    print(json.dumps(answer))
    return 0 if answer.get("ok") else 1


# ---------------------------------------------------------------------------------------------------
# Self-test: float64 checks of MlaRank against a direct per-head, per-query, per-key loop of docs/design.md.

def reference_layer(shape, weights, x):
    """docs/design.md computed token by token with explicit loops, no cache: x [B, T, D] -> y [B, T, D]."""
    s, heads = shape, shape.n_local_heads
    dn, dr, dv, dq, kv_rank = s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim, s.qk_head_dim, s.kv_lora_rank
    yarn = s.max_seq_len > s.original_seq_len
    freqs = []  # docs/design.md "RoPE and YaRN" again, apart from rope_frequencies so a slip there shows
    corr = [dr * math.log(s.original_seq_len / (n * 2 * math.pi)) / (2 * math.log(s.rope_theta))
            for n in (s.beta_fast, s.beta_slow)]
    low, high = max(math.floor(corr[0]), 0), min(math.ceil(corr[1]), dr - 1)
    high += 0.001 if low == high else 0
    for i in range(dr // 2):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0) if yarn else 0.0
        freq = s.rope_theta ** (-2 * i / dr)
        freqs.append(freq / s.rope_factor * ramp + freq * (1 - ramp))
    scale = dq ** -0.5 * ((0.1 * s.mscale * math.log(s.rope_factor) + 1) ** 2 if yarn else 1)

    def norm(v, w):
        return v / math.sqrt(sum(float(e) ** 2 for e in v) / len(v) + RMS_NORM_EPS) * w

    def rope(v, pos):
        out = v.clone()
        for i in range(dr // 2):
            c, sn = math.cos(pos * freqs[i]), math.sin(pos * freqs[i])
            out[2 * i] = v[2 * i] * c - v[2 * i + 1] * sn
            out[2 * i + 1] = v[2 * i] * sn + v[2 * i + 1] * c
        return out

    batch, tokens, _ = x.shape
    y = torch.zeros_like(x)
    for b in range(batch):
        q, k, v = [], [], []  # per token: [Hl][dq], [Hl][dq], [Hl][dv]
        for t in range(tokens):
            q_all = weights["wq"] @ x[b, t] if s.q_lora_rank == 0 else \
                weights["wq_b"] @ norm(weights["wq_a"] @ x[b, t], weights["q_norm"])
            kv_a = weights["wkv_a"] @ x[b, t]
            latent, k_rot = norm(kv_a[:kv_rank], weights["kv_norm"]), rope(kv_a[kv_rank:], t)
            q_t, k_t, v_t = [], [], []
            for h in range(heads):
                q_h = q_all[h * dq:(h + 1) * dq]
                q_t.append(torch.cat([q_h[:dn], rope(q_h[dn:], t)]))
                rows = weights["wkv_b"][h * (dn + dv):(h + 1) * (dn + dv)]
                k_t.append(torch.cat([rows[:dn] @ latent, k_rot]))
                v_t.append(rows[dn:] @ latent)
            q.append(q_t), k.append(k_t), v.append(v_t)
        for t in range(tokens):
            o = []
            for h in range(heads):
                scores = [scale * float(torch.dot(q[t][h], k[u][h])) for u in range(t + 1)]
                top = max(scores)
                expo = [math.exp(score - top) for score in scores]
                total = sum(expo)
                o.append(sum((e / total) * v[u][h] for u, e in enumerate(expo)))
            y[b, t] = weights["wo"] @ torch.cat(o)
    return y


def random_weights(shape, generator, dtype=torch.float64):
    weights = {}
    for name, dims in shape.expected_weight_shapes().items():
        if name.endswith("_norm"):
            weights[name] = 1.0 + 0.2 * torch.randn(dims, generator=generator, dtype=dtype)
        else:  # scaled so activations stay O(1) and the softmax is neither flat nor one-hot
            weights[name] = torch.randn(dims, generator=generator, dtype=dtype) / math.sqrt(dims[1])
    return weights


def run_steps(shape, weights, x, steps, formulation, dtype=torch.float64):
    """Runs x [B, T, D] through consecutive steps (lengths), concatenating the outputs."""
    layer = MlaRank(shape, weights, dtype, "cpu", x.shape[1])
    layer.allocate_cache(x.shape[0], x.shape[1], formulation)
    outputs, pos = [], 0
    with torch.inference_mode():
        for step_len in steps:
            outputs.append(layer(x[:, pos:pos + step_len], pos, formulation))
            pos += step_len
    return torch.cat(outputs, dim=1)


def relative_l2(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm())


def write_safetensors_f32(path, tensors):
    header, body = {}, bytearray()
    for name, tensor in tensors.items():
        values = tensor.to(torch.float32).contiguous().flatten()
        raw = bytearray(4 * values.numel())
        torch.frombuffer(raw, dtype=torch.float32).copy_(values)
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    header_bytes = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header_bytes)) + header_bytes + body)


def self_test():
    base = {"dim": 64, "n_local_heads": 4, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
            "v_head_dim": 16, "rope_theta": 10000.0, "beta_fast": 32.0, "beta_slow": 1.0}
    cases = [  # (name, model fields): query compression and YaRN both ways
        ("q_lora 32, YaRN", {**base, "q_lora_rank": 32, "max_seq_len": 16384, "original_seq_len": 4096,
                             "rope_factor": 40.0, "mscale": 1.0}),
        ("q_lora 0, no YaRN", {**base, "q_lora_rank": 0, "max_seq_len": 64, "original_seq_len": 4096,
                               "rope_factor": 40.0, "mscale": 0.707}),
        ("q_lora 0, YaRN", {**base, "q_lora_rank": 0, "max_seq_len": 8192, "original_seq_len": 4096,
                            "rope_factor": 4.0, "mscale": 0.707}),
    ]
    batch, tokens, tail, tolerance = 2, 9, 4, 1e-10
    torch.set_num_threads(1)
    failures = 0

    def check(label, error, bound, seed):
        nonlocal failures
        ok = error <= bound
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {label}: rel L2 {error:.2e} (bound {bound:g}, seed {seed})", flush=True)

    for seed, (name, fields) in enumerate(cases):
        shape = ModelShape(fields)
        generator = torch.Generator().manual_seed(seed)
        weights = random_weights(shape, generator)
        x = torch.randn(batch, tokens, shape.dim, generator=generator, dtype=torch.float64)  # distinct sequences
        want = reference_layer(shape, weights, x)
        prefill = {f: run_steps(shape, weights, x, [tokens], f) for f in ("naive", "absorb")}
        check(f"{name}: naive == absorb (prefill {tokens})", relative_l2(prefill["absorb"], prefill["naive"]),
              tolerance, seed)
        chunked = [tokens - tail, tail - 1, 1]  # prefill, chunk at p > 0, decode
        for formulation, full in prefill.items():
            check(f"{name}: {formulation} == direct loop", relative_l2(full, want), tolerance, seed)
            steps = run_steps(shape, weights, x, chunked, formulation)
            check(f"{name}: {formulation} steps {chunked} == prefill", relative_l2(steps, full), tolerance, seed)

    # The request path: safetensors parsing, repeated batch, cache fill, timing, y_out; fp32 and bf16
    # against the float64 layer within docs/design.md's tolerances.
    shape_fields = cases[0][1]
    shape = ModelShape(shape_fields)
    generator = torch.Generator().manual_seed(100)
    weights = random_weights(shape, generator)
    x = torch.randn(1, tokens, shape.dim, generator=generator, dtype=torch.float64).to(torch.float32).double()
    with tempfile.TemporaryDirectory() as scratch:
        write_safetensors_f32(os.path.join(scratch, "w.safetensors"), weights)
        write_f32(os.path.join(scratch, "x.bin"), x[0])
        weight_sets = WeightSets()
        base_request = {"cmd": "run", "weights": os.path.join(scratch, "w.safetensors"),
                        "x": os.path.join(scratch, "x.bin"), "y_out": os.path.join(scratch, "y.bin"),
                        "model": shape_fields, "batch": 2, "threads": 1, "device": "cpu", "warmup": 1, "min_reps": 2,
                        "max_seconds": 0.0, "max_reps": 3}

        def check_request(label, bound, **fields):
            """One request through the worker's path; its output against the float64 layer's."""
            nonlocal failures
            request = {**base_request, **fields}
            answer = handle_line(json.dumps(request), weight_sets)
            variant = request.get("variant", "eager")
            prepared = answer.get("prepare_s") is None if variant == "eager" else answer.get("prepare_s", 0) > 0
            if not answer.get("ok") or answer["reps"] != 2 or answer["variant"] != variant or not prepared:
                failures += 1
                print(f"FAIL {label}: {answer}", flush=True)
                return
            start_pos, step_len = request["start_pos"], request["step_len"]
            got = read_tokens(request["y_out"], step_len, shape.dim)
            end_pos = start_pos + step_len
            want = run_steps(shape, weights, x[:, :end_pos], [end_pos], "naive")[0, start_pos:]
            check(label, relative_l2(got, want), bound, 100)

        for compute, bound in (("fp32", 1e-5), ("bf16", 2e-2)):
            for formulation, start_pos, step_len in (("naive", 0, tokens), ("absorb", tokens - 1, 1), ("auto", 3, 4)):
                check_request(f"request {compute} {formulation} p={start_pos} S={step_len}", bound,
                              start_pos=start_pos, step_len=step_len, formulation=formulation, compute_dtype=compute)
        # The variants compute the same step: compile on this machine's device, graph where CUDA is.
        variant_devices = [("compile", "cpu")] + ([("graph", "cuda")] if torch.cuda.is_available() else [])
        for variant, device in variant_devices:
            if variant == "compile" and not hasattr(torch, "compile"):
                print(f"SKIPPED variant compile: torch {torch.__version__} has no torch.compile", flush=True)
                continue
            for start_pos, step_len in ((0, tokens), (tokens - 1, 1)):
                check_request(f"request variant {variant} on {device}, p={start_pos} S={step_len}", 1e-5,
                              start_pos=start_pos, step_len=step_len, formulation="auto", compute_dtype="fp32",
                              device=device, variant=variant)
        refused = handle_line(json.dumps({**base_request, "start_pos": 0, "step_len": tokens, "formulation": "auto",
                                          "compute_dtype": "fp32", "variant": "graph"}), weight_sets)
        ok = not refused["ok"] and "needs device cuda" in refused["error"]
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} variant graph on the cpu is refused: {refused.get('error')}", flush=True)
        bad = handle_line(json.dumps({"cmd": "run", "weights": "/nonexistent.safetensors"}), weight_sets)
        ok = not bad["ok"] and "\n" not in bad["error"]
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} a bad request answers one error line: {bad['error']}", flush=True)
    print(f"self-test: {'FAIL, ' + str(failures) + ' failed' if failures else 'PASS'}", flush=True)
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", action="store_true", help="answer JSON requests on stdin, one per line")
    mode.add_argument("--once", metavar="REQUEST.json", help="run one request from a file and print the answer")
    mode.add_argument("--self-test", action="store_true", help="float64 checks of the layer")
    args = parser.parse_args()
    if sys.byteorder != "little":
        print("torch_mla_baseline.py: the files it reads are little-endian; this machine is not", file=sys.stderr)
        return 2
    if args.serve:
        return serve()
    if args.once:
        return run_once(args.once)
    return self_test()


if __name__ == "__main__":
    sys.exit(main())
