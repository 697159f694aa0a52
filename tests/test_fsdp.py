"""Real torchrun processes with FSDP2 (fully_shard, 2 gloo CPU ranks): sharded tickets, their files and resumed state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torch_lottery import LotteryTicket, load_ticket
from torch_lottery.backends import effective_state_dict

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from fsdp_worker import build  # noqa: E402  (the worker's model, built here unsharded)

WORKER = Path(__file__).parent / "workers" / "fsdp_worker.py"


def torchrun(out: Path, mode: str) -> None:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER), str(out), mode],
        capture_output=True, text=True, timeout=300, env=env,
    )
    errors = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
    assert done.returncode == 0, "\n".join(errors[:20]) + "\n" + done.stderr[-3000:]


def checks(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}_{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_fsdp_tickets_files_and_resume(tmp_path: Path) -> None:
    torchrun(tmp_path, "rounds")
    ranks = checks(tmp_path, "checks")
    assert ranks[0] == ranks[1]  # every rank saw the same results (counts are global, not per shard)
    seen = ranks[0]
    flags = {k: v for k, v in seen.items() if isinstance(v, bool)}
    assert len(flags) == 17 and all(flags.values()), {k for k, v in flags.items() if not v}
    assert seen["refuse-prune-backend"].startswith("LotteryTicket(): backend='prune' cannot mask '0.weight', a DTensor")
    assert "pass backend='baked'" in seen["refuse-prune-backend"]
    assert "'2.weight' is a plain tensor but '0.weight' is an FSDP2 DTensor" in seen["refuse-plain-and-sharded"]
    assert "call ticket.save(path) on every rank" in seen["refuse-save-ticket"]
    # 87 target weights (54 + 27 + 6), rate 0.5 with Python's round(): global 87 -> 43 -> 21;
    # layer-wise (54, 27, 6) -> (27, 13, 3) -> (13, 7, 1) = 21
    assert seen["global-baked-cpu-remaining"] == 21 and seen["layer-baked-bits-disk-remaining"] == 21

    # the file streamed through rank 0 loads into one unsharded process: same masks, same rewind point
    plain = build(1)
    loaded = load_ticket(tmp_path / "sharded.safetensors", plain)
    late_masks, late_rewind = torch.load(tmp_path / "late_masks.pt"), torch.load(tmp_path / "late_rewind.pt")
    assert loaded.round == 1 and list(loaded.masks) == list(late_masks)
    for k, m in loaded.masks.items():
        assert torch.equal(m, late_masks[k]), k
    weights = effective_state_dict(plain)
    for k, v in late_rewind.items():
        expected = v * late_masks[k] if k in late_masks else v
        assert torch.equal(weights[k], expected), k

    # the reverse: a ticket found by one process, loaded into the sharded model by the resumed job
    model = build(2)
    ticket = LotteryTicket(model, rate=0.5, rounds=3, backend="baked")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ticket:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 6)).pow(2).mean().backward()
            opt.step()
    ticket.save(tmp_path / "plain.safetensors")
    torch.save({"masks": ticket.masks, "weights": effective_state_dict(model)}, tmp_path / "plain_expected.pt")

    torchrun(tmp_path, "resume")  # a new process group resumes the late-rewinding ticket from its saved state
    ranks = checks(tmp_path, "checks_resume")
    assert ranks[0] == ranks[1]
    seen = ranks[0]
    assert {k: v for k, v in seen.items() if isinstance(v, bool)} == {
        "resume-masks": True, "resume-rewind": True, "resume-masks-equal": True, "plain-masks": True, "plain-weights": True,
    }
    assert seen["resume-round"] == 1 and seen["plain-round"] == 1
    assert seen["resume-sparsity"] == pytest.approx(1 - 21 / 87)


@pytest.mark.slow
def test_docs_torchrun_example_runs_on_two_ranks(tmp_path: Path) -> None:
    from test_docs import python_blocks  # the same block extraction test_docs uses

    doc = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
    scripts = [code for _, code, skipped in python_blocks(doc) if skipped and code.startswith("# fsdp_ticket.py")]
    assert len(scripts) == 1
    (tmp_path / "fsdp_ticket.py").write_text(scripts[0])
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "fsdp_ticket.py"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.splitlines() == ["round 1: sparsity 0.55", "round 2: sparsity 0.80", "unsharded: round 2, sparsity 0.80"]
