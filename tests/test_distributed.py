"""Real torchrun processes: every rank ends an IMP round with rank 0's masks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torch_lottery.backends import BACKENDS, BakedBackend, make_backend


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_masks_are_identical_on_every_rank_under_ddp(tmp_path: Path, backend: str) -> None:
    worker = Path(__file__).parent / "workers" / "ddp_worker.py"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker), str(tmp_path), backend],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m0 = torch.load(tmp_path / "masks_0.pt")
    m1 = torch.load(tmp_path / "masks_1.pt")
    assert list(m0) == ["0.weight", "2.weight"]
    for k in m0:
        assert torch.equal(m0[k], m1[k])
    assert sum(int(m.sum()) for m in m0.values()) == 640 - 320 - 160
    # after the rewind and 3 DDP steps with averaged gradients, the ranks hold the same weights
    w0, w1 = torch.load(tmp_path / "weights_0.pt"), torch.load(tmp_path / "weights_1.pt")
    raw0 = torch.load(tmp_path / "raw_0.pt")
    for k in m0:
        assert torch.equal(w0[k], w1[k]), k
        assert bool((w0[k][~m0[k]] == 0).all())
        if isinstance(make_backend(backend, nn.Linear(1, 1)), BakedBackend):  # the Parameter itself holds the zeros
            assert bool((raw0[k][~m0[k]] == 0).all())
            assert int((raw0[k][m0[k]] == 0).sum()) == 0
