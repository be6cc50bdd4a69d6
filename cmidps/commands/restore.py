"""``cmidps restore``: restore a measurement you have (``--measurement``), or measure a clean image and
restore that (``--image``); one file or a whole folder; a run record beside every output.

File conventions (docs/restore_your_own.md): images in [0, 1] (8-bit PNG/JPEG); a mask is white (255)
where a pixel was observed and black (0) where it is missing; a kernel is convolved (``--kernel-as-dps``
for one the DPS code correlates with); the ``sr4`` measurement is a quarter of the model's size on each
side; ``--sigma-y`` is the noise standard deviation in the model's [-1, 1] range (twice its value in
[0, 1] image units), or ``auto``.

This module: the parser, the run and one batch. The inputs and their checks are in
:mod:`cmidps.commands.restore_inputs`; run records, ``--config``, resuming and scores in
:mod:`cmidps.commands.restore_record`.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from . import restore_record as _record
from .options import (add_cmi_arguments, add_convert_arguments, add_device_argument, add_kernel_arguments,
                      add_measurement_arguments, cmi_config, convert_option, positive_int, resolve_device,
                      check_step_overrides, method_params)
from .restore_inputs import (NONLINEAR, RECORD_KIND, Item, RestoreError, _batches, _check_items,  # noqa: F401
                             _side_files, check_outputs, check_request, plan, read_mask, sigma_y_value)
from .restore_record import (SIGMA_UNIT, Scorer, _absolute_options, _command, _difference, _jsonable,  # noqa: F401
                             _print_metrics, _read_record, _same_settings, _sha256, _summary, _versions, apply_config,
                             model_files)


def register(sub) -> None:
    """Add ``restore`` to the ``cmidps`` subparsers (``func=run``)."""
    base = sub._parser_class

    class _RecordingParser(base):
        """The restore parser, keeping the arguments it parsed (``args.restore_argv``): the run record's
        command line, and the base that ``--config`` re-parses over."""

        def parse_known_args(self, args=None, namespace=None):
            ns, extras = super().parse_known_args(args, namespace)
            ns.restore_argv = list(sys.argv[2:] if args is None else args)
            return ns, extras

    sub._parser_class = _RecordingParser
    try:
        p = _add_parser(sub)
    finally:
        sub._parser_class = base
    _record._PARSER = p


def _add_parser(sub):
    from ..operators import TASKS

    p = sub.add_parser(
        "restore", help="restore a measurement (or measure a clean image and restore it); one file or a folder",
        description="Restore Y (--measurement: a blurred, masked or low-resolution image you have) with TASK's "
                    "operator, or measure a clean IMAGE (--image, seeded) and restore that. Either may be a "
                    "folder (every image in it; resumable). A run record NAME.json is written beside each "
                    "output; --config NAME.json reruns it. Conventions: docs/restore_your_own.md.")
    src = p.add_argument_group("input (one of --measurement, --image, or --config)")
    src.add_argument("--measurement", default=None, metavar="Y.png|DIR",
                     help="the measurement y as an image in [0, 1]: inpainting: the image with holes (their values "
                          "are ignored), deblurring: the blurred image, sr4: the low-resolution image (a quarter "
                          "of the model's size on each side)")
    src.add_argument("--image", default=None, metavar="X.png|DIR",
                     help="a clean image to measure with --task (seeded) and restore (the benchmark case)")
    src.add_argument("--config", default=None, metavar="NAME.json|NAME.yaml",
                     help="rerun a run record (or a file of the same keys); options given here override it")
    p.add_argument("--task", default=None, choices=TASKS + NONLINEAR, help="the measurement's operator")
    p.add_argument("--mask", default=None, metavar="M.png|DIR",
                   help="inpainting: white (255) = observed, black (0) = missing, nothing else; the model's size. "
                        "A folder: one mask per image, by file name")
    p.add_argument("--truth", default=None, metavar="X.png|DIR",
                   help="the clean image(s): print PSNR/SSIM (LPIPS where its weights are present) of the "
                        "restoration and of A^+ y, and write them into the run record (--image is its own truth)")
    p.add_argument("--save-measurement", default=None, metavar="Y.png|DIR",
                   help="with --image: also write the simulated y (and Y_mask.png / Y_kernel.npy) so that "
                        "--measurement replays the run")
    p.add_argument("--method", default="dps", help="dps, pigdm, mcg, dsg, ddnm, ddnm_plus, ddnm_svd, ddrm, "
                                                   "diffpir, tmpd, daps, reddiff; cmi+X turns CMI on for any "
                                                   "of them but daps and reddiff (docs/solvers.md)")
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
    for action in p._actions:  # restore's --sigma-y also takes 'auto'; default: the preset's
        if action.dest == "sigma_y":
            action.type, action.default, action.metavar = sigma_y_value, None, "S|auto"
            action.help = (f"measurement noise: {SIGMA_UNIT}; default the preset's (0.05); 'auto': estimated "
                           "from each measurement (scikit-image's estimate_sigma), printed")
    add_kernel_arguments(p)
    for action in p._actions:
        if action.dest == "kernel":
            action.metavar = "K.npy|K.png|DIR"
            action.help = ("blur kernel (2-D, odd sides, >= 0; normalised to sum 1), convolved; deblur_gauss "
                           "without one uses the preset's Gaussian, deblur_motion needs one. A folder: one per "
                           "image, by file name")
    p.add_argument("--resize", action="store_true", help="resize an --image of the wrong size (never a measurement)")
    add_convert_arguments(p)
    add_device_argument(p)
    p.add_argument("--batch", type=positive_int, default=4, help="images per batch in a folder (default 4)")
    p.add_argument("--out", default=None, metavar="OUT.png|DIR",
                   help="the restoration (a folder when the input is a folder); OUT.json beside it is the run record")
    p.add_argument("--grid", default=None, help="one image only: also write truth | measurement | A^+ y | restoration")
    p.add_argument("--overwrite", action="store_true",
                   help="in a folder: redo images finished by a run with other settings (else an error)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cmi_arguments(p)
    p.set_defaults(func=run, interrupted="interrupted: restore writes each image and its record only when "
                                         "done, so nothing partial was written (a rerun of a folder resumes)")
    return p


# Option names that are not settings of a run (left out of the record's "options").


def run(args) -> int:
    """Restore ``--measurement`` (or measure and restore ``--image``), one file or a folder; write
    ``--out``, a run record beside each output, and the summary of a folder."""
    if getattr(args, "config", None):
        args = apply_config(args)
    check_request(args)
    items, folder = plan(args)
    check_outputs(args, items, folder)
    todo, done = [], []
    for it in items:
        if folder and it.out.is_file() and it.record.is_file():
            previous = _read_record(it.record)
            same = previous is not None and _same_settings(previous, args, it)
            if same:
                done.append(it)
                it.metrics = previous.get("metrics") or {}
                continue
            if not args.overwrite:
                raise RestoreError(f"{str(it.out)!r} was written by a run with other settings "
                                   f"({_difference(previous, args, it)}); pass --overwrite to redo it, or "
                                   "choose another --out folder")
        todo.append(it)
    device = resolve_device(args.device)
    from ..restore import parse_method

    base, use_cmi = parse_method(args.method)
    method = f"cmi+{base}" if (use_cmi or args.cmi) else base
    check_step_overrides(args, [method])  # a --step / --zeta that this method does not take: an error, not ignored

    from ..models.loading import load_prior

    prior = load_prior(args.model, device=device, model_config=args.model_config)
    if len(prior.shape) != 3:
        raise RestoreError(f"model {args.model!r} is not an image model")
    shape = tuple(prior.shape)
    _check_items(args, items, shape)  # every file read and checked before the first network call

    from ..presets import get_preset

    preset = get_preset(args.preset, shape)
    steps = args.steps if args.steps is not None else preset.steps
    if args.steps is not None and preset.steps_notice(args.steps):
        print(preset.steps_notice(args.steps), file=sys.stderr)
    model_path, model_sha = model_files(args.model)
    ctx = dict(args=args, prior=prior, shape=shape, preset=preset, steps=steps, method=method, base=base,
               use_cmi=(use_cmi or bool(args.cmi)), device=device, model=(model_path, model_sha),
               scorer=None, folder=folder)
    if any(it.truth is not None for it in items) or args.image is not None:
        ctx["scorer"] = Scorer(device)

    if folder:
        from .outputs import write_json

        Path(args.out).expanduser().mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out).expanduser() / "run.json",
                   {"kind": RECORD_KIND + " (folder)", "command": _command(args),
                    "options": _absolute_options(args, None), "images": [it.source.name for it in items]})
        if done:
            print(f"{len(done)} of {len(items)} images already restored in {args.out} (skipped)", file=sys.stderr)
    batches = _batches(args, todo)
    bar = None
    if folder and not args.quiet and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"restore {method}", unit="image", file=sys.stderr)
    try:
        for batch in batches:
            _restore_batch(ctx, batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if ctx["scorer"] is not None and ctx["scorer"].lpips_note and args.truth is not None and not args.quiet:
        print(ctx["scorer"].lpips_note, file=sys.stderr)  # asked for scores: say why one is missing
    if folder:
        _summary(args, items)
    return 0


def _restore_batch(ctx: dict, batch: list[Item]) -> None:
    import numpy as np
    import torch

    from ..data.images import load_image, to_pil
    from ..operators import make_operator, preset_params
    from ..operators.motion import load_kernel
    from ..prior import from_model
    from ..restore import (PresetStepsWarning, bicubic_upsample, estimate_sigma_y, measure, measurement_from_image,
                           measurement_image, restore, simple_inverse)
    from .outputs import save_pil, write_json

    args, prior, shape, preset = ctx["args"], ctx["prior"], ctx["shape"], ctx["preset"]
    device, task = ctx["device"], args.task
    t0 = time.perf_counter()
    convert = convert_option(args, shape[0])
    keys = [it.key for it in batch]
    kernel = None
    if batch[0].kernel is not None:
        kernel = load_kernel(batch[0].kernel, flip=args.kernel_as_dps)
    masks = [read_mask(it.mask, shape) for it in batch] if batch[0].mask is not None else None
    mask = None
    if masks is not None:
        mask = masks[0] if len(masks) == 1 or all(torch.equal(m, masks[0]) for m in masks) else torch.stack(masks)
    sigma_source = "given" if args.sigma_y is not None else "preset"
    truth = None
    if args.image is not None:  # the benchmark case: measure the clean image, seeded
        x = torch.stack([load_image(it.source, shape, resize=args.resize, convert=convert) for it in batch]).to(device)
        sigma_y = preset.sigma_y if args.sigma_y is None else float(args.sigma_y)
        op, y = measure(x, task, seed=args.seed, sigma_y=sigma_y, preset=preset.name, items=keys, kernel=kernel,
                        mask=mask)
        truth = x
    else:
        extra = {}
        if kernel is not None:
            extra["kernel"] = kernel
        op = make_operator(task, shape, preset=preset.name, mask=mask, **extra).to(device)
        y01 = torch.stack([load_image(it.source, tuple(op.y_shape), convert=convert) for it in batch]).to(device)
        y = measurement_from_image(y01, op)
        if args.sigma_y == "auto":
            sigma_y = estimate_sigma_y(y01[0], None if masks is None else masks[0])
            sigma_source = "auto (skimage.restoration.estimate_sigma, x2 for the [-1, 1] range)"
            print(f"{batch[0].source.name}: estimated sigma_y = {sigma_y:.4g} in the model's [-1, 1] range "
                  f"({sigma_y / 2:.4g} in [0, 1] units, {sigma_y / 2 * 255:.3g} of 255 grey levels)", file=sys.stderr)
        else:
            sigma_y = preset.sigma_y if args.sigma_y is None else float(args.sigma_y)
    if any(it.truth is not None for it in batch):
        truth = torch.stack([load_image(it.truth, shape, convert=convert) for it in batch]).to(device)
    params = method_params(args, ctx["method"])  # the step sizes given on the command line (--zeta, --step METHOD=VALUE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetStepsWarning)
        out = restore(prior, op, y, ctx["method"], steps=ctx["steps"], seed=args.seed, sigma_y=sigma_y,
                      cmi=cmi_config(args), params=params, task=task, items=keys,
                      progress=not (args.quiet or ctx["folder"]))
    seconds = (time.perf_counter() - t0) / len(batch)
    pinv = simple_inverse(op, y)
    bicubic = bicubic_upsample(op, y) if task == "sr4" else None
    # settings resolved once for the records
    if mask is not None:
        op_settings = {"mask": "from file"}
    elif kernel is not None:
        op_settings = {k: v for k, v in preset_params(task, shape, preset.name).items()
                       if k not in ("kernel", "kernel_size", "std", "intensity")}
        op_settings.update(kernel="from file", kernel_shape=list(kernel.shape), kernel_as_dps=bool(args.kernel_as_dps))
    else:
        op_settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preset_params(task, shape, preset.name).items()}
    step_sizes = preset.params(ctx["base"], task)
    step_sizes.update(params)
    cmi = asdict(cmi_config(args)) if ctx["use_cmi"] else None
    for b, it in enumerate(batch):
        metrics = {}
        if truth is not None and ctx["scorer"] is not None:
            metrics["restoration"] = ctx["scorer"](out[b:b + 1], truth[b:b + 1])
            metrics["A_pinv_y"] = ctx["scorer"](pinv[b:b + 1], truth[b:b + 1])
            if bicubic is not None:
                metrics["bicubic"] = ctx["scorer"](bicubic[b:b + 1], truth[b:b + 1])
        it.metrics = metrics
        if it.save_y is not None:  # the simulated y (and its mask / kernel), replayable with --measurement
            save_pil(to_pil(from_model(y[b])), it.save_y)
            mpath, kpath = _side_files(it.save_y, task)
            if mpath is not None and isinstance(op, torch.nn.Module) and hasattr(op, "mask"):
                m = op.mask[b if op.per_sample else 0, 0] if op.mask.ndim == 4 else op.mask[0]
                from PIL import Image

                save_pil(Image.fromarray((m.cpu().numpy() * 255).astype(np.uint8), "L"), mpath)
            if kpath is not None:
                from .outputs import atomic_path

                k = getattr(op, "kernel", None)
                with atomic_path(kpath) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, k.detach().cpu().numpy().astype(np.float64))
        save_pil(to_pil(out[b]), it.out)
        files = {"source": str(it.source.absolute()), "source_sha256": _sha256(it.source),
                 "mask": None if it.mask is None else str(Path(it.mask).absolute()),
                 "kernel": None if it.kernel is None else str(Path(it.kernel).absolute()),
                 "kernel_sha256": None if it.kernel is None else _sha256(Path(it.kernel)),
                 "truth": None if it.truth is None else str(Path(it.truth).absolute())}
        record = {
            "kind": RECORD_KIND, "record_version": 1,
            "command": _command(args),
            "options": _absolute_options(args, it if ctx["folder"] else None),
            "resolved": {
                "case": "simulated (--image measured, seeded)" if args.image is not None else "measurement",
                "task": task, "preset": preset.name, "operator": _jsonable(op_settings),
                "noise_on": preset.noise_on, "method": ctx["method"], "cmi": cmi,
                "step_sizes": step_sizes, "steps": ctx["steps"], "seed": args.seed, "item": it.key,
                "sigma_y": sigma_y, "sigma_y_unit": SIGMA_UNIT, "sigma_y_source": sigma_source,
                "likelihood_clip": preset.likelihood_clip, "ddim_eta": None, "image_shape": list(shape),
                "measurement_shape": list(op.y_shape)},
            "files": files,
            "model": {"spec": args.model, "path": ctx["model"][0], "sha256": ctx["model"][1],
                      "model_config": args.model_config},
            "versions": _versions(), "device": str(device), "seconds": round(seconds, 3),
            "metrics": metrics,
            "metrics_skipped": (ctx["scorer"].lpips_note if metrics and ctx["scorer"] is not None else None),
        }
        write_json(it.record, _jsonable(record))
        if not ctx["folder"]:
            print(f"wrote {it.out} (run record {it.record})")
            if metrics:
                _print_metrics(metrics)
    if args.grid and not ctx["folder"]:
        from ..data.images import image_grid

        cols = ([truth[0]] if truth is not None else []) + [measurement_image(op, y, shape)[0], pinv[0], out[0]]
        labels = (["truth"] if truth is not None else []) + ["measurement", "A^+ y", ctx["method"]]
        grid = image_grid([cols], col_labels=labels, scale=max(1, 128 // shape[-1]))
        save_pil(grid, args.grid)
        print(f"wrote {args.grid}")
