"""Linear measurement operators ``y = A(x) + n``, ``n ~ N(0, sigma_y^2 I)``, for inverse problems.

Images are float ``(B, C, H, W)``. Each operator has its forward map ``A``, the adjoint ``A^T`` (exact:
``<A x, y> = <x, A^T y>``), the pseudo-inverse ``A^+`` (the baseline restoration) and the regularised
solve ``prox(x0, y, rho) = argmin_x ||y - A x||^2 + rho ||x - x0||^2`` that DiffPIR and DAPS use:

==================  ===============================================================================
operator            what
==================  ===============================================================================
Inpaint(mask)       keep the known pixels (mask 1 = missing, as :mod:`~denoisekit.data.degrade`);
                    ``A = A^T = A^+`` is the diagonal projection; ``box_mask`` / ``random_mask``
SuperResolution(f)  :func:`~denoisekit.data.degrade.downsample` (the ``f x f`` block mean, Palette's);
                    ``A A^T = I / f^2``, so ``A^+ = f^2 A^T`` is nearest-neighbour upsampling
Blur(kernel)        circular convolution with a normalised kernel (``gaussian_kernel``,
                    ``motion_kernel``), diagonal in the 2-D DFT; ``A^+`` inverts the frequencies
                    with ``|K| > eps`` and zeroes the rest (truncated-SVD pseudo-inverse)
Matrix(M)           ``M @ x`` on flat ``(B, D)`` vectors: the exact-oracle tests' operator
==================  ===============================================================================
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._utils import GeneratorLike, check_choice, randn_like
from .degrade import downsample, inpaint_masks

Task = Literal["inpaint-box", "inpaint-random", "sr2", "sr4", "blur", "motion"]
TASKS = ("inpaint-box", "inpaint-random", "sr2", "sr4", "blur", "motion")


class LinearOperator:
    """Base: ``forward``, ``adjoint``, ``pinv``; ``prox`` by conjugate gradients unless a subclass has a closed
    form; ``measure(x, sigma_y, generator)`` draws ``A(x) + sigma_y * eps``."""

    name = "linear"

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def measure(self, x: Tensor, sigma_y: float = 0.0, generator: GeneratorLike = None) -> Tensor:
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        y = self.forward(x)
        return y if sigma_y == 0 else y + sigma_y * randn_like(y, generator)

    def prox(self, x0: Tensor, y: Tensor, rho: Tensor | float, iters: int = 50) -> Tensor:
        """``argmin_x ||y - A x||^2 + rho ||x - x0||^2`` (``rho`` scalar or ``(B,)``, > 0): conjugate gradients
        on ``(A^T A + rho I) x = A^T y + rho x0``."""
        r = _per_sample(rho, x0)
        b = self.adjoint(y) + r * x0
        x = x0.clone()
        res = b - (self.adjoint(self.forward(x)) + r * x)
        p, rs = res.clone(), _dot(res, res)
        for _ in range(iters):
            ap = self.adjoint(self.forward(p)) + r * p
            alpha = rs / _dot(p, ap).clamp(min=1e-30)
            x, res = x + alpha * p, res - alpha * ap
            new = _dot(res, res)
            if float(new.max()) < 1e-20:
                break
            p, rs = res + (new / rs.clamp(min=1e-30)) * p, new
        return x


def _per_sample(v: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return t.reshape((-1,) + (1,) * (x.ndim - 1)) if t.ndim else t


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1).reshape((-1,) + (1,) * (a.ndim - 1))


class Inpaint(LinearOperator):
    """Keep the known pixels: ``A x = (1 - mask) x`` with ``mask`` ``(B or 1, 1, H, W)``, 1 = missing. The
    measurement stays full-size, zero in the hole, so ``A`` is a diagonal projection (``A = A^T = A^+``)."""

    name = "inpaint"

    def __init__(self, mask: Tensor):
        if mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"an inpainting mask must have shape (B, 1, H, W), got {tuple(mask.shape)}")
        self.mask = (mask > 0.5).float()
        self.keep = 1 - self.mask

    def forward(self, x: Tensor) -> Tensor:
        return x * self.keep.to(x)

    adjoint = forward
    pinv = forward

    def measure(self, x: Tensor, sigma_y: float = 0.0, generator: GeneratorLike = None) -> Tensor:
        return self.forward(super().measure(x, sigma_y, generator))  # noise on the measured pixels only

    def prox(self, x0: Tensor, y: Tensor, rho: Tensor | float, iters: int = 0) -> Tensor:
        k, r = self.keep.to(x0), _per_sample(rho, x0)
        return torch.where(k > 0, (y + r * x0) / (1 + r), x0)  # a missing pixel keeps x0, also at rho = 0


def box_mask(size: tuple[int, int], coverage: float = 0.25, n: int = 1) -> Tensor:
    """``(n, 1, H, W)`` centred box of about ``coverage`` of the pixels (the ``center`` masks of
    :func:`~denoisekit.data.degrade.inpaint_masks`)."""
    return inpaint_masks(n, size, kind="center", coverage=(coverage, coverage))


def random_mask(size: tuple[int, int], fraction: float = 0.7, n: int = 1, generator: GeneratorLike = None) -> Tensor:
    """``(n, 1, H, W)`` masks with exactly ``round(fraction H W)`` missing pixels drawn uniformly; sample ``i``
    uses only generator ``i`` of a list."""
    from .degrade import per_sample_generators

    if not 0 < fraction < 1:
        raise ValueError(f"the missing fraction must be in (0, 1), got {fraction}")
    h, w = size
    k = round(fraction * h * w)
    out = torch.zeros(n, 1, h * w)
    for i, g in enumerate(per_sample_generators(generator, n)):
        out[i, 0, torch.randperm(h * w, generator=g)[:k]] = 1.0
    return out.view(n, 1, h, w)


class SuperResolution(LinearOperator):
    """Average pooling by ``factor`` (:func:`~denoisekit.data.degrade.downsample`, the degradation of
    Palette's super-resolution); ``A^+ = f^2 A^T`` is nearest-neighbour upsampling."""

    name = "super-resolution"

    def __init__(self, factor: int):
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return downsample(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, 2).repeat_interleave(f, 3) / f**2

    def pinv(self, y: Tensor) -> Tensor:
        return self.adjoint(y) * self.factor**2

    def prox(self, x0: Tensor, y: Tensor, rho: Tensor | float, iters: int = 0) -> Tensor:
        # x0 + A^T (A A^T + rho I)^-1 (y - A x0), with A A^T = I / f^2 (Woodbury)
        r = _per_sample(rho, x0)
        return x0 + self.adjoint((y - self.forward(x0)) / (1.0 / self.factor**2 + r))


def gaussian_kernel(sigma: float, size: int | None = None) -> Tensor:
    """``(k, k)`` normalised Gaussian kernel of std ``sigma`` pixels (``k`` default ``2 ceil(2 sigma) + 1``)."""
    if sigma <= 0:
        raise ValueError(f"the blur sigma must be > 0, got {sigma}")
    k = size or 2 * math.ceil(2 * sigma) + 1
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    kern = g[:, None] * g[None]
    return kern / kern.sum()


def motion_kernel(length: int, angle: float = 0.0) -> Tensor:
    """``(k, k)`` normalised linear motion blur of ``length`` pixels at ``angle`` degrees (a line of samples
    rasterised bilinearly)."""
    if length < 1:
        raise ValueError(f"the motion length must be >= 1, got {length}")
    k = length if length % 2 else length + 1
    kern = torch.zeros(k, k, dtype=torch.float64)
    c, a = (k - 1) / 2, math.radians(angle)
    for s in torch.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length).tolist():
        y, x = c - s * math.sin(a), c + s * math.cos(a)
        y0, x0 = math.floor(y), math.floor(x)
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            if 0 <= y0 + dy < k and 0 <= x0 + dx < k:
                kern[y0 + dy, x0 + dx] += (1 - abs(y - y0 - dy)) * (1 - abs(x - x0 - dx))
    return kern / kern.sum()


class Blur(LinearOperator):
    """Circular convolution with ``kernel`` ``(k, k)`` (centred): diagonal in the 2-D DFT, ``A = F^-1 K F``, so
    ``A^T`` multiplies by ``conj(K)``, ``A^+`` by ``1 / K`` where ``|K| > eps`` (0 elsewhere) and ``prox`` is
    ``(conj(K) Y + rho X0) / (|K|^2 + rho)`` per frequency."""

    name = "blur"

    def __init__(self, kernel: Tensor, eps: float = 1e-3):
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise ValueError(f"a blur kernel must be square with an odd size, got {tuple(kernel.shape)}")
        self.kernel, self.eps = kernel.to(torch.float64), eps
        self._cache: dict[tuple[int, int], Tensor] = {}

    def _k(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if (h, w) not in self._cache:
            k = self.kernel.shape[0]
            if k > min(h, w):
                raise ValueError(f"a {k}x{k} blur kernel does not fit a {w}x{h} image")
            pad = torch.zeros(h, w, dtype=torch.float64)
            pad[:k, :k] = self.kernel
            self._cache[(h, w)] = torch.fft.fft2(torch.roll(pad, (-(k // 2), -(k // 2)), (0, 1)))
        return self._cache[(h, w)].to(x.device)

    def _apply(self, x: Tensor, filt: Tensor) -> Tensor:
        out = torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * filt).real
        return out.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._apply(x, self._k(x))

    def adjoint(self, y: Tensor) -> Tensor:
        return self._apply(y, self._k(y).conj())

    def pinv(self, y: Tensor) -> Tensor:
        k = self._k(y)
        big = k.abs() > self.eps
        return self._apply(y, torch.where(big, 1 / torch.where(big, k, torch.ones_like(k)), torch.zeros_like(k)))

    def prox(self, x0: Tensor, y: Tensor, rho: Tensor | float, iters: int = 0) -> Tensor:
        k = self._k(x0)
        r = _per_sample(rho, x0).to(torch.float64)
        num = k.conj() * torch.fft.fft2(y.to(torch.float64)) + r * torch.fft.fft2(x0.to(torch.float64))
        return torch.fft.ifft2(num / (k.abs() ** 2 + r).clamp(min=1e-12)).real.to(x0.dtype)


class Matrix(LinearOperator):
    """``A x = M x`` on flat vectors ``(B, D)`` (the 2-D exact-oracle tests)."""

    name = "matrix"

    def __init__(self, matrix: Tensor):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix.T.to(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y @ self.matrix.to(y)

    def pinv(self, y: Tensor) -> Tensor:
        return y @ torch.linalg.pinv(self.matrix).T.to(y)


def task_operator(task: Task, image_size: tuple[int, int], *, n: int = 1, generator: GeneratorLike = None,
                  box: float = 0.25, missing: float = 0.7, blur_sigma: float = 1.0, motion_length: int = 5,
                  motion_angle: float = 30.0) -> LinearOperator:
    """The operator of a named restoration task for images of ``image_size`` (``n`` masks for random inpainting)."""
    check_choice("task", task, TASKS)
    if task == "inpaint-box":
        return Inpaint(box_mask(image_size, box))
    if task == "inpaint-random":
        return Inpaint(random_mask(image_size, missing, n, generator))
    if task in ("sr2", "sr4"):
        f = int(task[2:])
        if image_size[0] % f or image_size[1] % f:
            raise ValueError(f"task {task} needs an image size divisible by {f}, got {image_size[1]}x{image_size[0]}")
        return SuperResolution(f)
    if task == "blur":
        return Blur(gaussian_kernel(blur_sigma))
    return Blur(motion_kernel(motion_length, motion_angle))
