"""Registry: register/create/list, errors for unknown names and bad kwargs."""

from __future__ import annotations

import pytest
import torch

from napari_mil.errors import CheckpointError
from napari_mil.models.output import MILOutput
from napari_mil.models.registry import create_model, list_models, model_info, register_model


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="Unknown model architecture 'nope'.*abmil"):
        create_model("nope")


def test_bad_kwargs_are_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="Cannot build model 'abmil'"):
        create_model("abmil", in_dim=4, not_an_argument=1)


def test_create_model_records_architecture_and_kwargs():
    model = create_model("ABMIL", in_dim=4, att_dim=3)
    assert model.architecture == "abmil" and model.init_kwargs == {"in_dim": 4, "att_dim": 3}
    assert model_info("abmil").multiscale is False


def test_register_model_refuses_a_second_class_under_one_name(monkeypatch):
    from napari_mil.models import registry

    list_models()  # load the providers, then work on a copy so the dummy does not leak
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("_test_dummy", explains="attention: none; instance_scores: none (test model).")
    class Dummy(torch.nn.Module):
        def forward(self, x, mask=None):
            return MILOutput(logits=x.mean(1)[:, :1])

    assert "_test_dummy" in list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("_test_dummy")(type("Other", (torch.nn.Module,), {}))
    register_model("_test_dummy")(Dummy)  # re-registering the same class is fine


def test_single_scale_adapters_name_attention_by_their_scale():
    model = create_model("abmil", in_dim=4, scale_name="10x")
    out = model(torch.randn(1, 3, 4))
    assert set(out.attention) == {"10x"}


def test_inputs_are_checked_with_clear_messages():
    from napari_mil.errors import ModelError

    model = create_model("abmil", in_dim=4)
    with pytest.raises(ModelError, match="expects 4-dimensional features but got 5"):
        model(torch.randn(1, 3, 5))
    with pytest.raises(ModelError, match=r"\(B, N, D\)"):
        model(torch.randn(3, 4))
    with pytest.raises(ModelError, match="no real instance"):
        model(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))


def test_labels_are_honest_about_missing_outputs():
    import torch

    for name in ("abmil", "dsmil", "transmil", "clam_sb", "dtfd_mil", "smabmil", "gated_abmil"):
        info = model_info(name)
        model = create_model(name, in_dim=4, **({"att_dim": 8} if name == "transmil" else {}))
        out = model(torch.randn(1, 3, 4))
        assert bool(info.instance_label) == (out.instance_scores is not None), name
        assert bool(info.attention_label) == bool(out.attention), name


def test_accepts_coords_flags_graph_models():
    from napari_mil.models.registry import accepts_coords

    assert accepts_coords(create_model("smabmil", in_dim=4))
    assert not accepts_coords(create_model("abmil", in_dim=4))
