"""Every Brian2 equation string of the backend, in one place, to be read against SPEC sections 3-4.

Units: Brian2 time in ms (``t``, ``dt``, spike times, window edges), membrane potential ``v``
dimensionless and measured in "value" units, so that ``tau_c`` converts one into the other:
``dv/dt = rate / tau_c`` with ``rate`` the slope of SPEC section 3 (``alpha + sum_j J_ij H(t - t_j)``).

**One neuron model for every integrating layer.** Hidden layers of both variants and the output layer
are all instances of the model of :mod:`ttfs_brian.neuron` (whose table gives ``alpha``, ``beta``
and the gates per variant and role; the analytic engine uses the same parameters):

    dv/dt = ((alpha + I) * f_in + beta * f_late) / tau_c

with ``I`` the summed weights of the inputs that have arrived (each synapse adds its weight once).
Stopping the output's ``f_in`` at ``t_min(out)`` freezes ``v`` at the readout time, so the logits are
simply ``v`` at the end of the round, however late the last (zero-effect) spikes are delivered.

**Delays.** Every projection is one ``Synapses`` object whose pathway has the projection's delay
(a multiple of ``dt``, delivered exactly by Brian2's spike queue) and a shared constant ``lag`` equal
to it: the precise correction below uses the arrival time ``t_spike_pre + lag``.

**Exact Euler steps.** A gate is the fraction of the step ``[t, t + dt]`` that lies inside its
interval, ``(clip(t + dt, a, b) - clip(t, a, b)) / dt``, so the Euler step ``v += dt * dv/dt``
adds exactly ``integral rate dt`` of the piecewise-constant rate, wherever the window edges lie
relative to the grid.

**Precise spike times** (SPEC section 6, ``timing="precise"``). Within each step the layers take
turns in feed-forward order (all in slot ``after_resets``; see :mod:`ttfs_brian.brian.simulator`):
first the pathway into layer ``n`` delivers the spikes of layer ``n - 1`` from this step, then
layer ``n`` tests its threshold and resets, then layer ``n + 1`` gets its turn. A delivery adds
``w`` to ``I_post`` and adds to ``v_post`` what ``w`` would have contributed between the arrival and
the end of the step, ``w * |[t_spike + lag, t + dt] & [t_on, t_off]| / tau_c``, so ``v`` is exact at
the end of the step (``v(t + dt)``) when the threshold is tested. The rate has been constant since
the last input or gate edge, so the crossing is ``t_cross = t + dt - tau_c (v - theta) / rate``:
exact whenever no input arrives in the crossing step after the crossing. Later arrivals within the
crossing step are possible only for a neuron that crosses while its inputs still arrive, i.e.
before its ``t_min``: an ``exact`` neuron that fires early (counted in the report); ``sparse``
neurons fire only after ``t_min``. Such a neuron gets the time of the line through ``v(t + dt)``
(clipped to the previous step's start), or, if a later inhibitory input pulls ``v`` back under ``theta`` within the
step, no spike in this step.

**Grid spike times** (``timing="grid"``): plain Brian2. The same model without the sub-step
correction; a spike is stamped with the step start ``t`` and acts from the next step on, so the
error grows by up to one ``dt`` per layer.

**Rounds.** Every time in these equations is counted from the group's round start: ``tr`` is the
number of steps since the round began (``round_step``, a shared integer) times ``dt``, and stands
where a single-sample simulation would use ``t``; spike times are relative to the round, and
:data:`ROUND_RESET` starts a new sample (standalone devices simulate several samples one after the
other in one run; see :mod:`ttfs_brian.brian.simulator`). With ``round_step = 0`` (runtime) this is
exactly the single-sample model. Counting in integer steps matters: ``t - t0`` in floating point
carries the rounding of the absolute time (~1e-16 s relative, i.e. ~4e-13 ms at t = 2 s), which the
gates multiply by the summed weights ``I`` (hundreds to thousands after BatchNorm folding): VGG-small
spike times were off by up to 2.5e-8 ms in late rounds that way.

Per-layer times are shared (scalar) variables of each group: ``tau_c``, ``t_on``, ``t_off``,
``t_late``, ``t_fire`` (earliest allowed firing) and ``t_max``. They are variables, not namespace
constants, because Brian2 folds namespace constants into the generated code as literals: every new
network would then be recompiled by the Cython runtime target; as variables, networks of the same
structure share compiled code. Only network-independent constants live in the namespace: ``tol``
(a fraction of ``dt`` used only to compare grid times that are equal in exact arithmetic), ``t_eps``
(:data:`TIME_EPS_MS`) and ``t_never`` (a finite "infinity").
"""
from __future__ import annotations

from ..neuron import NEVER_MS, TIME_EPS_MS  # noqa: F401  (re-exported: the equations' "never" and edge)

TIMINGS = ("precise", "grid")

TOL = 1e-6
"""Fraction of ``dt`` by which two grid times (step edges, dt-aligned window edges) that are equal in
exact arithmetic may differ after rounding."""



def _gate(start: str, stop: str) -> str:
    """Fraction of the step ``[t, t + dt]`` inside ``[start, stop]``."""
    return f"(clip(tr + dt, {start}, {stop}) - clip(tr, {start}, {stop})) / dt"


ROUND_TIME = ("tr = (timestep(t, dt) - round_step) * dt : second\nround_step : integer (shared)\n"
              "round_index : integer (shared)\nround_steps : integer (constant, shared)\n"
              "new_round : integer (shared)\n"
              "t_offset : second (constant, shared)\n")
"""Time since the group's round start, in whole steps (see "Rounds" above), the round's number (the sample slot
it works on), the round's length and where the group's rounds start (:class:`~ttfs_brian.brian.layout.RoundTiming`);
part of every model."""
SPIKE_ROUND = "spike_round : integer\n"
"""In a group whose spikes others receive: the round of its last spike, so that a target takes a spike for the
sample it belongs to (:func:`on_pre_integrator`)."""
FIRED = "spiked = True\nspike_round = round_index"
"""The end of every reset: the neuron has fired, in the round it works on."""


# ----------------------------------------------------------------------------- integrating neurons
_INTEGRATOR_COMMON = f"""
f_in = {_gate('t_on', 't_off')} : 1
f_late = {_gate('t_late', 't_never')} : 1
rate = (alpha + I) * int(tr + dt - tol * dt > t_on) * int(tr + dt - tol * dt < t_off) + beta * int(tr + dt - tol * dt > t_late) : 1
I : 1
I_next : 1
alpha : 1 (constant)
beta : 1 (constant)
theta : 1 (constant)
t_spike : second
t_raw : second
spiked : boolean
tau_c : second (constant, shared)
t_on : second (constant, shared)
t_off : second (constant, shared)
t_late : second (constant, shared)
t_fire : second (constant, shared)
t_max : second (constant, shared)
t_end : second (constant, shared)
""" + ROUND_TIME + SPIKE_ROUND

INTEGRATOR_MODEL = ("dv/dt = ((alpha + I) * f_in + beta * f_late) / tau_c : 1\n"
                    "t_cross = tr + dt - tau_c * (v - theta) / clip(rate, 1e-12, 1e300) : second" + _INTEGRATOR_COMMON)
"""``rate`` is the slope of ``v`` (per tau_c) at the end of the step, with the gates evaluated just
before ``t + dt``; ``t_cross`` is where the line through ``v(t + dt)`` with that slope meets ``theta``
(the floor on ``rate`` only keeps a degenerate, non-rising neuron from dividing by zero)."""

LEAKY_INTEGRATOR_MODEL = """v : 1
drive = (alpha + I) * f_in + beta * f_late : 1
relax = rate / tau_c - v * inv_tau_m : Hz
excess = clip((v - theta) * inv_tau_m / clip(relax, 1e-12 / ms, 1e300 / ms), -0.5, 1e300) : 1
t_cross = tr + dt - (v - theta) / clip(relax, 1e-12 / ms, 1e300 / ms) * (log1p(excess) + int(excess == 0)) / (excess + int(excess == 0)) : second
inv_tau_m : 1 / second (constant, shared)
sigma_v : 1 (constant, shared)""" + _INTEGRATOR_COMMON
"""The same neuron with a leak, ``dv/dt = rate / tau_c - v / tau_m`` (perturbation ``leak``; ``inv_tau_m =
1 / tau_m``, 0: none), advanced by :data:`LEAKY_STEP`, which integrates a piecewise-constant rate exactly:
``v(t + dt) = v e^{-dt / tau_m} + dt exprel(-dt / tau_m) rate / tau_c``. ``t_cross`` goes back along the
exponential from ``v(t + dt)``: ``t + dt - tau_m ln((v_inf - theta) / (v_inf - v))``, written with ``log1p``
so that it is the line of the non-leaky model when ``inv_tau_m = 0`` (``excess`` >= 0 at a crossing; the
floor only keeps ``log1p`` finite for neurons far below threshold, whose ``t_cross`` is never used)."""

LEAKY_STEP = "v = v * exp(-dt * inv_tau_m) + dt * exprel(-dt * inv_tau_m) * drive / tau_c"
NOISE_STEP = " + sigma_v * sqrt(2 * dt / tau_c) * randn()"
"""Membrane noise, ``dV = (...) dt + sigma_v sqrt(2 / tau_c) dW`` (Euler-Maruyama: ``dW = sqrt(dt) N(0, 1)``)."""

_RATE_LINE = ("rate = (alpha + I) * int(tr + dt - tol * dt > t_on) * int(tr + dt - tol * dt < t_off) + beta * "
              "int(tr + dt - tol * dt > t_late) : 1")
SYNAPTIC_INTEGRATOR_MODEL = ("""v : 1
u_late = clip(tr + dt, t_late, t_never) - clip(tr, t_late, t_never) : second
t_cross = tr + dt - tau_c * (v - theta) / clip(rate, 1e-12, 1e300) : second
gate_end = int(tr + dt - tol * dt > t_on) * int(tr + dt - tol * dt < t_off) : 1
late_end = int(tr + dt - tol * dt > t_late) : 1
drive_end = alpha * gate_end + beta * late_end * (1 - beta_decays) : 1
current_end = I * gate_end + beta * late_end * beta_decays * exp(-(tr + dt - t_late) * inv_tau_s) : 1
inv_tau_s : 1 / second (constant, shared)
beta_decays : 1 (constant, shared)""" + _INTEGRATOR_COMMON.replace(_RATE_LINE, "rate = drive_end + current_end : 1"))
"""The neuron with exponential synaptic currents (perturbation ``synaptic_tau``): every input adds ``w`` to ``I``,
which decays as ``dI/dt = -I / tau_s`` while the input gate is open (``inv_tau_s = 1 / tau_s``, 0: today's steps),
and ``exact``'s zero-padded inputs are a current ``beta e^{-(t - t_min) / tau_s}`` from ``t_min`` (``beta_decays``
1; ``sparse``'s ``beta`` is its constant drive after ``t_min``, ``beta_decays`` 0). Advanced by
:data:`SYNAPTIC_STEP`, exact per step; ``rate`` is the slope at the step's end, ``t_cross`` the linear guess that
:data:`SYNAPTIC_RESET` refines along the curve."""

SYNAPTIC_STEP = (
    "v = v + (alpha * f_in * dt + I * f_in * dt * exprel(-f_in * dt * inv_tau_s) + beta * u_late * exprel(-u_late * "
    "inv_tau_s * beta_decays) * exp(-(clip(tr, t_late, t_never) - t_late) * inv_tau_s * beta_decays)) / tau_c\n"
    "I = I * exp(-f_in * dt * inv_tau_s)")
"""``v(t + dt)`` and ``I(t + dt)`` from the step's open gate ``s = f_in dt``: ``v += (alpha s + I tau_s (1 -
e^{-s / tau_s}) + padding) / tau_c``, ``I *= e^{-s / tau_s}`` (written with ``exprel``, so ``inv_tau_s = 0`` is the
step current); exact when the window edges lie on the grid."""

NEWTON_STEPS_BRIAN = 6
SYNAPTIC_RESET = ("d_v = tau_c * (v - theta)\n"
                  "u_c = clip(tr + dt - t_cross, 0 * ms, 2 * dt)\n"
                  + "".join("u_c = clip(u_c - (drive_end * u_c + current_end * u_c * exprel(u_c * inv_tau_s) - d_v) / "
                            "clip(drive_end + current_end * exp(u_c * inv_tau_s), 1e-12, 1e300), 0 * ms, 2 * dt)\n"
                            for _ in range(NEWTON_STEPS_BRIAN))
                  + "t_raw = (tr + dt - u_c) * int(v >= theta) + t_never * int(v < theta)\n"
                  "t_spike = clip(t_raw, clip(tr - dt, t_fire, t_never), t_max)\n"
                  + FIRED)
"""Precise timing of the synaptic neuron: back from ``v(t + dt)`` along the curve of the step's end, ``a u + c u
exprel(u / tau_s) = tau_c (v - theta)`` (``a = drive_end`` the constant drive, ``c = current_end`` the decaying
current there), by Newton from the linear guess; a forced spike (``v < theta`` at ``t_max``) is at ``t_max``."""

OUTPUT_MODEL = f"""
dv/dt = (alpha + I) * f_in / tau_c : 1
f_in = {_gate('t_on', 't_off')} : 1
I : 1
I_next : 1
alpha : 1 (constant)
tau_c : second (constant, shared)
t_on : second (constant, shared)
t_off : second (constant, shared)
t_end : second (constant, shared)
""" + ROUND_TIME
"""The output layer: no threshold; ``v`` stops at ``t_off = t_min(out)`` and is the logit
(plus ``bias`` in ``sparse``, added when reading out)."""

SYNAPTIC_OUTPUT_MODEL = OUTPUT_MODEL.replace("dv/dt = (alpha + I) * f_in / tau_c : 1",
                                             "v : 1\ninv_tau_s : 1 / second (constant, shared)")
SYNAPTIC_OUTPUT_STEP = ("v = v + (alpha * f_in * dt + I * f_in * dt * exprel(-f_in * dt * inv_tau_s)) / tau_c\n"
                        "I = I * exp(-f_in * dt * inv_tau_s)")
"""The output layer with exponential synaptic currents (frozen, like ``v``, once its gate closes at ``t_min``)."""

LEAKY_OUTPUT_MODEL = OUTPUT_MODEL.replace(
    "dv/dt = (alpha + I) * f_in / tau_c : 1",
    f"v : 1\ndrive = (alpha + I) * f_in : 1\nf_open = {_gate('-t_never', 't_off')} : 1\n"
    "inv_tau_m : 1 / second (constant, shared)")
LEAKY_OUTPUT_STEP = ("v = v * exp(-dt * f_open * inv_tau_m) + dt * exprel(-dt * f_open * inv_tau_m) * drive / tau_c")
"""The output's ``v`` leaks only until the readout time ``t_off``, where it is frozen like the non-leaky one."""

# ----------------------------------------------------------------------------- departures (perturbations)
DEPARTURE_MODEL = """
t_dep : second
departed : boolean
lost : boolean
eps : second
latency : second (constant, shared)
q_origin : second (constant, shared)
q_unit : second (constant, shared)
q_on : boolean (constant, shared)
"""
"""Spikes that leave their neuron off their threshold crossing (perturbations ``spike_jitter``, ``time_bits``,
``drop``; :mod:`ttfs_brian.perturb`): a spike at ``t_spike`` leaves at ``t_dep = ceil_grid(t_spike) + latency
+ eps`` (``eps >= -latency``), unless ``lost``; ``eps`` and ``lost`` come per round from tables."""

DEPARTURE = ("t_dep = (q_origin + ceil((t_spike - q_origin) / q_unit - 1e-9) * q_unit) * int(q_on)"
             " + t_spike * (1 - int(q_on)) + latency + eps")
DEPART_EVENT = "spiked and not departed and not lost and tr + dt > t_dep"
DEPART_RESET = "departed = True"

#: variant ``exact`` (SPEC 3): first crossing after the gate opens, or a forced spike at ``t_max``. (Conditions start
#: with their per-layer part, which Brian2 hoists out of the loop over neurons: idle layers then skip it quickly.)
#: Precise timing tests from the step that *ends* at ``t_fire``, where ``v(t_fire)`` is exact: a neuron already at
#: threshold when firing becomes allowed (``exact``: ``theta <= 0``, as ``v(t_on) = 0``; ``sparse``: ``v(t_min) >=
#: theta``) fires at ``t_fire`` even when inputs of the next step would pull it back (a perturbed network), and the
#: reset clips its back-extrapolated ``t_cross`` to ``t_fire``. Grid timing stamps the step start, so it starts a
#: step later (never before ``t_fire``).
EXACT_THRESHOLD = {
    "precise": "tr + dt > t_fire - tol * dt and not spiked and (v >= theta or tr + dt >= t_max - tol * dt)",
    "grid": "tr > t_fire - 0.5 * dt and not spiked and (v >= theta or tr + dt >= t_max - tol * dt)",
}

#: variant ``sparse`` (SPEC 4): only a crossing inside ``[t_min(n), t_max(n))``; silence otherwise.
SPARSE_THRESHOLD = {
    "precise": "tr + dt > t_fire - tol * dt and not spiked and v >= theta and t_cross < t_max - t_eps",
    "grid": "tr > t_fire - 0.5 * dt and not spiked and v >= theta and tr < t_max - 0.5 * dt",
}

INTEGRATOR_RESET = {
    # Clip: not before the gate (SPEC 3's V(t_min(p)) = 0 start; sparse's firing window) nor before the
    # previous step (a crossing in the step before an off-grid t_fire is detected one step later),
    # not after t_max (the forced spike of ``exact``).
    "precise": "t_spike = clip(t_cross, clip(tr - dt, t_fire, t_never), t_max)\nt_raw = t_cross\n" + FIRED,
    "grid": "t_spike = tr\nt_raw = t_cross\n" + FIRED,
}

# ----------------------------------------------------------------------------- input layer
INPUT_MODEL = """
t_in : second
t_spike : second
spiked : boolean
""" + ROUND_TIME + SPIKE_ROUND
"""``t_in`` is the spike time of an input neuron, ``t_max(0) - u * tau_c``; it is the only variable
that changes from batch to batch (through ``run_args`` in standalone mode, no recompilation)."""

INPUT_THRESHOLD = "not spiked and tr + dt >= t_in"
INPUT_RESET = {"precise": "t_spike = t_in\n" + FIRED, "grid": "t_spike = tr\n" + FIRED}

# ----------------------------------------------------------------------------- max pool
POOL_MODEL = """
n_in : 1
need : 1 (constant)
pool_sign : 1 (constant)
t_first : second
t_last : second
n_in_next : 1
t_first_next : second
t_last_next : second
t_spike : second
spiked : boolean
""" + ROUND_TIME + SPIKE_ROUND
"""``n_in`` counts the pool inputs that have spiked, ``t_first``/``t_last`` are their earliest and
latest spike times; ``need`` is 1 for a max pool (``pool_sign = +1``: fire with the first input) and
the number of valid inputs of the window for a min pool (``pool_sign = -1``: fire with the last)."""

POOL_THRESHOLD = "not spiked and n_in >= need"
POOL_RESET = {
    "precise": "t_spike = t_first * int(pool_sign > 0) + t_last * int(pool_sign < 0)\n" + FIRED,
    "grid": "t_spike = tr\n" + FIRED,
}

# ----------------------------------------------------------------------------- synapses
SYNAPSE_MODEL = "w : 1 (constant)\nlag : second (constant, shared)"
POOL_SYNAPSE_MODEL = "lag : second (constant, shared)"
PER_SYNAPSE_LAG = ("lag : second (constant, shared)", "lag : second (constant)")
"""With ``delay_mismatch`` every synapse has a delay, and so a lag, of its own."""
RELEASE_SYNAPSE = "\nrelease_u : 1 (constant)\nrelease_q : 1 (constant, shared)"
RELEASE_KEY = "release_key : 1"
"""The sample's key of ``release_failure``, in every group a synapse targets; set at each round start."""

ROUND_MATCH = ("same = int(spike_round_pre == round_index_post)\n"
               "ahead = int(spike_round_pre == round_index_post + 1)\n")
"""Which round a delivered spike belongs to. In its target's round (``same``) it acts; one round ahead (a pipelined
target that has not begun the spike's sample yet: its inputs can spike before it starts) it waits in ``I_next``,
which the target's next round starts with (an input before ``t_on`` acts from ``t_on``); from an earlier round (a
spike jittered or delayed past its target's round, delivered in the next sample) it is ignored, as the analytic
engine ignores a spike after the readout."""


def on_pre_integrator(timing: str, departure: str = "t_spike", leaky: bool = False, synaptic: bool = False,
                      release: bool = False) -> str:
    """I_post += w: the slope from the next step on; v_post += ...: (precise) the part of the current step
    after the arrival ``departure_pre + lag``, inside the target's input gate [t_on, t_off] (with a leak,
    that span is weighted by ``exprel`` as in :data:`LEAKY_STEP`; an exponential current has decayed over it,
    and added ``w tau_s (1 - e^{-span / tau_s})``). With ``release``, a transmission that fails
    (:data:`RELEASE_FAILS`) adds nothing."""
    weight = "w" + (" * released" if release else "")
    prefix = (RELEASE_FAILS if release else "") + ROUND_MATCH + f"I_next_post += {weight} * ahead\n"
    if timing == "grid":
        return f"{prefix}I_post += {weight} * same"
    span = f"(clip(tr_post + dt, t_on_post, t_off_post) - clip({departure}_pre + lag, t_on_post, t_off_post))"
    if synaptic:
        return (f"{prefix}span = {span}\nI_post += {weight} * same * exp(-span * inv_tau_s_post)\n"
                f"v_post += {weight} * same * span * exprel(-span * inv_tau_s_post) / tau_c_post")
    gain = f" * exprel(-{span} * inv_tau_m_post)" if leaky else ""
    return f"{prefix}I_post += {weight} * same\nv_post += {weight} * same * {span}{gain} / tau_c_post"


RELEASE_FAILS = "released = int(release_u + release_key_post - floor(release_u + release_key_post) >= release_q)\n"
"""Perturbation ``release_failure``: a transmission fails when ``frac(u + r) < q``, ``u`` the synapse's unit (per
trial), ``r`` the sample's key (per round, in the target group), ``q`` the level (:mod:`ttfs_brian.perturb`)."""


def on_pre_pool(departure: str = "t_spike") -> str:
    """Count the pool's inputs and keep their earliest and latest arrival: this round's, and (``_next``) those of
    the next, which can arrive before a pipelined pool begins it (:data:`ROUND_MATCH`)."""
    arrival = f"{departure}_pre + lag"
    return (ROUND_MATCH + "n_in_post += same\nn_in_next_post += ahead\n"
            f"t_first_post = clip({arrival} + (1 - same) * t_never, -t_never, t_first_post)\n"  # min
            f"t_last_post = clip({arrival} - (1 - same) * t_never, t_last_post, t_never)\n"  # max
            f"t_first_next_post = clip({arrival} + (1 - ahead) * t_never, -t_never, t_first_next_post)\n"
            f"t_last_next_post = clip({arrival} - (1 - ahead) * t_never, t_last_next_post, t_never)")

# ----------------------------------------------------------------------------- rounds (time-multiplexing)
# Every group counts time from its own round start (``tr`` above): a standalone run simulates K
# samples per replica one after the other, a group's round k in [k P + o, (k + 1) P + o) (``o = t_offset``: 0
# aligned, the layer's integration start pipelined; :class:`~ttfs_brian.brian.layout.RoundTiming`). At each
# round start (:data:`ROUND_EVENT`) these statements put every per-sample variable back to its initial value
# (an integrator starts with what arrived ahead of it, ``I_next``), move ``round_step`` to the round start and
# count the round; the input layer also takes its new spike times from the table (a 2-D ``TimedArray``:
# rounds x neurons, dt = P, read at the group's own time ``t - t_offset``).
ROUND_CLOCK = ("new_round = int(timestep(t, dt) >= round_step + round_steps)\n"
               "round_step = round_step + round_steps * new_round\n"
               "round_index = round_index + new_round")
"""Every step (slot ``start``, before anything else), scalar code only: a group's next round starts when its
round of ``round_steps`` is over; its first one starts at its offset (``round_step`` starts a round earlier)."""
ROUND_EVENT = "new_round == 1"
"""The step that starts a round: every neuron of the group resets (a resetter may not write the shared counters,
hence :data:`ROUND_CLOCK` apart)."""
ROUND_RESET = {
    "input": "spiked = False\nt_in = t_in_table(t - t_offset, i)",
    "hidden": "v = 0\nI = I_next\nI_next = 0\nspiked = False",
    "departures": "departed = False\neps = eps_table(t - t_offset, i)\nlost = lost_table(t - t_offset, i) > 0.5",
    "pool": ("n_in = n_in_next\nt_first = t_first_next\nt_last = t_last_next\nn_in_next = 0\n"
             "t_first_next = t_never\nt_last_next = -t_never\nspiked = False"),
    "output": "v = 0\nI = I_next\nI_next = 0",
}

#: the last step of a round (``t_end`` = P, a multiple of dt): the readout of the output's ``v``
END_OF_ROUND = "tr > t_end - 1.5 * dt"

#: ``exact`` hidden neurons whose threshold crossing lies before ``t_min`` (``t_late``) report ``v`` and ``I`` at
#: ``t_min`` (the step that ends there), for the clipped/early-firing report: clipped when ``v(t_min)`` is above the
#: threshold and the potential still rises, i.e. the line from ``t_min`` meets the threshold before it, whatever
#: arrives later (a jittered input after ``t_min``) and wherever the round ends
REPORT_EVENT = ("tr + dt > t_late - tol * dt and tr + dt < t_late + 0.5 * dt and spiked and "
                "t_raw < t_late - t_eps")


def spike_monitor_variables(layer_kind: str, variant: str, departures: bool) -> tuple[str, ...]:
    """What a population's spike monitor records, in this order: ``t_spike``; ``t_raw`` for ``sparse`` hidden
    neurons (the raw crossing says which crossed before ``t_min``; ``exact`` has :data:`REPORT_EVENT` for that);
    ``lost`` for hidden neurons when spikes can be dropped."""
    hidden = layer_kind == "neuron"
    raw = ("t_raw",) if hidden and variant != "exact" else ()
    return ("t_spike",) + raw + (("lost",) if hidden and departures else ())
