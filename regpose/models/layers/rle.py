"""Residual log-likelihood estimation (RLE, Li et al. ICCV 2021) with a RealNVP flow.

Shared by the RLE regression baseline, Poseur and QueryPose. The flow models the density of the normalised
residual (mu - y) / sigma; the loss is the negative log-likelihood of the ground truth under
``sigma^-1 * p_flow((y - mu) / sigma)`` written as the residual form of the RLE paper (Eq. 8-10) with the
official code's constants (see ``rle_loss``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RealNVP", "rle_loss", "rle_terms", "saturated_fraction"]

_LOG_2PI = math.log(2 * math.pi)
_SQRT_2PI = math.sqrt(2 * math.pi)


def _mlp(hidden: int, tanh: bool) -> nn.Sequential:
    layers = [nn.Linear(2, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, hidden), nn.LeakyReLU(0.01),
              nn.Linear(hidden, 2)]
    if tanh:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class RealNVP(nn.Module):
    """2-D RealNVP: ``num_layers`` affine couplings with alternating masks (0,1), (1,0), ...

    Parameter layout (``s.i.{0,2,4}``, ``t.i.{0,2,4}``, buffer ``mask``) matches the official RLE / Poseur /
    QueryPose flows so their state dicts load unchanged. ``prior_mean`` is the mean of the Gaussian prior:
    (0, 0) in RLE and QueryPose, (0.5, 0.5) in Poseur's official code (spec 3.1).
    """

    def __init__(self, hidden: int = 64, num_layers: int = 6, prior_mean: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        masks = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(num_layers // 2 + 1, 1)[:num_layers]
        self.register_buffer("mask", masks)
        self.register_buffer("prior_mean", torch.tensor(prior_mean, dtype=torch.float32), persistent=False)
        self.s = nn.ModuleList([_mlp(hidden, tanh=True) for _ in range(num_layers)])
        self.t = nn.ModuleList([_mlp(hidden, tanh=False) for _ in range(num_layers)])

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map data x (..., 2) to the latent z; returns (z, log|det dz/dx|)."""
        z = x
        logdet = x.new_zeros(x.shape[:-1])
        for i in reversed(range(len(self.s))):
            m = self.mask[i]
            z_m = m * z
            s = self.s[i](z_m) * (1 - m)
            t = self.t[i](z_m) * (1 - m)
            z = (1 - m) * (z - t) * torch.exp(-s) + z_m
            logdet = logdet - s.sum(-1)
        return z, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x of shape (..., 2) -> (...)."""
        z, logdet = self.inverse(x)
        log_prior = -_LOG_2PI - 0.5 * ((z - self.prior_mean) ** 2).sum(-1)
        return log_prior + logdet


def rle_terms(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
              flow: RealNVP) -> torch.Tensor:
    """Per-coordinate weighted RLE negative log-likelihood terms (..., 2) = nf + Q (see :func:`rle_loss`).

    Batch several predictions of one flow into a single call (e.g. all decoder layers) and sum slices of the
    result: one flow evaluation instead of one per prediction set."""
    bar = (mu - target) / sigma
    log_phi = flow.log_prob(bar).unsqueeze(-1)
    nf = (torch.log(sigma) - log_phi) * weight[..., :1]
    q = (torch.log(sigma * _SQRT_2PI) + (target - mu).abs() / (math.sqrt(2) * sigma + 1e-9)) * weight
    return nf + q


def rle_loss(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             flow: RealNVP, divisor: float | torch.Tensor | None) -> torch.Tensor:
    """Summed RLE negative log-likelihood divided by ``divisor`` (``None``: plain sum).

    mu, sigma, target: (..., 2) in the method's normalised frame; weight: (..., 2) per-coordinate weights.
    Per keypoint, as in the official RLE code (RLE Eq. 10 with its constants):
        log_phi = log p_flow((mu - y) / sigma)
        nf_d    = (log sigma_d - log_phi) * w_x           (log_phi counted once per coordinate)
        Q_d     = (log(sigma_d sqrt(2 pi)) + |y_d - mu_d| / (sqrt(2) sigma_d + 1e-9)) * w_d
    The x-weight multiplies both nf terms (official Poseur code; QueryPose's weights are equal for x and y).
    """
    total = rle_terms(mu, sigma, target, weight, flow).sum()
    return total if divisor is None else total / divisor


@torch.no_grad()
def saturated_fraction(sigma: torch.Tensor, weight: torch.Tensor, threshold: float = 0.999) -> torch.Tensor:
    """Share of the supervised (weight > 0) coordinates whose sigmoid sigma is above ``threshold`` (0 if none);
    one value per leading index when ``sigma`` has more dimensions than ``weight`` (e.g. stacked decoder layers).

    A training diagnostic: a sigma head whose sigmoid saturates at 1 gets no gradient and cannot recover, while
    the RLE loss can stay low (the flow absorbs the scale); every keypoint score built from sigma is then constant
    and instances can no longer be ranked. Seen in an unclipped 7,000-iteration synthetic Poseur run (last decoder
    layer); gradient clipping prevents it (configs/poseur/poseur_tiny_synthetic.yaml).
    No data-dependent branch, so no device synchronisation on the training path."""
    supervised = (weight > 0).expand_as(sigma)
    dims = tuple(range(sigma.dim() - weight.dim(), sigma.dim()))
    return ((sigma > threshold) & supervised).sum(dims) / supervised.sum(dims).clamp(min=1)
