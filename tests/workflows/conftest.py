"""Session fixtures of the workflow tests (see wf_cohort)."""

from __future__ import annotations

import pytest
from wf_cohort import EXTRACTOR, SLIDES, CohortRun

from napari_mil.cli.main import main

distributed = pytest.importorskip("distributed")
pytest.importorskip("torch")


@pytest.fixture(scope="session")
def dask_scheduler():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def cohort_run(tmp_path_factory, dask_scheduler) -> CohortRun:
    from napari_mil.synthetic.scene import SyntheticSlideSpec
    from napari_mil.synthetic.slides import generate_slide

    root = tmp_path_factory.mktemp("workflow")
    cohort, cache = root / "cohort", root / "cache"
    rows = ["slide,label"]
    for i, (name, mpp, size, lesion) in enumerate(SLIDES):
        generate_slide(cohort / f"{name}.svs",
                       SyntheticSlideSpec(size=size, seed=i, lesion_type=lesion, mpp=mpp),
                       workers=1)
        rows.append(f"{name},{int(lesion != 'none')}")
    (cohort / "labels.csv").write_text("\n".join(rows) + "\n")

    slides = [str(cohort / f"{name}.svs") for name, *_ in SLIDES]
    features = root / "features"
    assert main(["extract", *slides, "--out", str(features), "--extractor", str(EXTRACTOR),
                 "--device", "cpu", "--cache-dir", str(cache), "--quiet"]) == 0
    h5_dir = features / "20x_256px_0px_overlap" / "features_cnn-20x"
    assert sorted(p.stem for p in h5_dir.glob("*.h5")) == [name for name, *_ in SLIDES]

    # the extractor is named by the file given to extract, as a user would
    train_out = root / "run"
    assert main(["train", str(h5_dir), "--labels", str(cohort / "labels.csv"),
                 "--out", str(train_out), "--model", "abmil", "--extractor", str(EXTRACTOR),
                 "--scales", "20x", "--folds", "2", "--epochs", "3", "--device", "cpu",
                 "--no-progress"]) == 0
    run = CohortRun(root, cohort, features, h5_dir, train_out / "model.safetensors",
                    root / "results", dask_scheduler, cache)
    assert run.infer(str(cohort), "-c", str(run.model), "-o", str(run.results)) == 0
    return run
