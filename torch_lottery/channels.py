"""Channel groups: which tensor slices share each prunable channel, traced with Torch-Pruning on a copy.

A *channel group* is every slice of every tensor that must be removed together when one channel
goes: a conv's filter and bias entry, the BatchNorm entries after it, the input columns of every
layer that reads it, and everything tied to it through residual additions, concatenations and
depthwise convolutions. Torch-Pruning's ``DependencyGraph`` finds the coupling by tracing one
forward pass; this module turns its groups into plain data keyed by canonical FQNs
(:class:`ChannelGroup`), which masks, ticket files and the surgery in :mod:`torch_lottery.compact`
all share. The user's model is never traced itself: a copy is (Torch-Pruning's tracer calls
``model.eval()`` and leaves it there).

``torch-pruning`` is an optional dependency (``pip install torch_lottery[structured]``); it is
imported only when a graph is built.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .targets import unwrap_model

__all__ = [
    "ChannelGroup",
    "ChannelSlice",
    "ExampleInputs",
    "call_model",
    "check_plain_model",
    "example_inputs_from_spec",
    "find_channel_groups",
    "input_spec",
    "plain_copy",
]

logger = logging.getLogger(__name__)

ExampleInputs = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]

_ROLES = ("out", "in")


# ---------------------------------------------------------------------- data
def _encode_runs(values: Sequence[int]) -> list[list[int]]:
    """Arithmetic runs ``[start, length, step]`` (``range(0, 512)`` is one run)."""
    runs: list[list[int]] = []
    i, n = 0, len(values)
    while i < n:
        start = values[i]
        if i + 1 == n:
            runs.append([start, 1, 0])
            break
        step = values[i + 1] - start
        j = i + 1
        while j + 1 < n and values[j + 1] - values[j] == step:
            j += 1
        runs.append([start, j - i + 1, step])
        i = j + 1
    return runs


def _decode_runs(runs: Sequence[Sequence[int]]) -> tuple[int, ...]:
    out: list[int] = []
    for start, length, step in runs:
        out.extend(start + k * step for k in range(length))
    return tuple(out)


@dataclass(frozen=True)
class ChannelSlice:
    """The part of one tensor that belongs to one channel group.

    Entry ``positions[i]`` along dimension ``dim`` of tensor ``fqn`` belongs to channel
    ``channels[i]`` of the group; a channel may own several positions (a conv channel feeding a
    flattened Linear owns ``H * W`` input columns).

    Attributes:
        fqn: canonical name of the tensor, e.g. ``"layer1.0.conv1.weight"``.
        dim: the dimension the positions index.
        positions: indices along ``dim``.
        channels: the group channel of each position (same length as ``positions``).
        role: ``"out"`` for the channel's producers and per-channel parameters (filters, biases,
            BatchNorm entries, depthwise filters), ``"in"`` for the input columns of its readers.
    """

    fqn: str
    dim: int
    positions: tuple[int, ...]
    channels: tuple[int, ...]
    role: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "fqn": self.fqn,
            "dim": self.dim,
            "role": self.role,
            "positions": _encode_runs(self.positions),
            "channels": _encode_runs(self.channels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ChannelSlice":
        positions, channels = _decode_runs(data["positions"]), _decode_runs(data["channels"])
        if len(positions) != len(channels) or data["role"] not in _ROLES:
            raise ValueError(f"ChannelSlice.from_dict(): malformed slice for {data.get('fqn')!r}")
        return cls(str(data["fqn"]), int(data["dim"]), positions, channels, str(data["role"]))


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together, and every tensor slice they own.

    Attributes:
        name: FQN of the root module (the first conv or Linear, in ``named_modules()`` order,
            whose output channels are the group's channels), e.g. ``"layer1.0.conv1"``.
        size: number of channels.
        slices: the tensor slices, see :class:`ChannelSlice`.
        reason: why the group is not prunable (``None`` if it is): it feeds the model's output,
            it touches a layer whose channels cannot be removed without changing what the
            remaining ones compute (LayerNorm, MultiheadAttention, grouped convolutions, raw
            Parameters), or it was excluded.
    """

    name: str
    size: int
    slices: tuple[ChannelSlice, ...]
    reason: Optional[str] = None

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def fqns(self) -> tuple[str, ...]:
        """The tensors the group touches, in slice order, each once."""
        return tuple(dict.fromkeys(s.fqn for s in self.slices))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "reason": self.reason,
            "slices": [s.to_dict() for s in self.slices],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ChannelGroup":
        return cls(
            str(data["name"]),
            int(data["size"]),
            tuple(ChannelSlice.from_dict(s) for s in data["slices"]),
            data.get("reason"),
        )


# ---------------------------------------------------------------------- example inputs
def _check_inputs(example_inputs: object, where: str) -> None:
    if isinstance(example_inputs, Tensor):
        return
    if isinstance(example_inputs, Mapping):
        items = list(example_inputs.values())
    elif isinstance(example_inputs, (tuple, list)):
        items = list(example_inputs)
    else:
        raise TypeError(
            f"{where}: example_inputs={type(example_inputs).__name__!r} is not a tensor, a tuple of "
            "tensors or a dict of tensors; pass one batch the model accepts, e.g. torch.randn(1, 3, 32, 32)"
        )
    if not items or not all(isinstance(t, Tensor) for t in items):
        raise TypeError(
            f"{where}: example_inputs must hold tensors only (got "
            f"{[type(t).__name__ for t in items]!r}); pass the tensors the forward takes"
        )


def call_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)`` for a tensor, a sequence or a dict."""
    if isinstance(example_inputs, Tensor):
        return model(example_inputs)
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    return model(*example_inputs)


def input_spec(example_inputs: ExampleInputs) -> dict[str, Any]:
    """The shapes and dtypes of ``example_inputs`` as JSON-able data (no values).

    Example:
        >>> input_spec(torch.zeros(2, 3))
        {'kind': 'tensor', 'keys': None, 'tensors': [{'shape': [2, 3], 'dtype': 'float32'}]}
    """
    _check_inputs(example_inputs, "input_spec()")
    if isinstance(example_inputs, Tensor):
        kind, keys, tensors = "tensor", None, [example_inputs]
    elif isinstance(example_inputs, Mapping):
        kind, keys, tensors = "dict", [str(k) for k in example_inputs], list(example_inputs.values())
    else:
        kind, keys, tensors = "tuple", None, list(example_inputs)
    return {
        "kind": kind,
        "keys": keys,
        "tensors": [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in tensors],
    }


def example_inputs_from_spec(
    spec: Mapping[str, Any], *, seed: int = 0, device: Union[str, torch.device] = "cpu"
) -> ExampleInputs:
    """Inputs of the shapes and dtypes in ``spec``: seeded normal floats, zero integers.

    Example:
        >>> x = example_inputs_from_spec(input_spec(torch.zeros(2, 3)))
        >>> tuple(x.shape), x.dtype
        ((2, 3), torch.float32)
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for item in spec["tensors"]:
        dtype = getattr(torch, str(item["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"example_inputs_from_spec(): unknown dtype {item['dtype']!r} in the input spec")
        shape = tuple(int(s) for s in item["shape"])
        if dtype.is_floating_point or dtype.is_complex:
            t = torch.randn(shape, generator=generator).to(dtype)
        else:
            t = torch.zeros(shape, dtype=dtype)
        tensors.append(t.to(device))
    if spec["kind"] == "tensor":
        return tensors[0]
    if spec["kind"] == "dict":
        return dict(zip(spec["keys"], tensors))
    return tuple(tensors)


# ---------------------------------------------------------------------- copies
def check_plain_model(model: nn.Module, where: str) -> None:
    """Raise if ``model`` still carries torch.nn.utils.prune reparametrizations, naming the layer.

    Structured surgery and tracing need plain Parameters: a pruned ``weight`` is a computed
    attribute (``weight_orig * weight_mask``) that Torch-Pruning cannot slice.
    """
    from torch.nn.utils import prune

    for name, module in unwrap_model(model).named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                fqn = f"{name}.{hook._tensor_name}" if name else hook._tensor_name
                raise ValueError(
                    f"{where}: layer {name or type(model).__name__!r} still carries a torch.nn.utils.prune "
                    f"mask on {fqn!r}; structured channel work needs plain Parameters: pass the unpruned "
                    "model (a fresh instance, or the ticket's compact()) or call prune.remove first"
                )


_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def plain_copy(
    model: nn.Module,
    tensors: Optional[Mapping[str, Tensor]] = None,
    *,
    device: Optional[Union[str, torch.device]] = None,
) -> nn.Module:
    """A deep copy of ``model`` with fresh Parameters and buffers and no module hooks.

    The copy shares no tensor with ``model`` and none of its hooks (forward, backward and
    state_dict hooks are dropped, so nothing registered on the original fires on the copy).
    Each tensor is copied once, so tied weights stay tied.

    Args:
        model: a plain model (no torch.nn.utils.prune masks; see :func:`check_plain_model`).
        tensors: optional FQN -> values to write into the copy instead of the model's own
            (e.g. the rewind point, or masked weights); every key must name a parameter or
            buffer of the same shape.
        device: where the copy lives; the model's own device(s) by default.

    Raises:
        ValueError: prune masks on the model, or a ``tensors`` entry that does not fit.
    """
    model = unwrap_model(model)
    check_plain_model(model, "plain_copy()")
    memo: dict[int, Any] = {}
    for module in model.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if isinstance(hooks, dict):
                memo[id(hooks)] = OrderedDict()
        for local, p in module._parameters.items():
            if p is not None and id(p) not in memo:
                data = p.detach().to(device, copy=True) if device is not None else p.detach().clone()
                memo[id(p)] = nn.Parameter(data, requires_grad=p.requires_grad)
        for local, b in module._buffers.items():
            if b is not None and id(b) not in memo:
                memo[id(b)] = b.detach().to(device, copy=True) if device is not None else b.detach().clone()
    clone = copy.deepcopy(model, memo)
    if tensors:
        live = {**dict(clone.named_parameters()), **dict(clone.named_buffers())}
        bad = [k for k, v in tensors.items() if k not in live or tuple(live[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(
                f"plain_copy(): tensors {bad[:5]!r} do not fit the model (unknown name or other shape); "
                "pass canonical FQNs of its parameters and buffers"
            )
        with torch.no_grad():
            for k, v in tensors.items():
                live[k].copy_(v)
    return clone


# ---------------------------------------------------------------------- discovery
_NORM_OVER_CHANNELS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _module_slices(
    module: nn.Module, prefix: str, role: str, positions: tuple[int, ...], channels: tuple[int, ...]
) -> Union[list[ChannelSlice], str]:
    """The tensor slices a Torch-Pruning group item means for ``module``, or why it is unsupported."""

    def fqn(local: str) -> str:
        return f"{prefix}.{local}" if prefix else local

    def sl(local: str, dim: int, r: str = role) -> ChannelSlice:
        return ChannelSlice(fqn(local), dim, positions, channels, r)

    label = f"{type(module).__name__} {prefix!r}"
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if depthwise:
            out = [sl("weight", 0, "out")]
            return out + ([sl("bias", 0, "out")] if module.bias is not None else [])
        if module.groups != 1:
            return f"it passes through the grouped convolution {label} (groups={module.groups})"
        if role == "out":
            out = [sl("weight", 1 if module.transposed else 0)]
            return out + ([sl("bias", 0)] if module.bias is not None else [])
        return [sl("weight", 0 if module.transposed else 1)]
    if isinstance(module, nn.Linear):
        if role == "out":
            return [sl("weight", 0)] + ([sl("bias", 0)] if module.bias is not None else [])
        return [sl("weight", 1)]
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        if not module.affine:
            return []
        return [sl("weight", 0, "out"), sl("bias", 0, "out")]
    if isinstance(module, nn.PReLU):
        return [sl("weight", 0, "out")] if module.num_parameters > 1 else []
    if isinstance(module, nn.Embedding):
        return [sl("weight", 1, "out")]
    if isinstance(module, _NORM_OVER_CHANNELS):
        return f"{label} normalizes over the channels, so masking one changes the others"
    if isinstance(module, nn.MultiheadAttention):
        return f"it is the embedding dimension of {label} (removing channels changes its head split)"
    return f"Torch-Pruning has no channel rule for {label}"


class _RunTracker:
    """Forward hooks on every module of a copy: which ran, and which was running at an error."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.stack: list[str] = []
        self.ran: set[int] = set()
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, module: nn.Module, _inputs: Any) -> None:
        self.stack.append(self.names[id(module)])
        self.ran.add(id(module))

    def _leave(self, module: nn.Module, _inputs: Any, _output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _import_tp(where: str) -> Any:
    try:
        import torch_pruning as tp
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"{where} needs torch-pruning for channel groups; install it with "
            "`pip install torch_lottery[structured]` (or `pip install torch-pruning`)"
        ) from None
    return tp


def build_graph(model: nn.Module, example_inputs: ExampleInputs, *, where: str) -> tuple[Any, list[Tensor]]:
    """Trace ``model`` (a copy the caller owns) into a Torch-Pruning ``DependencyGraph``.

    Returns the graph and the model's output tensors. Raises ``ValueError`` naming the layer
    where the traced forward failed.
    """
    tp = _import_tp(where)
    _check_inputs(example_inputs, where)
    for p in model.parameters():
        p.requires_grad_(True)  # the tracer follows autograd; frozen layers would vanish from it
    outputs: list[Any] = []

    def forward_fn(m: nn.Module, inputs: Any) -> Any:
        out = call_model(m, inputs)
        outputs.append(out)
        return out

    tracker = _RunTracker(model)
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=forward_fn, verbose=False
            )
    except Exception as exc:
        layer = tracker.stack[-1] if tracker.stack else ""
        raise ValueError(
            f"{where}: Torch-Pruning cannot trace the model: {type(exc).__name__}: {exc} "
            f"(in layer {layer or type(model).__name__!r}); pass example_inputs the forward accepts, "
            "and make the forward differentiable"
        ) from exc
    finally:
        tracker.remove()
    flat = [t for t in tp.utils.flatten_as_list(outputs[-1]) if isinstance(t, Tensor)] if outputs else []
    graph._torch_lottery_ran = tracker.ran  # modules the forward reached
    return graph, flat


def _group_items(graph: Any, group: Any) -> Iterator[tuple[Any, str, tuple[int, ...], tuple[Optional[int], ...]]]:
    for item in group:
        dep = item.dep
        role = "out" if dep.handler.__name__ == "prune_out_channels" else "in"
        yield dep.target, role, tuple(item.idxs), tuple(item.root_idxs)


def find_channel_groups(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    exclude: Sequence[str] = (),
) -> list[ChannelGroup]:
    """Find the channel groups of ``model`` by tracing a copy of it on ``example_inputs``.

    Every conv and Linear whose output channels can be removed roots one group (layers coupled
    through residual additions and concatenations share theirs). Groups that feed the model's
    output, touch a layer whose channels cannot be removed independently (LayerNorm,
    MultiheadAttention, grouped convolutions, raw Parameters such as ViT's class token) or touch
    an ``exclude``d tensor are returned with a ``reason`` and are never pruned.

    Args:
        model: the model; it is not modified (a copy is traced, in eval mode).
        example_inputs: one batch the forward accepts: a tensor, a tuple of tensors (positional
            arguments) or a dict (keyword arguments). Only shapes matter.
        exclude: glob patterns over tensor FQNs; a group touching a matching tensor is kept whole.

    Returns:
        The groups, ordered by their root module in ``named_modules()`` order.

    Raises:
        ModuleNotFoundError: torch-pruning is not installed.
        ValueError: the model carries prune masks, cannot be traced (the error names the layer),
            a layer runs but its output does not reach the model's output through autograd, or
            an ``exclude`` pattern matches no tensor.
        TypeError: ``example_inputs`` of the wrong type.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> groups = find_channel_groups(model, torch.randn(1, 4))
        >>> [(g.name, g.size, g.prunable) for g in groups]
        [('0', 8, True), ('2', 2, False)]
        >>> [(s.fqn, s.dim, s.role) for s in groups[0].slices]
        [('0.weight', 0, 'out'), ('0.bias', 0, 'out'), ('2.weight', 1, 'in')]
    """
    where = "find_channel_groups()"
    if isinstance(exclude, str):
        raise TypeError(f"{where}: exclude={exclude!r} is a string; pass a list of patterns, e.g. [{exclude!r}]")
    exclude = list(exclude)
    model = unwrap_model(model)
    _check_inputs(example_inputs, where)
    clone = plain_copy(model)
    graph, outputs = build_graph(clone, example_inputs, where=where)
    return _groups_of_graph(graph, clone, outputs, exclude, where)


def _groups_of_graph(
    graph: Any, clone: nn.Module, outputs: list[Tensor], exclude: list[str], where: str
) -> list[ChannelGroup]:
    module_names = {id(m): n for n, m in clone.named_modules()}
    order = {n: i for i, n in enumerate(module_names.values())}
    param_names = {id(p): n for n, p in clone.named_parameters()}
    canonical = {  # every place of a tied weight -> its canonical (first) name
        (f"{mn}.{local}" if mn else local): param_names[id(p)]
        for mn, m in clone.named_modules(remove_duplicate=False)
        for local, p in m._parameters.items()
        if p is not None
    }
    output_fns = {t.grad_fn for t in outputs if t.grad_fn is not None}
    all_fqns = [n for n, _ in clone.named_parameters()]
    unused = [p for p in exclude if not any(fnmatch.fnmatchcase(f, p) for f in all_fqns)]
    if unused:
        raise ValueError(f"{where}: exclude={unused!r} match no parameter; valid names include {all_fqns[:8]!r}")

    roots = (nn.modules.conv._ConvNd, nn.Linear)
    ran = getattr(graph, "_torch_lottery_ran", set())
    for m in clone.modules():
        if isinstance(m, roots) and id(m) in ran and m not in graph.module2node:
            raise ValueError(
                f"{where}: layer {module_names[id(m)]!r} runs in the forward but Torch-Pruning's graph cannot "
                "follow it to the output (detached, computed under no_grad, or unused); make it part of "
                "the differentiable forward"
            )

    visited: set[int] = set()
    groups: list[ChannelGroup] = []
    candidates = sorted(
        (m for m in graph.module2node if isinstance(m, roots) and id(m) in module_names),
        key=lambda m: order[module_names[id(m)]],
    )
    for module in candidates:
        if id(module) in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        size = pruner.get_out_channels(module)
        if not size:
            continue
        tp_group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(size)))
        groups.append(
            _translate(graph, tp_group, module, size, module_names, param_names, canonical, output_fns, exclude, visited)
        )
    return groups


def _translate(
    graph: Any,
    tp_group: Any,
    root: nn.Module,
    size: int,
    module_names: Mapping[int, str],
    param_names: Mapping[int, str],
    canonical: Mapping[str, str],
    output_fns: set,
    exclude: list[str],
    visited: set[int],
) -> ChannelGroup:
    reasons: list[str] = []
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    tied: dict[tuple[str, int], dict[str, tuple]] = {}  # (canonical, dim) -> place -> mapping
    tied_places: dict[str, list[str]] = {}
    for place, c in canonical.items():
        tied_places.setdefault(c, []).append(place)
    tied_places = {c: places for c, places in tied_places.items() if len(places) > 1}
    name = module_names[id(root)]
    for node, role, positions, channels in _group_items(graph, tp_group):
        target = node.module
        if role == "out" and node.grad_fn is not None and node.grad_fn in output_fns:
            reasons.append("it feeds the model's output")
        if role == "out" and id(target) in module_names:
            visited.add(id(target))
        if isinstance(target, nn.Parameter):
            reasons.append(f"it reaches the raw Parameter {param_names.get(id(target), '?')!r}")
            continue
        if id(target) not in module_names:
            continue  # an operation without tensors (add, cat, reshape, activation)
        if any(c is None for c in channels):
            reasons.append(f"Torch-Pruning cannot map its channels into {module_names[id(target)]!r}")
            continue
        result = _module_slices(target, module_names[id(target)], role, positions, channels)
        if isinstance(result, str):
            reasons.append(result)
            continue
        for s in result:
            key = (canonical.get(s.fqn, s.fqn), s.dim)
            slot = merged.setdefault(key, {"role": s.role, "pairs": {}})
            for p, c in zip(s.positions, s.channels):
                slot["pairs"][p] = c
            if key[0] in tied_places:
                tied.setdefault(key, {})[s.fqn] = tuple(sorted(zip(s.positions, s.channels)))
    for (fqn, dim), seen in tied.items():
        everywhere = tied_places[fqn]
        if set(seen) != set(everywhere) or len(set(seen.values())) > 1:
            reasons.append(
                f"it touches the tied weight {fqn!r} in only some of its places {everywhere!r} "
                "(Torch-Pruning prunes each place as its own layer)"
            )
    slices = []
    for (fqn, dim), slot in merged.items():
        pairs = sorted(slot["pairs"].items())
        slices.append(ChannelSlice(fqn, dim, tuple(p for p, _ in pairs), tuple(c for _, c in pairs), slot["role"]))
    for s in slices:
        hits = [p for p in exclude if fnmatch.fnmatchcase(s.fqn, p)]
        if hits:
            reasons.append(f"it touches {s.fqn!r}, excluded by {hits[0]!r}")
    if not reasons and size < 2:
        reasons.append("it has a single channel")
    reason = "; ".join(dict.fromkeys(reasons)) or None
    return ChannelGroup(name, size, tuple(slices), reason)
