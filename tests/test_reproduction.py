"""Tests for the torch_lottery.reproduction package: its public names, and optional dependencies kept as leaves."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_public_names_exist() -> None:
    import torch_lottery.reproduction as rp

    assert len(rp.__all__) == len(set(rp.__all__))
    for name in rp.__all__:
        assert hasattr(rp, name), name
    assert rp.run_experiment.__module__ == "torch_lottery.reproduction.experiments"


def test_import_torch_lottery_does_not_import_the_reproduction() -> None:
    code = "import sys, torch_lottery; print(sorted(m for m in sys.modules if m.startswith('torch_lottery.repro')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reproduction_modules_import_without_extras_and_name_the_extra_when_needed(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torchvision", "matplotlib", "tqdm"}:
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, Block())
        import torch_lottery.reproduction
        from torch_lottery.reproduction import config, data, experiments, imp, models, plots, report, runner
        import torch_lottery.cli
        from torch_lottery.reproduction.data import load_dataset
        from torch_lottery.reproduction.plots import plot_results
        for call in (lambda: load_dataset("fashion-mnist", root=sys.argv[1]), lambda: plot_results([], sys.argv[1])):
            try:
                call()
            except ModuleNotFoundError as exc:
                print(exc)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torchvision", "matplotlib", "tqdm"})
        print("loaded", loaded)
        """
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "load_dataset(): torchvision is required to read datasets; pip install torch_lottery[vision]" in out.stdout
    assert "plot_results(): matplotlib is required; pip install torch_lottery[plot]" in out.stdout
    assert "loaded []" in out.stdout
