"""Evaluation metrics of cmidps: PSNR, SSIM, LPIPS, FID/KID, and domain metrics for the MNIST prior.

Everything works offline. Metrics that need pretrained weights (LPIPS backbones and heads, the FID
Inception) look for local files and raise ``MetricUnavailable`` with instructions when they are absent;
``compute_metrics`` / ``dataset_metrics`` report such metrics under ``"skipped"`` with the reason.
See ``docs/metrics.md``.

Environment variables: ``CMIDPS_LPIPS_BACKBONE``, ``CMIDPS_LPIPS_WEIGHTS``, ``CMIDPS_INCEPTION_WEIGHTS``
(each a file, or a folder holding the file under its usual name).
"""
from ._common import MetricUnavailable
from .digits import (DigitClassifier, digit_accuracy, digit_features, frechet_digit_distance,
                     load_digit_classifier, train_digit_classifier)
from .fid import (feature_stats, frechet_distance, frechet_distance_from_stats, kernel_inception_distance,
                  mmd2_unbiased)
from .inception import InceptionV3Features
from .lpips import LPIPS, lpips
from .pixel import psnr, ssim
from .report import compute_metrics, dataset_metrics

__all__ = [
    "MetricUnavailable", "psnr", "ssim", "LPIPS", "lpips", "InceptionV3Features", "feature_stats",
    "frechet_distance", "frechet_distance_from_stats", "mmd2_unbiased", "kernel_inception_distance",
    "DigitClassifier", "train_digit_classifier", "load_digit_classifier", "digit_accuracy", "digit_features",
    "frechet_digit_distance", "compute_metrics", "dataset_metrics",
]
