"""The analytic engine: every spike time of a converted network in closed form, batched, float64.

For an integrating layer with the parameters of :mod:`ttfs_brian.neuron` (``alpha``, ``beta``,
``theta``; ``B_in`` = ``(t_min - t_on) / tau_c``, ``B`` its window), times in units of tau_c, and the
values ``x_j`` of its inputs (every projection's spikes arrive at ``t_min - x_j``, delays included;
``x_j`` clamped to ``[0, B_in]`` because integration starts at ``t_on``):

``sparse``:  ``V(t_min) = sum_j W_j x_j``, then the drive ``beta`` (1), so the value is
``B - (theta - V(t_min)) / beta`` (silent when <= 0, clipped when > B).

``exact``:   once all inputs have arrived, ``V(t) = V_end + s (t - t_min)`` with
``V_end = alpha B_in + sum_j J_j x_j`` and ``s = alpha + sum_j J_j`` (padding included), so the
closed-form crossing is ``t_min + (theta - V_end) / s``. The true first crossing can be earlier
(early firing): inside the input window ``V(t_min - u) = V_end - alpha u - P(u) + Q(u)`` with
``P(u) = sum_j J_j^+ min(x_j, u)`` and ``Q(u) = sum_j |J_j^-| min(x_j, u)``, both concave, so
``P(u) >= u P(B_in) / B_in`` (the chord) and ``Q(u) <= min(N u, Q(B_in))`` (``N = sum |J^-|``): ``V``
exceeds ``V_end`` by at most ``Q(B_in) (1 - (alpha + P(B_in) / B_in) / N)^+``. Only neurons whose bound
reaches ``theta`` (and clipped ones) are re-simulated event by event over their sorted input spikes.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import evaluate, perturb
from .coding import encode_inputs, observed, spike_times
from .crossings import first_crossing_times
from .errors import InputError
from .network import Layer, TTFSNetwork
from .neuron import TIME_EPS_MS, Integrator, integrator, not_rising
from .projection import weight_sum
from .result import SimulationResult, build_report, layer_record, named_results, no_flags, note_layer_flags
from .validation import sample_indices, validate_inputs


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def simulate_analytic(net: TTFSNetwork, x: np.ndarray | torch.Tensor, perturbation=None,
                      indices: np.ndarray | None = None) -> SimulationResult:
    """Spike times of every layer, logits and a report of clipping, early firing and lost spikes.

    ``perturbation``: a :class:`~ttfs_brian.perturb.Perturbation` or a list of them; ``indices``: the
    samples' global indices (default ``0 .. N-1``), on which per-sample draws depend.
    """
    started = time.perf_counter()
    data = validate_inputs(net, x)
    perturbations = perturb.as_list(perturbation)
    for p in perturbations:
        if p.kind in perturb.BRIAN2_ONLY:
            raise InputError(f"perturbation {p.kind} has no analytic twin; simulate it with backend='brian2' "
                             "(timing='grid')")
    indices = sample_indices(indices, data.shape[0])
    perturbed = perturb.perturb_network(net, perturbations)
    if any(p.kind in TIMED_KINDS for p in perturbations):
        result = _simulate_timed(perturbed, data, perturbations, indices)
    else:
        result = _simulate_closed_form(perturbed, data)
    result.meta.update(wall_s=time.perf_counter() - started, perturbation=[p.describe() for p in perturbations])
    return result


TIMED_KINDS = ("input_jitter", "spike_jitter", "time_bits", "drop", "leak") + perturb.SYNAPTIC
"""Perturbations that move spikes off their nominal times, or change the neuron or its synapses: solved on arrival
times (:mod:`ttfs_brian.events`)."""


SAMPLE_CHUNK = 128
"""Samples solved at once. Every layer is a handful of elementwise passes over (samples x neurons) tensors,
which stay in cache in chunks of this size: LeNet-5 under spike jitter, 1000 images on one core, 5.1 s at
once, 2.2 s in chunks of 100. Draws depend on the global sample index, so results do not depend on it."""

LayerOutcome = tuple[str, str, np.ndarray, "np.ndarray | None", "np.ndarray | None", int]
"""(layer, kind, spike times, per-sample clipped counts, per-sample early counts, spikes lost) of one chunk."""


def _in_chunks(net: TTFSNetwork, n: int, solve) -> SimulationResult:
    """``solve(chunk)`` -> ``(logits, [LayerOutcome, ...])`` for each slice of :data:`SAMPLE_CHUNK` samples, put
    together into one result (report rows and flags over all ``n`` samples)."""
    parts = [solve(slice(start, min(n, start + SAMPLE_CHUNK))) for start in range(0, n, SAMPLE_CHUNK)]
    records, reasons, times = [], no_flags(n), {}
    for k, (name, kind, *_) in enumerate(parts[0][1]):
        outcomes = [layers[k] for _, layers in parts]
        times[name] = observed(net, net.layers[name], np.concatenate([o[2] for o in outcomes]))
        clipped, early = (None if outcomes[0][i] is None else np.concatenate([np.asarray(o[i]) for o in outcomes])
                          for i in (3, 4))
        rising = int(not_rising(net, net.layers[name]).sum())
        records.append(layer_record(name, kind, times[name], clipped, early, dropped=sum(o[5] for o in outcomes),
                                    not_rising=rising))
        note_layer_flags(reasons, kind, clipped, early, rising)
    logits = np.concatenate([logits for logits, _ in parts])
    return SimulationResult(logits, named_results(net, times), build_report(records), reasons, backend="analytic")


def _simulate_closed_form(net: TTFSNetwork, data: np.ndarray) -> SimulationResult:
    return _in_chunks(net, data.shape[0], lambda chunk: _closed_form(net, data[chunk]))


def _closed_form(net: TTFSNetwork, data: np.ndarray) -> tuple[np.ndarray, list[LayerOutcome]]:
    n = data.shape[0]
    values: dict[str, torch.Tensor] = {}
    outcomes: list[LayerOutcome] = []
    logits = None
    with torch.no_grad():
        for layer in net.layers.values():
            clipped = early = None
            if layer.kind == "input":
                u, clipped_np = encode_inputs(net, data)
                value, clipped = _t(u), torch.as_tensor(clipped_np)
            elif layer.kind == "maxpool":
                proj = layer.projections[0]
                value = evaluate.pool(proj, values[proj.source], layer.arrays["sign"])
            elif layer.kind == "output":
                logits = _output(net, layer, values).reshape(n, -1).numpy()
                continue
            elif net.variant == "exact":
                value, clipped, early = _exact_layer(net, layer, values)
            else:
                value, clipped = _sparse_layer(net, layer, values)
            values[layer.name] = value
            counts = [None if mask is None else mask.reshape(n, -1).sum(dim=1).numpy() for mask in (clipped, early)]
            outcomes.append((layer.name, layer.kind, spike_times(net, layer, value.numpy()), *counts, 0))
    assert logits is not None
    return logits, outcomes


def _simulate_timed(net: TTFSNetwork, data: np.ndarray, perturbations, indices: np.ndarray) -> SimulationResult:
    return _in_chunks(net, data.shape[0], lambda chunk: _timed(net, data[chunk], perturbations, indices[chunk]))


def _timed(net: TTFSNetwork, data: np.ndarray, perturbations, indices: np.ndarray):
    from .events import TimedRun

    n = data.shape[0]
    run = TimedRun(net, perturbations, indices)
    outcomes: list[LayerOutcome] = []
    logits = None
    with torch.no_grad():
        for layer in net.layers.values():
            clipped = early = None
            lost = 0
            if layer.kind == "input":
                (shown, lost), clipped_np = run.input(data)
                clipped = clipped_np.reshape(n, -1).sum(axis=1)
            elif layer.kind == "maxpool":
                shown = run.pool(layer)
            elif layer.kind == "output":
                logits = run.output(layer)
                continue
            else:
                shown, clipped_t, early_t, lost = run.hidden(layer)
                clipped, early = (m.reshape(n, -1).sum(dim=1).numpy() for m in (clipped_t, early_t))
            outcomes.append((layer.name, layer.kind, shown, clipped, early, lost))
    assert logits is not None
    return logits, outcomes


def _inputs(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor], params: Integrator):
    """Each projection with the values arriving through it; a spike before ``t_on`` acts from ``t_on``.

    Only ``exact`` produces values above a window (``sparse`` neurons fire inside theirs).
    """
    out = []
    for proj in layer.projections:
        value = values[proj.source]
        out.append((proj, value.clamp(0.0, params.window_in) if net.variant == "exact" else value))
    return out


def _synaptic(layer: Layer, inputs, weight=None) -> torch.Tensor:
    """``sum_j w_ij x_j`` over every projection (``weight(proj)`` overrides the weights)."""
    total = None
    for proj, x in inputs:
        term = evaluate.apply(proj, x, layer.shape, None if weight is None else weight(proj))
        total = term if total is None else total + term
    return total


def _per_neuron(array: np.ndarray, layer: Layer) -> torch.Tensor:
    return _t(np.asarray(array).reshape(layer.shape))


def _sparse_layer(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor]):
    params = integrator(net, layer)
    b = net.window_length(layer)
    v = _synaptic(layer, _inputs(net, layer, values, params))
    beta, theta = _per_neuron(params.beta, layer), _per_neuron(params.theta, layer)
    # the drive beta from t_min; one <= 0 (alpha mismatch) cannot rise: fires at t_min if above theta, else never
    y = torch.where(beta > 0, b - (theta - v) / torch.where(beta > 0, beta, 1.0),
                    torch.where(v > theta, torch.inf, torch.where(v == theta, b, 0.0)))
    clipped = y > b + TIME_EPS_MS / net.tau_c
    return y.clamp_(0.0, b), clipped


def _exact_layer(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor]):
    params = integrator(net, layer)
    inputs = _inputs(net, layer, values, params)
    b_in, b = params.window_in, net.window_length(layer)
    alpha = _per_neuron(params.alpha, layer)
    threshold = _per_neuron(params.theta, layer)
    synaptic = _synaptic(layer, inputs)  # sum_j J_j x_j = P - Q
    slope = alpha + _t(sum(weight_sum(p, layer.shape) for p in layer.projections))
    margin = threshold - alpha * b_in - synaptic  # theta - V_end
    # a slope <= 0 (a perturbation broke S < 1) never reaches theta after t_min: forced at t_max, unless early
    value = torch.where(slope > 0, b - margin / torch.where(slope > 0, slope, 1.0), 0.0)
    edge = TIME_EPS_MS / net.tau_c  # window edges are compared to this resolution (neuron.TIME_EPS_MS)
    clipped = value > b + edge
    value.clamp_(min=0.0)

    # the bound of the module docstring holds for alpha > 0; a neuron with alpha <= 0 is solved event by event
    candidates = clipped | (alpha <= 0) | _may_fire_early(layer, inputs, synaptic, margin, alpha, b_in)
    early = torch.zeros_like(clipped)
    if candidates.any():
        index = candidates.nonzero(as_tuple=True)
        fans = [evaluate.fan_in(proj, x, layer.shape, index) for proj, x in inputs]
        crossing = first_crossing(torch.cat([f[0] for f in fans], dim=1), torch.cat([f[1] for f in fans], dim=1),
                                  threshold.expand_as(value)[index], b_in, alpha.expand_as(value)[index])
        before = crossing < b_in - edge
        early[index] = before & ~clipped[index]
        value[index] = torch.where(before, b_in + b - crossing, value[index])
    return value, clipped, early


def _may_fire_early(layer: Layer, inputs, synaptic: torch.Tensor, margin: torch.Tensor, alpha: torch.Tensor,
                    b_in: float) -> torch.Tensor:
    """Neurons whose potential may reach ``theta`` inside the input window (the bound of the module docstring).

    The bound needs ``Q``, a second weighted sum; its maximum over the unknown ``Q`` given ``P - Q``,
    ``B_in (N - alpha - (P - Q) / B_in)^2 / (4 N)``, needs none and often rules every neuron out (a first
    layer of non-negative pixels, say), which saves that convolution.
    """
    negative = {id(p): _t(np.minimum(p.weight, 0.0)) for p in layer.projections}
    n_inh = -_t(sum(weight_sum(p, layer.shape, np.minimum(p.weight, 0.0)) for p in layer.projections))
    gap = (n_inh - alpha - synaptic / b_in).clamp_(min=0.0)
    if not (b_in * gap * gap / (4 * n_inh.clamp(min=1e-300)) >= margin).any():
        return torch.zeros_like(margin, dtype=torch.bool)
    inhibition = -_synaptic(layer, inputs, lambda p: negative[id(p)])  # Q
    pull = alpha + (synaptic + inhibition) / b_in  # alpha + P / B_in
    return inhibition * (1.0 - pull / n_inh).clamp_(min=0.0) >= margin


def first_crossing(inputs: torch.Tensor, weights: torch.Tensor, threshold: torch.Tensor, b_in: float,
                   alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """First time in ``[0, b_in]`` (from the integration start) at which ``V >= threshold``; inf if none.

    ``dV/dt = alpha + sum_j w_j H(t - a_j)`` with arrivals ``a_j = b_in - x_j`` (values ``x_j``).
    """
    return first_crossing_times(b_in - inputs, weights, threshold, alpha, b_in)


def _output(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Membrane potentials at the output layer's t_min: the logits."""
    params = integrator(net, layer)
    potential = _synaptic(layer, _inputs(net, layer, values, params))
    if net.variant == "exact":
        return _per_neuron(params.alpha, layer) * params.window_in + potential
    return potential + _t(layer.arrays["bias"])
