"""Pruning at initialization: SNIP, GraSP, SynFlow, magnitude and random masks at theta_0, as a ticket.

:func:`init_scores` is pure: it scores every target weight of the model as it is now, without
changing the model (each forward runs through ``torch.func.functional_call`` on substituted
copies of the weights and buffers, so no weight, sign, buffer, ``requires_grad`` flag or
``.grad`` of the model is touched; SynFlow switches the model to eval mode and back).
:func:`prune_at_init` turns scores into masks (exact selection by
:func:`~torch_lottery.prune_lowest`) and installs them at theta_0 through
``LotteryTicket.set_masks_``.

Scores (higher survives):

* ``"snip"`` (Lee et al. 2019): ``|g * theta|``, ``g`` the loss gradient summed over the batches.
* ``"grasp"`` (Wang et al. 2020): ``theta * Hg``, ``H`` the Hessian and ``g`` the gradient of the
  loss over the batches, by double backward, with logits divided by a temperature of 200 as in the
  authors' code. The paper writes the score as ``S(-theta) = -theta * Hg`` and removes the weights
  with the *highest* ``S``; that is the same as keeping the highest ``theta * Hg`` (checked against
  alecwangcq/GraSP's ``GraSP.py`` and ganguli-lab/Synaptic-Flow's ``pruners.py``, which both
  prune the lowest ``theta * Hg``).
* ``"synflow"`` (Tanaka et al. 2020): data-free. Every floating parameter and buffer is replaced
  by its absolute value in float64 (float32 on devices without float64), the model runs in eval
  mode on an all-ones input, and the score is ``|theta * dR/dtheta|`` with ``R`` the sum of the
  outputs. It is iterated: after round ``t`` of ``T`` the masks keep ``n * d**(t/T)`` of each
  group's ``n`` weights, ``d`` the final density, and the next round scores the masked network.
* ``"magnitude"``: ``|theta|``; ``"random"``: seeded uniform scores.

Ablations of Frankle et al. 2021 ("Pruning neural networks at initialization: why are we missing
the mark?"): ``"shuffle"`` (each layer's mask randomly permuted: same per-layer counts, by
:func:`~torch_lottery.random_masks_like`), ``"reinit"`` (masks kept, the target weights redrawn
from their layers' initializers by :func:`~torch_lottery.fresh_init`), ``"invert"`` (scores
negated before selection, so the weights the method ranks lowest survive; negation, not
Synaptic-Flow's ``1/score``, which does not reverse scores of mixed sign such as GraSP's).
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .controls import fresh_init, random_masks_like
from .densities import DENSITY_RULES, kept_counts
from .lottery import LotteryTicket
from .selection import prune_lowest
from .targets import Target, TargetSelector, find_targets, get_place, unwrap_model

__all__ = ["ABLATIONS", "INIT_METHODS", "init_scores", "prune_at_init"]

logger = logging.getLogger(__name__)

INIT_METHODS: tuple[str, ...] = ("snip", "grasp", "synflow", "magnitude", "random")
"""The scoring methods of :func:`init_scores` and :func:`prune_at_init`."""
ABLATIONS: tuple[str, ...] = ("shuffle", "reinit", "invert")
"""Frankle et al. (2021)'s ablations, :func:`prune_at_init`'s ``ablation=``."""

_DATA_METHODS = ("snip", "grasp")
_GRASP_TEMPERATURE = 200.0
_SCHEDULE_OPTIONS = ("rate", "rounds", "layer_rates", "layer_sparsity")

Batch = tuple[Any, Any]
Inputs = Union[Batch, Iterable[Batch], None]
LossFn = Callable[[Any, Any], Tensor]


# ----------------------------------------------------------------------------- validation


def _check_method(method: object, where: str) -> str:
    if method not in INIT_METHODS:
        raise ValueError(f"{where}: method={method!r} is not a method; choose one of {list(INIT_METHODS)}")
    return str(method)


def _batches(inputs: Inputs, method: str, where: str) -> list[Batch]:
    """The data as a list of ``(inputs, targets)`` batches (one tuple, or an iterable of them)."""
    if inputs is None:
        return []
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], Tensor):
        items: list[Any] = [inputs]
    else:
        try:
            items = list(inputs)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"{where}: inputs={type(inputs).__name__!r} is not a batch; pass (inputs, targets) "
                "or an iterable of such batches (a list, a DataLoader)"
            ) from None
    batches = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"{where}: inputs[{i}] is {type(item).__name__!r}, not an (inputs, targets) pair; "
                "pass (x, y) or an iterable of (x, y) batches"
            )
        batches.append((item[0], item[1]))
    if not batches and method in _DATA_METHODS:
        raise ValueError(f"{where}: inputs is empty; method={method!r} needs at least one (inputs, targets) batch")
    return batches


def _check_data(method: str, batches: list[Batch], input_shape: Optional[Sequence[int]], where: str) -> None:
    if method in _DATA_METHODS and not batches:
        raise ValueError(
            f"{where}: method={method!r} needs data: pass inputs=(x, y) or an iterable of (x, y) batches "
            "(loss_fn: cross-entropy unless given); 'synflow', 'magnitude' and 'random' need none"
        )
    if method == "synflow" and input_shape is None and not batches:
        raise ValueError(
            f"{where}: method='synflow' needs the shape of its all-ones input: pass input_shape=(1, 784) "
            "(the shape of one input tensor, batch dimension first) or inputs=(x, y)"
        )
    if input_shape is not None:
        ok = isinstance(input_shape, Sequence) and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in input_shape
        )
        if not ok or not input_shape:
            raise ValueError(f"{where}: input_shape={input_shape!r} must be a tuple of positive ints such as (1, 784)")


def _plain_parameter(model: nn.Module, target: Target, where: str) -> nn.Parameter:
    """The target's Parameter, refusing a model that already carries masks."""
    param = get_place(model, target.module_name)._parameters.get(target.name)
    if not isinstance(param, nn.Parameter):
        raise ValueError(
            f"{where}: {target.fqn!r} is already pruned (a torch.nn.utils.prune reparametrization); "
            "pass a model at initialization, or make earlier pruning permanent first (ticket.remove_())"
        )
    return param


# ----------------------------------------------------------------------------- scores


class _ModeGuard:
    """Put every submodule in eval mode for the block, then restore each module's own flag."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for module, training in self.modes:
            module.training = training


def _call(model: nn.Module, tensors: Mapping[str, Tensor], args: Any) -> Any:
    return torch.func.functional_call(model, dict(tensors), (args,), strict=False, tie_weights=True)


def _buffer_copies(model: nn.Module, *, synflow_dtype: Optional[torch.dtype] = None) -> dict[str, Tensor]:
    """Fresh copies of every buffer, so a forward in train mode updates the copies, not the model."""
    out = {}
    for name, buf in model.named_buffers():  # one name per shared buffer: functional_call ties the others
        if synflow_dtype is not None and buf.is_floating_point():
            out[name] = buf.detach().abs().to(synflow_dtype)
        else:
            out[name] = buf.detach().clone()
    return out


def _data_scores(
    model: nn.Module, params: Mapping[str, Tensor], method: str, batches: list[Batch], loss_fn: LossFn
) -> dict[str, Tensor]:
    fqns = list(params)
    leaves = {f: p.detach().requires_grad_(True) for f, p in params.items()}
    buffers = _buffer_copies(model)
    scale = _GRASP_TEMPERATURE if method == "grasp" else 1.0

    def loss(batch: Batch, tensors: Mapping[str, Tensor]) -> Tensor:
        out = _call(model, {**buffers, **tensors}, batch[0])
        return loss_fn(out / scale if scale != 1.0 else out, batch[1])

    grads = [torch.zeros_like(leaves[f]) for f in fqns]
    for batch in batches:
        g = torch.autograd.grad(loss(batch, leaves), [leaves[f] for f in fqns], allow_unused=True)
        grads = [a + (b if b is not None else 0) for a, b in zip(grads, g)]
    if method == "snip":
        return {f: (g * params[f]).abs().detach() for f, g in zip(fqns, grads)}
    hg = [torch.zeros_like(leaves[f]) for f in fqns]
    for batch in batches:  # Hg: gradient of (stopped g) . grad L_b, batch by batch
        g_b = torch.autograd.grad(loss(batch, leaves), [leaves[f] for f in fqns], create_graph=True, allow_unused=True)
        z = sum((s * g).sum() for s, g in zip(grads, g_b) if g is not None and g.requires_grad)
        if not isinstance(z, Tensor):  # no gradient depends on the weights (a linear model)
            continue
        h = torch.autograd.grad(z, [leaves[f] for f in fqns], allow_unused=True)
        hg = [a + (b if b is not None else 0) for a, b in zip(hg, h)]
    return {f: (params[f] * h).detach() for f, h in zip(fqns, hg)}


def _synflow_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _synflow_scores(
    model: nn.Module, params: Mapping[str, Tensor], masks: Mapping[str, Tensor], input_shape: Sequence[int]
) -> dict[str, Tensor]:
    device = next(iter(params.values())).device
    dtype = _synflow_dtype(device)
    tensors = _buffer_copies(model, synflow_dtype=dtype)
    targets = {id(p) for p in params.values()}
    for name, p in model.named_parameters():  # one name per tied Parameter; targets under their own FQN
        if p.is_floating_point() and id(p) not in targets:
            tensors[name] = p.detach().abs().to(dtype)
    leaves = {f: (p.detach().abs().to(dtype) * masks[f].to(device)).requires_grad_(True) for f, p in params.items()}
    tensors.update(leaves)
    with _ModeGuard(model):
        out = _call(model, tensors, torch.ones(tuple(input_shape), dtype=dtype, device=device))
        total = out.sum() if isinstance(out, Tensor) else sum(o.sum() for o in out)
        grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    return {
        f: (leaf * (g if g is not None else torch.zeros_like(leaf))).abs().detach()
        for (f, leaf), g in zip(leaves.items(), grads)
    }


def _scores(
    model: nn.Module, targets: Sequence[Target], method: str, *, batches: list[Batch], loss_fn: LossFn,
    input_shape: Optional[Sequence[int]], masks: Mapping[str, Tensor], seed: int, where: str,
) -> dict[str, Tensor]:
    params = {t.fqn: _plain_parameter(model, t, where) for t in targets}
    if method == "magnitude":
        return {f: p.detach().abs() for f, p in params.items()}
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {f: torch.rand(p.shape, generator=generator, dtype=torch.float64).to(p.device) for f, p in params.items()}
    if method == "synflow":
        if input_shape is None:
            input_shape = (1, *batches[0][0].shape[1:])
        return _synflow_scores(model, params, masks, input_shape)
    return _data_scores(model, params, method, batches, loss_fn)


def _check_finite(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], method: str, where: str) -> None:
    for fqn, score in scores.items():
        bad = ~torch.isfinite(score) & masks[fqn].to(score.device)
        if bool(bad.any()):
            raise ValueError(
                f"{where}: method={method!r} gave {int(bad.sum())} NaN or infinite scores for {fqn!r}; "
                "check the model's weights and the inputs for NaN/inf (SynFlow on a very deep network: "
                "run it on a device with float64). The model was not changed."
            )


def init_scores(
    model: nn.Module,
    *,
    method: str,
    inputs: Inputs = None,
    loss_fn: Optional[LossFn] = None,
    input_shape: Optional[Sequence[int]] = None,
    targets: TargetSelector = None,
    exclude: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, Tensor]:
    """One round of pruning-at-initialization scores for every target weight (higher survives). Pure.

    The model is not changed (see the module docstring for each score and how it is computed).

    Args:
        model: an unpruned model.
        method: one of :data:`INIT_METHODS`.
        inputs: for ``"snip"`` and ``"grasp"``: one ``(inputs, targets)`` batch or an iterable of
            them; ``"synflow"`` takes its input shape from the first batch if ``input_shape`` is
            not given.
        loss_fn: ``loss_fn(model(inputs), targets)``; cross-entropy by default.
        input_shape: shape of SynFlow's all-ones input, batch dimension first, e.g. ``(1, 784)``.
        targets, exclude: which tensors are scored (as for ``LotteryTicket``).
        seed: seed of the ``"random"`` scores.

    Returns:
        ``{fqn: scores}`` with each target's shape, in model order.

    Raises:
        ValueError: an unknown method, a data method without data, SynFlow without an input shape,
            no targets, a model that is already pruned, NaN or infinite scores.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> s = init_scores(model, method="synflow", input_shape=(1, 4))
        >>> [tuple(v.shape) for v in s.values()]
        [(3, 4), (2, 3)]
    """
    where = "init_scores()"
    method = _check_method(method, where)
    batches = _batches(inputs, method, where)
    _check_data(method, batches, input_shape, where)
    model = unwrap_model(model)
    found = find_targets(model, targets, exclude)
    masks = {t.fqn: torch.ones(t.shape, dtype=torch.bool) for t in found}
    scores = _scores(model, found, method, batches=batches, loss_fn=loss_fn or F.cross_entropy,
                     input_shape=input_shape, masks=masks, seed=seed, where=where)
    _check_finite(scores, masks, method, where)
    return scores


# ----------------------------------------------------------------------------- masks and the ticket


def _groups(
    targets: Sequence[Target], sparsity: Optional[float], density: Any, scope: str, where: str
) -> list[tuple[list[str], int]]:
    """``[(fqns, kept)]``: the tensors ranked together and how many of them survive in the end."""
    numel = {t.fqn: t.numel for t in targets}
    if density is None:
        if sparsity is None:
            raise ValueError(f"{where}: sparsity=None; pass the fraction of target weights to prune, such as 0.9")
        if scope == "global":
            total = sum(numel.values())
            return [(list(numel), total - round(sparsity * total))]
        return [([f], n - round(sparsity * n)) for f, n in numel.items()]
    if isinstance(density, str):
        if density not in DENSITY_RULES:
            raise ValueError(f"{where}: density={density!r} is not a density rule; choose one of {list(DENSITY_RULES)} "
                             "or pass {fqn: density}")
        if sparsity is None:
            raise ValueError(f"{where}: density={density!r} needs sparsity=, the overall fraction to prune")
        counts = kept_counts(list(targets), sparsity, rule=density)
        return [([f], k) for f, k in counts.items()]
    if not isinstance(density, Mapping):
        raise TypeError(f"{where}: density={type(density).__name__!r} must be a rule name or a dict {{fqn: density}}")
    if sparsity is not None:
        raise ValueError(f"{where}: sparsity={sparsity!r} and a density dict: give one (the dict sets every layer)")
    missing = [f for f in numel if f not in density]
    unknown = [f for f in density if f not in numel]
    if missing or unknown:
        raise ValueError(f"{where}: density is missing {missing!r} and has unknown {unknown!r}; "
                         f"give one density per target in {list(numel)!r}")
    groups = []
    for f, n in numel.items():
        d = density[f]
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= float(d) <= 1.0:
            raise ValueError(f"{where}: density[{f!r}]={d!r} is not a fraction in [0, 1]")
        groups.append(([f], round(float(d) * n)))
    return groups


def _masks(
    model: nn.Module, targets: Sequence[Target], method: str, groups: list[tuple[list[str], int]], *,
    iterations: int, invert: bool, batches: list[Batch], loss_fn: LossFn, input_shape: Optional[Sequence[int]],
    seed: int, where: str,
) -> dict[str, Tensor]:
    """The final masks: one round of scores, or SynFlow's ``iterations`` rounds. Pure."""
    masks = {t.fqn: torch.ones(t.shape, dtype=torch.bool, device=_plain_parameter(model, t, where).device)
             for t in targets}
    numel = {t.fqn: t.numel for t in targets}
    rounds = iterations if method == "synflow" else 1
    for step in range(1, rounds + 1):
        scores = _scores(model, targets, method, batches=batches, loss_fn=loss_fn, input_shape=input_shape,
                         masks=masks, seed=seed + step - 1, where=where)
        _check_finite(scores, masks, method, where)
        if invert:
            scores = {f: -s for f, s in scores.items()}
        for fqns, kept in groups:
            n = sum(numel[f] for f in fqns)
            goal = kept if step == rounds else max(kept, round(n * (kept / n) ** (step / rounds)))
            survivors = sum(int(masks[f].sum()) for f in fqns)
            new = prune_lowest({f: scores[f] for f in fqns}, {f: masks[f] for f in fqns}, max(0, survivors - goal))
            masks.update(new)
        logger.debug("%s round %d/%d: %d weights kept", method, step, rounds, sum(int(m.sum()) for m in masks.values()))
    return masks


def prune_at_init(
    model: nn.Module,
    *,
    method: str = "snip",
    sparsity: Optional[float] = None,
    density: Union[str, Mapping[str, float], None] = None,
    inputs: Inputs = None,
    loss_fn: Optional[LossFn] = None,
    iterations: int = 100,
    scope: str = "global",
    input_shape: Optional[Sequence[int]] = None,
    ablation: Optional[str] = None,
    seed: int = 0,
    **ticket_options: Any,
) -> LotteryTicket:
    """Prune a model at initialization and return the ticket, masks installed at theta_0, ready to train.

    The target weights are scored (see the module docstring), the lowest-scoring ones pruned by
    exact selection, and the masks installed by ``LotteryTicket.set_masks_``: the model's current
    weights become theta_0 and are not changed (except by ``ablation="reinit"``). Train the model
    as it is; the masks stay in force. A layer left with no weight (layer collapse) is logged as a
    warning.

    Args:
        model: an unpruned model (DataParallel/DDP wrappers are looked through).
        method: one of :data:`INIT_METHODS`: ``"snip"``, ``"grasp"``, ``"synflow"``, ``"magnitude"``,
            ``"random"``.
        sparsity: the fraction of the target weights to prune, in ``[0, 1)``.
        density: per-layer counts instead of one ranking: a rule name of
            :func:`~torch_lottery.layer_densities` (with ``sparsity``) or a dict ``{fqn: density}``
            for every target (without ``sparsity``). Each layer is then ranked on its own and
            ``scope`` is not used.
        inputs: data for ``"snip"`` and ``"grasp"``: one ``(inputs, targets)`` batch or an iterable
            of them (e.g. ``itertools.islice(loader, 10)``).
        loss_fn: ``loss_fn(model(inputs), targets)``; cross-entropy by default.
        iterations: SynFlow's rounds ``T`` (density ``d**(t/T)`` after round ``t``); other methods
            score once.
        scope: ``"global"`` ranks all targets together; ``"layer"`` prunes each tensor to
            ``sparsity`` on its own.
        input_shape: shape of SynFlow's all-ones input, batch dimension first (``(1, 1, 28, 28)``);
            by default one sample of ``inputs``.
        ablation: ``None`` or one of :data:`ABLATIONS`: ``"shuffle"``, ``"reinit"``, ``"invert"``.
        seed: seed of the ``"random"`` scores and of the ``"shuffle"`` and ``"reinit"`` ablations;
            also the ticket's seed.
        **ticket_options: passed to :class:`~torch_lottery.LotteryTicket` (``targets``, ``exclude``,
            ``backend``, ``restore``, ...). Unless they set a schedule (``rate``, ``rounds``,
            ``layer_rates``, ``layer_sparsity``), the ticket's goal is the sparsity reached here,
            so a ``with ticket:`` block would prune nothing more.

    Returns:
        The :class:`~torch_lottery.LotteryTicket`, masks installed, rewind point theta_0.

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)`` (or leaving no weight), an unknown method,
            scope, density or ablation, a data method without data, no targets, a model already
            pruned, NaN or infinite scores. The model is left as it was.
        TypeError: arguments of the wrong type (e.g. ``inputs`` that are not batches).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> batch = (torch.randn(32, 8), torch.randint(0, 2, (32,)))
        >>> ticket = prune_at_init(model, method="snip", sparsity=0.9, inputs=batch)
        >>> [int(m.sum()) for m in ticket.masks.values()], round(ticket.sparsity, 4)
        ([4, 12], 0.9)
    """
    where = "prune_at_init()"
    method = _check_method(method, where)
    if sparsity is not None:
        from .densities import _check_sparsity

        sparsity = _check_sparsity(sparsity, where)
    if scope not in ("global", "layer"):
        raise ValueError(f"{where}: scope={scope!r} is not one of ['global', 'layer']")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"{where}: iterations={iterations!r} must be a positive int (SynFlow's rounds)")
    if ablation is not None and ablation not in ABLATIONS:
        raise ValueError(f"{where}: ablation={ablation!r} is not one of {list(ABLATIONS)} (or None)")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"{where}: loss_fn={loss_fn!r} is not callable; pass loss_fn(outputs, targets) -> loss")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{where}: seed={seed!r} must be an int")
    batches = _batches(inputs, method, where)
    _check_data(method, batches, input_shape, where)
    bare = unwrap_model(model)
    found = find_targets(bare, ticket_options.get("targets"), ticket_options.get("exclude", ()))
    for t in found:
        _plain_parameter(bare, t, where)
    groups = _groups(found, sparsity, density, scope, where)
    total = sum(t.numel for t in found)
    kept = sum(k for _, k in groups)
    if kept == 0:
        raise ValueError(f"{where}: these settings keep none of the {total} target weights; lower the sparsity")
    options = dict(ticket_options)
    if not any(k in options for k in _SCHEDULE_OPTIONS):
        options["sparsity"] = sparsity if density is None else (total - kept) / total
        options["scope"] = scope if density is None else "global"
    ticket = LotteryTicket(model, seed=seed, **options)  # validates the options; touches nothing

    masks = _masks(bare, found, method, groups, iterations=iterations, invert=ablation == "invert",
                   batches=batches, loss_fn=loss_fn or F.cross_entropy, input_shape=input_shape, seed=seed,
                   where=where)
    if ablation == "shuffle":
        masks = random_masks_like(masks, seed=seed)
    for fqn, mask in masks.items():
        if not bool(mask.any()):
            logger.warning("%s: %s keeps no weight (layer collapse): the output no longer depends on the input "
                           "through it", where, fqn)
    return _install(ticket, bare, found, masks, reinit=ablation == "reinit", seed=seed)


def _install(
    ticket: LotteryTicket, model: nn.Module, targets: Sequence[Target], masks: Mapping[str, Tensor], *,
    reinit: bool, seed: int,
) -> LotteryTicket:
    """Install ``masks`` at theta_0 (after redrawing the target weights for the reinit ablation)."""
    params = {t.fqn: _plain_parameter(model, t, "prune_at_init()") for t in targets}
    before = {f: p.detach().clone() for f, p in params.items()} if reinit else {}
    try:
        if reinit:
            fresh = fresh_init(model, targets, seed=seed)
            with torch.no_grad():
                for f, p in params.items():
                    p.copy_(fresh[f])
        ticket.set_masks_(dict(masks))
    except BaseException:
        with torch.no_grad():
            for f, value in before.items():
                params[f].copy_(value)
        raise
    logger.info("pruned at init: %d of %d target weights kept", sum(int(m.sum()) for m in masks.values()),
                sum(t.numel for t in targets))
    return ticket
