"""The DDPM / VP diffusion schedule (Ho et al. 2020), with respacing.

Notation follows ``docs/math.md``: ``abar_t = prod(1 - beta)``, ``sigma_t^2 = 1 - abar_t``.
A :class:`Schedule` is a chain of ``N`` kept steps, indexed ``i = 0 .. N-1`` (``i = N-1`` is the
noisiest). ``timesteps[i]`` is the index of that step on the 1000-step training chain, which is
what a network is conditioned on. Respacing keeps a subset of the training steps, chosen as
guided-diffusion's ``space_timesteps`` chooses them (:func:`space_timesteps`: a count, or its respacing
strings such as ``"10,10,10"`` and ``"ddim50"``), and recomputes the betas
so that the kept ``abar`` are unchanged (guided-diffusion's ``SpacedDiffusion``).
All schedule arrays are float64; :meth:`at` hands out scalars for a step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The linear beta schedule of DDPM and of the DPS / ADM checkpoints (scaled for ``num_steps``)."""
    scale = 1000.0 / num_steps
    return torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)


def _one_section(start: int, size: int, count: int) -> list[int]:
    """``count`` steps of the training steps ``start .. start + size - 1``: the stride
    ``(size - 1) / (count - 1)`` (1 for ``count <= 1``) accumulated in a float, each kept step Python's
    ``round`` of the running sum (round half to even)."""
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    kept, position = [], 0.0
    for _ in range(count):
        kept.append(start + round(position))
        position += stride
    return kept


RESPACING_FORMS = "an integer N, a string 'N' or 'N1,N2,...' (steps per equal section), or 'ddimN'"


def space_timesteps(num_train_steps: int, section_counts) -> list[int]:
    """The training steps kept by a respaced chain, as guided-diffusion's ``space_timesteps`` keeps them
    (its ``timestep_respacing`` strings; the DPS configs use them), sorted.

    ``section_counts``:

    * an integer ``N``: one section, ``N`` steps evenly strided over the whole chain (the stride
      ``(num_train_steps - 1) / (N - 1)`` accumulated in a float, each step the running sum rounded
      half to even; ``N <= 1`` keeps training step 0);
    * a list of integers, or a string ``"N1,N2,..."``: the chain is cut into ``len`` sections of
      ``num_train_steps // len`` steps (the first ``num_train_steps % len`` sections one longer), and
      section ``k`` is strided as above into ``Nk`` steps; a section cannot give more steps than it has;
    * ``"ddimN"``: the smallest integer stride ``s >= 1`` for which ``range(0, num_train_steps, s)`` has
      exactly ``N`` steps (DDIM's uniform skip), else an error.

    A request that cannot be met raises ``ValueError`` saying why. Duplicate steps collapse (as
    guided-diffusion's set does).
    """
    from numbers import Integral

    if isinstance(section_counts, bool):
        raise ValueError(f"respacing {section_counts!r}: expected {RESPACING_FORMS}")
    if isinstance(section_counts, Integral):
        return _one_section(0, num_train_steps, int(section_counts))
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            try:
                want = int(text[4:])
            except ValueError:
                raise ValueError(f"respacing {section_counts!r}: 'ddim' must be followed by a number of steps, "
                                 f"e.g. 'ddim50'") from None
            for stride in range(1, num_train_steps):
                if len(range(0, num_train_steps, stride)) == want:
                    return list(range(0, num_train_steps, stride))
            raise ValueError(f"respacing {section_counts!r}: no integer stride gives exactly {want} of "
                             f"{num_train_steps} steps; choose another count, or pass it as {want} (or "
                             f"'{want}') for an evenly strided chain")
        try:
            counts = [int(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"respacing {section_counts!r}: expected {RESPACING_FORMS}") from None
    else:
        try:
            counts = [int(v) for v in section_counts]
        except (TypeError, ValueError):
            raise ValueError(f"respacing {section_counts!r}: expected {RESPACING_FORMS}") from None
    if not counts:
        raise ValueError(f"respacing {section_counts!r}: no sections")
    if any(c < 0 for c in counts):
        raise ValueError(f"respacing {section_counts!r}: step counts must be >= 0")
    size, extra = divmod(num_train_steps, len(counts))
    kept, start = [], 0
    for k, count in enumerate(counts):
        n = size + (1 if k < extra else 0)
        if n < count:
            raise ValueError(f"respacing {section_counts!r}: section {k + 1} has {n} training steps, "
                             f"fewer than the {count} asked of it")
        kept += _one_section(start, n, count)
        start += n
    return sorted(set(kept))


def step_count(steps, who: str) -> int:
    """``steps`` as a plain number of steps, for a caller that spaces its own steps and so cannot use a
    guided-diffusion respacing (``"ddim50"``, ``"10,10,10"``): an integer, or a string of one integer;
    anything else is a ``ValueError`` naming ``who``."""
    from numbers import Integral

    if isinstance(steps, Integral) and not isinstance(steps, bool):
        return int(steps)
    if isinstance(steps, str) and steps.strip().isdigit():
        return int(steps)
    raise ValueError(f"{who} takes a number of steps, not the respacing {steps!r} (it spaces its own steps); "
                     f"pass an integer")


@dataclass(frozen=True)
class StepCoefficients:
    """Scalars for one reverse step ``x_t -> x_{t-1}`` (Python floats, so they broadcast in any dtype)."""

    i: int  # position on the (respaced) chain, N-1 .. 0
    t: int  # index on the training chain, fed to the network
    abar: float
    abar_prev: float
    beta: float  # respaced beta_t = 1 - abar_t / abar_{t-1}
    coef_x0: float  # sqrt(abar_{t-1}) beta_t / (1 - abar_t)
    coef_xt: float  # sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
    posterior_var: float  # beta_t (1 - abar_{t-1}) / (1 - abar_t)  ("small" variance)
    posterior_log_var_clipped: float

    @property
    def sigma(self) -> float:
        """sigma_t = sqrt(1 - abar_t): the noise level of x_t."""
        return (1.0 - self.abar) ** 0.5


class Schedule:
    """A VP chain of kept steps. Build with :meth:`linear` and :meth:`respace`."""

    def __init__(self, train_betas: torch.Tensor, timesteps: list[int] | None = None):
        train_betas = torch.as_tensor(train_betas, dtype=torch.float64)
        if train_betas.ndim != 1 or not ((train_betas > 0) & (train_betas < 1)).all():
            raise ValueError("betas must be a 1-D array of values in (0, 1)")
        self.train_betas = train_betas
        self.num_train_steps = len(train_betas)
        train_abar = torch.cumprod(1.0 - train_betas, 0)
        if timesteps is None:
            timesteps = list(range(self.num_train_steps))
        timesteps = sorted(set(int(t) for t in timesteps))
        if timesteps[0] < 0 or timesteps[-1] >= self.num_train_steps:
            raise ValueError(f"timesteps must lie in [0, {self.num_train_steps})")
        self.timesteps = timesteps
        self.abar = train_abar[timesteps]
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        self.betas = 1.0 - self.abar / self.abar_prev
        self.alphas = 1.0 - self.betas
        self.posterior_var = self.betas * (1.0 - self.abar_prev) / (1.0 - self.abar)
        # As in guided-diffusion: the first posterior variance is 0, so its log is clipped to the next.
        pv = self.posterior_var.clone()
        if len(pv) > 1:
            pv[0] = pv[1]
        else:
            pv[0] = self.betas[0]
        self.posterior_log_var_clipped = torch.log(pv)
        self.coef_x0 = self.betas * torch.sqrt(self.abar_prev) / (1.0 - self.abar)
        self.coef_xt = (1.0 - self.abar_prev) * torch.sqrt(self.alphas) / (1.0 - self.abar)

    @classmethod
    def linear(cls, num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        return cls(linear_betas(num_train_steps, beta_start, beta_end))

    def respace(self, num_steps) -> "Schedule":
        """Keep the training steps chosen by :func:`space_timesteps` (guided-diffusion's rule):
        ``num_steps`` an integer count, or a guided-diffusion respacing (``"10,10,10"``, ``"ddim50"``,
        a list of section counts). A count outside ``1 .. num_train_steps`` or a respacing that keeps no
        step is a ``ValueError``."""
        from numbers import Integral

        if isinstance(num_steps, Integral) and not isinstance(num_steps, bool):
            if not 1 <= num_steps <= self.num_train_steps:
                raise ValueError(f"steps must be between 1 and {self.num_train_steps}, got {num_steps}")
        kept = space_timesteps(self.num_train_steps, num_steps)
        if not kept:
            raise ValueError(f"respacing {num_steps!r} keeps no step of the {self.num_train_steps}")
        return Schedule(self.train_betas, kept)

    def __len__(self) -> int:
        return len(self.timesteps)

    def at(self, i: int) -> StepCoefficients:
        return StepCoefficients(
            i=i,
            t=self.timesteps[i],
            abar=float(self.abar[i]),
            abar_prev=float(self.abar_prev[i]),
            beta=float(self.betas[i]),
            coef_x0=float(self.coef_x0[i]),
            coef_xt=float(self.coef_xt[i]),
            posterior_var=float(self.posterior_var[i]),
            posterior_log_var_clipped=float(self.posterior_log_var_clipped[i]),
        )

    def reverse(self):
        """Steps from the noisiest to the cleanest: ``at(N-1), ..., at(0)``."""
        return (self.at(i) for i in reversed(range(len(self))))

    # --- forward process (training, noised measurements) -------------------------------------
    def q_sample(self, x0: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, at chain position ``i``."""
        abar = float(self.abar[i])
        return abar**0.5 * x0 + (1.0 - abar) ** 0.5 * noise


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """Tweedie's formula in epsilon form: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (x_t - c.sigma * eps) / c.abar**0.5


def learned_log_variance(var_values: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """Learned-range variance of improved DDPM / ADM: ``v`` in [-1, 1] interpolates, in log space,
    between the posterior variance (clipped) and beta_t."""
    frac = (var_values + 1.0) / 2.0
    max_log = torch.log(torch.tensor(c.beta, dtype=var_values.dtype))
    return frac * max_log + (1.0 - frac) * c.posterior_log_var_clipped
