"""PyTorch transcription of the authors' DAPE modules (junhaoooxia/DAPE, commit 7ffb090):
``AdjustableNorm`` from dape/modules/diffusionmodules/util.py and ``DAPEAdapter`` from
dape/modules/attention.py, copied from the definitions (comments ours), plus helpers that put them
into a diffusers ``UNet2DConditionModel`` the way the code does (``_replace_norms_with_adjustable``
in dape/models/diffusion.py; the adapter applied to the residual stream of a transformer block
after the self-attention residual and, for ``placement="attn1+ff"``, after the FF residual)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdjustableNorm(nn.Module):
    """ẑt = γ·Norm(zt) + β + α0·zt; α0 a learnable scalar initialised to 0."""

    def __init__(self, norm_layer: nn.Module):
        super().__init__()
        self.norm = norm_layer
        self.alpha0 = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.norm(x) + self.alpha0 * x


class DAPEAdapter(nn.Module):
    def __init__(self, in_dim, inner_dim=64):
        super().__init__()
        self.project1 = nn.Linear(in_dim, inner_dim)
        self.nonlinear = F.gelu
        self.project2 = nn.Linear(inner_dim, in_dim)
        self.dropout = nn.Dropout(p=0.1)
        self.adapter_conv = nn.Conv2d(inner_dim, inner_dim, kernel_size=5, padding=5 // 2,
                                      groups=inner_dim)
        self.norm = nn.LayerNorm(in_dim)
        self.gamma = nn.Parameter(torch.ones(in_dim) * 0.1)
        self.gammax = nn.Parameter(torch.ones(in_dim))

    def forward(self, x, input_hw=None):
        identity = x
        x = self.norm(x) * self.gamma + x * self.gammax
        project1 = self.project1(x)
        b, n, c = project1.shape
        h, w = input_hw
        assert n == h * w, "Input height & width error"
        project1 = project1.reshape(b, h, w, c).permute(0, 3, 1, 2)
        identity_project = project1
        project1 = self.adapter_conv(project1) + identity_project
        project1 = project1.permute(0, 2, 3, 1).reshape(b, n, c)
        nonlinear = self.nonlinear(project1)
        nonlinear = self.dropout(nonlinear)
        project2 = self.project2(nonlinear)
        return identity + project2


def replace_norms_with_adjustable(module: nn.Module) -> None:
    """The code's ``_replace_recursive``: every nn.GroupNorm / nn.LayerNorm -> AdjustableNorm."""
    for name, child in module.named_children():
        if isinstance(child, (nn.GroupNorm, nn.LayerNorm)) and not isinstance(child, AdjustableNorm):
            setattr(module, name, AdjustableNorm(child))
        else:
            replace_norms_with_adjustable(child)


def insert_adapters(unet: nn.Module, adapters: dict[str, DAPEAdapter], sites=("attn1",)):
    """Put ``adapters[block_path]`` into the residual stream of each diffusers
    ``BasicTransformerBlock``: ``x = adapter(attn1(norm1(x)) + x)`` (and, with "ff" in ``sites``,
    ``x = adapter(ff(norm3(x)) + x)``), with forward hooks: the attention / FF output ``o`` becomes
    ``adapter(o + x) - x`` where ``x`` is the residual-stream input of that sub-layer (the input
    of ``norm1`` / ``norm3``). The token grid comes from the enclosing Transformer2DModel input."""
    grid = {}
    handles = []
    for path, adapter in adapters.items():
        block = unet.get_submodule(path)
        transformer = unet.get_submodule(path.rsplit(".transformer_blocks.", 1)[0])
        handles.append(transformer.register_forward_pre_hook(
            lambda m, args, kwargs, p=path: grid.__setitem__(p, tuple(args[0].shape[-2:]) if args
                                                           else tuple(kwargs["hidden_states"].shape[-2:])),
            with_kwargs=True))
        stream = {}
        for site, norm_name, layer_name in (("attn1", "norm1", "attn1"), ("ff", "norm3", "ff")):
            if site not in sites:
                continue
            norm = getattr(block, norm_name)
            handles.append(norm.register_forward_pre_hook(
                lambda m, args, s=site, st=stream: st.__setitem__(s, args[0])))
            handles.append(getattr(block, layer_name).register_forward_hook(
                lambda m, args, out, s=site, st=stream, a=adapter, p=path:
                a(out + st[s], input_hw=grid[p]) - st[s]))
    return handles
