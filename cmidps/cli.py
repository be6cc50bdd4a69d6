"""The ``cmidps`` command line: restore, demo, train, bench."""
from __future__ import annotations

import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import sys
from pathlib import Path


def add_cmi_arguments(p: argparse.ArgumentParser) -> None:
    """The CMI plug-in's options, shared by every command that samples."""
    from .cmi import ESTIMATORS, ETA_SCHEDULES, KINV

    g = p.add_argument_group("CMI plug-in (Algorithm 1, line 8); on for cmi+X methods or with --cmi")
    g.add_argument("--cmi", choices=ESTIMATORS, default=None,
                   help="turn CMI on with this gradient estimator (default for cmi+X methods: lowrank)")
    g.add_argument("--eta", type=float, default=None,
                   help="CMI step size eta (default 1e-3, tuned for the bundled 32x32 prior)")
    g.add_argument("--probes", type=int, default=1, help="probes r per step")
    g.add_argument("--kinv", choices=KINV, default="isotropic",
                   help="K^-1: isotropic Sigma_post ~ r_t^2 I (closed form) or cg (exact, denoiser JVPs)")
    g.add_argument("--cg-iters", type=int, default=10)
    g.add_argument("--eta-schedule", choices=ETA_SCHEDULES, default="constant")


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """Noise, task preset and the samplers' step sizes, shared by restore and bench images."""
    from .restore import SIGMA_Y

    p.add_argument("--sigma-y", type=float, default=SIGMA_Y, help="measurement noise std in [-1, 1]")
    p.add_argument("--preset", default=None, choices=["paper", "dps", "small"],
                   help="task settings (default: paper for >= 128 px images, small otherwise)")
    p.add_argument("--zeta", type=float, default=None, help="DPS/MCG step size (default per task)")
    p.add_argument("--weight", type=float, default=None, help="PiGDM guidance weight")
    p.add_argument("--gamma", type=float, default=None, help="DSG guidance rate")


def cmi_config(args):
    from .cmi import CMIConfig

    return CMIConfig(eta=CMIConfig.eta if args.eta is None else args.eta, estimator=args.cmi or "lowrank",
                     probes=args.probes, kinv=args.kinv, cg_iters=args.cg_iters, eta_schedule=args.eta_schedule)


def _restore(args) -> int:
    from .images import image_grid, load_image, save_image
    from .models.loading import load_prior
    from .restore import measure, measurement_image, parse_method, restore

    base, use_cmi = parse_method(args.method)
    method = f"cmi+{base}" if (use_cmi or args.cmi) else base
    prior = load_prior(args.model, device=args.device, model_config=args.model_config)
    if len(prior.shape) != 3:
        raise ValueError(f"model {args.model!r} is not an image model")
    x = load_image(args.image, tuple(prior.shape), resize=args.resize)[None].to(args.device)
    params = {k: v for k, v in (("zeta", args.zeta), ("weight", args.weight), ("gamma", args.gamma)) if v is not None}
    op, y = measure(x, args.task, seed=args.seed, sigma_y=args.sigma_y, preset=args.preset)
    out = restore(prior, op, y, method, steps=args.steps, seed=args.seed, sigma_y=args.sigma_y,
                  cmi=cmi_config(args), params=params, task=args.task, progress=not args.quiet)
    save_image(out[0], args.out)
    print(f"wrote {args.out}")
    if args.grid:
        grid = image_grid([[x[0], measurement_image(op, y, prior.shape)[0], out[0]]],
                          col_labels=["truth", "measurement", method], scale=max(1, 128 // prior.shape[-1]))
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.grid)
        print(f"wrote {args.grid}")
    return 0


def _add_restore(sub) -> None:
    from .operators import TASKS

    p = sub.add_parser("restore", help="restore one image (inpainting, deblurring, super-resolution)",
                       description="Measure IMAGE with TASK (seeded), then restore it with METHOD.")
    p.add_argument("--image", required=True, help="input image (PNG/JPEG); the clean image to be measured")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--method", default="dps", help="dps, pigdm, mcg, dsg, or cmi+X for any of them")
    p.add_argument("--model", default="bundled:mnist32",
                   help="bundled:mnist32, an ADM .pt checkpoint (ffhq_10m.pt, 256x256_diffusion_uncond.pt), "
                        "or a diffusers UNet2DModel folder")
    p.add_argument("--model-config", default=None, choices=["ffhq", "imagenet"],
                   help="ADM configuration of a .pt checkpoint (default: guessed from its keys)")
    p.add_argument("--steps", type=int, default=100, help="respaced reverse steps (the paper: 1000)")
    p.add_argument("--seed", type=int, default=0)
    add_measurement_arguments(p)
    p.add_argument("--resize", action="store_true", help="resize an image of the wrong size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output PNG of the restoration")
    p.add_argument("--grid", default=None, help="also write a truth | measurement | restoration PNG here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cmi_arguments(p)
    p.set_defaults(func=_restore)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="cmidps", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cmidps {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_restore(sub)
    from . import demo, train

    demo.register(sub)
    train.register(sub)
    _add_bench(sub)
    return parser


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: gmm (exact posterior), images, speed")
    bench = p.add_subparsers(dest="bench", required=True)
    from .bench.gmm import add_gmm_parser
    from .bench.images import add_images_parser
    from .bench.speed import add_speed_parser

    add_gmm_parser(bench)
    add_images_parser(bench)
    add_speed_parser(bench)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted (a bench run resumes where it stopped: rerun the same command)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Known failure modes (unknown task, shape mismatch, missing checkpoint, divergence) get one
        # clear line instead of a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
