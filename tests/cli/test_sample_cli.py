"""``napari-mil sample``: writes N slides, their GeoJSON and labels.csv."""

from __future__ import annotations

import csv
import subprocess
import sys

import tiffslide

from napari_mil.cli.main import main


def test_sample_writes_n_slides(tmp_path, capsys):
    out = tmp_path / "cohort"
    rc = main(["sample", str(out), "--n", "2", "--seed", "4", "--size", "1024",
               "--lesion-types", "micro", "--positive-fraction", "0.5"])
    assert rc == 0
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == 2 and sorted(r["label"] for r in rows) == ["0", "1"]
    for row in rows:
        slide = out / f"{row['slide']}.svs"
        assert (out / f"{row['slide']}.geojson").exists()
        with tiffslide.TiffSlide(slide) as ts:
            assert ts.dimensions == (1024, 1024)
            assert ts.properties["tiffslide.vendor"] == "aperio"
    assert "wrote 2 slides" in capsys.readouterr().out
    # existing files are kept unless --overwrite
    assert main(["sample", str(out), "--n", "2", "--seed", "4", "--size", "1024"]) == 2
    assert main(["sample", str(out), "--n", "2", "--seed", "4", "--size", "1024",
                 "--lesion-types", "micro", "--overwrite"]) == 0


def test_sample_rejects_bad_arguments(tmp_path):
    assert main(["sample", str(tmp_path), "--n", "1", "--lesion-types", "giant",
                 "--size", "1024"]) == 2
    assert main(["sample", str(tmp_path), "--n", "1", "--min-size", "4096",
                 "--max-size", "2048"]) == 2
    proc = subprocess.run([sys.executable, "-m", "napari_mil.cli.main", "sample", str(tmp_path),
                           "--size", "12"], capture_output=True, text=True)
    assert proc.returncode == 2 and "512" in proc.stderr
