from __future__ import annotations

import json

import pytest

from napari_mil.errors import ExtractorError
from napari_mil.features.card import ExtractorCard, ExtractorKind, read_card_json


def test_card_round_trip_and_hash():
    card = ExtractorCard(name="uni", input_size_px=224, output_dim=1024, mpp=0.5, kind="export")
    again = ExtractorCard.from_json(card.to_json())
    assert again == card
    assert again.kind is ExtractorKind.EXPORT
    assert again.hash == card.hash
    assert card.replace(description="other").hash == card.hash  # description is not content
    assert card.replace(output_dim=512).hash != card.hash


@pytest.mark.parametrize("changes, words", [
    ({"input_size_px": 0}, "input_size_px"),
    ({"output_dim": -1}, "output_dim"),
    ({"std": [0.2, 0.0, 0.2]}, "std"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"mpp": 0}, "mpp"),
    ({"kind": "onnx"}, "kind"),
    ({"input_size_px": 22.5}, "integer"),
    ({"colour": "pink"}, "unknown fields"),
])
def test_bad_cards_are_clear_errors(changes, words):
    data = ExtractorCard(name="x", input_size_px=224, output_dim=8).to_dict()
    data.update(changes)
    with pytest.raises(ExtractorError, match=words):
        ExtractorCard.from_dict(data)


def test_card_file_errors(tmp_path):
    with pytest.raises(ExtractorError, match="No extractor card"):
        read_card_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ExtractorError, match="not valid JSON"):
        read_card_json(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ExtractorError, match="input_size_px"):
        read_card_json(partial)
