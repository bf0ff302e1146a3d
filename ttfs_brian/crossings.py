"""First threshold crossings of one integrating neuron per row, vectorised over neurons, float64, from its inputs.

Every solver takes, per neuron (row), the arrival times ``a_j`` of its inputs (ms from the integration start
``t_on``, >= 0; ``inf``: never) and their weights, and returns the first ``t`` at which ``v(t) >= theta``
(``inf``: none), ``v(0) = 0``:

- :func:`first_crossing_times`: step currents, ``dv/dt = alpha + sum_j w_j H(t - a_j)``: piecewise linear, exact
  from two cumulative sums over the sorted arrivals.
- :func:`linear_first_crossing`: a linear neuron whose rate and decay are piecewise constant,
  ``dv/dt = rate(t) / tau_c - v (1 / tau_m + G(t))`` (a leak ``tau_m``; conductance-based synapses add ``g_j`` to
  ``G`` and ``w_j`` to the rate at rest); ``v`` relaxes exponentially between events, closed form per segment.
- :func:`exponential_first_crossing`: exponential synaptic currents, ``dv/dt = (alpha + sum_j w_j e^{-(t - a_j) /
  tau_s} H(t - a_j)) / tau_c``; no closed form: a bracketed, safeguarded Newton search on the first segment between
  arrivals that reaches ``theta`` (``v`` has at most one extremum per segment).

The two curved solvers see a row's inputs as its distinct events (:func:`merged_events`): in an ``exact`` network
most inputs arrive together, at their layer's ``t_max``.
"""
from __future__ import annotations

import math

import torch

CHUNK = 2_000_000
"""Neurons x fan-in handled at once."""

NEWTON_STEPS = 60
"""Iterations of the bracketed Newton search: from the side where it converges monotonically, quadratically
near the root; the bracket caps the others."""


def first_crossing_times(arrivals: torch.Tensor, weights: torch.Tensor, threshold: torch.Tensor,
                         alpha: torch.Tensor | float, end: float) -> torch.Tensor:
    """First time in ``[0, end]`` at which ``V >= threshold`` for ``dV/dt = alpha + sum_j w_j H(t - a_j)``,
    ``V(0) = 0``, arrivals ``a_j`` >= 0 (inf: never); inf if none. ``V`` is piecewise linear, so sorting the
    arrivals and accumulating slopes gives ``V`` at every breakpoint exactly."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).expand(arrivals.shape[0])
    out = torch.empty(arrivals.shape[0], dtype=torch.float64)
    step = max(1, CHUNK // max(1, arrivals.shape[1]))
    for lo in range(0, arrivals.shape[0], step):
        sl = slice(lo, lo + step)
        out[sl] = _first_crossing_chunk(arrivals[sl], weights[sl], threshold[sl], end, alpha[sl])
    return out


def _first_crossing_chunk(arrivals, weights, threshold, end, alpha):
    # sorted arrivals a_k with cumulative weights C_k and D_k = sum_{m <= k} w_m a_m: between a_k and a_{k+1},
    # V(t) = t (alpha + C_k) - D_k, so V at every breakpoint comes from two cumulative sums
    a, order = torch.sort(arrivals.clamp(max=end), dim=1)
    w = torch.gather(weights, 1, order)
    c = torch.cumsum(w, dim=1)
    d = torch.cumsum(w * a, dim=1)
    slope = alpha[:, None] + c  # after each arrival
    v = a * slope - d  # at each arrival
    v_end = end * slope[:, -1] - d[:, -1]
    hit = v >= threshold[:, None]
    any_hit = hit.any(dim=1)
    first = hit.to(torch.int8).argmax(dim=1)  # the first arrival at which V >= theta (if any)
    # the crossing lies in the segment that ends there (or, without one, in the last segment up to `end`)
    k = torch.where(any_hit, first, torch.full_like(first, a.shape[1]))
    previous = (k - 1).clamp(min=0)[:, None]
    seg_start = torch.where(k > 0, torch.gather(a, 1, previous)[:, 0], 0.0)
    seg_v = torch.where(k > 0, torch.gather(v, 1, previous)[:, 0], 0.0)
    seg_slope = torch.where(k > 0, torch.gather(slope, 1, previous)[:, 0], alpha)
    t = seg_start + (threshold - seg_v) / torch.where(seg_slope > 0, seg_slope, 1.0)
    t = torch.where(threshold <= 0, 0.0, t)
    reached = any_hit | (v_end >= threshold) | (threshold <= 0)
    return torch.where(reached, t, torch.inf)


# ----------------------------------------------------------------------------- linear neurons (leak, conductance)
def segments(arrivals, weights, decays, alpha, beta, late, stop, late_decays=None):
    """Sorted event times (ms from ``t_on``) and, after each, the rate ``(alpha + sum w) f_in + beta f_late`` and the
    synaptic decay ``sum g f_in (+ late_decays f_late)`` (per ms) of the arrived inputs; the input gate closes at
    ``stop``."""
    k = arrivals.shape[0]
    inside = arrivals < stop[:, None]  # arrivals after the input gate closes change nothing
    w = torch.where(inside, weights, 0.0)
    g = torch.where(inside, decays, 0.0)
    times = torch.cat([arrivals.clamp(min=0.0), late[:, None], stop[:, None]], dim=1)
    rate_changes = torch.cat([w, beta[:, None], -(alpha + w.sum(dim=1))[:, None]], dim=1)  # the gate closes
    late_decays = torch.zeros_like(beta) if late_decays is None else late_decays
    decay_changes = torch.cat([g, late_decays[:, None], -g.sum(dim=1)[:, None]], dim=1)
    times = torch.where(torch.isfinite(times), times, torch.inf)
    order = torch.argsort(times, dim=1, stable=True)
    times = torch.gather(times, 1, order)
    zeros = torch.zeros(k, 1, dtype=torch.float64)
    starts = torch.cat([zeros, times], dim=1)
    rates = torch.cat([zeros, torch.cumsum(torch.gather(rate_changes, 1, order), dim=1)], dim=1) + alpha[:, None]
    invs = torch.cat([zeros, torch.cumsum(torch.gather(decay_changes, 1, order), dim=1)], dim=1)
    return starts, rates, invs.clamp(min=0.0)


def _relaxed(v, rate, span, inv_tau):
    """``v`` after ``span`` ms of ``dv/dt = rate - v inv_tau`` (rate per ms): ``v e^{-span/tau} + rate span
    exprel(-span/tau)``, exact and stable for any ``tau``, infinite included (``inv_tau = 0``)."""
    x = -span * inv_tau
    exprel = torch.where(x == 0, torch.ones_like(x), torch.special.expm1(x) / torch.where(x == 0, 1.0, x))
    return v * torch.exp(x) + rate * span * exprel


def _log1p_ratio(y):
    """``log1p(y) / y`` (1 at ``y = 0``)."""
    return torch.where(y == 0, torch.ones_like(y), torch.log1p(y) / torch.where(y == 0, 1.0, y))


def linear_first_crossing(arrivals, weights, decays, alpha, beta, late, stop, theta, fire_from: float, end: float,
                          tau_c: float, inv_tau_m: float, late_decays=None) -> torch.Tensor:
    """First ``t`` in ``[fire_from, end]`` with ``v(t) >= theta`` for ``dv/dt = rate(t) / tau_c - v (inv_tau_m + G(t))``
    (:func:`segments`), ``v(0) = 0``; inf if none. Between events ``v`` relaxes exponentially (:func:`_relaxed`),
    so ``v`` at every event is a linear recurrence, summed at once (:func:`_breakpoints`); a crossing inside a segment
    starting at ``a`` with ``v_a`` is at ``a + tau ln((v_inf - v_a) / (v_inf - theta))``, written with ``log1p`` so
    that no decay is the line."""
    out = torch.empty(arrivals.shape[0], dtype=torch.float64)
    late_decays = torch.zeros_like(beta) if late_decays is None else late_decays
    step = max(1, CHUNK // max(1, arrivals.shape[1] + 3))
    for lo in range(0, arrivals.shape[0], step):
        sl = slice(lo, lo + step)
        after_gate = arrivals[sl] >= stop[sl, None]  # an input arriving once the gate has closed changes nothing
        for rows, times, (w, g) in merged_events(arrivals[sl], (weights[sl], decays[sl]), ~after_gate):
            r = rows + lo
            starts, rates, invs = segments(times, w, g, alpha[r], beta[r], late[r], stop[r], late_decays[r])
            out[r] = _linear_chunk(starts, rates / tau_c, invs + inv_tau_m, theta[r], fire_from, end)
    return out


BANDS = 4
"""Row bands of :func:`merged_events`, each as wide as its busiest row."""


def merged_events(times: torch.Tensor, values: tuple[torch.Tensor, ...], keep: torch.Tensor):
    """The inputs of every row as distinct events: inputs that arrive together (an ``exact`` layer's silent sources all
    fire at their ``t_max``: 80-95 % of a VGG-small neuron's inputs) merged into one with their ``values`` summed, and
    inputs outside ``keep`` or without any value dropped. Yields ``(rows, times, values)`` for :data:`BANDS` bands
    of rows sorted by their number of events, each trimmed to its widest row (``times`` sorted, ``inf`` padding with
    zero values): the solvers' cost follows the events, not the fan-in. Every solver here is linear in the values
    of simultaneous inputs, so merging changes the results by rounding only."""
    live = keep & (times < math.inf)  # not isfinite: 5x slower, and times are never -inf
    carried = values[0] != 0
    for v in values[1:]:
        carried |= v != 0
    live &= carried
    t, order = torch.sort(torch.where(live, times, torch.inf), dim=1)
    real = t < math.inf
    fresh = torch.ones_like(real)
    fresh[:, 1:] = t[:, 1:] != t[:, :-1]
    group = torch.cumsum(fresh, dim=1) - 1  # the event each sorted input joins
    counts = (fresh & real).sum(dim=1)
    merged_t = torch.full_like(t, torch.inf).scatter_(1, group, t)
    merged = [torch.zeros_like(t).scatter_add_(1, group, torch.where(real, torch.gather(v, 1, order), 0.0))
              for v in values]
    by_count = torch.argsort(counts)
    for rows in torch.tensor_split(by_count, min(BANDS, len(by_count))):
        if len(rows) == 0:
            continue
        width = max(1, int(counts[rows].max()))
        yield rows, merged_t[rows, :width], tuple(v[rows, :width] for v in merged)


def _breakpoints(starts, rates, invs, end: float):
    """Segment starts and ends clamped to ``[0, end]``, and ``v`` at every start: ``v_{k+1} = v_k e^{-inv_k D_k} +
    rate_k D_k exprel(-inv_k D_k)`` summed as ``v_k = sum_{m<k} F_m e^{-(L_k - L_{m+1})}`` with ``L`` the cumulative
    decay (:func:`decayed_cumsum`)."""
    k = starts.shape[0]
    end = torch.as_tensor(end, dtype=torch.float64).reshape(-1, 1).expand(k, 1)  # one end, or one per row
    a = torch.minimum(starts, end)
    b = torch.minimum(torch.cat([starts[:, 1:], end], dim=1), end)
    span = (b - a).clamp(min=0.0)
    step = _relaxed(torch.zeros_like(span), rates, span, invs)  # F_m: what segment m adds from v = 0
    decay = torch.cumsum(invs * span, dim=1)  # L_{m+1}
    zero = torch.zeros(k, 1, dtype=torch.float64)
    before = torch.cat([zero, decay[:, :-1]], dim=1)  # L_k
    v = torch.cat([zero, decayed_cumsum(step[:, :-1], decay[:, :-1], before[:, 1:])], dim=1)
    return a, b, v


def _linear_chunk(starts, rates, invs, theta, fire_from: float, end: float):
    a, b, v = _breakpoints(starts, rates, invs, end)
    lo = torch.maximum(a, torch.as_tensor(fire_from, dtype=torch.float64))
    open_ = lo <= b
    v_lo = _relaxed(v, rates, (lo - a).clamp(min=0.0), invs)
    th = theta[:, None]
    pull = rates - th * invs  # the slope v would have at theta: positive when v can still reach it
    rising = open_ & (pull > 0) & (v_lo < th)
    gap = torch.where(rising, (th - v_lo) / torch.where(rising, pull, 1.0), 0.0)
    when = lo + gap * _log1p_ratio(torch.where(rising, gap * invs, 0.0))
    at = torch.where(open_ & (v_lo >= th), lo, torch.where(rising & (when <= b), when, torch.inf))
    first = torch.isfinite(at).to(torch.int8).argmax(dim=1, keepdim=True)
    return torch.gather(at, 1, first)[:, 0]


def linear_potential(arrivals, weights, decays, alpha, beta, late, stop, at, tau_c: float,
                     inv_tau_m: float, late_decays=None) -> torch.Tensor:
    """``v(at)`` of the neuron of :func:`linear_first_crossing` (no threshold; ``at`` one time or one per row)."""
    starts, rates, invs = segments(arrivals, weights, decays, alpha, beta, late, stop, late_decays)
    a, b, v = _breakpoints(starts, rates / tau_c, invs + inv_tau_m, at)
    last = _relaxed(v[:, -1], rates[:, -1] / tau_c, (b - a)[:, -1], invs[:, -1] + inv_tau_m)
    return last


# ----------------------------------------------------------------------------- exponential synaptic currents
def exponential_potential(arrivals, weights, alpha, at, tau_c: float, tau_s: float) -> torch.Tensor:
    """``v(at)`` for ``dv/dt = (alpha + sum_j w_j e^{-(t - a_j) / tau_s} H(t - a_j)) / tau_c``:
    ``(alpha at + sum_{a_j < at} w_j tau_s (1 - e^{-(at - a_j) / tau_s})) / tau_c`` (``at`` one time or one per
    row)."""
    at = torch.as_tensor(at, dtype=torch.float64)
    span = (at.reshape(-1, 1) - arrivals).clamp(min=0.0).nan_to_num(posinf=0.0, neginf=0.0)
    span = torch.where(torch.isfinite(arrivals), span, 0.0)
    return (alpha * at - tau_s * (weights * torch.special.expm1(-span / tau_s)).sum(dim=1)) / tau_c


def exponential_first_crossing(arrivals, weights, alpha, theta, end: float, tau_c: float,
                               tau_s: float) -> torch.Tensor:
    """First ``t`` in ``[0, end]`` with ``v(t) >= theta`` for the neuron of :func:`exponential_potential`; inf if none.

    With the arrivals sorted, on the segment after ``a_k`` (times per ``tau_c``) ``v(t) = alpha t + tau_s C_k -
    tau_s I_k e^{-(t - a_k) / tau_s}``, ``C_k`` the summed weights and ``I_k`` the current just after ``a_k``
    (``I_k = sum_{m <= k} w_m e^{-(a_k - a_m) / tau_s}``, :func:`decayed_cumsum`: no exponential overflows).
    ``v' = alpha + I_k e^{-(t - a_k) / tau_s}`` is monotone there, so ``v`` has at most one extremum per segment: the
    first segment whose maximum reaches ``theta`` holds the crossing, on a stretch where ``v`` rises; Newton from its
    concave (``I_k > 0``) or convex (``I_k < 0``) side converges monotonically, and every iterate is kept inside that
    stretch."""
    out = torch.empty(arrivals.shape[0], dtype=torch.float64)
    step = max(1, CHUNK // max(1, arrivals.shape[1] + 1))
    alpha = torch.as_tensor(alpha, dtype=torch.float64).expand(arrivals.shape[0])
    for lo in range(0, arrivals.shape[0], step):
        sl = slice(lo, lo + step)
        for rows, times, (w,) in merged_events(arrivals[sl], (weights[sl],), arrivals[sl] < end):  # later: no effect
            r = rows + lo
            out[r] = _exponential_chunk(times, w / tau_c, alpha[r] / tau_c, theta[r], end, tau_s)
    return out


def _exponential_chunk(arrivals, weights, alpha, theta, end, tau):
    k = arrivals.shape[0]
    a, order = torch.sort(arrivals.clamp(max=end), dim=1)
    w = torch.gather(weights, 1, order)
    zero = torch.zeros(k, 1, dtype=torch.float64)
    # segment 0 is [0, a_0] without current; segment m + 1 follows arrival m
    starts = torch.cat([zero, a], dim=1)
    ends = torch.cat([a, torch.full((k, 1), end, dtype=torch.float64)], dim=1)
    c = torch.cat([zero, torch.cumsum(w, dim=1)], dim=1)
    scaled = a / tau
    current = torch.cat([zero, decayed_cumsum(w, scaled, scaled)], dim=1)
    al = alpha[:, None]
    v_start = al * starts + tau * (c - current)

    def v_of(t):  # on each segment (broadcast)
        return al * t + tau * c - tau * current * torch.exp(-(t - starts) / tau)

    v_stop = v_of(ends)
    # the extremum t* = a + tau ln(I / -alpha) of a concave segment (I > 0 > alpha) inside it
    ratio = torch.where((current > 0) & (al < 0), current / torch.where(al < 0, -al, 1.0), 1.0)
    peak = starts + tau * torch.log(ratio.clamp(min=1e-300))
    interior = (current > 0) & (al < 0) & (peak > starts) & (peak < ends)
    top = torch.where(interior, v_of(torch.where(interior, peak, starts)), torch.maximum(v_start, v_stop))
    reach = top >= theta[:, None]
    seg = reach.to(torch.int8).argmax(dim=1, keepdim=True)
    found = reach.any(dim=1)
    s, e, cc, ii = (torch.gather(x, 1, seg)[:, 0] for x in (starts, ends, c, current))
    p_int, p = torch.gather(interior, 1, seg)[:, 0], torch.gather(peak, 1, seg)[:, 0]
    # the rising stretch [low, high] of the segment that holds the crossing: up to its peak (concave); from its trough
    # (convex: I < 0 < alpha, v' = 0 at a + tau ln(-I / alpha)) to its end
    trough_ratio = torch.where((ii < 0) & (alpha > 0), -ii / torch.where(alpha > 0, alpha, 1.0), 1.0)
    trough = (s + tau * torch.log(trough_ratio.clamp(min=1e-300))).clamp(min=s, max=e)
    low = torch.where(ii < 0, torch.where(alpha > 0, trough, s), s)
    high = torch.where(p_int, p, e)

    def f(t):
        return alpha * t + tau * cc - tau * ii * torch.exp(-(t - s) / tau) - theta

    def df(t):
        return alpha + ii * torch.exp(-(t - s) / tau)

    t = torch.where(ii < 0, high, low)  # the side from which Newton converges monotonically
    for _ in range(NEWTON_STEPS):
        slope = df(t)
        step = torch.where(found, f(t) / torch.where(slope > 0, slope, 1.0), 0.0)
        t = (t - step).clamp(min=low, max=high)
        if not (step.abs() > 1e-15 * (1.0 + t.abs())).any():
            break
    t = torch.where(f(low) >= 0, low, t)
    t = torch.where(theta <= 0, 0.0, t)
    return torch.where(found | (theta <= 0), t, torch.inf)


DIRECT_LIMIT = 600.0
"""Largest exponent (in time constants) for which :func:`decayed_cumsum` sums ``w e^{L}`` directly: ``e^600 ~
1e260`` stays finite in float64; a row that decays further is summed in log space."""


def decayed_cumsum(w: torch.Tensor, grown: torch.Tensor, decayed: torch.Tensor) -> torch.Tensor:
    """``sum_{m <= k} w_m e^{grown_m - decayed_k}`` for every ``k`` (``grown``, ``decayed`` non-decreasing along a row,
    ``grown_m <= decayed_k`` for ``m <= k``): the leaky sum behind every exponential relaxation here.

    Where the row's exponents stay below :data:`DIRECT_LIMIT`, one cumulative sum of ``w e^{grown}`` (absolute error
    ``~eps sum |w|``, as in log space); elsewhere the positive and negative parts apart with ``logcumsumexp``, so
    that no exponential overflows however strong the decay."""
    direct = grown.abs().amax(dim=1) < DIRECT_LIMIT if grown.shape[1] else torch.ones(w.shape[0], dtype=torch.bool)
    if bool(direct.all()):
        return torch.cumsum(w * torch.exp(grown), dim=1) * torch.exp(-decayed)
    out = torch.zeros_like(w)
    for part, sign in ((w.clamp(min=0.0), 1.0), ((-w).clamp(min=0.0), -1.0)):
        log_part = torch.where(part > 0, torch.log(part.clamp(min=1e-300)), -torch.inf)
        out = out + sign * torch.exp(torch.logcumsumexp(log_part + grown, dim=1) - decayed)
    fast = direct.nonzero(as_tuple=True)[0]
    out[fast] = decayed_cumsum(w[fast], grown[fast], decayed[fast])
    return out
