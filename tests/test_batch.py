"""Cohort inference on dask.distributed: bad slides recorded, resumable, scheduler address."""

from __future__ import annotations

import csv
import json

import pytest

from napari_mil.batch import OUTPUTS, is_complete, run_cohort, slide_key
from napari_mil.cli.main import main
from napari_mil.models.checkpoint import make_card, save_model
from napari_mil.models.registry import create_model

distributed = pytest.importorskip("distributed")


@pytest.fixture
def cohort(tmp_path, make_slide, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("NAPARI_MIL_CACHE", str(tmp_path / "cache"))
    slides = [make_slide(f"good{i}.svs", size=(1536, 2048), seed=i) for i in range(3)]
    bad = tmp_path / "broken.svs"
    bad.write_bytes(slides[0].read_bytes()[:5000])  # a truncated TIFF
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), tmp_path / "abmil.safetensors")
    return tmp_path, slides, bad, ckpt


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as lc:
        yield lc


def _summary(out):
    with open(out / "summary.csv", newline="") as fh:
        return {row["slide"].rsplit("/", 1)[-1]: row for row in csv.DictReader(fh)}


def test_corrupt_slide_is_reported_and_rerun_recomputes_only_what_is_missing(cohort, cluster):
    tmp_path, slides, bad, ckpt = cohort
    out = tmp_path / "out"
    args = ["infer", str(tmp_path / "*.svs"), "-c", str(ckpt), "-o", str(out),
            "--scheduler", cluster.scheduler_address, "--device", "cpu", "--batch-size", "16"]
    assert main(args) == 1  # one slide failed
    rows = _summary(out)
    assert rows["broken.svs"]["status"] == "failed" and rows["broken.svs"]["error"]
    for s in slides:
        d = out / slide_key(s)
        assert is_complete(d), f"{s.name} outputs incomplete"
        assert all((d / name).stat().st_size > 0 for name in OUTPUTS)
        assert rows[s.name]["status"] == "ok"
        p_neg, p_pos = float(rows[s.name]["p_negative"]), float(rows[s.name]["p_positive"])
        assert p_neg + p_pos == pytest.approx(1.0, abs=1e-4)
        assert rows[s.name]["predicted_class"] in ("negative", "positive")
    stamps = {s.name: (out / slide_key(s) / "result.npz").stat().st_mtime_ns for s in slides}
    (out / slide_key(slides[1]) / "tiles.csv").unlink()  # lose one output of one slide
    assert main(args) == 1  # the broken slide still fails
    rows = _summary(out)
    assert rows[slides[0].name]["status"] == "skipped"
    assert rows[slides[2].name]["status"] == "skipped"
    assert rows[slides[1].name]["status"] == "ok"
    for s in (slides[0], slides[2]):
        assert (out / slide_key(s) / "result.npz").stat().st_mtime_ns == stamps[s.name]
    assert (out / slide_key(slides[1]) / "result.npz").stat().st_mtime_ns != stamps[slides[1].name]
    assert is_complete(out / slide_key(slides[1]))


def test_done_marker_lists_every_output_with_its_size(cohort, cluster):
    tmp_path, slides, _bad, ckpt = cohort
    out = tmp_path / "out2"
    with distributed.Client(cluster.scheduler_address) as client:
        outcomes = run_cohort(slides[:1], ckpt, out, client=client, settings={"device": "cpu"})
    assert [o.status for o in outcomes] == ["ok"]
    done = json.loads((out / slide_key(slides[0]) / "done.json").read_text())
    assert set(done["files"]) == set(OUTPUTS)
    (out / slide_key(slides[0]) / "heatmap.ome.tif").write_bytes(b"truncated")
    assert not is_complete(out / slide_key(slides[0]))


def test_no_matching_slides_is_a_usage_error(tmp_path, capsys):
    assert main(["infer", str(tmp_path / "*.svs"), "-c", str(tmp_path / "m.safetensors"),
                 "-o", str(tmp_path / "out")]) == 2
    assert "No slides match" in capsys.readouterr().err


def test_slides_sharing_a_name_get_distinct_stable_folders(tmp_path, make_slide):
    from napari_mil.batch import output_keys

    a = make_slide("x.svs", size=(512, 512))
    (tmp_path / "other").mkdir()
    b = tmp_path / "other" / "X.svs"  # the same name on a case-insensitive file system
    b.write_bytes(a.read_bytes())
    keys = output_keys([a, b])
    assert len(set(keys.values())) == 2 and all(k.lower().startswith("x-") for k in keys.values())
    assert output_keys([b, a]) == keys  # the same folders whatever the order
    assert output_keys([a, a]) == {a.resolve(): "x"}  # the same file twice is one slide


def test_a_worker_loads_the_checkpoint_once_for_many_slides(cohort, monkeypatch):
    import napari_mil.features.registry as registry
    import napari_mil.models.checkpoint as checkpoint
    from napari_mil.batch import process_slide
    from napari_mil.batch.worker import _extractor_once, _load_model_once

    tmp_path, slides, _bad, ckpt = cohort
    loads = []
    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model",
                        lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    built = []
    real_create = registry.create_extractor
    monkeypatch.setattr(registry, "create_extractor",
                        lambda *a, **k: built.append(a[0]) or real_create(*a, **k))
    _load_model_once.cache_clear()
    _extractor_once.cache_clear()
    out = tmp_path / "cached"
    settings = {"device": "cpu", "batch_size": 16}
    for s in slides[:2]:  # one process = one worker
        assert process_slide(str(s), str(ckpt), str(out), settings).status == "ok"
    assert len(loads) == 1
    assert len(built) == 1  # the patch embedder too
    import os
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new checkpoint file
    assert process_slide(str(slides[2]), str(ckpt), str(out), settings).status == "ok"
    assert len(loads) == 2
    _load_model_once.cache_clear()
    _extractor_once.cache_clear()


def test_rerun_keeps_complete_outputs_and_clears_leftover_temp_files(cohort):
    from napari_mil.batch import process_slide

    tmp_path, slides, _bad, ckpt = cohort
    out = tmp_path / "redo"
    settings = {"device": "cpu", "batch_size": 16}
    assert process_slide(str(slides[0]), str(ckpt), str(out), settings).status == "ok"
    d = out / slide_key(slides[0])
    stamp = (d / "result.npz").stat().st_mtime_ns
    # a task dask runs again after its worker died keeps what is complete
    again = process_slide(str(slides[0]), str(ckpt), str(out), settings)
    assert again.status == "ok" and (d / "result.npz").stat().st_mtime_ns == stamp
    # a killed attempt left its marker, temp files and no done.json: the rerun starts clean
    (d / ".result.npz.x1y2.tmp").write_bytes(b"half")
    (d / ".heatmap.ome.tif.k9.tmp").write_bytes(b"half")
    (d / "..attempt.json.p4q5.tmp").write_bytes(b"{")  # killed while writing its marker
    (d / "done.json").rename(d / ".attempt.json")
    assert process_slide(str(slides[0]), str(ckpt), str(out), settings).status == "ok"
    assert is_complete(d) and not list(d.glob(".*.tmp"))
    assert (d / "result.npz").stat().st_mtime_ns != stamp
    # a complete slide whose next attempt was killed writing the marker: kept, and tidied
    stamp = (d / "result.npz").stat().st_mtime_ns
    (d / "..attempt.json.r6s7.tmp").write_bytes(b"{")
    assert process_slide(str(slides[0]), str(ckpt), str(out), settings).status == "ok"
    assert (d / "result.npz").stat().st_mtime_ns == stamp and not list(d.glob(".*.tmp"))
    assert not (d / ".attempt.json").exists()
