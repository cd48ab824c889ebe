"""``napari-mil info``: human and JSON output, errors as exit code 2."""

from __future__ import annotations

import json

import pytest

from napari_mil.cli.main import main


def test_info_text(real_slide_path, capsys):
    assert main(["info", str(real_slide_path)]) == 0
    out = capsys.readouterr().out
    assert "2220 × 2967" in out
    assert "0.499 µm/px" in out
    assert "20x" in out
    assert "aperio" in out
    assert "(computed)" in out  # the single-level sample gets lower levels


def test_info_json(make_slide, capsys):
    path = make_slide("j.ome.tif", size=(2048, 2048), style="ome", mpp=0.5)
    assert main(["info", str(path), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["dimensions"] == [2048, 2048]
    assert meta["mpp"] == pytest.approx(0.5)
    assert meta["mpp_source"] == "ome"
    assert meta["level_downsamples"][:2] == [1.0, 4.0]
    assert meta["warnings"] == []


def test_info_unknown_mpp_warns_and_override(make_slide, capsys):
    path = make_slide("n.svs", size=(512, 512), mpp=None)
    assert main(["info", str(path), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["mpp"] is None and "mpp" in meta["warnings"][0]
    assert main(["info", str(path), "--json", "--mpp", "0.25"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["mpp"] == 0.25 and meta["mpp_source"] == "user" and not meta["warnings"]


def test_info_errors(tmp_path, real_slide_path, capsys):
    assert main(["info", str(tmp_path / "missing.svs")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    assert main(["info", str(bad)]) == 2
    assert "PNG" in capsys.readouterr().err
    # several slides: the good one is reported, the bad one makes the exit code 1
    assert main(["info", str(real_slide_path), str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["name"] == "CMU-1-Small-Region"
    assert "PNG" in captured.err
