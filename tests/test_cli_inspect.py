"""Tests for `torch-lottery inspect`: a ticket file's metadata and per-tensor sparsity, printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from torch_lottery import LotteryTicket
from torch_lottery.cli import main


@pytest.fixture
def ticket_path(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    ticket = LotteryTicket(model, rate=0.5, rounds=3, scope="layer", seed=4)
    for _ in range(2):
        with ticket:
            pass
    path = tmp_path / "ticket.safetensors"
    ticket.save(path)
    return path


def test_inspect_prints_metadata_and_a_per_tensor_sparsity_table(ticket_path, capsys):
    assert main(["inspect", str(ticket_path)]) == 0
    out = capsys.readouterr().out
    assert "torch_lottery.ticket v1, compact encoding" in out
    assert "round:         2" in out
    assert "scope:         layer" in out and "rewind:        init" in out and "seed:          4" in out
    # layer-wise rate 0.5 twice: 200 -> 100 -> 50 and 100 -> 50 -> 25 of 300 weights remain
    assert "sparsity:      75.00% (75 of 300 target weights remain)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("0.", "2.", "total"))}
    assert rows["0.weight"] == ["20x10", "50", "75.00%"]
    assert rows["2.weight"] == ["5x20", "25", "75.00%"]
    assert rows["total"] == ["300", "75", "75.00%"]


def test_inspect_json_gives_the_decoded_metadata(ticket_path, capsys):
    assert main(["inspect", "--json", str(ticket_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["round"] == 2 and info["config"]["rate"] == 0.5
    assert [row["remaining"] for row in info["summary"]] == [50, 25]
    assert info["tensor_bytes"]["mask"] == 25 + 13  # ceil(200 / 8) + ceil(100 / 8)


def test_inspect_verify_reports_a_corrupted_file_on_stderr(ticket_path, capsys):
    assert main(["inspect", "--verify", str(ticket_path)]) == 0
    assert "verified:" in capsys.readouterr().out
    data = bytearray(ticket_path.read_bytes())
    data[-1] ^= 0xFF
    ticket_path.write_bytes(bytes(data))
    assert main(["inspect", str(ticket_path)]) == 0  # the header alone is intact
    capsys.readouterr()
    assert main(["inspect", "--verify", str(ticket_path)]) == 2
    err = capsys.readouterr().err
    assert "torch-lottery inspect: error: read_ticket_tensors(): path=" in err and "fails its checksum" in err


def test_inspect_rejects_files_that_are_not_tickets(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert main(["inspect", str(path)]) == 2
    assert "is too short to be a safetensors file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_inspect_runs_as_a_module_command(ticket_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch_lottery.cli", "inspect", str(ticket_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "0.weight" in proc.stdout and "75.00%" in proc.stdout


def _bad_file(kind: str, ticket_path):
    if kind == "dev-zero":
        ticket_path.unlink()
        os.symlink("/dev/zero", ticket_path)
    elif kind == "fifo":
        ticket_path.unlink()
        os.mkfifo(ticket_path)
    elif kind == "huge-sparse":
        os.truncate(ticket_path, ticket_path.stat().st_size + 64 * 2**30)
    elif kind == "infinite-offsets":
        data = ticket_path.read_bytes()
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        header[next(k for k in header if k != "__metadata__")]["data_offsets"][1] = "END"
        raw = json.dumps(header).replace('"END"', "Infinity").encode()
        ticket_path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])
    return ticket_path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("dev-zero", "is a character device, not a regular file"),
        ("fifo", "is a FIFO, not a regular file"),
        ("huge-sparse", "bytes of tensor data but its header describes"),
        ("infinite-offsets", "non-finite number Infinity"),
    ],
)
@pytest.mark.parametrize("verify", [False, True])
def test_inspect_on_unreadable_files_prints_one_clear_error_and_exits_2(kind, message, verify, ticket_path, capsys):
    path = _bad_file(kind, ticket_path)
    argv = ["inspect", *(["--verify"] if verify else []), str(path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"torch-lottery inspect: error: read_ticket_info(): path={str(path)!r}")
    assert message in lines[0]
