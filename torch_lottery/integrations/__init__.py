"""Glue for the training frameworks users already run: one module per framework, each an optional leaf.

``torch_lottery.integrations.lightning`` needs the ``lightning`` extra and
``torch_lottery.integrations.transformers`` the ``transformers`` extra. Importing this package
imports neither framework; import the submodule you use.
"""

__all__: list[str] = []
