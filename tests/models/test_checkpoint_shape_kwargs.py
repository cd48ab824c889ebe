"""Kwargs a card leaves out are read from the weights' shapes (napari-mil and torchmil names)."""

from __future__ import annotations

import json

import pytest
import torch
import torchmil.models as tm
from safetensors.torch import save_file

from napari_mil.errors import CheckpointError
from napari_mil.models.checkpoint import load_model
from napari_mil.models.registry import create_model

D = 8


def test_torchmil_abmil_att_dim_is_read_from_the_weights(tmp_path):
    torch.manual_seed(0)
    ref = tm.ABMIL(in_shape=(D,), att_dim=6).eval()
    path = tmp_path / "abmil.pt"
    torch.save(ref.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"architecture": "abmil", "feature_dim": D}))
    model = load_model(path)
    assert dict(model.card.kwargs) == {"att_dim": 6}
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits[:, 0], ref(x), atol=1e-5, rtol=0)


def test_optional_layers_and_flags_are_read_too(tmp_path):
    torch.manual_seed(0)
    own = create_model("clam_sb", in_dim=D, att_dim=5, gated=True, hidden_dim=6)
    save_file(own.state_dict(), str(tmp_path / "c.safetensors"))
    model = load_model(tmp_path / "c.safetensors",
                       card={"architecture": "clam_sb", "feature_dim": D})
    assert dict(model.card.kwargs) == {"gated": True, "hidden_dim": 6, "att_dim": 5}
    x = torch.randn(1, 4, D)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, own.eval()(x).logits, atol=1e-6, rtol=0)


def test_a_kwarg_the_card_sets_is_not_overridden(tmp_path):
    torch.manual_seed(0)
    save_file(create_model("abmil", in_dim=D, att_dim=6).state_dict(),
              str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError, match=r"weights \(6, 8\) vs model \(4, 8\)"):
        load_model(tmp_path / "a.safetensors",
                   card={"architecture": "abmil", "feature_dim": D, "kwargs": {"att_dim": 4}})
