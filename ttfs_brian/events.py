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
from .crossings import (CHUNK, exponential_first_crossing, exponential_potential, first_crossing_times,
                        linear_first_crossing, linear_potential)
from .errors import InputError
from .network import Layer, TTFSNetwork
from .neuron import TIME_EPS_MS, Integrator, integrator
from .perturb import (INHIBITORY_REVERSAL, SYNAPTIC, Perturbation, delay_offsets, departure, find,
                      perturb_network, release_key, release_unit, reversal_scale)
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
        self.inv_tau_m = 0.0 if leak is None or math.isinf(leak.level) else 1.0 / leak.level
        synaptic = find(perturbations, "synaptic_tau")
        self.tau_s = None if synaptic is None or math.isinf(synaptic.level) else synaptic.level
        self.conductance = find(perturbations, "conductance")
        self.delays = find(perturbations, "delay_mismatch")
        self.release = find(perturbations, "release_failure")
        if self.tau_s is not None and (leak is not None or self.conductance is not None):
            raise InputError("synaptic_tau combines with neither leak nor conductance (no solver for the combination); "
                             "run them one at a time")
        # every synapse apart: per-synapse perturbations, or dynamics without a closed form after the last input
        self.by_synapse = leak is not None or any(p.kind in SYNAPTIC for p in perturbations)
        self.departures: dict[str, torch.Tensor] = {}  # ms, inf = never arrives anywhere
        self._per_synapse: dict[tuple, torch.Tensor] = {}  # (kind, layer, projection) -> (neurons, fan-in) draws

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
        if self.by_synapse:
            times, clipped, early = self._by_synapse(layer, params)
        elif self.net.variant == "exact":
            times, clipped, early = self._exact(layer, params)
        else:
            times, clipped, early = self._sparse(layer, params)
        shown, lost = self._depart(layer, times.numpy())
        return shown, clipped, early, lost

    def output(self, layer: Layer) -> np.ndarray:
        params = integrator(self.net, layer)
        n = self._batch()
        if self.by_synapse:
            v = self._potential_by_synapse(layer, params, params.t_off)
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
        before = times < layer.t_min - EPS_MS
        clipped = torch.zeros_like(before)
        if before.any():
            index = before.nonzero(as_tuple=True)
            arrivals, weights = self._fan_in(layer, params, index)
            clipped[index] = _above_at_t_min(arrivals, weights, alpha[index], beta[index], theta[index], params)
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

    # ------------------------------------------------------------------ every synapse apart
    def _synapses(self, layer: Layer, params: Integrator, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per neuron of ``index``: the arrival times of its inputs (ms from ``t_on``, acting from ``t_on`` at the
        earliest; inf: never), their weights and their conductances (per ms; 0 without ``conductance``), after
        the synapses' own perturbations (a delay of its own, a failed release)."""
        times, weights, decays = [], [], []
        post = torch.as_tensor(np.ravel_multi_index([t.numpy() for t in index[1:]], layer.shape))
        for k, proj in enumerate(layer.projections):
            source = self.net.layers[proj.source].shape
            sources = self._sources(layer, k, proj, source)[post]
            arrived, w = evaluate.fan_in(proj, self.arrivals(proj), layer.shape, index)
            real = sources >= 0  # a zero-padded tap is no synapse (exact: the drive beta stands for them)
            if self.delays is not None:
                arrived = arrived + self._drawn("delay", layer, k, proj, source)[post[:, None], _tap(sources)]
            if self.release is not None:
                unit = self._drawn("release", layer, k, proj, source)[post[:, None], _tap(sources)]
                key = _t(release_key(self.release, self.indices[index[0].numpy()]))
                real = real & (torch.remainder(unit + key[:, None], 1.0) >= self.release.level)
            present = real & (arrived < math.inf)  # not isfinite: 5x slower; never nan or -inf
            times.append(torch.where(present, arrived.clamp(min=params.t_on) - params.t_on, torch.inf))
            weights.append(torch.where(present, w, 0.0))
            decays.append(torch.where(present, self._conductance(layer, w, post), 0.0))
        return torch.cat(times, dim=1), torch.cat(weights, dim=1), torch.cat(decays, dim=1)

    def _sources(self, layer: Layer, k: int, proj: Projection, source: tuple[int, ...]) -> torch.Tensor:
        """The source neuron of every (target neuron, fan-in position) of projection ``k``, -1 for padding (once)."""
        key = ("sources", layer.name, k)
        if key not in self._per_synapse:
            every = tuple(torch.as_tensor(i) for i in np.indices((1, *layer.shape)).reshape(len(layer.shape) + 1, -1))
            self._per_synapse[key] = evaluate.fan_in_sources(proj, source, layer.shape, every)
        return self._per_synapse[key]

    def _drawn(self, what: str, layer: Layer, k: int, proj: Projection, source: tuple[int, ...]) -> torch.Tensor:
        """A per-synapse draw for every (target neuron, fan-in position + 1) of projection ``k`` (column 0: padding),
        once per run: the extra delay (ms) or the release unit of :mod:`ttfs_brian.perturb`."""
        key = (what, layer.name, k)
        if key not in self._per_synapse:
            sources = self._sources(layer, k, proj, source).numpy()
            post = np.arange(layer.size)[:, None]
            draw = (delay_offsets(self.delays, self.net, layer, k, sources, post) if what == "delay"
                    else release_unit(self.release, layer, k, sources, post))
            self._per_synapse[key] = _t(np.concatenate([np.zeros((layer.size, 1)), np.where(sources >= 0, draw, 0.0)],
                                                       axis=1))
        return self._per_synapse[key]

    def _conductance(self, layer: Layer, w: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """``g_j = J_ij / E_j`` per ms (``conductance``): ``E_exc = theta_i / level``, ``E_inh = -q theta_i / level``; the
        output layer, a readout without a threshold, stays current-based."""
        if self.conductance is None or self.conductance.level == 0 or layer.kind != "neuron":
            return torch.zeros_like(w)
        theta = _t(reversal_scale(layer))[post][:, None]
        q = float(self.conductance.options.get("inhibitory_reversal", INHIBITORY_REVERSAL))
        return self.conductance.level * torch.where(w > 0, w, -w / q) / (theta * self.net.tau_c)

    def _padding(self, layer: Layer, params: Integrator, post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``exact``'s zero-padded inputs (arriving at ``t_min``): their summed weight ``beta`` and conductance."""
        beta = _t(params.beta)[post]
        if self.net.variant != "exact" or self.conductance is None or self.conductance.level == 0:
            return beta, torch.zeros_like(beta)
        positive = sum(pad_sum(p, self.net.layers[p.source].shape, layer.shape, np.maximum(p.weight, 0.0))
                       for p in layer.projections if p.kind == "conv")
        negative = sum(pad_sum(p, self.net.layers[p.source].shape, layer.shape, np.minimum(p.weight, 0.0))
                       for p in layer.projections if p.kind == "conv")
        if isinstance(positive, int):
            return beta, torch.zeros_like(beta)
        q = float(self.conductance.options.get("inhibitory_reversal", INHIBITORY_REVERSAL))
        g = (_t(positive).reshape(-1) - _t(negative).reshape(-1) / q) * self.conductance.level
        return beta, (g / (_t(reversal_scale(layer)) * self.net.tau_c))[post]

    def _chunks(self, layer: Layer):
        """Every (sample, neuron) of the batch in chunks of about CHUNK neurons x fan-in."""
        fan = sum(int(np.prod(p.weight.shape[1:])) if p.kind == "conv" else (p.weight.shape[1] if p.kind == "dense"
                  else 1) for p in layer.projections)
        every = np.indices((self._batch(), *layer.shape)).reshape(len(layer.shape) + 1, -1)
        step = max(1, CHUNK // max(1, fan))
        for lo in range(0, every.shape[1], step):
            yield tuple(torch.as_tensor(i[lo:lo + step]) for i in every)

    def _by_synapse(self, layer: Layer, params: Integrator):
        """Spike times with every synapse apart: the leak, conductance-based or exponential synapses, or a synapse's own
        delay or release (``exact`` forced at ``t_max``; ``sparse`` silent from ``t_max``)."""
        out = torch.empty(self._batch() * layer.size, dtype=torch.float64)
        above = torch.zeros(out.shape, dtype=torch.bool)  # linear dynamics: clipped, as _above_at_t_min says
        theta_all, alpha_all = _t(params.theta), _t(params.alpha)
        curved = self.inv_tau_m > 0 or self.tau_s is not None or self.conductance is not None
        lo = 0
        for index in self._chunks(layer):
            post = torch.as_tensor(np.ravel_multi_index([t.numpy() for t in index[1:]], layer.shape))
            arrivals, weights, decays = self._synapses(layer, params, index)
            beta, beta_decay = self._padding(layer, params, post)
            theta, alpha = theta_all[post], alpha_all[post]
            late, stop = params.t_late - params.t_on, params.t_off - params.t_on
            if self.tau_s is not None and self.net.variant == "exact":  # padding: a synaptic input at t_min
                first = exponential_first_crossing(
                    torch.cat([arrivals, torch.full((len(post), 1), late, dtype=torch.float64)], dim=1),
                    torch.cat([weights, beta[:, None]], dim=1), alpha, theta, params.t_max - params.t_on,
                    params.tau_c, self.tau_s)
            elif self.tau_s is not None:  # sparse: v(t_min) from the gated currents, then the drive beta
                v = exponential_potential(arrivals, weights, 0.0, stop, params.tau_c, self.tau_s)
                first = torch.where(beta > 0, late + (theta - v) * params.tau_c / torch.where(beta > 0, beta, 1.0),
                                    torch.inf)
                first = torch.where(v >= theta, late, first)
            elif not curved and self.net.variant == "exact":  # step currents: piecewise linear, padding at t_min
                first = first_crossing_times(
                    torch.cat([arrivals, torch.full((len(post), 1), late, dtype=torch.float64)], dim=1),
                    torch.cat([weights, beta[:, None]], dim=1) / params.tau_c, theta, alpha / params.tau_c,
                    params.t_max - params.t_on)
            elif not curved:  # sparse: v(t_min) from the gated step currents, then the drive beta
                v = (weights * (stop - arrivals).clamp(min=0.0).nan_to_num(posinf=0.0)).sum(dim=1) / params.tau_c
                first = torch.where(beta > 0, late + (theta - v) * params.tau_c / torch.where(beta > 0, beta, 1.0),
                                    torch.inf)
                first = torch.where(v >= theta, late, first)
            else:
                k = len(post)
                first = linear_first_crossing(
                    arrivals, weights, decays, alpha, beta, torch.full((k,), late, dtype=torch.float64),
                    torch.full((k,), stop, dtype=torch.float64), theta, params.t_fire - params.t_on,
                    params.t_max - params.t_on, params.tau_c, self.inv_tau_m, late_decays=beta_decay)
            out[lo:lo + len(post)] = first + params.t_on
            if not curved and self.net.variant == "exact":
                above[lo:lo + len(post)] = _above_at_t_min(arrivals, weights, alpha, beta, theta, params)
            lo += len(post)
        times = out.reshape(self._batch(), *layer.shape)
        if self.net.variant == "exact":
            times = times.clamp(max=params.t_max)
            before = times < layer.t_min - EPS_MS
            # clipped as in _exact; a curved potential has no line: every crossing before t_min is early (both engines)
            clipped = before & above.reshape(times.shape)
            early = before & ~clipped
        else:  # above the window: the potential had reached theta by t_min
            times = torch.where(times < layer.t_max - EPS_MS, times, torch.nan)
            clipped = times <= layer.t_min + EPS_MS
            early = torch.zeros_like(clipped)
        return times, clipped, early

    def potential_at(self, layer: Layer, times: torch.Tensor) -> torch.Tensor:
        """Every hidden neuron's potential at its own time ``times`` (``(N, *shape)``, ms), every synapse apart:
        what a compensation (:mod:`ttfs_brian.compensation`) compares with the threshold at a nominal crossing."""
        params = integrator(self.net, layer)
        out = torch.empty(self._batch() * layer.size, dtype=torch.float64)
        times = _t(times).reshape(-1)
        lo = 0
        for index in self._chunks(layer):
            post = torch.as_tensor(np.ravel_multi_index([t.numpy() for t in index[1:]], layer.shape))
            k = len(post)
            at = times[lo:lo + k] - params.t_on
            arrivals, weights, decays = self._synapses(layer, params, index)
            beta, beta_decay = self._padding(layer, params, post)
            alpha = _t(params.alpha)[post]
            late, stop = params.t_late - params.t_on, params.t_off - params.t_on
            if self.tau_s is not None and self.net.variant == "exact":
                v = exponential_potential(torch.cat([arrivals, torch.full((k, 1), late, dtype=torch.float64)], dim=1),
                                          torch.cat([weights, beta[:, None]], dim=1), alpha, at, params.tau_c,
                                          self.tau_s)
            elif self.tau_s is not None:  # sparse: the gated currents, then the drive
                v = (exponential_potential(arrivals, weights, 0.0, at.clamp(max=stop), params.tau_c, self.tau_s)
                     + beta * (at - late).clamp(min=0.0) / params.tau_c)
            else:
                v = linear_potential(arrivals, weights, decays, alpha, beta, torch.full((k,), late, dtype=torch.float64),
                                     torch.full((k,), stop, dtype=torch.float64), at, params.tau_c, self.inv_tau_m,
                                     late_decays=beta_decay)
            out[lo:lo + k] = v
            lo += k
        return out.reshape(self._batch(), *layer.shape)

    def _potential_by_synapse(self, layer: Layer, params: Integrator, at: float) -> torch.Tensor:
        """The output layer's potential at ``at`` (its ``t_min``), every synapse apart."""
        out = torch.empty(self._batch() * layer.size, dtype=torch.float64)
        alpha_all = _t(params.alpha)
        lo = 0
        for index in self._chunks(layer):
            post = torch.as_tensor(np.ravel_multi_index([t.numpy() for t in index[1:]], layer.shape))
            arrivals, weights, decays = self._synapses(layer, params, index)
            k = len(post)
            if self.tau_s is not None:
                v = exponential_potential(arrivals, weights, alpha_all[post], at - params.t_on, params.tau_c,
                                          self.tau_s)
            else:
                v = linear_potential(arrivals, weights, decays, alpha_all[post], torch.zeros(k, dtype=torch.float64),
                                     torch.full((k,), np.inf, dtype=torch.float64),
                                     torch.full((k,), params.t_off - params.t_on, dtype=torch.float64),
                                     at - params.t_on, params.tau_c, self.inv_tau_m)
            out[lo:lo + k] = v
            lo += k
        return out.reshape(self._batch(), *layer.shape)


def _tap(sources: torch.Tensor) -> torch.Tensor:
    """Fan-in positions as columns of a per-synapse draw (:meth:`TimedRun._drawn`): 1 + position, 0 for padding."""
    columns = torch.arange(1, sources.shape[1] + 1).expand_as(sources)
    return torch.where(sources >= 0, columns, 0)


def _above_at_t_min(arrivals, weights, alpha, beta, theta, params: Integrator) -> torch.Tensor:
    """Whether an ``exact`` neuron that crossed before ``t_min`` is *clipped*: its potential at ``t_min`` (from the
    inputs arrived by then; arrivals relative to ``t_on``) lies above the threshold while it still rises, i.e. the
    line from ``t_min`` meets the threshold before it: a value above the window. Otherwise its crossing was early
    firing. Inputs after ``t_min`` (jittered late) do not enter, and Brian2 reads the same at ``t_min``."""
    late = params.t_late - params.t_on
    arrived = arrivals <= late + EPS_MS
    weight = torch.where(arrived, weights, 0.0)
    v = (alpha * late + (weight * (late - torch.where(arrived, arrivals, late))).sum(dim=1)) / params.tau_c
    slope = alpha + weight.sum(dim=1) + beta
    return (slope > 0) & (v - theta > EPS_MS * slope / params.tau_c)


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
    """:func:`ttfs_brian.crossings.first_crossing_times` with per-neuron ``alpha`` (rates already per ms)."""
    return first_crossing_times(arrivals, rates, threshold, alpha, end)


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
        latest = torch.full_like(crossing, -torch.inf if not run.by_synapse else torch.inf)  # per synapse: every one
        for proj in layer.projections if not run.by_synapse else ():
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
            arrivals, weights = run._synapses(layer, params, part)[:2] if run.by_synapse else run._fan_in(layer, params,
                                                                                                          part)
            arrivals = arrivals + params.t_on
            t_c, end = crossing[part][:, None], step_end[part][:, None]
            # an arrival at the step's very end is delivered in that step (its slope enters the back-extrapolation)
            late[lo:lo + step] = ((arrivals > t_c + EPS_MS) & (arrivals <= end + EPS_MS) & (weights != 0)).any(dim=1)
        np.add.at(counts, index[0][late].numpy(), 1)
    return counts


CHECK_CHUNK = 2_000_000
"""Candidate neurons x fan-in gathered at once by :func:`inputs_in_crossing_step`."""
