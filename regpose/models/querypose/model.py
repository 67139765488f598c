"""The QueryPose network (paper Fig. 2): backbone + neck, S box decoder stages and S keypoint decoder stages;
the eval decoder (all proposals, or the exact fast top-k) and the deep-supervised training forward.

Runtime options (``cfg.runtime``; never change the outputs beyond fp32 rounding) come in through the builder:
``conv_impl`` (Winograd keypoint-decoder convs), ``parallel_chunks`` (proposal chunks on worker threads) and
``channels_last`` (NHWC backbone / neck), all at eager CPU inference only.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ...data.keypoints import KeypointMeta
from ...structures import PoseResult
from ..backbones import build_backbone
from ..base import PoseModel
from ..layers.dynamic_conv import eager_cpu_inference
from ..layers.matcher import HungarianMatcher
from ..layers.rle import RealNVP
from ..layers.thread_pool import worker_pool
from ..necks import FPN, HRFPN, HRFPNv1
from . import decode
from .box_decoder import BoxDecoderStage, MultiLevelRoIAlign, box_rois
from .config import QueryPoseConfig, part_groups
from .keypoint_decoder import SPEGM, KeypointDecoderStage
from .loss import box_losses, keypoint_loss, matched_targets, num_people, prepare_targets

__all__ = ["QueryPose", "build_querypose"]


def _batched(weight: torch.Tensor, b: int | None = None) -> torch.Tensor:
    """An embedding table as a (1 or b, ...) batch. Without autograd it is detached: a view of a parameter
    taken under no_grad would still claim requires_grad, which confuses module hooks (e.g. FLOP counters)."""
    w = weight if torch.is_grad_enabled() else weight.detach()
    return w[None] if b is None else w[None].expand(b, *w.shape)


class QueryPose(PoseModel):
    """Backbone + neck, S box decoder stages and S keypoint decoder stages, Hungarian set loss with RLE.

    ``forward(images, targets)`` -> weighted losses (training, every stage); ``forward(images,
    image_sizes=...)`` in eval -> dict of (B, N, ...) tensors: ``scores`` (pose score), ``logits``, ``boxes``
    (xyxy, network-input pixels), ``keypoints`` (x, y, per-keypoint score; input pixels), ``sigma``.

    Runtime options (eager CPU inference only; same outputs up to fp32 rounding): ``conv_impl`` (``winograd`` /
    ``direct`` keypoint-decoder 3x3 convs), ``parallel_chunks`` (keypoint chains of proposal chunks on worker
    threads instead of intra-op threads), ``channels_last`` (NHWC backbone and neck). All three can be changed on
    a built model (``model.conv_impl = "direct"``).
    """

    size_divisibility = 32

    def __init__(self, cfg: QueryPoseConfig, keypoints: KeypointMeta, *,
                 conv_impl: Literal["direct", "winograd"] = "winograd", parallel_chunks: bool = True,
                 channels_last: bool = True):
        super().__init__()
        self.cfg = cfg
        self.set_keypoints(keypoints)
        self.parallel_chunks = parallel_chunks
        self.channels_last = channels_last
        self.parts = part_groups(keypoints, cfg.part_scheme, cfg.query_type)
        d = cfg.hidden_dim
        swin = cfg.backbone.name.startswith("swin")           # timm Swin has no stride-2 stem level
        self.backbone = build_backbone(cfg.backbone, (0, 1, 2, 3) if swin else (1, 2, 3, 4))
        in_channels = self.backbone.channels
        keep = cfg.keep_unused_official
        if cfg.neck == "fpn":
            # Official code: LastLevelMaxPool builds a P6 nobody reads; it has no parameters, we skip it.
            self.neck = FPN(in_channels, d)
        elif cfg.neck == "hrfpn":
            self.neck = HRFPN(in_channels, d, keep_unused=keep)
        else:
            self.neck = HRFPNv1(in_channels, d, keep_unused=keep)
        strides = [4, 8, 16, 32]
        self.box_pooler = MultiLevelRoIAlign(cfg.box_pooler_resolution, strides, cfg.sampling_ratio)
        self.kpt_pooler = MultiLevelRoIAlign(cfg.kpt_pooler_resolution, strides[:1], cfg.sampling_ratio)

        self.init_proposal_features = nn.Embedding(cfg.num_proposals, d)
        self.init_proposal_boxes = nn.Embedding(cfg.num_proposals, 4)
        self.part_query = nn.Embedding(len(self.parts), cfg.part_dim)
        self.box_stages = nn.ModuleList(
            BoxDecoderStage(d, cfg.num_heads, cfg.dim_feedforward, cfg.dim_dynamic, cfg.box_pooler_resolution,
                            cfg.num_cls_layers, cfg.num_reg_layers) for _ in range(cfg.num_stages))
        self.kpt_stages = nn.ModuleList(KeypointDecoderStage(cfg, self.parts, conv_impl)
                                        for _ in range(cfg.num_stages))
        self.matcher = HungarianMatcher(cfg.class_weight, cfg.l1_weight, cfg.giou_weight, True,
                                        cfg.focal_alpha, cfg.focal_gamma)
        self.flow = RealNVP(cfg.flow_hidden, cfg.flow_layers)   # official criterion.flow.flow (loss only)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official init (spec 0.5): Xavier-uniform on every >=2-D decoder parameter, overriding the module
        inits (MSRA convs, N(0, 0.001) deconv, ...); class bias = -log((1 - pi) / pi); proposals = whole image."""
        for stage in list(self.box_stages) + list(self.kpt_stages):
            for name, p in stage.named_parameters():
                if p.dim() > 1:
                    if name.endswith("instance_to_parts.weight"):
                        # one Xavier per part block, as the official per-part Linears
                        for blk in p.data.view(-1, self.cfg.part_dim, p.shape[1]):
                            nn.init.xavier_uniform_(blk)
                    else:
                        nn.init.xavier_uniform_(p)
            for m in stage.modules():
                if isinstance(m, nn.Conv2d) and m.bias is not None:
                    nn.init.zeros_(m.bias)      # official: MSRA fill / constant init set conv biases to 0
            if isinstance(stage, KeypointDecoderStage) and isinstance(stage.part_embed, SPEGM):
                nn.init.zeros_(stage.part_embed.fc.bias)   # official: c2-Xavier sets it to 0
        bias = -math.log((1 - self.cfg.prior_prob) / self.cfg.prior_prob)
        for stage in self.box_stages:
            nn.init.constant_(stage.class_logits.bias, bias)
        nn.init.constant_(self.init_proposal_boxes.weight[:, :2], 0.5)
        nn.init.constant_(self.init_proposal_boxes.weight[:, 2:], 1.0)

    @property
    def conv_impl(self) -> str:
        """How the keypoint decoder's 3x3 convs run at eager CPU inference (each stage holds it)."""
        return self.kpt_stages[0].conv_impl

    @conv_impl.setter
    def conv_impl(self, value: Literal["direct", "winograd"]) -> None:
        for stage in self.kpt_stages:
            stage.conv_impl = value

    # ---- shared pieces -----------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """P2-P5. Eager CPU inference with ``channels_last`` runs the backbone and neck in channels-last memory
        (oneDNN's faster layout; same numbers) and hands RoIAlign contiguous NCHW maps."""
        fast = self.channels_last and eager_cpu_inference(images)
        if fast:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.neck(self.backbone(images))[:4]
        return [f.contiguous() for f in feats] if fast else feats

    def initial_boxes(self, image_sizes: torch.Tensor) -> torch.Tensor:
        """Learned (cx, cy, w, h) proposals in [0, 1] scaled to each image's unpadded (w, h) -> (B, N, 4)."""
        cxcywh = self.init_proposal_boxes.weight
        xyxy = torch.cat([cxcywh[:, :2] - 0.5 * cxcywh[:, 2:], cxcywh[:, :2] + 0.5 * cxcywh[:, 2:]], dim=1)
        wh = image_sizes.flip(-1).to(xyxy.dtype)                          # (B, 2) = (w, h)
        return xyxy[None] * torch.cat([wh, wh], dim=1)[:, None, :]

    def box_stage(self, s: int, feats: list[torch.Tensor], boxes: torch.Tensor, query: torch.Tensor):
        roi = self.box_pooler(feats, box_rois(boxes))                         # (B*N, d, 7, 7)
        tokens = roi.flatten(2).transpose(1, 2)                            # (B*N, 49, d)
        return self.box_stages[s](tokens, boxes, query)

    def _rois_of(self, flat: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign rows [batch index, x1, y1, x2, y2] of proposals ``flat`` (indices into B*N) with ``boxes``."""
        batch_idx = torch.div(flat, self.cfg.num_proposals, rounding_mode="floor").to(boxes.dtype)
        return torch.cat([batch_idx[:, None], boxes], dim=1)

    def kpt_stage(self, s: int, p2: torch.Tensor, rois: torch.Tensor, query: torch.Tensor,
                  part_query: torch.Tensor):
        roi = self.kpt_pooler([p2], rois)                                  # (n, d, 14, 14)
        return self.kpt_stages[s](roi, query, part_query)

    # ---- inference ---------------------------------------------------------------------------------------
    def decode(self, images: torch.Tensor, image_sizes: torch.Tensor, keep_stages: bool = False) -> dict:
        """Eval-mode decoder over all B*N proposals. Returns final (B, N, ...) tensors and, with
        ``keep_stages``, per-stage lists (logits, boxes, mu, sigma, queries, part queries).

        Official code (spec 0.2): at inference the keypoint decoder's refined instance query stays inside it,
        so the box decoder never reads the keypoint decoder and each proposal's keypoint chain (stage 1..S)
        depends only on its own boxes and queries. We therefore run the S box stages first and then the S
        keypoint stages proposal-chunk by proposal-chunk (in parallel threads on CPU): the same computation
        as the official stage-interleaved order, with coarse-grained parallelism. ``query_handoff='serial'``
        (non-light) needs the interleaved order and takes it.
        """
        feats = self.features(images)
        b, n = images.shape[0], self.cfg.num_proposals
        boxes = self.initial_boxes(image_sizes)
        query = _batched(self.init_proposal_features.weight, b)
        if self.cfg.query_handoff == "serial" and not self.cfg.light:
            return self._decode_serial(feats, boxes, query, keep_stages)
        stage_logits, stage_boxes, stage_queries = [], [], []
        for s in range(self.cfg.num_stages):
            logits, boxes, query = self.box_stage(s, feats, boxes, query)
            stage_logits.append(logits)
            stage_boxes.append(boxes)
            stage_queries.append(query)
        flat = torch.arange(b * n, device=images.device)
        kp = self._keypoint_chains(feats[0], stage_boxes, stage_queries, flat, keep_stages)
        out = decode.final_outputs(logits, boxes, kp["mu"].view(b, n, -1, 2), kp["sigma"].view(b, n, -1, 2))
        if keep_stages:
            out["stages"] = {"logits": stage_logits, "boxes": stage_boxes, "query": stage_queries,
                             "mu": [m.view(b, n, -1, 2) for m in kp["stage_mu"]],
                             "sigma": [m.view(b, n, -1, 2) for m in kp["stage_sigma"]],
                             "part_query": [q.view(b, n, *q.shape[1:]) for q in kp["stage_part_query"]]}
        return out

    def _decode_serial(self, feats, boxes, query, keep_stages: bool) -> dict:
        """Stage-interleaved decoding where the keypoint decoder's refined query feeds the next box stage."""
        b, n = boxes.shape[:2]
        part_q = _batched(self.part_query.weight)
        stages: dict[str, list] = {k: [] for k in ("logits", "boxes", "mu", "sigma", "query", "part_query")}
        logits = mu = sigma = None
        for s in range(self.cfg.num_stages):
            logits, boxes, query = self.box_stage(s, feats, boxes, query)
            mu, sigma, part_q, q_ref = self.kpt_stage(s, feats[0], box_rois(boxes), query.reshape(b * n, -1), part_q)
            if keep_stages:
                for k, v in (("logits", logits), ("boxes", boxes), ("mu", mu.view(b, n, -1, 2)),
                             ("sigma", sigma.view(b, n, -1, 2)), ("query", query),
                             ("part_query", part_q.view(b, n, *part_q.shape[1:]))):
                    stages[k].append(v)
            query = q_ref.view(b, n, -1)
        out = decode.final_outputs(logits, boxes, mu.view(b, n, -1, 2), sigma.view(b, n, -1, 2))
        if keep_stages:
            out["stages"] = stages
        return out

    def _keypoint_chain(self, p2, stage_boxes, stage_queries, flat: torch.Tensor, keep_stages: bool) -> dict:
        """Keypoint stages 1..S for the proposals ``flat`` (indices into B*N): final and per-stage outputs."""
        part_q = _batched(self.part_query.weight)
        out: dict[str, list] = {"stage_mu": [], "stage_sigma": [], "stage_part_query": []}
        mu = sigma = None
        for s in range(self.cfg.num_stages):
            boxes = stage_boxes[s].reshape(-1, 4)[flat]
            q = stage_queries[s].reshape(-1, stage_queries[s].shape[-1])[flat]
            mu, sigma, part_q, _ = self.kpt_stage(s, p2, self._rois_of(flat, boxes), q, part_q)
            if keep_stages:
                out["stage_mu"].append(mu)
                out["stage_sigma"].append(sigma)
                out["stage_part_query"].append(part_q)
        return {"mu": mu, "sigma": sigma, **out}

    def _keypoint_chains(self, p2, stage_boxes, stage_queries, flat: torch.Tensor, keep_stages: bool) -> dict:
        """:meth:`_keypoint_chain` over proposal chunks. Eager CPU inference splits the proposals into chunks
        (about four per thread) and runs them in ``torch.get_num_threads()`` worker threads, each with one
        intra-op thread: per-proposal work needs no synchronisation, whereas thousands of small OpenMP
        parallel regions stall whenever another process takes a core. Results are identical to one chunk."""
        threads = torch.get_num_threads()
        eager_cpu = eager_cpu_inference(p2)
        chunked = self.conv_impl == "winograd" or (self.parallel_chunks and threads > 1)
        if not eager_cpu or not chunked or flat.numel() <= 8:
            return self._keypoint_chain(p2, stage_boxes, stage_queries, flat, keep_stages)
        size = max(4, min(16, -(-flat.numel() // (4 * threads))))
        chunks = list(flat.split(size))
        inference = torch.is_inference_mode_enabled()

        def work(c):
            # grad / inference mode are thread-local: the workers must run under the caller's
            with torch.inference_mode(inference), torch.no_grad():
                return self._keypoint_chain(p2, stage_boxes, stage_queries, c, keep_stages)

        if threads > 1 and self.parallel_chunks:
            parts = list(worker_pool(threads).map(work, chunks))
        else:
            parts = [work(c) for c in chunks]
        out = {k: torch.cat([p[k] for p in parts]) for k in ("mu", "sigma")}
        for k in ("stage_mu", "stage_sigma", "stage_part_query"):
            out[k] = [torch.cat([p[k][s] for p in parts]) for s in range(len(parts[0][k]))]
        return out

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None,
                image_sizes: torch.Tensor | None = None):
        if image_sizes is None:
            if targets is not None and all("image_size" in t for t in targets):
                image_sizes = torch.stack([torch.as_tensor(t["image_size"]) for t in targets]).to(images.device)
            else:
                h, w = images.shape[-2:]
                image_sizes = torch.tensor([[h, w]], device=images.device).expand(images.shape[0], 2)
        if self.training:
            if targets is None:
                raise ValueError("QueryPose.forward: training needs targets")
            return self.losses(images, targets, image_sizes)
        if self.cfg.fast_topk > 0:
            return self.decode_fast(images, image_sizes, self.cfg.fast_topk)
        out = self.decode(images, image_sizes)
        return {k: v for k, v in out.items() if k != "stages"}

    # ---- training ----------------------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, targets: list[dict], image_sizes: torch.Tensor) -> dict:
        """Deep-supervised set loss (spec 5, 6). Per stage: match, run the keypoint decoder on the matched
        queries only, focal / L1 / GIoU on boxes and RLE on keypoints. Keys: ``loss_*`` for the last stage,
        ``loss_*_{s}`` for stage s < S-1."""
        cfg = self.cfg
        feats = self.features(images)
        b, n = images.shape[0], cfg.num_proposals
        tgts = prepare_targets(targets, image_sizes, self.num_keypoints, images.dtype, images.device)
        num_boxes = num_people(tgts, images.device)

        boxes = self.initial_boxes(image_sizes)
        query = _batched(self.init_proposal_features.weight, b)
        part_q = _batched(self.part_query.weight)
        write_back = not cfg.light and cfg.query_handoff in ("official", "serial")
        losses: dict[str, torch.Tensor] = {}
        for s in range(cfg.num_stages):
            logits, new_boxes, query = self.box_stage(s, feats, boxes, query)
            indices = self.matcher(logits.detach(), new_boxes.detach(), tgts)
            boxes = new_boxes.detach()
            flat, gt_boxes, gt_kpts, sizes = matched_targets(tgts, indices, n)
            stage_losses = box_losses(cfg, logits, new_boxes, flat, gt_boxes, sizes, num_boxes)
            if len(flat) > 0:
                sel_boxes = boxes.reshape(b * n, 4)[flat]
                sel_q = query.reshape(b * n, -1)[flat]
                mu, sigma, part_q, q_ref = self.kpt_stage(s, feats[0], self._rois_of(flat, sel_boxes), sel_q, part_q)
                stage_losses["loss_kps"] = cfg.kpt_weight * keypoint_loss(self.flow, mu, sigma, gt_kpts, sel_boxes,
                                                                          num_boxes)
                if write_back:
                    # Official code (spec 0.2): refined matched queries are written into the next stage's input.
                    query = query.reshape(b * n, -1).index_put((flat,), q_ref).view(b, n, -1)
            else:
                stage_losses["loss_kps"] = logits.sum() * 0.0
            suffix = "" if s == cfg.num_stages - 1 else f"_{s}"
            if cfg.deep_supervision or s == cfg.num_stages - 1:
                losses.update({k + suffix: v for k, v in stage_losses.items()})
        return losses

    # ---- prediction --------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        """People per image in original pixels (:func:`regpose.models.querypose.decode.predict`)."""
        return decode.predict(self, batch, test_cfg)

    # ---- fast inference: keypoints only for proposals that can reach the top-k ----------------------------
    def decode_fast(self, images: torch.Tensor, image_sizes: torch.Tensor, k: int) -> dict:
        """Exact top-``k`` people with less work (ours).

        At inference the box decoder never reads the keypoint decoder (spec 0.2) and each proposal's keypoint
        chain is independent of the other proposals, so all box stages run first and the keypoint stages
        only for the ``k`` proposals with the highest class probability p. Since pose score =
        p * mean(1 - sigma) <= p, any other proposal whose p exceeds the k-th best pose score found is decoded
        too (eager mode; rare), so the returned top-k equals the full model's top-k. Returns (B, k, ...)
        tensors sorted by score plus ``proposal_index`` (B, k). Under tracing / ONNX export the widening
        step is skipped (fixed top-k by class probability).
        """
        feats = self.features(images)
        b, n = images.shape[0], self.cfg.num_proposals
        k = min(k, n)
        boxes = self.initial_boxes(image_sizes)
        query = _batched(self.init_proposal_features.weight, b)
        stage_boxes, stage_queries, logits = [], [], boxes.new_zeros(b, n, 1)
        for s in range(self.cfg.num_stages):
            logits, boxes, query = self.box_stage(s, feats, boxes, query)
            stage_boxes.append(boxes)
            stage_queries.append(query)
        prob = logits[..., 0].sigmoid()                                    # (B, N)
        sel = prob.topk(k, dim=1).indices                                  # (B, k)
        decoded = self._decode_keypoints_for(feats, stage_boxes, stage_queries, logits, sel)
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            while True:
                kth = decoded["scores"].topk(k, dim=1).values[:, -1:]     # (B, 1)
                done = torch.zeros_like(prob, dtype=torch.bool).scatter_(1, decoded["proposal_index"], True)
                extra = (prob > kth) & ~done
                if not bool(extra.any()):
                    break
                m = int(extra.sum(1).max())
                more = torch.where(extra, prob, prob.new_tensor(-1.0)).topk(m, dim=1).indices   # (B, m)
                valid = extra.gather(1, more)
                new = self._decode_keypoints_for(feats, stage_boxes, stage_queries, logits, more)
                # an image with fewer new candidates than m pads with already-decoded ones: score them out
                new["scores"] = torch.where(valid, new["scores"], new["scores"].new_tensor(-1.0))
                decoded = {key: torch.cat([decoded[key], new[key]], dim=1) for key in decoded}
        top = decoded["scores"].topk(k, dim=1).indices
        return {key: v.gather(1, top.view(b, k, *([1] * (v.dim() - 2))).expand(b, k, *v.shape[2:]))
                for key, v in decoded.items()}

    def _decode_keypoints_for(self, feats, stage_boxes, stage_queries, logits, sel: torch.Tensor) -> dict:
        """Run the S keypoint stages for the proposals ``sel`` (B, m) -> (B, m, ...) final outputs."""
        b, m = sel.shape
        n = self.cfg.num_proposals
        flat = (sel + torch.arange(b, device=sel.device)[:, None] * n).reshape(-1)
        kp = self._keypoint_chains(feats[0], stage_boxes, stage_queries, flat, False)
        boxes = stage_boxes[-1].reshape(b * n, 4)[flat].view(b, m, 4)
        out = decode.final_outputs(logits.gather(1, sel[..., None]), boxes, kp["mu"].view(b, m, -1, 2),
                                   kp["sigma"].view(b, m, -1, 2))
        out["proposal_index"] = sel
        return out


def build_querypose(cfg, keypoints: KeypointMeta) -> QueryPose:
    """Build from a full :class:`regpose.config.Config` for the keypoint layout ``keypoints``, the runtime options
    from ``runtime``."""
    rt = cfg.runtime
    return QueryPose(cfg.model, keypoints, conv_impl=rt.conv_impl,
                     parallel_chunks=rt.parallel_chunks, channels_last=rt.channels_last)
