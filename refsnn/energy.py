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

``report(model, batches)`` runs the model in eval mode on the batches with an EventCounter
attached and returns per-layer firing rates, MACs, ACs and energy per sample and the totals in
mJ per sample for the SNN and its ANN reference.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from .nn.attention import QKCore, SSACore
from .nn.counting import EventCounter, attach, detach
from .nn.layers import LIF, Conv1x1, Conv2d, Linear

__all__ = ["E_MAC_PJ", "E_AC_PJ", "report", "format_report", "LayerEnergy"]

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


class LayerEnergy(dict):
    """One layer's totals over the measured samples (use ``per_sample`` for the report)."""


def _batches(batches) -> Iterable[tuple]:
    for b in batches:
        if hasattr(b, "audio") and hasattr(b, "frames"):
            yield b.audio, b.frames
        elif isinstance(b, dict):
            yield b.get("audio"), b.get("visual", b.get("frames"))
        else:
            audio, visual = b[0], b[1]
            yield audio, visual


def _parent(modules: dict, name: str):
    return modules.get(name.rsplit(".", 1)[0]) if "." in name else None


def report(model, batches, *, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> dict:
    """Measure energy on ``batches`` (Batch objects, (audio, visual) pairs or dicts).

    Returns a JSON-ready dict: ``samples``, ``constants``, ``layers`` (name -> kind, input
    firing rate, MACs, ACs, energy_mJ, ann_macs, all per sample), ``firing_rates`` (LIF name ->
    output spike rate), ``machine_ops`` (popcount and AND words per sample), ``totals``
    (``snn_mJ``, ``ann_mJ``, ``macs``, ``acs``, ``ann_macs``, ``ann_over_snn``).
    """
    modules = OrderedDict(model.named_modules())
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
            batch = (audio if audio is not None else visual).shape[0]
            samples += batch
            _collect(modules, layers, rates, machine, batch)
    finally:
        detach(model)
        counter.clear()
        model.train(was_training)
    if samples == 0:
        raise ValueError("batches: no batch was given; energy needs at least one real batch")
    return _summarise(layers, rates, machine, samples, e_mac_pj, e_ac_pj)


def _add(layers, name, kind, **values):
    rec = layers.setdefault(name, {"kind": kind, "macs": 0.0, "acs": 0.0, "ann_macs": 0.0,
                                   "input_events": 0, "input_elements": 0})
    if rec["kind"] != kind:
        rec["kind"] = "mixed"
    for key, value in values.items():
        rec[key] = rec.get(key, 0) + value


def _collect(modules, layers, rates, machine, batch):
    for name, m in modules.items():
        counts = getattr(m, "op_counts", None) or {}
        if isinstance(m, (Conv2d, Conv1x1, Linear)) and "input_elements" in counts:
            macs = float(counts["macs"])
            ann = macs / counts["steps"]
            events = counts["input_events"]
            if events is None:
                _add(layers, name, "mac", macs=macs, ann_macs=ann)
            else:
                fanout = macs / counts["input_elements"]
                # a conv whose input mixes spike columns with analog ones (mbt's bottlenecks)
                # reports the analog columns' MACs beside its events
                _add(layers, name, "ac", acs=events * fanout, ann_macs=ann,
                     macs=float(counts.get("analog_macs", 0)),
                     input_events=events, input_elements=counts["input_elements"])
        elif isinstance(m, LIF) and "spikes" in counts:
            r = rates.setdefault(name, [0, 0])
            r[0] += counts["spikes"]
            r[1] += counts["neurons"]
        elif isinstance(m, QKCore) and counts:
            parent = _parent(modules, name)
            # the core's dense size: Q has as many elements as q_conv produced (MACs / C_in)
            q_conv = parent.q_conv.op_counts
            q_elements = q_conv["macs"] / parent.q_conv.in_channels
            steps = q_conv["steps"]
            _add(layers, name, "ac", acs=float(counts["additions"] + counts["kept"]),
                 ann_macs=2.0 * q_elements / steps,
                 input_events=counts["additions"], input_elements=int(q_elements))
            for key in machine:
                machine[key] += counts.get(key, 0)
        elif isinstance(m, SSACore) and counts:
            parent = _parent(modules, name)
            q, v = parent.q_lif.op_counts, parent.v_lif.op_counts
            # (Q Kᵀ) V: each Q spike meets every key (N_k of them) and each V spike feeds every
            # query (N_q); the two differ when queries are another token set (factorized)
            n_k = counts["macs"] / (2 * counts["comparisons"])
            n_q = n_k * q["neurons"] / v["neurons"]
            q_spikes, v_spikes, steps = q["spikes"], v["spikes"], q["steps"]
            _add(layers, name, "ac", acs=float(n_k * q_spikes + n_q * v_spikes),
                 ann_macs=counts["macs"] / steps, input_events=q_spikes + v_spikes,
                 input_elements=int(2 * counts["comparisons"]))


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
