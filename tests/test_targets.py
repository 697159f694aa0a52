"""Target discovery: the paper's defaults, patterns, tied weights, raw parameters, canonical names."""

import pytest
import torch
from torch import nn

from torch_lottery import LotteryTicket, find_targets
from torch_lottery.targets import canonical_name, named_state_tensors


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(1, 2, 3)
        self.deconv = nn.ConvTranspose2d(2, 1, 3)
        self.bn = nn.BatchNorm2d(2)
        self.ln = nn.LayerNorm(4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.rnn = nn.LSTM(4, 4)
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.ones(3, 3))  # raw parameter on a non-leaf module


class ThirdPartyConv1D(nn.Module):
    """Shaped like transformers' GPT-2 Conv1D: a leaf layer with a 2-D weight, not an nn.Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6))
        self.bias = nn.Parameter(torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.hidden = nn.Linear(6, 6)
        self.head = nn.Linear(6, 12, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.emb(idx))))


def test_defaults_follow_the_paper():
    fqns = [t.fqn for t in find_targets(Zoo())]
    assert fqns == ["conv.weight", "deconv.weight", "attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"]


def test_third_party_leaf_weights_are_default_targets():
    model = nn.Sequential(ThirdPartyConv1D(), nn.GELU())
    assert [t.fqn for t in find_targets(model)] == ["0.weight"]


def test_mha_with_separate_projections():
    attn = nn.MultiheadAttention(4, 2, kdim=3, vdim=5)
    assert [t.fqn for t in find_targets(attn)] == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]


def test_patterns_select_biases_rnns_embeddings_and_raw_parameters():
    fqns = [t.fqn for t in find_targets(Zoo(), ["rnn.weight_*", "emb.weight", "scale", "fc.*"])]
    assert fqns == ["scale", "emb.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "fc.weight", "fc.bias"]


def test_callable_selector_and_exclude():
    fqns = [t.fqn for t in find_targets(Zoo(), lambda fqn, m, p: p.dim() == 4, exclude=["deconv.*"])]
    assert fqns == ["conv.weight"]


def test_tied_weight_is_one_target_with_an_alias():
    targets = find_targets(Tied(), ["emb.weight"])
    assert len(targets) == 1
    assert targets[0].fqn == "emb.weight"
    assert targets[0].aliases == (("head", "weight"),)
    # naming the alias selects the same single target
    assert [t.fqn for t in find_targets(Tied(), ["head.weight"])] == ["emb.weight"]


def test_tied_weights_are_pruned_once_and_both_users_see_the_mask():
    torch.manual_seed(0)
    model = Tied()
    ticket = LotteryTicket(model, rate=0.5, targets=["emb.weight", "hidden.weight"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    with ticket:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randint(0, 12, (5,))).sum().backward()
            opt.step()
    assert model.emb.weight_orig is model.head.weight_orig
    assert model.emb.weight_mask is model.head.weight_mask
    mask = ticket.masks["emb.weight"]
    assert int(ticket.summary()[0]["remaining"]) == int(mask.sum())
    for _ in range(3):
        opt.zero_grad()
        model(torch.randint(0, 12, (5,))).sum().backward()
        opt.step()
    model(torch.randint(0, 12, (5,)))  # forward refreshes both modules' masked weight
    assert (model.emb.weight[~mask] == 0).all()
    assert torch.equal(model.emb.weight, model.head.weight)
    assert list(named_state_tensors(model)).count("emb.weight") == 1


def test_canonical_names_after_pruning():
    model = nn.Linear(3, 3)
    torch.nn.utils.prune.l1_unstructured(model, "weight", amount=0.3)
    assert canonical_name(model, "weight_orig") == "weight"
    assert canonical_name(model, "weight_mask") is None
    assert canonical_name(model, "bias") == "bias"
    assert list(named_state_tensors(model)) == ["bias", "weight"]
    assert [t.fqn for t in find_targets(model)] == ["weight"]


def test_lazy_parameters_get_a_clear_error():
    model = nn.Sequential(nn.LazyLinear(4))
    with pytest.raises(ValueError, match="uninitialized \\(lazy\\) parameter; run one forward pass"):
        find_targets(model, ["0.weight"])


def test_integer_parameters_are_refused():
    model = nn.Module()
    model.register_parameter("codes", nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False))
    with pytest.raises(ValueError, match="only floating-point tensors can be pruned"):
        find_targets(model, ["codes"])


def test_model_with_nothing_to_prune_by_default():
    with pytest.raises(ValueError, match="selects no prunable tensor in LSTM"):
        find_targets(nn.LSTM(3, 3))


def test_lstm_weights_on_request_stay_zero_through_training():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, num_layers=1)
    ticket = LotteryTicket(lstm, rate=0.5, targets=["weight_*"])
    opt = torch.optim.SGD(lstm.parameters(), lr=0.5)
    x = torch.randn(3, 2, 4)
    with ticket:
        pass
    for _ in range(3):
        opt.zero_grad()
        lstm(x)[0].sum().backward()
        opt.step()
    masks = ticket.masks
    for fqn, mask in masks.items():
        assert (getattr(lstm, fqn)[~mask] == 0).all()
    # the flat weights the LSTM kernel uses are the masked ones
    out = lstm(x)[0]
    ref = nn.LSTM(4, 5)
    with torch.no_grad():
        for name, _ in ref.named_parameters():
            getattr(ref, name).copy_(getattr(lstm, name))
    assert torch.allclose(out, ref(x)[0])


def test_raw_parameter_on_a_custom_module_is_pruned():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.arange(1.0, 7.0).reshape(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.gain

    model = Scale()
    ticket = LotteryTicket(model, rate=0.5, targets=["gain"])
    with ticket:
        pass
    assert ticket.masks["gain"].tolist() == [[False, False, False], [True, True, True]]
    assert torch.equal(model(torch.ones(1, 2)), torch.tensor([[4.0, 5.0, 6.0]]))
