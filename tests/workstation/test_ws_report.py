"""``napari-mil report``: one self-contained HTML page whose numbers are `compare`'s."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from napari_mil.cli.main import main
from napari_mil.inference.result import load_result
from napari_mil.io.review_marks import Mark, TileMark, write_tile_marks
from napari_mil.layers import top_k_indices
from napari_mil.report import DATA_SCRIPT_ID, find_pdf_converter


class _Page(HTMLParser):
    """Images, links, the agreement table's cells and the embedded JSON of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.external: list[str] = []
        self.sections: list[str] = []
        self.rows: list[list[str]] = []
        self._in_agreement = self._cell = self._script = False
        self.data_text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.external.append(a.get("href") or a.get("src"))
        if tag == "section":
            self.sections.append(a.get("id"))
            self._in_agreement = a.get("id") == "agreement"
        if tag == "tr" and self._in_agreement:
            self.rows.append([])
        if tag == "td" and self._in_agreement:
            self._cell = True
            self.rows[-1].append("")
        if tag == "script" and a.get("id") == DATA_SCRIPT_ID:
            self._script = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = False
        if tag == "section":
            self._in_agreement = False
        if tag == "script":
            self._script = False

    def handle_data(self, data):
        if self._cell:
            self.rows[-1][-1] += data
        if self._script:
            self.data_text += data


def _fmt(v):
    return "—" if v is None else f"{v:.3f}"


def test_report_is_self_contained_and_matches_compare(reviewed_slide, tmp_path, capsys):
    slide, rpath, ann = reviewed_slide
    result = load_result(rpath)
    idx, _v, _s = top_k_indices(result.finest_scale, 12)
    marks = tmp_path / "marks.csv"
    write_tile_marks(marks, [TileMark(result.slide_name, "20x", int(idx[0]), Mark.AGREE),
                             TileMark(result.slide_name, "20x", int(idx[1]), Mark.DISAGREE),
                             TileMark("another-slide", "20x", int(idx[2]), Mark.AGREE)])
    out = tmp_path / "report.html"
    assert main(["report", str(rpath), "--slide", str(slide), "-a", str(ann),
                 "--marks", str(marks), "--out", str(out)]) == 0
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    page.close()
    assert page.sections == ["summary", "heatmaps", "attention", "gallery", "agreement",
                             "provenance"]
    assert not page.external
    # every picture is embedded and decodes: probabilities, 2 maps, 12 tiles (JPEG), ROC, PR
    assert len(page.imgs) == 1 + 2 + 12 + 2
    kinds = []
    for src in page.imgs:
        head, b64 = src.split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        kinds.append(img.format)
        img.verify()
    assert kinds.count("JPEG") == 12 and kinds.count("PNG") == 5

    capsys.readouterr()
    assert main(["compare", str(rpath), "-a", str(ann), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    data = json.loads(page.data_text)
    assert data["reports"] == expected["reports"]  # identical numbers, not just close
    assert data["positive_classes"] == expected["positive_classes"] == ["Tumor"]
    body = [r for r in page.rows if r]
    assert len(body) == len(expected["reports"]) == 2 * 2  # 2 maps × (Tumor, Other)
    for row, rep in zip(body, expected["reports"], strict=True):
        assert row[0] == rep["layer"] and row[1] == rep["scale"]
        assert row[3:] == [str(rep["n_tiles"]), str(rep["n_positive"]), _fmt(rep["auroc"]),
                           _fmt(rep["average_precision"]), _fmt(rep["dice"]), _fmt(rep["iou"]),
                           _fmt(rep["mass_inside"]), _fmt(rep["top_k_hit_rate"])]
    tumor = next(r for r in data["reports"] if r["layer"] == "instance scores")
    assert tumor["auroc"] > 0.95  # the model finds the lesion
    gallery = {g["index"]: g["mark"] for g in data["gallery"]}
    assert gallery[int(idx[0])] == "agree" and gallery[int(idx[1])] == "disagree"
    assert gallery[int(idx[2])] is None  # a mark of another slide does not leak in
    assert data["provenance"]["slide"]["content_hash"] == result.slide_hash
    assert data["provenance"]["model_card"]["architecture"] == "minet"
    assert data["provenance"]["result"]["written_by"]
    assert abs(data["probabilities"]["tumor"] - float(result.probabilities[1])) < 1e-6


def test_report_refuses_another_slide(reviewed_slide, make_slide, tmp_path, capsys):
    _slide, rpath, _ann = reviewed_slide
    other = make_slide("other.tif", (1024, 1024), mpp=0.499)
    out = tmp_path / "r.html"
    assert main(["report", str(rpath), "--slide", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "belongs to slide 'case-07'" in err and "Give the slide 'case-07'" in err
    assert not out.exists()


def test_report_refuses_wrong_pixel_size(reviewed_slide, tmp_path, capsys):
    slide, rpath, _ann = reviewed_slide
    out = tmp_path / "r.html"
    assert main(["report", str(rpath), "--slide", str(slide), "--mpp", "0.25",
                 "--out", str(out)]) == 2
    assert "at 0.499 µm/px" in capsys.readouterr().err
    assert not out.exists()


def test_report_without_annotations_and_existing_output(reviewed_slide, tmp_path, capsys):
    slide, rpath, _ann = reviewed_slide
    out = tmp_path / "r.html"
    assert main(["report", str(rpath), "--slide", str(slide), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "No annotations were given" in text
    before = out.stat().st_mtime_ns
    assert main(["report", str(rpath), "--slide", str(slide), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before


@pytest.mark.slow
def test_report_pdf(reviewed_slide, tmp_path, capsys, monkeypatch):
    slide, rpath, ann = reviewed_slide
    out = tmp_path / "r.html"
    args = ["report", str(rpath), "--slide", str(slide), "-a", str(ann), "--out", str(out),
            "--pdf"]
    if find_pdf_converter() is not None:
        assert main(args) == 0
        assert (tmp_path / "r.pdf").read_bytes()[:5] == b"%PDF-"
    monkeypatch.setattr("napari_mil.report.pdf.find_pdf_converter", lambda: None)
    assert main([*args[:-3], "--out", str(tmp_path / "s.html"), "--pdf"]) == 2
    err = capsys.readouterr().err
    assert "No PDF converter is installed" in err and "s.html" in err
    assert (tmp_path / "s.html").exists() and not (tmp_path / "s.pdf").exists()
