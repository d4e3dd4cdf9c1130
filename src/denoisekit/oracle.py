"""The exact oracle: Gaussian-mixture data, whose optimal denoiser is closed-form at every noise level.

For ``x0 ~ sum_k w_k N(mu_k, S_k)`` and ``y = x0 + sigma eps`` (the VE frame, where every process
is the same), ``p_sigma(y) = sum_k w_k N(y; mu_k, S_k + sigma^2 I)`` and

    E[x0 | y] = sum_k r_k(y) (mu_k + S_k (S_k + sigma^2 I)^-1 (y - mu_k)),

``r_k`` the posterior component weights. With it a sampler's error against the exact
probability-flow ODE solution is pure discretisation error. Use it to test your own samplers::

    gm = GaussianMixture.random(dim=2, components=8, seed=0)
    y = gm.prior_noise(64, sigma_max=80.0, generator=torch.Generator().manual_seed(0))
    exact = gm.ode_solution(y, 80.0)
    err = (sample_dpmpp_2m(gm, y, get_sigmas_karras(10, 0.002, 80.0)) - exact).norm(dim=1).mean()
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._utils import GeneratorLike, as_batch, randn
from .prediction import Coefficients, prediction_from_x0
from .process import Process


class GaussianMixture:
    """A Gaussian mixture in ``dim`` dimensions that is also an exact denoiser ``gm(y, sigma)``.

    ``covs`` may be full ``(K, D, D)``; inputs of any shape ``(B, ...)`` with ``prod(...) == D`` work
    (images flatten). Computation is float64; outputs come back in the input's dtype.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {tuple(covs.shape)}")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError("weights must be K non-negative numbers summing to 1")
        self.means, self.covs, self.weights = means, covs, w
        self.dim, self.components = d, k
        self._lam, self._U = torch.linalg.eigh(covs)  # S_k = U diag(lam) U^T
        if (self._lam <= 0).any():
            raise ValueError("covariances must be positive definite")

    @classmethod
    def random(cls, dim: int = 2, components: int = 8, seed: int = 0, spread: float = 1.0,
               scale: float = 0.15) -> "GaussianMixture":
        """A reproducible mixture: means ~ N(0, spread^2), anisotropic covariances of size ~scale^2."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * spread
        a = torch.randn(components, dim, dim, generator=g, dtype=torch.float64) * scale / math.sqrt(dim)
        covs = a @ a.transpose(1, 2) + (0.3 * scale) ** 2 * torch.eye(dim, dtype=torch.float64)
        w = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
        return cls(means, covs, w / w.sum())

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        """``n`` exact samples, float64 ``(n, D)``."""
        g = generator if isinstance(generator, torch.Generator) else None
        comp = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)[comp]
        return self.means[comp] + (chol @ z.unsqueeze(-1)).squeeze(-1)

    def prior_noise(self, n: int, sigma_max: float, generator: GeneratorLike = None,
                    dtype: torch.dtype = torch.float64) -> Tensor:
        """Start points ``eps * sigma_max`` of shape ``(n, D)``."""
        return randn((n, self.dim), generator, dtype=dtype) * sigma_max

    def _parts(self, y: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected residuals ``z`` (B,K,D), variances ``lam + sigma^2`` (B,K,D), log-resp (B,K)."""
        diff = y[:, None, :] - self.means[None]  # (B, K, D)
        z = torch.einsum("bkd,kde->bke", diff, self._U)
        var = self._lam[None] + (sigma**2)[:, None, None]
        logp = -0.5 * ((z**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        return z, var, logp + torch.log(self.weights)[None]

    def _flat(self, y: Tensor) -> Tensor:
        flat = y.reshape(y.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"input has {flat.shape[1]} values per sample; the mixture has dim {self.dim}")
        return flat

    def log_prob(self, y: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """``log p_sigma(y)`` (nats) of ``y = x0 + sigma eps``: ``(B,)`` float64."""
        flat = self._flat(y)
        _, _, logp = self._parts(flat, as_batch(sigma, flat))
        return torch.logsumexp(logp, dim=1)

    def _component_means(self, z: Tensor, var: Tensor) -> Tensor:
        """``E[x0 | y, k]`` for every component: ``(B, K, D)``."""
        shrunk = z * (self._lam[None] / var)  # posterior mean offset in each eigenbasis
        return self.means[None] + torch.einsum("bke,kde->bkd", shrunk, self._U)

    def denoise(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        """The optimal denoiser ``E[x0 | y]`` at VE noise ``sigma`` (scalar or ``(B,)``)."""
        flat = self._flat(y)
        z, var, logp = self._parts(flat, as_batch(sigma, flat))
        resp = torch.softmax(logp, dim=1)  # (B, K)
        out = (resp[..., None] * self._component_means(z, var)).sum(1)
        return out.reshape(y.shape).to(y.dtype)

    __call__ = denoise

    # The components as classes: an exact class-conditional denoiser and an exact noisy classifier.

    def class_logits(self, y: Tensor, sigma: Tensor | float) -> Tensor:
        """``log p(k | y)`` at VE noise ``sigma``: ``(B, K)`` float64, normalised logits of the exact noisy
        classifier whose classes are the components (differentiable in ``y``)."""
        flat = self._flat(y)
        return torch.log_softmax(self._parts(flat, as_batch(sigma, flat))[2], dim=1)

    def denoise_class(self, y: Tensor, sigma: Tensor | float, labels: Any = None) -> Tensor:
        """``E[x0 | y, k]`` for component ``k = labels[i]`` of each sample; label ``K`` (= ``components``,
        the null label) or ``None`` gives the whole mixture's ``E[x0 | y]``."""
        flat = self._flat(y)
        z, var, logp = self._parts(flat, as_batch(sigma, flat))
        resp = torch.softmax(logp, dim=1)
        if labels is not None:
            labels = torch.as_tensor(labels, device=flat.device).long().expand(flat.shape[0])
            if bool(((labels < 0) | (labels > self.components)).any()):
                raise ValueError(f"labels must be in 0..{self.components} ({self.components}: the null label)")
            one_hot = torch.nn.functional.one_hot(labels.clamp(max=self.components - 1), self.components)
            resp = torch.where((labels < self.components)[:, None], one_hot.to(resp), resp)
        out = (resp[..., None] * self._component_means(z, var)).sum(1)
        return out.reshape(y.shape).to(y.dtype)

    def posterior(self, matrix: Tensor, y: Tensor, sigma_y: float) -> GaussianMixture:
        """The exact posterior ``p(x0 | y)`` of a linear measurement ``y = M x0 + sigma_y eps`` (``M`` ``(m, D)``,
        ``y`` ``(m,)``, ``sigma_y > 0``): again a mixture, of the components' Gaussian posteriors
        ``mu + S M^T G^-1 (y - M mu)``, ``S - S M^T G^-1 M S`` (``G = M S M^T + sigma_y^2 I``) weighted by
        ``w_k N(y; M mu_k, G_k)`` (Bishop 2006, Sec. 2.3.3)."""
        m = torch.as_tensor(matrix, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64).flatten()
        g = m @ self.covs @ m.T + sigma_y**2 * torch.eye(m.shape[0], dtype=torch.float64)  # (K, m, m)
        gain = self.covs @ m.T @ torch.linalg.inv(g)  # (K, D, m)
        resid = y[None] - self.means @ m.T  # (K, m)
        means = self.means + (gain @ resid[..., None])[..., 0]
        covs = self.covs - gain @ m @ self.covs
        covs = 0.5 * (covs + covs.transpose(1, 2))
        logw = torch.log(self.weights) + torch.distributions.MultivariateNormal(torch.zeros_like(resid), g).log_prob(resid)
        return GaussianMixture(means, covs, torch.softmax(logw, 0))

    def component(self, k: int) -> GaussianMixture:
        """The mixture of component ``k`` alone: ``N(mu_k, S_k)``."""
        if not 0 <= k < self.components:
            raise ValueError(f"component index must be in 0..{self.components - 1}, got {k}")
        return GaussianMixture(self.means[k:k + 1], self.covs[k:k + 1])

    def score(self, y: Tensor, sigma: Tensor | float) -> Tensor:
        """``grad_y log p_sigma(y) = (E[x0|y] - y) / sigma^2``."""
        s = as_batch(sigma, y.reshape(y.shape[0], -1))
        s = s.reshape((-1,) + (1,) * (y.ndim - 1)).to(y.dtype)
        return (self.denoise(y, s.flatten()) - y) / s**2

    def ode_solution(self, y: Tensor, sigma_from: float, sigma_to: float = 0.0,
                     rtol: float = 1e-10, atol: float = 1e-10) -> Tensor:
        """Exact probability-flow ODE solution from ``sigma_from`` to ``sigma_to`` (float64 dopri5
        at tight tolerance; ``sigma_to=0`` is reached as the limit, below 1e-6 relative noise)."""
        from .samplers.adaptive import solve_pf_ode  # samplers sit below; import late to keep oracle light

        return solve_pf_ode(self, y.to(torch.float64), sigma_from, sigma_to, rtol=rtol, atol=atol)

    def as_network(self, process: Process, prediction: str = "eps", sigma_data: float = 0.5):
        """The exact model as a network ``net(x_native, model_time) -> prediction``, for driving
        external samplers (e.g. diffusers' schedulers) or testing the :class:`Denoiser` adapter."""

        def net(x: Tensor, time: Tensor, cond: Any = None) -> Tensor:
            if prediction == "edm":
                raise ValueError("as_network does not produce EDM-preconditioned outputs")
            t = _time_to_t(process, time)
            t = t.expand(x.shape[0]) if t.numel() == 1 else t  # diffusers passes one timestep per batch
            c = Coefficients(process, t.to(torch.float64), sigma_data)
            shape = (-1,) + (1,) * (x.ndim - 1)
            x64 = x.to(torch.float64)
            x0 = self.denoise(x64 / c.alpha.reshape(shape), c.sigma_ve)
            return prediction_from_x0(prediction, x0, x64, c).to(x.dtype)

        return net


def _time_to_t(process: Process, time: Tensor) -> Tensor:
    """Invert ``process.model_time`` (the identity, or index -> t for a discrete process)."""
    num = getattr(process, "num_steps", None)
    time = torch.as_tensor(time, dtype=torch.float64).flatten()
    return time / (num - 1) if num is not None else time
