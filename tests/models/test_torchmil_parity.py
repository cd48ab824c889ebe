"""Same weights → same bag logits and attention as torchmil's own forward (fp32, 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mil.models.registry import create_model

ATOL = 1e-5
D = 12


def _bag(b=2, n=9, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g)


def _mask(b=2, n=9):
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 6:] = False
    return mask


def _adapter(name, **kw):
    torch.manual_seed(1)
    model = create_model(name, in_dim=D, **kw).eval()
    return model, model.mil


def _torchmil_copy(model):
    """A second torchmil module of the same class, loaded from the adapter's state_dict."""
    import copy

    tm = copy.deepcopy(model.mil)
    for p in tm.parameters():
        torch.nn.init.zeros_(p)
    tm.load_state_dict({k[4:]: v for k, v in model.state_dict().items()})
    return tm.eval()


@pytest.mark.parametrize("name", ["abmil", "gated_abmil"])
@pytest.mark.parametrize("masked", [False, True])
def test_abmil_parity(name, masked):
    model, _ = _adapter(name)
    tm = _torchmil_copy(model)
    x, mask = _bag(), (_mask() if masked else None)
    with torch.no_grad():
        out = model(x, mask)
        y, f = tm(x, mask, return_att=True)
    torch.testing.assert_close(out.logits[:, 0], y, atol=ATOL, rtol=0)
    ref = torch.softmax(f if mask is None else f.masked_fill(~mask, -torch.inf), dim=1)
    torch.testing.assert_close(out.attention["20x"], ref, atol=ATOL, rtol=0)
    # the bag logit is the attention-weighted mean of the instance logits
    inst = out.extras["instance_logits"]
    torch.testing.assert_close((out.attention["20x"] * inst).sum(1), y, atol=ATOL, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_clam_sb_parity(masked):
    model, _ = _adapter("clam_sb", gated=True, k_sample=3)
    tm = _torchmil_copy(model)
    x, mask = _bag(), (_mask() if masked else None)
    with torch.no_grad():
        out = model(x, mask)
        y, f = tm(x, mask, return_att=True)
        inst = torch.softmax(tm.inst_classifiers[1](x), -1)[..., 1]
        if mask is not None:
            inst = inst.masked_fill(~mask, 0.0)  # padded instances score 0
    torch.testing.assert_close(out.logits[:, 0], y, atol=ATOL, rtol=0)
    ref = torch.softmax(f if mask is None else f.masked_fill(~mask, -torch.inf), dim=1)
    torch.testing.assert_close(out.attention["20x"], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.instance_scores, inst, atol=ATOL, rtol=0)


def test_clam_sb_instance_loss_runs_and_backprops():
    model, _ = _adapter("clam_sb", k_sample=2)
    model.train()
    loss = model.instance_loss(_bag(), torch.tensor([0, 1]), _mask())
    loss.backward()
    assert torch.isfinite(loss)
    assert model.mil.inst_classifiers[1].module.weight.grad is not None


def test_dsmil_parity_and_squeezed_attention():
    model, _ = _adapter("dsmil", nonlinear_q=True, nonlinear_v=True)
    tm = _torchmil_copy(model)
    x = _bag()
    with torch.no_grad():
        out = model(x)
        y, att, inst = tm(x, return_att=True, return_inst_pred=True)
        bag_pred, _ = tm.predict(x, return_inst_pred=True)
    assert att.shape == (2, 9, 1)  # torchmil's quirk: post-softmax (B, N, 1)
    assert out.attention["20x"].shape == (2, 9)
    torch.testing.assert_close(out.attention["20x"], att[..., 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.extras["bag_logit_attention"][:, 0], y, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[:, 0], bag_pred, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.instance_scores, torch.sigmoid(inst), atol=ATOL, rtol=0)


def test_dsmil_padding_never_becomes_the_critical_instance():
    model, _ = _adapter("dsmil")
    x, mask = _bag(), _mask()
    # make a padded instance the highest-scoring one
    w = model.mil.inst_classifier.weight.detach()[0]
    x[1, 7] = 50 * w / w.norm()
    with torch.no_grad():
        padded = model(x, mask)
        alone = model(x[1:, :6])
    torch.testing.assert_close(padded.logits[1], alone.logits[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(
        padded.attention["20x"][1, :6], alone.attention["20x"][0], atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("n", [9, 37])
def test_transmil_parity(n):
    model, _ = _adapter("transmil", att_dim=16, n_heads=2, n_landmarks=4)
    tm = _torchmil_copy(model)
    x = _bag(n=n)
    with torch.no_grad():
        out = model(x)
        y, att = tm(x, return_att=True)
        y_plain = tm(x)
    torch.testing.assert_close(out.logits[:, 0], y, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[:, 0], y_plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.extras["attention_raw"], att, atol=ATOL, rtol=0)
    norm = att.clamp(min=0) / att.clamp(min=0).sum(1, keepdim=True)
    torch.testing.assert_close(out.attention["20x"], norm, atol=ATOL, rtol=0)


def test_transmil_mask_runs_each_bag_on_its_real_instances():
    model, _ = _adapter("transmil", att_dim=16, n_heads=2, n_landmarks=4)
    tm = _torchmil_copy(model)
    x, mask = _bag(), _mask()
    with torch.no_grad():
        out = model(x, mask)
        y1, att1 = tm(x[1:, :6], return_att=True)
    torch.testing.assert_close(out.logits[1, 0], y1[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.extras["attention_raw"][1, :6], att1[0], atol=ATOL, rtol=0)
    assert torch.all(out.attention["20x"][1, 6:] == 0)


@pytest.mark.parametrize("mode", ["maxmin", "max", "afs"])
def test_dtfd_parity_with_same_pseudo_bags(mode):
    model, _ = _adapter("dtfd_mil", n_groups=3, distill_mode=mode)
    tm = _torchmil_copy(model)
    x = _bag(n=10)
    ones = torch.ones(2, 10, dtype=torch.bool)  # torchmil's maxmin/max modes need a mask
    with torch.no_grad():
        np.random.seed(7)
        y, cam = tm(x, ones, return_inst_cam=True)
        np.random.seed(7)
        idx = np.arange(10)
        np.random.shuffle(idx)
        out = model._forward_groups(x, np.array_split(idx, 3))
    torch.testing.assert_close(out["logits"][:, 0], y, atol=ATOL, rtol=0)
    torch.testing.assert_close(out["instance_cam"], cam, atol=ATOL, rtol=0)
    # exact attention decomposition: weights sum to 1 and reproduce the bag logit
    att = out["attention"]
    torch.testing.assert_close(att.sum(1), torch.ones(2), atol=ATOL, rtol=0)
    torch.testing.assert_close((att * out["instance_logits"]).sum(1), y, atol=ATOL, rtol=0)


def test_dtfd_eval_is_deterministic():
    model, _ = _adapter("dtfd_mil", n_groups=3)
    x = _bag(n=10)
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)


@pytest.mark.parametrize("where", ["early", "mid", "late"])
def test_smabmil_parity_with_adjacency(where):
    model, _ = _adapter("smabmil", sm_where=where, sm_alpha=0.5)
    tm = _torchmil_copy(model)
    x = _bag(n=6)
    coords = torch.tensor([[0, 0], [256, 0], [512, 0], [0, 256], [256, 256], [2048, 2048]]).float()
    from napari_mil.models._common import grid_adjacency

    adj = grid_adjacency(coords).to_dense().expand(2, -1, -1)  # (B, N, N)
    with torch.no_grad():
        out = model(x, coords=coords.expand(2, -1, -1))
        out_adj = model(x, adj=adj)
        y, f = tm(x, adj, return_att=True)
    torch.testing.assert_close(out.logits[:, 0], y, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.attention["20x"], torch.softmax(f, 1), atol=ATOL, rtol=0)
    torch.testing.assert_close(out_adj.logits, out.logits, atol=ATOL, rtol=0)


def test_smabmil_without_coords_is_abmil_like():
    model, _ = _adapter("smabmil")
    tm = _torchmil_copy(model)
    x = _bag(n=5)
    eye = torch.eye(5).expand(2, -1, -1)
    with torch.no_grad():
        out = model(x)
        y, f = tm(x, eye, return_att=True)
    torch.testing.assert_close(out.logits[:, 0], y, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.attention["20x"], torch.softmax(f, 1), atol=ATOL, rtol=0)


def test_grid_adjacency_links_8_neighbours_only():
    from napari_mil.models._common import grid_adjacency

    coords = torch.tensor([[0, 0], [224, 0], [224, 224], [896, 896]]).float()
    adj = grid_adjacency(coords).to_dense()[0]
    linked = adj > 0
    expected = torch.tensor(
        [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(linked, expected)
    torch.testing.assert_close(adj, adj.T)
