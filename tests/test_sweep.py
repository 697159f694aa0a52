"""Integration sweep: LotteryTicket end to end on real models, through torch.nn.utils.prune.

Each case builds a real model with a fixed seed, runs two IMP rounds with a few SGD steps
(momentum + weight decay) per round, and checks the contract: the schedule's exact counts,
prune's reparametrization, bitwise rewinding, Parameter identity, monotone masks, and that
pruned weights stay exactly zero in what the forward pass really uses (train and eval mode,
MultiheadAttention's fast path included). The last tests compare global and layer-wise
selection with torch.nn.utils.prune's own L1 pruning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torch.nn.utils import prune

from torch_lottery import LotteryTicket

pytestmark = pytest.mark.slow

STEPS = 2  # optimizer steps per round
ROUNDS = 2


# ----------------------------------------------------------------------------- the models
class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TiedLM(nn.Module):
    """Embedding and output decoder share one Parameter (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.proj = nn.Linear(16, 16)
        self.decoder = nn.Linear(16, 20)
        self.decoder.weight = self.embed.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.decoder(torch.tanh(self.proj(self.embed(idx))))


class RawKernel(nn.Module):
    """A custom layer holding a raw nn.Parameter that is not called ``weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(16, 12) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.kernel.t()


class RawNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = RawKernel()
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x)))


class AttentionNet(nn.Module):
    """nn.MultiheadAttention used directly (batch_first, so eval mode takes its fast path)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(1))


class TransformerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Transformer(
            d_model=32, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
            dim_feedforward=64, batch_first=True,
        )

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.transformer(src, tgt)


def small_vgg11_bn() -> nn.Module:
    # The real VGG11-BN feature extractor; the 25088x4096 classifier (103M weights) is replaced by
    # a small head so that sorting and snapshotting stay fast enough for CI on two cores.
    model = torchvision.models.vgg11_bn(num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 10))
    return model


def conv_transpose_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 1),
    )


def conv_linear_weights(model: nn.Module) -> list[str]:
    """FQNs of every Conv2d/Linear weight: the paper's default targets for CNNs."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def images(batch: int = 2, size: int = 32) -> tuple[Tensor, ...]:
    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)),)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[Tensor, ...]]
    ticket: dict[str, Any]
    expected_targets: Callable[[nn.Module], list[str]]
    aliases: dict[str, list[str]] = field(default_factory=dict)  # target fqn -> other FQNs of it


VIT_TARGETS = ["conv_proj.weight"] + [
    f"encoder.layers.encoder_layer_{i}.{name}"
    for i in range(2)
    for name in ("self_attention.in_proj_weight", "self_attention.out_proj.weight", "mlp.0.weight", "mlp.3.weight")
] + ["heads.head.weight"]

TRANSFORMER_TARGETS = [
    f"transformer.encoder.layers.0.{n}"
    for n in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")
] + [
    f"transformer.decoder.layers.0.{n}"
    for n in (
        "self_attn.in_proj_weight", "self_attn.out_proj.weight",
        "multihead_attn.in_proj_weight", "multihead_attn.out_proj.weight",
        "linear1.weight", "linear2.weight",
    )
]

CASES = [
    Case("resnet18", lambda: torchvision.models.resnet18(num_classes=10), images,
         dict(sparsity=0.5, rounds=ROUNDS), conv_linear_weights),
    Case("vgg11_bn", small_vgg11_bn, images, dict(rate=0.2, rounds=ROUNDS), conv_linear_weights),
    Case("mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(num_classes=10), images,
         dict(sparsity=0.5, rounds=ROUNDS, scope="layer"), conv_linear_weights),
    Case("vit",
         lambda: torchvision.models.VisionTransformer(
             image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10),
         images, dict(rate=0.2, rounds=ROUNDS), lambda m: VIT_TARGETS),
    Case("transformer", TransformerNet,
         lambda: (torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1)),
                  torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(2))),
         dict(sparsity=0.5, rounds=ROUNDS), lambda m: TRANSFORMER_TARGETS),
    Case("lstm", LSTMNet, lambda: (torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1)),),
         dict(rate=0.2, rounds=ROUNDS, scope="layer", targets=["lstm.weight_*", "head.weight"]),
         lambda m: ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"]),
    Case("tied", TiedLM, lambda: (torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(1)),),
         # the glob names the decoder; the shared Parameter is one target under its first name
         dict(sparsity=0.5, rounds=ROUNDS, targets=["decoder.weight", "proj.weight"]),
         lambda m: ["embed.weight", "proj.weight"], aliases={"embed.weight": ["decoder.weight"]}),
    Case("conv_transpose", conv_transpose_net, lambda: images(size=16), dict(rate=0.2, rounds=ROUNDS),
         lambda m: ["0.weight", "3.weight", "5.weight"]),
    Case("raw_parameter", RawNet, lambda: (torch.randn(2, 12, generator=torch.Generator().manual_seed(1)),),
         dict(sparsity=0.5, rounds=ROUNDS, scope="layer", targets=["body.kernel", "head.weight"]),
         lambda m: ["body.kernel", "head.weight"]),
    Case("multihead_attention", AttentionNet,
         lambda: (torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)),),
         dict(rate=0.2, rounds=ROUNDS), lambda m: ["attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]),
]


# ----------------------------------------------------------------------------- helpers
def build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return case.build()


def loss_of(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    return (model(*inputs).float() - 1.0).pow(2).mean()


def sgd_steps(model: nn.Module, opt: torch.optim.Optimizer, inputs: tuple[Tensor, ...], n: int) -> None:
    model.train()
    for _ in range(n):
        opt.zero_grad()
        loss_of(model, inputs).backward()
        opt.step()


def canonical_state(model: nn.Module) -> dict[str, Tensor]:
    """state_dict with prune's ``x_orig`` renamed ``x`` and ``x_mask`` dropped (raw values, no mask)."""
    sd = model.state_dict()
    out = {}
    for key, value in sd.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in sd:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in sd:
            key = key[: -len("_orig")]
        out[key] = value.detach().clone()
    return out


def baked_state(model: nn.Module) -> dict[str, Tensor]:
    """state_dict of an unpruned copy: ``x = x_orig * x_mask`` computed from the raw tensors."""
    sd = model.state_dict()
    out = {}
    for key, value in sd.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in sd:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in sd:
            stem = key[: -len("_orig")]
            out[stem] = (value * sd[stem + "_mask"]).detach().clone()
        else:
            out[key] = value.detach().clone()
    return out


def _split_all(case: Case, fqn: str) -> list[tuple[str, str]]:
    return [tuple(f.rsplit(".", 1)) if "." in f else ("", f) for f in [fqn] + case.aliases.get(fqn, [])]


def owner(model: nn.Module, module_name: str) -> nn.Module:
    return model.get_submodule(module_name) if module_name else model


def expected_pruned(numels: list[int], *, scope: str, rounds_done: int, sparsity: float | None = None,
                    rate: float | None = None, rounds: int) -> list[int]:
    """Pruned counts per group after ``rounds_done`` rounds, from the compounding schedule:
    rate r prunes round(r * survivors) per round; sparsity s over n rounds reaches
    round(total * (1 - (1 - s) ** (k / n))) pruned after round k (torch's round())."""
    groups = [numels] if scope == "global" else [[n] for n in numels]
    out = []
    for g in groups:
        total, pruned = sum(g), 0
        for k in range(1, rounds_done + 1):
            if rate is not None:
                pruned += round(rate * (total - pruned))
            else:
                pruned = round(total * (1.0 - (1.0 - sparsity) ** (k / rounds)))
        out.append(pruned)
    return out


@dataclass
class RoundRecord:
    masks: dict[str, Tensor]
    sparsity: float
    round: int
    is_pruned: bool
    state: dict[str, Tensor]  # canonical raw state right after the rewind
    opt_state_len_before_exit: int
    opt_state_len_after: int
    opt_param_ids: list[int]
    param_is_same: dict[str, bool]
    output_finite: bool


@dataclass
class Run:
    case: Case
    model: nn.Module
    ticket: LotteryTicket
    opt: torch.optim.Optimizer
    inputs: tuple[Tensor, ...]
    theta0: dict[str, Tensor]
    params: dict[str, nn.Parameter]
    opt_param_ids: list[int]
    records: list[RoundRecord]


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def run(request: pytest.FixtureRequest) -> Run:
    """Two IMP rounds on a fresh model; what each round left behind is recorded (copied) so the
    tests below read it in any order. Only test_pruned_weights_stay_zero_* keeps mutating."""
    case: Case = request.param
    model = build(case)
    inputs = case.inputs()
    theta0 = canonical_state(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    opt_param_ids = [id(p) for g in opt.param_groups for p in g["params"]]
    ticket = LotteryTicket(model, optimizer=opt, restore="all", **case.ticket)
    params = {t.fqn: owner(model, t.module_name)._parameters[t.name] for t in ticket.targets}
    records = []
    for _ in range(ROUNDS):
        with ticket:
            sgd_steps(model, opt, inputs, STEPS)
            opt_len = len(opt.state)
        state = canonical_state(model)
        model.eval()  # a train-mode forward would move BatchNorm's running statistics
        with torch.no_grad():
            out = model(*inputs)
        records.append(RoundRecord(
            masks={k: v.clone() for k, v in ticket.masks.items()},
            sparsity=ticket.sparsity,
            round=ticket.round,
            is_pruned=prune.is_pruned(model),
            state=state,
            opt_state_len_before_exit=opt_len,
            opt_state_len_after=len(opt.state),
            opt_param_ids=[id(p) for g in opt.param_groups for p in g["params"]],
            param_is_same={t.fqn: ticket.backend.parameter(t) is params[t.fqn] for t in ticket.targets},
            output_finite=bool(torch.isfinite(out).all()),
        ))
    return Run(case, model, ticket, opt, inputs, theta0, params, opt_param_ids, records)


# ----------------------------------------------------------------------------- the sweep
def test_targets_are_the_expected_tensors(run: Run) -> None:
    assert run.ticket.target_fqns == run.case.expected_targets(run.model)


def test_forward_runs_after_each_round(run: Run) -> None:
    assert [r.output_finite for r in run.records] == [True] * ROUNDS
    assert [r.round for r in run.records] == list(range(1, ROUNDS + 1))


def test_sparsity_follows_the_compounding_schedule(run: Run) -> None:
    kw = run.case.ticket
    numels = [t.numel for t in run.ticket.targets]
    total = sum(numels)
    for k, record in enumerate(run.records, start=1):
        want = expected_pruned(numels, scope=kw.get("scope", "global"), rounds_done=k, sparsity=kw.get("sparsity"),
                               rate=kw.get("rate"), rounds=kw["rounds"])
        pruned = [int((~m).sum()) for m in record.masks.values()]
        got = [sum(pruned)] if kw.get("scope", "global") == "global" else pruned
        assert got == want, f"round {k}"
        assert record.sparsity == pytest.approx(sum(want) / total, rel=0, abs=1e-12)
    if "sparsity" in kw:  # the last round lands on the requested sparsity up to rounding
        final = run.records[-1].sparsity
        assert abs(final - kw["sparsity"]) <= len(numels) * 0.5 / total + 1e-12


def test_lstm_layerwise_counts_by_hand() -> None:
    # rate 0.2, two rounds, per tensor: weight_ih 512 -> 102 + round(0.2*410)=82; weight_hh 1024 ->
    # round(204.8)=205 + round(163.8)=164; head 64 -> 13 + round(10.2)=10. 576 of 1600 pruned.
    assert expected_pruned([512, 1024, 64], scope="layer", rounds_done=2, rate=0.2, rounds=2) == [184, 369, 23]
    model = build(CASES[[c.id for c in CASES].index("lstm")])
    ticket = LotteryTicket(model, rate=0.2, rounds=2, scope="layer", targets=["lstm.weight_*", "head.weight"])
    x = torch.randn(2, 6, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        with ticket:
            sgd_steps(model, opt, (x,), STEPS)
    assert [int((~m).sum()) for m in ticket.masks.values()] == [184, 369, 23]
    assert ticket.sparsity == pytest.approx(576 / 1600, abs=1e-12)


def test_model_is_pruned_through_torch_prune(run: Run) -> None:
    assert all(r.is_pruned for r in run.records)
    for fqn in run.ticket.target_fqns:
        for module_name, name in _split_all(run.case, fqn):
            module = owner(run.model, module_name)
            assert isinstance(module._parameters.get(name + "_orig"), nn.Parameter), fqn
            assert name + "_mask" in module._buffers, fqn
            assert name not in module._parameters, fqn


def test_masks_only_shrink_across_rounds(run: Run) -> None:
    first, second = run.records[0].masks, run.records[1].masks
    for fqn in first:
        assert not (second[fqn] & ~first[fqn]).any(), f"{fqn}: a pruned weight came back"
    assert sum(int(m.sum()) for m in second.values()) < sum(int(m.sum()) for m in first.values())


def test_rewind_restores_theta0_bitwise(run: Run) -> None:
    targets = set(run.ticket.target_fqns)
    for k, record in enumerate(run.records, start=1):
        assert set(record.state) == set(run.theta0)
        for key, before in run.theta0.items():
            after = record.state[key]
            fqn = next((f for f in targets if key == f or key in run.case.aliases.get(f, [])), None)
            if fqn is not None:  # survivors of weight_orig; pruned entries are masked anyway
                mask = record.masks[fqn]
                assert torch.equal(after[mask], before[mask]), f"round {k}: {key}"
            else:  # biases, norms, BatchNorm running stats and counters: restore="all"
                assert torch.equal(after, before), f"round {k}: {key}"
    rw = run.ticket.rewind_weights
    for key, value in rw.items():
        assert torch.equal(value, run.theta0[key]), key
    aliases = {a for names in run.case.aliases.values() for a in names}
    assert set(rw) | aliases == set(run.theta0)


def test_rewind_keeps_parameter_identity_and_resets_optimizer_state(run: Run) -> None:
    for record in run.records:
        assert record.opt_param_ids == run.opt_param_ids
        assert all(record.param_is_same.values()), record.param_is_same
        assert record.opt_state_len_before_exit > 0  # momentum buffers existed in the round
        assert record.opt_state_len_after == 0  # restored to theta_0's (empty) optimizer state


def _effective_places(run: Run):
    for t in run.ticket.targets:
        mask = run.ticket.masks[t.fqn]
        for module_name, name in _split_all(run.case, t.fqn):
            yield t, mask, owner(run.model, module_name), name


def _assert_pruned_entries_zero(run: Run) -> None:
    for t, mask, module, name in _effective_places(run):
        weight = getattr(module, name)
        assert weight.shape == mask.shape
        assert torch.count_nonzero(weight.detach()[~mask]) == 0, f"{t.fqn} at {name}"


def _assert_forward_matches_baked_copy(run: Run, *, exact: bool) -> None:
    """The pruned model computes what an unpruned copy holding orig * mask computes, in train
    mode (same dropout draws) and in eval mode under no_grad (MultiheadAttention's fast path)."""
    fresh = build(run.case)
    fresh.load_state_dict(baked_state(run.model))
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-6)
    for mode in ("train", "eval"):
        run.model.train(mode == "train")
        fresh.train(mode == "train")
        with torch.set_grad_enabled(mode == "train"):
            torch.manual_seed(3)
            got = run.model(*run.inputs)
            torch.manual_seed(3)
            want = fresh(*run.inputs)
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{mode} mode: {m}")
    run.model.train()


def test_pruned_weights_stay_zero_under_momentum_and_weight_decay(run: Run) -> None:
    model, opt, ticket = run.model, run.opt, run.ticket
    masks = ticket.masks
    before = {t.fqn: ticket.backend.parameter(t).detach().clone() for t in ticket.targets}
    sgd_steps(model, opt, run.inputs, STEPS)
    _assert_pruned_entries_zero(run)  # as left by the last forward, before the optimizer step
    hidden = 0
    for t in ticket.targets:
        raw = ticket.backend.parameter(t).detach()
        # the raw (orig) values under the mask are theta_0's (not zero, except for zero-initialized
        # layers such as ViT's head): only the mask keeps them out of the model
        hidden += int(torch.count_nonzero(raw[~masks[t.fqn]]))
        if masks[t.fqn].any():  # global pruning may empty a layer (ViT's zero-initialized head)
            assert not torch.equal(raw[masks[t.fqn]], before[t.fqn][masks[t.fqn]]), f"{t.fqn}: optimizer stalled"
    assert hidden > 0
    _assert_forward_matches_baked_copy(run, exact=run.case.id not in ("transformer",))
    _assert_pruned_entries_zero(run)
    assert [id(p) for g in opt.param_groups for p in g["params"]] == run.opt_param_ids

    # prune.remove bakes the zeros in; the Parameter objects survive and the optimizer still works
    baked = baked_state(model)
    for t, _mask, module, name in list(_effective_places(run)):
        prune.remove(module, name)
    assert not prune.is_pruned(model)
    for t, mask, module, name in _effective_places(run):
        assert module._parameters[name] is run.params[t.fqn]
        assert torch.count_nonzero(module._parameters[name].detach()[~mask]) == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, baked[key]), key
    sgd_steps(model, opt, run.inputs, 1)


# ----------------------------------------------------------------------------- special cases
@pytest.mark.parametrize("case_id, fast_op, watched", [
    ("transformer", "aten::_native_multi_head_attention",
     ["transformer.encoder.layers.0.self_attn.out_proj", "transformer.decoder.layers.0.multihead_attn.out_proj"]),
    ("multihead_attention", "aten::_native_multi_head_attention", ["attn.out_proj"]),
])
def test_eval_fast_path_reads_refreshed_weights(case_id: str, fast_op: str, watched: list[str]) -> None:
    # MultiheadAttention reads out_proj.weight (and in eval its fast path reads in_proj_weight)
    # without calling out_proj, so prune's own hook never refreshes them: the backend's reader
    # hook must. After an optimizer step the attribute is stale; an eval forward must refresh it.
    case = CASES[[c.id for c in CASES].index(case_id)]
    model = build(case)
    inputs = case.inputs()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    ticket = LotteryTicket(model, optimizer=opt, **case.ticket)
    for _ in range(ROUNDS):
        with ticket:
            sgd_steps(model, opt, inputs, STEPS)
    sgd_steps(model, opt, inputs, STEPS)
    mods = [model.get_submodule(n) for n in watched]
    for m in mods:  # stale: the last optimizer step came after the last forward
        assert not torch.equal(m.weight, m.weight_orig * m.weight_mask)
    model.eval()
    with torch.no_grad(), torch.profiler.profile() as prof:
        got = model(*inputs)
    assert fast_op in {e.name for e in prof.events()}, "the fast path did not run"
    for m in mods:
        assert torch.equal(m.weight, m.weight_orig * m.weight_mask)
    fresh = build(case).eval()
    fresh.load_state_dict(baked_state(model))
    with torch.no_grad():
        want = fresh(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_tied_weights_are_one_target_seen_masked_by_both_modules() -> None:
    case = CASES[[c.id for c in CASES].index("tied")]
    model = build(case)
    shared = model.embed.weight
    ticket = LotteryTicket(model, **case.ticket)
    assert [t.fqn for t in ticket.targets] == ["embed.weight", "proj.weight"]
    assert ticket.targets[0].aliases == (("decoder", "weight"),)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    (idx,) = case.inputs()
    for _ in range(ROUNDS):
        with ticket:
            sgd_steps(model, opt, (idx,), STEPS)
    sgd_steps(model, opt, (idx,), STEPS)
    model(idx)  # both modules' hooks recompute their view
    assert model.embed.weight_orig is shared and model.decoder.weight_orig is shared
    assert model.embed.weight_mask is model.decoder.weight_mask
    assert torch.equal(model.embed.weight, model.decoder.weight)
    mask = ticket.masks["embed.weight"]
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.count_nonzero(model.decoder.weight.detach()[~mask]) == 0
    for module in (model.embed, model.decoder):
        prune.remove(module, "weight")
    assert model.embed.weight is model.decoder.weight is shared


# ----------------------------------------------------------------------------- equivalence
def _with_distinct_weights(build_model: Callable[[], nn.Module]) -> nn.Module:
    """The model with conv/fc weights set to distinct integers with random signs: no ties in |w|,
    so every correct selection agrees (float32 holds integers exactly up to 2**24)."""
    torch.manual_seed(0)
    model = build_model()
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    assert total < 2**24
    g = torch.Generator().manual_seed(0)
    values = (torch.randperm(total, generator=g) + 1).float()
    values *= torch.randint(0, 2, (total,), generator=g).float() * 2 - 1
    with torch.no_grad():
        start = 0
        for w in weights:
            w.copy_(values[start : start + w.numel()].view_as(w))
            start += w.numel()
    return model


def test_global_masks_equal_torch_global_unstructured() -> None:
    amount = 0.2
    resnet18 = lambda: torchvision.models.resnet18(num_classes=10)  # noqa: E731
    reference = _with_distinct_weights(resnet18)
    params = [(m, "weight") for m in reference.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(
        params, pruning_method=prune.L1Unstructured, amount=amount,
        importance_scores={(m, n): getattr(m, n).detach().abs() for m, n in params},
    )
    want = {f"{n}.weight": m.weight_mask.bool() for n, m in reference.named_modules() if hasattr(m, "weight_mask")}

    model = _with_distinct_weights(resnet18)
    ticket = LotteryTicket(model, rate=amount, rounds=1)
    ticket.prune_()
    got = ticket.masks
    assert list(got) == list(want)
    for fqn in want:
        assert torch.equal(got[fqn], want[fqn]), fqn


def test_layer_masks_equal_torch_l1_unstructured() -> None:
    mobilenet = lambda: torchvision.models.mobilenet_v3_small(num_classes=10)  # noqa: E731
    reference = _with_distinct_weights(mobilenet)
    for m in reference.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=0.3)
    want = {f"{n}.weight": m.weight_mask.bool() for n, m in reference.named_modules() if hasattr(m, "weight_mask")}
    model = _with_distinct_weights(mobilenet)
    ticket = LotteryTicket(model, rate=0.3, rounds=1, scope="layer")
    ticket.prune_()
    for fqn in want:
        assert torch.equal(ticket.masks[fqn], want[fqn]), fqn
