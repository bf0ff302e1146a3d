"""Capture a torch model as a ReLU graph with torch.fx.

Any module whose forward is a chain of supported operations works, not only ``nn.Sequential``.
Shapes come from ``torch.fx.passes.shape_prop.ShapeProp`` on one calibration sample.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ConversionError, TrainingModeWarning, UnsupportedModuleError
from .graph import Graph, Op

SUPPORTED = (
    "Linear, Conv2d (zero padding; any stride, padding, dilation, groups), BatchNorm1d/2d "
    "(eval-mode statistics), ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout, Identity, and the "
    "functional forms relu, max_pool2d, avg_pool2d, flatten, dropout, view/reshape to (N, -1)"
)

_PASSTHROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_DROPOUT_FUNCTIONS = {F.dropout, torch.dropout, F.dropout2d}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _np(tensor: torch.Tensor | None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if tensor is None:
        return np.zeros(shape)
    return tensor.detach().to("cpu", torch.float64).numpy().copy()


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model``; untraceable control flow gives a ConversionError."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types for untraceable code
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}: {exc}. The forward must be a chain "
            f"of supported operations without data-dependent control flow. Supported: {SUPPORTED}"
        ) from exc


def capture(model: nn.Module, example: torch.Tensor) -> Graph:
    """The ReLU graph of ``model`` (float64 parameters), shapes from one example batch.

    Every call site is its own op: a module called twice (one ``self.pool`` after two convolutions)
    gives the ops ``pool`` and ``pool_1``, each with its own spike times.
    """
    warn_if_training(model)
    evaluated = copy.deepcopy(model).eval().to(torch.float64)
    example = example.to(torch.float64)
    try:
        with torch.no_grad():
            evaluated(example)
    except Exception as exc:
        raise ConversionError(
            f"the model failed on calibration data of shape {tuple(example.shape)} "
            f"({type(exc).__name__}: {_first_line(exc)}); the data must have the model's input shape (N, ...)"
        ) from None
    gm = trace(evaluated)
    ShapeProp(gm).propagate(example)

    graph: Graph = []
    tensor_users = {node: [u for u in node.users if not _is_ignored(u)] for node in gm.graph.nodes}
    names = _call_site_names(gm)
    head: torch.fx.Node | None = None  # the fx node whose value the last op of `graph` equals
    for node in gm.graph.nodes:
        if _is_ignored(node):
            continue
        if node.op == "placeholder":
            if head is not None:
                raise ConversionError("the model has more than one input; only single-input models are supported")
            graph.append(Op("input", "input", (), _shape(node), source=node.name))
            head = node
            continue
        if node.op == "output":
            if node.args[0] is not head:
                raise ConversionError("the model's output must be the last tensor of its chain of operations")
            break
        if node.op == "get_attr":
            raise UnsupportedModuleError(
                f"'{node.target}' is a parameter used directly in forward (get_attr); use modules or the "
                f"functional forms of supported layers. Supported: {SUPPORTED}"
            )
        inputs = [n for n in node.all_input_nodes if not _is_ignored(n)]
        if len(inputs) != 1 or inputs[0] is not head:
            raise UnsupportedModuleError(
                f"'{_label(node, gm)}' combines several tensors (branching, e.g. a residual addition); "
                f"only chains are supported so far. Supported: {SUPPORTED}"
            )
        if len(tensor_users[head]) > 1:
            raise UnsupportedModuleError(
                f"the output of '{head.name}' is used by several operations (branching); only chains are supported"
            )
        op = _convert_node(node, gm, graph[-1].name, names[node])
        if op is not None:
            graph.append(op)
        head = node  # a pass-through (dropout, identity) continues the chain too
    return graph


def warn_if_training(model: nn.Module) -> None:
    """Warn when modules whose output depends on the mode (BatchNorm, Dropout) are in training mode.

    Conversion uses eval-mode semantics (running statistics, no dropout); a model left in training
    mode computes something else, so results would not match what the user runs.
    """
    stateful = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
    training = [name or type(model).__name__ for name, module in model.named_modules()
                if module.training and isinstance(module, stateful)]
    if training:
        shown = ", ".join(training[:5]) + (", ..." if len(training) > 5 else "")
        warnings.warn(
            f"{len(training)} BatchNorm/Dropout module(s) are in training mode ({shown}); the conversion uses "
            "their eval-mode behaviour (running statistics, no dropout), which differs from what the model computes "
            "now. Call model.eval() before converting.", TrainingModeWarning, stacklevel=3)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _call_site_names(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, str]:
    """A unique user-facing name per node: the module path for a module's first call, ``path_1``,
    ``path_2`` ... for its later calls, and the torch.fx node name for functions and methods."""
    taken = {name for name, _ in gm.named_modules()}
    calls: dict[str, int] = {}
    names: dict[torch.fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            target = str(node.target)
            count = calls.get(target, 0)
            calls[target] = count + 1
            name = target if count == 0 else f"{target}_{count}"
        else:
            name = node.name
        base, k = name, 1
        while name in names.values() or (name in taken and name != str(node.target)):
            name, k = f"{base}_{k}", k + 1
        names[node] = name
    return names


def _is_ignored(node: torch.fx.Node) -> bool:
    """Shape arithmetic (``x.size(0)``, ``x.shape[0]``, products of them): nodes that compute Python
    numbers, not tensors (ShapeProp records no ``tensor_meta`` for them)."""
    return node.op in ("call_method", "call_function") and "tensor_meta" not in node.meta


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        raise ConversionError(f"'{node.name}' does not produce a single tensor")
    return tuple(int(s) for s in meta.shape[1:])


def _label(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.name} ({node.op} {target})"


def _convert_node(node: torch.fx.Node, gm: torch.fx.GraphModule, prev: str, name: str) -> Op | None:
    shape = _shape(node)
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        builder = _MODULE_BUILDERS.get(type(module))
        if builder is None:
            if isinstance(module, _PASSTHROUGH_MODULES):
                return None
            raise UnsupportedModuleError(
                f"module '{name}' of type {type(module).__name__} is not supported. Supported: {SUPPORTED}"
            )
        op = builder(module, name, shape)
        return Op(op.name, op.kind, (prev,), shape, op.params, op.attrs, (name,), node.name)
    if node.op == "call_function":
        fn = node.target
        if fn in _RELU_FUNCTIONS:
            return Op(name, "relu", (prev,), shape, aliases=(name,), source=name)
        if fn in _DROPOUT_FUNCTIONS:
            return None
        if fn is torch.flatten:
            return _flatten_op(node, shape, prev, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if fn is F.max_pool2d:
            attrs = _pool_attrs(node, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                                {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
            return _maxpool_op(name, attrs, shape, prev)
        if fn is F.avg_pool2d:
            attrs = _pool_attrs(node, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                       "divisor_override"),
                                {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                                 "divisor_override": None})
            return _avgpool_op(name, attrs, shape, prev)
    if node.op == "call_method":
        if node.target == "relu":
            return Op(name, "relu", (prev,), shape, aliases=(name,), source=name)
        if node.target in _FLATTEN_METHODS:
            if len(shape) == 1:
                return Op(name, "flatten", (prev,), shape, aliases=(name,), source=name)
            raise UnsupportedModuleError(
                f"'{name}' reshapes to {shape}; only flattening to (N, features) is supported"
            )
    raise UnsupportedModuleError(f"operation '{_label(node, gm)}' is not supported. Supported: {SUPPORTED}")


def _arg(node: torch.fx.Node, index: int, key: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _pool_attrs(node: torch.fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    attrs = {key: _arg(node, i + 1, key, defaults.get(key)) for i, key in enumerate(names)}
    return attrs


def _flatten_op(node: torch.fx.Node, shape: tuple[int, ...], prev: str, start: int, end: int) -> Op:
    if start != 1 or end != -1:
        raise UnsupportedModuleError(f"flatten at '{node.name}' must use start_dim=1, end_dim=-1 (got {start}, {end})")
    return Op(node.name, "flatten", (prev,), shape, aliases=(node.name,), source=node.name)


def _maxpool_op(name: str, attrs: dict[str, Any], shape: tuple[int, ...], prev: str) -> Op:
    if attrs.get("return_indices"):
        raise UnsupportedModuleError(f"MaxPool2d '{name}' with return_indices=True is not supported")
    kernel = _pair(attrs["kernel_size"])
    clean = {
        "kernel_size": kernel,
        "stride": _pair(attrs["stride"]) if attrs["stride"] not in (None, ()) else kernel,
        "padding": _pair(attrs["padding"]),
        "dilation": _pair(attrs["dilation"]),
        "ceil_mode": bool(attrs["ceil_mode"]),
    }
    return Op(name, "maxpool", (prev,), shape, {"sign": np.ones(shape[0])}, clean, (name,), name)


def _avgpool_op(name: str, attrs: dict[str, Any], shape: tuple[int, ...], prev: str) -> Op:
    kernel = _pair(attrs["kernel_size"])
    if attrs["ceil_mode"] or not attrs["count_include_pad"]:
        raise UnsupportedModuleError(
            f"AvgPool2d '{name}' needs ceil_mode=False and count_include_pad=True to be a fixed convolution"
        )
    clean = {
        "kernel_size": kernel,
        "stride": _pair(attrs["stride"]) if attrs["stride"] not in (None, ()) else kernel,
        "padding": _pair(attrs["padding"]),
        "divisor_override": attrs["divisor_override"],
    }
    return Op(name, "avgpool", (prev,), shape, {}, clean, (name,), name)


def _linear(module: nn.Linear, name: str, shape: tuple[int, ...]) -> Op:
    return Op(name, "linear", (), shape,
              {"weight": _np(module.weight), "bias": _np(module.bias, (module.out_features,))})


def _conv(module: nn.Conv2d, name: str, shape: tuple[int, ...]) -> Op:
    if module.padding_mode != "zeros":
        raise UnsupportedModuleError(f"Conv2d '{name}' uses padding_mode={module.padding_mode!r}; only 'zeros' is supported")
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:
            pads = module._reversed_padding_repeated_twice
            if pads[0] != pads[1] or pads[2] != pads[3]:
                raise UnsupportedModuleError(f"Conv2d '{name}' with asymmetric padding='same' is not supported")
            padding = (pads[2], pads[0])
    bias = _np(module.bias, (module.out_channels,))
    attrs = {"stride": _pair(module.stride), "padding": _pair(padding), "dilation": _pair(module.dilation),
             "groups": int(module.groups)}
    return Op(name, "conv", (), shape,
              {"weight": _np(module.weight), "bias": np.broadcast_to(bias[:, None, None], shape).copy()}, attrs)


def _batchnorm(module: nn.modules.batchnorm._BatchNorm, name: str, shape: tuple[int, ...]) -> Op:
    if module.running_mean is None or module.running_var is None:
        raise UnsupportedModuleError(
            f"BatchNorm '{name}' has track_running_stats=False; conversion needs fixed (eval-mode) statistics"
        )
    if isinstance(module, nn.BatchNorm1d) and len(shape) != 1:
        raise UnsupportedModuleError(f"BatchNorm1d '{name}' on input of shape {shape}; only (N, features) is supported")
    gamma = _np(module.weight) if module.affine else np.ones(module.num_features)
    beta = _np(module.bias) if module.affine else np.zeros(module.num_features)
    scale = gamma / np.sqrt(_np(module.running_var) + module.eps)
    shift = beta - _np(module.running_mean) * scale
    expand = (slice(None),) + (None,) * (len(shape) - 1)
    return Op(name, "affine", (), shape, {"scale": np.broadcast_to(scale[expand], shape).copy(),
                                          "shift": np.broadcast_to(shift[expand], shape).copy()})


def _relu(module: nn.Module, name: str, shape: tuple[int, ...]) -> Op:
    return Op(name, "relu", (), shape)


def _flatten_module(module: nn.Flatten, name: str, shape: tuple[int, ...]) -> Op:
    if module.start_dim != 1 or module.end_dim != -1:
        raise UnsupportedModuleError(f"Flatten '{name}' must use start_dim=1, end_dim=-1")
    return Op(name, "flatten", (), shape)


def _maxpool_module(module: nn.MaxPool2d, name: str, shape: tuple[int, ...]) -> Op:
    return _maxpool_op(name, {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                              "dilation": module.dilation, "ceil_mode": module.ceil_mode,
                              "return_indices": module.return_indices}, shape, "")


def _avgpool_module(module: nn.AvgPool2d, name: str, shape: tuple[int, ...]) -> Op:
    return _avgpool_op(name, {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                              "ceil_mode": module.ceil_mode, "count_include_pad": module.count_include_pad,
                              "divisor_override": module.divisor_override}, shape, "")


_MODULE_BUILDERS: dict[type, Callable[[Any, str, tuple[int, ...]], Op]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: _relu,
    nn.Flatten: _flatten_module,
    nn.MaxPool2d: _maxpool_module,
    nn.AvgPool2d: _avgpool_module,
}


class ActivationRecorder(torch.fx.Interpreter):
    """Runs a traced model and keeps the outputs of the named fx nodes (reference activations)."""

    def __init__(self, gm: torch.fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted = wanted
        self.recorded: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:
            self.recorded[n.name] = out.detach()
        return out


def record_activations(model: nn.Module, x: torch.Tensor, nodes: set[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Float64 forward pass of ``model``; returns its output and the outputs of the fx nodes ``nodes``."""
    gm = trace(copy.deepcopy(model).eval().to(torch.float64))
    recorder = ActivationRecorder(gm, nodes)
    with torch.no_grad():
        out = recorder.run(x.to(torch.float64))
    return out, recorder.recorded
