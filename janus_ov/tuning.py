"""A CPU-plugin setting that no CPU flag predicts, measured once per machine at first launch.

The CPU plugin quantizes the activations of an int4 matmul to int8 on the fly, in groups of 32
input channels by default (DYNAMIC_QUANTIZATION_GROUP_SIZE). Groups as long as the weights' own (64
for `int4`, 128 for `int4-sym128`) make prompts and image batches faster on every kind measured, and
a chat token -- the commonest call -- faster on some kinds (Intel Xeon with AMX, AMD Zen 5) but
slower on another (Zen 4), which shares its CPU flags with Zen 5. So it is measured, not guessed
from flags: the int4 matmuls of the language model's first layers (its own weights, as they are in
the IR) compiled with either group and called in turn with one row (a chat token) and eight (four
images' CFG rows). The verdict is kept per CPU, OpenVINO version and weight layout in a small JSON
file beside OpenVINO's compiled-model cache, so a machine pays its few seconds once; without a
cache folder it is measured once per process. Figures: benchmarks/results/design-measurements.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import openvino as ov

RECORD = "cpu-tuning.json"
# The chain's int4 bytes: well past a server CPU's last-level cache (32 MB on ours), so its calls
# stream weights from memory as the whole model's do, while they take milliseconds.
CHAIN_BYTES = 128 * 2**20
ROWS = (1, 8)  # a chat token; four images' CFG rows
# The weights' group is taken unless it makes a one-row call this much slower: prompts and image
# rows gain 5-20 % with it wherever measured, and smaller differences at one row are within what a
# shared VM's noise leaves in a short measurement.
TOLERANCE = 0.03

_lock = threading.Lock()
_measured: dict = {}  # (record path, key) -> verdict: a process measures each layout once


def activation_group(model: ov.Model, group: int, record_dir: str | Path | None) -> int | None:
    """The activation group the CPU plugin should get for `model` (a language model whose int4
    weights come in groups of `group`) on this machine: `group`, or None for the plugin's default."""
    default = int(ov.Core().get_property("CPU", "DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    if group == default:
        return None
    key = f"{machine_key()}|{layout_key(model, group)}"
    path = Path(record_dir) / RECORD if record_dir else None
    with _lock:  # one measurement at a time, and never while another thread measures
        verdict = _measured.get((path, key)) or _read(path).get(key)
        if not (isinstance(verdict, dict) and verdict.get("group") in (default, group)):  # none, or not ours
            times = time_groups(weight_chain(model), (default, group))
            verdict = {"group": choose(times, default, group), "ms": times, "date": time.strftime("%Y-%m-%d %H:%M")}
            _write(path, key, verdict)
        _measured[(path, key)] = verdict
    return None if verdict["group"] == default else verdict["group"]


def choose(times: dict, default: int, group: int, tolerance: float = TOLERANCE) -> int:
    """times: {group: {rows: ms}}. The weights' group unless its one-row call is slower beyond tolerance."""
    return group if times[group][1] <= times[default][1] * (1 + tolerance) else default


def weight_chain(model: ov.Model, budget: int = CHAIN_BYTES) -> ov.Model:
    """A model of the language model's first int4 matmuls (its own weight subgraphs, up to `budget`
    bytes of int4 weights) in the model's order: the calls the setting changes. Matmuls that share an
    input in the model (q, k, v; gate, up) share one here too, so the plugin fuses what it fuses there."""
    import openvino.opset13 as ops

    by_input, total = {}, 0  # the model's matmul input -> the weights it meets, in the model's order
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul" and total < budget and (nbytes := _int4_bytes(op.input_value(1))):
            source = op.input_value(0)
            by_input.setdefault((source.get_node().get_name(), source.get_index()), []).append(op.input_value(1))
            total += nbytes
    if not by_input:
        raise ValueError("The model has no int4 matmul weights.")
    first = next(iter(by_input.values()))[0]
    x = ops.parameter([-1, first.get_partial_shape()[1].get_length()], ov.Type.f32, name="x")
    h = x.output(0)
    for weights in by_input.values():
        if weights[0].get_partial_shape()[1] != h.get_partial_shape()[1]:
            continue  # a width this chain does not reach: leave it out
        outputs = [ops.matmul(h, weight, False, True).output(0) for weight in weights]
        h = outputs[0] if len(outputs) == 1 else ops.add(outputs[0], outputs[1]).output(0)
        for more in outputs[2:]:
            h = ops.add(h, more).output(0)
    return ov.Model([h], [x], "weight-chain")


def _int4_bytes(weight: ov.Output) -> int:
    """Bytes of the u4/i4 constants a matmul's weight input is computed from (0: not int4 weights)."""
    stack, total = [weight.get_node()], 0
    while stack:
        node = stack.pop()
        if node.get_type_name() == "Parameter":
            return 0  # an activation, not a weight
        if node.get_type_name() == "Constant":
            total += node.get_byte_size() if node.get_output_element_type(0).get_type_name() in ("u4", "i4") else 0
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return total


def time_groups(chain: ov.Model, groups, rows=ROWS, rounds: int = 15) -> dict:
    """{group: {rows: median ms}}, the groups taking turns call by call (a VM's slow spells hit all alike)."""
    core = ov.Core()
    requests = {g: core.compile_model(chain, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                                     "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(g)}).create_infer_request()
                for g in groups}
    width = chain.input(0).get_partial_shape()[1].get_length()
    inputs = {m: (np.random.default_rng(m).standard_normal((m, width)) * 0.02).astype(np.float32) for m in rows}
    times = {g: {m: [] for m in rows} for g in groups}
    for round_ in range(rounds + 2):  # the first two rounds pay weight repacking and JIT
        for m in rows:
            for g, request in requests.items():
                t0 = time.perf_counter()
                request.infer({0: inputs[m]})
                if round_ >= 2:
                    times[g][m].append(time.perf_counter() - t0)
    return {g: {m: round(statistics.median(v) * 1e3, 3) for m, v in per.items()} for g, per in times.items()}


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """This machine's first CPU as Linux's /proc/cpuinfo describes it (field -> text; empty elsewhere:
    then every choice made from it falls back to the plugin's defaults). The one reader of that file."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                name, colon, value = line.partition(":")
                if not colon and fields:
                    break  # the first processor's block is over
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset:
    """This machine's CPU feature flags."""
    return frozenset(cpu_info().get("flags", "").split())


def machine_key() -> str:
    """This CPU (model, family, stepping, flags, cores) and OpenVINO's version: what the verdict holds for."""
    info = cpu_info()
    flags = hashlib.sha1(info.get("flags", "").encode()).hexdigest()[:12]
    ids = [info.get(field, "") for field in ("model name", "cpu family", "model", "stepping")]
    return "|".join([*ids, flags, str(os.cpu_count()), ov.get_version()])


def layout_key(model: ov.Model, group: int) -> str:
    """The weights the verdict is for: their group, int4 kind (asymmetric u4 / symmetric i4) and shapes."""
    consts = [op for op in model.get_ops() if op.get_type_name() == "Constant"
              and op.get_output_element_type(0).get_type_name() in ("u4", "i4")]
    kinds = "+".join(sorted({op.get_output_element_type(0).get_type_name() for op in consts}))
    shapes = hashlib.sha1(str(sorted({tuple(op.get_output_shape(0)) for op in consts})).encode()).hexdigest()[:12]
    return f"group {group}|{kinds}|shapes {shapes}"


def _read(path: Path | None) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure again (and replace it)
    return record if isinstance(record, dict) else {}


def _write(path: Path | None, key: str, verdict: dict) -> None:
    """Add the verdict to the record, atomically (a reader sees the old file or the new one, never half)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps({**_read(path), key: verdict}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: measured again at the next launch, which costs seconds, not a failure
