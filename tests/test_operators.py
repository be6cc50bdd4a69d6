"""Tests of cmidps.operators and cmidps.operators.motion: adjoints, pseudo-inverses, K-solves, presets."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import math

import pytest
import torch

from cmidps.operators.motion import motion_kernel
from cmidps.operators import (
    PRESETS,
    TASK_DESCRIPTIONS,
    TASKS,
    BoxInpainting,
    CircularBlur,
    DenseOperator,
    GaussianBlur,
    LinearOperator,
    MaskOperator,
    MotionBlur,
    RandomInpainting,
    ReflectBlur,
    SuperResolution,
    add_noise,
    bicubic_matrix,
    box_corner,
    gaussian_filter_kernel,
    gaussian_kernel,
    make_operator,
)
from cmidps.presets import PRESETS as PRESET_TABLE, default_preset, get_preset

DT = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rank_deficient(m, d, r, seed):
    g = gen(seed)
    return torch.randn(m, r, generator=g, dtype=DT) @ torch.randn(r, d, generator=g, dtype=DT)


# Small problems: each operator is built lazily by a factory (name -> operator). The blurs use
# pinv_rtol=0 (the exact Moore-Penrose inverse); the default truncated one is tested separately.
FACTORIES = {
    "random_inpaint": lambda: RandomInpainting((3, 8, 8), 0.6, gen(1)),
    "box_inpaint": lambda: BoxInpainting((2, 12, 10), 4, 2, gen(2)),
    "gauss": lambda: GaussianBlur((2, 12, 10), 5, 1.0, pinv_rtol=0.0),
    "motion": lambda: MotionBlur((1, 12, 12), 7, 0.5, gen(3), pinv_rtol=0.0),
    # a non-symmetric, well-conditioned kernel, and CG run to convergence (the exactness tests)
    "reflect": lambda: ReflectBlur((2, 11, 9), ASYM_KERNEL, cg_tol=1e-13, cg_maxiter=3000, pinv_tol=1e-13,
                                   pinv_maxiter=3000),
    "sr4": lambda: SuperResolution((2, 16, 12), 4),
    "sr2": lambda: SuperResolution((1, 10, 8), 2),
    "dense_wide": lambda: DenseOperator(torch.randn(5, 9, generator=gen(4), dtype=DT)),
    "dense_tall": lambda: DenseOperator(torch.randn(9, 5, generator=gen(5), dtype=DT)),
    "dense_lowrank": lambda: DenseOperator(rank_deficient(6, 7, 3, 6)),
}
ASYM_KERNEL = torch.tensor([[0.02, 0.05, 0.01], [0.10, 0.60, 0.04], [0.03, 0.12, 0.03]], dtype=DT)
# Operators whose A A^T is invertible (so solve_K may be used with s2 = 0 on any v).
INVERTIBLE_AAT = {"gauss", "motion", "sr4", "sr2", "dense_wide", "reflect"}

_cache = {}


def get(name):
    if name not in _cache:
        _cache[name] = FACTORIES[name]()
    return _cache[name]


def rand_x(op, B=3, seed=10):
    return torch.randn((B, *op.x_shape), generator=gen(seed), dtype=DT)


def rand_y(op, B=3, seed=11):
    return torch.randn((B, *op.y_shape), generator=gen(seed), dtype=DT)


def dense(op):
    """The m x d matrix of A, built column by column from basis vectors."""
    d = math.prod(op.x_shape)
    basis = torch.eye(d, dtype=DT).view(d, *op.x_shape)
    return op.A(basis).reshape(d, -1).T


def dense_pinv(op):
    m = math.prod(op.y_shape)
    basis = torch.eye(m, dtype=DT).view(m, *op.y_shape)
    return op.A_pinv(basis).reshape(m, -1).T


def flat(t):
    return t.reshape(t.shape[0], -1)


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


NAMES = list(FACTORIES)


# ------------------------------------------------------------------------------- generic properties
@pytest.mark.parametrize("name", NAMES)
def test_shapes(name):
    op = get(name)
    assert isinstance(op, LinearOperator)
    x, y = rand_x(op), rand_y(op)
    assert op.A(x).shape == (3, *op.y_shape)
    assert op.A_adjoint(y).shape == (3, *op.x_shape)
    assert op.A_pinv(y).shape == (3, *op.x_shape)
    assert op.solve_K(y, 0.5, 0.1).shape == (3, *op.y_shape)


@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name):
    op = get(name)
    x, y = rand_x(op), rand_y(op)
    lhs = (op.A(x) * y).flatten(1).sum(1)
    rhs = (x * op.A_adjoint(y)).flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-12 * float(lhs.abs().max()))


@pytest.mark.parametrize("name", NAMES)
def test_pinv_on_range(name):
    op = get(name)
    y = op.A(rand_x(op))
    assert rel(op.A(op.A_pinv(y)), y) < 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_pinv_is_moore_penrose(name):
    """The four Penrose conditions, and agreement with torch.linalg.pinv of the dense matrix."""
    op = get(name)
    M, P = dense(op), dense_pinv(op)
    tol = 1e-9
    assert rel(M @ P @ M, M) < tol
    assert rel(P @ M @ P, P) < tol
    assert rel((M @ P).T, M @ P) < tol
    assert rel((P @ M).T, P @ M) < tol
    assert rel(P, torch.linalg.pinv(M)) < 1e-8


@pytest.mark.parametrize("name", NAMES)
def test_solve_K_matches_dense_and_cg(name):
    op = get(name)
    M = dense(op)
    m = M.shape[0]
    v = rand_y(op)
    r2 = torch.tensor([0.3, 1.0, 2.5], dtype=DT)
    s2 = torch.tensor([0.05, 0.2, 1.0], dtype=DT)
    out = op.solve_K(v, r2, s2)
    cg = op.cg_solve_K(v, r2, s2, tol=1e-12, maxiter=2000)
    for b in range(3):
        K = s2[b] * torch.eye(m, dtype=DT) + r2[b] * M @ M.T
        ref = torch.linalg.solve(K, v[b].reshape(-1))
        assert rel(out[b].reshape(-1), ref) < 1e-9
        assert rel(cg[b].reshape(-1), ref) < 1e-8
    # Python floats work too.
    assert rel(op.solve_K(v, 0.7, 0.3), op.solve_K(v, torch.full((3,), 0.7, dtype=DT), torch.full((3,), 0.3, dtype=DT))) < 1e-14


@pytest.mark.parametrize("name", NAMES)
def test_solve_K_with_zero_s2(name):
    """s2 = 0: exact where A A^T is invertible; otherwise the solution in the range of A for v in it."""
    op = get(name)
    M = dense(op)
    v = rand_y(op) if name in INVERTIBLE_AAT else op.A(rand_x(op))
    out = op.solve_K(v, 2.0, 0.0)
    ref = flat(v) @ torch.linalg.pinv(2.0 * M @ M.T).T
    assert rel(flat(out), ref) < 1e-8
    cg = op.cg_solve_K(v, 2.0, 0.0, tol=1e-12, maxiter=2000)
    assert rel(flat(cg), ref) < 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
    op = get(name)
    x, y = rand_x(op), rand_y(op)
    r2 = torch.tensor([0.3, 1.0, 2.5], dtype=DT)
    s2 = torch.tensor([0.05, 0.2, 1.0], dtype=DT)
    full = {
        "A": op.A(x),
        "At": op.A_adjoint(y),
        "pinv": op.A_pinv(y),
        "K": op.solve_K(y, r2, s2),
        "cg": op.cg_solve_K(y, r2, s2, tol=1e-12, maxiter=2000),
    }
    for b in range(3):
        one = {
            "A": op.A(x[b : b + 1]),
            "At": op.A_adjoint(y[b : b + 1]),
            "pinv": op.A_pinv(y[b : b + 1]),
            "K": op.solve_K(y[b : b + 1], float(r2[b]), float(s2[b])),
            "cg": op.cg_solve_K(y[b : b + 1], float(r2[b]), float(s2[b]), tol=1e-12, maxiter=2000),
        }
        for key in full:
            assert rel(full[key][b : b + 1], one[key]) < 1e-8, key


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_module_dtype(name):
    op = get(name)
    x = rand_x(op).float()
    y = op.A(x)
    assert y.dtype == torch.float32
    assert rel(y.double(), op.A(x.double())) < 1e-5
    assert op.solve_K(y, 1.0, 0.1).dtype == torch.float32
    assert op.A_pinv(y).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    op = FACTORIES[name]()
    x, y = rand_x(op), rand_y(op)
    r2 = torch.tensor([0.3, 1.0, 2.5], dtype=DT)
    cpu = [op.A(x), op.A_adjoint(y), op.A_pinv(y), op.solve_K(y, r2, 0.1), op.cg_solve_K(y, r2, 0.1)]
    op = op.to("cuda")
    xc, yc = x.cuda(), y.cuda()
    gpu = [op.A(xc), op.A_adjoint(yc), op.A_pinv(yc), op.solve_K(yc, r2.cuda(), 0.1), op.cg_solve_K(yc, r2, 0.1)]
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda" and rel(b.cpu(), a) < 1e-8
    assert torch.equal(add_noise(yc, 0.05, gen(0)).cpu(), add_noise(y, 0.05, gen(0)))


def test_base_class_cg_fallbacks():
    """A subclass with only A and A_adjoint gets working A_pinv and solve_K (conjugate gradients)."""
    ref = get("dense_wide")

    class Plain(LinearOperator):
        def __init__(self, M):
            super().__init__((M.shape[1],), (M.shape[0],))
            self.register_buffer("M", M)

        def A(self, x):
            return x @ self.M.T

        def A_adjoint(self, y):
            return y @ self.M

    op = Plain(ref.matrix.clone())
    y = rand_y(op)
    assert rel(op.A_pinv(y), ref.A_pinv(y)) < 1e-8
    assert rel(op.solve_K(y, 1.5, 0.1), ref.solve_K(y, 1.5, 0.1)) < 1e-8


# ------------------------------------------------------------------------------------ inpainting
def test_random_inpainting_mask():
    op = RandomInpainting((3, 16, 16), 0.9, gen(0))
    assert op.mask.shape == (1, 16, 16)
    assert int((op.mask == 0).sum()) == int(16 * 16 * 0.9)
    x = torch.ones(2, 3, 16, 16, dtype=DT)
    y = op.A(x)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])  # same mask on all channels
    # Representation: y is x with zeros at the masked pixels.
    assert torch.equal(y[0, 0], op.mask[0])


def test_inpainting_solve_K_masked_entries():
    op = RandomInpainting((1, 8, 8), 0.5, gen(0))
    v = torch.ones(1, 1, 8, 8, dtype=DT)
    out = op.solve_K(v, 3.0, 0.0)
    m = op.mask
    assert torch.allclose(out, m / 3.0)  # masked entries (outside the range of A) -> 0
    out = op.solve_K(v, 3.0, 0.5)
    assert torch.allclose(out, m / 3.5 + (1 - m) / 0.5)


def test_box_inpainting_within_margins():
    for seed in range(20):
        op = BoxInpainting((1, 32, 32), 16, 2, gen(seed))
        hole = (op.mask[0] == 0).nonzero()
        top, left = hole.min(0).values.tolist()
        bottom, right = hole.max(0).values.tolist()
        assert (bottom - top + 1, right - left + 1) == (16, 16)
        assert len(hole) == 256
        assert top >= 2 and left >= 2 and bottom <= 32 - 1 - 2 and right <= 32 - 1 - 2
        assert (top, left) == op.box[:2]


def test_mask_determinism():
    a = RandomInpainting((1, 16, 16), 0.9, gen(5)).mask
    b = RandomInpainting((1, 16, 16), 0.9, gen(5)).mask
    c = RandomInpainting((1, 16, 16), 0.9, gen(6)).mask
    assert torch.equal(a, b) and not torch.equal(a, c)
    boxes = {BoxInpainting((1, 64, 64), 16, 2, gen(s)).box for s in range(10)}
    assert len(boxes) > 1
    assert BoxInpainting((1, 64, 64), 16, 2, gen(3)).box == BoxInpainting((1, 64, 64), 16, 2, gen(3)).box


# ------------------------------------------------------------------------------------------ blurs
def test_circular_blur_matches_direct_convolution():
    """A is the periodic convolution (A x)[i,j] = sum k[a,b] x[i+c-a, j+c-b]; a non-symmetric kernel."""
    k = torch.rand(3, 5, generator=gen(0), dtype=DT)
    op = CircularBlur((1, 7, 9), k)
    x = torch.randn(1, 1, 7, 9, generator=gen(1), dtype=DT)
    ref = torch.zeros_like(x)
    for a in range(3):
        for b in range(5):
            ref += k[a, b] * torch.roll(x, shifts=(a - 1, b - 2), dims=(2, 3))
    assert rel(op.A(x), ref) < 1e-12


def test_gaussian_kernel_and_constant():
    op = GaussianBlur((1, 16, 16), 7, 1.5)
    k = op.kernel
    assert k.shape == (7, 7) and abs(float(k.sum()) - 1) < 1e-14
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    assert int(k.argmax()) == 3 * 7 + 3
    x = torch.full((1, 1, 16, 16), 0.3, dtype=DT)
    assert torch.allclose(op.A(x), x)


def test_truncated_pinv_paper_gaussian():
    """std 5 on 64 px: many Fourier coefficients are below the cutoff; A^+ is the truncated inverse."""
    op = GaussianBlur((1, 64, 64), 61, 5.0)
    x = torch.randn(2, 1, 64, 64, generator=gen(0), dtype=DT)
    y = op.A(x)
    P = op.A_pinv
    assert rel(P(op.A(P(y))), P(y)) < 1e-10  # A^+ A A^+ = A^+ holds exactly
    assert rel(op.A(P(y)), y) < 1e-3  # A A^+ A = A up to the dropped (attenuated < 1e-3) components
    assert P(y).abs().max() < 1e4 * y.abs().max()  # no blow-up


def test_motion_kernel_properties():
    for seed in range(5):
        for intensity in (0.0, 0.5, 1.0):
            k = motion_kernel(15, intensity, gen(seed))
            assert k.shape == (15, 15) and k.dtype == DT
            assert float(k.min()) >= 0
            assert abs(float(k.sum()) - 1) < 1e-12
            assert float(k.max()) < 0.5  # not a delta
            assert int((k > 1e-3).sum()) >= 4  # spread over several pixels
    assert torch.equal(motion_kernel(9, 0.5, gen(1)), motion_kernel(9, 0.5, gen(1)))
    assert not torch.equal(motion_kernel(9, 0.5, gen(1)), motion_kernel(9, 0.5, gen(2)))
    with pytest.raises(ValueError):
        motion_kernel(9, 1.5, gen(0))


def test_motion_blur_operator_seeded():
    a = MotionBlur((1, 16, 16), 9, 0.5, gen(7)).kernel
    b = MotionBlur((1, 16, 16), 9, 0.5, gen(7)).kernel
    c = MotionBlur((1, 16, 16), 9, 0.5, gen(8)).kernel
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------ super-resolution
def reference_bicubic_row(in_size, factor, i):
    """MATLAB imresize's weights for output pixel i (0-based), written as a plain loop."""

    def cubic(t):
        t = abs(t)
        if t <= 1:
            return 1.5 * t**3 - 2.5 * t**2 + 1
        if t <= 2:
            return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
        return 0.0

    # MATLAB, 1-based: u = i1 * scale^-1 + 0.5 * (1 - scale^-1), left = floor(u - kernel_width / 2)
    i1 = i + 1
    u = i1 * factor + 0.5 * (1 - factor)
    width = 4 * factor
    left = math.floor(u - width / 2)
    row = [0.0] * in_size
    weights = [cubic((u - (left + p)) / factor) / factor for p in range(width + 2)]
    total = sum(weights)
    for p, w in enumerate(weights):
        j = left + p  # 1-based, mirror into 1..in_size
        while j < 1 or j > in_size:
            j = 1 - j if j < 1 else 2 * in_size + 1 - j
        row[j - 1] += w / total
    return torch.tensor(row, dtype=DT)


def test_bicubic_matrix_matches_loop_reference():
    for in_size, factor in ((16, 4), (12, 2), (32, 4)):
        D = bicubic_matrix(in_size, factor)
        assert D.shape == (in_size // factor, in_size)
        for i in range(in_size // factor):
            assert torch.allclose(D[i], reference_bicubic_row(in_size, factor, i), atol=1e-14)


def test_bicubic_interior_matches_torch_antialias():
    """Away from the borders MATLAB's and PyTorch's antialiased bicubic (a = -0.5) coincide."""
    H, f = 64, 4
    D = bicubic_matrix(H, f)
    E = torch.eye(H, dtype=DT)[:, None, None, :]
    ref = torch.nn.functional.interpolate(E, size=(1, H // f), mode="bicubic", antialias=True)[:, 0, 0, :].T
    interior = slice(2, H // f - 2)  # rows whose 18-tap support lies inside the image
    assert torch.allclose(D[interior], ref[interior], atol=1e-12)
    # Known values of the x4 kernel in an interior row, at distances 0.5, 1.5, ..., 7.5 px from the
    # output centre (u = 21.5 for row 5): cubic(dist / 4) / 4, hand-computed exact binary fractions
    # (e.g. cubic(1/8) = 1.5/512 - 2.5/64 + 1 = 0.9638671875). No renormalisation is needed: samples
    # of the cubic at spacing 1/4 sum to 4.
    expected = [0.240966796875, 0.181884765625, 0.097412109375, 0.022705078125,
                -0.011962890625, -0.018310546875, -0.010986328125, -0.001708984375]
    row = D[5]
    assert [float(row[22 + o]) for o in range(8)] == pytest.approx(expected, abs=1e-15)
    assert [float(row[21 - o]) for o in range(8)] == pytest.approx(expected, abs=1e-15)


def test_sr_constant_and_shapes():
    op = SuperResolution((3, 32, 32), 4)
    assert op.y_shape == (3, 8, 8)
    x = torch.full((2, 3, 32, 32), -0.7, dtype=DT)
    assert torch.allclose(op.A(x), torch.full((2, 3, 8, 8), -0.7, dtype=DT), atol=1e-14)
    ramp = torch.arange(32, dtype=DT).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    y = op.A(ramp)[0, 0, 0]
    assert torch.allclose(y[2:-2], torch.arange(8, dtype=DT)[2:-2] * 4 + 1.5, atol=1e-12)  # linear reproduced


# ----------------------------------------------------------------------------------------- dense
def test_dense_operator():
    M = torch.randn(4, 6, generator=gen(0), dtype=DT)
    op = DenseOperator(M)
    assert op.x_shape == (6,) and op.y_shape == (4,)
    x = torch.randn(5, 6, generator=gen(1), dtype=DT)
    assert torch.allclose(op.A(x), x @ M.T)
    assert torch.allclose(op.A_pinv(op.A(x)), op.A(x) @ torch.linalg.pinv(M).T, atol=1e-12)
    with pytest.raises(ValueError):
        DenseOperator(torch.ones(3))


# ---------------------------------------------------------------------------------- noise, tasks
def test_add_noise():
    y = torch.zeros(4, 1000, dtype=DT)
    a = add_noise(y, 0.05, gen(0))
    b = add_noise(y, 0.05, gen(0))
    assert torch.equal(a, b)
    assert abs(float(a.std()) - 0.05) < 0.005
    assert not torch.equal(a, add_noise(y, 0.05, gen(1)))


def test_make_operator_errors():
    g = gen(0)
    with pytest.raises(ValueError, match="inpaint_random"):
        make_operator("deblur", (3, 32, 32), g)
    with pytest.raises(ValueError, match="divisible"):
        make_operator("sr4", (3, 30, 32), g)
    with pytest.raises(ValueError, match="box"):
        make_operator("inpaint_box", (3, 64, 64), g, preset="paper")
    with pytest.raises(ValueError, match="kernel"):
        make_operator("deblur_gauss", (3, 32, 32), g, preset="paper")
    with pytest.raises(ValueError, match="preset"):
        make_operator("sr4", (3, 32, 32), g, preset="huge")
    with pytest.raises(ValueError):
        make_operator("sr4", (32, 32), g)


def test_tasks_listed():
    assert set(TASKS) == set(TASK_DESCRIPTIONS)
    assert "small" in PRESETS and "paper" in PRESETS


def test_paper_presets_at_256():
    shape = (3, 256, 256)
    ops = {t: make_operator(t, shape, gen(0)) for t in TASKS}  # preset None -> "paper" at 256
    assert ops["inpaint_random"].masked_fraction == pytest.approx(int(256 * 256 * 0.9) / (256 * 256))
    box = ops["inpaint_box"]
    assert int((box.mask == 0).sum()) == 128 * 128
    top, left, size = box.box
    assert size == 128 and 16 <= top <= 256 - 16 - 128 and 16 <= left <= 256 - 16 - 128
    assert ops["deblur_gauss"].kernel.shape == (61, 61) and ops["deblur_gauss"].std == 5.0
    assert make_operator("deblur_gauss", shape, gen(0), preset="dps").std == 3.0
    assert make_operator("deblur_gauss", shape, gen(0), std=3.0).std == 3.0
    motion = ops["deblur_motion"]
    assert motion.kernel.shape == (61, 61) and motion.intensity == 0.5
    assert abs(float(motion.kernel.sum()) - 1) < 1e-12
    assert ops["sr4"].y_shape == (3, 64, 64)
    x = torch.rand(1, *shape, generator=gen(1), dtype=DT)
    for t, op in ops.items():
        y = op.A(x)
        assert y.shape == (1, *op.y_shape), t


def test_small_presets_at_32():
    shape = (1, 32, 32)
    ops = {t: make_operator(t, shape, gen(0)) for t in TASKS}  # preset None -> "small"
    assert ops["inpaint_box"].box[2] == 16
    assert ops["deblur_gauss"].kernel.shape == (9, 9)
    assert ops["deblur_motion"].kernel.shape == (9, 9)
    assert ops["sr4"].y_shape == (1, 8, 8)
    x = torch.rand(2, *shape, generator=gen(1), dtype=DT)
    for op in ops.values():
        y = rand_y(op, B=2)
        assert torch.allclose((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum(), rtol=1e-10)


# --------------------------------------------------------------------------- per-image masks
def test_per_image_masks_act_per_sample():
    gens = [gen(20), gen(21), gen(22)]
    op = RandomInpainting((2, 16, 16), (0.3, 0.7), gens)
    assert op.per_sample and op.mask.shape == (3, 1, 16, 16)
    fractions = [1 - float(m.mean()) for m in op.mask]
    assert len(set(fractions)) == 3 and all(0.3 - 1 / 256 <= f <= 0.7 for f in fractions)
    for b, g in enumerate([gen(20), gen(21), gen(22)]):  # image b has the mask of generator b
        p = 0.3 + 0.4 * float(torch.rand((), generator=g, dtype=DT))
        assert int((op.mask[b] == 0).sum()) == int(256 * p)
    x, y = rand_x(op), rand_y(op)
    for b in range(3):
        one = MaskOperator((2, 16, 16), op.mask[b, 0])
        assert torch.equal(op.A(x)[b], one.A(x[b : b + 1])[0])
        assert torch.equal(op.solve_K(y, 0.5, 0.1)[b], one.solve_K(y[b : b + 1], 0.5, 0.1)[0])
    assert torch.allclose((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="per-image masks"):
        op.A(x[:1])
    boxes = BoxInpainting((1, 32, 32), 8, 2, [gen(s) for s in range(4)])
    assert len(boxes.box) == 4 and boxes.mask.shape == (4, 1, 32, 32)
    assert all(int((boxes.mask[b] == 0).sum()) == 64 for b in range(4))


def test_dps_box_corner_is_numpys_exclusive_range():
    """The DPS code: top = np.random.randint(16, 256 - 16 - 128): corners 16..111, never 112."""
    corners = {box_corner(256, 128, 16, 17, gen(s)) for s in range(3000)}
    assert corners == set(range(16, 112))
    op = BoxInpainting((3, 256, 256), 128, 16, gen(0), far_margin=17)
    top, left, size = op.box
    assert 16 <= top <= 111 and 16 <= left <= 111 and size == 128
    with pytest.raises(ValueError, match="box"):
        BoxInpainting((1, 160, 160), 128, 16, gen(0), far_margin=17)


# ---------------------------------------------------------------------------- reflection-padded blurs
def test_reflect_padding_and_its_adjoint():
    op = ReflectBlur((2, 9, 7), torch.ones(5, 3, dtype=DT) / 15)
    x = torch.randn(3, 2, 9, 7, generator=gen(0), dtype=DT)
    padded = op.pad_reflect(x)
    assert torch.equal(padded, torch.nn.functional.pad(x, (1, 1, 2, 2), mode="reflect"))
    z = torch.randn_like(padded)
    assert math.isclose(float((padded * z).sum()), float((x * op.pad_reflect_adjoint(z)).sum()), rel_tol=1e-13)


def test_reflect_blur_is_the_dps_codes_blur_with_the_kernel_rotated():
    """The DPS code: nn.ReflectionPad2d(k // 2) then nn.Conv2d (a correlation) with the kernel. Ours
    convolves, so it equals the DPS code's operator given the kernel rotated by 180 degrees; for a
    symmetric (Gaussian) kernel both are the same."""
    F = torch.nn.functional
    x = torch.randn(2, 3, 20, 17, generator=gen(1), dtype=DT)

    def dps_blur(img, k):
        kh, kw = k.shape
        weight = k.expand(3, 1, kh, kw)
        return F.conv2d(F.pad(img, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect"), weight, groups=3)

    k = torch.rand(5, 7, generator=gen(2), dtype=DT)
    assert rel(ReflectBlur((3, 20, 17), k).A(x), dps_blur(x, k.flip(0, 1))) < 1e-12
    g = gaussian_filter_kernel(9, 1.5)
    assert rel(ReflectBlur((3, 20, 17), g).A(x), dps_blur(x, g)) < 1e-12
    # away from the borders it is the circular blur
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert rel(ReflectBlur((3, 20, 17), k).A(x)[inner], CircularBlur((3, 20, 17), k).A(x)[inner]) < 1e-12


def test_reflect_blur_adjoint_at_256px_float64():
    for task, preset in (("deblur_gauss", "dps"), ("deblur_motion", "paper")):
        op = make_operator(task, (3, 256, 256), gen(0), preset)
        assert isinstance(op, ReflectBlur) and op.kernel.shape == (61, 61)
        x, y = rand_x(op, B=2), rand_y(op, B=2)
        lhs = (op.A(x) * y).flatten(1).sum(1)
        rhs = (x * op.A_adjoint(y)).flatten(1).sum(1)
        assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * float(lhs.abs().max())), task


def test_reflect_blur_cg_solves_at_256px():
    """The K-solve (s2 I + r2 A A^T) converges at the DPS task size in float32 within the default
    iterations (condition number <= 1 + r2 / s2 = 401); the pseudo-inverse is a regularised one."""
    op = make_operator("deblur_gauss", (1, 256, 256), gen(0), "dps")  # one channel: the same system per channel
    x = torch.rand(1, 1, 256, 256, generator=gen(1)) * 2 - 1
    v = op.A(x) + 0.05 * torch.randn(1, 1, 256, 256, generator=gen(2))
    u = op.solve_K(v, 1.0, 0.05**2)  # the hardest case (r2 = 1 - abar_T ~ 1): ~120 iterations
    residual = 0.05**2 * u + op.A(op.A_adjoint(u)) - v
    assert float(residual.norm() / v.norm()) < 2e-5
    op.pinv_maxiter = 20
    assert float(op.A_pinv(op.A(x)).norm()) < 2 * float(x.norm())  # no blow-up


def test_gaussian_filter_kernel_is_scipys_filtered_delta():
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    for size, std in ((61, 3.0), (61, 5.0), (9, 1.5), (9, 3.0), (7, 2.5)):  # the last two fold taps back
        delta = np.zeros((size, size))
        delta[size // 2, size // 2] = 1.0
        ref = torch.from_numpy(ndimage.gaussian_filter(delta, sigma=std))
        k = gaussian_filter_kernel(size, std)
        assert torch.allclose(k, ref, rtol=0, atol=1e-15), (size, std)
        assert abs(float(k.sum()) - 1) < 1e-12
    # the sampled Gaussian differs from it only by the truncated tails (std 3: radius 12 of 30)
    assert 1e-6 < float((gaussian_filter_kernel(61, 3.0) - gaussian_kernel(61, 3.0)).abs().max()) < 1e-4


# ------------------------------------------------------------------------------ the preset table
# Written out from the sources (the paper's Sec. IV; the DPS code's configs and util/img_utils.py),
# independently of cmidps.presets, and checked against the operators make_operator builds.
EXPECTED_256 = {
    "paper": dict(fraction=0.9, std=5.0),
    "dps": dict(fraction=(0.3, 0.7), std=3.0),
}


@pytest.mark.parametrize("preset", ["paper", "dps"])
def test_large_presets_build_the_reference_operators(preset):
    shape, expect = (3, 256, 256), EXPECTED_256[preset]
    p = get_preset(preset)
    assert p.steps == 1000 and p.sigma_y == 0.05 and p.noise_on == "all" and p.likelihood_clip is True
    assert p.per_image_masks
    zeta = {"inpaint_random": 0.5, "inpaint_box": 0.5, "deblur_gauss": 0.3, "deblur_motion": 0.3, "sr4": 0.3}
    assert {t: p.params("dps", t)["zeta"] for t in TASKS} == zeta
    ops = {t: make_operator(t, shape, gen(3), preset) for t in TASKS}
    assert all(op.preset == preset for op in ops.values())
    masked = ops["inpaint_random"].masked_fraction
    if isinstance(expect["fraction"], tuple):
        assert 0.3 <= masked <= 0.7
    else:
        assert masked == pytest.approx(int(256 * 256 * 0.9) / 256**2)
    box = ops["inpaint_box"]
    assert box.box[2] == 128 and box.margins == (16, 17) and int((box.mask == 0).sum()) == 128 * 128
    blur = ops["deblur_gauss"]
    assert isinstance(blur, ReflectBlur) and blur.std == expect["std"] and blur.padding == "reflect"
    assert torch.equal(blur.kernel, gaussian_filter_kernel(61, expect["std"]))
    motion = ops["deblur_motion"]
    assert isinstance(motion, ReflectBlur) and motion.kernel.shape == (61, 61) and motion.intensity == 0.5
    assert ops["sr4"].y_shape == (3, 64, 64) and ops["sr4"].factor == 4
    # circular stays one override away
    assert isinstance(make_operator("deblur_gauss", shape, gen(3), preset, padding="circular"), CircularBlur)


def test_small_preset_keeps_todays_operators():
    shape = (1, 32, 32)
    p = get_preset("small")
    assert p.steps == 100 and p.noise_on == "kept" and p.likelihood_clip is None and not p.per_image_masks
    assert p.params("dps", "inpaint_random") == {"zeta": 8.0} and p.params("mcg", "sr4") == {"zeta": 2.0}
    ops = {t: make_operator(t, shape, gen(0), "small") for t in TASKS}
    assert ops["inpaint_random"].masked_fraction == pytest.approx(int(32 * 32 * 0.9) / 1024)
    assert ops["inpaint_box"].box[2] == 16 and ops["inpaint_box"].margins == (2, 2)
    blur = ops["deblur_gauss"]
    assert isinstance(blur, CircularBlur) and torch.equal(blur.kernel, gaussian_kernel(9, 1.5))
    ref = GaussianBlur(shape, 9, 1.5)  # today's class: the same operator
    x = torch.rand(2, *shape, generator=gen(1), dtype=DT)
    assert torch.allclose(blur.A(x), ref.A(x), atol=1e-15)
    assert torch.equal(ops["deblur_motion"].kernel, MotionBlur(shape, 9, 0.5, gen(0)).kernel)
    assert ops["sr4"].y_shape == (1, 8, 8)


def test_preset_choice_and_notices():
    assert default_preset((3, 256, 256)) == "paper" and default_preset((1, 32, 32)) == "small"
    assert default_preset((3, 128, 200)) == "paper" and default_preset((3, 127, 256)) == "small"
    assert set(PRESET_TABLE) == {"paper", "dps", "small"}
    assert get_preset("dps").steps_notice(1000) is None
    msg = get_preset("dps").steps_notice(100)
    assert "'dps' was tuned for 1000 steps; running 100" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="preset"):
        get_preset("huge")
