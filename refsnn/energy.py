"""Energy and operation counts (SPEC section 7; the QKFormer / Spikingformer convention).

    E = E_MAC * MACs + E_AC * ACs,    E_MAC = 4.6 pJ, E_AC = 0.9 pJ (45 nm, Horowitz 2014)

Counts come from what the layers executed on real batches, not from formulas:

* A convolution or linear layer whose input is analog (images, spectrograms, pooled features)
  counts MACs = its multiply-accumulates; the stem of a stream whose input repeats over time
  ran once per sample, one whose frames differ per step ran T times.
* A layer whose input carries spike events counts ACs = events x fan-out, where the fan-out
  per input element is MACs / input elements (for a 3x3 'same' convolution 9 x C_out; for a
  residual sum of spike maps the events of every constituent map count, see
  ``refsnn.nn.counting``).
* The Q-K attention core counts one AC per Q spike summed and one per K spike kept. The SSA
  core (explicit map, evaluated as (Q Kᵀ) V) counts N_k ACs per Q spike and N_q per V spike
  (N_q = N_k unless the queries are another token set, as in the factorized baseline); a
  convolution whose input mixes spike and analog token columns (mbt's bottlenecks) counts
  ACs for the events and MACs for the analog columns.
  Popcount and AND words of the packed kernels are reported beside the energy, not in it.
* BatchNorm folds into the preceding convolution (0 energy); LIF updates are not counted.
* The ANN reference is the same network with ReLU for LIF at T = 1: every layer once per
  sample, entirely in MACs (a Q-K core: one MAC per element for the sum and one for the mask).

Each module declares how it is counted (``energy_role`` and, for synapses and neurons,
``energy_counts()``; see ``refsnn.nn.counting``): the report walks the modules, adds what the
synapses (convolutions, linear maps, attention cores) and neurons declare, and refuses a module
that declares nothing. FREE and CONTAINER modules add nothing of their own.

``report(model, batches)`` runs the model in eval mode on the batches with an EventCounter
attached and returns per-layer firing rates, MACs, ACs and energy per sample and the totals in
mJ per sample for the SNN and its ANN reference.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from .nn.counting import ENERGY_ROLES, NEURON, SYNAPSE, EventCounter, attach, detach

__all__ = ["E_MAC_PJ", "E_AC_PJ", "report", "format_report", "check_declarations"]

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


def _batches(batches) -> Iterable[tuple]:
    for b in batches:
        if hasattr(b, "audio") and hasattr(b, "frames"):
            yield b.audio, b.frames
        elif isinstance(b, dict):
            yield b.get("audio"), b.get("visual", b.get("frames"))
        else:
            audio, visual = b[0], b[1]
            yield audio, visual


def check_declarations(model) -> "OrderedDict[str, str]":
    """Every module's ``energy_role`` (refsnn.nn.counting), by name; a module that declares
    none, or one that is not a role, is a ValueError naming it: it would otherwise be left
    out of the count."""
    roles = OrderedDict()
    for name, m in model.named_modules():
        role = getattr(m, "energy_role", None)
        if role not in ENERGY_ROLES:
            what = "declares no energy_role" if role is None else f"has energy_role {role!r}"
            raise ValueError(f"{name or 'the model'} ({type(m).__name__}) {what}: set the class "
                             f"attribute energy_role to one of {list(ENERGY_ROLES)} "
                             f"(refsnn.nn.counting) so that energy accounting can count it")
        if role in (SYNAPSE, NEURON) and not callable(getattr(m, "energy_counts", None)):
            raise ValueError(f"{name} ({type(m).__name__}): energy_role {role!r} needs an "
                             f"energy_counts() method")
        roles[name] = role
    return roles


def report(model, batches, *, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> dict:
    """Measure energy on ``batches`` (Batch objects, (audio, visual) pairs or dicts).

    Returns a JSON-ready dict: ``samples``, ``constants``, ``layers`` (name -> kind, input
    firing rate, MACs, ACs, energy_mJ, ann_macs, all per sample), ``firing_rates`` (LIF name ->
    output spike rate), ``machine_ops`` (popcount and AND words per sample), ``totals``
    (``snn_mJ``, ``ann_mJ``, ``macs``, ``acs``, ``ann_macs``, ``ann_over_snn``).
    Every module must declare its ``energy_role`` (``check_declarations``).
    """
    roles = check_declarations(model)
    modules = OrderedDict((name, m) for name, m in model.named_modules()
                          if roles[name] in (SYNAPSE, NEURON))
    layers: OrderedDict[str, dict] = OrderedDict()
    rates: OrderedDict[str, list] = OrderedDict()
    machine = {"popcount_words": 0, "and_words": 0}
    samples = 0
    was_training = model.training
    counter = EventCounter()
    model.eval()
    attach(model, counter)
    try:
        for audio, visual in _batches(batches):
            counter.clear()
            model.forward(audio, visual)
            samples += (audio if audio is not None else visual).shape[0]
            _collect(modules, roles, layers, rates, machine)
    finally:
        detach(model)
        counter.clear()
        model.train(was_training)
    if samples == 0:
        raise ValueError("batches: no batch was given; energy needs at least one real batch")
    return _summarise(layers, rates, machine, samples, e_mac_pj, e_ac_pj)


def _collect(modules, roles, layers, rates, machine):
    """Add the last forward's declared counts of every synapse and neuron."""
    for name, m in modules.items():
        counts = m.energy_counts()
        if counts is None:
            continue
        if roles[name] == NEURON:
            r = rates.setdefault(name, [0, 0])
            r[0] += counts.spikes
            r[1] += counts.neurons
            continue
        rec = layers.setdefault(name, {"kind": counts.kind, "macs": 0.0, "acs": 0.0, "ann_macs": 0.0,
                                       "input_events": 0, "input_elements": 0})
        if rec["kind"] != counts.kind:
            rec["kind"] = "mixed"
        rec["macs"] += counts.macs
        rec["acs"] += counts.acs
        rec["ann_macs"] += counts.ann_macs
        rec["input_events"] += counts.input_events
        rec["input_elements"] += counts.input_elements
        machine["popcount_words"] += counts.popcount_words
        machine["and_words"] += counts.and_words


def _summarise(layers, rates, machine, samples, e_mac_pj, e_ac_pj):
    out_layers = OrderedDict()
    tot = {"macs": 0.0, "acs": 0.0, "ann_macs": 0.0}
    for name, rec in layers.items():
        macs, acs, ann = rec["macs"] / samples, rec["acs"] / samples, rec["ann_macs"] / samples
        energy = (e_mac_pj * macs + e_ac_pj * acs) * 1e-9          # pJ -> mJ
        rate = rec["input_events"] / rec["input_elements"] if rec["input_elements"] else None
        out_layers[name] = {"kind": rec["kind"], "input_firing_rate": rate, "macs": macs, "acs": acs,
                            "energy_mJ": energy, "ann_macs": ann}
        tot["macs"] += macs
        tot["acs"] += acs
        tot["ann_macs"] += ann
    snn = (e_mac_pj * tot["macs"] + e_ac_pj * tot["acs"]) * 1e-9
    ann = e_mac_pj * tot["ann_macs"] * 1e-9
    return {
        "samples": samples,
        "constants": {"E_MAC_pJ": e_mac_pj, "E_AC_pJ": e_ac_pj},
        "layers": out_layers,
        "firing_rates": OrderedDict((k, s / n if n else 0.0) for k, (s, n) in rates.items()),
        "machine_ops": {k: v / samples for k, v in machine.items()},
        "totals": {"snn_mJ": snn, "ann_mJ": ann, "macs": tot["macs"], "acs": tot["acs"],
                   "ann_macs": tot["ann_macs"], "ann_over_snn": ann / snn if snn else None},
    }


def format_report(rep: dict, *, top: int | None = None) -> str:
    """A plain-text table of a ``report`` (per sample)."""
    rows = list(rep["layers"].items())
    if top:
        rows = sorted(rows, key=lambda kv: -kv[1]["energy_mJ"])[:top]
    width = max([len(n) for n, _ in rows] + [10])
    lines = [f"{'layer':<{width}}  kind  in-rate      MACs        ACs   energy(uJ)",
             "-" * (width + 50)]
    for name, r in rows:
        rate = "   -  " if r["input_firing_rate"] is None else f"{r['input_firing_rate']:6.3f}"
        lines.append(f"{name:<{width}}  {r['kind']:<4}  {rate} {r['macs']:10.3g} {r['acs']:10.3g} "
                     f"{r['energy_mJ'] * 1e3:11.4f}")
    t = rep["totals"]
    lines.append("-" * (width + 50))
    lines.append(f"per sample: SNN {t['snn_mJ']:.4f} mJ ({t['macs']:.3g} MACs + {t['acs']:.3g} ACs); "
                 f"ANN reference {t['ann_mJ']:.4f} mJ ({t['ann_macs']:.3g} MACs); "
                 f"ANN/SNN = {t['ann_over_snn']:.2f}x" if t["ann_over_snn"] else "per sample: no energy")
    m = rep["machine_ops"]
    lines.append(f"packed kernels (beside the energy): {m['popcount_words']:.0f} popcount words, "
                 f"{m['and_words']:.0f} AND words per sample")
    return "\n".join(lines)
