"""Checkpoints: safetensors + card, plain state_dicts with a card, refusals with clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_mil.errors import CheckpointError, ExportError
from napari_mil.models.card import ModelCard
from napari_mil.models.checkpoint import (
    check_features,
    load_model,
    make_card,
    read_checkpoint_card,
    save_model,
)
from napari_mil.models.registry import create_model

D = 8


def _abmil():
    torch.manual_seed(0)
    return create_model("abmil", in_dim=D, att_dim=4).eval()


def _card(**kw) -> ModelCard:
    base = dict(
        architecture="abmil",
        feature_dim=D,
        kwargs={"att_dim": 4},
        class_names=("normal", "tumor"),
        extractor="resnet-tiny",
    )
    base.update(kw)
    return ModelCard(**base)


def _same_output(a, b, x=None):
    x = torch.randn(1, 5, D, generator=torch.Generator().manual_seed(3)) if x is None else x
    with torch.no_grad():
        torch.testing.assert_close(a(x).logits, b(x).logits, atol=1e-6, rtol=0)


def test_card_is_in_the_safetensors_metadata(tmp_path):
    model = _abmil()
    path = save_model(model, _card(), tmp_path / "m.safetensors")
    assert read_checkpoint_card(path) == _card()
    loaded = load_model(path)
    assert loaded.card.class_names == ("normal", "tumor")
    _same_output(model, loaded)


def test_save_refuses_to_overwrite_and_wrong_suffix(tmp_path):
    model = _abmil()
    save_model(model, _card(), tmp_path / "m.safetensors")
    with pytest.raises(ExportError, match="already exists"):
        save_model(model, _card(), tmp_path / "m.safetensors")
    save_model(model, _card(), tmp_path / "m.safetensors", overwrite=True)
    with pytest.raises(CheckpointError, match="safetensors"):
        save_model(model, _card(), tmp_path / "m.pt")


def test_save_refuses_a_card_that_would_not_rebuild_the_model(tmp_path):
    with pytest.raises(CheckpointError, match="wrong shapes"):
        save_model(_abmil(), _card(kwargs={"att_dim": 5}), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="model is a ABMIL|is a ABMIL"):
        save_model(_abmil(), _card(architecture="dsmil", kwargs={}), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_plain_torchmil_state_dict_loads_with_a_card(tmp_path):
    model = _abmil()
    torch.save(model.mil.state_dict(), tmp_path / "torchmil.pt")  # torchmil's own key names
    card_path = tmp_path / "card.json"
    card_path.write_text(_card().to_json())
    loaded = load_model(tmp_path / "torchmil.pt", card=card_path)
    assert loaded.checkpoint_format == "torchmil"
    _same_output(model, loaded)
    # a safetensors state_dict without card, with the card beside it
    save_file(model.mil.state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "w.safetensors.card.json").write_text(_card().to_json())
    _same_output(model, load_model(tmp_path / "w.safetensors"))
    # half-precision weights are cast to the model's dtype
    half = {k: v.half() for k, v in model.mil.state_dict().items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    loaded = load_model(tmp_path / "half.safetensors", card=_card())
    assert loaded.mil.pool.fc2.weight.dtype == torch.float32


def test_wrapped_checkpoint_dicts_are_unwrapped(tmp_path):
    model = _abmil()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "lightning.ckpt")
    _same_output(model, load_model(tmp_path / "lightning.ckpt", card=_card()))


def test_plain_state_dict_without_card_is_refused(tmp_path):
    torch.save(_abmil().state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="no model card"):
        load_model(tmp_path / "w.pt")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("style", ["torch_zip", "raw_pickle"])
def test_pickles_are_refused_and_never_executed(tmp_path, style):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"mil.pool.fc2.weight": torch.zeros(1, 4), "hook": _Evil(marker)}
    if style == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickled Python objects.*never unpickles"):
        load_model(path, card=_card())
    assert not marker.exists(), "loading a checkpoint executed pickled code"


def test_wrong_architecture_missing_and_extra_keys(tmp_path):
    model = _abmil()
    path = save_model(model, _card(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="Its keys are napari-mil's names of architecture "
                       "'abmil'.*Set the card's architecture to 'abmil'"):
        load_model(path, card=_card(architecture="dsmil", kwargs={}))
    with pytest.raises(CheckpointError, match="Unknown model architecture 'nope'"):
        load_model(path, card=_card(architecture="nope"))
    sd = dict(model.state_dict())
    sd.pop("mil.pool.fc2.weight")
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \['mil.pool.fc2.weight'\]"):
        load_model(tmp_path / "missing.safetensors", card=_card())
    sd = dict(model.state_dict(), **{"mil.extra.weight": torch.zeros(2)})
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['mil.extra.weight'\]"):
        load_model(tmp_path / "extra.safetensors", card=_card())
    loaded = load_model(tmp_path / "extra.safetensors", card=_card(), strict=False)
    _same_output(model, loaded)


def test_wrong_feature_dim_names_the_tensor_and_both_shapes(tmp_path):
    path = save_model(_abmil(), _card(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shapes.*\(4, 8\) vs model \(4, 16\)"):
        load_model(path, card=_card(feature_dim=16))


def test_absurd_card_sizes_are_refused_before_allocating(tmp_path):
    path = save_model(_abmil(), _card(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="feature_dim"):
        _card(feature_dim=10**7)
    with pytest.raises(CheckpointError, match="implausibly large"):
        _card(kwargs={"att_dim": 10**9})
    # plausible per field, absurd together: 200k x 5k weights for a file of ~50 numbers
    with pytest.raises(CheckpointError, match="do not belong to these weights"):
        load_model(path, card=_card(feature_dim=200_000, kwargs={"att_dim": 5_000}))


def test_damaged_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model(bad, card=_card())
    txt = tmp_path / "weights.txt"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="neither a .safetensors"):
        load_model(txt, card=_card())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError):
        load_model(junk, card=_card())


def test_check_features():
    card = _card(extractor={"name": "UNI", "card_hash": "abc"})
    check_features(card, "uni", D)
    check_features(card, None, D)
    with pytest.raises(CheckpointError, match="dimension 16 but the model expects 8"):
        check_features(card, "uni", 16)
    with pytest.raises(CheckpointError, match="expects features from extractor 'UNI'.*'resnet50'"):
        check_features(card, "resnet50", D)

    class ExtractorCard:
        name = "uni"
        card_hash = "zzz"

    with pytest.raises(CheckpointError, match="card hash"):
        check_features(card, ExtractorCard(), D)


def test_clam_original_state_dict_maps_onto_clam_sb(tmp_path):
    """mahmoodlab CLAM_SB names (gated, dropout) → our clam_sb (see ClamSB.state_dict_key_maps)."""
    torch.manual_seed(0)
    model = create_model(
        "clam_sb", in_dim=D, hidden_dim=6, att_dim=4, gated=True, n_classes=2
    ).eval()
    sd = model.state_dict()
    clam = {
        "attention_net.0.weight": sd["mil.feat_ext.0.weight"],
        "attention_net.0.bias": sd["mil.feat_ext.0.bias"],
        "attention_net.3.attention_a.0.weight": sd["mil.pool.fc1.module.weight"],
        "attention_net.3.attention_a.0.bias": sd["mil.pool.fc1.module.bias"],
        "attention_net.3.attention_b.0.weight": sd["mil.pool.fc_gated.module.weight"],
        "attention_net.3.attention_b.0.bias": sd["mil.pool.fc_gated.module.bias"],
        "attention_net.3.attention_c.weight": sd["mil.pool.fc2.weight"],
        "attention_net.3.attention_c.bias": torch.tensor([0.7]),
        "classifiers.weight": sd["mil.classifier.module.weight"],
        "classifiers.bias": sd["mil.classifier.module.bias"],
        **{
            f"instance_classifiers.{i}.{p}": sd[f"mil.inst_classifiers.{i}.module.{p}"]
            for i in range(2)
            for p in ("weight", "bias")
        },
    }
    torch.save(clam, tmp_path / "s_1_checkpoint.pt")
    card = make_card(model, class_names=("normal", "tumor"))
    (tmp_path / "s_1_checkpoint.json").write_text(card.to_json())
    loaded = load_model(tmp_path / "s_1_checkpoint.pt")
    assert loaded.checkpoint_format == "clam-sb"
    _same_output(model, loaded)
    assert loaded(torch.randn(1, 3, D)).logits.shape == (1, 2)


def test_card_json_round_trip_and_validation():
    card = _card(
        training={"epochs": 3, "lr": 1e-3},
        description="demo",
        scales=[{"name": "20x", "mpp": 0.5, "patch_size_px": 224}],
    )
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.fingerprint() == card.fingerprint()
    assert again.scales[0].patch_size_px == 224 and again.extractor.name == "resnet-tiny"
    data = json.loads(card.to_json())
    for broken, message in [
        ({**data, "spec_version": 99}, "newer than this napari-mil"),
        ({**data, "class_names": ["a", "a"]}, "repeat"),
        ({**data, "bogus": 1}, "unknown fields"),
        ({k: v for k, v in data.items() if k != "feature_dim"}, "missing 'feature_dim'"),
        ({**data, "scales": [{"name": "20x", "mpp": -1}]}, "invalid scale"),
        ({**data, "kwargs": {"f": float("nan")}}, "not a finite number"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            ModelCard.from_dict(broken)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ModelCard.from_json("{nope")
    card.check_n_logits(1)
    card.check_n_logits(2)
    with pytest.raises(CheckpointError, match="3 logit"):
        card.check_n_logits(3)


def test_card_classes_and_scales_must_fit_the_model(tmp_path):
    path = save_model(_abmil(), _card(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="1 logit.*3 classes"):
        load_model(path, card=_card(class_names=("a", "b", "c")))
    with pytest.raises(CheckpointError, match=r"reads scales \['10x'\].*\['20x'\]"):
        load_model(path, card=_card(kwargs={"att_dim": 4, "scale_name": "10x"}))
    # without an explicit scale_name the adapter takes the card's scale
    card40 = _card(scales=[{"name": "40x", "mpp": 0.25, "patch_size_px": 256}])
    model = load_model(path, card=card40)
    assert set(model(torch.randn(1, 3, D)).attention) == {"40x"}
