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

from typing import Iterable, Sequence

import torch
from torch import nn

from .layers import (AttentionBlock, Conv1d, Conv2d, Downsample, ResBlock, TimestepEmbedSequential,  # noqa: F401
                     Upsample, normalization, timestep_embedding, zero_module)

__all__ = [
    "UNetModel",
    "create_model",
    "model_kwargs",
    "FFHQ_256",
    "IMAGENET_256_UNCOND",
    "timestep_embedding",
]


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
