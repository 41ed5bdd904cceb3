"""Kernel-time tables from a ``jax.profiler`` trace (the perfetto / Chrome trace JSON that
``jax.profiler.trace(dir, create_perfetto_trace=True)`` writes as
``dir/plugins/profile/<run>/*.trace.json.gz``). No jax import: the tests feed it synthetic traces.

Which events count as kernels:

* ``device``: when the trace has a device process (``process_name`` ``/device:GPU:0``, ...), the
  complete events (``ph == "X"``) on its stream lines (``thread_name`` ``Stream #...``). The
  device process also has derived lines (``XLA Modules``, ``XLA Ops``, ``Steps``, name scopes,
  source lines, ``CUPTI overhead``) that repeat the same time span: they are never summed. If a
  device process has no line named ``Stream...``, every line not named as a derived one is used
  (reported).
* ``host-xla-ops``: otherwise (CPU backend), the host's XLA thunk events: complete events whose
  ``args`` carry ``hlo_op`` (the thunk executor's per-op events; ``end: ...`` markers carry none),
  without control-flow containers (``while``, ``conditional``, ``call``) that enclose other ops.

Kinds, matched in this order on ``"<kernel name> <hlo_op>"`` (lower case; XLA GPU names its
own fusion kernels ``<loop|input|output>_<root opcodes>_fusion[_N]``, rename_fusions.cc):
attention (cuDNN / flash SDPA), copy/transpose, convolution, matmul, reduction, elementwise
(XLA loop fusions and wrapped single ops), other.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

KINDS = ("attention", "convolution", "matmul", "elementwise", "reduction", "copy/transpose", "other")


def _words(*ops: str) -> str:
    """HLO opcodes as whole words (CPU op names such as ``add.3``, ``multiply_fusion``)."""
    return r"(^|[^a-z])(" + "|".join(ops) + r")([^a-z]|$)"


# (kind, pattern), first match wins; matched against "<name> <hlo_op>" in lower case
_RULES = (
    # cuDNN frontend SDPA ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_..."), FMHA, flash
    ("attention", r"sdpa|fmha|flash|fused_attention|dot_product_attention"),
    # layout / data movement; before convolution so cuDNN's nchwToNhwc helpers land here
    ("copy/transpose", r"transpose|copy|memcpy|memset|nchwtonhwc|nhwctonchw|dynamic_update_slice"
                       r"|concatenate|gather|scatter|" + _words("slice", "pad", "reverse")),
    # cuDNN / cutlass convolutions; 'conv' but not 'convert'
    ("convolution", r"conv(?!ert)|fprop|dgrad|wgrad|implicit_gemm|implicit_convolve|winograd"),
    # cuBLAS(Lt) / nvjet / cutlass GEMMs, XLA's Triton GEMM fusions, CPU dots
    ("matmul", r"gemm|cublas|nvjet|cutlass|sm\d+_xmma|matmul|" + _words("dot")),
    ("reduction", r"reduc|softmax|argmax|argmin"),
    # XLA:CPU's YNNPACK / XNNPACK subgraphs (a dot with its epilogue, or elementwise): unknown
    ("other", r"ynn_fusion|xnn_fusion"),
    ("elementwise", r"fusion|wrapped_|loop_|elementwise|" + _words(
        "add", "subtract", "multiply", "divide", "negate", "abs", "exp", "exponential", "log",
        "tanh", "logistic", "rsqrt", "sqrt", "power", "maximum", "minimum", "select", "compare",
        "convert", "broadcast", "iota", "clamp", "and", "or", "xor", "not", "sign", "floor",
        "erf", "sine", "cosine", "bitcast_convert", "rng_bit_generator", "threefry2x32")),
)
_COMPILED = tuple((k, re.compile(p)) for k, p in _RULES)
# derived (non-kernel) lines of an XProf device plane
_DERIVED_LINES = re.compile(r"^(xla modules|xla ops|xla traceme|steps|framework|tensorflow|source"
                            r"|launch stats|async xla ops|host offload|cupti)", re.I)
_CONTAINERS = re.compile(r"^(while|conditional|call|async)([._-]|$)")


def classify(name: str, hlo_op: str = "") -> str:
    """The kind of one kernel from its name (and the HLO op XLA launched it for, if known)."""
    text = f"{name} {hlo_op}".lower()
    for kind, pat in _COMPILED:
        if pat.search(text):
            return kind
    return "other"


def family(name: str) -> str:
    """The kernel name without XLA's uniquifying numeric suffixes (``loop_add_fusion_12``
    -> ``loop_add_fusion``), so repeated fusions of one shape group together."""
    return re.sub(r"([._]\d+)+$", "", name)


def find_trace(trace_dir) -> Path:
    """The newest ``*.trace.json.gz`` under ``trace_dir`` (the one ``jax.profiler.trace`` wrote)."""
    files = sorted(Path(trace_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir} (did the profiler run?)")
    return files[-1]


def load_trace(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = find_trace(path)
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        return json.load(f)


def _names(events, kind: str) -> dict:
    out = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == kind:
            key = e["pid"] if kind == "process_name" else (e["pid"], e.get("tid"))
            out[key] = str((e.get("args") or {}).get("name", ""))
    return out


def kernel_events(trace: dict) -> tuple[list[dict], str, list[str]]:
    """``(events, source, lines)``: the kernel events of a trace, which source they came from
    (``"device"`` or ``"host-xla-ops"``) and the ``process / thread`` lines they were read from."""
    events = trace.get("traceEvents")
    if not isinstance(events, list):
        raise ValueError("not a Chrome/perfetto trace: no 'traceEvents' list")
    procs, threads = _names(events, "process_name"), _names(events, "thread_name")
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e and "ts" in e]
    device_pids = {pid for pid, n in procs.items() if re.match(r"/device:(?!CPU)", n)}
    if device_pids:
        dev_lines = {(e["pid"], e.get("tid")) for e in complete if e["pid"] in device_pids}
        streams = {k for k in dev_lines if threads.get(k, "").lower().startswith("stream")}
        chosen = streams or {k for k in dev_lines if not _DERIVED_LINES.match(threads.get(k, ""))}
        ker = [e for e in complete if (e["pid"], e.get("tid")) in chosen]
        if ker:
            lines = sorted(f"{procs[p]} / {threads.get((p, t), t)}" for p, t in chosen)
            return ker, "device", lines
    ker = [e for e in complete if e["pid"] not in device_pids
           and "hlo_op" in (e.get("args") or {})
           and not _CONTAINERS.match(str(e["args"]["hlo_op"]))]
    lines = sorted({f"{procs.get(e['pid'], e['pid'])} / {threads.get((e['pid'], e.get('tid')), e.get('tid'))}"
                    for e in ker})
    return ker, "host-xla-ops", lines


def _union_us(events) -> float:
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events)
    total, cur_s, cur_e = 0.0, None, None
    for s, t in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, t
        else:
            cur_e = max(cur_e, t)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def summarize(trace: dict, steps: int, *, top: int = 15, name_width: int = 70) -> dict:
    """Per-step kernel time of a trace that holds ``steps`` steps: totals, shares per kind, the
    ``top`` kernels (by exact name) and kernel families (numeric suffixes dropped)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ker, source, lines = kernel_events(trace)
    if not ker:
        raise ValueError("the trace has no kernel events (neither device streams nor XLA host ops)")
    by_kind = defaultdict(float)
    by_name = defaultdict(lambda: [0, 0.0, ""])
    by_family = defaultdict(lambda: [0, 0.0, ""])
    for e in ker:
        name = str(e.get("name", ""))
        kind = classify(name, str((e.get("args") or {}).get("hlo_op", "")))
        dur = float(e["dur"])
        by_kind[kind] += dur
        for table, key in ((by_name, name), (by_family, family(name))):
            row = table[key]
            row[0] += 1
            row[1] += dur
            row[2] = kind
    total = sum(by_kind.values())
    busy = _union_us(ker)

    def rows(table, n):
        out = []
        for key, (count, us, kind) in sorted(table.items(), key=lambda kv: -kv[1][1])[:n]:
            short = key if len(key) <= name_width else key[: name_width - 3] + "..."
            out.append({"kernel": short, "kind": kind, "count": round(count / steps, 2),
                        "ms": us / steps / 1e3, "share": us / total if total else 0.0,
                        "full_name": key[:400]})
        return out

    return {
        "source": source, "lines": lines, "steps": steps,
        "kernel_ms": total / steps / 1e3,      # sum of kernel durations per step
        "busy_ms": busy / steps / 1e3,         # union of kernel intervals per step
        "kernels": round(len(ker) / steps, 2),
        "distinct_kernels": len(by_name),
        "kinds": [{"kind": k, "ms": by_kind.get(k, 0.0) / steps / 1e3,
                   "share": by_kind.get(k, 0.0) / total if total else 0.0} for k in KINDS],
        "top": rows(by_name, top),
        "families": rows(by_family, top),
    }
