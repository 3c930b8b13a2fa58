"""Channel dependencies of any ``torch.fx``-traceable CNN: which conv filters, BatchNorm /
PReLU entries, depthwise filters and consumer inputs must be removed together.

A small version of Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph: Towards
Any Structural Pruning", arXiv 2301.12900). The traced graph is walked once in order and
every tensor is described by its channel dimension as a concatenation of *channel spaces*
(``_Chan``): each Conv / Linear creates a space of its output channels, and

- element-wise activations, dropout, pooling, spatial means, ``flatten(1)`` pass it on;
- BatchNorm, PReLU (``num_parameters > 1``) and depthwise convs (``groups == in == out``)
  own one entry (or filter) per channel of it and pass it on;
- a residual ``add`` / ``mul`` / ``sub`` of two channel tensors *merges* their spaces (all
  producers of a residual stream keep the same channels; a squeeze-excitation block's
  ``scale * x`` ties its expanding conv to ``x``'s channels);
- ``cat`` along the channels concatenates the spaces (consumers see them at offsets);
- a Conv / Linear input consumes them (after a flatten, ``in_features / channels``
  consecutive columns per channel, the ``H*W`` spatial factor).

Anything else that touches a channel tensor (a reshape, indexing, LayerNorm, attention, a
grouped convolution, a parameter added to it, the model's output) *fixes* the spaces it
touches: they are kept whole, with the operation named as the reason. What stays free is a
``Group``: ``n`` channels whose removal shrinks every ``Slice`` in it.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...errors import ConfigError
from ..base import matches
from .groups import Group

__all__ = ["ChannelGroup", "Slice", "channel_graph", "prune_channel_groups"]

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)

_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Identity,
)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCS: set[Any] = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.dropout,
    F.dropout2d,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    F.tanh,
    F.sigmoid,
    torch.clamp,
    operator.neg,
}
#: element-wise functions by name (torchvision's ``stochastic_depth`` is wrapped for fx as a leaf)
_PASS_FUNC_NAMES = {"stochastic_depth"}
_POOL_FUNCS: set[Any] = {
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "tanh",
    "sigmoid",
    "sigmoid_",
    "clamp",
    "clamp_",
    "contiguous",
    "clone",
    "float",
    "neg",
}
_BINARY_FUNCS: set[Any] = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_REDUCE = {torch.mean: "mean", torch.amax: "amax", torch.sum: "sum"}
_REDUCE_METHODS = {"mean", "amax", "sum"}
#: reading a tensor's shape does not touch its channels
_SHAPE_METHODS = {"size", "dim"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """One module's share of a channel group.

    role: ``out`` (a Conv / Linear's output filters: weight rows and bias), ``in`` (a
    consumer's input: weight dim 1), ``depthwise`` (a depthwise conv's filters, in = out),
    ``norm`` (BatchNorm weight, bias and running statistics), ``prelu`` (PReLU slopes).
    offset: the group's first channel in the module's dim; factor: entries per channel
    along that dim (``H*W`` for a Linear after ``flatten(1)``, else 1).
    """

    name: str
    module: nn.Module
    role: str
    offset: int = 0
    factor: int = 1

    @property
    def dim(self) -> int:
        return 1 if self.role == "in" else 0

    def tensors(self) -> list[tuple[str, torch.Tensor, int]]:
        """``(attribute, tensor, dim)`` of every tensor the group's channels index."""
        m = self.module
        names = {
            "out": ("weight", "bias"),
            "in": ("weight",),
            "depthwise": ("weight", "bias"),
            "norm": ("weight", "bias", "running_mean", "running_var"),
            "prelu": ("weight",),
        }[self.role]
        out = []
        for a in names:
            t = getattr(m, a, None)
            if isinstance(t, torch.Tensor):
                out.append((a, t, self.dim if a == "weight" else 0))
        return out


@dataclasses.dataclass
class ChannelGroup(Group):
    """A ``Group`` of channels whose parts sit at offsets (concatenations) and may repeat
    each channel ``factor`` times (flatten): ``slices`` replace ``parts`` for scoring and
    pruning. ``members``: every Conv / Linear whose outputs are these channels."""

    slices: list[Slice] = dataclasses.field(default_factory=list)
    members: tuple[str, ...] = ()

    def _views(self, t: torch.Tensor, s: Slice, d: int) -> torch.Tensor:
        f = s.factor if d == s.dim else 1
        return t.narrow(d, s.offset * f, self.n * f)

    def tensors(self) -> list[tuple[torch.Tensor, int]]:
        """The learnable tensors (weights, biases, norm affine) narrowed to this group."""
        return [
            (self._views(t, s, d), d)
            for s in self.slices
            for a, t, d in s.tensors()
            if a in ("weight", "bias")
        ]

    def raw_tensors(self) -> list[torch.Tensor]:
        return [t for s in self.slices for _, t, _ in s.tensors()]

    def params(self) -> list[nn.Parameter]:
        return [t for t in self.raw_tensors() if isinstance(t, nn.Parameter)]

    def selected(self, include: Sequence[str], exclude: Sequence[str]) -> bool:
        """Selected when include matches one of its producers and exclude none of them."""
        names = self.members or (self.name,)
        return any(matches(n, include, ()) for n in names) and not any(matches(n, exclude, ()) for n in names)

    def grad_parts(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        return [
            (self._views(t, s, d), self._views(t.grad, s, d), d)
            for s in self.slices
            for _, t, d in s.tensors()
            if isinstance(t, nn.Parameter) and t.grad is not None
        ]


# -- the walk ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Chan:
    """A tensor's channel dim: ``segs`` = (space, size) concatenated; ``ndim`` when known;
    ``cdim`` 1 (conv features N,C,...) or -1 (Linear features ..., C); ``flat``: a conv
    feature map flattened from dim 1 (each channel spans a block of the flat dim)."""

    segs: tuple[tuple[int, int], ...]
    ndim: int | None
    cdim: int
    flat: bool = False

    @property
    def size(self) -> int:
        return sum(n for _, n in self.segs)


@dataclasses.dataclass(frozen=True)
class _Param:
    """A ``get_attr`` tensor (a parameter or buffer used directly in the graph)."""

    target: str


class _Spaces:
    """Union-find over channel spaces with their slices and, once fixed, why."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.slices: list[list[Slice]] = []
        self.fixed: list[str | None] = []
        self.producers: list[list[str]] = []

    def new(self, size: int, producer: Slice | None, fixed: str | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.size.append(size)
        self.slices.append([producer] if producer else [])
        self.fixed.append(fixed)
        self.producers.append([producer.name] if producer else [])
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.slices[ra] += self.slices[rb]
        self.producers[ra] += self.producers[rb]
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]

    def add(self, i: int, s: Slice) -> None:
        self.slices[self.find(i)].append(s)

    def fix(self, i: int, reason: str) -> None:
        r = self.find(i)
        if self.fixed[r] is None:
            self.fixed[r] = reason


def _nodes(a: Any) -> Iterator[fx.Node]:
    if isinstance(a, fx.Node):
        yield a
    elif isinstance(a, (list, tuple)):
        for x in a:
            yield from _nodes(x)
    elif isinstance(a, dict):
        for x in a.values():
            yield from _nodes(x)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[str(node.target)]).__name__} '{node.target}'"
    if node.op == "output":
        return "the model's output"
    if node.op == "call_method":
        return f".{node.target}()"
    t = node.target
    return f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', str(t))}".lstrip(".").replace(
        "_operator.", "operator."
    )


def _flatten_args(node: fx.Node, modules: dict[str, nn.Module]) -> bool | None:
    """True for ``flatten(x, 1)`` / ``x.flatten(1)`` / ``nn.Flatten()``; None if not a flatten."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if not isinstance(m, nn.Flatten):
            return None
        return bool(m.start_dim == 1 and m.end_dim == -1)
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return bool(start == 1 and end == -1)
    return None


def _reduced_dims(node: fx.Node) -> tuple[Sequence[int], bool] | None:
    """(dims, keepdim) of ``x.mean((2, 3))`` style reductions, None for anything else."""
    is_fn = node.op == "call_function" and node.target in _REDUCE
    is_m = node.op == "call_method" and node.target in _REDUCE_METHODS
    if not (is_fn or is_m):
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(dims), bool(keep)


class _Walk:
    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.modules = dict(model.named_modules())
        self.gm = gm
        self.sp = _Spaces()
        self.env: dict[fx.Node, _Chan | _Param | None] = {}
        self.calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls[str(node.target)] = self.calls.get(str(node.target), 0) + 1

    # helpers
    def chan(self, a: Any) -> _Chan | None:
        v = self.env.get(a) if isinstance(a, fx.Node) else None
        return v if isinstance(v, _Chan) else None

    def fix_all(self, node: fx.Node, reason: str) -> None:
        for a in _nodes((node.args, node.kwargs)):
            c = self.chan(a)
            if c is not None:
                for s, _ in c.segs:
                    self.sp.fix(s, reason)

    def produce(self, name: str, m: nn.Module, size: int, fixed: str | None = None) -> int:
        return self.sp.new(size, Slice(name, m, "out"), fixed)

    def consume(self, c: _Chan, name: str, m: nn.Module, role: str, factor: int = 1) -> None:
        off = 0
        for s, n in c.segs:
            self.sp.add(s, Slice(name, m, role, off, factor))
            off += n

    # the walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.env[node] = self.step(node)

    def step(self, node: fx.Node) -> _Chan | _Param | None:
        if node.op == "placeholder":
            return None  # the model's input channels are never pruned
        if node.op == "get_attr":
            return _Param(str(node.target))
        if node.op == "output":
            self.fix_all(node, "it reaches the model's output")
            return None
        what = _describe(node, self.modules)
        first = self.chan(node.args[0]) if node.args else None
        others = [a for a in _nodes((node.args[1:], node.kwargs))]
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            name = str(node.target)
            stateful = any(True for _ in m.parameters()) or any(True for _ in m.buffers())
            if self.calls[name] > 1 and stateful:
                reason = f"'{name}' is called {self.calls[name]} times (shared weights)"
                self.fix_all(node, reason)
                if isinstance(m, (*_CONV, nn.Linear)):
                    return self._new_fixed(name, m, node, reason)
                return None
            if others and not isinstance(m, _PASS_MODULES):
                self.fix_all(node, f"it reaches {what} with other tensor inputs")
                return None
            return self.module(node, name, m, first, what)
        if node.op == "call_method" and node.target in _SHAPE_METHODS:
            return None
        if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
            return None
        if (node.op == "call_function" and node.target in _BINARY_FUNCS) or (
            node.op == "call_method" and node.target in _BINARY_METHODS
        ):
            return self.binary(node, what)
        if node.op == "call_function" and node.target in (torch.cat, torch.concat):
            return self.cat(node, what)
        if first is None:
            # an op on tensors without followed channels (shapes, indices, the input, ...)
            self.fix_all(node, f"it reaches {what}")
            return None
        tensor_others = [a for a in others if isinstance(self.env.get(a), (_Chan, _Param))]
        if tensor_others:
            self.fix_all(node, f"it reaches {what} with other tensor inputs")
            return None
        if (
            node.op == "call_function"
            and (node.target in _PASS_FUNCS or getattr(node.target, "__name__", "") in _PASS_FUNC_NAMES)
        ) or (node.op == "call_method" and node.target in _PASS_METHODS):
            return first
        if node.op == "call_function" and node.target in _POOL_FUNCS and not first.flat:
            return first
        flat = _flatten_args(node, self.modules)
        if flat is not None:
            return self.flatten(node, first, flat, what)
        red = _reduced_dims(node)
        if red is not None and first.ndim is not None and not first.flat:
            dims = {d % first.ndim for d in red[0]}
            if first.cdim % first.ndim not in dims:
                ndim = first.ndim if red[1] else first.ndim - len(dims)
                return dataclasses.replace(first, ndim=ndim, cdim=1 if first.cdim == 1 else -1)
        self.fix_all(node, f"it reaches {what}")
        return None

    def _new_fixed(self, name: str, m: nn.Module, node: fx.Node, reason: str) -> _Chan:
        size = int(cast(torch.Tensor, m.weight).shape[0])
        s = self.produce(name, m, size, reason)
        first = self.chan(node.args[0]) if node.args else None
        if isinstance(m, _CONV):
            return _Chan(((s, size),), 4 if isinstance(m, nn.Conv2d) else 3, 1)
        return _Chan(((s, size),), first.ndim if first and not first.flat else None, -1)

    def module(self, node: fx.Node, name: str, m: nn.Module, c: _Chan | None, what: str) -> _Chan | None:
        conv_like = c is not None and not c.flat and (c.cdim == 1 or c.ndim == 2)
        if isinstance(m, _CONV):
            ndim = 4 if isinstance(m, nn.Conv2d) else 3
            if c is not None and (not conv_like or c.size != m.in_channels):
                self.fix_all(node, f"it reaches {what} with a channel count modelpress cannot match")
                c = None
            if m.groups == 1:
                if c is not None:
                    self.consume(c, name, m, "in")
                s = self.produce(name, m, m.out_channels)
                return _Chan(((s, m.out_channels),), ndim, 1)
            if m.groups == m.in_channels == m.out_channels:
                if c is None:  # a depthwise conv over channels that are not followed: kept whole
                    return self._new_fixed(name, m, node, f"it is a depthwise conv over the input of {what}")
                self.consume(c, name, m, "depthwise")
                return dataclasses.replace(c, ndim=ndim)
            reason = f"it is a grouped convolution ({what}, groups={m.groups}) and is kept whole"
            self.fix_all(node, reason)
            return self._new_fixed(name, m, node, reason)
        if isinstance(m, nn.Linear):
            factor = 1
            if c is not None:
                if not (c.cdim == -1 or c.ndim == 2):
                    self.fix_all(node, f"it reaches {what} along a dimension that is not its channels")
                    c = None
                elif c.flat:
                    factor = m.in_features // c.size if m.in_features % c.size == 0 else 0
                elif m.in_features != c.size:
                    factor = 0
                if c is not None and factor == 0:
                    self.fix_all(node, f"it reaches {what} with a feature count modelpress cannot match")
                    c = None
            if c is not None:
                self.consume(c, name, m, "in", factor)
            s = self.produce(name, m, m.out_features)
            return _Chan(
                ((s, m.out_features),), 2 if c is not None and c.flat else (c.ndim if c else None), -1
            )
        if c is None:
            return None  # a layer on tensors whose channels are not followed
        if isinstance(m, _NORM) and conv_like and m.num_features == c.size:
            self.consume(c, name, m, "norm")
            return c
        if isinstance(m, nn.PReLU) and (m.num_parameters == 1 or (conv_like and m.num_parameters == c.size)):
            if m.num_parameters > 1:
                self.consume(c, name, m, "prelu")
            return c
        if isinstance(m, _PASS_MODULES):
            return c
        if isinstance(m, _POOL_MODULES) and not c.flat:
            return c
        flat = _flatten_args(node, self.modules)
        if flat is not None:
            return self.flatten(node, c, flat, what)
        self.fix_all(node, f"it reaches {what}")
        return None

    def flatten(self, node: fx.Node, c: _Chan, ok: bool, what: str) -> _Chan | None:
        if ok and c.cdim == 1 and not c.flat and c.ndim is not None:
            return dataclasses.replace(c, ndim=2, flat=c.ndim > 2)
        if c.flat and ok:
            return c
        self.fix_all(node, f"it reaches {what}")
        return None

    def binary(self, node: fx.Node, what: str) -> _Chan | None:
        ins = list(_nodes((node.args, node.kwargs)))
        vals = [self.env.get(a) for a in ins]
        chans = [v for v in vals if isinstance(v, _Chan)]
        if not chans:
            return None
        if len(ins) == 1:
            return chans[0]  # with a Python number: element-wise
        if len(chans) != len(ins):
            other = next(v for v in vals if not isinstance(v, _Chan))
            kind = (
                f"parameter '{other.target}'" if isinstance(other, _Param) else "a tensor it does not follow"
            )
            self.fix_all(node, f"it reaches {what} with {kind}")
            return None
        a = chans[0]
        for b in chans[1:]:
            same = (
                [n for _, n in a.segs] == [n for _, n in b.segs]
                and a.flat == b.flat
                and (a.cdim == b.cdim or 2 in (a.ndim, b.ndim))
            )
            if not same:
                self.fix_all(node, f"it reaches {what} with channels laid out differently")
                return None
            for (sa, _), (sb, _) in zip(a.segs, b.segs, strict=True):
                self.sp.union(sa, sb)
        ndims = [c.ndim for c in chans if c.ndim is not None]
        return dataclasses.replace(a, ndim=max(ndims) if ndims else None)

    def cat(self, node: fx.Node, what: str) -> _Chan | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        chans = [self.chan(t) for t in tensors] if isinstance(tensors, (list, tuple)) else []
        if chans and all(c is not None for c in chans):
            cs = [c for c in chans if c is not None]
            nd = {c.ndim for c in cs}
            cd = {c.cdim for c in cs}
            ndim = next(iter(nd))
            if len(nd) == 1 and len(cd) == 1 and not any(c.flat for c in cs) and isinstance(dim, int):
                cdim = next(iter(cd))
                along = dim == cdim or (ndim is not None and dim % ndim == cdim % ndim)
                if along:
                    return _Chan(tuple(s for c in cs for s in c.segs), ndim, cdim)
        self.fix_all(node, f"it reaches {what}")
        return None


def channel_graph(
    model: nn.Module, what: str = "prune-channels"
) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The free channel groups of ``model`` (traced with ``torch.fx``) and, for every Conv /
    Linear whose outputs are kept whole, why. A model fx cannot trace (data-dependent control
    flow, ...) is one ``ConfigError`` naming the failure."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # any tracing failure means: a graph modelpress cannot follow
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"{what} traces the model with torch.fx to find which channels depend on each other and "
            f"cannot trace {type(model).__name__} ({type(e).__name__}: {first}); make its forward "
            "free of data-dependent control flow (if / for on tensor values), or use prune-heads / "
            "prune-ffn for transformers"
        ) from None
    walk = _Walk(model, gm)
    walk.run()
    sp = walk.sp
    groups: list[ChannelGroup] = []
    skipped: dict[str, str] = {}
    for r in sorted({sp.find(i) for i in range(len(sp.parent))}):
        producers = sp.producers[r]
        if not producers:
            continue
        reason = sp.fixed[r]
        slices = sp.slices[r]
        if reason is None and not any(s.role == "in" for s in slices):
            reason = "nothing consumes its channels"
        if reason is not None:
            for p in producers:
                skipped[p] = reason
            continue
        head = next(s for s in slices if s.role == "out")
        probe_mod: nn.Module = head.module
        probe_name = head.name
        norm = next((s for s in slices if s.role == "norm" and s.offset == 0), None)
        if norm is not None and cast(Any, norm.module).num_features == sp.size[r]:
            probe_mod, probe_name = norm.module, norm.name
        conv = isinstance(head.module, _CONV)
        groups.append(
            ChannelGroup(
                name=head.name,
                n=sp.size[r],
                parts=[],
                probe=(probe_name, probe_mod, "output", 1 if conv or norm else -1),
                unit="channel" if conv else "neuron",
                slices=slices,
                members=tuple(producers),
            )
        )
    return groups, skipped


# -- pruning -------------------------------------------------------------------------------


def _keep_index(size: int, cuts: list[tuple[int, int, int, Sequence[int]]]) -> torch.Tensor:
    """Indices kept along a dim of ``size`` entries: inside each ``(offset, n, factor,
    keep)`` range only the kept channels' ``factor`` entries, elsewhere every entry."""
    cuts = sorted(cuts)
    idx: list[int] = []
    pos = 0
    for off, n, f, keep in cuts:
        lo, hi = off * f, (off + n) * f
        if lo < pos or hi > size:
            raise ConfigError(f"internal: overlapping channel ranges ({lo}:{hi} after {pos} of {size})")
        idx.extend(range(pos, lo))
        for k in keep:
            idx.extend(range(lo + k * f, lo + (k + 1) * f))
        pos = hi
    idx.extend(range(pos, size))
    return torch.tensor(idx, dtype=torch.long)


def prune_channel_groups(groups: Sequence[ChannelGroup], keeps: Sequence[Sequence[int]]) -> None:
    """Remove every channel of each group not in its ``keep`` (sorted), all groups at once
    (offsets of concatenations refer to the unpruned model), in place."""
    # module id -> (module, {(tensor attribute, dim): cuts in unpruned coordinates}, roles)
    todo: dict[
        int, tuple[nn.Module, dict[tuple[str, int], list[tuple[int, int, int, Sequence[int]]]], set[str]]
    ] = {}
    for g, keep in zip(groups, keeps, strict=True):
        if not keep:
            raise ConfigError(f"pruning would remove every {g.unit} of '{g.name}'; lower the fraction")
        if len(keep) == g.n:
            continue
        for s in g.slices:
            _, cuts, roles = todo.setdefault(id(s.module), (s.module, {}, set()))
            roles.add(s.role)
            for a, _t, d in s.tensors():
                f = s.factor if d == s.dim else 1
                cuts.setdefault((a, d), []).append((s.offset, g.n, f, keep))
    for m, cuts, roles in todo.values():
        for (a, d), cs in cuts.items():
            t = getattr(m, a)
            idx = _keep_index(t.shape[d], cs).to(t.device)
            new = t.detach().index_select(d, idx).clone()
            if isinstance(t, nn.Parameter):
                setattr(m, a, nn.Parameter(new, requires_grad=t.requires_grad))
            else:
                m._buffers[a] = new
        w = cast(torch.Tensor | None, getattr(m, "weight", None))
        if isinstance(m, nn.Linear):
            assert w is not None
            m.out_features, m.in_features = w.shape
        elif isinstance(m, _CONV):
            assert w is not None
            if "depthwise" in roles:
                m.groups = m.in_channels = m.out_channels = w.shape[0]
            else:
                m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, _NORM):
            m.num_features = (w if w is not None else cast(torch.Tensor, m.running_mean)).shape[0]
        elif isinstance(m, nn.PReLU):
            assert w is not None
            m.num_parameters = w.shape[0]
    for g, keep in zip(groups, keeps, strict=True):
        g.n = len(keep)
