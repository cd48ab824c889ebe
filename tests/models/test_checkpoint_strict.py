"""The strict rule of load_model and what its mismatch errors tell the user."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from napari_mil.errors import CheckpointError
from napari_mil.models.card import ModelCard
from napari_mil.models.checkpoint import load_model
from napari_mil.models.registry import create_model

D = 8


def _card(arch="abmil", **kw) -> ModelCard:
    return ModelCard(**{"architecture": arch, "feature_dim": D, "kwargs": {"att_dim": 4},
                        "class_names": ("normal", "tumor"), **kw})


def _weights(tmp_path, state, name="w.safetensors"):
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    return tmp_path / name


def _abmil_state():
    torch.manual_seed(0)
    return dict(create_model("abmil", in_dim=D, att_dim=4).state_dict())


@pytest.mark.parametrize("strict", [True, False])
def test_a_file_that_matches_nothing_is_always_an_error(tmp_path, strict):
    path = _weights(tmp_path, {"encoder.weight": torch.zeros(3, 3), "head.bias": torch.zeros(2)})
    with pytest.raises(CheckpointError) as info:
        load_model(path, card=_card(), strict=strict)
    text = str(info.value)
    assert "0 of the model's 5 weights matched" in text
    assert "none of the file's 2 keys is a weight of this model" in text
    assert "['encoder.weight', 'head.bias']" in text  # the file's keys, to compare
    assert "strict=False" not in text


def test_strict_false_needs_every_parameter(tmp_path):
    state = _abmil_state()
    state.pop("mil.pool.fc2.weight")
    path = _weights(tmp_path, state)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"4 of the model's 5 weights matched.*"
                                                  r"missing keys \['mil.pool.fc2.weight'\]"):
            load_model(path, card=_card(), strict=strict)


def test_strict_false_ignores_extra_keys_and_lists_them(tmp_path):
    state = _abmil_state()
    state["aux_head.weight"] = torch.ones(2, 2)
    path = _weights(tmp_path, state)
    with pytest.raises(CheckpointError) as info:
        load_model(path, card=_card())
    assert "unexpected keys ['aux_head.weight']" in str(info.value)
    assert "strict=False" not in str(info.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path, card=_card(), strict=False)
    assert model.checkpoint_ignored == ("aux_head.weight",)
    assert any("ignored 1 key(s) of the file ['aux_head.weight']" in str(w.message)
               for w in caught)


def test_strict_false_keeps_missing_buffers_at_their_defaults(tmp_path):
    torch.manual_seed(0)
    head = create_model("icmil", in_dim=D, hidden_dim=6, attn_dim=4)
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("feature_")}
    path = _weights(tmp_path, state)
    card = ModelCard(architecture="icmil", feature_dim=D,
                     kwargs={"hidden_dim": 6, "attn_dim": 4})
    with pytest.raises(CheckpointError, match=r"missing keys \['feature_mean', 'feature_std'\]"):
        load_model(path, card=card)
    with pytest.warns(UserWarning, match="kept 2 buffer"):
        model = load_model(path, card=card, strict=False)
    assert torch.equal(model.feature_std, torch.ones(D))


def test_wrong_shapes_name_the_tensor_and_what_to_change(tmp_path):
    path = _weights(tmp_path, _abmil_state())
    with pytest.raises(CheckpointError) as info:
        load_model(path, card=_card(kwargs={"att_dim": 6}))
    text = str(info.value)
    assert "Layout: napari-mil's own key names" in text
    assert "mil.pool.fc1.module.weight: weights (4, 8) vs model (6, 8)" in text
    assert "Set the card's kwargs and feature_dim to the values the model was trained with" in text
