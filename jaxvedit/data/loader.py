"""The training loader: Grain over the clip store, micro-batch by micro-batch.

Element ``p`` of the dataset is micro-batch number ``p``. Its draw (for each of the ``B`` clips:
a video uniformly among those long enough, a start frame uniformly, a caption uniformly) comes
from ``numpy.random.default_rng([seed, p])`` and nothing else, so a resumed run reads exactly
the batches an uninterrupted run would have read, whatever was prefetched when it stopped.
Every process draws the whole global micro-batch (a few integers) and reads only its own rows
(``rows``: the clips its devices hold), so ``n`` processes together read each clip once and
their batches equal a one-process run's.

Reading is random access (``grain.MapDataset.source`` over an ``ArrayRecordDataSource``): a clip
of T frames is T frame records plus one caption record. ``threads`` read micro-batches ahead in
parallel, at most ``prefetch`` of them wait in host memory, and ``workers`` > 0 moves the reading
into that many worker processes (``mp_prefetch``). Host memory is bounded by those buffers and
the per-video index (a few integers a video), whatever the size of the dataset.
"""

from __future__ import annotations

import numpy as np

from jaxvedit.data import store as st

FIELDS = ("latents", "token_ids", "vision", "depth")


class MicroBatchSource:
    """Random access ``source[p] -> {"latents" (b, T, h, w, C), "token_ids" (b, L) int32,
    "vision" (b, T, L, D), "depth" (b, T, H, W, 1)}`` for this process's ``b`` rows of
    micro-batch ``p`` (the fields asked for). Picklable (Grain worker processes)."""

    def __init__(self, store: st.ClipStore, *, seed: int, frames: int, stride: int = 1,
                 batch_size: int, rows: tuple[int, int] | None = None,
                 fields=("latents", "token_ids"), length: int = 2**62):
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown loader field(s) {unknown}; choose from {FIELDS}")
        if frames < 1 or stride < 1 or batch_size < 1:
            raise ValueError(f"frames={frames}, stride={stride}, batch_size={batch_size} must be >= 1")
        self.seed, self.frames, self.stride, self.batch_size = int(seed), frames, stride, batch_size
        self.rows = rows or (0, batch_size)
        if not 0 <= self.rows[0] < self.rows[1] <= batch_size:
            raise ValueError(f"rows {self.rows} are not a part of a micro-batch of {batch_size} clips")
        self.fields = tuple(fields)
        self.length = int(length)
        self.span = (frames - 1) * stride + 1
        idx = store.index
        ok = idx.num_frames >= self.span
        if "vision" in fields:
            ok &= idx.has_vision
        if "depth" in fields:
            ok &= idx.has_depth
        self.eligible = np.flatnonzero(ok)
        if not len(self.eligible):
            need = " with " + " and ".join(f for f in ("vision", "depth") if f in fields) \
                if {"vision", "depth"} & set(fields) else ""
            raise st.StoreError(f"store {store.path}: no video{need} has a clip of {frames} frames "
                                f"(stride {stride} spans {self.span}; {len(idx)} videos, longest "
                                f"{int(idx.num_frames.max()) if len(idx) else 0} frames)")
        # per-video arrays of the eligible videos only (contiguous: cheap to pickle)
        self.frame_key = idx.frame_key[self.eligible]
        self.n_starts = (idx.num_frames[self.eligible] - self.span + 1).astype(np.int64)
        self.caption_key = idx.caption_key[self.eligible]
        self.n_captions = idx.num_captions[self.eligible].astype(np.int64)
        self.paths = store.record_paths()
        self.dtype = store.dtype
        self.latent_shape = store.latent_shape
        self.vision_shape = store.vision_shape
        self.depth_shape = store.depth_shape
        self._source = None

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_source"] = None  # readers are reopened in each worker
        return state

    @property
    def source(self):
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        return self._source

    def draw(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The global micro-batch ``position``: (video, start frame, caption) per clip, as
        indices into the eligible videos; a pure function of ``(seed, position)``."""
        rng = np.random.default_rng([self.seed, int(position)])
        b = self.batch_size
        v = rng.integers(len(self.eligible), size=b)
        start = np.minimum((rng.random(b) * self.n_starts[v]).astype(np.int64), self.n_starts[v] - 1)
        cap = np.minimum((rng.random(b) * self.n_captions[v]).astype(np.int64), self.n_captions[v] - 1)
        return v, start, cap

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        v, start, cap = self.draw(position)
        r0, r1 = self.rows
        v, start, cap = v[r0:r1], start[r0:r1], cap[r0:r1]
        b, t = len(v), self.frames
        frame_keys = (self.frame_key[v] + start)[:, None] + self.stride * np.arange(t)[None]
        keys = [int(k) for k in frame_keys.ravel()]
        if "token_ids" in self.fields:
            keys += [int(k) for k in self.caption_key[v] + cap]
        recs = [st.decode_record(r) for r in self.source.__getitems__(keys)]
        dt = st.numpy_dtype(self.dtype)
        out = {}
        frames = recs[:b * t]

        def stack(name, shape, dtype):
            buf = b"".join(r[name] for r in frames)
            return np.frombuffer(buf, dtype).reshape((b, t) + tuple(shape))

        if "latents" in self.fields:
            out["latents"] = stack("latent", self.latent_shape, dt)
        if "vision" in self.fields:
            out["vision"] = stack("vision", self.vision_shape, dt)
        if "depth" in self.fields:
            out["depth"] = stack("depth", self.depth_shape, np.uint8)
        if "token_ids" in self.fields:
            out["token_ids"] = np.stack([np.frombuffer(r["ids"], np.int32) for r in recs[b * t:]])
        return out


def make_dataset(source: MicroBatchSource, *, start: int, stop: int, threads: int = 4,
                 prefetch: int = 8, workers: int = 0):
    """A Grain ``IterDataset`` of micro-batches ``start .. stop - 1`` (in order)."""
    import grain

    if not 0 <= start <= stop <= len(source):
        raise ValueError(f"micro-batches [{start}, {stop}) outside the source's {len(source)}")
    ds = grain.MapDataset.source(source).slice(slice(start, stop))
    if workers > 0:
        from absl import flags  # Grain's worker processes read absl flags: use their defaults

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=2))
        return it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                           per_worker_buffer_size=max(1, prefetch // workers)))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads),
                                                prefetch_buffer_size=max(1, prefetch)))


def on_device(ds, put, buffer: int = 2):
    """Apply ``put`` (host batch -> device arrays) in a background thread, ``buffer`` ahead: the
    next micro-batch is on the device when the step ends."""
    import grain

    return grain.experimental.ThreadPrefetchIterDataset(ds.map(put), prefetch_buffer_size=buffer)
