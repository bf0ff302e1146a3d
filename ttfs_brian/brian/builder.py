"""The Brian2 objects of a converted network: one ``NeuronGroup`` per layer, one ``Synapses`` per projection.

- the input layer is a ``NeuronGroup`` whose neurons fire at their own ``t_in`` (a state variable;
  standalone runs take new values from a 2-D ``TimedArray`` through ``run_args``, which a
  ``SpikeGeneratorGroup`` cannot do);
- every hidden layer and the output layer is a group of the integrating model of
  :mod:`ttfs_brian.brian.equations`, with the parameters of :mod:`ttfs_brian.neuron`;
- every max pool fires with its first (or, for ``sign = -1``, its last) input, at that input's exact
  arrival time;
- every projection is a ``Synapses`` object with the projection's delay, its indices from
  :mod:`ttfs_brian.connectivity`, replicated ``R`` times with index offsets.

Objects are named after the model's layers (``features_3``, ``layer1_0_relu``; synapses
``<target>__from__<source>``), so a user can find them in :attr:`BuiltNetwork.network`.

Within each step the layers take turns in feed-forward order (all in slot ``after_resets``, order
``10 k + ...`` for the ``k``-th layer): the pathways into layer ``k`` deliver this step's arrivals,
then layer ``k`` tests its threshold, resets (which sets ``t_spike``) and is monitored, then layer
``k + 1``. With Brian2's default schedule every group tests its threshold before any pathway runs,
so a neuron could fire on a ``v`` that lacks an (inhibitory) input of the same step, and a pool would
pass its spike on one step late.

Rounds (standalone): a scalar ``run_regularly`` (slot ``start``) starts each group's rounds at its own
offset (:class:`~ttfs_brian.brian.layout.RoundTiming`; pipelined, the layers work on successive samples at
once), a custom event resets the group's per-sample state, and the input layer loads its spike times of the
round from the table. Results never come from the final state: ``SpikeMonitor`` s record ``t_spike`` (and
``t_raw`` of ``sparse`` hidden neurons) with the absolute ``t`` that names the round; the output's ``v`` is
read by a custom event on the last step of each round, and in ``exact`` the neurons that crossed their
threshold before ``t_min`` report ``v`` and ``I`` at ``t_min`` the same way (after the layer's turn in that
step, so that a crossing in it counts).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np

from .. import connectivity as cn
from ..connectivity import Connectivity
from ..network import Layer, TTFSNetwork
from ..neuron import integrator
from . import equations as eq
from .layout import Layout, RoundTiming
from .structure import Structure


@dataclass(frozen=True)
class Plan:
    """What the builder needs that does not depend on Brian2: object names and, per projection, its synapse
    count and the out-degree of each source neuron. The synapses themselves are listed one projection at a
    time when they are built (:meth:`connection`), so that only Brian2 holds the whole connectivity."""

    net: TTFSNetwork
    names: dict[str, str]
    counts: dict[tuple[str, int], int]
    fan_out: dict[tuple[str, int], np.ndarray]
    pool_fan_in: dict[str, np.ndarray]

    def connection(self, layer: str, k: int) -> Connectivity:
        target = self.net.layers[layer]
        return cn.for_projection(self.net, target, target.projections[k])

    def connections(self) -> dict[tuple[str, int], Connectivity]:
        """Every projection's synapses at once (small networks; grid bounds)."""
        return {key: self.connection(*key) for key in self.counts}

    @property
    def synapses_per_sample(self) -> int:
        return sum(self.counts.values())

    @property
    def neurons_per_sample(self) -> int:
        return sum(layer.size for layer in self.net.layers.values())


def plan(net: TTFSNetwork) -> Plan:
    """Names, synapse counts and degrees of every projection (each listed once and dropped)."""
    counts, fan_out, pool_fan_in = {}, {}, {}
    for layer in net.layers.values():
        for k, proj in enumerate(layer.projections):
            conn = cn.for_projection(net, layer, proj)
            counts[(layer.name, k)] = conn.n_synapses
            fan_out[(layer.name, k)] = conn.fan_out.astype(np.int32)
            if layer.kind == "maxpool":
                pool_fan_in[layer.name] = conn.fan_in
    names: dict[str, str] = {}
    for layer in net.layers.values():
        base = re.sub(r"\W", "_", layer.name)
        base = base if re.match(r"[A-Za-z]", base) else f"layer_{base}"
        name, k = base, 1
        while name in names.values():
            name, k = f"{base}_{k}", k + 1
        names[layer.name] = name
    return Plan(net, names, counts, fan_out, pool_fan_in)


@dataclass(frozen=True)
class BuiltNetwork:
    """The Brian2 objects of one compiled network (``layout.replicas`` samples side by side)."""

    network: Any
    groups: dict[str, Any]
    synapses: dict[tuple[str, int], Any]
    monitors: dict[tuple[str, str], Any]
    table: Any
    layout: Layout
    timing: RoundTiming
    structure: Structure = Structure()
    tables: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    extra: tuple = field(default=())
    release_table: Any = None
    """``release_failure``: each sample's key, rounds x replicas (standalone)."""

    @property
    def input_group(self) -> Any:
        return next(iter(self.groups.values()))


def build(plan: Plan, layout: Layout, timing: RoundTiming, spike_timing: str, clock: Any, multiplexed: bool,
          record_v: dict[str, list[int]], setup: Callable[[BuiltNetwork], Iterable[Any]] | None = None,
          structure: Structure = Structure()) -> BuiltNetwork:
    """Create the groups, synapses and monitors (inside the device's activation); see the module docstring."""
    import brian2 as b2

    net, replicas = plan.net, layout.replicas
    namespace = {"tol": eq.TOL, "t_eps": eq.TIME_EPS_MS * b2.ms, "t_never": eq.NEVER_MS * b2.ms}
    groups: dict[str, Any] = {}
    synapses: dict[tuple[str, int], Any] = {}
    monitors: dict[tuple[str, str], Any] = {}
    tables: dict[str, tuple[Any, Any]] = {}
    table = None
    release_table = None
    round_events = {"round": eq.ROUND_EVENT} if multiplexed else {}
    rows = layout.rounds + 1  # round K, after the batch, reads a silent row (pipelined layers keep cycling)
    if structure.release and multiplexed:
        release_table = b2.TimedArray(np.zeros((rows, replicas)), dt=timing.period_ms * b2.ms,
                                      name="ttfs_release_table")
        namespace = {**namespace, "release_table": release_table}
    for k, layer in enumerate(net.layers.values()):
        name = plan.names[layer.name]
        if layer.kind == "input":
            if multiplexed:
                table = b2.TimedArray(np.full((rows, replicas * layer.size), eq.NEVER_MS) * b2.ms,
                                      dt=timing.period_ms * b2.ms, name="ttfs_t_in_table")
            group = _input_group(layer, replicas, spike_timing, clock, namespace, table, name, round_events)
        elif layer.kind == "maxpool":
            group = _pool_group(layer, plan.pool_fan_in[layer.name], replicas, spike_timing, clock, namespace, name,
                                round_events)
        elif layer.kind == "neuron":
            group_ns = namespace
            if structure.departures and multiplexed:
                zeros = np.zeros((rows, replicas * layer.size))
                tables[layer.name] = (
                    b2.TimedArray(zeros * b2.ms, dt=timing.period_ms * b2.ms, name=f"{name}_eps_table"),
                    b2.TimedArray(zeros, dt=timing.period_ms * b2.ms, name=f"{name}_lost_table"))
                group_ns = {**namespace, "eps_table": tables[layer.name][0], "lost_table": tables[layer.name][1]}
            group = _hidden_group(net, layer, replicas, spike_timing, clock, group_ns, name, timing, structure, k,
                                  round_events)
            if net.variant == "exact":
                monitors[(layer.name, "report")] = b2.EventMonitor(group, "report", variables=["v", "I"],
                                                                   when="after_resets", order=10 * k + 7,
                                                                   name=f"{name}_report")
        else:
            group = _output_group(net, layer, replicas, clock, namespace, name, timing, structure, round_events)
            monitors[(layer.name, "readout")] = b2.EventMonitor(group, "readout", variables=["v"],
                                                                name=f"{name}_readout")
        if layer.kind != "output":
            _schedule(group, k)
            variables = list(eq.spike_monitor_variables(layer.kind, net.variant, structure.departures))
            monitors[(layer.name, "spikes")] = b2.SpikeMonitor(group, variables=variables, when="after_resets",
                                                               order=10 * k + 5, name=f"{name}_spikes")
        if multiplexed:
            _round_reset(group, layer, timing, name, structure)
        if layer.name in record_v:
            if layer.kind not in ("neuron", "output"):
                raise ValueError(f"record_v: layer {layer.name!r} has no membrane potential (kind {layer.kind})")
            monitors[(layer.name, "trace")] = b2.StateMonitor(group, "v", record=record_v[layer.name],
                                                              name=f"{name}_trace")
        groups[layer.name] = group
        for j, proj in enumerate(layer.projections):
            if not plan.counts[(layer.name, j)]:
                continue  # every weight 0: nothing to build (Brian2 refuses empty Synapses)
            departs = structure.departures and net.layers[proj.source].kind == "neuron"
            synapses[(layer.name, j)] = _synapses(plan, layer, j, groups[proj.source], group, replicas, spike_timing,
                                                  clock, namespace, k, structure, departs, timing)
    objects = [*groups.values(), *synapses.values(), *monitors.values()]
    built = BuiltNetwork(b2.Network(*objects, name="ttfs_network"), groups, synapses, monitors, table, layout, timing,
                         structure, tables, release_table=release_table)
    if setup is not None:
        extra = tuple(setup(built))
        built.network.add(*extra)
        built = replace(built, extra=extra)
    return built


def _schedule(group: Any, k: int) -> None:
    group.thresholder["spike"].when = "after_resets"
    group.thresholder["spike"].order = 10 * k + 1
    group.resetter["spike"].when = "after_resets"
    group.resetter["spike"].order = 10 * k + 2


def _input_group(layer: Layer, replicas: int, spike_timing: str, clock, namespace, table, name: str,
                 events: dict[str, str]):
    import brian2 as b2

    group_ns = namespace if table is None else {**namespace, "t_in_table": table}
    group = b2.NeuronGroup(replicas * layer.size, eq.INPUT_MODEL, threshold=eq.INPUT_THRESHOLD,
                           reset=eq.INPUT_RESET[spike_timing], clock=clock, namespace=group_ns, name=name,
                           events=dict(events))  # Brian2 adds its 'spike' event to the dict it is given
    group.t_in = eq.NEVER_MS * b2.ms
    return group


def _pool_group(layer: Layer, fan_in: np.ndarray, replicas: int, spike_timing: str, clock, namespace, name: str,
                events: dict[str, str]):
    import brian2 as b2

    sign = np.repeat(np.asarray(layer.arrays["sign"], dtype=np.float64), layer.size // len(layer.arrays["sign"]))
    need = np.where(sign > 0, 1.0, fan_in.astype(np.float64))  # min pools wait for every valid input
    group = b2.NeuronGroup(replicas * layer.size, eq.POOL_MODEL, threshold=eq.POOL_THRESHOLD,
                           reset=eq.POOL_RESET[spike_timing], clock=clock, namespace=namespace, name=name,
                           events=dict(events))
    group.t_first = group.t_first_next = eq.NEVER_MS * b2.ms
    group.t_last = group.t_last_next = -eq.NEVER_MS * b2.ms
    group.pool_sign = np.tile(sign, replicas)
    group.need = np.tile(need, replicas)
    return group


def _hidden_group(net: TTFSNetwork, layer: Layer, replicas: int, spike_timing: str, clock, namespace, name: str,
                  timing: RoundTiming, structure: Structure, k: int, round_events: dict[str, str]):
    import brian2 as b2

    params = integrator(net, layer)
    threshold = (eq.EXACT_THRESHOLD if net.variant == "exact" else eq.SPARSE_THRESHOLD)[spike_timing]
    events = {**round_events, **({"report": eq.REPORT_EVENT} if net.variant == "exact" else {})}
    explicit = structure.leak or structure.noise
    model = (eq.SYNAPTIC_INTEGRATOR_MODEL if structure.synaptic else eq.LEAKY_INTEGRATOR_MODEL if explicit
             else eq.INTEGRATOR_MODEL)
    reset = eq.SYNAPTIC_RESET if structure.synaptic and spike_timing == "precise" else eq.INTEGRATOR_RESET[spike_timing]
    if structure.release:
        model += "\n" + eq.RELEASE_KEY
    if structure.departures:
        model += eq.DEPARTURE_MODEL
        reset += "\n" + eq.DEPARTURE
        events["depart"] = eq.DEPART_EVENT
    group = b2.NeuronGroup(replicas * layer.size, model, threshold=threshold, reset=reset, method="euler",
                           clock=clock, events=events, namespace=namespace, name=name)
    if structure.synaptic:
        group.run_regularly(eq.SYNAPTIC_STEP, when="groups", name=f"{name}_step")
        group.beta_decays = 1.0 if net.variant == "exact" else 0.0  # exact's padding is synaptic, sparse's drive not
    elif explicit:
        group.run_regularly(eq.LEAKY_STEP + (eq.NOISE_STEP if structure.noise else ""), when="groups",
                            name=f"{name}_step")
    if net.variant == "exact":  # after the layer's turn: a crossing in the step that ends at t_min reports too
        group.set_event_schedule("report", when="after_resets", order=10 * k + 6)
    if structure.departures:
        group.run_on_event("depart", eq.DEPART_RESET, when="after_resets", order=10 * k + 4)
        group.thresholder["depart"].when = "after_resets"
        group.thresholder["depart"].order = 10 * k + 3
        group.latency = structure.departure_latency * b2.ms
        group.q_unit = 1 * b2.ms
    group.alpha = np.tile(params.alpha, replicas)
    group.beta = np.tile(params.beta, replicas)
    group.theta = np.tile(params.theta, replicas)
    offset = timing.offset_ms(layer.name)  # the group counts time from its own round start
    for key in ("t_on", "t_off", "t_late", "t_fire", "t_max"):
        setattr(group, key, (getattr(params, key) - offset) * b2.ms)
    group.tau_c = params.tau_c * b2.ms
    group.t_end = timing.period_ms * b2.ms
    return group


def _output_group(net: TTFSNetwork, layer: Layer, replicas: int, clock, namespace, name: str, timing: RoundTiming,
                  structure: Structure, round_events: dict[str, str]):
    import brian2 as b2

    params = integrator(net, layer)
    model = (eq.SYNAPTIC_OUTPUT_MODEL if structure.synaptic else eq.LEAKY_OUTPUT_MODEL if structure.leak
             else eq.OUTPUT_MODEL)
    if structure.release:
        model += "\n" + eq.RELEASE_KEY
    group = b2.NeuronGroup(replicas * layer.size, model, method="euler", clock=clock,
                           events={**round_events, "readout": eq.END_OF_ROUND}, namespace=namespace, name=name)
    if structure.synaptic:
        group.run_regularly(eq.SYNAPTIC_OUTPUT_STEP, when="groups", name=f"{name}_step")
    elif structure.leak:
        group.run_regularly(eq.LEAKY_OUTPUT_STEP, when="groups", name=f"{name}_step")
    group.alpha = np.tile(params.alpha, replicas)
    offset = timing.offset_ms(layer.name)
    for key in ("t_on", "t_off"):
        setattr(group, key, (getattr(params, key) - offset) * b2.ms)
    group.tau_c = params.tau_c * b2.ms
    group.t_end = timing.period_ms * b2.ms
    return group


def _synapses(plan: Plan, layer: Layer, j: int, source, target, replicas: int, spike_timing: str, clock, namespace,
              k: int, structure: Structure, departs: bool, timing: RoundTiming):
    """The projection's synapses; from a neuron whose spikes depart (perturbations), on its ``depart`` event,
    with the latency its departure already adds taken off the delay."""
    import brian2 as b2

    proj = layer.projections[j]
    departure = "t_dep" if departs else "t_spike"
    event = {"on_event": "depart"} if departs else {}
    delay = proj.delay - (structure.departure_latency if departs else 0.0)
    name = f"{plan.names[layer.name]}__from__{plan.names[proj.source]}"
    repeats = sum(p.source == proj.source for p in layer.projections[:j])
    name += f"_{repeats}" if repeats else ""  # a second projection from the same source
    if layer.kind == "maxpool":
        syn = b2.Synapses(source, target, model=eq.POOL_SYNAPSE_MODEL, on_pre=eq.on_pre_pool(departure),
                          clock=clock,
                          namespace=namespace, delay=delay * b2.ms, name=name, **event)
    else:
        leaky = structure.leak if layer.kind == "output" else structure.leak or structure.noise
        on_pre = eq.on_pre_integrator(spike_timing, departure, leaky=leaky, synaptic=structure.synaptic,
                                      release=structure.release)
        model = eq.SYNAPSE_MODEL + (eq.RELEASE_SYNAPSE if structure.release else "")
        if structure.synapse_delays:
            model = model.replace(*eq.PER_SYNAPSE_LAG)
        # a scalar delay makes Brian2's delays homogeneous for good: per-synapse ones are set after connecting
        scalar = {} if structure.synapse_delays else {"delay": delay * b2.ms}
        syn = b2.Synapses(source, target, model=model, on_pre=on_pre, clock=clock, namespace=namespace, name=name,
                          **scalar, **event)
    # After the resets, so that the presynaptic t_spike is already set (SPEC section 6).
    syn.pre.when = "after_resets"
    syn.pre.order = 10 * k
    pre, post, weight = cn.replicate(plan.connection(layer.name, j), replicas)
    syn.connect(i=pre, j=post)
    if layer.kind != "maxpool":
        syn.w = weight
    del pre, post, weight  # Brian2 keeps its own copy
    # the arrival in the target's frame: sent in the source's frame, which starts frame_shift earlier
    syn.lag = (delay + timing.shift_ms(proj.source, layer.name)) * b2.ms
    if layer.kind != "maxpool" and structure.synapse_delays:
        syn.delay = delay * b2.ms
    return syn


def _round_reset(group, layer: Layer, timing: RoundTiming, name: str, structure: Structure) -> None:
    """Rounds (standalone): at each of the group's round starts (:data:`~ttfs_brian.brian.equations.ROUND_EVENT`,
    slot ``start``, before anything else) reset its per-sample state; its first round starts at its offset."""
    import brian2 as b2

    kind = layer.kind
    role = {"neuron": "hidden", "maxpool": "pool"}.get(kind, kind)
    code = eq.ROUND_RESET[role] + ("\n" + eq.ROUND_RESET["departures"] if structure.departures and kind == "neuron"
                                   else "")
    if structure.release and kind in ("neuron", "output"):
        code += f"\nrelease_key = release_table(t - t_offset, i // {layer.size})"
    group.run_regularly(eq.ROUND_CLOCK, when="start", order=-101, name=f"{name}_round_clock")
    group.run_on_event("round", code, when="start", order=-99)
    group.thresholder["round"].when = "start"
    group.thresholder["round"].order = -100
    offset = timing.offset_steps(layer.name)
    group.round_steps = timing.steps
    group.round_step = offset - timing.steps  # so that the first round starts at the offset
    group.round_index = -1
    group.t_offset = offset * timing.dt * b2.ms
    if kind != "output":  # inert until its first round: nothing may fire (or depart) for a round -1
        group.spiked = True
        if structure.departures and kind == "neuron":
            group.departed = True
