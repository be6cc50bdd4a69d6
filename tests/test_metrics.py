"""Tests for cmidps.metrics: PSNR/SSIM against scikit-image, LPIPS and Inception loading on weight files
made here (random weights, official key layouts), FID/KID against closed forms and torchmetrics, the
metric front-end's skip reporting, and the shipped digit classifier.

Nothing is downloaded. Weight lookups are isolated from the machine: the CMIDPS_* variables are removed
and TORCH_HOME points to an empty temporary folder.
"""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from cmidps.metrics import (LPIPS, InceptionV3Features, MetricUnavailable, compute_metrics, dataset_metrics,
                            digit_accuracy, frechet_digit_distance, frechet_distance, frechet_distance_from_stats,
                            kernel_inception_distance, load_digit_classifier, mmd2_unbiased, psnr, ssim)
from cmidps.metrics.digits import DEFAULT_CLASSIFIER_PATH
from cmidps.metrics.inception import resize_bilinear_tf1
from cmidps.metrics.lpips import AlexNetFeatures, VGG16Features

skimage_metrics = pytest.importorskip("skimage.metrics")


@pytest.fixture(autouse=True)
def _isolated_weights(monkeypatch, tmp_path_factory):
    for v in ("CMIDPS_LPIPS_BACKBONE", "CMIDPS_LPIPS_WEIGHTS", "CMIDPS_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


def _rand_pair(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    y = (x + 0.15 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


# ---------------------------------------------------------------- PSNR / SSIM

@pytest.mark.parametrize("shape,dtype", [((3, 3, 24, 31), torch.float64), ((2, 1, 16, 16), torch.float32)])
def test_psnr_ssim_match_skimage(shape, dtype):
    x, y = _rand_pair(shape, 0, dtype)
    xn, yn = x.double().numpy(), y.double().numpy()
    ref_ssim = [skimage_metrics.structural_similarity(xn[i], yn[i], gaussian_weights=True, sigma=1.5,
                                                      use_sample_covariance=False, data_range=1, channel_axis=0)
                for i in range(shape[0])]
    ref_psnr = [skimage_metrics.peak_signal_noise_ratio(yn[i], xn[i], data_range=1) for i in range(shape[0])]
    s, p = ssim(x, y), psnr(x, y)
    assert s.shape == p.shape == (shape[0],)
    np.testing.assert_allclose(s.double().numpy(), ref_ssim, atol=1e-5)
    np.testing.assert_allclose(p.double().numpy(), ref_psnr, atol=1e-4)


def test_psnr_ssim_edge_cases():
    x, y = _rand_pair((2, 3, 16, 16), 1)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=x.dtype))
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(psnr(x, y, data_range=2.0) - psnr(x, y), torch.full((2,), 20 * math.log10(2), dtype=x.dtype))
    # batch elements are independent
    assert torch.allclose(ssim(x[1:], y[1:]), ssim(x, y)[1:])
    with pytest.raises(ValueError):
        ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ValueError):
        psnr(x, y[:1])


# ---------------------------------------------------------------- LPIPS

def _save_backbone(path, net: str, seed: int, zero_bias=False):
    torch.manual_seed(seed)
    m = AlexNetFeatures() if net == "alex" else VGG16Features()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    if zero_bias:
        sd = {k: (torch.zeros_like(v) if k.endswith("bias") else v) for k, v in sd.items()}
    full = dict(sd)
    full["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files also hold the classifier: ignored
    full["classifier.1.bias"] = torch.zeros(4)
    torch.save(full, path)
    return sd


def _save_heads(path, net: str, seed: int, value=None):
    chans = AlexNetFeatures.channels if net == "alex" else VGG16Features.channels
    g = torch.Generator().manual_seed(seed)
    sd = {f"lin{k}.model.1.weight": (torch.rand(1, c, 1, 1, generator=g) if value is None
                                     else torch.full((1, c, 1, 1), float(value)))
          for k, c in enumerate(chans)}
    torch.save(sd, path)
    return sd


@pytest.fixture(scope="module")
def alex_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips_alex")
    bb = _save_backbone(d / "alexnet-owt-7be5be79.pth", "alex", 0)
    hd = _save_heads(d / "alex.pth", "alex", 1)
    return d, bb, hd


def test_lpips_backbone_key_layout():
    alex = set(AlexNetFeatures().state_dict())
    assert alex == {f"features.{i}.{w}" for i in (0, 3, 6, 8, 10) for w in ("weight", "bias")}
    vgg = set(VGG16Features().state_dict())
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert vgg == {f"features.{i}.{w}" for i in convs for w in ("weight", "bias")}


def test_lpips_loads_official_layout_strictly(alex_files, tmp_path):
    d, bb, hd = alex_files
    m = LPIPS("alex", backbone_path=d / "alexnet-owt-7be5be79.pth", lpips_path=d / "alex.pth")
    for k, v in bb.items():
        assert torch.equal(m.net.state_dict()[k], v)
    assert m.head_state_dict().keys() == hd.keys()
    for k, v in hd.items():
        assert torch.equal(m.head_state_dict()[k], v)
    # a folder works too, through the environment variables
    m2 = LPIPS("alex", backbone_path=d, lpips_path=d)
    assert m2.backbone_file.name == "alexnet-owt-7be5be79.pth"
    # strict keys: an extra or a missing entry is an error naming it
    bad = dict(hd)
    bad["lin5.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="lin5"):
        LPIPS("alex", backbone_path=d, lpips_path=tmp_path / "bad.pth")
    sd = torch.load(d / "alexnet-owt-7be5be79.pth")
    del sd["features.10.bias"]
    torch.save(sd, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(ValueError, match="features.10.bias"):
        LPIPS("alex", backbone_path=tmp_path, lpips_path=d)


def test_lpips_official_head_files_load_if_bundled():
    """torchmetrics ships copies of the official v0.1 head files: they must load with strict keys."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None:
        pytest.skip("torchmetrics not installed (it bundles the official LPIPS head files)")
    from cmidps.metrics.lpips import LPIPSHeads, load_heads
    for net, feats in (("alex", AlexNetFeatures), ("vgg", VGG16Features)):
        f = Path(spec.submodule_search_locations[0], "functional", "image", "lpips_models", f"{net}.pth")
        if not f.is_file():
            pytest.skip(f"{f} not found")
        heads = LPIPSHeads(feats.channels)
        load_heads(heads, f)
        assert all((heads.conv(k).weight >= 0).all() for k in range(5))  # official heads are non-negative


def test_lpips_missing_weights_raise_metric_unavailable(monkeypatch, tmp_path):
    with pytest.raises(MetricUnavailable, match="CMIDPS_LPIPS_BACKBONE.*alexnet-owt-7be5be79.pth"):
        LPIPS("alex")
    monkeypatch.setenv("CMIDPS_LPIPS_BACKBONE", str(tmp_path / "nope.pth"))
    with pytest.raises(MetricUnavailable, match="nope.pth"):
        LPIPS("vgg")


def test_lpips_properties(alex_files, monkeypatch):
    d, _, _ = alex_files
    monkeypatch.setenv("CMIDPS_LPIPS_BACKBONE", str(d))
    monkeypatch.setenv("CMIDPS_LPIPS_WEIGHTS", str(d))
    m = LPIPS("alex")
    x, y = _rand_pair((3, 3, 40, 36), 2, torch.float32)
    dxx, dxy, dyx = m(x, x), m(x, y), m(y, x)
    assert dxx.shape == (3,)
    assert torch.allclose(dxx, torch.zeros(3), atol=1e-7)
    assert torch.allclose(dxy, dyx, rtol=1e-5, atol=1e-7)
    assert (dxy > 0).all()
    # grayscale == the image repeated to 3 channels
    g1, g2 = x[:, :1], y[:, :1]
    assert torch.allclose(m(g1, g2), m(g1.repeat(1, 3, 1, 1), g2.repeat(1, 3, 1, 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="at least 31"):
        m(x[..., :16, :16], y[..., :16, :16])


def test_lpips_hand_checked(tmp_path):
    """With all head weights 1, LPIPS = sum over the 5 layers of the spatial mean of ||u - v||^2 = 2 - 2 cos
    of the unit-normalised features; with zero biases the backbone is positively homogeneous, so two
    images whose scaled inputs differ by a factor 2 are at distance 0."""
    _save_backbone(tmp_path / "alexnet-owt-7be5be79.pth", "alex", 3, zero_bias=True)
    _save_heads(tmp_path / "alex.pth", "alex", 0, value=1.0)
    m = LPIPS("alex", backbone_path=tmp_path, lpips_path=tmp_path).double()
    x, y = _rand_pair((2, 3, 48, 48), 4)
    s = m.scaling_layer
    z = (2 * x - 1 - s.shift) / s.scale
    x2 = ((2 * z * s.scale + s.shift) + 1) / 2  # scaling_layer(2 * x2 - 1) == 2 * scaling_layer(2 * x - 1)
    assert not torch.allclose(x, x2)
    assert torch.allclose(m(x, x2), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    fx, fy = m.net(s(2 * x - 1)), m.net(s(2 * y - 1))
    expect = sum((2 - 2 * torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)).mean(dim=(1, 2))
                 for a, b in zip(fx, fy))
    assert torch.allclose(m(x, y), expect, rtol=1e-8)


def test_lpips_matches_torchmetrics_pipeline(alex_files, monkeypatch):
    """torchmetrics' LPIPS copy of the official code, with our random backbone put in place of torchvision's."""
    tm = pytest.importorskip("torchmetrics.functional.image.lpips")
    d, bb, hd = alex_files

    def fake_features(net, pretrained=False):
        f = AlexNetFeatures()
        f.load_state_dict(bb)
        return f.features

    monkeypatch.setattr(tm, "_get_tv_model_features", fake_features)
    ref = tm._LPIPS(pretrained=True, net="alex", pnet_rand=True, model_path=str(d / "alex.pth")).eval()
    m = LPIPS("alex", backbone_path=d, lpips_path=d)
    x, y = _rand_pair((2, 3, 64, 64), 5, torch.float32)
    with torch.no_grad():
        want = ref(x, y, normalize=True).flatten()
    assert torch.allclose(m(x, y), want, rtol=1e-4, atol=1e-6)


def test_lpips_vgg_roundtrip(tmp_path):
    sd = _save_backbone(tmp_path / "vgg16-397923af.pth", "vgg", 6)
    _save_heads(tmp_path / "vgg.pth", "vgg", 7)
    m = LPIPS("vgg", backbone_path=tmp_path, lpips_path=tmp_path)
    assert torch.equal(m.net.state_dict()["features.28.weight"], sd["features.28.weight"])
    x, y = _rand_pair((2, 1, 32, 32), 8, torch.float32)
    assert torch.allclose(m(x, x), torch.zeros(2), atol=1e-7)
    assert (m(x, y) > 0).all()


# ---------------------------------------------------------------- FID / KID

def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    # identical Gaussians
    q = rng.normal(size=(5, 5))
    s = q @ q.T + 0.1 * np.eye(5)
    assert abs(frechet_distance_from_stats(mu1, s, mu1, s)) < 1e-10
    # general (non-commuting) covariances: the textbook formula with scipy's sqrtm
    q2 = rng.normal(size=(5, 5))
    s2 = q2 @ q2.T
    cov = scipy.linalg.sqrtm(s @ s2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s + s2 - 2 * cov)
    assert frechet_distance_from_stats(mu1, s, mu2, s2) == pytest.approx(want, rel=1e-9)
    # rank-deficient covariances (fewer samples than dimensions) stay finite and non-negative
    f = rng.normal(size=(4, 10))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(f, rng.normal(size=(4, 10))) > 0
    with pytest.raises(MetricUnavailable):
        frechet_distance(f[:1], f)


def _naive_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_naive_and_subsets():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(5, 3))
    assert mmd2_unbiased(x, y) == pytest.approx(_naive_mmd2(x, y), rel=1e-12)
    mean, std = kernel_inception_distance(x[:5], y, subset_size=1000)
    assert mean == pytest.approx(_naive_mmd2(x[:5], y), rel=1e-12) and std == 0.0
    m1 = kernel_inception_distance(x, y, subsets=20, subset_size=4, seed=3)
    assert m1 == kernel_inception_distance(x, y, subsets=20, subset_size=4, seed=3)  # seeded
    assert m1[1] > 0
    # far-apart sets: KID clearly positive
    assert kernel_inception_distance(rng.normal(size=(30, 4)), rng.normal(3, 1, size=(30, 4)))[0] > 0.5


class _Flat(torch.nn.Module):
    num_features = 48

    def forward(self, x):
        return x.flatten(1).double()


def test_fid_kid_match_torchmetrics_with_custom_features():
    tmfid = pytest.importorskip("torchmetrics.image.fid")
    tmkid = pytest.importorskip("torchmetrics.image.kid")
    g = torch.Generator().manual_seed(0)
    real = torch.rand(60, 3, 4, 4, generator=g)
    fake = (torch.rand(60, 3, 4, 4, generator=g) * 0.8 + 0.1) ** 2
    fid = tmfid.FrechetInceptionDistance(feature=_Flat(), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = frechet_distance(fake.flatten(1), real.flatten(1))
    assert ours == pytest.approx(float(fid.compute()), rel=1e-5)
    kid = tmkid.KernelInceptionDistance(feature=_Flat(), normalize=True, subsets=1, subset_size=60)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert kernel_inception_distance(fake.flatten(1), real.flatten(1))[0] == pytest.approx(
        float(kid.compute()[0]), rel=1e-5)


# ---------------------------------------------------------------- Inception

def test_tf1_resize_hand_values():
    x = torch.tensor([[[[0.0, 10.0]]]])  # 1x2 -> 1x4: sources 0, 0.5, 1, 1.5 (hi clamped) -> 0, 5, 10, 10
    assert torch.allclose(resize_bilinear_tf1(x, (1, 4)), torch.tensor([[[[0.0, 5.0, 10.0, 10.0]]]]))
    c = torch.full((1, 3, 5, 7), 3.0)
    assert torch.allclose(resize_bilinear_tf1(c, (11, 13)), torch.full((1, 3, 11, 13), 3.0))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    m = InceptionV3Features()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so loading them is checked
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    p = tmp_path_factory.mktemp("incep") / "pt_inception-2015-12-05-6726825d.pth"
    sd = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, p)
    return p, sd


def test_inception_layout_and_roundtrip(inception_file):
    p, sd = inception_file
    # torchvision Inception3 without aux logits has 23,834,568 parameters with 1000 classes; 1008 here
    assert sum(v.numel() for k, v in InceptionV3Features().named_parameters()) == 23_834_568 + 8 * 2048 + 8
    for k in ("Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_6e.branch7x7dbl_5.conv.weight",
              "Mixed_7a.branch7x7x3_4.bn.bias", "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight"):
        assert k in sd
    m = InceptionV3Features.from_file(p)
    for k in ("Mixed_5b.branch_pool.bn.running_mean", "fc.bias"):
        assert torch.equal(m.state_dict()[k], sd[k])
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    f = m(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    assert torch.allclose(f, m(x.repeat(1, 3, 1, 1)))


def test_inception_missing_weights(monkeypatch, tmp_path):
    with pytest.raises(MetricUnavailable, match="CMIDPS_INCEPTION_WEIGHTS"):
        InceptionV3Features.from_file()
    monkeypatch.setenv("CMIDPS_INCEPTION_WEIGHTS", str(tmp_path))  # a folder without the file
    with pytest.raises(MetricUnavailable, match="holds none of"):
        InceptionV3Features.from_file()


def test_dataset_metrics_fid_kid_with_inception_file(inception_file, monkeypatch):
    p, _ = inception_file
    monkeypatch.setenv("CMIDPS_INCEPTION_WEIGHTS", str(p))
    x, y = _rand_pair((3, 3, 16, 16), 9, torch.float32)
    r = dataset_metrics(x, y, names=("fid", "kid", "psnr"), batch_size=2)
    assert r["skipped"] == {} and r["n_images"] == 3
    assert r["values"]["fid"] > 0 and math.isfinite(r["values"]["kid"])
    assert r["values"]["psnr"] == pytest.approx(float(psnr(x, y).double().mean()), rel=1e-6)


# ---------------------------------------------------------------- front-end

def test_compute_metrics_reports_skips(alex_files, monkeypatch):
    x, y = _rand_pair((2, 3, 32, 32), 10, torch.float32)
    r = compute_metrics(x, y)
    assert set(r["values"]) == {"psnr", "ssim"} and r["values"]["psnr"].shape == (2,)
    assert "CMIDPS_LPIPS_BACKBONE" in r["skipped"]["lpips"]
    with pytest.raises(MetricUnavailable):
        compute_metrics(x, y, strict=True)
    with pytest.raises(ValueError, match="unknown"):
        compute_metrics(x, y, names=("psnr", "fid"))
    d, _, _ = alex_files
    monkeypatch.setenv("CMIDPS_LPIPS_BACKBONE", str(d))
    monkeypatch.setenv("CMIDPS_LPIPS_WEIGHTS", str(d))
    r = compute_metrics(x, y)
    assert r["skipped"] == {} and r["values"]["lpips"].shape == (2,)


def test_dataset_metrics_reports_skips():
    x, y = _rand_pair((4, 1, 32, 32), 11, torch.float32)
    r = dataset_metrics(x, y, names=("fid", "kid", "ssim", "digit_accuracy"))
    assert set(r["skipped"]) == {"fid", "kid", "digit_accuracy"}
    assert "CMIDPS_INCEPTION_WEIGHTS" in r["skipped"]["fid"] and "labels" in r["skipped"]["digit_accuracy"]
    assert set(r["values"]) == {"ssim"}
    with pytest.raises(ValueError, match="unknown"):
        dataset_metrics(x, y, names=("fidd",))


# ---------------------------------------------------------------- digit classifier

def test_shipped_digit_classifier():
    assert DEFAULT_CLASSIFIER_PATH.is_file(), "the digit classifier weights must ship with the package"
    assert DEFAULT_CLASSIFIER_PATH.stat().st_size <= 2 * 1024 * 1024
    from cmidps.data import load_heldout

    x, y = load_heldout()  # ships with the package: no skip
    load_digit_classifier()
    assert digit_accuracy(x, y) == 1.0  # docs/metrics.md: 100 % on the 20 shipped held-out digits
    assert frechet_digit_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    r = dataset_metrics(x, x.flip(-1), names=("fdd", "digit_accuracy", "digit_correct"), labels=y, batch_size=8)
    assert r["skipped"] == {}
    assert r["values"]["fdd"] > 0
    assert r["values"]["digit_accuracy"] == pytest.approx(r["values"]["digit_correct"])


def test_train_digit_classifier_smoke(tmp_path, monkeypatch):
    """The training loop and the saved file, on synthetic stand-in data (the real run reads
    cmidps.data.load_mnist; see docs/metrics.md for the shipped run)."""
    data = pytest.importorskip("cmidps.data")
    from cmidps.metrics.digits import train_digit_classifier
    g = torch.Generator().manual_seed(0)

    def fake_load_mnist(split="train", root=None):
        n = 64 if split == "train" else 20
        return torch.rand(n, 1, 32, 32, generator=g), torch.arange(n) % 10

    monkeypatch.setattr(data, "load_mnist", fake_load_mnist)
    meta = train_digit_classifier(tmp_path / "c.safetensors", steps=3, seed=0, batch_size=16, log_every=0)
    assert 0.0 <= float(meta["test_accuracy"]) <= 1.0 and meta["steps"] == "3"
    m = load_digit_classifier(tmp_path / "c.safetensors")
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
