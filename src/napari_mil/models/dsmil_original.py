"""dsmil-wsi's MILNet (Li et al. 2021, binli123/dsmil-wsi ``dsmil.py``) with its own forward.

Not torchmil's DSMIL: dsmil-wsi gives each of its ``n_labels`` outputs a sigmoid (multi-label),
picks one critical instance per label, and classifies the ``(labels × features)`` bag
embedding with a ``Conv1d(n_labels, n_labels, kernel_size=D)`` (``fcc``), held here as the
equivalent ``Linear(n_labels·D, n_labels)``. Its test scripts report ``sigmoid(bag logit)``,
or with ``--average`` the mean of that probability and ``sigmoid(max instance logit)``;
``average=True`` reproduces that (the logit returned is the logit of the averaged probability).

napari-mil's output contract is one binary task or one softmax over classes; a multi-label
model therefore explains one label: ``label`` (index) is the positive class, and
``extras["label_probabilities"] (B, n_labels)`` holds every label's probability.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_bag, iter_bags, scatter_bags
from .output import MILOutput
from .registry import register_model

__all__ = ["DSMILOriginal"]

#: probabilities are clipped to [eps, 1 - eps] before the logit of an averaged probability
_EPS = 1e-7


@register_model(
    "dsmil_original",
    instance_label="instance classifier probability (max stream)",
    attention_label="similarity to critical patch",
    explains=(
        "dsmil-wsi's own forward. attention: softmax over the bag of each instance's query "
        "similarity to the critical (highest-scoring) instance of the explained label. "
        "instance_scores: sigmoid of the instance classifier for that label. The bag "
        "probability is sigmoid of the bag classifier, or with average=True the mean of it and "
        "the top instance probability, as dsmil-wsi's test scripts compute them."
    ),
)
class DSMILOriginal(nn.Module):
    """dsmil-wsi ``MILNet(FCLayer, BClassifier)`` on pre-extracted features."""

    n_classes = 1

    def __init__(
        self,
        in_dim: int = 512,
        n_labels: int = 1,
        label: int | None = None,
        nonlinear_q: bool = True,
        q_dim: int = 128,
        passing_v: bool = False,
        average: bool = False,
        scale_name: str = "20x",
    ) -> None:
        super().__init__()
        self.in_dim, self.n_labels, self.scale_name = int(in_dim), int(n_labels), str(scale_name)
        if self.n_labels < 1:
            raise ModelError(f"n_labels must be ≥ 1, got {n_labels}.")
        if label is None and self.n_labels > 1:
            raise ModelError(
                f"This dsmil-wsi model has {self.n_labels} independent labels (sigmoid each); "
                f"set kwargs 'label' to the index (0..{self.n_labels - 1}) of the label to "
                "explain, with class_names ['not <label>', '<label>']"
            )
        self.label = 0 if label is None else int(label)
        if not 0 <= self.label < self.n_labels:
            raise ModelError(f"label {label} is not in 0..{self.n_labels - 1}.")
        self.average = bool(average)
        d, c = self.in_dim, self.n_labels
        self.inst_fc = nn.Linear(d, c)
        if nonlinear_q:
            self.q = nn.Sequential(
                nn.Linear(d, q_dim), nn.ReLU(), nn.Linear(q_dim, q_dim), nn.Tanh()
            )
        else:
            self.q = nn.Linear(d, q_dim)
        self.v = nn.Sequential(nn.Linear(d, d), nn.ReLU()) if passing_v else nn.Identity()
        self.bag_fc = nn.Linear(c * d, c)  # dsmil-wsi fcc: Conv1d(c, c, kernel_size=d)

    def _bag(self, feats: torch.Tensor):
        """One bag (n, D) → bag logits (C,), instance logits (n, C), attention (n, C)."""
        inst = self.inst_fc(feats)  # (n, C)
        _, order = torch.sort(inst, 0, descending=True)  # (n, C)
        q_all = self.q(feats)  # (n, Q)
        q_max = self.q(feats[order[0]])  # (C, Q)
        scores = q_all @ q_max.T / torch.sqrt(torch.tensor(float(q_all.shape[1])))  # (n, C)
        att = torch.softmax(scores, dim=0)  # (n, C)
        emb = att.T @ self.v(feats)  # (C, V)
        return self.bag_fc(emb.reshape(-1)), inst, att

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = check_bag(x, mask, self.in_dim)
        bags, insts, atts, idxs = [], [], [], []
        for _, xb, idx in iter_bags(x, mask):
            bag, inst, att = self._bag(xb[0])
            bags.append(bag)
            insts.append(inst)
            atts.append(att)
            idxs.append(idx)
        bag_logits = torch.stack(bags)  # (B, C)
        n, lab = x.shape[1], self.label
        inst_logits = scatter_bags([i[:, lab] for i in insts], idxs, n)  # (B, N)
        att = scatter_bags([a[:, lab] for a in atts], idxs, n)  # (B, N)
        max_logit = torch.stack([i.max(0).values for i in insts])  # (B, C)
        probs = torch.sigmoid(bag_logits)  # (B, C)
        if self.average:
            probs = (probs + torch.sigmoid(max_logit)) / 2
            logit = torch.logit(probs[:, lab : lab + 1], eps=_EPS)  # (B, 1)
        else:
            logit = bag_logits[:, lab : lab + 1]  # (B, 1)
        scores = torch.sigmoid(inst_logits)
        if mask is not None:
            scores = scores.masked_fill(~mask, 0.0)
        return MILOutput(
            logits=logit,
            instance_scores=scores,
            attention={self.scale_name: att},
            mask=mask,
            extras={
                "label_probabilities": probs,
                "bag_logits": bag_logits,
                "max_instance_logits": max_logit,
                "instance_logits": inst_logits,
            },
        )
