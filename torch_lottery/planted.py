"""Planted tickets: a sparse teacher of known mask hidden in a model's initialization, and its data.

Plant 'n' Seek (Fischer & Burkholz, 2021) gives pruning a ground truth: hide a sparse network
that solves a task inside a randomly initialized one, generate the task's data from it, and ask
whether pruning finds what was planted. :func:`plant` does this for any model whose pruning
targets (the paper's defaults: Linear and conv weights) it can reach:

1. **Mask.** For each target tensor, exactly ``round((1 - sparsity) * numel)`` entries are drawn
   uniformly at random (seeded): the planted mask.
2. **Teacher.** The planted entries keep the values of the model's own random initialization
   (signs and relative sizes), multiplied by ``scale`` (default ``1 / sqrt(density)``, density =
   ``1 - sparsity``). A unit of a sparse layer sums ``density`` times fewer inputs than a dense
   one, so its pre-activation variance shrinks by ``density``; the factor gives each planted layer
   the variance the dense initialized layer has. Without it the teacher's signal would shrink by
   ``sqrt(density)`` per layer (``density ** (L / 2)`` over ``L`` layers), its outputs would be
   nearly constant (set by the biases) and buried under what the unplanted weights contribute.
   Plant 'n' Seek likewise rescales each planted neuron to the scale of the initialized weights
   around it, carrying the factors through ReLU's positive homogeneity. Biases, norms and other
   tensors are the model's own and belong to the teacher unchanged.
3. **Data.** ``n_samples`` inputs are drawn from a standard normal (seeded); the targets are the
   teacher's outputs (the model evaluated with every unplanted target entry at zero), in eval
   mode: the raw outputs for ``task="regression"`` (the default: they carry the most about the
   planted weights), or class labels for ``task="classification"``: the argmax of the outputs
   after centring each output over the generated inputs (a constant shift per output, which an
   output bias can learn; without it one class takes nearly every label).
4. **Initialization.** The model keeps its random initialization everywhere except at the planted
   entries, which now hold the scaled teacher values: the ticket is planted in the init. Training
   the dense model on the data and pruning it to ``sparsity`` is how a pruning method is asked to find the planted mask again;
   :func:`torch_lottery.mask_overlap` against :attr:`PlantedTicket.masks` measures how much did.

The scaling makes the planted entries larger than their neighbours on average, so magnitude
pruning of the untrained initialization already finds part of the mask; measure that baseline
beside any claim (``scale=1.0`` hides the ticket in the initialization's own distribution).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .targets import find_targets, get_place, named_state_tensors, unwrap_model

__all__ = ["PlantedTicket", "plant"]

_TASKS = ("classification", "regression")


@dataclass(frozen=True)
class PlantedTicket:
    """What :func:`plant` planted and the data generated from it.

    Attributes:
        masks: FQN -> bool mask of the planted ticket, one per pruning target (the keys of
            ``LotteryTicket(model).masks``), with exactly ``round(density * numel)`` survivors each.
        inputs: ``(n_samples, *input_shape)`` float inputs.
        targets: teacher outputs (float, ``(n_samples, outputs)``) or class labels (int64,
            ``(n_samples,)``), per ``task``.
        sparsity: the fraction of each target's entries outside the planted mask.
        scale: FQN -> the factor the planted entries were multiplied by.
    """

    masks: dict[str, Tensor]
    inputs: Tensor
    targets: Tensor
    sparsity: float
    scale: dict[str, float]


def _input_shape(model: nn.Module, fqn: str, module_name: str, given: Optional[Sequence[int]]) -> tuple[int, ...]:
    if given is not None:
        shape = tuple(given)
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ValueError(f"plant(): input_shape={given!r} must be a sequence of positive ints, e.g. (784,)")
        return shape
    first = get_place(model, module_name)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise ValueError(
        f"plant(): the first target {fqn!r} is on a {type(first).__name__}, so the input shape cannot be "
        "inferred; pass input_shape=(C, H, W)"
    )


def plant(
    model: nn.Module,
    *,
    sparsity: float,
    n_samples: int,
    seed: int = 0,
    task: str = "regression",
    scale: Optional[float] = None,
    input_shape: Optional[Sequence[int]] = None,
) -> PlantedTicket:
    """Plant a sparse teacher of known mask in ``model``'s initialization; generate its dataset.

    The construction is described in the module docstring (:mod:`torch_lottery.planted`). This
    **writes into the model** (the planted entries, scaled); everything else keeps the model's
    initialization. The masks and data depend only on ``seed`` and the model's initialization.

    Args:
        model: a freshly initialized model, not yet pruned; its default pruning targets get masks.
        sparsity: fraction of each target's entries *outside* the planted ticket, in [0, 1).
        n_samples: number of examples to generate.
        seed: seed of the masks and the inputs.
        task: ``"regression"`` (targets = the teacher's outputs) or ``"classification"``
            (targets = argmax of the centred outputs).
        scale: factor for the planted entries; ``None`` for ``1 / sqrt(1 - sparsity)``.
        input_shape: shape of one input; inferred from the first target when it is a Linear's.

    Returns:
        :class:`PlantedTicket` with ``masks``, ``inputs``, ``targets``.

    Raises:
        TypeError, ValueError: bad arguments, a model that is already pruned, a sparsity that
            leaves a target no planted entry. The model is left as it was on any failure.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_lottery.planted import plant
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
        >>> planted = plant(model, sparsity=0.75, n_samples=100, seed=1, task="classification")
        >>> int(planted.masks["0.weight"].sum()), planted.inputs.shape, planted.targets.shape
        (50, torch.Size([100, 10]), torch.Size([100]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"plant(): model={type(model).__name__!r} is not an nn.Module; pass the network")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"plant(): sparsity={sparsity!r} is not a fraction in [0, 1); pass e.g. 0.9")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"plant(): n_samples={n_samples!r} must be a positive int")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"plant(): seed={seed!r} must be an int")
    if task not in _TASKS:
        raise ValueError(f"plant(): task={task!r} is not one of {list(_TASKS)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"plant(): scale={scale!r} must be a positive number or None (1 / sqrt(density))")
    net = unwrap_model(model)
    if any(k.endswith("_orig") for k, _ in net.named_parameters()):
        raise ValueError("plant(): the model already has torch.nn.utils.prune masks; plant into a fresh, dense model")
    sparsity = float(sparsity)
    targets = find_targets(net)
    shape = _input_shape(net, targets[0].fqn, targets[0].module_name, input_shape)
    density = 1.0 - sparsity
    factor = float(scale) if scale is not None else 1.0 / math.sqrt(density)

    generator = torch.Generator().manual_seed(seed)
    masks: dict[str, Tensor] = {}
    for t in targets:
        keep = round(density * t.numel)
        if keep < 1:
            raise ValueError(
                f"plant(): sparsity={sparsity!r} leaves {t.fqn!r} ({t.numel} entries) no planted entry; "
                "lower the sparsity or widen the layer"
            )
        flat = torch.zeros(t.numel, dtype=torch.bool)
        flat[torch.randperm(t.numel, generator=generator)[:keep]] = True
        masks[t.fqn] = flat.reshape(t.shape)
    inputs = torch.randn((n_samples, *shape), generator=generator)

    live = named_state_tensors(net)
    weights = {t.fqn: live[t.fqn] for t in targets}
    original = {k: w.detach().clone() for k, w in weights.items()}
    device = next(iter(weights.values())).device
    modes = [(m, m.training) for m in net.modules()]
    try:
        with torch.no_grad():
            for k, w in weights.items():  # the teacher: planted entries only
                w.mul_(masks[k].to(w.device, w.dtype) * factor)
            net.eval()
            outputs = torch.cat([model(inputs[i : i + 4096].to(device)).detach().cpu()
                                 for i in range(0, n_samples, 4096)])
            if task == "classification" and (outputs.dim() != 2 or outputs.shape[1] < 2):
                raise ValueError(
                    f"plant(): task='classification' needs outputs of shape (n, classes >= 2), the model gives "
                    f"{tuple(outputs.shape[1:])} per batch; use task='regression'"
                )
            for k, w in weights.items():  # the initialization with the ticket planted in it
                m = masks[k].to(w.device)
                w.copy_(torch.where(m, original[k] * factor, original[k]))
    except BaseException:
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(original[k])
        raise
    finally:
        for m, mode in modes:
            m.training = mode
    targets_out = (outputs - outputs.mean(dim=0)).argmax(dim=1) if task == "classification" else outputs.float()
    return PlantedTicket(
        masks={k: m.to(device) for k, m in masks.items()},
        inputs=inputs.to(device),
        targets=targets_out.to(device),
        sparsity=sparsity,
        scale={k: factor for k in masks},
    )
