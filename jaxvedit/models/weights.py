"""PyTorch-layout state dicts <-> Flax NNX modules, without torch.

Our NNX modules mirror the attribute names of their diffusers / transformers counterparts, so a
parameter at NNX path ``("down_blocks", 0, "resnets", 1, "conv1", "kernel")`` corresponds to the
PyTorch key ``down_blocks.0.resnets.1.conv1.weight``. Only the leaf name and the layout differ:

=========================  ==================  ===============================
NNX leaf                   PyTorch leaf        layout change
=========================  ==================  ===============================
``kernel`` (2-D, Linear)   ``weight``          (out, in) -> (in, out)
``kernel`` (4-D, Conv)     ``weight``          (out, in, kh, kw) -> (kh, kw, in, out)
``scale`` (norms)          ``weight``          none
``embedding`` (Embed)      ``weight``          none
anything else              same name           none
=========================  ==================  ===============================

Every weight the module expects must be found, every tensor in the file must be used (or be
named in ``ignore``); a missing, unexpected or misshapen tensor raises :class:`WeightLoadError`
naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_LEAF_RENAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


class WeightLoadError(ValueError):
    """A checkpoint does not fit the model: names the offending tensors."""


@dataclass
class LoadReport:
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)


def torch_key(path: tuple) -> str:
    """NNX parameter path -> PyTorch state-dict key."""
    parts = [str(p) for p in path]
    parts[-1] = _LEAF_RENAMES.get(parts[-1], parts[-1])
    return ".".join(parts)


def torch_to_flax_layout(array: np.ndarray, nnx_leaf: str, expected_shape: tuple) -> np.ndarray:
    """Convert one PyTorch tensor to the layout of the NNX leaf that will hold it."""
    if nnx_leaf == "kernel":
        if array.ndim == 2 and len(expected_shape) == 2:
            return array.T
        if array.ndim == 4 and len(expected_shape) == 4:
            return array.transpose(2, 3, 1, 0)
        if array.ndim == 4 and len(expected_shape) == 2 and array.shape[2:] == (1, 1):
            # 1x1 convolution stored where we use a Linear (old VAE attention checkpoints)
            return array[:, :, 0, 0].T
    return array


def flax_to_torch_layout(array: np.ndarray, nnx_leaf: str) -> np.ndarray:
    """Inverse of :func:`torch_to_flax_layout` (for export)."""
    if nnx_leaf == "kernel":
        if array.ndim == 2:
            return array.T
        if array.ndim == 4:
            return array.transpose(3, 2, 0, 1)
    return array


def load_torch_state_dict(
    module: nnx.Module,
    state_dict: Mapping[str, np.ndarray],
    *,
    ignore: Iterable[str] = (),
    renames: Mapping[str, str] | None = None,
    what: str = "model",
) -> LoadReport:
    """Copy a PyTorch-layout state dict into ``module``'s ``nnx.Param`` leaves, in place.

    ``ignore``: key prefixes in the file that are known not to belong to the module (they are
    reported, not errors). ``renames``: file key -> expected key, for legacy layouts.
    Parameters keep the dtype the module was built with.
    """
    renames = dict(renames or {})
    source = {renames.get(k, k): v for k, v in state_dict.items()}
    ignore = tuple(ignore)
    params = nnx.state(module, nnx.Param)
    flat = dict(nnx.to_flat_state(params))
    missing, misshapen = [], []
    new_values = {}
    for path, var in flat.items():
        key = torch_key(path)
        if key not in source:
            missing.append(key)
            continue
        expected = tuple(var.value.shape)
        array = torch_to_flax_layout(np.asarray(source[key]), str(path[-1]), expected)
        if tuple(array.shape) != expected:
            misshapen.append(f"{key}: file has {tuple(np.shape(source[key]))}, {what} expects "
                             f"{_torch_shape(expected, str(path[-1]))}")
            continue
        new_values[path] = jnp.asarray(array, dtype=var.value.dtype)
    used = {torch_key(p) for p in flat}
    unexpected = sorted(k for k in source if k not in used and not k.startswith(ignore))
    ignored = sorted(k for k in source if k not in used and k.startswith(ignore))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing weight(s): {_listing(missing)}")
    if misshapen:
        problems.append(f"{len(misshapen)} weight(s) of the wrong shape: {_listing(misshapen)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s) in the file: {_listing(unexpected)}")
    if problems:
        raise WeightLoadError(f"cannot load {what}: " + "; ".join(problems))
    for path, value in new_values.items():
        flat[path].value = value
    nnx.update(module, nnx.from_flat_state(flat))
    return LoadReport(loaded=len(new_values), ignored=ignored)


def module_to_torch_state_dict(module: nnx.Module, filter=nnx.Param) -> dict[str, np.ndarray]:
    """Export ``module``'s parameters as a PyTorch-layout state dict of numpy arrays."""
    flat = nnx.to_flat_state(nnx.state(module, filter))
    return {
        torch_key(path): flax_to_torch_layout(np.asarray(var.value), str(path[-1]))
        for path, var in flat
    }


def _torch_shape(flax_shape: tuple, leaf: str) -> tuple:
    if leaf == "kernel" and len(flax_shape) == 2:
        return (flax_shape[1], flax_shape[0])
    if leaf == "kernel" and len(flax_shape) == 4:
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    return flax_shape


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------
# safetensors files


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into numpy arrays (bf16 via ml_dtypes)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    out = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except (TypeError, ValueError) as err:  # bf16 is not a numpy dtype: go through flax
        if "bf16" not in str(err).lower() and "bfloat16" not in str(err).lower():
            raise WeightLoadError(f"cannot read {path}: {err}") from err
        with safe_open(str(path), framework="flax") as f:
            for k in f.keys():
                out[k] = np.asarray(jax.device_get(f.get_tensor(k)))
    except Exception as err:  # safetensors raises its own SafetensorError on corrupt files
        raise WeightLoadError(f"cannot read {path}: {err}") from err
    return out


def read_weights_folder(folder: str | os.PathLike, stem: str) -> dict[str, np.ndarray]:
    """Read ``{stem}.safetensors`` or a sharded ``{stem}.safetensors.index.json`` in ``folder``.

    ``stem`` is ``diffusion_pytorch_model`` for diffusers components, ``model`` for
    transformers ones. A ``.bin`` (pickle) file is refused with an explanation: loading pickles
    needs torch and can run arbitrary code.
    """
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(read_safetensors(folder / shard))
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise WeightLoadError(f"{index} names tensors absent from its shards: {_listing(missing)}")
        return out
    candidates = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return read_safetensors(folder / candidates[0])
    bins = sorted(p.name for p in folder.glob("*.bin"))
    hint = (f" (found {bins}: convert pickled .bin weights to safetensors first)" if bins else "")
    raise FileNotFoundError(
        f"no weights in {folder}: expected {single.name} or {index.name}{hint}"
        + (f"; several candidates: {candidates}" if candidates else "")
    )
