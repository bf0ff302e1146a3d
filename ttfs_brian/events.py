"""The analytic engine on arrival times: perturbed runs, where spikes arrive off their nominal times.

Used by :func:`ttfs_brian.analytic.simulate_analytic` when spikes are jittered, quantized or dropped
(:mod:`ttfs_brian.perturb`) or the membrane leaks. Every layer works on the arrival times ``a_j`` of
its inputs (departure plus the projection's delay; ``inf`` for a spike that never arrives), with the
neuron of :mod:`ttfs_brian.neuron` (``v(t_on) = 0``; an arrival before ``t_on`` acts from ``t_on``):

``exact``   once every input has arrived and the padding drive is on (``t >= T``), ``v`` is the line
            ``(alpha (t - t_on) + sum_j J_j (t - a_j) + beta (t - t_min)) / tau_c``; its crossing
            ``t* = (theta tau_c + alpha t_on + sum_j J_j a_j + beta t_min) / s`` (``s = alpha + sum_j J_j +
            beta``) is the spike time when ``t* >= T`` and ``v`` stays below ``theta`` before ``T``, which
            holds when ``v(T) + N_y (1 - alpha / N)^+ < theta`` (``N`` the inhibitory weight, ``N_y`` the
            inhibition that has not acted by ``T``; the bound of :mod:`ttfs_brian.analytic` taken at ``T``).
            Every other neuron is solved event by event over its sorted arrivals. Forced at ``t_max``.
``sparse``  ``v(t_min) = sum_j W_j (t_min - a_j)^+ / tau_c`` (later arrivals are gated off), then the drive
            ``beta``: the spike is at ``t_min + (theta - v(t_min)) tau_c / beta`` if before ``t_max``.
``output``  ``v(t_min(out))``, from the same sums.

With a leak (``tau_m``), ``v`` relaxes towards ``rate tau_m / tau_c`` between events, so every neuron is
solved event by event, segment by segment in closed form (SPEC section 8).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import evaluate
from .coding import encode_inputs, spike_times
from .network import Layer, TTFSNetwork
from .neuron import TIME_EPS_MS, Integrator, integrator
from .perturb import Perturbation, departure, find, perturb_network
from .projection import Projection, pad_sum, pair, weight_sum

EPS_MS = TIME_EPS_MS
"""Times closer than this (ms) count as equal: an event and a crossing, a crossing and a window edge."""


def _t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


class TimedRun:
    """One batch through the network on arrival times; per layer: spike times, departures and counts."""

    def __init__(self, net: TTFSNetwork, perturbations: Sequence[Perturbation], indices: np.ndarray):
        self.net = net
        self.perturbations = perturbations
        self.indices = indices
        leak = find(perturbations, "leak")
        self.tau_m = None if leak is None else leak.level
        self.departures: dict[str, torch.Tensor] = {}  # ms, inf = never arrives anywhere

    def input(self, data: np.ndarray):
        u, clipped = encode_inputs(self.net, data)
        times = spike_times(self.net, self.net.input, u)
        return self._depart(self.net.input, times), clipped

    def _depart(self, layer: Layer, times: np.ndarray) -> tuple[np.ndarray, int]:
        """Record the departures of ``layer``; returns the spike times it shows (inputs: after jitter and drops,
        hidden neurons: their own threshold crossings) and the number of spikes lost."""
        rule = departure(self.net, layer, self.perturbations, self.indices)
        leaving = times if rule is None else rule.apply(times)
        lost = int(np.count_nonzero(~np.isnan(times) & np.isnan(leaving)))
        self.departures[layer.name] = torch.as_tensor(np.nan_to_num(leaving, nan=np.inf))
        shown = leaving if layer.kind == "input" else times
        return shown, lost

    def arrivals(self, proj: Projection) -> torch.Tensor:
        return self.departures[proj.source] + proj.delay

    # ------------------------------------------------------------------ layers
    def pool(self, layer: Layer) -> np.ndarray:
        proj = layer.projections[0]
        arrivals = self.arrivals(proj)
        attrs = proj.pool_attrs()
        earliest = -F.max_pool2d(-arrivals, **attrs)
        latest = F.max_pool2d(arrivals, **attrs)
        sign = _t(layer.arrays["sign"]).reshape(1, -1, 1, 1)
        times = torch.where(sign > 0, earliest, latest)
        self.departures[layer.name] = times
        return torch.where(torch.isinf(times), torch.nan, times).numpy()

    def hidden(self, layer: Layer):
        """Spike times, per-neuron clipped and early masks, spikes lost."""
        params = integrator(self.net, layer)
        if self.tau_m is not None:
            times, clipped, early = self._leaky(layer, params)
        elif self.net.variant == "exact":
            times, clipped, early = self._exact(layer, params)
        else:
            times, clipped, early = self._sparse(layer, params)
        shown, lost = self._depart(layer, times.numpy())
        return shown, clipped, early, lost

    def output(self, layer: Layer) -> np.ndarray:
        params = integrator(self.net, layer)
        n = self._batch()
        if self.tau_m is not None:
            v = self._leaky_potential(layer, params, params.t_off)
        else:
            v = _per_neuron(params.alpha, layer) * (params.t_off - params.t_on) / params.tau_c
            for proj in layer.projections:
                arrived = self._clamped(proj, params)
                v = v + evaluate.apply(proj, (params.t_off - arrived).clamp(min=0.0).nan_to_num(posinf=0.0),
                                       layer.shape) / params.tau_c
        logits = v.reshape(n, -1)
        if self.net.variant == "sparse":
            logits = logits + _t(layer.arrays["bias"]).reshape(1, -1)
        return logits.numpy()

    def _batch(self) -> int:
        return next(iter(self.departures.values())).shape[0]

    def _clamped(self, proj: Projection, params: Integrator) -> torch.Tensor:
        """Arrival times, acting from ``t_on`` at the earliest (inf: never)."""
        return self.arrivals(proj).clamp(min=params.t_on)

    def _exact(self, layer: Layer, params: Integrator):
        n, tau = self._batch(), params.tau_c
        alpha, beta, theta = (_per_neuron(a, layer).expand(n, *layer.shape) for a in
                              (params.alpha, params.beta, params.theta))
        weighted = torch.zeros(n, *layer.shape, dtype=torch.float64)  # sum_j J_j a_j over arrivals
        total = torch.zeros_like(weighted)  # sum_j J_j over arrivals
        inhibition = torch.zeros_like(weighted)  # sum_j |J_j^-| over arrivals
        inhibition_at = torch.zeros_like(weighted)  # sum_j |J_j^-| a_j
        latest = torch.full_like(weighted, params.t_late)
        for proj in layer.projections:
            arrived = self._clamped(proj, params)
            finite = torch.isfinite(arrived)
            mask = finite.to(torch.float64)
            at = arrived.nan_to_num(posinf=0.0) * mask
            negative = torch.as_tensor(np.minimum(proj.weight, 0.0))
            if finite.all():  # every input arrives: the sums over arrivals are the weight sums (padding apart)
                total += self._unpadded_sum(layer, proj, proj.weight)
                inhibition -= self._unpadded_sum(layer, proj, negative.numpy())
            else:
                total += evaluate.apply(proj, mask, layer.shape)
                inhibition -= evaluate.apply(proj, mask, layer.shape, negative)
            weighted += evaluate.apply(proj, at, layer.shape)
            inhibition_at -= evaluate.apply(proj, at, layer.shape, negative)
            latest = torch.maximum(latest, _latest(proj, torch.where(finite, arrived, -torch.inf), layer.shape))
        slope = alpha + total + beta
        cross = (theta * tau + alpha * params.t_on + weighted + beta * params.t_late) / slope
        cross = torch.where(slope > 0, cross, torch.inf)
        v_latest = (slope * latest - alpha * params.t_on - weighted - beta * params.t_late) / tau
        beta_neg = (-beta).clamp(min=0.0)
        n_inh = inhibition + beta_neg
        reach = (inhibition * latest - inhibition_at + beta_neg * (latest - params.t_late)) / tau
        rise = reach * (1.0 - alpha / n_inh.clamp(min=1e-300)).clamp(min=0.0)
        # the bound assumes alpha > 0: a neuron with alpha <= 0 (a large alpha mismatch) is solved event by event
        candidates = (cross < latest) | (v_latest + rise >= theta) | (theta <= 0) | (alpha <= 0)
        times = cross.clamp(max=params.t_max)
        if candidates.any():
            index = candidates.nonzero(as_tuple=True)
            arrivals, weights = self._fan_in(layer, params, index)
            arrivals = torch.cat([arrivals, torch.full((len(index[0]), 1), params.t_late - params.t_on, dtype=torch.float64)], dim=1)
            weights = torch.cat([weights, beta[index][:, None]], dim=1)
            first = first_crossing_at(arrivals, weights / tau, theta[index], alpha[index] / tau,
                                      params.t_max - params.t_on) + params.t_on
            times[index] = first.clamp(max=params.t_max)
        # clipped: the line after the last arrival meets theta before t_min, where the neuron did cross (an input
        # jittered past t_min can steepen that line without the neuron crossing any earlier); early: the others
        before = times < layer.t_min - EPS_MS
        clipped = (cross < layer.t_min - EPS_MS) & before
        early = before & ~clipped
        return times, clipped, early

    def _unpadded_sum(self, layer: Layer, proj: Projection, weight: np.ndarray) -> torch.Tensor:
        """Per target neuron, the weights of its real (not zero-padded) inputs."""
        source = self.net.layers[proj.source].shape
        return _t(weight_sum(proj, layer.shape, weight) - pad_sum(proj, source, layer.shape, weight))

    def _fan_in(self, layer: Layer, params: Integrator, index) -> tuple[torch.Tensor, torch.Tensor]:
        """Arrival times (relative to ``t_on``; inf: never) and weights of the neurons ``index``."""
        times, weights = [], []
        for proj in layer.projections:
            # shifted to >= 1 (arrivals act from t_on), so that a zero-padded tap, which reads 0, stands apart
            shifted, w = evaluate.fan_in(proj, self._clamped(proj, params) - (params.t_on - 1.0), layer.shape, index)
            present = torch.isfinite(shifted) & (shifted >= 0.5)  # not padding, not a lost spike
            times.append(torch.where(present, shifted - 1.0, torch.inf))
            weights.append(torch.where(present, w, 0.0))
        return torch.cat(times, dim=1), torch.cat(weights, dim=1)

    def _sparse(self, layer: Layer, params: Integrator):
        tau = params.tau_c
        v = torch.zeros(self._batch(), *layer.shape, dtype=torch.float64)
        for proj in layer.projections:
            before = (params.t_off - self._clamped(proj, params)).clamp(min=0.0).nan_to_num(posinf=0.0)
            v = v + evaluate.apply(proj, before, layer.shape) / tau
        beta, theta = _per_neuron(params.beta, layer), _per_neuron(params.theta, layer)
        cross = params.t_late + (theta - v) * tau / torch.where(beta > 0, beta, 1.0)
        # a drive <= 0 cannot rise: fires at t_min if above theta there, else never
        cross = torch.where(beta > 0, cross, torch.where(v >= theta, torch.where(v > theta, -torch.inf, params.t_late),
                                                         torch.inf))
        clipped = cross < layer.t_min - EPS_MS
        times = cross.clamp(min=layer.t_min)
        times = torch.where(times < layer.t_max - EPS_MS, times, torch.nan)
        return times, clipped, torch.zeros_like(clipped)

    # ------------------------------------------------------------------ leak
    def _leaky(self, layer: Layer, params: Integrator):
        index = tuple(torch.as_tensor(i) for i in np.indices((self._batch(), *layer.shape)).reshape(len(layer.shape) + 1, -1))
        arrivals, weights = self._fan_in(layer, params, index)
        k = arrivals.shape[0]
        late = torch.full((k, 1), params.t_late - params.t_on, dtype=torch.float64)
        stop = torch.full((k, 1), params.t_off - params.t_on, dtype=torch.float64)
        beta = _t(params.beta).repeat(self._batch())
        alpha = _t(params.alpha).repeat(self._batch())
        theta = _t(params.theta).repeat(self._batch())
        fire_from = params.t_fire - params.t_on
        first = leaky_first_crossing(arrivals, weights, alpha, beta, late[:, 0], stop[:, 0], theta,
                                     fire_from, params.t_max - params.t_on, params.tau_c, self.tau_m)
        times = (first + params.t_on).reshape(self._batch(), *layer.shape)
        if self.net.variant == "exact":
            times = times.clamp(max=params.t_max)
        else:
            times = torch.where(times < layer.t_max - EPS_MS, times, torch.nan)
        if self.net.variant == "exact":
            clipped = torch.zeros(times.shape, dtype=torch.bool)
            early = times < layer.t_min - EPS_MS
        else:  # above the window: the potential had reached theta by t_min
            clipped = times <= layer.t_min + EPS_MS
            early = torch.zeros_like(clipped)
        return times, clipped, early

    def _leaky_potential(self, layer: Layer, params: Integrator, at: float) -> torch.Tensor:
        n = self._batch()
        index = tuple(torch.as_tensor(i) for i in np.indices((n, *layer.shape)).reshape(len(layer.shape) + 1, -1))
        arrivals, weights = self._fan_in(layer, params, index)
        k = arrivals.shape[0]
        alpha = _t(params.alpha).repeat(n)
        v = leaky_potential(arrivals, weights, alpha, torch.zeros(k, dtype=torch.float64),
                            torch.full((k,), np.inf, dtype=torch.float64),
                            torch.full((k,), params.t_off - params.t_on, dtype=torch.float64),
                            at - params.t_on, params.tau_c, self.tau_m)
        return v.reshape(n, *layer.shape)


def _per_neuron(array: np.ndarray, layer: Layer) -> torch.Tensor:
    return _t(np.asarray(array).reshape(layer.shape))


def _latest(proj: Projection, arrivals: torch.Tensor, target_shape: tuple[int, ...]) -> torch.Tensor:
    """Per target neuron, an upper bound on the latest arrival among its inputs (-inf: none)."""
    n = arrivals.shape[0]
    if proj.kind == "dense":
        return arrivals.reshape(n, -1).max(dim=1).values.reshape(n, *([1] * len(target_shape)))
    if proj.kind == "identity":
        start = int(proj.attrs.get("offset", 0))
        return arrivals.reshape(n, -1)[:, start:start + int(np.prod(target_shape))].reshape(n, *target_shape)
    attrs = proj.conv_attrs()
    pad_h, pad_w = pair(attrs["padding"])
    # padded explicitly: max_pool2d refuses a padding above half the kernel, which a convolution may have
    latest = F.pad(arrivals.max(dim=1, keepdim=True).values, (pad_w, pad_w, pad_h, pad_h), value=-torch.inf)
    return F.max_pool2d(latest, tuple(proj.weight.shape[2:]), stride=attrs["stride"], dilation=attrs["dilation"])


def first_crossing_at(arrivals: torch.Tensor, rates: torch.Tensor, threshold: torch.Tensor, alpha: torch.Tensor,
                      end: float) -> torch.Tensor:
    """:func:`ttfs_brian.analytic.first_crossing_times` with per-neuron ``alpha`` (rates already per ms)."""
    from .analytic import first_crossing_times

    return first_crossing_times(arrivals, rates, threshold, alpha, end)


def _segments(arrivals, weights, alpha, beta, late, stop):
    """Sorted event times (relative to ``t_on``) and the rate ``(alpha + I) f_in + beta f_late`` after each."""
    k = arrivals.shape[0]
    inside = arrivals < stop[:, None]  # arrivals after the input gate closes change nothing
    w = torch.where(inside, weights, 0.0)
    times = torch.cat([arrivals.clamp(min=0.0), late[:, None], stop[:, None]], dim=1)
    stop_change = -(alpha + w.sum(dim=1))  # the gate closes: the input current stops
    changes = torch.cat([w, beta[:, None], stop_change[:, None]], dim=1)
    times = torch.where(torch.isfinite(times), times, torch.inf)
    order = torch.argsort(times, dim=1, stable=True)
    times = torch.gather(times, 1, order)
    changes = torch.gather(changes, 1, order)
    starts = torch.cat([torch.zeros(k, 1, dtype=torch.float64), times], dim=1)
    rates = torch.cat([torch.zeros(k, 1, dtype=torch.float64), torch.cumsum(changes, dim=1)], dim=1) + alpha[:, None]
    return starts, rates


def _relaxed(v, rate, span, inv_tau):
    """``v`` after ``span`` ms of ``dv/dt = rate - v inv_tau`` (rate per ms): ``v e^{-span/tau} + rate span
    exprel(-span/tau)``, exact and stable for any ``tau``, infinite included (``inv_tau = 0``)."""
    x = -span * inv_tau
    exprel = torch.where(x == 0, torch.ones_like(x), torch.special.expm1(x) / torch.where(x == 0, 1.0, x))
    return v * torch.exp(x) + rate * span * exprel


def _log1p_ratio(y):
    """``log1p(y) / y`` (1 at ``y = 0``)."""
    return torch.where(y == 0, torch.ones_like(y), torch.log1p(y) / torch.where(y == 0, 1.0, y))


def leaky_first_crossing(arrivals, weights, alpha, beta, late, stop, theta, fire_from: float, end: float,
                         tau_c: float, tau_m: float) -> torch.Tensor:
    """First ``t`` in ``[fire_from, end]`` with ``v(t) >= theta`` for ``dv/dt = rate(t) / tau_c - v / tau_m``
    (``rate`` piecewise constant, :func:`_segments`), ``v(0) = 0``; inf if none. Between events ``v``
    relaxes exponentially (:func:`_relaxed`); a crossing inside a segment starting at ``a`` with ``v_a`` is at
    ``a + tau_m ln((v_inf - v_a) / (v_inf - theta))``, written with ``log1p`` so that ``tau_m = inf`` is the
    line. Loops over event slots, vectorised over neurons."""
    starts, rates = _segments(arrivals, weights, alpha, beta, late, stop)
    inv = 0.0 if math.isinf(tau_m) else 1.0 / tau_m
    k, slots = starts.shape
    v = torch.zeros(k, dtype=torch.float64)
    found = torch.full((k,), torch.inf, dtype=torch.float64)
    for slot in range(slots):
        a = starts[:, slot].clamp(max=end)
        b = (starts[:, slot + 1] if slot + 1 < slots else torch.full((k,), end, dtype=torch.float64)).clamp(max=end)
        lo = torch.maximum(a, torch.as_tensor(fire_from, dtype=torch.float64))
        rate = rates[:, slot] / tau_c
        v_lo = _relaxed(v, rate, (lo - a).clamp(min=0.0), inv)
        open_ = (lo <= b) & torch.isinf(found)
        found = torch.where(open_ & (v_lo >= theta), lo, found)
        pull = rate - theta * inv  # the slope v would have at theta: positive when v can still reach it
        rising = open_ & (pull > 0) & (v_lo < theta)
        y = torch.where(rising, (theta - v_lo) * inv / torch.where(rising, pull, 1.0), 0.0)
        when = lo + torch.where(rising, (theta - v_lo) / torch.where(rising, pull, 1.0), 0.0) * _log1p_ratio(y)
        found = torch.where(rising & (when <= b), when, found)
        v = _relaxed(v, rate, (b - a).clamp(min=0.0), inv)
    return found


def leaky_potential(arrivals, weights, alpha, beta, late, stop, at: float, tau_c: float, tau_m: float) -> torch.Tensor:
    """``v(at)`` of the leaky integrator (no threshold), event by event as :func:`leaky_first_crossing`."""
    starts, rates = _segments(arrivals, weights, alpha, beta, late, stop)
    inv = 0.0 if math.isinf(tau_m) else 1.0 / tau_m
    k, slots = starts.shape
    v = torch.zeros(k, dtype=torch.float64)
    for slot in range(slots):
        a = starts[:, slot].clamp(max=at)
        b = (starts[:, slot + 1] if slot + 1 < slots else torch.full((k,), at, dtype=torch.float64)).clamp(max=at)
        v = _relaxed(v, rates[:, slot] / tau_c, (b - a).clamp(min=0.0), inv)
    return v


def inputs_in_crossing_step(net: TTFSNetwork, result, perturbations: Sequence[Perturbation], indices: np.ndarray,
                            dt: float) -> np.ndarray:
    """Per sample, the hidden neurons of ``result`` (an analytic result of ``net`` under ``perturbations``) that
    receive an input after their threshold crossing but before the end of the step of ``dt`` ms it falls in.

    Brian2's precise timing (:mod:`ttfs_brian.brian.equations`) tests the threshold on ``v`` at the end of a
    step and goes back along the slope it has there, so it reproduces the analytic crossing exactly unless an
    input arrives between the crossing and that step's end (an ``exact`` neuron that fires while its inputs
    still arrive: early firing, a clipped value, or a spike jittered late). A sample without such a neuron is
    one on which both engines must agree to rounding, flagged or not. ``sparse`` neurons cross only after
    their input gate has closed, so they never count.
    """
    perturbed = perturb_network(net, perturbations)
    n = len(result.logits)
    counts = np.zeros(n, dtype=np.int64)
    if perturbed.variant != "exact":
        return counts
    run = TimedRun(perturbed, perturbations, indices)
    for layer in perturbed.layers.values():
        if layer.kind == "output":
            continue
        times = result.spike_times[layer.name]
        if layer.kind in ("neuron", "input"):
            rule = None if layer.kind == "input" else departure(perturbed, layer, perturbations, indices)
            times = times if rule is None else rule.apply(times)  # an input's shown times are its departures
        run.departures[layer.name] = _t(np.nan_to_num(times, nan=np.inf))
        if layer.kind != "neuron":
            continue
        params = integrator(perturbed, layer)
        crossing = _t(result.spike_times[layer.name])
        step_end = torch.ceil(crossing / dt - 1e-9) * dt
        latest = torch.full_like(crossing, -torch.inf)
        for proj in layer.projections:
            arrived = run._clamped(proj, params)
            latest = torch.maximum(latest, _latest(proj, torch.where(torch.isfinite(arrived), arrived, -torch.inf),
                                                   layer.shape))
        candidates = (latest > crossing + EPS_MS) & (step_end > crossing + EPS_MS)
        if not candidates.any():
            continue
        index = candidates.nonzero(as_tuple=True)
        late = torch.zeros(len(index[0]), dtype=torch.bool)
        fan = sum(int(np.prod(p.weight.shape[1:])) if p.kind == "conv" else (p.weight.shape[1] if p.kind == "dense"
                  else 1) for p in layer.projections)
        step = max(1, CHECK_CHUNK // max(1, fan))
        for lo in range(0, len(index[0]), step):
            part = tuple(i[lo:lo + step] for i in index)
            arrivals, weights = run._fan_in(layer, params, part)
            arrivals = arrivals + params.t_on
            t_c, end = crossing[part][:, None], step_end[part][:, None]
            late[lo:lo + step] = ((arrivals > t_c + EPS_MS) & (arrivals <= end) & (weights != 0)).any(dim=1)
        np.add.at(counts, index[0][late].numpy(), 1)
    return counts


CHECK_CHUNK = 2_000_000
"""Candidate neurons x fan-in gathered at once by :func:`inputs_in_crossing_step`."""
