"""Hostile checkpoints, model cards and exported extractors: refused with a clear error,
no code from the file runs (a marker file is never created), nothing absurd is allocated."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from _hostile_files import (
    OpenPayload,
    SystemPayload,
    forge_safetensors,
    peak_rss_growth_mb,
    rewrite_zip,
    snapshot,
)
from safetensors.torch import save_file

from napari_mil.errors import CheckpointError, ExtractorError
from napari_mil.models.card import ModelCard
from napari_mil.models.checkpoint import (
    _build,
    load_model,
    load_state_dict_file,
    read_checkpoint_card,
    save_model,
)
from napari_mil.models.registry import create_model, list_models

D = 8
PICKLE_WORDS = r"pickled Python objects.*never unpickles.*safetensors"


def _abmil():
    torch.manual_seed(0)
    return create_model("abmil", in_dim=D, att_dim=4).eval()


def _card(**kw) -> ModelCard:
    base = dict(architecture="abmil", feature_dim=D, kwargs={"att_dim": 4},
                class_names=("normal", "tumor"))
    base.update(kw)
    return ModelCard(**base)


@pytest.fixture
def good(tmp_path) -> Path:
    return save_model(_abmil(), _card(), tmp_path / "good.safetensors")


# -- pickle payloads ----------------------------------------------------------------------

def _write_pickle(path: Path, payload, style: str) -> Path:
    if style == "torch_zip":
        torch.save(payload, path)
    elif style == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif style == "raw_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:  # protocol 0: text opcodes, no PROTO header
        path.write_bytes(pickle.dumps(payload, protocol=0))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
@pytest.mark.parametrize("style", ["torch_zip", "torch_legacy", "raw_pickle", "protocol0"])
def test_pickle_payloads_never_run(tmp_path, suffix, style):
    marker = tmp_path / "PWNED"
    evil = SystemPayload(marker) if style in ("torch_zip", "raw_pickle") else OpenPayload(marker)
    state = dict(_abmil().state_dict())
    payload = {"epoch": 1, "state_dict": {**state, "hook": evil}} if style != "protocol0" else evil
    path = _write_pickle(tmp_path / f"evil{suffix}", payload, style)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=PICKLE_WORDS):
        load_model(path, card=_card())
    with pytest.raises(CheckpointError, match=PICKLE_WORDS):
        load_state_dict_file(path)
    assert not marker.exists(), "loading a checkpoint executed pickled code"
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_pickle_named_safetensors_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "PWNED"
    path = _write_pickle(tmp_path / "evil.safetensors", {"x": SystemPayload(marker)}, "torch_zip")
    with pytest.raises(CheckpointError, match="not a valid safetensors file.*Re-save"):
        load_model(path, card=_card())
    assert read_checkpoint_card(path) is None
    assert not marker.exists()


def test_pickle_beside_card_json_sidecar(tmp_path):
    """The card beside the weights does not make a pickle acceptable."""
    marker = tmp_path / "PWNED"
    path = _write_pickle(tmp_path / "w.pt", {"x": SystemPayload(marker)}, "torch_zip")
    (tmp_path / "w.pt.card.json").write_text(_card().to_json())
    with pytest.raises(CheckpointError, match=PICKLE_WORDS):
        load_model(path)
    assert not marker.exists()


@pytest.mark.slow
def test_cli_infer_with_pickle_checkpoint(tmp_path, make_slide, capsys):
    """`napari-mil infer` over a pickle checkpoint: the slide fails, no code runs."""
    from napari_mil.cli.main import main

    marker = tmp_path / "PWNED"
    ckpt = _write_pickle(tmp_path / "evil.pt", {"x": SystemPayload(marker)}, "torch_zip")
    (tmp_path / "evil.pt.card.json").write_text(_card().to_json())
    slide = make_slide("s.svs", size=(512, 512), mpp=0.5)
    code = main(["infer", str(slide), "-c", str(ckpt), "-o", str(tmp_path / "out"),
                 "--device", "cpu"])
    assert code == 1
    assert not marker.exists()
    summary = (tmp_path / "out" / "summary.csv").read_text()
    assert "failed" in summary and "pickled Python objects" in summary


def test_cli_infer_with_forged_safetensors_fails_fast(tmp_path, make_slide, capsys):
    from napari_mil.cli.main import main

    ckpt = forge_safetensors(tmp_path / "forged.safetensors",
                             {"w": {"dtype": "F32", "shape": [2**40, 2**40],
                                    "data_offsets": [0, 8]}}, b"\0" * 8)
    slide = make_slide("s.svs", size=(256, 256), mpp=0.5)
    code = main(["infer", str(slide), "-c", str(ckpt), "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "forged safetensors" in err and "Re-save" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


# -- forged safetensors headers ------------------------------------------------------------

def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


FORGED = {
    "header-longer-than-file": (dict(header={"w": _entry()}, data=b"\0" * 8, length=10**6),
                                "not a valid safetensors file"),
    "header-length-2**63": (dict(header={"w": _entry()}, data=b"\0" * 8, length=2**63),
                            "not a valid safetensors file"),
    "negative-offsets": (dict(header={"w": _entry(offsets=(-8, 0))}, data=b"\0" * 8),
                         r"claims bytes -8\.\.0 but the file holds 8 bytes"),
    "offsets-out-of-range": (dict(header={"w": _entry(offsets=(0, 8000))}, data=b"\0" * 8),
                             r"claims bytes 0\.\.8000"),
    "offsets-reversed": (dict(header={"w": _entry(offsets=(8, 0))}, data=b"\0" * 8),
                         "claims bytes 8..0"),
    "overlapping": (dict(header={"w": _entry(), "v": _entry(offsets=(4, 12))}, data=b"\0" * 12),
                    "overlap"),
    "unknown-dtype": (dict(header={"w": _entry(dtype="Q99")}, data=b"\0" * 8),
                      "unknown dtype 'Q99'"),
    "absurd-shape": (dict(header={"w": _entry(shape=(2**40, 2**40))}, data=b"\0" * 8),
                     "needs 4,835,703,278,458,516,698,824,704 bytes"),
    "absurd-shape-and-offsets": (
        dict(header={"w": _entry(shape=(2**31, 2**31), offsets=(0, 2**64 - 1))}, data=b"\0" * 8),
        "claims bytes"),
    "shape-not-ints": (dict(header={"w": _entry(shape=("x",))}, data=b"\0" * 8),
                       "not a list of sizes"),
    "negative-shape": (dict(header={"w": _entry(shape=(-2,))}, data=b"\0" * 8),
                       "not a list of sizes"),
    "entry-not-object": (dict(header={"w": [1, 2]}, data=b"\0" * 8), "is not an object"),
    "metadata-not-strings": (dict(header={"__metadata__": {"napari_mil.card": 5},
                                          "w": _entry()}, data=b"\0" * 8),
                             "__metadata__ is not a map of strings"),
    "metadata-a-list": (dict(header={"__metadata__": [1], "w": _entry()}, data=b"\0" * 8),
                        "__metadata__ is not a map of strings"),
    "header-not-json": (dict(header=None, raw=b"{not json at all}"), "not a valid safetensors"),
    "header-a-json-array": (dict(header=None, raw=b"[1, 2, 3]"), "not a valid safetensors"),
    "zero-length-header": (dict(header=None, raw=b"", length=0), "not a valid safetensors"),
}


@pytest.mark.parametrize("case", FORGED, ids=list(FORGED))
def test_forged_safetensors_headers(tmp_path, case):
    kwargs, words = FORGED[case]
    path = forge_safetensors(tmp_path / "forged.safetensors", **kwargs)
    before = path.read_bytes()
    for load in (lambda: load_model(path, card=_card()), lambda: load_model(path),
                 lambda: load_state_dict_file(path)):
        with pytest.raises(CheckpointError, match=words) as info:
            load()
        assert "forged.safetensors" in str(info.value)
        assert "Re-save" in str(info.value)  # says what to do
    assert path.read_bytes() == before


@pytest.mark.parametrize("cut", ["empty", "8-bytes", "mid-header", "mid-data"])
def test_truncated_safetensors(tmp_path, good, cut):
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    keep = {"empty": 0, "8-bytes": 8, "mid-header": 8 + n // 2, "mid-data": len(data) - 10}[cut]
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="safetensors file.*(Re-save|intact)"):
        load_model(path)
    with pytest.raises(CheckpointError, match="safetensors file"):
        load_state_dict_file(path)


def test_forged_header_is_refused_before_allocating(tmp_path):
    """A header promising 2**40 × 2**40 floats costs nothing to refuse (fresh process, RSS)."""
    path = forge_safetensors(tmp_path / "big.safetensors",
                             {"w": _entry(shape=(2**20, 2**20), offsets=(0, 4 * 2**40))},
                             b"\0" * 64)
    code = f"""
def setup():
    global load_model, ModelCard
    from napari_mil.models.checkpoint import load_model
    from napari_mil.models.card import ModelCard
def attempt():
    load_model({str(path)!r}, card=ModelCard(architecture="abmil", feature_dim=8))
"""
    growth, out = peak_rss_growth_mb(code, cwd=tmp_path)
    assert "RESULT: CheckpointError" in out and "forged safetensors" in out
    assert growth < 200, f"refusing a forged header grew the process by {growth:.0f} MiB"


# -- model cards ---------------------------------------------------------------------------

def test_unknown_architecture_lists_the_known_ones(good):
    with pytest.raises(CheckpointError, match="Unknown model architecture 'resnet9000'") as info:
        load_model(good, card=_card(architecture="resnet9000"))
    for name in list_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name", list_models())
def test_every_architecture_is_sized_on_the_meta_device(name):
    """The size guard builds the card's model on the meta device; a fallback to a real build
    would allocate whatever the card asks for (it did: torchmil's lazy import of tensordict
    calls .item(), which fails on meta tensors)."""
    scales = [{"name": n, "mpp": m, "patch_size_px": 256}
              for n, m in (("20x", 0.5), ("10x", 1.0), ("5x", 2.0))]
    card = ModelCard(architecture=name, feature_dim=D, scales=scales)
    model = _build(card, meta=True)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_absurd_hidden_dims_are_refused(good):
    with pytest.raises(CheckpointError, match=r"kwargs.att_dim = 1000000000 is implausibly large"):
        load_model(good, card={"architecture": "abmil", "feature_dim": D,
                               "kwargs": {"att_dim": 10**9}})
    with pytest.raises(CheckpointError, match="feature_dim 1000000000 must be an integer"):
        load_model(good, card={"architecture": "abmil", "feature_dim": 10**9})


@pytest.mark.slow
def test_absurd_card_for_small_weights_refused_without_allocating(tmp_path, good):
    """Plausible fields, absurd together: 1e9 weights for a file of ~50 numbers. Refused by the
    meta-device size guard; peak RSS of a fresh process stays small (was ~3.9 GiB)."""
    card = {"architecture": "abmil", "feature_dim": 200_000, "kwargs": {"att_dim": 5_000}}
    code = f"""
def setup():
    global load_model
    from napari_mil.models.checkpoint import load_model
    import torchmil.models  # imported before measuring: only the attempt counts
def attempt():
    load_model({str(good)!r}, card={card!r})
"""
    growth, out = peak_rss_growth_mb(code, cwd=tmp_path)
    assert "RESULT: CheckpointError" in out and "do not belong to these weights" in out
    assert growth < 300, f"refusing an absurd card grew the process by {growth:.0f} MiB"


def test_card_and_weights_mismatch_names_the_keys(tmp_path):
    model = _abmil()
    sd = dict(model.state_dict())
    sd.pop("mil.pool.fc2.weight")
    sd["mil.pool.fc1.module.weight"] = torch.zeros(4, 16)
    save_file(sd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "odd.safetensors", card=_card())
    text = str(info.value)
    assert "missing keys ['mil.pool.fc2.weight']" in text
    assert "mil.pool.fc1.module.weight: weights (4, 16) vs model (4, 8)" in text
    assert "Layout: napari-mil's own key names" in text
    assert "strict=False" not in text


def test_card_for_another_architecture(good):
    with pytest.raises(CheckpointError, match="does not fit architecture 'dsmil'.*Its keys are "
                       "napari-mil's names of architecture 'abmil'"):
        load_model(good, card={"architecture": "dsmil", "feature_dim": D})


BAD_CARDS = {
    "empty": (b"", "not valid JSON"),
    "truncated": (b'{"architecture": "abmil", "feature_dim": 8', "not valid JSON"),
    "binary": (b"\xff\xfe\x00", "not valid JSON"),
    "array": (b"[1, 2]", "must be a JSON object, got list"),
    "null": (b"null", "must be a JSON object"),
    "feature-dim-string": ({"feature_dim": "8"}, "feature_dim '8' must be an integer"),
    "feature-dim-bool": ({"feature_dim": True}, "feature_dim True must be an integer"),
    "class-names-string": ({"class_names": "ab"}, "'class_names' must be a list of strings"),
    "class-names-objects": ({"class_names": [{"a": 1}, "b"]}, "must be a list of strings"),
    "no-classes": ({"class_names": []}, "at least one class name"),
    "kwargs-list": ({"kwargs": [4]}, "'kwargs' must be a JSON object"),
    "kwarg-nan": ({"kwargs": {"att_dim": 4, "dropout": float("nan")}}, "not a finite number"),
    "kwarg-negative": ({"kwargs": {"att_dim": -5}}, "Cannot build model 'abmil'.*negative"),
    "kwarg-string": ({"kwargs": {"att_dim": "4"}}, "Cannot build model 'abmil'"),
    "unknown-kwarg": ({"kwargs": {"bogus": 1}}, "unexpected keyword argument 'bogus'"),
    "unknown-field": ({"evil": 1}, r"unknown fields \['evil'\]"),
    "scales-object": ({"scales": {"name": "20x"}}, "'scales' must be a list"),
    "scale-nan": ({"scales": [{"name": "20x", "mpp": float("nan"), "patch_size_px": 256}]},
                  "invalid scale"),
    "extractor-number": ({"extractor": 5}, "Cannot read extractor 5"),
    "spec-from-the-future": ({"spec_version": 99}, "newer than this napari-mil"),
    "training-list": ({"training": [1]}, "'training' must be a JSON object"),
    "description-object": ({"description": {"x": 1}}, "'description' must be a string"),
    "too-many-logits": ({"class_names": ["a", "b", "c"]}, "gives 1 logit.*3 classes"),
}


@pytest.mark.parametrize("case", BAD_CARDS, ids=list(BAD_CARDS))
def test_malformed_card_json(tmp_path, good, case):
    content, words = BAD_CARDS[case]
    card_path = tmp_path / "card.json"
    if isinstance(content, bytes):
        card_path.write_bytes(content)
    else:
        base = {"architecture": "abmil", "feature_dim": D, "kwargs": {"att_dim": 4},
                "class_names": ["normal", "tumor"]}
        card_path.write_text(json.dumps({**base, **content}))
    with pytest.raises(CheckpointError, match=words):
        load_model(good, card=card_path)


def test_huge_card_file_is_not_read(tmp_path, good):
    card_path = tmp_path / "card.json"
    with card_path.open("wb") as fh:
        fh.truncate(50 * 2**20)  # sparse 50 MiB
    with pytest.raises(CheckpointError, match="larger than 1,000,000 bytes"):
        load_model(good, card=card_path)


def test_embedded_card_that_is_garbage(tmp_path):
    model = _abmil()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for text, words in (("{", "embedded model card is invalid.*not valid JSON"),
                        ('{"architecture": "nope", "feature_dim": 8}', None)):
        path = tmp_path / "m.safetensors"
        path.unlink(missing_ok=True)
        save_file(state, str(path), metadata={"napari_mil.card": text})
        if words:
            with pytest.raises(CheckpointError, match=words):
                load_model(path)
        else:
            with pytest.raises(CheckpointError, match="Unknown model architecture 'nope'"):
                load_model(path)


# -- exported extractors (.pt2 / TorchScript) -----------------------------------------------

class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, 4)
        self.fc = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class _SavesAFile(torch.nn.Module):
    """Valid TorchScript whose forward writes a file (torch.save is a TorchScript builtin)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.fc = torch.nn.Linear(3, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from napari_mil.features.card import ExtractorCard
    from napari_mil.features.exported import export_extractor

    folder = tmp_path_factory.mktemp("exported")
    card = ExtractorCard(name="tiny", input_size_px=32, output_dim=16, mpp=0.5, kind="export")
    torch.manual_seed(0)
    net = _TinyNet().eval()
    pt2 = export_extractor(net, card, folder / "good.pt2")
    ts = export_extractor(net, card, folder / "good.pt", fmt="torchscript")
    return pt2, ts


def _with_card(src: Path, dst: Path) -> Path:
    dst.with_name(dst.name + ".json").write_bytes(src.with_name(src.name + ".json").read_bytes())
    return dst


def _evil_torch_save(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": SystemPayload(marker)}, buf)
    return buf.getvalue()


def test_good_exports_still_load(exported):
    from napari_mil.features.exported import load_exported

    for path in exported:
        assert load_exported(path, device="cpu").card.output_dim == 16


@pytest.mark.parametrize("member", ["sample_inputs", "sample_inputs_protocol0"])
def test_pt2_with_pickle_payload_never_runs(tmp_path, exported, member):
    """torch.export.load unpickles sample inputs and retries with weights_only=False (it runs
    this payload when called directly); load_exported forces the safe unpickler."""
    from napari_mil.features.exported import load_exported

    marker = tmp_path / "PWNED"
    payload = (_evil_torch_save(marker) if member == "sample_inputs"
               else pickle.dumps(SystemPayload(marker), protocol=0))
    path = rewrite_zip(exported[0], tmp_path / "evil.pt2",
                       lambda name, data: payload if "sample_inputs/" in name else None)
    _with_card(exported[0], path)
    with pytest.raises(ExtractorError, match="refused: it holds pickled Python objects"):
        load_exported(path, device="cpu")
    assert not marker.exists()


def test_pt2_with_opaque_pickled_constant(tmp_path, exported):
    """Opaque constants are read with pickle.loads: refused from the archive listing."""
    from napari_mil.features.exported import load_exported

    marker = tmp_path / "PWNED"
    config = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                               "use_pickle": True, "tensor_meta": None}}}

    def swap(name, data):
        if name.endswith("model_constants_config.json"):
            return json.dumps(config).encode()
        return None

    path = rewrite_zip(exported[0], tmp_path / "evil.pt2", swap)
    import zipfile

    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("archive/data/constants/opaque_obj_0", pickle.dumps(SystemPayload(marker)))
    _with_card(exported[0], path)
    with pytest.raises(ExtractorError, match="refused.*pickled Python object"):
        load_exported(path, device="cpu")
    assert not marker.exists()


def test_pt2_graph_calling_a_file_operation(tmp_path, exported):
    from napari_mil.features.exported import load_exported

    path = rewrite_zip(exported[0], tmp_path / "evil.pt2", lambda name, data: data.replace(
        b"torch.ops.aten.relu.default", b"torch.ops.aten.save.default")
        if name.endswith("models/model.json") else None)
    _with_card(exported[0], path)
    with pytest.raises(ExtractorError, match="refused: its program calls the file operation"):
        load_exported(path, device="cpu")


def test_torchscript_that_writes_files_is_refused(tmp_path, exported):
    from napari_mil.features.exported import load_exported

    marker = tmp_path / "PWNED"
    path = tmp_path / "saves.pt"
    torch.jit.script(_SavesAFile(str(marker))).save(str(path))
    _with_card(exported[1], path)
    with pytest.raises(ExtractorError, match="refused: its program calls the file operation "
                       "'save'"):
        load_exported(path, device="cpu")
    assert not marker.exists(), "the extractor's dummy batch ran torch.save"


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl"])
def test_torchscript_with_pickle_payload(tmp_path, exported, member):
    """TorchScript's own unpickler knows only TorchScript types: os.system is refused."""
    from napari_mil.features.exported import load_exported

    marker = tmp_path / "PWNED"
    payload = pickle.dumps((SystemPayload(marker),), protocol=2)
    path = rewrite_zip(exported[1], tmp_path / "evil.pt",
                       lambda name, data: payload if name.endswith("/" + member) else None)
    _with_card(exported[1], path)
    with pytest.raises(ExtractorError, match="is not a TorchScript module.*never unpickles"):
        load_exported(path, device="cpu")
    assert not marker.exists()


def test_pickle_checkpoint_given_as_extractor(tmp_path, exported):
    from napari_mil.features.exported import load_exported

    marker = tmp_path / "PWNED"
    path = _write_pickle(tmp_path / "evil.pt", {"x": SystemPayload(marker)}, "torch_zip")
    _with_card(exported[1], path)
    with pytest.raises(ExtractorError, match="not a TorchScript module"):
        load_exported(path, device="cpu")
    assert not marker.exists()


def test_cli_extract_refuses_a_malicious_pt2(tmp_path, exported, make_slide, capsys):
    from napari_mil.cli.main import main

    marker = tmp_path / "PWNED"
    path = rewrite_zip(exported[0], tmp_path / "evil.pt2",
                       lambda name, data: _evil_torch_save(marker)
                       if "sample_inputs/" in name else None)
    _with_card(exported[0], path)
    slide = make_slide("s.svs", size=(512, 512), mpp=0.5)
    out = tmp_path / "out"
    code = main(["extract", str(slide), "--extractor", str(path), "--out", str(out),
                 "--device", "cpu", "--no-cache", "--quiet"])
    assert code == 2
    assert "pickled Python objects" in capsys.readouterr().err
    assert not marker.exists()
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.parametrize("field, value, words", [
    ("input_size_px", 10**6, "input_size_px"),
    ("output_dim", 10**9, "output_dim"),
])
def test_extractor_card_with_absurd_sizes(tmp_path, exported, field, value, words):
    """The dummy batch is (2, S, S, 3): a card asking S = 10**6 must be refused, not allocated."""
    from napari_mil.features.exported import load_exported

    path = tmp_path / "x.pt2"
    path.write_bytes(exported[0].read_bytes())
    card = json.loads(exported[0].with_name("good.pt2.json").read_text())
    card[field] = value
    (tmp_path / "x.pt2.json").write_text(json.dumps(card))
    with pytest.raises(ExtractorError, match=words):
        load_exported(path, device="cpu")
