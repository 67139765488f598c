"""Poseur's training loss (paper Eq. 2-4, spec 3.1): RLE on the coarse proposal and on every decoder layer."""
from __future__ import annotations

import torch

from ..layers.rle import RealNVP, rle_loss, rle_terms, saturated_fraction

__all__ = ["poseur_losses"]


def poseur_losses(out: dict, target: torch.Tensor, weight: torch.Tensor, groups: int, coarse_flow: RealNVP,
                  decoder_flow: RealNVP) -> dict:
    """Coarse RLE loss + one RLE loss per decoder layer, every weight 1 (spec 3.1).

    ``out``: ``coarse_mu`` / ``coarse_sigma`` (B, K, 2) and per-layer lists ``mu`` / ``sigma`` (B, G*K, 2) of
    :meth:`Poseur.forward_all <regpose.models.poseur.model.Poseur.forward_all>`; target, weight (B, K, 2); ``groups``
    G query groups (1 + noisy groups), each supervised by the same target. The coarse divisor is B * K, the decoder's
    counts every query group (B * K * G); with no labelled keypoint the plain sums (0). Also ``sigma_saturated``, a
    logged diagnostic that is not part of the loss."""
    B, K, _ = target.shape
    any_visible = bool(weight.sum() > 0)
    losses = {"loss_coarse": rle_loss(out["coarse_mu"], out["coarse_sigma"], target, weight, coarse_flow,
                                      B * K if any_visible else None)}
    # every decoder layer shares the decoder flow: one flow evaluation over all layers, summed per layer
    tg, wg = target.repeat(1, groups, 1), weight.repeat(1, groups, 1)
    sigmas = torch.stack(out["sigma"])
    terms = rle_terms(torch.stack(out["mu"]), sigmas, tg, wg, decoder_flow)
    per_layer = terms.flatten(1).sum(1)
    if any_visible:
        per_layer = per_layer / (B * K * groups)
    for i in range(len(out["mu"])):
        losses[f"loss_dec{i}"] = per_layer[i]
    # diagnostic, not a loss: the worst head's share of saturated sigmas (see saturated_fraction)
    losses["sigma_saturated"] = torch.maximum(saturated_fraction(out["coarse_sigma"], weight),
                                              saturated_fraction(sigmas, wg).max())
    return losses
