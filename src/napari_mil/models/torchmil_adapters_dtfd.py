"""DTFD-MIL adapter (Zhang et al. 2022) — torchmil ``DTFDMIL`` with deterministic pseudo-bags.

Quirks of torchmil's forward handled here:

* pseudo-bags come from ``np.random.shuffle`` on every call, so predictions change between
  calls. This adapter shuffles with torch's RNG in training mode and uses a fixed permutation
  (seed 0) in eval mode, so a checkpoint always gives the same answer for the same bag;
* ``distill_mode="maxmin"`` crashes without a mask and lets padded instances into the tier-2 bag;
  here each padded bag is processed on its real instances only.

``attention`` is exact: the tier-2 bag embedding is a convex combination of instance features
(each instance enters through its pseudo-bag's distilled features), and the weights reported are
the total weight of each instance in that combination (they sum to 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._common import iter_bags, scatter_bags
from .output import MILOutput
from .registry import register_model
from .torchmil_adapters import TorchmilAdapter

__all__ = ["DTFDMIL"]


@register_model(
    "dtfd_mil",
    instance_label="patch probability (tier-2 classifier per patch)",
    attention_label="effective tier-2 weight",
    explains=(
        "attention: each instance's total weight in the tier-2 (final) bag embedding — tier-2 "
        "attention over distilled pseudo-bag features traced back to instances; it sums to 1. "
        "instance_scores: sigmoid of the tier-2 classifier applied to each instance, whose "
        "attention-weighted mean is exactly the bag logit. extras['instance_cam']: DTFD's tier-1 "
        "instance activation map (torchmil return_inst_cam)."
    ),
)
class DTFDMIL(TorchmilAdapter):
    """Double-tier feature distillation MIL — torchmil ``DTFDMIL``, one logit."""

    def __init__(
        self,
        in_dim: int,
        att_dim: int = 128,
        n_groups: int = 8,
        distill_mode: str = "maxmin",
        scale_name: str = "20x",
    ) -> None:
        super().__init__(in_dim, scale_name)
        from torchmil.models import DTFDMIL as TmDTFDMIL

        self.mil = TmDTFDMIL(
            in_shape=(self.in_dim,),
            att_dim=att_dim,
            n_groups=n_groups,
            distill_mode=distill_mode,
            feat_ext=nn.Identity(),
        )

    def _chunks(self, n: int) -> list[torch.Tensor]:
        groups = min(n, self.mil.n_groups)
        if self.training:
            perm = torch.randperm(n)
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        return list(torch.tensor_split(perm, groups))

    def _forward_groups(self, x: torch.Tensor, chunks) -> dict[str, torch.Tensor]:
        """torchmil's DTFD forward for unpadded bags ``x (B, n, D)`` with given pseudo-bags."""
        tm = self.mil
        feats = tm.feat_ext(x)  # (B, n, D)
        batch, n, dim = feats.shape
        cls_w = tm.classifier.module.weight  # (1, D)
        pseudo_pred, pseudo_feat, owner = [], [], []
        cam = feats.new_zeros(batch, n)  # (B, n)
        tier1_att = feats.new_zeros(batch, n)  # (B, n)
        for chunk in chunks:
            chunk = torch.as_tensor(np.asarray(chunk), dtype=torch.long, device=x.device)  # (c,)
            xc = feats[:, chunk]  # (B, c, D)
            z, f = tm.attention_pool(xc, None, return_att=True)  # (B, D), (B, c)
            s = torch.softmax(f, dim=1)  # (B, c)
            pseudo_pred.append(tm.classifier(z))  # (B, 1)
            cam_c = torch.einsum("bgf,cf->bcg", xc, cls_w).squeeze(1)  # (B, c)
            cam[:, chunk] = cam_c
            tier1_att[:, chunk] = s
            if tm.distill_mode == "afs":
                pseudo_feat.append(z.unsqueeze(1))  # (B, 1, D)
                owner.append(("afs", chunk, s))
                continue
            order_max = torch.sort(cam_c, 1, descending=True)[1]  # (B, c)
            order = order_max
            if tm.distill_mode == "maxmin":
                order = torch.cat(
                    [order_max, torch.sort(cam_c, 1, descending=False)[1]], 1
                )  # (B, 2c)
            pseudo_feat.append(torch.gather(xc, 1, order.unsqueeze(-1).expand(-1, -1, dim)))
            owner.append(("inst", chunk, order))
        pseudo = torch.cat(pseudo_feat, dim=1)  # (B, P, D)
        z2, f2 = tm.u_attention_pool(pseudo, None, return_att=True)  # (B, D), (B, P)
        a2 = torch.softmax(f2, dim=1)  # (B, P)
        logits = tm.u_classifier(z2)  # (B, 1)
        weight = feats.new_zeros(batch, n)  # (B, n)
        start = 0
        for kind, chunk, extra in owner:
            if kind == "afs":
                weight = weight.index_add(1, chunk, a2[:, start : start + 1] * extra)
                start += 1
            else:
                width = extra.shape[1]
                for b in range(batch):
                    weight[b] = weight[b].index_add(
                        0, chunk[extra[b]], a2[b, start : start + width]
                    )
                start += width
        inst_logits = tm.u_classifier(feats).squeeze(-1)  # (B, n)
        return {
            "logits": logits,
            "attention": weight,
            "instance_logits": inst_logits,
            "instance_cam": cam,
            "tier1_attention": tier1_att,
            "pseudo_bag_logits": torch.cat(pseudo_pred, dim=1),
        }  # (B, groups)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = self._check(x, mask)
        if mask is None or bool(mask.all()):
            out = self._forward_groups(x, self._chunks(x.shape[1]))
            extras = {k: out[k] for k in ("instance_cam", "tier1_attention", "pseudo_bag_logits")}
            logits, att, inst = out["logits"], out["attention"], out["instance_logits"]
        else:
            parts, idxs = [], []
            for _, xb, idx in iter_bags(x, mask):
                parts.append(self._forward_groups(xb, self._chunks(xb.shape[1])))
                idxs.append(idx)
            n = x.shape[1]
            logits = torch.cat([p["logits"] for p in parts])  # (B, 1)
            att = scatter_bags([p["attention"][0] for p in parts], idxs, n)  # (B, N)
            inst = scatter_bags([p["instance_logits"][0] for p in parts], idxs, n)  # (B, N)
            extras = {
                k: scatter_bags([p[k][0] for p in parts], idxs, n)
                for k in ("instance_cam", "tier1_attention")
            }
            groups = {p["pseudo_bag_logits"].shape[1] for p in parts}
            if len(groups) == 1:
                extras["pseudo_bag_logits"] = torch.cat([p["pseudo_bag_logits"] for p in parts])
        extras["instance_logits"] = inst
        return self._out(
            logits=logits,
            instance_scores=torch.sigmoid(inst),
            attention={self.scale_name: att},
            mask=mask,
            extras=extras,
        )
