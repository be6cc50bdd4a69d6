"""The figures of a trained model (the model card): the loss curve, unconditional samples.

:func:`plot_loss_curve` draws ``loss.csv`` (PIL only); :func:`sample_unconditional` is a plain
ancestral DDPM sampler; :func:`save_image_grid` writes samples as one PNG; :func:`make_figures` makes
both figures of a training output folder.
"""
from __future__ import annotations

import math
from pathlib import Path

import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
import torch

from ..commands.outputs import save_pil
from ..diffusion import x0_from_eps
from ..prior import from_model
from .files import load_trained_prior, read_loss_csv


@torch.no_grad()
def sample_unconditional(prior, n: int, steps: int = 250, generator: torch.Generator | None = None,
                         batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020) on ``steps`` respaced steps, "small" posterior variance,
    x0_hat clipped to [-1, 1] when ``prior.clip_x0``. Returns ``n`` images in [0, 1] (``from_model``)."""
    sched = prior.schedule.respace(steps)
    batch_size = batch_size or n
    outs = []
    for s in range(0, n, batch_size):
        b = min(batch_size, n - s)
        x = torch.randn((b, *prior.shape), generator=generator)
        it = sched.reverse()
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(sched), desc="sampling", leave=False)
        for c in it:
            eps, _ = prior.eps(x, c.t)
            x0 = x0_from_eps(x, eps, c)
            if prior.clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            mean = c.coef_x0 * x0 + c.coef_xt * x
            if c.i > 0:
                x = mean + math.sqrt(c.posterior_var) * torch.randn(x.shape, generator=generator)
            else:
                x = mean
        outs.append(from_model(x))
    return torch.cat(outs)


def save_image_grid(images01: torch.Tensor, path, nrow: int = 8, pad: int = 2, scale: int = 2) -> None:
    """Save (N, 1, H, W) images in [0, 1] as one grayscale PNG grid."""
    from PIL import Image

    n, _, h, w = images01.shape
    ncol = nrow
    nrows = math.ceil(n / ncol)
    grid = torch.ones(nrows * (h + pad) + pad, ncol * (w + pad) + pad) * 0.5
    for k in range(n):
        r, c = divmod(k, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images01[k, 0]
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    im = Image.fromarray(arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    save_pil(im, path)  # atomic, folder created


def plot_loss_curve(csv_path, png_path, title: str = "cmidps mnist32: DDPM eps-MSE loss", smooth: int | None = None) -> None:
    """A log-y line plot of the training loss (raw, light; geometric moving average over ``smooth`` rows,
    dark; default 1/40 of the rows) and the held-out and train-eval losses (markers), drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    rows = read_loss_csv(csv_path)
    steps = [int(r["step"]) for r in rows]
    train = [float(r["train_loss"]) for r in rows]
    ho = [(int(r["step"]), float(r["heldout_loss"])) for r in rows if r.get("heldout_loss")]
    te = [(int(r["step"]), float(r["train_eval_loss"])) for r in rows if r.get("train_eval_loss")]
    smooth = smooth or max(1, round(len(rows) / 40))
    sm = []
    for k in range(len(train)):
        win = train[max(0, k - smooth + 1): k + 1]
        sm.append(math.exp(sum(math.log(max(v, 1e-12)) for v in win) / len(win)))

    W, H = 900, 560
    L, R, T, B = 80, 30, 50, 60
    im = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    vals = train + [v for _, v in ho] + [v for _, v in te]
    lo = 10 ** math.floor(math.log10(max(min(vals), 1e-6)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    xmax = max(steps) if steps else 1

    def px(s, v):
        x = L + (W - L - R) * s / xmax
        y = T + (H - T - B) * (math.log10(hi) - math.log10(max(v, lo))) / (math.log10(hi) - math.log10(lo))
        return x, y

    # grid and ticks
    dec = lo
    while dec <= hi * 1.0001:
        for m in range(1, 10):
            v = dec * m
            if v > hi * 1.0001:
                break
            _, y = px(0, v)
            dr.line([(L, y), (W - R, y)], fill=(225, 225, 225) if m > 1 else (180, 180, 180))
            if m == 1 or (m in (2, 5)):
                dr.text((L - 8, y), f"{v:g}", fill="black", font=font, anchor="rm")
        dec *= 10
    nt = 5
    for k in range(nt + 1):
        s = round(xmax * k / nt)
        x, _ = px(s, lo)
        dr.line([(x, T), (x, H - B)], fill=(235, 235, 235))
        dr.text((x, H - B + 8), str(s), fill="black", font=font, anchor="mt")
    dr.rectangle([L, T, W - R, H - B], outline="black")
    # curves
    if len(steps) > 1:
        dr.line([px(s, v) for s, v in zip(steps, train)], fill=(170, 200, 240), width=1)
        dr.line([px(s, v) for s, v in zip(steps, sm)], fill=(20, 70, 180), width=2)
    for pts, col in ((te, (0, 150, 0)), (ho, (210, 40, 40))):
        if len(pts) > 1:
            dr.line([px(s, v) for s, v in pts], fill=col, width=2)
        for s, v in pts:
            x, y = px(s, v)
            dr.ellipse([x - 4, y - 4, x + 4, y + 4], fill=col)
    dr.text((W / 2, 18), title, fill="black", font=font, anchor="mm")
    dr.text((W / 2, H - 20), "training step", fill="black", font=font, anchor="mm")
    dr.text((12, T - 18), "loss (log scale)", fill="black", font=font, anchor="lm")
    every = steps[1] - steps[0] if len(steps) > 1 else 1
    lx, ly = W - R - 420, T + 12
    for label, col in ((f"train minibatch loss (per {every} steps; dark: {smooth * every}-step moving avg)", (20, 70, 180)),
                       ("train-split eval loss (EMA weights, fixed t and noise)", (0, 150, 0)),
                       ("held-out test-split loss (EMA weights, fixed t and noise)", (210, 40, 40))):
        dr.line([(lx, ly), (lx + 20, ly)], fill=col, width=3)
        dr.text((lx + 26, ly), label, fill="black", font=font, anchor="lm")
        ly += 18
    save_pil(im, png_path)  # atomic, folder created


def make_figures(model_dir, img_dir, prefix: str = "mnist32", n: int = 64, steps: int = 250, seed: int = 0,
                 batch_size: int = 64) -> None:
    """The model-card figures: ``{prefix}_loss.png`` (from ``loss.csv``) and ``{prefix}_samples.png``
    (``n`` unconditional ancestral DDPM samples on ``steps`` respaced steps, seeded)."""
    img_dir = Path(img_dir)
    plot_loss_curve(Path(model_dir) / "loss.csv", img_dir / f"{prefix}_loss.png")
    prior = load_trained_prior(model_dir)
    x = sample_unconditional(prior, n, steps, torch.Generator().manual_seed(seed), batch_size=batch_size,
                             progress=True)
    save_image_grid(x, img_dir / f"{prefix}_samples.png", nrow=8)
