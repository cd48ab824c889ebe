"""torchmil state_dicts with torchmil's constructor arguments as the sidecar JSON."""

from __future__ import annotations

import json

import pytest
import torch
import torchmil.models as tm

from napari_mil.errors import CheckpointError
from napari_mil.models.checkpoint import checkpoint_card, load_model

D = 8


def _save(tmp_path, model, sidecar: dict, name="abmil.pt"):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


@pytest.mark.parametrize("form", ["class+kwargs", "bare"])
def test_gated_abmil_from_torchmil_arguments(tmp_path, assert_close, form):
    torch.manual_seed(0)
    ref = tm.ABMIL(in_shape=(D,), att_dim=4, gated=True).eval()
    args = {"in_shape": [D], "att_dim": 4, "gated": True}
    sidecar = {"torchmil_class": "ABMIL", "kwargs": args} if form == "class+kwargs" else args
    path = _save(tmp_path, ref, sidecar)
    card = checkpoint_card(path)
    assert (card.architecture, card.feature_dim, dict(card.kwargs)) == ("gated_abmil", D,
                                                                          {"att_dim": 4})
    model = load_model(path)
    assert model.checkpoint_format == "torchmil"
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(model(x).logits[:, 0], ref(x))


def test_bare_arguments_choose_the_class_by_the_weights_keys(tmp_path, assert_close):
    torch.manual_seed(1)
    ref = tm.DSMIL(in_shape=(D,), att_dim=4).eval()
    path = _save(tmp_path, ref, {"in_shape": [D], "att_dim": 4, "class_names": ["n", "t"]},
                 "dsmil.pth")
    model = load_model(path)
    assert model.card.architecture == "dsmil" and model.card.class_names == ("n", "t")
    x = torch.randn(1, 9, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        bag = ref(x)
        assert_close(model(x).extras["bag_logit_attention"][:, 0], bag.view(-1))


def test_sidecars_that_cannot_be_converted_say_why(tmp_path):
    ref = tm.ABMIL(in_shape=(D,), att_dim=4)
    path = _save(tmp_path, ref, {"torchmil_class": "Nope", "kwargs": {"in_shape": [D]}})
    with pytest.raises(CheckpointError, match="torchmil class 'Nope' has no napari-mil adapter"):
        load_model(path)
    path = _save(tmp_path, ref, {"torchmil_class": "ABMIL", "kwargs": {"att_dim": 4}}, "b.pt")
    with pytest.raises(CheckpointError, match="need 'in_shape'"):
        load_model(path)
    path = _save(tmp_path, ref, {"torchmil_class": "ABMIL",
                                 "kwargs": {"in_shape": [D], "n_heads": 2}}, "c.pt")
    with pytest.raises(CheckpointError, match="'n_heads' has no counterpart in napari-mil's "
                                              "'abmil' adapter"):
        load_model(path)
