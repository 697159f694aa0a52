"""Reliability of the round's surroundings: criteria that mutate, saving after remove_, inspect on hostile files, fuzzed inputs."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from conftest import lenet
from torch_lottery import LotteryTicket
from torch_lottery.cli import main
from torch_lottery.ticket_file import _CHECKSUM_KEY, _checksum
from torch_lottery.files import read_safetensors_header


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_criterion_that_edits_its_inputs_changes_neither_the_model_nor_theta_0():
    model = lenet(0)
    seen = []

    def vandal(fqn, weight, initial, generator):
        scores = weight.abs().clone()
        weight.zero_()
        if initial is not None:
            initial.fill_(7.0)
        seen.append(fqn)
        return scores

    ticket = LotteryTicket(model, rate=0.5, criterion=vandal, rewind="none")
    ticket.snapshot_()
    before, theta0 = _state(model), {k: v.clone() for k, v in ticket.rewind_weights.items()}
    ticket.compute_masks()
    assert seen == ticket.target_fqns
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    assert all(torch.equal(theta0[k], v) for k, v in ticket.rewind_weights.items())


def test_save_after_remove_is_refused_instead_of_writing_all_true_masks(tmp_path):
    ticket = LotteryTicket(lenet(0), rate=0.5)
    with ticket:
        pass
    ticket.remove_()
    with pytest.raises(RuntimeError, match=r"save_ticket\(\): ticket.remove_\(\) made the pruning permanent"):
        ticket.save(tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()


def _resign(path, edit):
    """Rewrite a ticket file with edited metadata and a valid checksum (what a forger would do)."""
    tensors = safetensors.torch.load_file(str(path))
    metadata = dict(read_safetensors_header(path).metadata)
    edit(metadata)
    metadata[_CHECKSUM_KEY] = _checksum(tensors, metadata)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    ticket = LotteryTicket(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)), rate=0.5)
    with ticket:
        pass
    path = tmp_path / "ticket.safetensors"
    ticket.save(path)
    return path


def test_verify_rejects_a_re_signed_summary_that_contradicts_the_masks(saved, capsys):
    assert main(["inspect", "--verify", str(saved)]) == 0

    def lie(meta):
        rows = json.loads(meta["summary"])
        rows[0]["remaining"] += 1
        rows[0]["sparsity"] = 1.0 - rows[0]["remaining"] / rows[0]["numel"]
        meta["summary"] = json.dumps(rows)

    _resign(saved, lie)
    assert main(["inspect", str(saved)]) == 0  # without --verify only the header is read
    capsys.readouterr()
    assert main(["inspect", "--verify", str(saved)]) == 2
    assert "contradicts the stored masks" in capsys.readouterr().err


def test_verify_rejects_a_re_signed_sparsity_that_contradicts_the_masks(saved, capsys):
    _resign(saved, lambda meta: meta.update(sparsity=json.dumps(0.01)))
    assert main(["inspect", "--verify", str(saved)]) == 2
    assert "sparsity 0.01 in the metadata contradicts the stored masks" in capsys.readouterr().err


def test_inspect_escapes_terminal_control_sequences_from_the_file(saved, capsys):
    def inject(meta):
        config = json.loads(meta["config"])
        config["criterion"] = "magnitude\x1b[2J\x1b]0;owned\x07\x9b"
        meta["config"] = json.dumps(config)
        meta["model_class"] = "Evil\x1b[31m"

    _resign(saved, inject)
    assert main(["inspect", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "Evil\\x1b[31m" in out


# ---------------------------------------------------------------------------------------- bounded fuzzing
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_ARGS = ("sparsity", "rate", "rounds", "scope", "rewind", "layer_rates", "layer_sparsity", "criterion",
         "restore", "seed", "snapshot_device", "backend", "targets", "exclude")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_ARGS), _values, min_size=1, max_size=4))
def test_constructor_fuzz_raises_only_clear_errors_and_never_touches_the_model(kwargs):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = _state(model)
    try:
        ticket = LotteryTicket(model, **kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        assert message and ("LotteryTicket" in message or "find_targets" in message or "criterion" in message), message
    else:
        assert isinstance(ticket.settings.scope, str)
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())


_STATE_KEYS = ("config", "round", "history", "masks", "rewind_weights", "rewind_captured", "steps",
               "optimizer_state", "scheduler_state")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_STATE_KEYS), _values)
def test_load_state_dict_fuzz_leaves_ticket_and_model_unchanged_on_error(key, value):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    ticket = LotteryTicket(model, rate=0.5)
    with ticket:
        pass
    state = ticket.state_dict()
    state[key] = value
    before, masks, history = _state(model), ticket.masks, ticket.history
    try:
        ticket.load_state_dict(state, rewind=True)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        assert str(exc)
        assert all(torch.equal(before[k], v) for k, v in _state(model).items())
        assert all(torch.equal(masks[k], v) for k, v in ticket.masks.items())
        assert ticket.history == history and ticket.round == 1


@pytest.mark.parametrize("backend", ["baked", "baked-bits"])
def test_a_failed_load_ticket_leaves_no_gradient_hooks_behind(tmp_path, monkeypatch, backend):
    from torch_lottery import load_ticket

    torch.manual_seed(0)
    source = LotteryTicket(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)), rate=0.5, backend=backend)
    with source:
        pass
    source.save(tmp_path / "t.safetensors")
    original = LotteryTicket.load_state_dict

    def load_then_fail(self, state, **kwargs):
        original(self, state, **kwargs)  # the backend has installed its masks and gradient hooks
        raise RuntimeError("disk went away")

    monkeypatch.setattr(LotteryTicket, "load_state_dict", load_then_fail)
    fresh = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    before = _state(fresh)
    with pytest.raises(RuntimeError, match="disk went away"):
        load_ticket(tmp_path / "t.safetensors", fresh)
    assert all(not (p._post_accumulate_grad_hooks or {}) for p in fresh.parameters())
    assert all(torch.equal(before[k], v) for k, v in _state(fresh).items())
