"""Discovery of the tensors a ticket prunes, keyed by canonical state_dict names (FQNs)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

__all__ = [
    "Target",
    "TargetSelector",
    "canonical_name",
    "check_masks",
    "find_targets",
    "get_place",
    "is_default_target",
    "named_state_tensors",
    "unwrap_model",
]

TargetSelector = Union[Sequence[str], Callable[[str, nn.Module, Tensor], bool], None]

_NEVER_DEFAULT = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RNNBase,
)
_MHA_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(frozen=True)
class Target:
    """One prunable tensor: where it lives and every other place that shares it.

    Attributes:
        fqn: canonical state_dict name, e.g. ``"features.0.weight"`` (never ``*_orig``).
        module_name: FQN of the owning module (``""`` for the root).
        name: attribute name on that module, e.g. ``"weight"``.
        shape: the tensor's shape.
        aliases: other ``(module_name, name)`` pairs holding the same Parameter (tied weights).
    """

    fqn: str
    module_name: str
    name: str
    shape: tuple[int, ...]
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def places(self) -> tuple[tuple[str, str], ...]:
        """All ``(module_name, name)`` places of this tensor, the owner first."""
        return ((self.module_name, self.name),) + self.aliases


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's module inside DataParallel/DistributedDataParallel and ``torch.compile`` wrappers.

    ``torch.compile(model)`` returns an ``OptimizedModule`` whose ``_orig_mod`` is the user's module
    (the same Parameters), so FQNs, ticket files and exports are those of the plain model.
    """
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod
        else:
            return model


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile``'s wrapper, without importing Dynamo when it was never loaded."""
    import sys

    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(eval_frame, "OptimizedModule", None)
    return optimized is not None and isinstance(model, optimized)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _pruned_names(module: nn.Module) -> set[str]:
    """Names of the tensors on ``module`` that torch.nn.utils.prune has reparametrized."""
    return {
        hook._tensor_name
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
    }


def canonical_name(module: nn.Module, local: str) -> str | None:
    """Map a local parameter/buffer name to its canonical name, or ``None`` for prune's masks.

    ``weight_orig`` -> ``weight`` and ``weight_mask`` -> ``None`` when ``module`` is pruned at
    ``weight`` by torch.nn.utils.prune; any other name is returned unchanged.
    """
    pruned = _pruned_names(module)
    if local.endswith("_orig") and local[: -len("_orig")] in pruned:
        return local[: -len("_orig")]
    if local.endswith("_mask") and local[: -len("_mask")] in pruned:
        return None
    return local


def _parameter_places(model: nn.Module) -> Iterator[tuple[str, str, nn.Module, nn.Parameter]]:
    """Yield ``(module_name, canonical local name, module, parameter)`` for every parameter place."""
    for module_name, module in model.named_modules(remove_duplicate=True):
        for local, param in module._parameters.items():
            if param is None:
                continue
            name = canonical_name(module, local)
            if name is not None:
                yield module_name, name, module, param


def named_state_tensors(
    model: nn.Module, *, buffers: bool = True
) -> dict[str, Tensor]:
    """Every parameter (and, optionally, buffer) of ``model`` by canonical FQN, live (not copies).

    Shared tensors appear once, under their first name; prune's ``*_mask`` buffers are skipped
    and ``*_orig`` parameters appear under their plain name. Buffers whose owner registered them
    as non-persistent are skipped, matching ``state_dict()``.
    """
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for module_name, name, _module, param in _parameter_places(model):
        if id(param) not in seen:
            seen.add(id(param))
            out[_join(module_name, name)] = param
    if buffers:
        for module_name, module in model.named_modules(remove_duplicate=True):
            for local, buf in module._buffers.items():
                if buf is None or local in module._non_persistent_buffers_set:
                    continue
                name = canonical_name(module, local)
                if name is None or id(buf) in seen:
                    continue
                seen.add(id(buf))
                out[_join(module_name, name)] = buf
    return out


def is_default_target(module: nn.Module, name: str, param: Tensor) -> bool:
    """The paper's default: weights of Linear, ConvNd and ConvTranspose layers, MultiheadAttention
    projections, and other ``weight``s of two or more dimensions on leaf layers (e.g. transformers'
    ``Conv1D``). Biases, norms, embeddings and RNN weights are left alone."""
    if isinstance(module, nn.MultiheadAttention):
        return name in _MHA_PROJECTIONS
    if isinstance(module, _NEVER_DEFAULT):
        return False
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return name == "weight"
    is_leaf = next(iter(module.children()), None) is None
    return is_leaf and name == "weight" and param.dim() >= 2


def _matches(fqn: str, patterns: Sequence[str]) -> list[str]:
    return [p for p in patterns if fnmatch.fnmatchcase(fqn, p)]


def find_targets(
    model: nn.Module,
    targets: TargetSelector = None,
    exclude: Sequence[str] = (),
) -> list[Target]:
    """List the tensors to prune, in ``named_parameters()`` order.

    Args:
        model: the model (DataParallel/DDP wrappers are looked through).
        targets: ``None`` for the paper's default (:func:`is_default_target`); a sequence of
            glob patterns over canonical FQNs (``"fc*.weight"``, ``"lstm.weight_hh_l0"``, any
            parameter, raw ones and biases included); or a callable
            ``(fqn, module, parameter) -> bool``.
        exclude: glob patterns of FQNs to leave out of whatever ``targets`` selected.

    Returns:
        One :class:`Target` per distinct Parameter; a Parameter shared by several modules
        (tied weights) is one target whose ``aliases`` name the other places.

    Raises:
        TypeError: ``targets`` or ``exclude`` of the wrong type.
        ValueError: a pattern that matches no parameter, a selected parameter that is not a
            floating-point tensor or is uninitialized (lazy), or an empty selection.
    """
    model = unwrap_model(model)
    if isinstance(targets, str) or isinstance(exclude, str):
        bad, arg = (targets, "targets") if isinstance(targets, str) else (exclude, "exclude")
        raise TypeError(
            f"find_targets(): {arg}={bad!r} is a string; pass a list of patterns, e.g. [{bad!r}]"
        )
    if targets is not None and not callable(targets):
        targets = _patterns(targets, "targets")
    exclude = _patterns((), "exclude") if exclude is None else _patterns(exclude, "exclude")

    places: dict[int, list[tuple[str, str, nn.Module, nn.Parameter]]] = {}
    for module_name, name, module, param in _parameter_places(model):
        places.setdefault(id(param), []).append((module_name, name, module, param))

    used_patterns: set[str] = set()
    used_excludes: set[str] = set()
    found: list[Target] = []
    for group in places.values():
        module_name, name, module, param = group[0]
        fqn = _join(module_name, name)
        if targets is None:
            chosen = is_default_target(module, name, param)
        elif callable(targets):
            chosen = bool(targets(fqn, module, param))
        else:
            hits = _matches(fqn, targets)
            for m_name, n, _m, _p in group[1:]:
                hits += _matches(_join(m_name, n), targets)
            used_patterns.update(hits)
            chosen = bool(hits)
        ex_hits = _matches(fqn, exclude)
        used_excludes.update(ex_hits)
        if not chosen or ex_hits:
            continue
        if isinstance(param, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"find_targets(): {fqn!r} is an uninitialized (lazy) parameter; "
                "run one forward pass to materialize it before creating the ticket"
            )
        if not param.is_floating_point():
            raise ValueError(
                f"find_targets(): {fqn!r} has dtype {param.dtype}; only floating-point tensors can be pruned"
            )
        aliases = tuple((m, n) for m, n, _mod, _p in group[1:])
        found.append(Target(fqn, module_name, name, tuple(param.shape), aliases))

    if targets is not None and not callable(targets):
        unused = [p for p in targets if p not in used_patterns]
        if unused:
            raise ValueError(
                f"find_targets(): targets={unused!r} match no parameter; "
                f"valid names include {_sample_names(places)}"
            )
    unused_ex = [p for p in exclude if p not in used_excludes]
    if unused_ex:
        raise ValueError(
            f"find_targets(): exclude={unused_ex!r} match no parameter; "
            f"valid names include {_sample_names(places)}"
        )
    if not found:
        raise ValueError(
            f"find_targets(): targets={targets!r} selects no prunable tensor in "
            f"{type(model).__name__}; pass glob patterns such as ['*.weight'] or a filter function"
        )
    return found


def _patterns(value: object, arg: str) -> list[str]:
    """``value`` as a list of glob patterns, or a clear ``TypeError`` naming ``arg``."""
    try:
        patterns = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"find_targets(): {arg}={value!r} is not a list of glob patterns; pass e.g. ['fc3.weight', 'features.*']"
        ) from None
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"find_targets(): {arg} contains {p!r}; patterns must be strings such as 'fc3.weight'")
    return patterns


def _sample_names(places: dict[int, list[tuple[str, str, nn.Module, nn.Parameter]]]) -> str:
    names = [_join(g[0][0], g[0][1]) for g in places.values()]
    shown = ", ".join(repr(n) for n in names[:8])
    return f"[{shown}{', ...' if len(names) > 8 else ''}]"


def get_place(model: nn.Module, module_name: str) -> nn.Module:
    """The submodule at ``module_name`` (``""`` is the model itself)."""
    return model.get_submodule(module_name) if module_name else model


def check_masks(masks: object, targets: Sequence[Target], fn: str, *, what: str = "masks") -> dict[str, Tensor]:
    """Check that ``masks`` holds one bool tensor of the right shape per target and nothing else.

    Returns the masks in target order. Raises ``TypeError`` (not a dict, not bool tensors) or
    ``ValueError`` (missing or unknown FQNs, wrong shapes), naming ``fn`` and the FQN.
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"{fn}: {what}={type(masks).__name__} is not a dict; pass {{fqn: bool tensor}}")
    expected = [t.fqn for t in targets]
    missing = [f for f in expected if f not in masks]
    unknown = [f for f in masks if f not in expected]
    if missing or unknown:
        raise ValueError(
            f"{fn}: {what} missing {missing!r} and unknown {unknown!r}; pass one bool mask per target in {expected!r}"
        )
    for t in targets:
        m = masks[t.fqn]
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise TypeError(f"{fn}: {what}[{t.fqn!r}] is {getattr(m, 'dtype', type(m).__name__)}; pass bool tensors")
        if tuple(m.shape) != t.shape:
            raise ValueError(f"{fn}: {what}[{t.fqn!r}] has shape {tuple(m.shape)}, the tensor has {t.shape}")
    return {t.fqn: masks[t.fqn] for t in targets}
