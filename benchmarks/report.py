"""Describe the machine, derive bounds / ratios / target status, and write the markdown table."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

GIB = 1024**3
IMAGE_STEPS = 576
PACKAGES = ("openvino", "nncf", "torch", "transformers", "numpy", "tokenizers")


# ---------------------------------------------------------------- machine

def cpu_model() -> str:
    from janus_ov.tuning import cpu_info

    return cpu_info().get("model name") or platform.processor() or platform.machine()


def in_turns(items, round_no: int) -> list:
    """`items` in order on even rounds and reversed on odd ones, for measurements taking turns call by
    call: of two identical models run back to back the second measured 1.3-2 ms (5-6 %) faster a step
    (design-measurements.md), so each side goes second half of the time."""
    items = list(items)
    return items if round_no % 2 == 0 else items[::-1]


def cpu_family() -> str:
    """The CPU family number: our "AMD EPYC" VMs with AVX-512 are Zen 4 (family 25) or Zen 5 (26)."""
    from janus_ov.tuning import cpu_info

    return cpu_info().get("cpu family", "")


def cpu_flags() -> list:
    """The flags that decide the kernels (and the runtime's per-kind choices), from the runtime's reader."""
    from janus_ov.tuning import cpu_flags as all_flags

    return sorted(f for f in all_flags() if f.startswith(("avx", "amx")) or "vnni" in f)


def load_average() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    import psutil

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, encoding="utf-8", errors="replace", timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"cpu": cpu_model(), "cpu_family": cpu_family(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False), "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
            "os": platform.platform(), "python": platform.python_version(), "versions": versions,
            "git_commit": commit, "load_start": load_average()}


def vector_tier() -> str:
    """The widest matrix/vector units: what separates machine kinds that share a model name
    (our "AMD EPYC" VMs are AVX2-only Zen 3 or AVX-512 Zen 4, and their figures differ a lot)."""
    flags = set(cpu_flags())
    return next((tier for tier, flag in (("amx", "amx_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")) if flag in flags), "")


def machine_slug() -> str:
    words = re.sub(r"\(.*?\)|processor|\d+-core|cpu", " ", cpu_model().lower())
    slug = "-".join(re.findall(r"[a-z0-9]+", words))[:40] or "cpu"
    family = f"f{cpu_family()}" if cpu_family() else ""
    return "-".join(filter(None, (slug, family, vector_tier(), f"{os.cpu_count()}cpu")))


# ---------------------------------------------------------------- derived figures

def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _median(values):
    import statistics

    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def bandwidth_gbps(res) -> float | None:
    """The machine's bandwidth for the bound: the best median of the start/end measurements
    (a lower figure, taken under load, would make our share of the bound look better)."""
    values = [_get(res, "bandwidth", k, "gbps_median") for k in ("start", "end")]
    values = [v for v in values if v]
    return max(values) if values else None


def summarize(res: dict) -> dict:
    """Add res["summary"]: one flat row of headline figures per configuration, plus ratios/targets."""
    bw = bandwidth_gbps(res)
    rows = {}
    for weights, ov in res.get("openvino", {}).items():
        if _get(ov, "convert", "cached"):  # a cache check, not a conversion: no conversion figures
            ov["convert"] = dict(ov["convert"], convert_s=None, peak_rss_bytes=None)
        chat, img1, img4 = ov.get("chat", {}), ov.get("image_1", {}), ov.get("image_4", {})
        text_bytes = _get(chat, "bytes", "text_token") or _get(ov, "convert", "bytes", "text_token")
        step_bytes = _get(img1, "bytes", "image_step") or _get(ov, "convert", "bytes", "image_step")
        rows[f"openvino-{weights}"] = {
            "convert_s": _get(ov, "convert", "convert_s"),
            "convert_peak_rss_gib": _gib(_get(ov, "convert", "peak_rss_bytes")),
            "convert_cached": _get(ov, "convert", "cached"),
            "ready_first_s": _get(ov, "warm_start", "first", "ready_s"),
            "ready_s": _median(r.get("ready_s") for r in _get(ov, "warm_start", "runs") or []),
            "warm_s": _median(r.get("warm_s") for r in _get(ov, "warm_start", "runs") or []),
            "ttft_s": chat.get("ttft_s_median"),
            "prompt_tokens": chat.get("prompt_tokens_median"),
            "follow_up_ttft_s": chat.get("follow_up_ttft_s_median"),
            "follow_up_prompt_tokens": chat.get("follow_up_prompt_tokens_median"),
            "follow_up_cached_tokens": chat.get("follow_up_cached_tokens_median"),
            "decode_tok_s": chat.get("decode_tok_s_median"),
            "forced_length_ok": chat.get("forced_length_ok"),
            "image1_s": img1.get("image_s_median"), "image4_s": img4.get("image_s_median"),
            "app_image1_s": img1.get("app_image_s_median"),
            "app_previews": (img1.get("app_runs") or [{}])[0].get("previews"),
            "steps_per_s": img1.get("steps_per_s_median"), "steps_per_s_4": img4.get("steps_per_s_median"),
            "vq_decode_s": _get(ov, "vq_decode", "vq_decode_s_median"),
            "peak_rss_chat_gib": _gib(chat.get("peak_rss_bytes")),
            "peak_rss_image1_gib": _gib(img1.get("peak_rss_bytes")),
            "peak_rss_image4_gib": _gib(img4.get("peak_rss_bytes")),
            "text_token_bytes": text_bytes, "image_step_bytes": step_bytes,
        }
    for dtype, pt in res.get("pytorch", {}).items():
        chat, img1, img4 = pt.get("chat", {}), pt.get("image_1", {}), pt.get("image_4", {})
        rows[f"pytorch-{dtype}"] = {
            "ttft_s": chat.get("ttft_s_median"), "prompt_tokens": chat.get("prompt_tokens"),
            "decode_tok_s": chat.get("decode_tok_s_median"), "load_s": chat.get("load_s"),
            "image1_s": img1.get("image_s_median"), "image4_s": img4.get("image_s_median"),
            "steps_per_s": img1.get("steps_per_s_median"), "vq_decode_s": img1.get("vq_decode_s_median"),
            "peak_rss_chat_gib": _gib(chat.get("peak_rss_bytes")),
            "peak_rss_image1_gib": _gib(img1.get("peak_rss_bytes")),
            "text_token_bytes": _get(chat, "bytes_per_step", "text_token"),
            "image_step_bytes": _get(img1, "bytes_per_step", "image_step") or _get(chat, "bytes_per_step", "image_step"),
        }
    for row in rows.values():
        row["decode_bound_tok_s"] = bw * 1e9 / row["text_token_bytes"] if bw and row.get("text_token_bytes") else None
        row["steps_bound_per_s"] = bw * 1e9 / row["image_step_bytes"] if bw and row.get("image_step_bytes") else None
        row["decode_of_bound"] = _ratio(row.get("decode_tok_s"), row["decode_bound_tok_s"])
        row["steps_of_bound"] = _ratio(row.get("steps_per_s"), row["steps_bound_per_s"])
        row["image1_bound_s"] = IMAGE_STEPS / row["steps_bound_per_s"] if row["steps_bound_per_s"] else None
        row["image4_over_1"] = _ratio(row.get("image4_s"), row.get("image1_s"))
        row["peak_rss_serving_gib"] = max((row.get(k) for k in ("peak_rss_chat_gib", "peak_rss_image1_gib",
                                           "peak_rss_image4_gib") if row.get(k)), default=None)
    res["summary"] = {"bandwidth_gbps": bw, "rows": rows, "ratios": _ratios(rows), "targets": _targets(rows)}
    return res["summary"]


def _gib(n):
    return n / GIB if n else None


def _ratios(rows) -> dict:
    out = {}
    for weights in ("int4", "int8", "fp16"):
        ov = rows.get(f"openvino-{weights}")
        if not ov:
            continue
        for dtype in ("fp32", "bf16"):
            pt = rows.get(f"pytorch-{dtype}")
            if not pt:
                continue
            out[f"{weights}_vs_pytorch_{dtype}"] = {
                "decode_speedup": _ratio(ov.get("decode_tok_s"), pt.get("decode_tok_s")),
                "ttft_speedup": _ratio(pt.get("ttft_s"), ov.get("ttft_s")),
                "image1_speedup": _ratio(pt.get("image1_s"), ov.get("image1_s")),
            }
    return out


# (name, row key, comparison, target) -- issue 7 / issue 8, for the default int4 model.
TARGETS = [
    ("chat decode >= 18 tok/s", "decode_tok_s", ">=", 18.0),
    ("chat decode >= 0.9 x bandwidth bound", "decode_of_bound", ">=", 0.9),
    ("first token <= 6 s (629-token prompt)", "ttft_s", "<=", 6.0),
    ("one image <= 25 s", "image1_s", "<=", 25.0),
    ("four images in one batch <= 35 s", "image4_s", "<=", 35.0),
    ("four images <= 1.5 x one", "image4_over_1", "<=", 1.5),
    ("VQ decode <= 1 s", "vq_decode_s", "<=", 1.0),
    ("ready from warm cache <= 4 s", "ready_s", "<=", 4.0),
    ("peak RSS while serving <= 2.5 GiB", "peak_rss_serving_gib", "<=", 2.5),
    ("conversion peak RSS <= 6 GiB", "convert_peak_rss_gib", "<=", 6.0),
]


def _targets(rows) -> list:
    ov = rows.get("openvino-int4", {})
    out = []
    for name, key, op, target in TARGETS:
        value = ov.get(key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        out.append({"target": name, "value": value, "met": met})
    pt = rows.get("pytorch-fp32", {})
    speedup = _ratio(ov.get("decode_tok_s"), pt.get("decode_tok_s"))
    out.append({"target": "int4 decode >= 4 x PyTorch fp32", "value": speedup,
                "met": None if speedup is None else speedup >= 4.0})
    return out


# ---------------------------------------------------------------- markdown

def _f(value, fmt="{:.1f}", suffix=""):
    return "–" if value is None else fmt.format(value) + suffix


def markdown(res: dict) -> str:
    s = res.get("summary") or summarize(res)
    m = res["machine"]
    bw = s["bandwidth_gbps"]
    lines = [f"## Benchmark: {res['model']} (random weights), {res['date'][:10]}", ""]
    if res.get("note"):
        lines += [f"**Note:** {res['note']}", ""]
    lines += [
        f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} logical CPUs / "
        f"{m['physical_cores']} cores, {m['ram_gib']} GiB RAM; {m['os']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + f". Load average at start {m.get('load_start')}, at end {m.get('load_end')}. Commit {m.get('git_commit')}.",
        "",
        f"Memory read bandwidth: {_f(bw, '{:.1f}')} GB/s (median of {_get(res, 'bandwidth', 'start', 'reps')} "
        f"streaming reads of a {_f((_get(res, 'bandwidth', 'start', 'array_bytes') or 0) / GIB, '{:.2f}')} GiB array, "
        f"best of 1 and 2 threads, best of start/end of the run). \"bound\" = bandwidth / bytes of weights read per "
        f"step (text token: language model + LM head; image step: language model + generation head, both CFG rows "
        f"in one read).",
        "",
        f"Medians of {res['settings']['runs']} runs, each task in a fresh process. Chat: one image + question, "
        f"prompt tokens as shown, {res['settings']['new_tokens']} forced new tokens, greedy. Images: 576 CFG steps "
        f"+ VQ decode.",
        "",
        "| engine | convert s (peak GiB) | ready s (warm s) | TTFT s (prompt) | decode tok/s (bound, % of bound) "
        "| 1 image s | 4 images s (× of 1) | image steps/s (bound) | VQ decode s | peak RSS serving GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in s["rows"].items():
        convert = f"{_f(r.get('convert_s'))} ({_f(r.get('convert_peak_rss_gib'), '{:.2f}')})" \
            if r.get("convert_s") is not None else "–"
        if r.get("convert_cached"):
            convert = "cached"
        decode = (f"{_f(r.get('decode_tok_s'), '{:.2f}')} ({_f(r.get('decode_bound_tok_s'))}, "
                  f"{_f(_pct(r.get('decode_of_bound')), '{:.0f}', '%')})")
        if r.get("forced_length_ok") is False:
            decode += " (stopped early)"
        steps = f"{_f(r.get('steps_per_s'), '{:.2f}')} ({_f(r.get('steps_bound_per_s'))})"
        lines.append(
            f"| {name} | {convert} | {_f(r.get('ready_s'), '{:.2f}')} ({_f(r.get('warm_s'), '{:.1f}')}) | "
            f"{_f(r.get('ttft_s'), '{:.2f}')} ({_f(r.get('prompt_tokens'), '{:.0f}')}) | {decode} | "
            f"{_f(r.get('image1_s'))} | {_f(r.get('image4_s'))} ({_f(r.get('image4_over_1'), '{:.2f}')}) | {steps} | "
            f"{_f(r.get('vq_decode_s'), '{:.2f}')} | {_f(r.get('peak_rss_serving_gib'), '{:.2f}')} |")
    follow_ups = [f"{name} {_f(r['follow_up_ttft_s'], '{:.2f}')} s ({_f(r.get('follow_up_cached_tokens'), '{:.0f}')} "
                  f"of {_f(r.get('follow_up_prompt_tokens'), '{:.0f}')} prompt tokens from the cache)"
                  for name, r in s["rows"].items() if r.get("follow_up_ttft_s") is not None]
    if follow_ups:
        lines += ["", "TTFT of a follow-up question in the same conversation: " + "; ".join(follow_ups) + "."]
    app_images = [f"{name} {_f(r['app_image1_s'])} s ({_f(r.get('app_previews'), '{:.0f}')} previews)"
                  for name, r in s["rows"].items() if r.get("app_image1_s") is not None]
    if app_images:
        lines += ["", "One image as the app makes it, with its previews of the forming image: " + "; ".join(app_images) + "."]
    if res.get("pytorch_from"):
        src = res["pytorch_from"]
        lines += ["", f"PyTorch rows: from an earlier run on this machine ({src['date']}; {src.get('note') or 'no note'})."]
    lines += ["", "Ratios (OpenVINO / PyTorch; > 1 = OpenVINO faster):", ""]
    for name, r in s["ratios"].items():
        lines.append(f"- {name}: decode {_f(r['decode_speedup'], '{:.2f}')}×, first token "
                     f"{_f(r['ttft_speedup'], '{:.2f}')}×, one image {_f(r['image1_speedup'], '{:.2f}')}×")
    caveat = " -- the tiny model proves the harness works, its figures say nothing about them" \
        if res.get("quick") else ""
    lines += ["", f"Targets (issues 7 and 8; OpenVINO int4){caveat}:", "", "| target | measured | met |", "|---|---|---|"]
    for t in s["targets"]:
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {_f(t['value'], '{:.2f}')} | {met} |")
    extra = []
    for name, r in s["rows"].items():
        if r.get("ready_first_s") is not None:
            extra.append(f"- {name}: first launch after conversion (compiles, fills the model cache) "
                         f"{r['ready_first_s']:.1f} s; peak RSS chat {_f(r.get('peak_rss_chat_gib'), '{:.2f}')} GiB, "
                         f"1 image {_f(r.get('peak_rss_image1_gib'), '{:.2f}')} GiB, 4 images "
                         f"{_f(r.get('peak_rss_image4_gib'), '{:.2f}')} GiB; IR bytes per text token "
                         f"{_mib(r.get('text_token_bytes'))}, per image step {_mib(r.get('image_step_bytes'))}")
        elif r.get("load_s") is not None:
            extra.append(f"- {name}: load {r['load_s']:.1f} s; peak RSS chat {_f(r.get('peak_rss_chat_gib'), '{:.2f}')}"
                         f" GiB, 1 image {_f(r.get('peak_rss_image1_gib'), '{:.2f}')} GiB; weights per text token "
                         f"{_mib(r.get('text_token_bytes'))}, per image step {_mib(r.get('image_step_bytes'))}")
    errors = _errors(res)
    lines += ["", "Details:", ""] + extra + _profile_lines(res)
    if errors:
        lines += ["", "Failed measurements (see the logs):", ""] + [f"- {e}" for e in errors]
    lines += ["", f"Full run took {res.get('total_s', 0) / 60:.1f} min.", ""]
    return "\n".join(lines)


STREAMING_PARTS = ("language_model", "lm_head", "gen_head")  # read all their weights every step; embeddings don't


def _profile_lines(res) -> list:
    """Where the time goes: per IR part, total seconds and ms per call, for one chat and one image."""
    lines = []
    for weights, ov in res.get("openvino", {}).items():
        prof = ov.get("profile") or {}
        for task in ("chat", "image"):
            p = prof.get(task)
            if not p:
                continue
            parts = sorted(p["parts"].items(), key=lambda kv: -kv[1]["s"])
            text = "; ".join(f"{k} {v['s']:.2f} s ({v['calls']}×, median {v['ms_per_call']:.1f} ms"
                             + (f", {v['weights_gb_per_s']:.1f} GB/s of weights)" if k in STREAMING_PARTS else ")")
                             for k, v in parts)
            lines.append(f"- profile openvino-{weights} {task} ({p['total_s']:.1f} s): {text}; "
                         f"outside OpenVINO {p['other_s']:.2f} s")
    return lines


def _mib(n):
    return "–" if not n else f"{n / 1024**2:.1f} MiB"


def _pct(x):
    return None if x is None else 100 * x


def _errors(res) -> list:
    out = []
    for engine in ("openvino", "pytorch"):
        for cfg, tasks in res.get(engine, {}).items():
            for task, r in tasks.items():
                if isinstance(r, dict) and "error" in r:
                    out.append(f"{engine} {cfg} {task}: {r['error']} ({r.get('log')})")
                if task == "warm_start":
                    for w in [r.get("first", {})] + r.get("runs", []):
                        if "error" in w:
                            out.append(f"{engine} {cfg} warm start: {w['error']} ({w.get('log')})")
    return out
