"""Domain metrics for the bundled MNIST prior: a small CNN digit classifier trained in this project.

* ``DigitClassifier``: conv(1->16)-pool-conv(16->32)-pool-conv(32->64)-pool, fc 1024->128 (ReLU; the
  128-d *penultimate features*), fc 128->10. About 156k parameters (0.6 MB as float32).
  Input: (B, 1, 32, 32) in [0, 1] (the format of ``cmidps.data.load_mnist``; 3-channel images are
  averaged to gray).
* ``train_digit_classifier(out_path, steps, seed)``: trains it on ``cmidps.data.load_mnist("train")``
  (9,000 digits; never the 1,000 ``test`` digits) with random shifts of up to 2 px and random Gaussian
  pixel noise (so slightly noisy restorations are still read), Adam, and writes a safetensors file with
  the test-split accuracy in its metadata.
* ``digit_accuracy(restored, labels)``: fraction of restorations the shipped classifier reads as the
  digit of the ground truth.
* ``frechet_digit_distance(restored, truth)``: the Fréchet distance between Gaussians fitted to the
  classifier's 128-d penultimate features of the two sets. It is FID-*like* but it is **not FID** (different
  network, features and scale): report it as "FDD (digit-classifier features)", never as FID.

The shipped weights are ``cmidps/metrics/assets/digit_classifier.safetensors``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import MetricUnavailable, as_images, load_strict
from .fid import frechet_distance

__all__ = ["DigitClassifier", "train_digit_classifier", "load_digit_classifier", "digit_logits",
           "digit_features", "digit_accuracy", "frechet_digit_distance", "DEFAULT_CLASSIFIER_PATH"]

DEFAULT_CLASSIFIER_PATH = Path(__file__).resolve().parent / "assets" / "digit_classifier.safetensors"


class DigitClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        as_images(x, "digits")
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[1] != 1 or tuple(x.shape[-2:]) != (32, 32):
            raise ValueError(f"the digit classifier takes (B, 1, 32, 32) images, got {tuple(x.shape)}")
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """128-d penultimate features (after the ReLU of fc1)."""
        x = self.prepare(x).to(self.fc1.weight.dtype)
        x = 2.0 * x - 1.0
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    out = torch.empty_like(x)
    shifts = torch.randint(-2, 3, (b, 2), generator=g)
    for i in range(b):  # the 2 px zero border of the 32x32 digits makes rolling a true shift
        out[i] = torch.roll(x[i], (int(shifts[i, 0]), int(shifts[i, 1])), dims=(-2, -1))
    sigma = 0.15 * torch.rand(b, 1, 1, 1, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) < 0.5)
    return (out + sigma * torch.randn(out.shape, generator=g)).clamp(0, 1)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def train_digit_classifier(out_path=DEFAULT_CLASSIFIER_PATH, steps: int = 1500, seed: int = 0,
                           batch_size: int = 128, lr: float = 2e-3, data_root=None, log_every: int = 250) -> dict:
    """Train the classifier on the MNIST ``train`` split, evaluate on the ``test`` split, save to
    ``out_path`` (safetensors, with ``test_accuracy``/``steps``/``seed`` in the metadata). Returns the
    metadata. Deterministic for a given seed (CPU)."""
    from safetensors.torch import save_file
    from cmidps.data import load_mnist

    x, y = load_mnist("train", root=data_root)
    xt, yt = load_mnist("test", root=data_root)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    n = len(x)
    perm = torch.randperm(n, generator=g)
    pos = 0
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        model.train()
        loss = F.cross_entropy(model(_augment(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    acc = _accuracy(model, xt, yt)
    meta = {"test_accuracy": f"{acc:.4f}", "test_split": "cmidps.data.load_mnist('test') (1000 digits)",
            "train_split": "cmidps.data.load_mnist('train') (9000 digits)", "steps": str(steps),
            "seed": str(seed), "batch_size": str(batch_size), "train_seconds": f"{time.time() - t0:.1f}",
            "architecture": "cmidps.metrics.digits.DigitClassifier"}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_path), metadata=meta)
    return meta


_CACHE: dict = {}


def load_digit_classifier(path=None, device=None) -> DigitClassifier:
    """The classifier from ``path`` (default: the shipped weights); cached per path and device."""
    from safetensors.torch import load_file

    p = Path(path) if path is not None else DEFAULT_CLASSIFIER_PATH
    key = (str(p), str(device))
    if key not in _CACHE:
        if not p.is_file():
            raise MetricUnavailable(
                f"digit classifier weights not found: {p}. They ship with cmidps; rebuild them with "
                f"cmidps.metrics.digits.train_digit_classifier('{p}') (needs the MNIST data, "
                f"scripts/get_mnist.sh).")
        m = DigitClassifier()
        load_strict(m, load_file(str(p)), f"digit classifier {p}")
        m.eval()
        for q in m.parameters():
            q.requires_grad_(False)
        _CACHE[key] = m.to(device)
    return _CACHE[key]


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)], 0)


def digit_logits(images: torch.Tensor, classifier_path=None) -> torch.Tensor:
    m = load_digit_classifier(classifier_path, images.device)
    return _batched(m, images)


def digit_features(images: torch.Tensor, classifier_path=None) -> torch.Tensor:
    """(N, 128) penultimate features of the digit classifier."""
    m = load_digit_classifier(classifier_path, images.device)
    return _batched(m.features, images)


def digit_correct(restored: torch.Tensor, labels: torch.Tensor, classifier_path=None) -> torch.Tensor:
    """Per image: 1.0 where the classifier reads the restoration as ``labels``, else 0.0. (B,)"""
    labels = torch.as_tensor(labels, device=restored.device).long().reshape(-1)
    if labels.numel() != restored.shape[0]:
        raise ValueError(f"{restored.shape[0]} images but {labels.numel()} labels")
    return (digit_logits(restored, classifier_path).argmax(1) == labels).to(torch.float32)


def digit_accuracy(restored: torch.Tensor, labels: torch.Tensor, classifier_path=None) -> float:
    """Fraction of restorations classified as their true digit."""
    return float(digit_correct(restored, labels, classifier_path).mean())


def frechet_digit_distance(restored: torch.Tensor, truth: torch.Tensor, classifier_path=None) -> float:
    """Fréchet distance of the digit classifier's penultimate features (a domain feature distance,
    "FDD"; not FID). Needs at least 2 images per set; with fewer images than 128 the covariances are
    rank-deficient and the value is strongly biased upwards: compare only numbers computed on equal
    set sizes."""
    return frechet_distance(digit_features(restored, classifier_path), digit_features(truth, classifier_path))
