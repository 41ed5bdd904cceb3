"""Loader benchmark: host memory and throughput of the Grain clip loader on an MSR-VTT-sized store.

1. ``--generate``: writes a store the size of MSR-VTT in the exact format ``python -m
   jaxvedit.prepare`` writes (the same record codec, shard index and manifest): 10,000 videos x
   64 frames of bf16 latents (64x64x4), 20 captions a video (200,000) as token ids, CLIP vision
   hidden states (50x768 bf16) on the first 1,000 videos; random values, real record sizes
   (zstd:1 ArrayRecord chunks, as prepare's default).
2. Measures, each in a fresh process: host RSS (process + loader workers) and clips/s delivered
   on a store of the first 1,000 videos (its shard files linked from the full store) and on all
   10,000 (latents + token ids: growth must stay <= 10%), and on the 1,000-video part with the
   vision states; time to first batch.

  nice -n 10 python bench/loader.py --store /work/scratch/msrvtt-store --generate   # ~20 GiB
  python bench/loader.py --store /work/scratch/msrvtt-store                         # measure
  python bench/loader.py --tiny                                                      # CI smoke test

Prints a table; writes bench/results/loader.json (or $OUT/loader.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL = dict(videos=10_000, frames=64, captions=20, vision_videos=1_000, latent=64, vision=(50, 768),
            tokens=77, videos_per_shard=250)
TINY = dict(videos=60, frames=8, captions=4, vision_videos=12, latent=8, vision=(5, 16), tokens=8,
            videos_per_shard=6)


def make_part(store: Path, out: Path, videos: int) -> Path:
    """A store of the first ``videos`` videos: its own manifest and shard indices, the shard
    files linked (not copied) from the full store."""
    from jaxvedit.data import store as st

    m = json.loads((store / st.MANIFEST).read_text())
    vps, n_full = m["videos_per_shard"], m["num_shards"]
    if videos % vps:
        raise ValueError(f"{videos} videos are not whole shards of {vps}")
    n = videos // vps
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src, dst = st.shard_name(i, n_full), st.shard_name(i, n)
        link = out / f"{dst}.array_record"
        if not link.exists():
            link.symlink_to((store / f"{src}.array_record").resolve())
        idx = json.loads((store / f"{src}.json").read_text())
        st.write_json_atomic(out / f"{dst}.json", {**idx, "num_shards": n})
    st.write_json_atomic(out / st.MANIFEST, {**m, "num_shards": n, "num_videos_listed": videos})
    return out


def generate(out: Path, spec: dict, seed: int = 0, compression: str = "zstd:1",
             fingerprints: tuple[str, str | None] = ("bench-random", "bench-random"),
             resolution: int | None = None) -> dict:
    """Write a random store in prepare's format (see jaxvedit/data/prepare.py). ``fingerprints``:
    the (model, vision) encoder fingerprints the manifest claims (a real model's, for a store a
    training run should accept)."""
    import numpy as np
    from array_record.python.array_record_module import ArrayRecordWriter

    from jaxvedit.data import store as st

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bf16 = st.numpy_dtype(spec.get("dtype", "bfloat16"))
    lat_n = spec["latent"] * spec["latent"] * 4
    vis_n = spec["vision"][0] * spec["vision"][1]
    pool = rng.standard_normal(1 << 24, dtype=np.float32).astype(bf16)  # 2**24 random values
    n_videos, vps = spec["videos"], spec["videos_per_shard"]
    n_shards = -(-n_videos // vps)
    manifest = {
        "format": st.FORMAT, "version": st.VERSION, "model": "random (bench/loader.py)",
        "vision_model": "random", "model_fingerprint": fingerprints[0], "vision_fingerprint": fingerprints[1],
        "dtype": spec.get("dtype", "bfloat16"), "resolution": resolution or spec["latent"] * 8,
        "max_frames": spec["frames"],
        "min_frames": 3, "latent_shape": [spec["latent"], spec["latent"], 4],
        "vision_shape": list(spec["vision"]), "depth": False, "depth_shape": None,
        "token_length": spec["tokens"], "num_shards": n_shards, "videos_per_shard": vps,
        "num_videos_listed": n_videos, "sources_fingerprint": f"bench-{seed}",
        "compression": compression, "data": "generated", "layout": "generated",
    }
    st.write_json_atomic(out / st.MANIFEST, manifest)

    def window(n):
        i = int(rng.integers(0, len(pool) - n))
        return pool[i:i + n]

    t0, total_bytes = time.perf_counter(), 0
    for j in range(n_shards):
        name = st.shard_name(j, n_shards)
        if (out / f"{name}.json").is_file():
            continue
        tmp = out / f"{name}.array_record.tmp"
        w = ArrayRecordWriter(str(tmp), f"group_size:1,{compression}")
        videos, n_rec = [], 0
        for v in range(j * vps, min((j + 1) * vps, n_videos)):
            has_vision = v < spec["vision_videos"]
            for _ in range(spec["frames"]):
                w.write(st.encode_frame(window(lat_n), window(vis_n) if has_vision else None))
            for c in range(spec["captions"]):
                ids = rng.integers(0, spec.get("vocab", 49408), spec["tokens"], dtype=np.int32)
                w.write(st.encode_caption(ids, f"generated caption {c} of video {v}"))
            videos.append({"name": f"video{v}", "source": f"videos/video{v}.mp4", "first": n_rec,
                           "frames": spec["frames"], "captions": spec["captions"], "vision": has_vision,
                           "depth": False, "fps": 30.0})
            n_rec += spec["frames"] + spec["captions"]
        w.close()
        os.replace(tmp, out / f"{name}.array_record")
        st.write_json_atomic(out / f"{name}.json", {"shard": j, "num_shards": n_shards, "sources": "generated",
                                                     "records": n_rec, "videos": videos, "skipped": []})
        total_bytes += (out / f"{name}.array_record").stat().st_size
        print(f"shard {j + 1}/{n_shards}: {total_bytes / 2**30:.2f} GiB, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    size = sum(p.stat().st_size for p in out.glob("*.array_record"))
    return {"store_gib": size / 2**30, "generate_s": time.perf_counter() - t0, "shards": n_shards}


def _rss_tree() -> int:
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for c in me.children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(store_path: str, fields: list[str], batches: int, batch_size: int, frames: int,
            threads: int, workers: int, prefetch: int) -> dict:
    """One loader run (in this process): RSS, clips/s, time to first batch."""
    t_import = time.perf_counter()
    importlib.import_module("grain")  # imports jax and orbax: timed apart from the loader

    from jaxvedit.data.loader import MicroBatchSource, make_dataset
    from jaxvedit.data.store import ClipStore

    t_import = time.perf_counter() - t_import
    t0, c0 = time.perf_counter(), time.process_time()
    rss0 = _rss_tree()
    peak = {"rss": rss0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _rss_tree())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    store = ClipStore(store_path)
    src = MicroBatchSource(store, seed=0, frames=frames, batch_size=batch_size, fields=tuple(fields),
                           length=batches)
    it = iter(make_dataset(src, start=0, stop=batches, threads=threads, prefetch=prefetch, workers=workers))
    first = next(it)
    t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
    n_bytes = sum(v.nbytes for v in first.values())
    warm = min(50, batches // 5)
    for _ in range(warm - 1):
        next(it)
    t1 = time.perf_counter()
    n = 0
    for b in it:
        n += 1
    dt = time.perf_counter() - t1
    rss_end = _rss_tree()
    stop.set()
    return {"videos": int(len(src.eligible)), "fields": "+".join(fields), "clips_per_s": n * batch_size / dt,
            "micro_batches_per_s": n / dt, "first_batch_s": t_first, "first_batch_cpu_s": c_first,
            "import_s": t_import, "rss_mib": rss_end / 2**20,
            "peak_rss_mib": max(peak["rss"], rss_end) / 2**20, "rss_before_mib": rss0 / 2**20,
            "batch_mib": n_bytes / 2**20, "batch_size": batch_size, "frames": frames,
            "threads": threads, "workers": workers, "prefetch": prefetch, "timed_batches": n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="store folder (generated with --generate)")
    ap.add_argument("--generate", action="store_true", help="write the random store first (resumable)")
    ap.add_argument("--tiny", action="store_true", help="tiny store in a temporary folder (smoke test)")
    ap.add_argument("--batches", type=int, default=800, help="micro-batches per measurement")
    ap.add_argument("--batch-size", type=int, default=4, help="clips per micro-batch (one H200 step)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--prefetch", type=int, default=8)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(**json.loads(args.one))), flush=True)
        return
    spec = TINY if args.tiny else FULL
    tmp = tempfile.TemporaryDirectory() if args.tiny else None
    store = Path(tmp.name) / "store" if args.tiny else Path(args.store or "")
    if not args.tiny and not args.store:
        ap.error("give --store (or --tiny)")
    gen = generate(store, spec) if (args.generate or args.tiny) else {}
    size = sum(p.stat().st_size for p in store.glob("*.array_record")) / 2**30
    part, everything = spec["vision_videos"], spec["videos"]
    part_store = make_part(store, store.parent / f"{store.name}-first{part}", part)
    runs = [(part_store, part, ["latents", "token_ids"]), (store, everything, ["latents", "token_ids"]),
            (part_store, part, ["latents", "token_ids", "vision"])]
    rows = []
    for path, videos, fields in runs:
        one = dict(store_path=str(path), fields=fields, batches=args.batches,
                   batch_size=args.batch_size, frames=args.frames, threads=args.threads,
                   workers=args.workers, prefetch=args.prefetch)
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(one)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(f"measurement failed: {proc.stderr[-3000:]}")
        rows.append(json.loads(line[0][7:]))
        print(f"{videos} videos, {'+'.join(fields)}: {rows[-1]['clips_per_s']:.0f} clips/s, "
              f"RSS {rows[-1]['rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    growth = rows[1]["rss_mib"] / rows[0]["rss_mib"] - 1
    growth_peak = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1
    from common import print_table, write_json

    print_table(f"Grain clip loader, store {size:.1f} GiB ({everything} videos x {spec['frames']} frames), "
                f"{os.cpu_count()} CPU cores", rows,
                ["videos", "fields", "clips_per_s", "first_batch_s", "rss_mib", "peak_rss_mib", "batch_mib"])
    print(f"\nRSS growth {part:,} -> {everything:,} videos: {100 * growth:+.1f}% (end), "
          f"{100 * growth_peak:+.1f}% (peak)")
    payload = {"spec": spec, "store_gib": size, **gen, "runs": rows, "rss_growth": growth,
               "rss_growth_peak": growth_peak, "tiny": args.tiny, "cpu_count": os.cpu_count(),
               "min_clips_per_s": min(r["clips_per_s"] for r in rows)}
    print("wrote", write_json("loader_tiny" if args.tiny else "loader", payload))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
