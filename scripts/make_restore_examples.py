"""Write the measurement files of docs/restore_your_own.md into docs/examples/ with numpy and PIL only
(not with cmidps's measure()), from one held-out digit: the files a user would bring.

    python scripts/make_restore_examples.py      # rewrites docs/examples/
"""
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "examples"
DIGIT = ROOT / "cmidps" / "assets" / "mnist32" / "heldout" / "digit2_891.png"
SIGMA01 = 0.02  # noise std in [0, 1] image units = 0.04 in the model's [-1, 1] range (--sigma-y 0.04)


def png(arr01, name):
    Image.fromarray(np.round(np.clip(arr01, 0, 1) * 255).astype(np.uint8), "L").save(OUT / name)


def convolve_wrap(img, k):
    """Circular convolution with k (its centre pixel = the origin), by FFT: the small preset's blur."""
    H, W = img.shape
    pad = np.zeros((H, W))
    pad[:k.shape[0], :k.shape[1]] = k
    pad = np.roll(pad, (-(k.shape[0] // 2), -(k.shape[1] // 2)), axis=(0, 1))
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.fft.fft2(pad)))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(18)
    x = np.asarray(Image.open(DIGIT).convert("L"), dtype=np.float64) / 255
    png(x, "truth.png")
    noise = lambda shape: SIGMA01 * rng.standard_normal(shape)  # noqa: E731
    # Gaussian blur, std 1.5 px, 9x9, saved as .npy (float)
    t = np.arange(9) - 4
    g = np.exp(-0.5 * (t / 1.5) ** 2)
    k = np.outer(g, g) / np.outer(g, g).sum()
    np.save(OUT / "gauss_kernel.npy", k)
    png(convolve_wrap(x, k) + noise(x.shape), "blurred.png")
    # motion blur: a diagonal streak, saved as a greyscale PNG (normalised to sum 1 when read)
    m = np.zeros((9, 9))
    for i in range(9):
        m[i, min(8, max(0, int(round(i * 0.6 + 1.6))))] = 1.0
    m /= m.sum()
    Image.fromarray(np.round(m / m.max() * 255).astype(np.uint8), "L").save(OUT / "motion_kernel.png")
    m_png = np.asarray(Image.open(OUT / "motion_kernel.png"), dtype=np.float64)
    png(convolve_wrap(x, m_png / m_png.sum()) + noise(x.shape), "motion_blurred.png")
    # random holes: 80% of the pixels missing (their values in the file do not matter)
    keep = rng.random(x.shape) >= 0.8
    Image.fromarray((keep * 255).astype(np.uint8), "L").save(OUT / "holes_mask.png")
    png(np.where(keep, x + noise(x.shape), 0.0), "holes.png")
    # a box: a 14x14 square missing
    box = np.ones_like(x, dtype=bool)
    box[8:22, 10:24] = False
    Image.fromarray((box * 255).astype(np.uint8), "L").save(OUT / "box_mask.png")
    png(np.where(box, x + noise(x.shape), 0.0), "box.png")
    # low resolution: 8x8 (a quarter of 32 on each side), PIL's antialiased bicubic reduction
    small = np.asarray(Image.fromarray(x).resize((8, 8), Image.BICUBIC), dtype=np.float64)
    png(small + noise(small.shape), "lowres.png")
    print(f"wrote {', '.join(sorted(p.name for p in OUT.iterdir()))} in {OUT}")


if __name__ == "__main__":
    main()
