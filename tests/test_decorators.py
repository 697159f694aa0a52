"""lottery_ticket: decorated module classes and instances, and copies of tickets (deepcopy, pickle, torch.save)."""

import copy
import doctest
import io
import pickle

import pytest
import torch
from torch import nn

import torch_lottery.decorators as decorators
from torch_lottery import BACKENDS, LotteryTicket, lottery_ticket


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _train(model, optimizer, steps=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(5, 6, generator=g)
        nn.functional.cross_entropy(model(x), torch.randint(0, 3, (5,), generator=g)).backward()
        optimizer.step()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _imp(ticket, rounds, seed=1):
    for r in range(rounds):
        opt = torch.optim.Adam(ticket.model.parameters(), lr=1e-2)
        with ticket:
            _train(ticket.model, opt, seed=seed + r)


# ---------------------------------------------------------------- the class decorator
@lottery_ticket(rate=0.5, rounds=3)
class Net(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


class Wider(Net):  # layers added after the decorated __init__ are targets too: the ticket is built on access
    def __init__(self):
        super().__init__()
        self.extra = nn.Linear(3, 3)

    def forward(self, x):
        return self.extra(super().forward(x))


def test_class_decorator_keeps_the_class_and_gives_each_instance_its_own_ticket():
    assert Net.__name__ == "Net" and Net.__module__ == __name__
    a, b = Net(), Net()
    assert isinstance(a.ticket, LotteryTicket) and a.ticket is a.ticket
    assert a.ticket is not b.ticket and a.ticket.model is a and b.ticket.model is b
    assert a.ticket.rate == 0.5 and a.ticket.rounds == 3
    assert a.ticket.target_fqns == ["body.0.weight", "body.2.weight"]
    assert Wider().ticket.target_fqns == ["body.0.weight", "body.2.weight", "extra.weight"]
    assert isinstance(Net.ticket, decorators._TicketProperty)
    with pytest.raises(AttributeError, match="cannot be replaced"):
        a.ticket = LotteryTicket(a, rate=0.1)


def test_decorated_imp_equals_an_explicit_ticket_bitwise():
    net, plain = Net(), Net()
    explicit = LotteryTicket(plain, rate=0.5, rounds=3)
    _imp(net.ticket, 3)
    _imp(explicit, 3)
    _assert_same(net.state_dict(), plain.state_dict())
    assert net.ticket.history == explicit.history
    assert sorted(net.state_dict()) == sorted(Net(seed=1).state_dict())  # plain keys: the decorator adds none
    fresh = Net.__new__(Net)
    nn.Module.__init__(fresh)
    fresh.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    fresh.load_state_dict(net.state_dict(), strict=True)
    zeros = [int((m.body[i].weight == 0).sum()) for m in (fresh, net) for i in (0, 2)]
    assert zeros[:2] == zeros[2:] and sum(zeros[:2]) == 72 - 9  # 72 weights, halved three times: 9 left


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"rate": 1.5, "rounds": 2}, ValueError, r"rate=1.5"),
        ({"rate": 0.2, "rounds": 2, "colour": "red"}, TypeError, r"unknown option\(s\) \['colour'\]"),
        ({"rate": 0.2, "optimizer": None}, TypeError, r"optimizer= belongs to one instance"),
        ({"rounds": 2}, TypeError, r"no goal given; pass rate="),
        ({"rate": 0.2, "scope": "planet"}, ValueError, r"scope='planet'"),
    ],
)
def test_class_decorator_checks_options_when_decorating(options, error, match):
    with pytest.raises(error, match=match):
        lottery_ticket(**options)
    with pytest.raises(error, match=match):
        lottery_ticket(nn.Sequential, **options)


def test_class_decorator_refuses_non_modules_and_an_existing_ticket_attribute():
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        lottery_ticket(rate=0.5)(dict)

    class HasTicket(nn.Module):
        def ticket(self):
            return "mine"

    with pytest.raises(TypeError, match="already has an attribute 'ticket'"):
        lottery_ticket(rate=0.5)(HasTicket)
    assert HasTicket().ticket() == "mine"
    redecorated = lottery_ticket(rate=0.25)(Wider)  # a subclass of a decorated class may take its own options
    assert redecorated is Wider and Wider().ticket.rate == 0.25 and Net().ticket.rate == 0.5


# ---------------------------------------------------------------- instances
def test_instance_decorator_returns_the_model_with_a_ticket():
    model = _mlp()
    before = _state(model)
    assert lottery_ticket(model, sparsity=0.75) is model
    assert model.ticket.model is model and model.ticket.sparsity_goal == 0.75
    _assert_same(before, model.state_dict())  # attaching does not touch the model
    with model.ticket:
        pass
    assert model.ticket.sparsity == pytest.approx(0.75, abs=0.01)


def test_instance_decorator_validates_before_touching_the_model():
    model = _mlp()
    before = _state(model)
    with pytest.raises(ValueError, match="sparsity=2"):
        lottery_ticket(model, sparsity=2)
    assert "ticket" not in model.__dict__
    _assert_same(before, model.state_dict())
    lottery_ticket(model, rate=0.5)
    with pytest.raises(TypeError, match="already has an attribute 'ticket'"):
        lottery_ticket(model, rate=0.5)
    with pytest.raises(TypeError, match="already has an attribute 'ticket'"):
        lottery_ticket(Net(), rate=0.5)
    with pytest.raises(TypeError, match="model='dict' is not an nn.Module"):
        lottery_ticket({}, rate=0.5)


def test_calling_a_ticket_on_a_module_points_to_lottery_ticket():
    ticket = LotteryTicket(_mlp(), rate=0.5)
    with pytest.raises(TypeError, match=r"torch_lottery.lottery_ticket\(model, ...\)"):
        ticket(nn.Linear(2, 2))


def test_torchvision_model_instance():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = lottery_ticket(torchvision.models.resnet18(num_classes=4), rate=0.2, rounds=1)
    with model.ticket:
        pass
    twin = copy.deepcopy(model)
    assert twin.ticket.model is twin and twin.ticket.round == 1
    x = torch.randn(2, 3, 32, 32)
    model.eval(), twin.eval()
    assert torch.equal(model(x), twin(x))


# ---------------------------------------------------------------- copies of tickets
COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "torch.save": lambda obj: torch.load(io.BytesIO(_saved(obj)), weights_only=False),
}


def _saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_copied_decorated_model_continues_imp_exactly_like_the_original(backend, how):
    model = lottery_ticket(_mlp(), rate=0.5, rounds=3, backend=backend)
    reference = lottery_ticket(_mlp(), rate=0.5, rounds=3, backend=backend)  # never copied
    for m in (model, reference):
        m.ticket.optimizer = torch.optim.Adam(m.parameters(), lr=1e-2)
        with m.ticket:
            _train(m, m.ticket.optimizer)
    twin = COPIES[how](model)
    assert twin.ticket.model is twin and twin.ticket is not model.ticket and twin.ticket.round == 1
    owned = {id(p) for g in twin.ticket.optimizer.param_groups for p in g["params"]}
    assert owned == {id(p) for p in twin.parameters()}
    for m in (model, twin, reference):
        for r in range(2):
            with m.ticket:
                _train(m, m.ticket.optimizer, seed=10 + r)
    _assert_same(model.state_dict(), twin.state_dict())
    _assert_same(model.state_dict(), reference.state_dict())  # copying changed nothing in the original
    assert model.ticket.history == twin.ticket.history == reference.ticket.history
    for t in twin.ticket._targets:
        assert torch.equal(twin.ticket.backend.mask(t), model.ticket.backend.mask(t))
        assert torch.equal(twin.ticket.backend.weight(t) == 0, ~twin.ticket.backend.mask(t))


@pytest.mark.parametrize("backend", ["prune", "baked"])
def test_a_copy_taken_mid_round_counts_its_own_steps_for_late_rewinding(backend):
    model = _mlp()
    ticket = LotteryTicket(model, rate=0.5, rounds=2, rewind=5, backend=backend)
    ticket.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ticket.begin_round_()
    _train(model, ticket.optimizer, steps=2)
    twin = copy.deepcopy(ticket)
    for t in (ticket, twin):
        _train(t.model, t.optimizer, steps=6, seed=2)
        assert t._point.captured and t._point.steps == 8
        t.end_round_()
    _assert_same(ticket.model.state_dict(), twin.model.state_dict())


def test_a_copied_disk_snapshot_gets_its_own_folder(tmp_path):
    model = _mlp()
    ticket = LotteryTicket(model, rate=0.5, rounds=3, snapshot_device="disk")
    with ticket:
        _train(model, torch.optim.SGD(model.parameters(), lr=0.1))
    twin = copy.deepcopy(ticket)
    folder = ticket.snapshot_dir
    ticket._point.store.close()  # the original's temporary folder goes
    assert not folder.exists()
    with twin:
        _train(twin.model, torch.optim.SGD(twin.model.parameters(), lr=0.1))
    assert twin.snapshot_dir is not None and twin.snapshot_dir != folder and twin.snapshot_dir.exists()
    assert twin.round == 2
    given = LotteryTicket(_mlp(), rate=0.5, snapshot_device="disk", snapshot_dir=tmp_path / "snap")
    with given:
        pass
    assert copy.deepcopy(given).snapshot_dir == tmp_path / "snap"  # a folder the user chose is the user's


def test_doctests():
    assert doctest.testmod(decorators).failed == 0
