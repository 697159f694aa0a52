"""The core imports and runs with only torch and safetensors: optional extras stay leaves."""

import subprocess
import sys
import textwrap


def test_core_imports_and_prunes_without_optional_dependencies():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torchvision", "matplotlib", "tqdm", "torch_pruning", "transformers", "lightning"}:
                    raise ImportError(f"blocked optional dependency {name}")
        sys.meta_path.insert(0, Block())
        import torch
        from torch import nn
        import torch_lottery
        from torch_lottery import LotteryTicket
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        with LotteryTicket(model, rate=0.5) as t:
            pass
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torchvision", "matplotlib", "tqdm"})
        assert not loaded, loaded
        print("sparsity", t.sparsity)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sparsity 0.5" in out.stdout


def test_public_api_is_explicit():
    import torch_lottery

    assert "LotteryTicket" in torch_lottery.__all__
    for name in torch_lottery.__all__:
        assert hasattr(torch_lottery, name), name
