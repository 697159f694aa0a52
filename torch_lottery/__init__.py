"""torch_lottery: find lottery tickets in any PyTorch model, inside any training loop."""

__version__ = "0.1.0"

__all__ = ["__version__"]
