from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_mil.errors import ExtractorError
from napari_mil.features import create_extractor, export_extractor
from napari_mil.features.card import ExtractorKind, card_sidecar_path


def _tiles(n=5, size=32):
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _eager(net, card, tiles):
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(card.mean).view(1, 3, 1, 1)
    std = torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return net((x - mean) / std)


@pytest.mark.slow
def test_pt2_export_loads_and_embeds(tmp_path, tiny_net, tiny_card):
    path = export_extractor(tiny_net, tiny_card, tmp_path / "tiny.pt2")
    assert card_sidecar_path(path).exists()
    ex = create_extractor(path, device="cpu")
    assert ex.card.kind is ExtractorKind.EXPORT and ex.card.output_dim == 16
    tiles = _tiles(7)  # any batch size: the export has a dynamic batch dimension
    torch.testing.assert_close(ex.embed(tiles), _eager(tiny_net, tiny_card, tiles),
                               rtol=1e-5, atol=1e-5)
    # the exported graph is specialised to 32 px: a card saying 48 px is caught on load
    card_sidecar_path(path).write_text(tiny_card.replace(input_size_px=48).to_json())
    with pytest.raises(ExtractorError, match="does not match its card"):
        create_extractor(path)


@pytest.mark.slow
def test_pt2_with_static_batch_is_fed_in_chunks(tmp_path, tiny_net, tiny_card):
    program = torch.export.export(tiny_net, (torch.randn(4, 3, 32, 32),))
    path = tmp_path / "static.pt2"
    torch.export.save(program, str(path))
    card_sidecar_path(path).write_text(tiny_card.to_json())
    ex = create_extractor(path, device="cpu")
    assert ex.static_batch == 4
    tiles = _tiles(6)
    torch.testing.assert_close(ex.embed(tiles), _eager(tiny_net, tiny_card, tiles),
                               rtol=1e-5, atol=1e-5)


def test_torchscript_loads_and_embeds(tmp_path, tiny_net, tiny_card):
    path = export_extractor(tiny_net, tiny_card, tmp_path / "tiny.pt", fmt="torchscript")
    ex = create_extractor(path, device="cpu")
    assert ex.card.kind is ExtractorKind.TORCHSCRIPT
    tiles = _tiles(3)
    torch.testing.assert_close(ex.embed(tiles), _eager(tiny_net, tiny_card, tiles),
                               rtol=1e-5, atol=1e-5)
    # a card given explicitly wins over the sidecar
    other = tmp_path / "card.json"
    other.write_text(json.dumps(tiny_card.replace(name="renamed").to_dict()))
    assert create_extractor(path, card=other).card.name == "renamed"


def test_card_that_does_not_match(tmp_path, tiny_net, tiny_card):
    path = export_extractor(tiny_net, tiny_card, tmp_path / "tiny.pt", fmt="torchscript")
    card_sidecar_path(path).write_text(tiny_card.replace(output_dim=32).to_json())
    with pytest.raises(ExtractorError, match="does not match its card.*output_dim=32"):
        create_extractor(path)


def test_files_that_are_not_exported_models(tmp_path, tiny_net, tiny_card):
    text = tmp_path / "notes.pt2"
    text.write_text("hello")
    card_sidecar_path(text).write_text(tiny_card.to_json())
    with pytest.raises(ExtractorError, match="not an exported model"):
        create_extractor(text)
    pickled = tmp_path / "model.pt"
    torch.save(tiny_net.state_dict(), pickled)  # a plain state dict: never unpickled
    card_sidecar_path(pickled).write_text(tiny_card.to_json())
    with pytest.raises(ExtractorError, match="not a TorchScript module"):
        create_extractor(pickled)
    lonely = tmp_path / "lonely.pt"
    torch.jit.trace(tiny_net, torch.randn(1, 3, 32, 32)).save(str(lonely))
    with pytest.raises(ExtractorError, match="No extractor card"):
        create_extractor(lonely)
    with pytest.raises(ExtractorError, match="folder"):
        create_extractor(tmp_path)
