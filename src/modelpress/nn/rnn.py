"""A GRU / LSTM / RNN whose weight matrices are compressed formats.

The weights of a recurrent layer are shared across time steps, so one compressed copy of
each ``weight_ih_l{k}`` / ``weight_hh_l{k}`` (``(gates*hidden, in)`` / ``(gates*hidden,
hidden)``) serves the whole sequence: the module decodes them once per call and runs the
functional RNN (the very ``forward`` of ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN``, through
``torch.func.functional_call`` on a parameter-free template), so packed sequences,
unbatched inputs, initial states and projections behave exactly as in torch. Biases, and
any matrix the method left alone, stay float parameters under their torch names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..formats.base import CompressedTensor
from .base import CompressedModule, register_module

__all__ = ["RNN_TYPES", "DecodedRNN", "rnn_matrices"]

RNN_TYPES: dict[str, type[nn.RNNBase]] = {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN": nn.RNN}


def rnn_matrices(rnn: nn.RNNBase) -> list[str]:
    """The names of the weight matrices of ``rnn`` (input, recurrent and projection
    weights of every layer and direction), in torch's flat-weight order."""
    return [n for n in rnn._flat_weights_names if n.startswith("weight_")]


def _args_of(rnn: nn.RNNBase) -> dict[str, Any]:
    mode = type(rnn).__name__ if type(rnn).__name__ in RNN_TYPES else rnn.mode
    args: dict[str, Any] = {
        "mode": mode,
        "input_size": rnn.input_size,
        "hidden_size": rnn.hidden_size,
        "num_layers": rnn.num_layers,
        "bias": rnn.bias,
        "batch_first": rnn.batch_first,
        "dropout": float(rnn.dropout),
        "bidirectional": rnn.bidirectional,
    }
    if mode == "LSTM":
        args["proj_size"] = rnn.proj_size
    if mode == "RNN":
        args["nonlinearity"] = rnn.nonlinearity
    return args


def _template(args: dict[str, Any]) -> nn.RNNBase:
    kwargs = {k: v for k, v in args.items() if k not in ("mode", "compressed")}
    with torch.device("meta"):
        return RNN_TYPES[args["mode"]](**kwargs)


@register_module
class DecodedRNN(CompressedModule):
    """``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` with compressed weight matrices."""

    module_name = "decoded_rnn"

    def __init__(
        self, args: dict[str, Any], formats: dict[str, CompressedTensor], floats: dict[str, torch.Tensor]
    ) -> None:
        super().__init__()
        if args.get("mode") not in RNN_TYPES:
            raise ValueError(f"unknown recurrent layer mode {args.get('mode')!r}")
        self.rnn_args = {k: v for k, v in args.items() if k != "compressed"}
        template = _template(self.rnn_args)
        # not a submodule: its (meta) parameters are replaced at every call
        object.__setattr__(self, "_template", template)
        self.format_attrs = tuple(n for n in template._flat_weights_names if n in formats)  # type: ignore[misc]
        for n in template._flat_weights_names:
            if n in formats:
                setattr(self, n, formats[n])
            else:
                self.register_parameter(n, nn.Parameter(floats[n]))

    @classmethod
    def wrap(cls, rnn: nn.RNNBase, formats: dict[str, CompressedTensor]) -> DecodedRNN:
        floats = {n: getattr(rnn, n).detach().clone() for n in rnn._flat_weights_names if n not in formats}
        return cls(_args_of(rnn), formats, floats)

    def args(self) -> dict[str, Any]:
        return {**self.rnn_args, "compressed": list(self.format_attrs)}

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> DecodedRNN:
        template = _template({k: v for k, v in args.items() if k != "compressed"})
        floats = {
            n: torch.empty(getattr(template, n).shape)
            for n in template._flat_weights_names
            if n not in formats
        }
        return cls(args, formats, floats)

    def forward(self, x: Any, hx: Any = None) -> Any:
        data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
        dtype = data.dtype if data.is_floating_point() else torch.float32
        template: nn.RNNBase = self.__dict__["_template"]
        params: dict[str, torch.Tensor] = {}
        for n in template._flat_weights_names:
            v = getattr(self, n)
            params[n] = v.decode(dtype) if isinstance(v, CompressedTensor) else v
        template.train(self.training)
        return torch.func.functional_call(template, params, (x,) if hx is None else (x, hx))

    def extra_repr(self) -> str:
        a = self.rnn_args
        return f"{a['mode']}({a['input_size']}, {a['hidden_size']}, num_layers={a['num_layers']})"
