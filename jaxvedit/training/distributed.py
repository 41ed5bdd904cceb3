"""Multi-host training: ``jax.distributed.initialize`` from flags or environment variables, and
this process's part of each global micro-batch.

A multi-host run starts one process per host (or per GPU), each with the same flags::

    python -m jaxvedit.train ... --coordinator-address host0:1234 --num-processes 2 --process-id 0
    python -m jaxvedit.train ... --coordinator-address host0:1234 --num-processes 2 --process-id 1

or with ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` in the
environment, or (``--multihost`` alone) whatever jax detects itself (SLURM, Open MPI, Cloud
TPU, ...). The mesh then spans every process's devices; each process reads only the clips its
own devices hold (:func:`local_rows`) and ``jax.make_array_from_process_local_data`` assembles
the global batch. On CPU the cross-process collectives go through gloo.
"""

from __future__ import annotations

import os

import jax
import numpy as np


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def initialize(cfg) -> bool:
    """Call ``jax.distributed.initialize`` when the config (or environment) asks for it;
    returns whether this is a multi-process run."""
    address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (cfg.multihost or cfg.coordinator_address):
        return False
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    n = cfg.num_processes or _env_int("JAX_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id >= 0 else _env_int("JAX_PROCESS_ID")
    if (n is None) != (pid is None) and address:
        raise ValueError(f"multi-host: give both the number of processes and this process's id "
                         f"(--num-processes / --process-id or JAX_NUM_PROCESSES / JAX_PROCESS_ID); "
                         f"got num_processes={n}, process_id={pid}")
    if pid is not None and n is not None and not 0 <= pid < n:
        raise ValueError(f"multi-host: process id {pid} is not in [0, {n})")
    try:  # CPU processes need a collectives backend to talk to each other
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:
        pass
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid)
    return jax.process_count() > 1


def local_rows(sharding, batch_size: int) -> tuple[int, int]:
    """The contiguous rows of a global batch of ``batch_size`` clips that this process's devices
    hold under ``sharding`` (split along the first axis)."""
    idx = sharding.addressable_devices_indices_map((batch_size,))
    spans = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                    for s in idx.values()})
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        if start != stop:
            raise ValueError(f"this process's devices hold non-contiguous rows of the batch: {spans}")
    return spans[0][0], spans[-1][1]


def global_batch(sharding, local: dict, batch_size: int) -> dict:
    """This process's rows -> global arrays sharded along the clip axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v, (batch_size,) + v.shape[1:])
            for k, v in local.items()}


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a stop request)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
