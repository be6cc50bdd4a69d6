"""The ADM / guided-diffusion UNet (Dhariwal & Nichol 2021), written for this project.

The module layout and parameter names follow OpenAI's ``guided_diffusion/unet.py`` and
``guided_diffusion/script_util.py`` (https://github.com/openai/guided-diffusion) so that the
public checkpoints (DPS ``ffhq_10m.pt``, ADM ``256x256_diffusion_uncond.pt``) load with a strict
``load_state_dict``: ``time_embed.{0,2}``, ``input_blocks.<i>.<j>``, ``middle_block.{0,1,2}``,
``output_blocks.<i>.<j>``, ``out.{0,2}``; inside a residual block ``in_layers.{0,2}``,
``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection``; inside an attention block ``norm``,
``qkv`` (a 1x1 ``Conv1d``) and ``proj_out``.

Differences from the reference code (none changes a key, a shape or a float32 result):

* attention is computed with plain ``matmul`` + ``softmax`` so that second derivatives exist on
  every backend (the CMI step differentiates through the network twice);
* no gradient checkpointing;
* convolutions are :class:`Conv2d` / :class:`Conv1d`, subclasses of torch's with the same keys and
  forward, whose backward with frozen weights is a transposed convolution (a cheaper double
  backward for the CMI term);
* group norms fall back to ``gcd(32, channels)`` groups for widths not divisible by 32 (tiny
  models), and compute in float32 *or wider*, so float64 models stay float64;
* ``in_channels`` is a parameter of :func:`create_model` (1-channel MNIST models), and
  ``learn_sigma`` doubles it for the output.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UNetModel",
    "create_model",
    "model_kwargs",
    "FFHQ_256",
    "IMAGENET_256_UNCOND",
    "timestep_embedding",
]


# --- building blocks ------------------------------------------------------------------------------
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


# --- the network ----------------------------------------------------------------------------------
class UNetModel(nn.Module):
    """The ADM UNet with timestep embedding and attention (guided-diffusion's ``UNetModel``, 2-D).

    ``attention_resolutions`` holds *downsampling rates* (``image_size // res``), as in the
    reference; :func:`create_model` converts from resolutions. ``forward(x, timesteps, y=None)``
    returns ``(B, out_channels, H, W)``; ``H, W`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Iterable[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_classes: int | None = None, use_fp16: bool = False, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        attention_resolutions = tuple(attention_resolutions)
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.use_fp16 = use_fp16

        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, dropout, out_channels=ch_out,
                            use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, num_heads=heads, num_head_channels=num_head_channels,
                                  use_new_attention_order=use_new_attention_order)

        # Encoder: a stem conv, then per level num_res_blocks blocks (+attention) and a downsampler.
        ch = input_ch = int(self.channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(self.channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        # Decoder: per level num_res_blocks + 1 blocks on [h, skip] (+attention), then an upsampler.
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = skip_chans.pop()
                layers = [res(ch + skip, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(Conv2d(input_ch, out_channels, 3, padding=1))
        )
        if use_fp16:
            self.convert_to_fp16()

    @property
    def torso_dtype(self) -> torch.dtype:
        """The dtype the blocks compute in (that of the stem convolution's weight)."""
        return self.input_blocks[0][0].weight.dtype

    def convert_to_fp16(self) -> None:
        """Cast the convolutions and linear layers of the torso to float16 (norms stay float32), as
        guided-diffusion's ``convert_to_fp16``. Call after loading an fp32 state dict."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                    m.half()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, in_channels, H, W), ``timesteps`` (B,) training-step indices (or a scalar),
        ``y`` (B,) class labels iff the model is class-conditional."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass y (class labels) if and only if the model is class-conditional")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb_dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(emb_dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x.to(self.torso_dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


# --- guided-diffusion's create_model --------------------------------------------------------------
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),  # improved-diffusion's CIFAR-10 setting
}


def _parse_ints(spec, name: str) -> tuple:
    if isinstance(spec, str):
        return tuple(float(s) if "." in s else int(s) for s in spec.replace(" ", "").split(",") if s)
    if isinstance(spec, (int, float)):
        return (spec,)
    try:
        return tuple(spec)
    except TypeError:
        raise TypeError(f"{name} must be a comma-separated string or a sequence, got {spec!r}") from None


def create_model(image_size: int, num_channels: int, num_res_blocks: int, channel_mult="",
                 learn_sigma: bool = False, class_cond: bool = False, attention_resolutions="16",
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, dropout: float = 0.0, resblock_updown: bool = False,
                 use_fp16: bool = False, use_new_attention_order: bool = False, in_channels: int = 3,
                 num_classes: int = 1000) -> UNetModel:
    """Build a :class:`UNetModel` with guided-diffusion's ``script_util.create_model`` semantics.

    ``channel_mult``: ``""`` picks the default for ``image_size`` (512, 256, 128, 64, 32), else a
    comma string ``"1,2,2"`` or a sequence. ``attention_resolutions``: feature-map *resolutions*
    (``"32,16,8"`` or a sequence of ints) converted to downsampling rates ``image_size // res``.
    Output channels: ``in_channels``, doubled with ``learn_sigma`` (epsilon, then the variance ``v``).
    """
    if channel_mult in ("", None):
        if image_size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {image_size}; pass channel_mult "
                             f"(defaults exist for {sorted(_DEFAULT_CHANNEL_MULT)})")
        channel_mult = _DEFAULT_CHANNEL_MULT[image_size]
    else:
        channel_mult = _parse_ints(channel_mult, "channel_mult")
    attention_ds = tuple(image_size // int(r) for r in _parse_ints(attention_resolutions, "attention_resolutions"))
    return UNetModel(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=in_channels * (2 if learn_sigma else 1),
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_ds,
        dropout=dropout,
        channel_mult=channel_mult,
        num_classes=num_classes if class_cond else None,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


# --- the two public configurations (kwargs for create_model) ----------------------------------------
FFHQ_256 = dict(
    # DPS (Chung et al. 2023) ffhq_10m.pt, configs/model_config.yaml of DPS2022/diffusion-posterior-sampling
    image_size=256, num_channels=128, num_res_blocks=1, channel_mult="1,1,2,2,4,4", learn_sigma=True,
    class_cond=False, attention_resolutions="16", num_heads=4, num_head_channels=64, num_heads_upsample=-1,
    use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False,
    use_new_attention_order=False,
)
IMAGENET_256_UNCOND = dict(
    # ADM 256x256_diffusion_uncond.pt (openai/guided-diffusion README, "256x256 model (unconditional)")
    image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True,
    class_cond=False, attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
    num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False,
    use_new_attention_order=False,
)


def model_kwargs(config) -> dict:
    """The ``create_model`` kwargs of a named configuration (``"ffhq"``, ``"imagenet"``) or a dict."""
    if isinstance(config, dict):
        return dict(config)
    named = {"ffhq": FFHQ_256, "ffhq_256": FFHQ_256, "imagenet": IMAGENET_256_UNCOND,
             "imagenet_256_uncond": IMAGENET_256_UNCOND}
    key = str(config).lower()
    if key not in named:
        raise ValueError(f"unknown model config {config!r}: use 'ffhq', 'imagenet' or a dict of create_model kwargs")
    return dict(named[key])
