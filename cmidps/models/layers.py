"""The building blocks of the ADM UNet (:mod:`cmidps.models.unet`): timestep embedding, the
frozen-weight convolutions, group norm, up/down-sampling, the residual block and the attention block.
Parameter names follow guided-diffusion's ``unet.py`` (see :mod:`cmidps.models.unet` for the differences)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period^(-k/half)`` (as in
    guided-diffusion's ``nn.timestep_embedding``). Returns ``(B, dim)`` float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.reshape(-1).float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32 (guided-diffusion's ``normalization``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)
        return super().forward(x.to(wide)).to(x.dtype)


class _FrozenConv:
    """A convolution whose derivatives skip what frozen weights do not need (mixed into
    :class:`Conv2d` and :class:`Conv1d`; the forward is the module's own convolution, bit-identical).

    With weights that do not require grad (sampling), the backward is one transposed convolution
    written with differentiable ops (:class:`_FrozenConvFn`). A double backward (the CMI term) then
    costs two convolutions per layer; torch's own runs three, one of them weight-gradient-shaped
    although the weights are frozen (12-23% of a CMI step, issue 11). Gradients are the same to
    rounding (``tests/test_cmi.py``). Trainable weights, no-grad mode and non-zero padding modes take
    torch's own path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or not torch.is_grad_enabled() or self.padding_mode != "zeros" \
                or isinstance(self.padding, str):
            return super().forward(x)
        return _FrozenConvFn.apply(x, self)


class _FrozenConvFn(torch.autograd.Function):
    """``conv(x, W) + b`` with constant ``W, b``; backward ``conv_transpose(g, W)`` (differentiable, so
    a double backward is one more convolution)."""

    @staticmethod
    def forward(ctx, x, conv):
        ctx.conv, ctx.in_shape = conv, x.shape
        return conv._conv_forward(x, conv.weight, conv.bias)

    @staticmethod
    def backward(ctx, grad):
        return _conv_input_grad(ctx.conv, grad, ctx.in_shape), None


def _conv_input_grad(conv, grad: torch.Tensor, in_shape) -> torch.Tensor:
    """The input gradient of ``conv`` as a transposed convolution (output padding restores the size
    that a strided convolution rounds away)."""
    n = grad.ndim - 2
    out_pad = tuple(
        in_shape[2 + i] - ((grad.shape[2 + i] - 1) * conv.stride[i] - 2 * conv.padding[i]
                           + conv.dilation[i] * (conv.kernel_size[i] - 1) + 1) for i in range(n))
    transpose = F.conv_transpose2d if n == 2 else F.conv_transpose1d
    weight = conv.weight.to(grad.dtype)  # under autocast the backward sees a low-precision grad
    return transpose(grad, weight, None, conv.stride, conv.padding, out_pad, conv.groups, conv.dilation)


class Conv2d(_FrozenConv, nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) with frozen-weight derivatives (:class:`_FrozenConv`)."""


class Conv1d(_FrozenConv, nn.Conv1d):
    """``nn.Conv1d`` (same parameters and keys) with frozen-weight derivatives (:class:`_FrozenConv`)."""


def normalization(channels: int) -> GroupNorm32:
    groups = 32 if channels % 32 == 0 else math.gcd(32, channels)
    return GroupNorm32(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (the last conv of each residual branch, as in ADM)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def redraw_zero_layers(net: nn.Module, seed: int = 0, draw_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Undo :func:`zero_module` with random values, for networks that are not trained: re-draw every layer
    whose weight is all zero (ADM zero-initialises the output convolution, the last convolution of every
    residual branch and the attention projections), weight and bias uniform in +-1/sqrt(fan_in) (torch's
    default convolution range), drawn in ``draw_dtype`` from a generator seeded with ``seed`` and cast to
    the parameter's dtype; so that the network, its Jacobian and its Hessian are not trivial. Returns ``net``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            w = getattr(module, "weight", None)
            if not isinstance(w, nn.Parameter) or w.ndim < 2 or bool(w.any()):
                continue
            bound = 1.0 / w[0].numel() ** 0.5
            w.copy_((torch.rand(w.shape, generator=g, dtype=draw_dtype) * 2 - 1).to(w.dtype) * bound)
            b = getattr(module, "bias", None)
            if isinstance(b, nn.Parameter):
                b.copy_((torch.rand(b.shape, generator=g, dtype=draw_dtype) * 2 - 1).to(b.dtype) * bound)
    return net


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """``nn.Sequential`` that hands the embedding to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: a strided 3x3 conv or average pooling (key ``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling (``up``/``down``).

    With ``use_scale_shift_norm`` the embedding gives a FiLM scale and shift applied after the
    second norm, ``norm(h) * (1 + scale) + shift``; otherwise it is added before it.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, up: bool = False,
                 down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: torch.Tensor, n_heads: int, legacy: bool = True) -> torch.Tensor:
    """Multi-head self-attention on a ``(B, 3 * H * C, T)`` tensor, returning ``(B, H * C, T)``.

    ``legacy=True`` is guided-diffusion's ``QKVAttentionLegacy`` channel layout (split heads, then
    q/k/v within each head), used by all public checkpoints; ``legacy=False`` is its
    ``QKVAttention`` (split q/k/v first, then heads). Plain matmul + softmax: twice differentiable.
    """
    bs, width, length = qkv.shape
    if width % (3 * n_heads):
        raise ValueError(f"qkv width {width} is not divisible by 3 * {n_heads} heads")
    ch = width // (3 * n_heads)
    if legacy:
        q, k, v = qkv.reshape(bs * n_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (a.reshape(bs * n_heads, ch, length) for a in qkv.chunk(3, dim=1))
    scale = ch ** -0.25  # applied to q and k separately, as in the reference (stabler in fp16)
    weight = torch.matmul((q * scale).transpose(1, 2), k * scale)  # (BH, T_query, T_key)
    wide = torch.promote_types(weight.dtype, torch.float32)
    weight = torch.softmax(weight.to(wide), dim=-1).to(weight.dtype)
    out = torch.matmul(v, weight.transpose(1, 2))  # (BH, C, T_query)
    return out.reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (keys ``norm``, ``qkv``, ``proj_out``).

    ``num_head_channels != -1`` fixes the width per head (heads = channels // num_head_channels);
    otherwise ``num_heads`` heads are used.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.legacy_order = not use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, legacy=self.legacy_order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)
