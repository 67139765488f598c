"""QueryPose's keypoint decoder (paper Eq. 2, Sec. 3.2-3.3, spec 4): RoI conv tower, part-embedding generation
(SPEGM and the Table 1 / 2b alternatives), part-query iteration (SIM and the Table 2a alternatives) and one decoder
stage with its per-part coordinate (mu) and uncertainty (sigma) heads."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.dynamic_conv import DynamicConv, eager_cpu_inference
from ..layers.linear import NormalizedLinear
from ..layers.winograd import WinogradConv3x3, winograd_conv_relu_tower
from .config import QueryPoseConfig

__all__ = ["SPEGM", "GlobalPoolEmbedding", "CrossAttentionEmbedding", "PartDynamicMLP", "SelectiveIteration",
           "SumIteration", "ConcatIteration", "NoIteration", "KeypointDecoderStage"]


class SPEGM(nn.Module):
    """Spatial Part Embedding Generation Module (Sec. 3.2): deconv x2 -> per-part spatial softmax attention
    -> attention-weighted sum of the upsampled RoI features -> Linear(d -> dp). E = Linear(A (x) ROI^T)."""

    def __init__(self, d: int, dp: int, num_parts: int):
        super().__init__()
        self.upsample = nn.Sequential(nn.ConvTranspose2d(d, d, 4, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.attention_conv = nn.Conv2d(d, num_parts, 3, padding=1)       # official LSA_conv
        self.fc = nn.Linear(d, dp)

    def _upsample(self, u: torch.Tensor) -> torch.Tensor:
        """Deconv -> BN -> ReLU. At eager inference the (eval-mode) BN is folded into the deconvolution: one
        pass less over the (n, d, 28, 28) map, the same numbers up to rounding."""
        deconv, bn = self.upsample[0], self.upsample[1]
        if self.training or bn.training or not eager_cpu_inference(u):
            return self.upsample(u)
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = deconv.weight * scale.view(1, -1, 1, 1)                   # (in, out, k, k): scale outputs
        bias = bn.bias - bn.running_mean * scale
        return F.relu_(F.conv_transpose2d(u, weight, bias, stride=2, padding=1))

    def forward(self, u: torch.Tensor, part_query: torch.Tensor | None = None) -> torch.Tensor:
        """u (n, d, r, r) -> part embeddings (n, P, dp)."""
        x = self._upsample(u)                                              # (n, d, 2r, 2r)
        attn = self.attention_conv(x).flatten(2).softmax(-1)              # (n, P, 4r^2)
        e = torch.bmm(attn, x.flatten(2).transpose(1, 2))                  # (n, P, d)
        return self.fc(e)


class GlobalPoolEmbedding(nn.Module):
    """Table 2b baseline ("SPEGM off"): global average pooling of the RoI features, one Linear per part."""

    def __init__(self, d: int, dp: int, num_parts: int):
        super().__init__()
        self.num_parts, self.dp = num_parts, dp
        self.fc = nn.Linear(d, num_parts * dp)

    def forward(self, u: torch.Tensor, part_query: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(u.mean((2, 3))).view(u.shape[0], self.num_parts, self.dp)


class CrossAttentionEmbedding(nn.Module):
    """Table 1 "MHSA" interaction: the part queries attend to the RoI feature tokens."""

    def __init__(self, d: int, dp: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dp, num_heads, kdim=d, vdim=d, batch_first=True)
        self.norm = nn.LayerNorm(dp)

    def forward(self, u: torch.Tensor, part_query: torch.Tensor) -> torch.Tensor:
        tokens = u.flatten(2).transpose(1, 2)                              # (n, T, d)
        q = part_query.expand(u.shape[0], -1, -1)
        return self.norm(q + self.attn(q, tokens, tokens, need_weights=False)[0])


class PartDynamicMLP(nn.Module):
    """Table 1 "DyMLP" interactions: each part query generates an MLP applied to the RoI tokens.

    channel: W1 (d x dd), W2 (dd x dp) mix channels (Sparse R-CNN's dynamic conv per part);
    spatial: W1 (T x dd) mixes the T token positions. Both end in a shared Linear to dp. The paper gives
    no further detail; this is our reading of it.
    """

    def __init__(self, d: int, dp: int, dim_dynamic: int, num_tokens: int, mode: Literal["channel", "spatial"]):
        super().__init__()
        self.mode, self.d, self.dp, self.dd, self.t = mode, d, dp, dim_dynamic, num_tokens
        n_params = d * dim_dynamic + dim_dynamic * dp if mode == "channel" else num_tokens * dim_dynamic
        self.dynamic_layer = nn.Linear(dp, n_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(dp) if mode == "channel" else None
        out_in = num_tokens * dp if mode == "channel" else d * dim_dynamic
        self.out_layer = nn.Linear(out_in, dp)
        self.norm3 = nn.LayerNorm(dp)

    def forward(self, u: torch.Tensor, part_query: torch.Tensor) -> torch.Tensor:
        n = u.shape[0]
        q = part_query.expand(n, -1, -1)                                   # (n, P, dp)
        p = q.shape[1]
        tokens = u.flatten(2).transpose(1, 2)                              # (n, T, d)
        params = self.dynamic_layer(q)                                     # (n, P, n_params)
        if self.mode == "channel":
            w1 = params[..., : self.d * self.dd].reshape(n, p, self.d, self.dd)
            w2 = params[..., self.d * self.dd:].reshape(n, p, self.dd, self.dp)
            x = F.relu(self.norm1(torch.einsum("ntc,npcr->nptr", tokens, w1)))
            x = F.relu(self.norm2(torch.einsum("nptr,nprk->nptk", x, w2)))    # (n, P, T, dp)
        else:
            w1 = params.reshape(n, p, self.t, self.dd)
            x = F.relu(self.norm1(torch.einsum("ntc,nptr->npcr", tokens, w1)))  # (n, P, d, dd)
        return F.relu(self.norm3(self.out_layer(x.flatten(2))))


class SelectiveIteration(nn.Module):
    """SIM (Sec. 3.3, Eq. 3): gates g_E, g_Q = sigmoid(MLP(E + Q)); Q' = g_E * E + g_Q * Q.

    Official code: the MLP is fc1 (no bias) -> LayerNorm -> ReLU -> fc2 (2 dp outputs: the first dp gate E,
    the last dp gate Q). ``fc3`` / ``norm_fc3`` exist in the official module but are never used.
    """

    def __init__(self, dp: int, keep_unused: bool = False):
        super().__init__()
        self.dp = dp
        self.fc1 = nn.Linear(dp, dp // 4, bias=False)
        self.norm_fc1 = nn.LayerNorm(dp // 4)
        self.fc2 = nn.Linear(dp // 4, 2 * dp)
        if keep_unused:
            self.fc3 = nn.Linear(dp, dp, bias=False)
            self.norm_fc3 = nn.LayerNorm(dp)

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc2(F.relu(self.norm_fc1(self.fc1(e + q)))))
        return g[..., : self.dp] * e + g[..., self.dp:] * q


class SumIteration(nn.Module):
    """Table 2a "Summation": Q' = E + Q."""

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return e + q


class ConcatIteration(nn.Module):
    """Table 2a "Concatenation": Q' = Linear([E, Q])."""

    def __init__(self, dp: int):
        super().__init__()
        self.fc = nn.Linear(2 * dp, dp)

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([e, q.expand_as(e)], dim=-1))


class NoIteration(nn.Module):
    """Table 2a "None": the part queries are the new embeddings, no memory of previous stages."""

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return e


class KeypointDecoderStage(nn.Module):
    """One keypoint decoder stage (official ``Pose_Decoder_Layer``).

    RoI features U = convs(RoIAlign14(P2, box)); [non-light: q~ = FFN(LN(q + DyConv(q, U)))]; E = SPEGM(U) +
    Linear_j(q~) per part; Q = SIM(E, Q_prev); Q = FFN(LN(Q + MHSA_parts(Q))); mu_j = NormLinear_j(Q_j),
    sigma_j = sigmoid(Linear_j(Q_j)). mu is in the box frame (0 = centre, +-0.5 = edges).

    ``conv_impl`` (runtime option, never changes the outputs beyond fp32 rounding): ``winograd`` runs the RoI conv
    tower with :mod:`~regpose.models.layers.winograd` at eager CPU inference, ``direct`` always with conv2d.
    """

    def __init__(self, cfg: QueryPoseConfig, parts: list[list[int]],
                 conv_impl: Literal["direct", "winograd"] = "winograd"):
        super().__init__()
        d, dp, ff = cfg.hidden_dim, cfg.part_dim, cfg.dim_feedforward
        self.parts = parts
        self.num_parts = len(parts)
        self.dp = dp
        self.light = cfg.light
        self.conv_impl = conv_impl
        chans = [d] + [2 * d] * (cfg.num_convs - 1) + [d]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(cfg.num_convs))
        if not cfg.light:
            self.inst_interact = DynamicConv(d, cfg.dim_dynamic, cfg.kpt_pooler_resolution ** 2)
            self.inst_norm = nn.LayerNorm(d)
            self.inst_linear1 = nn.Linear(d, ff)
            self.inst_linear2 = nn.Linear(ff, d)
            self.inst_norm2 = nn.LayerNorm(d)
        if cfg.interaction == "spegm":
            self.part_embed = SPEGM(d, dp, self.num_parts)
        elif cfg.interaction == "gap":
            self.part_embed = GlobalPoolEmbedding(d, dp, self.num_parts)
        elif cfg.interaction == "mhsa":
            self.part_embed = CrossAttentionEmbedding(d, dp, cfg.num_heads)
        else:
            self.part_embed = PartDynamicMLP(d, dp, cfg.dim_dynamic, cfg.kpt_pooler_resolution ** 2,
                                             "channel" if cfg.interaction == "dymlp_channel" else "spatial")
        # Official code: one Linear(d -> dp) per part (``residual_filter``); one stacked Linear here.
        self.instance_to_parts = nn.Linear(d, self.num_parts * dp)
        self.iteration = {"selective": lambda: SelectiveIteration(dp, cfg.keep_unused_official),
                          "summation": SumIteration, "concatenation": lambda: ConcatIteration(dp),
                          "none": NoIteration}[cfg.iteration]()
        self.part_attn = nn.MultiheadAttention(dp, cfg.num_heads, dropout=0.0, batch_first=True)
        self.part_attn_norm = nn.LayerNorm(dp)
        self.part_linear1 = nn.Linear(dp, ff)
        self.part_linear2 = nn.Linear(ff, dp)
        self.part_ffn_norm = nn.LayerNorm(dp)
        self.coord_heads = nn.ModuleList(NormalizedLinear(dp, 2 * len(p)) for p in parts)
        self.sigma_heads = nn.ModuleList(nn.Linear(dp, 2 * len(p)) for p in parts)
        order = [k for p in parts for k in p]
        self.register_buffer("part_to_kpt", torch.tensor(np.argsort(order), dtype=torch.long), persistent=False)
        self._wino_cache: tuple | None = None

    def __getstate__(self):
        # the Winograd cache holds oneDNN (opaque) tensors: never copy / pickle it, it is rebuilt on demand
        state = dict(self.__dict__)
        state["_wino_cache"] = None
        return state

    def train(self, mode: bool = True):
        if mode:
            self._wino_cache = None     # transformed weights go stale while training; free their memory
        return super().train(mode)

    # ---- RoI feature tower -------------------------------------------------------------------------------
    def _winograd_layers(self) -> list[WinogradConv3x3]:
        """Transformed (and pre-packed) weights of every conv, rebuilt when a parameter changes (in-place
        updates bump ``_version``; replacing or moving it changes the storage)."""
        key = tuple((c.weight._version, c.weight.data_ptr(), c.weight.device, c.weight.dtype,
                     None if c.bias is None else (c.bias._version, c.bias.data_ptr())) for c in self.convs)
        if self._wino_cache is None or self._wino_cache[0] != key:
            self._wino_cache = (key, [WinogradConv3x3(c.weight, c.bias) for c in self.convs])
        return self._wino_cache[1]

    def roi_convs(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked 3x3 conv + ReLU on (n, d, r, r) RoI features -> U (n, d, r, r). Eager CPU inference with
        ``conv_impl='winograd'`` takes the Winograd tower (same result up to fp32 rounding); training, CUDA,
        tracing and ONNX export use plain convolutions."""
        if self.conv_impl == "winograd" and eager_cpu_inference(x) and x.shape[0] > 0:
            return winograd_conv_relu_tower(x, self._winograd_layers())
        for conv in self.convs:
            x = F.relu(conv(x))
        return x

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, roi_feats: torch.Tensor, query: torch.Tensor, part_query: torch.Tensor):
        """roi_feats (n, d, r, r) 14x14 RoIAlign of P2; query (n, d); part_query (n or 1, P, dp) ->
        mu (n, K, 2) box frame, sigma (n, K, 2), new part queries (n, P, dp), instance query q~ (n, d)."""
        n = roi_feats.shape[0]
        u = self.roi_convs(roi_feats)                                      # (n, d, r, r)
        q = query
        if not self.light:
            tokens = u.flatten(2).transpose(1, 2)                          # (n, r*r, d)
            q = self.inst_norm(q + self.inst_interact(q, tokens))
            q = self.inst_norm2(q + self.inst_linear2(F.relu(self.inst_linear1(q))))
        e = self.part_embed(u, part_query)                                 # (n, P, dp)
        e = e + self.instance_to_parts(q).view(n, self.num_parts, self.dp)
        pq = self.iteration(e, part_query)                                 # (n, P, dp)
        pq = self.part_attn_norm(pq + self.part_attn(pq, pq, pq, need_weights=False)[0])
        pq = self.part_ffn_norm(pq + self.part_linear2(F.relu(self.part_linear1(pq))))
        mu = torch.cat([head(pq[:, j]) for j, head in enumerate(self.coord_heads)], dim=1)
        sig = torch.cat([head(pq[:, j]) for j, head in enumerate(self.sigma_heads)], dim=1)
        mu = mu.view(n, -1, 2)[:, self.part_to_kpt]                        # (n, K, 2) in dataset order
        sigma = torch.sigmoid(sig.view(n, -1, 2)[:, self.part_to_kpt])
        return mu, sigma, pq, q
