"""Every registered architecture: well-formed MILOutput, forward/backward with masks, padding
invariance, and a checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from napari_mil.errors import ModelError
from napari_mil.models._common import example_inputs
from napari_mil.models.checkpoint import load_model, make_card, save_model
from napari_mil.models.output import MILOutput
from napari_mil.models.registry import create_model, list_models, model_info

D = 8
#: keep every model tiny
TINY = {"transmil": {"att_dim": 16, "n_heads": 2, "n_landmarks": 4}}


def _build(name: str):
    torch.manual_seed(0)
    return create_model(name, in_dim=D, **TINY.get(name, {}))


def _inputs(model, name, **kw):
    try:
        return example_inputs(model, **kw)
    except (AttributeError, TypeError) as exc:  # pragma: no cover - depends on other modules
        pytest.skip(f"{name}: give the model an example_inputs() method ({exc})")


def _run(model, args, kwargs) -> MILOutput:
    try:
        return model(*args, **kwargs)
    except ModelError as exc:
        if model_info(model.architecture).multiscale and not hasattr(model, "example_inputs"):
            pytest.skip(f"multi-scale input contract unknown to the generic test: {exc}")
        raise


def assert_well_formed(
    out: MILOutput, batch: int, n: int | None, mask, *, single_scale: bool
) -> None:
    assert isinstance(out, MILOutput)
    assert out.logits.dim() == 2 and out.logits.shape[0] == batch
    assert torch.isfinite(out.logits).all()
    probs = out.probabilities
    assert probs.shape == out.logits.shape and ((probs >= 0) & (probs <= 1)).all()
    if out.instance_scores is not None:
        assert out.instance_scores.dim() == 2 and out.instance_scores.shape[0] == batch
        assert n is None or out.instance_scores.shape[1] == n
        real = out.instance_scores if mask is None else out.instance_scores[mask]
        assert torch.isfinite(real).all() and ((real >= 0) & (real <= 1)).all()
    for scale, att in out.attention.items():
        assert isinstance(scale, str) and att.shape[0] == batch and att.dim() == 2
        assert torch.isfinite(att).all() and (att >= -1e-6).all()
        if single_scale:
            assert att.shape[1] == n
            torch.testing.assert_close(att.sum(1), torch.ones(batch), atol=1e-5, rtol=0)
            if mask is not None:
                assert torch.all(att[~mask] == 0), "padded instances must get no attention"


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_with_mask(name):
    model = _build(name).train()
    args, kwargs = _inputs(model, name, batch=2, n=6)
    out = _run(model, args, kwargs)
    single = not model_info(name).multiscale
    x = args[0]
    mask = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
    if single:
        assert_well_formed(out, x.shape[0], x.shape[1], mask, single_scale=True)
        assert set(out.attention) <= {getattr(model, "scale_name", "20x")}
    else:
        assert_well_formed(out, out.logits.shape[0], None, None, single_scale=False)
    loss = out.logits.float().sum() + sum(t.sum() for t in out.loss_terms.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), (
        "no gradient reached the weights"
    )
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("name", [n for n in list_models() if not model_info(n).multiscale])
def test_padding_does_not_change_the_answer(name):
    model = _build(name).eval()
    args, kwargs = _inputs(model, name, batch=2, n=7)
    x, mask = args[0], args[1]
    x = x.clone()
    x[~mask] = 1e3  # junk in the padding must not leak into the result
    with torch.no_grad():
        padded = model(x, mask, **kwargs)
        n_real = int(mask[-1].sum())
        # per-instance keyword inputs (e.g. tile coordinates) are cut like the bag
        cut = {
            k: v[-1:, :n_real] if torch.is_tensor(v) and v.shape[:2] == mask.shape else v
            for k, v in kwargs.items()
        }
        alone = model(x[-1:, :n_real], **cut)
    torch.testing.assert_close(padded.logits[-1], alone.logits[0], atol=1e-5, rtol=1e-5)
    for scale, att in alone.attention.items():
        torch.testing.assert_close(
            padded.attention[scale][-1, :n_real], att[0], atol=1e-5, rtol=1e-5
        )
    if alone.instance_scores is not None:
        torch.testing.assert_close(
            padded.instance_scores[-1, :n_real], alone.instance_scores[0], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("name", list_models())
def test_checkpoint_round_trip(name, tmp_path):
    model = _build(name).eval()
    card = make_card(
        model,
        class_names=("benign", "tumor"),
        extractor="test-extractor",
        description=f"tiny {name}",
    )
    path = save_model(model, card, tmp_path / f"{name}.safetensors")
    loaded = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.card == card
    for key, val in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], val, atol=0, rtol=0)
    args, kwargs = _inputs(model, name, batch=2, n=6)
    with torch.no_grad():
        try:
            a = model(*args, **kwargs)
        except ModelError:
            pytest.skip("multi-scale input contract unknown to the generic test")
        b = loaded(*args, **kwargs)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    for scale in a.attention:
        torch.testing.assert_close(a.attention[scale], b.attention[scale], atol=0, rtol=0)


def test_registry_lists_the_torchmil_zoo_with_explanations():
    names = set(list_models())
    assert {"abmil", "gated_abmil", "transmil", "dsmil", "clam_sb", "dtfd_mil", "smabmil"} <= names
    for name in names:
        assert len(model_info(name).explains) > 30, f"{name} must explain its scores"


@pytest.mark.parametrize("name", [n for n in list_models() if not model_info(n).multiscale])
def test_one_instance_bag(name):
    model = _build(name).eval()
    args, kwargs = _inputs(model, name, batch=1, n=1, padded=False)
    with torch.no_grad():
        out = model(*args, **kwargs)
    assert_well_formed(out, 1, 1, None, single_scale=True)
