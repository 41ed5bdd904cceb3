"""Shared helpers for the benchmarks: device facts, timing, random weights, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # peak memory means something

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
TINY_UNET = {**SD15_UNET, "block_out_channels": [32, 64, 64, 64], "attention_head_dim": 2,
             "cross_attention_dim": 768, "norm_num_groups": 8, "layers_per_block": 1}

# datasheet dense bf16 peak (TFLOP/s), for MFU; the measured matmul ceiling is reported beside it
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "diffusers", "peft", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            pass
    return out


def device_name() -> str:
    try:
        import jax

        return jax.devices()[0].device_kind
    except Exception:
        return "unknown"


def datasheet_peak(name: str) -> float | None:
    for key, val in PEAK_BF16_TFLOPS.items():
        if key in name:
            return val
    return None


def time_steps(one, *, warmup: int, repeats: int, inner: int, sync) -> tuple[float, object]:
    """Seconds per call of ``one(i)`` (a step, ``i`` its PRNG index): ``warmup`` calls, each
    synced, then ``repeats`` runs of ``inner`` calls dispatched back to back, each run ended by
    ``sync(last output)``. Returns (the runs' median, upper for an even count; the last output)."""
    for i in range(warmup):
        sync(one(i))
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(inner):
            out = one(1000 + r * inner + i)
        sync(out)
        times.append((time.perf_counter() - t0) / inner)
    times.sort()
    return times[len(times) // 2], out


def random_fill(module, seed: int = 0, std: float = 0.02):
    """Fill an abstract (``nnx.eval_shape``) module's parameters with random values on device."""
    import jax
    import numpy as np
    from flax import nnx

    rng = np.random.default_rng(seed)
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    for path, var in flat:
        shape, dtype = var.value.shape, var.value.dtype
        if str(path[-1]) == "scale":
            arr = np.ones(shape, np.float32)
        elif str(path[-1]) == "bias":
            arr = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            arr = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
        var.value = jax.device_put(arr).astype(dtype)
    nnx.update(module, nnx.from_flat_state(flat))
    return module


def out_dir() -> Path:
    d = Path(os.environ.get("OUT", "bench/results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(name: str, payload: dict) -> Path:
    path = out_dir() / f"{name}.json"
    payload = {"device": device_name(), "versions": versions(), **payload}
    path.write_text(json.dumps(payload, indent=2))
    return path


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


class timing_gate:  # noqa: N801  (a context manager, used as ``with timing_gate():``)
    """Lets several benchmark processes compile side by side and time one at a time
    (``bench/levers.py``). With ``BENCH_GATE_DIR`` set: on entry, announce readiness
    (``ready.<pid>``), wait for the driver's ``go`` file, then hold an exclusive lock on
    ``timing.lock`` until exit, so each timed section has the device to itself. Without it:
    nothing."""

    def __init__(self, poll_s: float = 0.2):
        self.dir = os.environ.get("BENCH_GATE_DIR")
        self.poll_s, self._lock = poll_s, None

    def __enter__(self):
        if not self.dir:
            return self
        import fcntl

        gate = Path(self.dir)
        (gate / f"ready.{os.getpid()}").touch()
        while not (gate / "go").exists():
            time.sleep(self.poll_s)
        self._lock = open(gate / "timing.lock", "w")  # noqa: SIM115  (held until __exit__)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            import fcntl

            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        return False
