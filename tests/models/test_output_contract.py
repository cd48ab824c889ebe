"""MILOutput: probabilities, validation, detach/to."""

from __future__ import annotations

import pytest
import torch

from napari_mil.errors import ModelError
from napari_mil.models.output import MILOutput


def test_probabilities_sigmoid_for_one_logit_softmax_otherwise():
    one = MILOutput(logits=torch.tensor([[0.0], [2.0]]))
    torch.testing.assert_close(one.probabilities, torch.sigmoid(one.logits))
    many = MILOutput(logits=torch.tensor([[0.0, 1.0, 2.0]]))
    torch.testing.assert_close(many.probabilities.sum(-1), torch.ones(1))


def test_validate_accepts_the_contract_and_names_what_is_wrong():
    good = MILOutput(
        logits=torch.zeros(2, 1),
        instance_scores=torch.zeros(2, 5),
        attention={"20x": torch.full((2, 5), 0.2)},
        mask=torch.ones(2, 5, dtype=torch.bool),
    )
    assert good.validate(5) is good
    with pytest.raises(ModelError, match="logits must be"):
        MILOutput(logits=torch.zeros(2)).validate()
    with pytest.raises(ModelError, match="instance_scores"):
        MILOutput(logits=torch.zeros(2, 1), instance_scores=torch.zeros(2, 4)).validate(5)
    with pytest.raises(ModelError, match=r"attention\['20x'\]"):
        MILOutput(logits=torch.zeros(2, 1), attention={"20x": torch.zeros(2, 5, 1)}).validate()
    with pytest.raises(ModelError, match="mask"):
        MILOutput(logits=torch.zeros(2, 1), mask=torch.ones(2, 5)).validate()


def test_detach_and_to_copy_every_tensor():
    w = torch.ones(1, 3, requires_grad=True)
    out = MILOutput(
        logits=w.sum(1, keepdim=True),
        instance_scores=w * 0.5,
        attention={"20x": w / 3},
        extras={"e": w * 2},
        loss_terms={"kl": w.sum()},
    )
    det = out.detach()
    tensors = [
        det.logits,
        det.instance_scores,
        det.attention["20x"],
        det.extras["e"],
        det.loss_terms["kl"],
    ]
    assert not any(t.requires_grad for t in tensors)
    moved = out.to("cpu")
    torch.testing.assert_close(moved.attention["20x"], out.attention["20x"])
