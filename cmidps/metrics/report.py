"""Metric front-end: compute several metrics at once and say, for every metric asked for, either its
value or why it was skipped (never a silent skip).

``compute_metrics(restored, truth, names=("psnr", "ssim", "lpips"), ...)`` -> per-image values::

    {"values": {"psnr": tensor (B,), "ssim": tensor (B,), ...},
     "skipped": {"lpips": "LPIPS-alex backbone: weights file not found: set CMIDPS_LPIPS_BACKBONE=..."}}

``dataset_metrics(restored_all, truth_all, names=("fid", "kid"), ...)`` -> set-level values (floats)::

    {"values": {"fid": 12.3, "kid": 0.004, "kid_std": 0.001, "psnr": 27.1, ...},
     "skipped": {"fid": "FID/KID InceptionV3: weights file not found: ..."},
     "n_images": 1000}

Per-image names (dataset_metrics reports their mean over all images):
  ``psnr``, ``ssim``, ``lpips`` (= ``lpips_alex``), ``lpips_vgg``, ``digit_correct`` (needs ``labels``;
  its mean is the digit accuracy).
Set-level names: ``fid``, ``kid`` (adds ``kid_std``), ``fdd`` (Fréchet digit-classifier distance, not FID),
  ``digit_accuracy`` (needs ``labels``).

A metric is skipped (with the reason) when it raises ``MetricUnavailable``: a weight file is missing, or
too few images for a set statistic. Wrong inputs (shapes, unknown names) raise. ``strict=True`` raises
instead of skipping.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ._common import MetricUnavailable
from .pixel import psnr, ssim

__all__ = ["compute_metrics", "dataset_metrics", "PER_IMAGE_METRICS", "SET_METRICS"]

PER_IMAGE_METRICS = ("psnr", "ssim", "lpips", "lpips_alex", "lpips_vgg", "digit_correct")
SET_METRICS = ("fid", "kid", "fdd", "digit_accuracy")


def _per_image(name: str, x: torch.Tensor, ref: torch.Tensor, labels, opts: dict) -> torch.Tensor:
    if name == "psnr":
        return psnr(x, ref, data_range=opts.get("data_range", 1.0))
    if name == "ssim":
        return ssim(x, ref, data_range=opts.get("data_range", 1.0))
    if name in ("lpips", "lpips_alex", "lpips_vgg"):
        from .lpips import lpips
        net = {"lpips_alex": "alex", "lpips_vgg": "vgg"}.get(name, opts.get("lpips_net", "alex"))
        with torch.no_grad():
            return lpips(x, ref, net=net, backbone_path=opts.get("lpips_backbone_path"),
                         lpips_path=opts.get("lpips_path"))
    if name == "digit_correct":
        if labels is None:
            raise MetricUnavailable("digit_correct needs the digit labels (labels=...)")
        from .digits import digit_correct
        return digit_correct(x, labels, opts.get("classifier_path"))
    raise ValueError(f"unknown per-image metric {name!r}; known: {PER_IMAGE_METRICS}")


def _check(restored: torch.Tensor, truth: torch.Tensor) -> None:
    if not (torch.is_tensor(restored) and torch.is_tensor(truth)):
        raise ValueError("restored and truth must be tensors")
    if restored.shape != truth.shape:
        raise ValueError(f"restored and truth shapes differ: {tuple(restored.shape)} vs {tuple(truth.shape)}")


def compute_metrics(restored: torch.Tensor, truth: torch.Tensor, names: Sequence[str] = ("psnr", "ssim", "lpips"),
                    *, labels=None, strict: bool = False, **opts) -> dict:
    """Per-image metrics of (B, C, H, W) restorations in [0, 1] against the ground truth.

    Options: ``data_range`` (1.0), ``lpips_net`` ("alex"), ``lpips_backbone_path``, ``lpips_path``,
    ``classifier_path``. Returns ``{"values": {name: (B,) tensor}, "skipped": {name: reason}}``.
    """
    _check(restored, truth)
    values, skipped = {}, {}
    for name in names:
        if name not in PER_IMAGE_METRICS:
            raise ValueError(f"unknown per-image metric {name!r}; known: {PER_IMAGE_METRICS}"
                             + (" (set-level: use dataset_metrics)" if name in SET_METRICS else ""))
        try:
            values[name] = _per_image(name, restored, truth, labels, opts).detach()
        except MetricUnavailable as e:
            if strict:
                raise
            skipped[name] = str(e)
    return {"values": values, "skipped": skipped}


def _batches(data, batch_size: int) -> Iterable[torch.Tensor]:
    if torch.is_tensor(data):
        for i in range(0, data.shape[0], batch_size):
            yield data[i:i + batch_size]
    else:
        for b in data:
            yield b


def dataset_metrics(restored_all, truth_all, names: Sequence[str] = ("fid", "kid"), *, labels=None,
                    batch_size: int = 50, strict: bool = False, inception_path=None, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 0, **opts) -> dict:
    """Set-level metrics of all restorations against all ground-truth images.

    ``restored_all`` / ``truth_all``: (N, C, H, W) tensors in [0, 1], or iterables of such batches (paired
    batch by batch for per-image metrics). FID/KID use ``inception_path`` / ``$CMIDPS_INCEPTION_WEIGHTS``.
    KID: ``kid_subsets`` subsets of ``min(kid_subset_size, N)`` images. Returns
    ``{"values": {...}, "skipped": {...}, "n_images": N}``; per-image names give their mean.
    """
    for name in names:
        if name not in PER_IMAGE_METRICS and name not in SET_METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {PER_IMAGE_METRICS + SET_METRICS}")
    skipped: dict[str, str] = {}
    values: dict[str, float] = {}
    per_names = [n for n in names if n in PER_IMAGE_METRICS]
    want_incep = [n for n in names if n in ("fid", "kid")]
    want_digit = [n for n in names if n in ("fdd", "digit_accuracy")]
    if "digit_accuracy" in want_digit and labels is None:
        if strict:
            raise MetricUnavailable("digit_accuracy needs the digit labels (labels=...)")
        skipped["digit_accuracy"] = "digit_accuracy needs the digit labels (labels=...)"
        want_digit.remove("digit_accuracy")

    incep = None  # loaded at the first batch
    digit_model = None

    per_vals: dict[str, list] = {n: [] for n in per_names}
    feats = {"incep_r": [], "incep_t": [], "dig_r": [], "dig_t": []}
    correct: list = []
    n_images = 0
    offset = 0
    labels_t = None if labels is None else torch.as_tensor(labels).long().reshape(-1)

    def fail(metric_names, err):
        if strict:
            raise err
        for m in metric_names:
            skipped.setdefault(m, str(err))

    for xr, xt in zip(_batches(restored_all, batch_size), _batches(truth_all, batch_size)):
        _check(xr, xt)
        b = xr.shape[0]
        lab = None if labels_t is None else labels_t[offset:offset + b]
        offset += b
        n_images += b
        if per_names:
            r = compute_metrics(xr, xt, [n for n in per_names if n not in skipped], labels=lab, strict=strict, **opts)
            for n, v in r["values"].items():
                per_vals[n].append(v.cpu())
            for n, why in r["skipped"].items():
                skipped.setdefault(n, why)
        if want_incep and not all(m in skipped for m in want_incep):
            try:
                if incep is None:
                    from .inception import get_inception
                    incep = get_inception(inception_path, xr.device)
                with torch.no_grad():
                    feats["incep_r"].append(incep(xr).cpu())
                    feats["incep_t"].append(incep(xt).cpu())
            except MetricUnavailable as e:
                fail(want_incep, e)
        if want_digit and not all(m in skipped for m in want_digit):
            try:
                from .digits import load_digit_classifier
                digit_model = digit_model or load_digit_classifier(opts.get("classifier_path"), xr.device)
                with torch.no_grad():
                    fr = digit_model.features(xr)
                    if "fdd" in want_digit:
                        feats["dig_r"].append(fr.cpu())
                        feats["dig_t"].append(digit_model.features(xt).cpu())
                    if "digit_accuracy" in want_digit:
                        correct.append((digit_model.fc2(fr).argmax(1).cpu() == lab).float())
            except MetricUnavailable as e:
                fail(want_digit, e)

    if labels_t is not None and labels_t.numel() != n_images:
        raise ValueError(f"{n_images} images but {labels_t.numel()} labels")

    for n in per_names:
        if n not in skipped and per_vals[n]:
            values[n] = float(torch.cat(per_vals[n]).double().mean())
    from .fid import frechet_distance, kernel_inception_distance
    if "fid" in want_incep and "fid" not in skipped:
        try:
            values["fid"] = frechet_distance(torch.cat(feats["incep_r"]), torch.cat(feats["incep_t"]))
        except MetricUnavailable as e:
            fail(["fid"], e)
    if "kid" in want_incep and "kid" not in skipped:
        try:
            m, s = kernel_inception_distance(torch.cat(feats["incep_r"]), torch.cat(feats["incep_t"]),
                                             subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
            values["kid"], values["kid_std"] = m, s
        except MetricUnavailable as e:
            fail(["kid"], e)
    if "fdd" in want_digit and "fdd" not in skipped:
        try:
            values["fdd"] = frechet_distance(torch.cat(feats["dig_r"]), torch.cat(feats["dig_t"]))
        except MetricUnavailable as e:
            fail(["fdd"], e)
    if "digit_accuracy" in want_digit and "digit_accuracy" not in skipped:
        values["digit_accuracy"] = float(torch.cat(correct).mean())
    return {"values": values, "skipped": skipped, "n_images": n_images}
