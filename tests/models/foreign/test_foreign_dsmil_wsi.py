"""dsmil-wsi checkpoints (binli123/dsmil-wsi): napari-mil reproduces the original forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_mil.errors import CheckpointError

D = 24


# ---- binli123/dsmil-wsi dsmil.py, re-typed (FCLayer, BClassifier, MILNet) ----------------
class FCLayer(nn.Module):
    def __init__(self, in_size, out_size=1):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_size, out_size))

    def forward(self, feats):
        return feats, self.fc(feats)


class BClassifier(nn.Module):
    def __init__(self, input_size, output_class, dropout_v=0.0, nonlinear=True, passing_v=False):
        super().__init__()
        if nonlinear:
            self.q = nn.Sequential(nn.Linear(input_size, 128), nn.ReLU(), nn.Linear(128, 128),
                                   nn.Tanh())
        else:
            self.q = nn.Linear(input_size, 128)
        if passing_v:
            self.v = nn.Sequential(nn.Dropout(dropout_v), nn.Linear(input_size, input_size),
                                   nn.ReLU())
        else:
            self.v = nn.Identity()
        self.fcc = nn.Conv1d(output_class, output_class, kernel_size=input_size)

    def forward(self, feats, c):
        V = self.v(feats)
        Q = self.q(feats).view(feats.shape[0], -1)
        _, m_indices = torch.sort(c, 0, descending=True)
        m_feats = torch.index_select(feats, dim=0, index=m_indices[0, :])
        q_max = self.q(m_feats)
        A = torch.mm(Q, q_max.transpose(0, 1))
        A = F.softmax(A / torch.sqrt(torch.tensor(Q.shape[1], dtype=torch.float32)), 0)
        B = torch.mm(A.transpose(0, 1), V)
        B = B.view(1, B.shape[0], B.shape[1])
        C = self.fcc(B)
        return C.view(1, -1), A, B


class MILNet(nn.Module):
    def __init__(self, i_classifier, b_classifier):
        super().__init__()
        self.i_classifier = i_classifier
        self.b_classifier = b_classifier

    def forward(self, x):
        feats, classes = self.i_classifier(x)
        prediction_bag, A, B = self.b_classifier(feats, classes)
        return classes, prediction_bag, A, B
# ---------------------------------------------------------------------------------------------


def _milnet(n_classes: int, seed: int = 0, **kwargs) -> MILNet:
    torch.manual_seed(seed)
    return MILNet(FCLayer(D, n_classes), BClassifier(D, n_classes, **kwargs)).eval()


def _card(**kw) -> dict:
    card = {"architecture": "dsmil_original", "feature_dim": D,
            "class_names": ["benign", "tumor"]}
    card.update(kw)
    return card


def test_published_aggregator_layout_keys():
    """The published c16/tcga aggregators hold exactly these keys and shapes."""
    sd = _milnet(2).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "i_classifier.fc.0.weight": (2, D), "i_classifier.fc.0.bias": (2,),
        "b_classifier.q.0.weight": (128, D), "b_classifier.q.0.bias": (128,),
        "b_classifier.q.2.weight": (128, 128), "b_classifier.q.2.bias": (128,),
        "b_classifier.fcc.weight": (2, 2, D), "b_classifier.fcc.bias": (2,),
    }


@pytest.mark.parametrize("passing_v", [False, True])
def test_binary_aggregator_equals_the_original(load_original, assert_close, passing_v):
    net = _milnet(1, passing_v=passing_v)
    model = load_original(net.state_dict(), _card(), "c16_aggregator.pth")
    assert model.checkpoint_format == "dsmil-wsi"
    assert model.card.kwargs == {"n_labels": 1, "nonlinear_q": True, "passing_v": passing_v,
                                 "q_dim": 128}
    x = torch.randn(37, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        classes, bag, A, _ = net(x)
        out = model(x.unsqueeze(0))
    assert_close(out.probabilities[0], torch.sigmoid(bag)[0])  # testing_c16.py
    assert_close(out.attention["20x"][0], A[:, 0])
    assert_close(out.instance_scores[0], torch.sigmoid(classes[:, 0]))
    assert float(out.attention["20x"].sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("label", [0, 1])
def test_multilabel_aggregator_explains_one_label_and_averages_as_the_original(
    load_original, assert_close, label
):
    """tcga_aggregator (2 labels, fcc mixes both): ``average`` as in testing_tcga.py."""
    net = _milnet(2, seed=3, nonlinear=False)
    card = _card(class_names=["other", "LUSC" if label else "LUAD"],
                 kwargs={"label": label, "average": True})
    model = load_original(net.state_dict(), card, "tcga_aggregator.pth")
    x = torch.randn(2, 29, D, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 29, dtype=torch.bool)
    mask[1, 17:] = False
    with torch.no_grad():
        out = model(x, mask)
        for b, n in ((0, 29), (1, 17)):
            classes, bag, A, _ = net(x[b, :n])
            max_prediction, _ = torch.max(classes, 0)
            want = (torch.sigmoid(bag)[0] + torch.sigmoid(max_prediction)) / 2
            assert_close(out.extras["label_probabilities"][b], want)
            assert_close(out.probabilities[b, 0], want[label])
            assert_close(out.attention["20x"][b, :n], A[:, label])
    assert float(out.attention["20x"][1, 17:].abs().sum()) == 0.0


def test_multilabel_without_a_label_says_what_to_set(load_original):
    net = _milnet(2)
    with pytest.raises(CheckpointError, match=r"2 independent labels.*set kwargs 'label'"):
        load_original(net.state_dict(), _card(), "tcga_aggregator.pth")


def test_aggregator_under_another_architecture_is_refused_even_with_strict_false(
    load_original,
):
    """The published aggregator used to 'load' into torchmil's DSMIL with zero keys matched."""
    net = _milnet(1)
    for strict in (True, False):
        with pytest.raises(CheckpointError) as info:
            load_original(net.state_dict(), _card(architecture="dsmil"), strict=strict)
        text = str(info.value)
        assert "dsmil-wsi layout" in text and "8 of its 8 keys recognised" in text
        assert "Set the card's architecture to 'dsmil_original'" in text
        assert "strict=False" not in text


def test_card_kwargs_that_contradict_the_shapes_are_named(load_original):
    net = _milnet(1)
    with pytest.raises(CheckpointError, match=r"q_dim = 128 \(card: 64\).*leave them out"):
        load_original(net.state_dict(), _card(kwargs={"q_dim": 64}))
    with pytest.raises(CheckpointError, match=rf"for {D}-dimensional features.*feature_dim 512"):
        load_original(net.state_dict(), _card(feature_dim=512))


def test_milnet_with_its_tile_embedder_names_the_embedder(load_original, assert_close):
    """A MILNet built with IClassifier holds the tile CNN: refused strictly, ignored otherwise."""
    net = _milnet(1, seed=7)
    sd = {("i_classifier.fc." + k[len("i_classifier.fc.0."):] if k.startswith(
        "i_classifier.fc.0.") else k): v for k, v in net.state_dict().items()}
    sd["i_classifier.feature_extractor.conv1.weight"] = torch.zeros(4, 3, 3, 3)
    with pytest.raises(CheckpointError) as info:
        load_original(sd, _card(), "milnet.pth")
    text = str(info.value)
    assert "unexpected keys ['i_classifier.feature_extractor.conv1.weight']" in text
    assert "dsmil-wsi's tile embedder" in text and "strict=False" not in text
    with pytest.warns(UserWarning, match="ignored 1 key"):
        model = load_original(sd, _card(), "milnet.pth", strict=False)
    x = torch.randn(11, D)
    with torch.no_grad():
        assert_close(model(x.unsqueeze(0)).probabilities[0], torch.sigmoid(net(x)[1])[0])
