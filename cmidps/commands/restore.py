"""``cmidps restore``: measure one image with a task (seeded), restore it with a method, save it."""
from __future__ import annotations

import warnings
from pathlib import Path

from .options import (add_cmi_arguments, add_convert_arguments, add_device_argument, add_kernel_arguments,
                          add_measurement_arguments, check_output_file, check_sampling_options, cmi_config,
                          convert_option, kernel_option, preset_steps, resolve_device, step_params)


def run(args) -> int:
    """Measure ``--image`` with ``--task`` (seeded), restore it with ``--method``, write ``--out`` (and ``--grid``)."""
    from ..data.images import image_grid, load_image, save_image
    from ..models.loading import load_prior
    from ..restore import PresetStepsWarning, measure, measurement_image, parse_method, restore

    check_sampling_options(args)  # every check before the model loads, and all before sampling
    check_output_file(args.out, "--out")
    check_output_file(args.grid, "--grid")
    device = resolve_device(args.device)
    kernel = kernel_option(args, args.task)
    base, use_cmi = parse_method(args.method)
    method = f"cmi+{base}" if (use_cmi or args.cmi) else base
    prior = load_prior(args.model, device=device, model_config=args.model_config)
    if len(prior.shape) != 3:
        raise ValueError(f"model {args.model!r} is not an image model")
    x = load_image(args.image, tuple(prior.shape), resize=args.resize,
                   convert=convert_option(args, prior.shape[0]))[None].to(device)
    params = step_params(args)
    op, y = measure(x, args.task, seed=args.seed, sigma_y=args.sigma_y, preset=args.preset, kernel=kernel)
    steps = preset_steps(args, prior.shape)  # the notice, once, if --steps differs from the preset's
    with warnings.catch_warnings():  # ... so not restore's warning too
        warnings.simplefilter("ignore", PresetStepsWarning)
        out = restore(prior, op, y, method, steps=steps, seed=args.seed, sigma_y=args.sigma_y,
                      cmi=cmi_config(args), params=params, task=args.task, progress=not args.quiet)
    save_image(out[0], args.out)
    print(f"wrote {args.out}")
    if args.grid:
        grid = image_grid([[x[0], measurement_image(op, y, prior.shape)[0], out[0]]],
                          col_labels=["truth", "measurement", method], scale=max(1, 128 // prior.shape[-1]))
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        try:
            grid.save(args.grid)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--grid {args.grid!r}: could not write it ({exc}); the restoration is in {args.out}") \
                from None
        print(f"wrote {args.grid}")
    return 0


def register(sub) -> None:
    """Add ``restore`` to the ``cmidps`` subparsers (``func=run``)."""
    from ..operators import TASKS

    p = sub.add_parser("restore", help="restore one image (inpainting, deblurring, super-resolution)",
                       description="Measure IMAGE with TASK (seeded), then restore it with METHOD.")
    p.add_argument("--image", required=True, help="input image (PNG/JPEG); the clean image to be measured")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--method", default="dps", help="dps, pigdm, mcg, dsg, or cmi+X for any of them")
    p.add_argument("--model", default="bundled:mnist32",
                   help="bundled:mnist32, an ADM .pt checkpoint (ffhq_10m.pt, 256x256_diffusion_uncond.pt), "
                        "or a diffusers UNet2DModel folder")
    p.add_argument("--model-config", default=None, metavar="ffhq|imagenet|FILE.json",
                   help="architecture of a .pt checkpoint or bare .safetensors file: a named ADM "
                        "configuration or a JSON of create_model kwargs (default: guessed from its keys)")
    p.add_argument("--steps", type=int, default=None,
                   help="respaced reverse steps (default: the preset's, 1000 for paper/dps, 100 for small)")
    p.add_argument("--seed", type=int, default=0)
    add_measurement_arguments(p)
    add_kernel_arguments(p)
    p.add_argument("--resize", action="store_true", help="resize an image of the wrong size")
    add_convert_arguments(p)
    add_device_argument(p)
    p.add_argument("--out", required=True, help="output PNG of the restoration")
    p.add_argument("--grid", default=None, help="also write a truth | measurement | restoration PNG here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cmi_arguments(p)
    p.set_defaults(func=run, interrupted="interrupted: restore writes its image only when done, so nothing was written")
