"""``cmidps bench speed``: the cost of a sampler step against the bare network, in one run.

Everything is timed in the same process, interleaved, and reported as ratios to the bare
network forward+backward, because machines here are noisy: absolute milliseconds move between
runs, ratios much less. A "step" is timed as a whole reverse-diffusion run of ``timed_steps``
steps divided by its length (so loop overhead is included), median over ``repeats`` after a warm-up.
Each time is taken twice: wall clock and the process's CPU time (all threads). On a shared machine the
wall clock carries other processes' load; CPU-time ratios carry much less of it (``cpu_*`` keys).

``--phases`` also times the parts of one DPS and one CMI+DPS step (forward with a graph, the CMI
objective's vector-Jacobian product with a graph, the fused final backward) at the middle of the
schedule; ``--device auto`` takes cuda when present; ``--amp bf16`` runs the network under autocast.

``--cmi-grad fd,autodiff`` times every CMI job with each gradient (:class:`~cmidps.cmi.CMIConfig` ``grad``)
in the same run; ``--check-grad`` adds the relative difference of the fd and central gradients against
autodiff on the timed network (:func:`gradient_errors`), so a user sees the accuracy on their own model.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ..cmi import GRADS, CMIConfig, fd_steps
from ..commands.outputs import check_distinct, check_output_file, is_json_with, write_json
from ..methods.drivers import DRIVERS
from ..restore import measure, parse_method
from ..methods.samplers import make_rule
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


def resolve_device(device: str) -> str:
    """``auto``: cuda when torch sees a GPU, else cpu; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _timed(fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _median_times(fn, repeats: int, device) -> tuple[float, float]:
    """Median (wall, CPU) seconds over ``repeats`` calls after a warm-up call."""
    fn()  # warm-up (allocations, lazy init)
    times = [_timed(fn, device) for _ in range(repeats)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def _median_seconds(fn, repeats: int, device) -> float:
    return _median_times(fn, repeats, device)[0]


def network_fwd_bwd(prior, batch: int, device, repeats: int, amp=None) -> tuple[float, float]:
    """(wall, CPU) seconds for one forward and one backward (to the input) of the bare denoiser."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *prior.shape), generator=g).to(device)
    v = torch.randn((batch, *prior.shape), generator=g).to(device)
    t = prior.schedule.timesteps[len(prior.schedule) // 2]

    def run():
        xx = x.detach().requires_grad_(True)
        with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
            eps, _ = prior.eps(xx, t)
        torch.autograd.grad((eps.float() * v).sum(), xx)

    return _median_times(run, repeats, device)


def method_step(prior, op, y, method: str, cmi: CMIConfig | None, timed_steps: int, device, repeats: int,
                params: dict | None = None, amp=None, cpu: bool = False) -> tuple:
    """(seconds per step, peak memory in MB, network evaluations per step) of one method, and with
    ``cpu`` the process CPU seconds per step as a fourth entry."""
    base, use_cmi = parse_method(method)
    nfe0 = getattr(prior, "nfe", 0)
    if base in DRIVERS:  # DAPS, RED-diff (cmidps.drivers): their own drivers, one "step" per level / Adam step
        def run():
            DRIVERS[base](prior, op, y, steps=timed_steps, generator=torch.Generator().manual_seed(0), **(params or {}))
    else:
        rule = make_rule(base, **(params or {}))

        def run():
            sample(prior, op, y, rule, timed_steps, torch.Generator().manual_seed(0), cmi=cmi if use_cmi else None,
                   cmi_generator=torch.Generator().manual_seed(1), progress=False, amp=amp)

    reset = _reset_peak(device)
    wall, cpu_s = _median_times(run, repeats, device)
    nfe = (getattr(prior, "nfe", 0) - nfe0) / ((repeats + 1) * timed_steps)
    out = (wall / timed_steps, _peak_mb(device) if reset else None, nfe)
    return out + (cpu_s / timed_steps,) if cpu else out


def step_phases(prior, op, y, cfg: CMIConfig, device, repeats: int, zeta: float = 1.0, amp=None) -> dict:
    """Milliseconds (wall and CPU) of the parts of one DPS and one CMI+DPS step at the middle of a
    100-step schedule, with the loop's likelihood clip: the forward with a graph (network, Tweedie,
    clamp), the CMI objective (probes, K^-1, one vector-Jacobian product with a graph per probe) and
    the final backward (DPS: one backward; CMI+DPS: the fused double backward of
    ``eta cmi_objective + <x0_lik, v>``, as :meth:`cmidps.sampling.StepState.guided` takes it)."""
    from ..cmi import cmi_objective
    from ..diffusion import x0_from_eps

    c = prior.schedule.respace(100).at(50)
    x0 = torch.randn((y.shape[0], *prior.shape), generator=torch.Generator().manual_seed(2)).to(device)
    clip = bool(getattr(prior, "clip_x0", False))
    kind = torch.device(device).type
    res: dict[str, list] = {}

    def timed(name, fn):
        out = None

        def call():
            nonlocal out
            out = fn()
        w, cp = _timed(call, device)
        res.setdefault(name, []).append((w, cp))
        return out

    def forward(x):
        with torch.autocast(kind, dtype=amp, enabled=amp is not None):
            eps, _ = prior.eps(x, c.t)
        x0_hat = x0_from_eps(x, eps.to(x.dtype), c)
        return x0_hat, (x0_hat.clamp(-1.0, 1.0) if clip else x0_hat)

    def v_of(x0_lik):
        r = (y - op.A(x0_lik)).detach()
        return zeta * op.A_adjoint(r) / r.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *[1] * (r.ndim - 1))

    for rep in range(repeats + 1):  # the first round is a warm-up
        x = x0.clone().requires_grad_(True)
        x0_hat, x0_lik = timed("dps_forward", lambda: forward(x))
        v = v_of(x0_lik)
        timed("dps_backward", lambda: torch.autograd.grad((x0_lik * v).sum(), x))
        del x0_hat, x0_lik
        x = x0.clone().requires_grad_(True)
        x0_hat, x0_lik = timed("cmi_forward", lambda: forward(x))
        v = v_of(x0_lik)
        obj = timed("cmi_objective_vjp", lambda: cfg.eta * cmi_objective(
            x, x0_hat, c, op, 0.05, cfg, torch.Generator().manual_seed(rep), clip=clip))
        timed("cmi_fused_backward", lambda: torch.autograd.grad(obj + (x0_lik * v).sum(), x))
        del x0_hat, x0_lik, obj
        if rep == 0:
            res.clear()
    return {name: {"ms": 1e3 * statistics.median(t[0] for t in ts), "cpu_ms": 1e3 * statistics.median(t[1] for t in ts)}
            for name, ts in res.items()}


def bench_speed(prior, batch: int = 1, timed_steps: int = 5, repeats: int = 3, task: str = "sr4",
                methods=DEFAULT_METHODS, estimators=("lowrank", "hutchinson"), probes=(1, 4),
                kinv: str = "isotropic", image_batches=(1, 4, 16), steps: int = 100, device="cpu",
                progress: bool = True, steps_list=(), phases: bool = False, amp=None, grads=None,
                check_grad: bool = False, batch_probes: bool = False, on_update=None) -> dict:
    """``grads``: the CMI gradients to time (default: ``CMIConfig.grad``); the first one's entries are
    ``cmi+X``, the others' ``cmi+X[..., grad]``. ``check_grad``: also the relative difference of the
    difference gradients against autodiff (:func:`gradient_errors`)."""
    from tqdm.auto import tqdm

    grads = tuple(grads or (CMIConfig.grad,))
    x = torch.rand((batch, *prior.shape), generator=torch.Generator().manual_seed(0)).to(device)
    op, y = measure(x, task, seed=0)
    jobs = [(m, None) for m in methods]
    for m in [m for m in methods if m not in DRIVERS]:  # CMI does not fit DAPS and RED-diff (docs/solvers.md)
        for est in estimators:
            for r in probes:
                for gr in grads:
                    jobs.append((f"cmi+{m}", CMIConfig(estimator=est, probes=r, kinv=kinv, grad=gr,
                                                       batch_probes=batch_probes)))
    bar = tqdm(total=len(jobs) + 1 + 2 * len(image_batches) + 2 * len(steps_list) + int(phases),
               desc="bench speed", disable=not progress)
    net, net_cpu = network_fwd_bwd(prior, batch, device, repeats, amp)
    bar.update()
    out = {"network_fwd_bwd_ms": 1e3 * net, "network_fwd_bwd_cpu_ms": 1e3 * net_cpu, "methods": {}}
    for method, cfg in jobs:
        key = method if cfg is None else _job_key(method, cfg, grads[0])
        sec, mem, nfe, cpu_s = method_step(prior, op, y, method, cfg, timed_steps, device, repeats, amp=amp, cpu=True)
        out["methods"][key] = {"ms_per_step": 1e3 * sec, "cpu_ms_per_step": 1e3 * cpu_s, "ratio_to_network": sec / net,
                               "peak_mem_mb": mem, "network_evals_per_step": nfe}
        bar.update()
        if on_update is not None:  # the results so far (run_speed rewrites --json with them)
            on_update(out)
    for key, entry in out["methods"].items():
        if key.startswith("cmi+"):
            base = out["methods"][key[4:].split("[")[0]]
            entry["ratio_to_baseline"] = entry["ms_per_step"] / base["ms_per_step"]
            entry["cpu_ratio_to_baseline"] = entry["cpu_ms_per_step"] / base["cpu_ms_per_step"]
    if check_grad:
        out["grad_check"] = gradient_errors(prior, op, y, [d for d in GRADS if d != "autodiff"], device=device)
    if phases:
        out["phases"] = step_phases(prior, op, y, CMIConfig(kinv=kinv), device, repeats, amp=amp)
        bar.update()
    ips = {}
    for method in ("dps", "cmi+dps") if image_batches else ():
        ips[method] = {}
        for b in image_batches:
            xb = torch.rand((b, *prior.shape), generator=torch.Generator().manual_seed(1)).to(device)
            opb, yb = measure(xb, task, seed=0)
            sec, _, _ = method_step(prior, opb, yb, method, CMIConfig(), timed_steps, device, 1, amp=amp)
            ips[method][str(b)] = b / (sec * steps)
            bar.update()
            if on_update is not None:
                on_update({**out, "images_per_second": ips})
    full = {}
    for method in ("dps", "cmi+dps") if steps_list else ():
        full[method] = {}
        for n in steps_list:  # whole restorations: seconds against the number of steps
            sec, _, _ = method_step(prior, op, y, method, CMIConfig(), n, device, 1, amp=amp)
            full[method][str(n)] = sec * n
            bar.update()
            if on_update is not None:
                on_update({**out, "images_per_second": ips, "seconds_per_restoration": full})
    bar.close()
    out["images_per_second"] = ips
    if full:
        out["seconds_per_restoration"] = full
    out["config"] = {"model": getattr(prior, "name", type(prior).__name__), "shape": list(prior.shape),
                     "batch": batch, "task": task, "timed_steps": timed_steps, "repeats": repeats,
                     "steps_for_images_per_second": steps, "kinv": kinv, "device": str(device),
                     "cmi_grads": list(grads), "batch_probes": batch_probes,
                     "amp": None if amp is None else str(amp).replace("torch.", "")}
    out["machine"] = machine_info(device)
    return out


def _job_key(method: str, cfg: CMIConfig, first_grad: str) -> str:
    """``cmi+X`` for lowrank, one probe and the first gradient; else ``cmi+X[est,r=N,grad]`` with the
    parts that differ."""
    parts = [] if (cfg.estimator, cfg.probes) == ("lowrank", 1) else [f"{cfg.estimator},r={cfg.probes}"]
    if cfg.grad != first_grad:
        parts.append(cfg.grad)
    return method if not parts else f"{method}[{','.join(parts)}]"


def gradient_errors(prior, op, y, grads=("fd", "central"), rels=(None,), fractions=(0.5,), dtype=None,
                    device="cpu", seed: int = 0, steps: int = 100) -> dict:
    """Relative error ``|g - g_autodiff| / |g_autodiff|`` of the difference CMI gradients, per gradient,
    step rule ``rel`` (None: the default, :data:`cmidps.cmi.FD_REL`) and position in a ``steps``-step
    schedule (``fractions``: 0 = clean end, 1 = noisiest), at x_t = sqrt(abar) x0 + sqrt(1 - abar) z for
    the measured image x0 of ``y``'s batch (lowrank, one probe, the likelihood clamp of the prior).
    Returned as ``{grad: {rel: {fraction: error}}}`` (``rel`` as a string, ``"default"`` for None)."""
    from ..cmi import FD_REL, cmi_probes
    from ..sampling import _tweedie_at

    dtype = dtype or y.dtype
    prior = prior.to(dtype) if hasattr(prior, "to") else prior
    y = y.to(dtype)
    op = op.to(dtype) if hasattr(op, "to") else op
    clip = bool(getattr(prior, "clip_x0", False))
    sched = prior.schedule.respace(steps)
    out: dict = {g: {} for g in grads}
    B = y.shape[0]
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand((B, *prior.shape), generator=g, dtype=dtype) * 2 - 1).to(device)
    z = torch.randn((B, *prior.shape), generator=g, dtype=dtype).to(device)
    for frac in fractions:
        c = sched.at(min(len(sched) - 1, round(frac * (len(sched) - 1))))
        x = (c.abar**0.5 * x0 + c.sigma * z).requires_grad_(True)
        with torch.enable_grad():
            x0_fn = _tweedie_at(prior, c)
            x0_hat = x0_fn(x)
            (pairs, scale) = cmi_probes(x, x0_hat, c, op, 0.05, CMIConfig(), torch.Generator().manual_seed(seed + 1),
                                        clip)
            a, b = pairs[0]
            (jt_a,) = torch.autograd.grad(x0_hat, x, a, create_graph=True)
            (ref,) = torch.autograd.grad((jt_a * b).sum(), x, retain_graph=True)
            (base,) = torch.autograd.grad(x0_hat, x, a)
            del jt_a, x0_hat
            cache: dict = {}

            def vjp_at(r, sign):  # J(x + sign e b)^T a, once per (step, sign)
                if (r, sign) not in cache:
                    e = fd_steps(x, b, r).reshape(-1, *[1] * (x.ndim - 1))
                    p = (x + sign * e * b).detach().requires_grad_(True)
                    cache[(r, sign)] = torch.autograd.grad(x0_fn(p), p, a)[0]
                return cache[(r, sign)]

            for rel in rels:
                for gr in grads:
                    table = FD_REL["central"] if gr == "central" else FD_REL
                    r = rel if rel is not None else table.get(dtype, table[torch.float32])
                    e = fd_steps(x, b, r).reshape(-1, *[1] * (x.ndim - 1))
                    plus = vjp_at(r, 1)
                    est = (plus - base) / e if gr == "fd" else (plus - vjp_at(r, -1)) / (2 * e)
                    diff, size = (est - ref).flatten(1).norm(dim=1), ref.flatten(1).norm(dim=1)
                    # a sample whose x0_hat is clamped everywhere has no CMI term: both are exactly 0 there
                    err = torch.where(size > 0, diff / size.clamp_min(1e-300), torch.where(diff > 0, torch.inf, 0.0)).max()
                    out[gr].setdefault("default" if rel is None else f"{rel:g}", {})[f"{frac:g}"] = float(err)
    return out


def machine_info(device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            **{k: os.environ[k] for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def random_adm_prior(image_size: int, device="cpu"):
    """The FFHQ ADM architecture (learned sigma) at ``image_size`` with random weights (the zero-initialised
    layers re-drawn, :func:`~cmidps.models.layers.redraw_zero_layers`)."""
    from ..models.layers import redraw_zero_layers
    from ..models.unet import FFHQ_256, create_model
    from ..prior import NetworkPrior

    torch.manual_seed(0)
    kw = dict(FFHQ_256, image_size=image_size, channel_mult="" if image_size in (32, 64, 128, 256, 512)
              else FFHQ_256["channel_mult"])
    net = redraw_zero_layers(create_model(**kw).eval())
    net.requires_grad_(False)
    return NetworkPrior(net, (3, image_size, image_size), learn_sigma=True, name=f"adm-random:{image_size}").to(device)


def format_table(res: dict) -> str:
    lines = [f"bare network forward+backward: {res['network_fwd_bwd_ms']:.1f} ms "
             f"(batch {res['config']['batch']}, {res['config']['model']})",
             f"{'method':<28}{'ms/step':>10}{'x network':>11}{'x baseline':>12}{'CPU x base':>12}"
             f"{'evals/step':>12}{'peak MB':>10}"]
    for key, e in res["methods"].items():
        mem = "-" if e["peak_mem_mb"] is None else f"{e['peak_mem_mb']:.0f}"
        base = f"{e['ratio_to_baseline']:.2f}" if "ratio_to_baseline" in e else "-"
        cpu = f"{e['cpu_ratio_to_baseline']:.2f}" if "cpu_ratio_to_baseline" in e else "-"
        lines.append(f"{key:<28}{e['ms_per_step']:>10.1f}{e['ratio_to_network']:>11.2f}{base:>12}{cpu:>12}"
                     f"{e['network_evals_per_step']:>12.2f}{mem:>10}")
    if "phases" in res:
        lines.append("phases of one step (ms wall / CPU): " + ", ".join(
            f"{k} {v['ms']:.0f}/{v['cpu_ms']:.0f}" for k, v in res["phases"].items()))
    if res["images_per_second"]:
        lines.append(f"images per second ({res['config']['steps_for_images_per_second']} steps):")
    for m, d in res["images_per_second"].items():
        lines.append(f"  {m:<10}" + "  ".join(f"batch {b}: {v:.3f}" for b, v in d.items()))
    for m, d in res.get("seconds_per_restoration", {}).items():
        lines.append(f"  seconds per restoration, {m:<8}" + "  ".join(f"{n} steps: {v:.2f}" for n, v in d.items()))
    return "\n".join(lines)


def run_speed(args) -> int:
    from ..models.loading import load_prior

    check_output_file(args.json, "--json", own=is_json_with("methods", "by_model"))  # before any work; never a user's other file
    check_distinct({"--json": args.json}, {"--model": None if ":" in str(args.model) else args.model})
    results = {}
    device = resolve_device(args.device)

    def save(spec, partial):  # the results so far, rewritten atomically after every finished unit
        if args.json:
            done = {**results, spec: {**partial, "partial": True}}
            write_json(args.json, done[spec] if len(specs) == 1 else {"by_model": done, "partial": True}, indent=2)
    specs = [args.model] if not args.image_sizes else [f"adm-random:{s}" for s in args.image_sizes.split(",")]
    for spec in specs:
        prior = (random_adm_prior(int(spec.split(":")[1]), device) if spec.startswith("adm-random:")
                 else load_prior(spec, device=device))
        res = bench_speed(prior, batch=args.batch, timed_steps=args.timed_steps, repeats=args.repeats,
                          task=args.task, methods=tuple(args.methods.split(",")),
                          estimators=tuple(args.estimators.split(",")),
                          probes=tuple(int(r) for r in args.probes.split(",")), kinv=args.kinv,
                          image_batches=tuple(int(b) for b in args.image_batches.split(",") if b), steps=args.steps,
                          device=device, progress=not args.quiet, phases=args.phases, amp=AMP[args.amp],
                          on_update=lambda partial, spec=spec: save(spec, partial),
                          steps_list=tuple(int(n) for n in args.steps_list.split(",")) if args.steps_list else (),
                          grads=tuple(args.cmi_grad.split(",")) if args.cmi_grad else None,
                          check_grad=args.check_grad, batch_probes=args.batch_probes)
        print(format_table(res))
        if "grad_check" in res:
            print(f"CMI gradient vs autodiff ({spec}, relative difference at mid-schedule, default step): "
                  + ", ".join(f"{g} {d['default']['0.5']:.2e}" for g, d in res["grad_check"].items()))
        results[spec] = res
    out = results[specs[0]] if len(specs) == 1 else {"by_model": results}
    if args.json:
        write_json(args.json, out, indent=2)
        print(f"wrote {args.json}")
    return 0


def add_speed_parser(bench) -> None:
    import argparse

    from ..cmi import ESTIMATORS
    from ..commands.options import MAX_PROBES, as_text, int_list_text, method_list, name_list, positive_int
    from ..methods.samplers import RULES
    from ..operators import TASKS

    bases = [m for m in RULES if m != "none"] + list(DRIVERS)
    p = bench.add_parser("speed", help="cost per step of every method against the bare network",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="bundled:mnist32")
    p.add_argument("--image-sizes", type=int_list_text(8, hi=1024, unique=True), default=None,
                   help="instead of --model: the ADM (FFHQ) architecture at random weights at these sizes, e.g. 32,64")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--steps", type=positive_int, default=100, help="reverse steps assumed for images per second")
    p.add_argument("--timed-steps", type=positive_int, default=5, help="steps per timed run")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--task", default="sr4", choices=TASKS)
    p.add_argument("--methods", type=as_text(method_list(bases, cmi=False)), default=",".join(DEFAULT_METHODS),
                   help="comma-separated base methods, case-insensitive (each is timed with and without CMI): "
                        + ", ".join(bases))
    p.add_argument("--estimators", type=as_text(name_list(ESTIMATORS, "estimator", all_ok=False)),
                   default="lowrank,hutchinson", help="CMI gradient estimators: " + ", ".join(ESTIMATORS))
    p.add_argument("--probes", type=int_list_text(1, hi=MAX_PROBES, unique=True), default="1,4",
                   help="CMI probe counts to time, comma-separated")
    p.add_argument("--kinv", default="isotropic", choices=["isotropic", "cg"])
    p.add_argument("--image-batches", type=int_list_text(1, empty_ok=True, unique=True), default="1,4,16", help="batches for images per second ('' for none)")
    p.add_argument("--steps-list", type=int_list_text(1, empty_ok=True, hi=1000, unique=True), default="", help="also time whole restorations with these step counts, e.g. 10,50")
    p.add_argument("--device", default="auto", help="auto (default: cuda when present, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--amp", default="none", choices=sorted(AMP),
                   help="run the network under autocast in this dtype (CMI, K^-1 and the rules stay float32)")
    p.add_argument("--phases", action="store_true",
                   help="also time the parts of one DPS and one CMI+DPS step (forward, CMI VJP, final backward)")
    p.add_argument("--cmi-grad", type=as_text(name_list(GRADS, "CMI gradient", all_ok=True)), default=None,
                   help="CMI gradients to time, comma-separated, e.g. fd,autodiff (default: the default gradient, "
                        f"{CMIConfig.grad}); the first one's entries are cmi+X, the others' cmi+X[grad]")
    p.add_argument("--check-grad", action="store_true",
                   help="also print the relative difference of the fd and central CMI gradients against autodiff")
    p.add_argument("--batch-probes", action="store_true",
                   help="difference gradients: run the shifted points of all probes as one network batch")
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_speed)
