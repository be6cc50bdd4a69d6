"""``cmidps bench speed``: the cost of a sampler step against the bare network, in one run.

Everything is timed in the same process, interleaved, and reported as ratios to the bare
network forward+backward, because machines here are noisy: absolute milliseconds move between
runs, ratios much less. A "step" is timed as a whole reverse-diffusion run of ``timed_steps``
steps divided by its length (so loop overhead is included), median over ``repeats`` after a warm-up.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ..cmi import CMIConfig
from ..drivers import DRIVERS
from ..restore import measure, parse_method
from ..samplers import make_rule
from ..sampling import sample

DEFAULT_METHODS = ("dps", "pigdm", "mcg", "dsg")


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak(device) -> bool:
    """Reset the peak-memory counter; False where that is not possible (then no peak is reported)."""
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return True
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= 1.02 * rss


def _peak_mb(device) -> float | None:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = _status_kb("VmHWM")
    return None if hwm is None else hwm / 1024  # whole process (weights included)


def _median_seconds(fn, repeats: int, device) -> float:
    fn()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def network_fwd_bwd(prior, batch: int, device, repeats: int) -> float:
    """Seconds for one forward and one backward (to the input) of the bare denoiser."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *prior.shape), generator=g).to(device)
    v = torch.randn((batch, *prior.shape), generator=g).to(device)
    t = prior.schedule.timesteps[len(prior.schedule) // 2]

    def run():
        xx = x.detach().requires_grad_(True)
        eps, _ = prior.eps(xx, t)
        torch.autograd.grad((eps * v).sum(), xx)

    return _median_seconds(run, repeats, device)


def method_step(prior, op, y, method: str, cmi: CMIConfig | None, timed_steps: int, device, repeats: int,
                params: dict | None = None) -> tuple[float, float | None, float]:
    """(seconds per step, peak memory in MB, network evaluations per step) of one method."""
    base, use_cmi = parse_method(method)
    nfe0 = getattr(prior, "nfe", 0)
    if base in DRIVERS:  # DAPS, RED-diff (cmidps.drivers): their own drivers, one "step" per level / Adam step
        def run():
            DRIVERS[base](prior, op, y, steps=timed_steps, generator=torch.Generator().manual_seed(0), **(params or {}))
    else:
        rule = make_rule(base, **(params or {}))

        def run():
            sample(prior, op, y, rule, timed_steps, torch.Generator().manual_seed(0), cmi=cmi if use_cmi else None,
                   cmi_generator=torch.Generator().manual_seed(1), progress=False)

    reset = _reset_peak(device)
    sec = _median_seconds(run, repeats, device) / timed_steps
    nfe = (getattr(prior, "nfe", 0) - nfe0) / ((repeats + 1) * timed_steps)
    return sec, _peak_mb(device) if reset else None, nfe


def bench_speed(prior, batch: int = 1, timed_steps: int = 5, repeats: int = 3, task: str = "sr4",
                methods=DEFAULT_METHODS, estimators=("lowrank", "hutchinson"), probes=(1, 4),
                kinv: str = "isotropic", image_batches=(1, 4, 16), steps: int = 100, device="cpu",
                progress: bool = True, steps_list=()) -> dict:
    from tqdm.auto import tqdm

    x = torch.rand((batch, *prior.shape), generator=torch.Generator().manual_seed(0)).to(device)
    op, y = measure(x, task, seed=0)
    jobs = [(m, None) for m in methods]
    for m in [m for m in methods if m not in DRIVERS]:  # CMI does not fit DAPS and RED-diff (docs/solvers.md)
        for est in estimators:
            for r in probes:
                jobs.append((f"cmi+{m}", CMIConfig(estimator=est, probes=r, kinv=kinv)))
    bar = tqdm(total=len(jobs) + 1 + 2 * len(image_batches) + 2 * len(steps_list), desc="bench speed",
               disable=not progress)
    net = network_fwd_bwd(prior, batch, device, repeats)
    bar.update()
    out = {"network_fwd_bwd_ms": 1e3 * net, "methods": {}}
    for method, cfg in jobs:
        key = method if cfg is None else (
            method if (cfg.estimator, cfg.probes) == ("lowrank", 1) else f"{method}[{cfg.estimator},r={cfg.probes}]")
        sec, mem, nfe = method_step(prior, op, y, method, cfg, timed_steps, device, repeats)
        out["methods"][key] = {"ms_per_step": 1e3 * sec, "ratio_to_network": sec / net,
                               "peak_mem_mb": mem, "network_evals_per_step": nfe}
        bar.update()
    for key, entry in out["methods"].items():
        if key.startswith("cmi+"):
            base = key[4:].split("[")[0]
            entry["ratio_to_baseline"] = entry["ms_per_step"] / out["methods"][base]["ms_per_step"]
    ips = {}
    for method in ("dps", "cmi+dps"):
        ips[method] = {}
        for b in image_batches:
            xb = torch.rand((b, *prior.shape), generator=torch.Generator().manual_seed(1)).to(device)
            opb, yb = measure(xb, task, seed=0)
            sec, _, _ = method_step(prior, opb, yb, method, CMIConfig(), timed_steps, device, 1)
            ips[method][str(b)] = b / (sec * steps)
            bar.update()
    full = {}
    for method in ("dps", "cmi+dps") if steps_list else ():
        full[method] = {}
        for n in steps_list:  # whole restorations: seconds against the number of steps
            sec, _, _ = method_step(prior, op, y, method, CMIConfig(), n, device, 1)
            full[method][str(n)] = sec * n
            bar.update()
    bar.close()
    out["images_per_second"] = ips
    if full:
        out["seconds_per_restoration"] = full
    out["config"] = {"model": getattr(prior, "name", type(prior).__name__), "shape": list(prior.shape),
                     "batch": batch, "task": task, "timed_steps": timed_steps, "repeats": repeats,
                     "steps_for_images_per_second": steps, "kinv": kinv, "device": str(device)}
    out["machine"] = machine_info(device)
    return out


def machine_info(device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def random_adm_prior(image_size: int, device="cpu"):
    """The FFHQ ADM architecture (learned sigma) at ``image_size`` with random weights."""
    from ..models.unet import FFHQ_256, create_model
    from ..prior import NetworkPrior

    torch.manual_seed(0)
    kw = dict(FFHQ_256, image_size=image_size, channel_mult="" if image_size in (32, 64, 128, 256, 512)
              else FFHQ_256["channel_mult"])
    net = create_model(**kw).eval()
    with torch.no_grad():  # ADM zero-initialises its output layer; give it weights so gradients are real
        for p in net.out.parameters():
            p.normal_(0.0, 0.02)
    net.requires_grad_(False)
    return NetworkPrior(net, (3, image_size, image_size), learn_sigma=True, name=f"adm-random:{image_size}").to(device)


def format_table(res: dict) -> str:
    lines = [f"bare network forward+backward: {res['network_fwd_bwd_ms']:.1f} ms "
             f"(batch {res['config']['batch']}, {res['config']['model']})",
             f"{'method':<28}{'ms/step':>10}{'x network':>11}{'x baseline':>12}{'evals/step':>12}{'peak MB':>10}"]
    for key, e in res["methods"].items():
        mem = "-" if e["peak_mem_mb"] is None else f"{e['peak_mem_mb']:.0f}"
        base = f"{e['ratio_to_baseline']:.2f}" if "ratio_to_baseline" in e else "-"
        lines.append(f"{key:<28}{e['ms_per_step']:>10.1f}{e['ratio_to_network']:>11.2f}{base:>12}"
                     f"{e['network_evals_per_step']:>12.2f}{mem:>10}")
    lines.append(f"images per second ({res['config']['steps_for_images_per_second']} steps):")
    for m, d in res["images_per_second"].items():
        lines.append(f"  {m:<10}" + "  ".join(f"batch {b}: {v:.3f}" for b, v in d.items()))
    for m, d in res.get("seconds_per_restoration", {}).items():
        lines.append(f"  seconds per restoration, {m:<8}" + "  ".join(f"{n} steps: {v:.2f}" for n, v in d.items()))
    return "\n".join(lines)


def run_speed(args) -> int:
    from ..models.loading import load_prior

    results = {}
    specs = [args.model] if not args.image_sizes else [f"adm-random:{s}" for s in args.image_sizes.split(",")]
    for spec in specs:
        prior = (random_adm_prior(int(spec.split(":")[1]), args.device) if spec.startswith("adm-random:")
                 else load_prior(spec, device=args.device))
        res = bench_speed(prior, batch=args.batch, timed_steps=args.timed_steps, repeats=args.repeats,
                          task=args.task, methods=tuple(args.methods.split(",")),
                          estimators=tuple(args.estimators.split(",")),
                          probes=tuple(int(r) for r in args.probes.split(",")), kinv=args.kinv,
                          image_batches=tuple(int(b) for b in args.image_batches.split(",")), steps=args.steps,
                          device=args.device, progress=not args.quiet,
                          steps_list=tuple(int(n) for n in args.steps_list.split(",")) if args.steps_list else ())
        print(format_table(res))
        results[spec] = res
    out = results[specs[0]] if len(specs) == 1 else {"by_model": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


def add_speed_parser(bench) -> None:
    import argparse

    p = bench.add_parser("speed", help="cost per step of every method against the bare network",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="bundled:mnist32")
    p.add_argument("--image-sizes", default=None,
                   help="instead of --model: the ADM (FFHQ) architecture at random weights at these sizes, e.g. 32,64")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=100, help="reverse steps assumed for images per second")
    p.add_argument("--timed-steps", type=int, default=5, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--task", default="sr4")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--estimators", default="lowrank,hutchinson")
    p.add_argument("--probes", default="1,4")
    p.add_argument("--kinv", default="isotropic", choices=["isotropic", "cg"])
    p.add_argument("--image-batches", default="1,4,16")
    p.add_argument("--steps-list", default="", help="also time whole restorations with these step counts, e.g. 10,50")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_speed)
