"""Linear mode connectivity: the error barrier between two trained networks (Frankle et al., 2020).

Frankle, Dziugaite, Roy and Carbin (2020) call a network *stable to SGD noise* when two copies,
trained from the same weights on different data orders, end up linearly connected: the error
does not rise along the straight line between them. Their *instability* is the error barrier:
the maximum error along the path minus the mean of the two endpoints' errors. A ticket whose
copies are stable from theta_k is one that rewinding to theta_k can find.

* :func:`interpolate` computes one point of the path (pure).
* :func:`instability` writes each point into the model, calls your ``evaluate`` and returns the
  curve and the barrier; the model is restored bitwise afterwards.
* :func:`spawn_copies` trains copies of the model from a rewind point, one per data-order seed,
  with your own training function, and returns their trained weights; the model is restored.

Weights are dicts keyed by canonical FQNs (``"fc1.weight"``, as
:func:`torch_lottery.targets.named_state_tensors`, ``ticket.live_tensors()`` and
``ticket.rewind_weights`` give them); a model's own ``state_dict()`` with torch.nn.utils.prune's
``*_orig`` / ``*_mask`` keys is accepted too.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .targets import named_state_tensors, unwrap_model

__all__ = ["InstabilityResult", "instability", "interpolate", "spawn_copies"]

logger = logging.getLogger(__name__)

_BATCHNORM_STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class InstabilityResult:
    """The error along the linear path between two networks, and its barrier.

    Attributes:
        alphas: the interpolation coefficients, ``0.0`` (network A) to ``1.0`` (network B).
        values: what ``evaluate`` returned at each alpha (an error or a loss: lower is better).
        barrier: ``max(values) - (values[0] + values[-1]) / 2``, the instability of Frankle et
            al. (2020); never negative, about zero for linearly connected networks.
    """

    alphas: tuple[float, ...]
    values: tuple[float, ...]
    barrier: float

    @property
    def endpoint_mean(self) -> float:
        """The mean of the two endpoints' values."""
        return (self.values[0] + self.values[-1]) / 2

    @property
    def peak_alpha(self) -> float:
        """The alpha at which the path is worst (the first one, on ties)."""
        return self.alphas[max(range(len(self.values)), key=lambda i: (self.values[i], -i))]


def _barrier(values: Sequence[float]) -> float:
    return max(values) - (values[0] + values[-1]) / 2


# ----------------------------------------------------------------------------- validation


def _prune_masks(model: nn.Module) -> dict[str, Tensor]:
    """FQN -> bool mask of every tensor torch.nn.utils.prune has reparametrized in ``model``."""
    out: dict[str, Tensor] = {}
    for module_name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                name = hook._tensor_name
                fqn = f"{module_name}.{name}" if module_name else name
                out[fqn] = getattr(module, name + "_mask").detach() != 0
    return out


def _refresh_pruned_(model: nn.Module) -> None:
    """Recompute ``module.<name>`` from ``<name>_orig * <name>_mask`` after a write to ``*_orig``."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                hook(module, None)


def _canonical(
    weights: Any, live: Mapping[str, Tensor], fn: str, arg: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split ``weights`` into canonical FQN -> tensor and FQN -> bool mask (from ``*_mask`` keys)."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"{fn}(): {arg}={type(weights).__name__!r} is not a dict; pass FQN -> tensor")
    values: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    unknown = []
    for key, value in weights.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{fn}(): {arg}[{key!r}] is {type(value).__name__}; pass tensors")
        if key in live:
            values[key] = value
        elif key.endswith("_orig") and key[:-5] in live:
            values[key[:-5]] = value
        elif key.endswith("_mask") and key[:-5] in live:
            masks[key[:-5]] = value.detach() != 0
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{fn}(): {arg} has keys the model does not have: {unknown[:5]!r}"
            f"{' ...' if len(unknown) > 5 else ''}; pass weights of this model keyed by canonical "
            f"FQNs (torch_lottery.targets.named_state_tensors(model)), e.g. {list(live)[:3]!r}"
        )
    for key, value in list(values.items()) + list(masks.items()):
        if tuple(value.shape) != tuple(live[key].shape):
            raise ValueError(
                f"{fn}(): {arg}[{key!r}] has shape {tuple(value.shape)}, the model's has "
                f"{tuple(live[key].shape)}; pass weights of this architecture"
            )
    return values, masks


def _check_masks_arg(masks: Any, live: Mapping[str, Tensor], fn: str) -> dict[str, Tensor]:
    if masks is None:
        return {}
    if not isinstance(masks, Mapping):
        raise TypeError(f"{fn}(): masks={type(masks).__name__!r} is not a dict; pass FQN -> bool tensor (ticket.masks)")
    out = {}
    for key, m in masks.items():
        if key not in live:
            raise ValueError(f"{fn}(): masks has key {key!r} the model does not have; pass ticket.masks of this model")
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise TypeError(f"{fn}(): masks[{key!r}] is {getattr(m, 'dtype', type(m).__name__)}; pass bool tensors")
        if tuple(m.shape) != tuple(live[key].shape):
            raise ValueError(f"{fn}(): masks[{key!r}] has shape {tuple(m.shape)}, the tensor has {tuple(live[key].shape)}")
        out[key] = m
    return out


def _merge_masks(sources: Sequence[tuple[str, Mapping[str, Tensor]]], fn: str) -> dict[str, Tensor]:
    """One mask per FQN from several sources that must agree wherever they overlap."""
    merged: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for name, masks in sources:
        for key, m in masks.items():
            if key in merged:
                differ = int(torch.count_nonzero(merged[key] != m.to(merged[key].device)))
                if differ:
                    raise ValueError(
                        f"{fn}(): {name} and {origin[key]} hold different masks for {key!r} "
                        f"({differ} entries differ); the path must keep one mask: compare two trainings "
                        "of the same ticket (spawn_copies from its rewind point)"
                    )
            else:
                merged[key], origin[key] = m, name
    return merged


def _check_hidden_masks(
    live: Mapping[str, Tensor], masks: Mapping[str, Tensor], weights: Sequence[tuple[str, Mapping[str, Tensor]]],
    fn: str,
) -> None:
    """Refuse to write nonzeros where the model's weight is exactly zero and no mask is known.

    A baked mask backend keeps its masks outside the model (the Parameter just holds zeros); the
    path would silently regrow pruned weights. Pass ``masks=ticket.masks`` to hold them.
    """
    for key, current in live.items():
        if key in masks or current.dim() < 2 or not current.is_floating_point():
            continue
        zero = current.detach() == 0
        if not bool(zero.any()):
            continue
        for arg, values in weights:
            value = values.get(key)
            if value is None:
                continue
            regrown = int(torch.count_nonzero(zero & (value.detach().to(current.device) != 0)))
            if regrown:
                raise ValueError(
                    f"{fn}(): the model's {key!r} is zero at {regrown} entries where {arg} is not, and no mask "
                    "is known for it (a baked mask backend keeps its masks outside the model); pass "
                    f"masks=ticket.masks to keep them pruned, or masks={{{key!r}: torch.ones_like(...)}} "
                    "to write the values unmasked"
                )


# ----------------------------------------------------------------------------- the path


def interpolate(
    weights_a: Mapping[str, Tensor],
    weights_b: Mapping[str, Tensor],
    alpha: float,
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
) -> dict[str, Tensor]:
    """One point of the linear path: ``(1 - alpha) * A + alpha * B`` for each floating-point tensor.

    ``alpha == 0`` returns A's values and ``alpha == 1`` B's, bitwise. Tensors that are not
    floating point (``num_batches_tracked`` and other integer buffers) are left out: they are not
    interpolated. Each tensor in ``masks`` is multiplied by its mask, so pruned entries are exactly
    zero everywhere on the path. Nothing is modified. Low-precision tensors (float16, bfloat16)
    are interpolated in float32 and cast back.

    Args:
        weights_a, weights_b: FQN -> tensor, the same keys and shapes.
        alpha: the position on the path, a number in [0, 1].
        masks: FQN -> bool mask held along the path, optional.

    Returns:
        FQN -> new tensor (on A's device, in A's dtype), floating-point keys only.

    Raises:
        ValueError: different keys or shapes, alpha outside [0, 1].

    Example:
        >>> import torch
        >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 2.0])}
        >>> interpolate(a, b, 0.25)["w"]
        tensor([1., 2.])
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"interpolate(): alpha={alpha!r} is not a number in [0, 1]; pass e.g. 0.5")
    if set(weights_a) != set(weights_b):
        raise ValueError(
            f"interpolate(): weights_a and weights_b have different keys: {sorted(set(weights_a) ^ set(weights_b))[:5]!r}; "
            "pass two networks of the same architecture"
        )
    alpha = float(alpha)
    out: dict[str, Tensor] = {}
    for key, a in weights_a.items():
        b = weights_b[key]
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"interpolate(): {key!r} has shape {tuple(a.shape)} in weights_a and {tuple(b.shape)} in weights_b"
            )
        if not a.is_floating_point():
            continue
        a = a.detach()
        b = b.detach().to(device=a.device, dtype=a.dtype)
        if alpha == 0.0:
            value = a.clone()
        elif alpha == 1.0:
            value = b.clone()
        else:
            work = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
            value = ((1.0 - alpha) * a.to(work) + alpha * b.to(work)).to(a.dtype)
        if masks is not None and key in masks:
            value = value * masks[key].to(value.device)
        out[key] = value
    return out


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def _recompute_batchnorm_(model: nn.Module, loader: Iterable[Any], fn: str) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them on ``loader`` (a true mean).

    Only the BatchNorm layers run in training mode (dropout and the rest stay in eval mode);
    each layer's ``momentum`` is set to ``None`` (a cumulative average) for the pass.
    """
    norms = _batchnorms(model)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    momenta = [m.momentum for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        batches = 0
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"{fn}(): bn_loader yielded {type(x).__name__}; yield input tensors or (inputs, targets) pairs"
                )
            model(x.to(device))
            batches += 1
        if batches == 0:
            raise ValueError(f"{fn}(): bn_loader yielded no batches; pass a loader over training data")
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode


def _as_value(result: Any, alpha: float) -> float:
    if isinstance(result, Tensor) and result.numel() == 1:
        result = result.item()
    if isinstance(result, bool) or not isinstance(result, numbers.Real):
        raise TypeError(
            f"instability(): evaluate returned {type(result).__name__} at alpha={alpha!r}; "
            "return a float: an error (1 - accuracy) or a loss"
        )
    value = float(result)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"instability(): evaluate returned {value!r} at alpha={alpha!r}; return a finite error or loss")
    return value


def instability(
    model: nn.Module,
    weights_a: Mapping[str, Tensor],
    weights_b: Mapping[str, Tensor],
    evaluate: Callable[[nn.Module], float],
    *,
    points: int = 30,
    bn_loader: Optional[Iterable[Any]] = None,
    masks: Optional[Mapping[str, Tensor]] = None,
) -> InstabilityResult:
    """The error barrier on the linear path between two networks (Frankle et al., 2020).

    For ``points`` alphas evenly spaced in [0, 1] (both ends included), the model is loaded with
    ``(1 - alpha) * A + alpha * B`` and ``evaluate(model)`` is called. The barrier is the maximum
    value along the path minus the mean of the two endpoints' values.

    * **Masks** are shared along the path: every tensor with a mask (installed in the model by
      torch.nn.utils.prune, given in ``masks``, or carried as ``*_mask`` keys in the weights) is
      zero at its pruned entries at every point, with every mask backend. The sources must agree:
      two networks with different masks are refused. With a baked backend the mask is not in the
      model: pass ``masks=ticket.masks`` (a path that would write nonzeros where the model's weight
      is zero and no mask is known is refused, never silently regrown).
    * **Integer buffers** (``num_batches_tracked``) are not interpolated: the model keeps its own.
    * **BatchNorm statistics** of a point are interpolated like the weights, unless ``bn_loader``
      is given: then each point's running mean and variance are re-estimated on it (a pass over
      the loader with only the BatchNorm layers in training mode), as the statistics of averaged
      weights are not the average of the statistics.

    The model is restored bitwise afterwards (parameters, buffers, training modes), also when
    ``evaluate`` raises.

    Args:
        model: the network (DataParallel/DDP wrappers are looked through).
        weights_a, weights_b: the two networks' weights, FQN -> tensor (e.g. from
            :func:`spawn_copies`); every floating-point parameter and buffer of the model (BatchNorm
            running statistics may be left out when ``bn_loader`` is given). Integer entries are
            ignored.
        evaluate: ``evaluate(model) -> float``, an **error or loss** (lower is better), e.g. the
            test error ``1 - accuracy`` as in the paper. It should set eval mode itself if it needs
            it and not train.
        points: number of alphas, at least 2 (the paper uses 30).
        bn_loader: optional iterable of input batches (or ``(inputs, targets)`` pairs) to
            recompute BatchNorm statistics at each point.
        masks: FQN -> bool mask held along the path (``ticket.masks``), optional.

    Returns:
        :class:`InstabilityResult` with ``alphas``, ``values`` and ``barrier``.

    Raises:
        TypeError, ValueError: mismatched keys or shapes, ``points`` < 2, different masks, a
            ``bn_loader`` for a model without BatchNorm, or a non-finite value from ``evaluate``.
            Validation happens before the model is touched.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_lottery import instability
        >>> model = nn.Linear(2, 1, bias=False)
        >>> a, b = {"weight": torch.tensor([[1.0, -1.0]])}, {"weight": torch.tensor([[-1.0, 1.0]])}
        >>> x = torch.tensor([[1.0, 0.0]])
        >>> result = instability(model, a, b, lambda m: float((m(x) - 1).abs()), points=3)
        >>> result.values, result.barrier
        ((0.0, 1.0, 2.0), 0.0)
    """
    fn = "instability"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}(): model={type(model).__name__!r} is not an nn.Module; pass the network")
    if not callable(evaluate):
        raise TypeError(f"{fn}(): evaluate={evaluate!r} is not callable; pass a function model -> error")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"{fn}(): points={points!r} must be an int >= 2 (both endpoints and the path between); the paper uses 30")
    net = unwrap_model(model)
    live = named_state_tensors(net)
    a, masks_a = _canonical(weights_a, live, fn, "weights_a")
    b, masks_b = _canonical(weights_b, live, fn, "weights_b")
    if set(a) != set(b):
        raise ValueError(
            f"{fn}(): weights_a and weights_b have different keys: {sorted(set(a) ^ set(b))[:5]!r}; "
            "pass two networks of the same architecture"
        )
    if set(masks_a) != set(masks_b):
        raise ValueError(
            f"{fn}(): weights_a and weights_b hold different masks: only one has masks for "
            f"{sorted(set(masks_a) ^ set(masks_b))[:5]!r}; compare two trainings of the same ticket"
        )
    if bn_loader is not None and not _batchnorms(net):
        raise ValueError(
            f"{fn}(): bn_loader is given but the model has no BatchNorm layer with running statistics; drop bn_loader"
        )
    exempt = set()
    if bn_loader is not None:
        for module_name, module in net.named_modules():
            if module in _batchnorms(net):
                exempt |= {f"{module_name}.{s}" if module_name else s for s in _BATCHNORM_STATS}
    missing = [k for k, v in live.items() if v.is_floating_point() and k not in a and k not in exempt]
    if missing:
        raise ValueError(
            f"{fn}(): weights_a and weights_b lack {missing[:5]!r}{' ...' if len(missing) > 5 else ''}; pass every "
            "floating-point parameter and buffer (spawn_copies returns them all)"
        )
    shared = _merge_masks(
        [("the model", _prune_masks(net)), ("masks", _check_masks_arg(masks, live, fn)),
         ("weights_a", masks_a), ("weights_b", masks_b)],
        fn,
    )
    _check_hidden_masks(live, shared, [("weights_a", a), ("weights_b", b)], fn)

    alphas = tuple(i / (points - 1) for i in range(points))
    saved = {k: v.detach().clone() for k, v in live.items()}
    modes = [(m, m.training) for m in net.modules()]
    values: list[float] = []
    try:
        for alpha in alphas:
            point = interpolate(a, b, alpha, masks=shared)
            with torch.no_grad():
                for key, value in point.items():
                    live[key].copy_(value)
            _refresh_pruned_(net)
            if bn_loader is not None:
                _recompute_batchnorm_(net, bn_loader, fn)
            values.append(_as_value(evaluate(model), alpha))
            logger.debug("instability: alpha %.4f -> %.6g", alpha, values[-1])
    finally:
        with torch.no_grad():
            for key, value in saved.items():
                live[key].copy_(value)
        _refresh_pruned_(net)
        for m, mode in modes:
            m.training = mode
    result = InstabilityResult(alphas=alphas, values=tuple(values), barrier=_barrier(values))
    logger.info("instability: barrier %.6g (endpoints %.6g, %.6g)", result.barrier, values[0], values[-1])
    return result


# ----------------------------------------------------------------------------- copies


def spawn_copies(
    model: nn.Module,
    rewind_weights: Mapping[str, Tensor],
    train_fn: Callable[[nn.Module, int], Any],
    *,
    seeds: Sequence[int] = (0, 1),
    masks: Optional[Mapping[str, Tensor]] = None,
) -> list[dict[str, Tensor]]:
    """Train copies of ``model`` from a rewind point, one per data-order seed; return their weights.

    For each seed, the model is loaded with ``rewind_weights`` (theta_k: e.g.
    ``ticket.rewind_weights``; tensors it lacks start from the model's values at the call) and
    ``train_fn(model, seed)`` runs: your own loop, which should build its own optimizer and use
    ``seed`` for its data order. The global RNG is seeded with ``seed`` for the call (dropout,
    augmentation) and the caller's RNG state is restored afterwards. The copies are trained in the
    model itself, one after the other, so masks stay in force with every backend (prune's hooks,
    baked re-zeroing); afterwards the model is restored bitwise (parameters, buffers, gradients,
    training modes), also when ``train_fn`` raises.

    Masks known for a tensor (installed by torch.nn.utils.prune, or given in ``masks``) are
    applied to its rewind values as they are loaded. With a baked backend pass
    ``masks=ticket.masks``: a rewind value that is nonzero where the model's weight is zero and no
    mask is known is refused rather than silently regrown.

    Args:
        model: the network (a DataParallel/DDP wrapper is passed to ``train_fn`` as it is).
        rewind_weights: FQN -> tensor to start each copy from.
        train_fn: ``train_fn(model, seed)``; its return value is ignored.
        seeds: two or more distinct int seeds, one copy each.
        masks: FQN -> bool mask (``ticket.masks``), optional.

    Returns:
        One dict per seed: every parameter and buffer after training, FQN -> detached clone (the
        input :func:`instability` takes).

    Raises:
        TypeError, ValueError: bad keys or shapes, fewer than two or repeated seeds, masks that
            disagree with the model's. The model is not touched before validation passes.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_lottery import spawn_copies
        >>> model = nn.Linear(4, 2)
        >>> start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        >>> def train(m, seed):
        ...     g = torch.Generator().manual_seed(seed)
        ...     opt = torch.optim.SGD(m.parameters(), lr=0.1)
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         m(torch.randn(8, 4, generator=g)).pow(2).mean().backward()
        ...         opt.step()
        >>> a, b = spawn_copies(model, start, train, seeds=(0, 1))
        >>> torch.equal(model.weight, start["weight"]), torch.equal(a["weight"], b["weight"])
        (True, False)
    """
    fn = "spawn_copies"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}(): model={type(model).__name__!r} is not an nn.Module; pass the network")
    if not callable(train_fn):
        raise TypeError(f"{fn}(): train_fn={train_fn!r} is not callable; pass a function (model, seed) -> None")
    seeds = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
    if (
        not isinstance(seeds, list) or len(seeds) < 2 or len(set(seeds)) != len(seeds)
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
    ):
        raise ValueError(f"{fn}(): seeds={seeds!r} must be two or more distinct ints, e.g. (0, 1)")
    net = unwrap_model(model)
    live = named_state_tensors(net)
    start, masks_w = _canonical(rewind_weights, live, fn, "rewind_weights")
    shared = _merge_masks(
        [("the model", _prune_masks(net)), ("masks", _check_masks_arg(masks, live, fn)), ("rewind_weights", masks_w)],
        fn,
    )
    _check_hidden_masks(live, shared, [("rewind_weights", start)], fn)

    saved = {k: v.detach().clone() for k, v in live.items()}
    params = [p for p in net.parameters()]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    modes = [(m, m.training) for m in net.modules()]
    cuda = sorted({t.device.index or 0 for t in live.values() if t.is_cuda})
    copies: list[dict[str, Tensor]] = []
    try:
        for seed in seeds:
            with torch.no_grad():
                for key, value in saved.items():
                    live[key].copy_(value)
                for key, value in start.items():
                    if key in shared:
                        value = value.detach().to(live[key].device) * shared[key].to(live[key].device)
                    live[key].copy_(value)
            _refresh_pruned_(net)
            for p in params:
                p.grad = None
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed)
                train_fn(model, seed)
            copies.append({k: v.detach().clone() for k, v in named_state_tensors(net).items()})
            logger.info("spawn_copies: copy with seed %d trained", seed)
    finally:
        with torch.no_grad():
            for key, value in saved.items():
                live[key].copy_(value)
        _refresh_pruned_(net)
        for p, g in zip(params, grads):
            p.grad = g
        for m, mode in modes:
            m.training = mode
    return copies
