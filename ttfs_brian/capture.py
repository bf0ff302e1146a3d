"""Capture a torch model as a ReLU graph with torch.fx.

Any module whose forward is a directed acyclic graph of supported operations works: chains,
residual additions (``+``, ``+=``, ``torch.add``, ``Tensor.add``), channel concatenation
(``torch.cat(dim=1)``) and shortcuts. Shapes come from ``torch.fx.passes.shape_prop.ShapeProp`` on
one calibration batch. An unsupported operation is an error naming its module path (e.g.
``layer1.0.conv2``, or the module whose forward calls the function).
"""
from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import replace
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
    "(eval-mode statistics), ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, "
    "additions followed by a ReLU (+, +=, torch.add, Tensor.add), torch.cat(dim=1), and the functional forms "
    "relu, max_pool2d, avg_pool2d, adaptive_avg_pool2d, flatten, dropout, view/reshape to (N, -1)"
)

_PASSTHROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_DROPOUT_FUNCTIONS = {F.dropout, torch.dropout, F.dropout2d}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
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
            f"torch.fx could not trace {type(model).__name__}: {exc}. The forward must be a graph "
            f"of supported operations without data-dependent control flow. Supported: {SUPPORTED}"
        ) from exc


def capture(model: nn.Module, example: torch.Tensor) -> Graph:
    """The ReLU graph of ``model`` (float64 parameters), shapes from one example batch (of two or more samples).

    Every call site is its own op: a module called twice (one ``self.pool`` after two convolutions)
    gives the ops ``pool`` and ``pool_1``, each with its own spike times.
    """
    warn_if_training(model)
    evaluated = copy.deepcopy(model).eval().to(torch.float64)
    example = example.to(torch.float64)
    try:
        with torch.no_grad():
            evaluated(example)
    except Exception as exc:  # the model's own error, whatever its type
        raise ConversionError(
            f"the model failed on calibration data of shape {tuple(example.shape)} "
            f"({type(exc).__name__}: {_first_line(exc)}); the data must have the model's input shape (N, ...)"
        ) from None
    gm = trace(evaluated)
    ShapeProp(gm).propagate(example)

    names = _call_site_names(gm)
    graph: Graph = []
    value_of: dict[torch.fx.Node, str] = {}  # fx node -> the op whose output equals its value
    result: str | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if graph:
                raise ConversionError("the model has more than one input; only single-input models are supported")
            graph.append(Op("input", "input", (), _shape(node, gm), source=node.name))
            value_of[node] = "input"
        elif node.op == "output":
            if not isinstance(node.args[0], torch.fx.Node) or node.args[0] not in value_of:
                raise ConversionError("the model must return a single tensor (its logits)")
            result = value_of[node.args[0]]
        elif node.op == "get_attr":
            continue  # a parameter used directly: its consumer is reported below
        elif not _is_ignored(node):
            inputs = [n for n in node.all_input_nodes if _is_tensor(n)]
            if any(n not in value_of for n in inputs):
                raise UnsupportedModuleError(f"{_where(node, gm)} uses a parameter or constant tensor directly in "
                                             f"forward; use modules or the functional forms of supported layers. "
                                             f"Supported: {SUPPORTED}")
            shape = _shape(node, gm)
            if node.meta["tensor_meta"].shape[0] != example.shape[0]:
                raise UnsupportedModuleError(f"{_where(node, gm)} changes the batch dimension; operations must act "
                                             "on each sample separately")
            op = _convert_node(node, gm, [value_of[n] for n in inputs], names[node], shape)
            if op is not None:
                op = replace(op, where=_where(node, gm))
            if op is None:  # a pass-through (dropout, identity): the value is its input's
                value_of[node] = value_of[inputs[0]]
            else:
                graph.append(op)
                value_of[node] = op.name
    assert result is not None
    return _ancestors(graph, result)


def _ancestors(graph: Graph, result: str) -> Graph:
    """The ops the result depends on, in topological order (the result last)."""
    by_name = {op.name: op for op in graph}
    needed, stack = set(), [result]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(by_name[name].inputs)
    return [op for op in graph if op.name in needed]


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
    taken = {name for name, _ in gm.named_modules()} | {"input"}
    calls: dict[str, int] = {}
    names: dict[torch.fx.Node, str] = {}
    used: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            target = str(node.target)
            count = calls.get(target, 0)
            calls[target] = count + 1
            name = target if count == 0 else f"{target}_{count}"
        else:
            name = node.name
        base, k = name, 1
        while name in used or (name in taken and name != str(node.target)):
            name, k = f"{base}_{k}", k + 1
        names[node] = name
        used.add(name)
    return names


def _is_tensor(node: torch.fx.Node) -> bool:
    return "tensor_meta" in node.meta


def _is_ignored(node: torch.fx.Node) -> bool:
    """Shape arithmetic (``x.size(0)``, ``x.shape[0]``, products of them): nodes that compute Python
    numbers, not tensors (ShapeProp records no ``tensor_meta`` for them)."""
    return node.op in ("call_method", "call_function") and not _is_tensor(node)


def _shape(node: torch.fx.Node, gm: torch.fx.GraphModule) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise UnsupportedModuleError(f"{_where(node, gm)} does not produce a single tensor")
    return tuple(int(s) for s in meta.shape[1:])


def _where(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """The operation and the module path it belongs to, as a user knows them."""
    if node.op == "call_module":
        return f"module '{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    kind = {"call_method": f"Tensor.{target}", "call_function": f"{target}", "get_attr": f"'{node.target}'"}.get(
        node.op, target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, (_, cls) = list(stack.items())[-1]
        path = path.split("@")[0]
        owner = getattr(cls, "__name__", str(cls))
        return f"{kind} in module '{path}' ({owner})"
    return f"{kind} in the model's forward"


def _convert_node(node: torch.fx.Node, gm: torch.fx.GraphModule, inputs: list[str], name: str,
                  shape: tuple[int, ...]) -> Op | None:
    single = tuple(inputs[:1])
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        builder = _MODULE_BUILDERS.get(type(module))
        if builder is None:
            if isinstance(module, _PASSTHROUGH_MODULES):
                return None
            raise UnsupportedModuleError(
                f"module '{name}' of type {type(module).__name__} is not supported. Supported: {SUPPORTED}")
        op = builder(module, name, shape)
        return Op(op.name, op.kind, single, shape, op.params, op.attrs, (name,), node.name)
    fn = node.target
    if node.op == "call_function":
        if fn in _RELU_FUNCTIONS:
            return Op(name, "relu", single, shape, aliases=(name,), source=node.name)
        if fn in _DROPOUT_FUNCTIONS:
            return None
        if fn in _ADD_FUNCTIONS:
            return _add_op(node, gm, name, inputs, shape)
        if fn is torch.cat:
            return _cat_op(node, gm, name, inputs, shape)
        if fn is torch.flatten:
            if _arg(node, 1, "start_dim", 0) != 1 or _arg(node, 2, "end_dim", -1) != -1:
                raise UnsupportedModuleError(f"{_where(node, gm)} must flatten with start_dim=1, end_dim=-1")
            return Op(name, "flatten", single, shape, aliases=(name,), source=node.name)
        if fn is F.max_pool2d:
            attrs = _pool_attrs(node, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                                {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
            return _maxpool_op(name, attrs, shape, single, node.name)
        if fn is F.avg_pool2d:
            attrs = _pool_attrs(node, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                       "divisor_override"),
                                {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                                 "divisor_override": None})
            return _avgpool_op(name, attrs, shape, single, node.name)
        if fn is F.adaptive_avg_pool2d:
            return Op(name, "adaptive_avgpool", single, shape, {}, {"output_size": tuple(shape[1:])}, (name,),
                      node.name)
    if node.op == "call_method":
        if fn == "relu":
            return Op(name, "relu", single, shape, aliases=(name,), source=node.name)
        if fn == "add":
            return _add_op(node, gm, name, inputs, shape)
        if fn in _FLATTEN_METHODS:
            if len(shape) == 1:
                return Op(name, "flatten", single, shape, aliases=(name,), source=node.name)
            raise UnsupportedModuleError(f"{_where(node, gm)} reshapes to {shape}; only flattening to (N, features) "
                                         "is supported")
    raise UnsupportedModuleError(f"{_where(node, gm)} is not supported. Supported: {SUPPORTED}")


def _add_op(node: torch.fx.Node, gm: torch.fx.GraphModule, name: str, inputs: list[str],
            shape: tuple[int, ...]) -> Op:
    operands = [a for a in node.args if not (isinstance(a, torch.fx.Node) and not _is_tensor(a))]
    if len(inputs) != 2 or len(operands) != 2 or node.kwargs.get("alpha", 1) != 1:
        raise UnsupportedModuleError(f"{_where(node, gm)} adds a constant or a scaled tensor; only the sum of two "
                                     "tensors of the same shape (a residual addition) is supported")
    shapes = {tuple(a.meta["tensor_meta"].shape) for a in node.args if isinstance(a, torch.fx.Node)}
    if len(shapes) != 1:
        raise UnsupportedModuleError(f"{_where(node, gm)} broadcasts tensors of shapes {sorted(shapes)}; a residual "
                                     "addition needs equal shapes")
    return Op(name, "add", tuple(inputs), shape, aliases=(name,), source=node.name)


def _cat_op(node: torch.fx.Node, gm: torch.fx.GraphModule, name: str, inputs: list[str],
            shape: tuple[int, ...]) -> Op:
    dim = _arg(node, 1, "dim", 0)
    if (dim if dim >= 0 else dim + len(shape) + 1) != 1:
        raise UnsupportedModuleError(f"{_where(node, gm)} concatenates along dim={dim}; only channels (dim=1) are "
                                     "supported")
    return Op(name, "cat", tuple(inputs), shape, aliases=(name,), source=node.name)


def _arg(node: torch.fx.Node, index: int, key: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _pool_attrs(node: torch.fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    return {key: _arg(node, i + 1, key, defaults.get(key)) for i, key in enumerate(names)}


def _maxpool_op(name: str, attrs: dict[str, Any], shape: tuple[int, ...], inputs: tuple[str, ...] = (),
                source: str | None = None) -> Op:
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
    return Op(name, "maxpool", inputs, shape, {"sign": np.ones(shape[0])}, clean, (name,), source)


def _avgpool_op(name: str, attrs: dict[str, Any], shape: tuple[int, ...], inputs: tuple[str, ...] = (),
                source: str | None = None) -> Op:
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
    return Op(name, "avgpool", inputs, shape, {}, clean, (name,), source)


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


def _relu(module: nn.ReLU, name: str, shape: tuple[int, ...]) -> Op:
    return Op(name, "relu", (), shape)


def _flatten_module(module: nn.Flatten, name: str, shape: tuple[int, ...]) -> Op:
    if module.start_dim != 1 or module.end_dim != -1:
        raise UnsupportedModuleError(f"Flatten '{name}' must use start_dim=1, end_dim=-1")
    return Op(name, "flatten", (), shape)


def _maxpool_module(module: nn.MaxPool2d, name: str, shape: tuple[int, ...]) -> Op:
    return _maxpool_op(name, {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                              "dilation": module.dilation, "ceil_mode": module.ceil_mode,
                              "return_indices": module.return_indices}, shape)


def _avgpool_module(module: nn.AvgPool2d, name: str, shape: tuple[int, ...]) -> Op:
    return _avgpool_op(name, {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                              "ceil_mode": module.ceil_mode, "count_include_pad": module.count_include_pad,
                              "divisor_override": module.divisor_override}, shape)


def _adaptive_avgpool_module(module: nn.AdaptiveAvgPool2d, name: str, shape: tuple[int, ...]) -> Op:
    return Op(name, "adaptive_avgpool", (), shape, {}, {"output_size": tuple(shape[1:])})


_MODULE_BUILDERS: dict[type, Callable[[Any, str, tuple[int, ...]], Op]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: _relu,
    nn.Flatten: _flatten_module,
    nn.MaxPool2d: _maxpool_module,
    nn.AvgPool2d: _avgpool_module,
    nn.AdaptiveAvgPool2d: _adaptive_avgpool_module,
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
