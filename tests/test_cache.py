"""The conversion cache: convert once, publish atomically, never load a bad entry, survive kills
and concurrent starts; exports load without torch.

Real conversions of the tiny model (fp32, for speed) are the expensive part, so the module builds
one cache entry in a scenario that also proves crash and concurrency safety: a first process is
SIGKILLed part-way through converting, then two processes start at once on the same cache.
Later tests copy that cache and damage the copy.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakehub import FakeHub

from janus_ov import cache
from janus_ov.cache import EXPORTER_VERSION, ensure_converted, verify
from janus_ov.errors import ConversionError, InvalidInputError

REPO = Path(__file__).resolve().parents[1]

_LOAD_SCRIPT = """
import json, sys
from janus_ov.cache import ensure_converted
messages = []
path = ensure_converted(sys.argv[1], weights=sys.argv[2], cache_dir=sys.argv[3] or None, progress=messages.append)
print(json.dumps({"path": str(path), "messages": messages, "torch": "torch" in sys.modules}))
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "JANUS_OV_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def start_load(model, cache_dir, weights="fp32", **env):
    return subprocess.Popen([sys.executable, "-c", _LOAD_SCRIPT, str(model), weights, str(cache_dir or "")],
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def converted(result) -> bool:
    return any(m.startswith("Converting ") and "to OpenVINO IR" in m for m in result["messages"])


def entries(root: Path):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    # 1. A conversion SIGKILLed as soon as its first IR part is on disk.
    victim = start_load(tiny_model_dir, root)
    deadline = time.time() + 600
    while not list(root.glob(".tmp-*/*.xml")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if victim.poll() is None:
        os.kill(victim.pid, signal.SIGKILL)
    victim_err = victim.communicate()[1]
    after_kill = {"returncode": victim.returncode, "stderr": victim_err[-3000:], "entries": entries(root),
                  "tmp_dirs": [p.name for p in root.glob(".tmp-*")],
                  "tmp_verdicts": [verify(p, root) for p in root.glob(".tmp-*")]}
    # The killed process held the entry lock; the OS must have released it.
    from filelock import FileLock

    locks = list((root / ".locks").glob("*.lock"))
    for lock in locks:
        with FileLock(lock, timeout=10):
            pass
    # A leftover build dir of some other entry, whose builder is gone too.
    (root / ".tmp-other-model-fp32-0123456789abcdef-deadbeef").mkdir()
    # 2. Two processes start at once on the same cache.
    a, b = start_load(tiny_model_dir, root), start_load(tiny_model_dir, root)
    results = [finish(a), finish(b)]
    return {"root": root, "after_kill": after_kill, "locks": locks, "results": results,
            "entry": Path(results[0]["path"])}


def copy_cache(built, tmp_path) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(built["root"], root)
    return root / built["entry"].name


def manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture
def count_conversions(monkeypatch):
    """Counts calls of the real converter (it still runs)."""
    import janus_ov.convert

    calls = []
    real = janus_ov.convert.convert_checkpoint

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(janus_ov.convert, "convert_checkpoint", spy)
    return calls


# ---------------------------------------------------------------- crash and concurrency safety

def test_killed_conversion_leaves_nothing_trusted(built):
    k = built["after_kill"]
    assert k["returncode"] == -signal.SIGKILL, k["stderr"]
    assert k["entries"] == []  # nothing was published
    assert len(k["tmp_dirs"]) == 1 and k["tmp_verdicts"] == ["its manifest.json is missing"]
    assert built["locks"], "the killed process should have created its lock file"
    # The next loads succeeded, and cleaned up the dead builds (ours and the other entry's).
    root = built["root"]
    assert list(root.glob(".tmp-*")) == [] and entries(root) == [built["entry"].name]
    assert verify(built["entry"], root) is None


def test_concurrent_starts_convert_once(built):
    a, b = built["results"]
    assert a["path"] == b["path"]
    assert sorted([converted(a), converted(b)]) == [False, True]
    waiter = a if not converted(a) else b
    assert any("built by another process" in m for m in waiter["messages"])
    m = manifest(built["entry"])
    assert m["exporter_version"] == EXPORTER_VERSION and m["weights"] == "fp32" and m["revision"] is None
    assert set(m["parts"]) == {"vision", "text_embeddings", "language_model", "lm_head", "gen_embeddings",
                               "gen_head", "vq_decoder"}
    assert m["versions"]["openvino"] and m["versions"]["nncf"] and m["versions"]["transformers"]
    for name, meta in m["files"].items():
        assert (built["entry"] / name).stat().st_size == meta["size"] and len(meta["sha256"]) == 64


# ---------------------------------------------------------------- loading

def test_second_load_converts_nothing_and_imports_no_torch(built, tiny_model_dir, count_conversions):
    before = manifest(built["entry"])["build_id"]
    messages = []
    path = ensure_converted(str(tiny_model_dir), weights="fp32", cache_dir=built["root"], progress=messages.append)
    assert path == built["entry"] and count_conversions == [] and manifest(path)["build_id"] == before
    assert messages == [f"Using the converted model in {path}"]
    again = finish(start_load(tiny_model_dir, built["root"]))
    assert again["path"] == str(path) and not converted(again) and again["torch"] is False


def test_cache_location_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("JANUS_OV_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.default_cache_dir() == Path.home() / ".cache" / "janus_ov"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "janus_ov"
    monkeypatch.setenv("JANUS_OV_CACHE", str(tmp_path / "mine"))
    assert cache.default_cache_dir() == tmp_path / "mine"


def test_env_var_selects_the_cache(built, tiny_model_dir, tmp_path):
    root = copy_cache(built, tmp_path).parent
    result = finish(start_load(tiny_model_dir, None, JANUS_OV_CACHE=str(root)))
    assert result["path"] == str(root / built["entry"].name) and not converted(result)


def test_entry_key_depends_on_weights_and_exporter_version(tiny_model_dir, monkeypatch):
    from janus_ov.resolve import resolve

    r = resolve(str(tiny_model_dir))
    names = {cache.entry_name(r, w) for w in ("int4", "int8", "fp16", "fp32")}
    assert len(names) == 4
    monkeypatch.setattr(cache, "EXPORTER_VERSION", EXPORTER_VERSION + 1)
    assert cache.entry_name(r, "fp32") not in names


def test_bad_weight_format(tiny_model_dir):
    with pytest.raises(InvalidInputError,
                       match="Unknown weight format 'int3'; choose one of int4, int4-sym128, int8, fp16, fp32"):
        ensure_converted(str(tiny_model_dir), weights="int3")


# ---------------------------------------------------------------- verification and rebuilds

def test_flipped_bytes_are_detected_even_with_the_old_mtime(built, tmp_path):
    entry = copy_cache(built, tmp_path)
    root = entry.parent
    assert verify(entry, root) is None  # full check; stamps the files
    assert verify(entry, root) is None  # cheap check
    target = entry / "language_model.bin"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x55
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    assert verify(entry, root) == "language_model.bin is corrupt (its checksum does not match the manifest)"


DAMAGES = {"flip a .bin byte": "vision.bin is corrupt", "delete the manifest": "its manifest.json is missing"}


@pytest.fixture(scope="module")
def rebuilt(built, tiny_model_dir, tmp_path_factory):
    """Three real conversions, run at once to keep the module fast on 2 cores: two damaged copies
    of the cache are loaded (each must be rebuilt), and the tiny model is loaded as a Hub id from a
    loopback fake Hub into an empty cache."""
    cases = {}
    for damage in DAMAGES:
        entry = copy_cache(built, tmp_path_factory.mktemp("damaged"))
        if damage == "flip a .bin byte":
            target = entry / "vision.bin"
            data = bytearray(target.read_bytes())
            data[-100] ^= 0xFF
            target.write_bytes(bytes(data))
        else:
            (entry / "manifest.json").unlink()
        cases[damage] = (entry, start_load(tiny_model_dir, entry.parent))
    hub = FakeHub()
    hub.repos["org/tiny"] = tiny_model_dir
    hub_dir = tmp_path_factory.mktemp("hub-model")
    hub_env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(hub_dir / "hf")}
    hub_proc = start_load("org/tiny", hub_dir / "cache", **hub_env)
    try:
        results = {damage: (entry, finish(proc)) for damage, (entry, proc) in cases.items()}
        results["hub"] = (hub_dir, hub_env, finish(hub_proc), list(hub.requests))
    finally:
        hub.close()
    return results


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_entry_is_rebuilt(built, rebuilt, damage):
    entry, result = rebuilt[damage]
    assert result["path"] == str(entry) and converted(result)
    assert any(m.startswith(f"Not using the cached model in {entry}: {DAMAGES[damage]}")
               and m.endswith("Rebuilding it.") for m in result["messages"])
    assert manifest(entry)["build_id"] != manifest(built["entry"])["build_id"]
    assert verify(entry, entry.parent) is None
    assert not list(entry.parent.glob(".t*-*"))  # no temp or trash dirs left behind


def test_hub_model_converts_once_then_loads_offline_without_its_weights(rebuilt, tiny_model_dir):
    hub_dir, env, result, requests = rebuilt["hub"]
    sha = FakeHub.sha(tiny_model_dir)
    entry = Path(result["path"])
    assert converted(result) and entry.parent == hub_dir / "cache" and verify(entry, entry.parent) is None
    m = manifest(entry)
    assert m["source"] == "org/tiny" and m["revision"] == sha and m["key_material"] == f"hub:org/tiny@{sha}"
    assert any(r.endswith("/model.safetensors") for r in requests)
    # The Hub copy of the weights is no longer needed: delete it, go offline, load again.
    links = list((hub_dir / "hf").rglob("model.safetensors"))
    assert links
    for link in links:
        link.resolve().unlink()  # the blob
        link.unlink()
    offline = finish(start_load("org/tiny", hub_dir / "cache", HF_HUB_OFFLINE="1", HF_HOME=env["HF_HOME"]))
    assert offline["path"] == str(entry) and not converted(offline) and offline["torch"] is False


def test_mismatched_manifest_is_not_trusted(built, tmp_path):
    entry = copy_cache(built, tmp_path)
    m = manifest(entry)
    (entry / "manifest.json").write_text(json.dumps({**m, "exporter_version": EXPORTER_VERSION - 1}))
    assert f"made by exporter version {EXPORTER_VERSION - 1}," in verify(entry, entry.parent)
    (entry / "manifest.json").write_text(json.dumps(m))
    assert "expected 'int4'" in verify(entry, entry.parent, {"weights": "int4"})
    (entry / "manifest.json").write_text("{truncated")
    assert verify(entry, entry.parent) == "its manifest.json is unreadable (JSONDecodeError)"
    (entry / "manifest.json").write_text(json.dumps(m))
    (entry / "vq_decoder.bin").write_bytes(b"short")
    assert verify(entry, entry.parent).startswith("vq_decoder.bin has 5 bytes, the manifest says")
    (entry / "vq_decoder.bin").unlink()
    assert verify(entry, entry.parent) == "vq_decoder.bin is missing"


# ---------------------------------------------------------------- exports

@pytest.fixture(scope="module")
def exported(built, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-fp32"
    proc = subprocess.run([sys.executable, "-m", "janus_ov", "export", "--model", str(tiny_model_dir), "--weights",
                           "fp32", "--output", str(out), "--cache-dir", str(built["root"])],
                          env=_env(), capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_export_cli(built, exported):
    out, proc = exported
    assert "Exported" in proc.stdout and "Converting " not in proc.stdout  # reused the cache entry
    assert manifest(out) == manifest(built["entry"]) and verify(out, out.parent / "stamps") is None
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_export_refuses_a_non_empty_output(built, tiny_model_dir, exported):
    out, _ = exported
    proc = subprocess.run([sys.executable, "-m", "janus_ov", "export", "--model", str(tiny_model_dir), "--weights",
                           "fp32", "--output", str(out), "--cache-dir", str(built["root"])],
                          env=_env(), capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 1 and "already exists and is not empty" in proc.stderr and "--force" in proc.stderr
    assert "Traceback" not in proc.stderr and verify(out, out.parent / "stamps") is None


def test_export_loads_without_conversion_or_torch(exported, tmp_path):
    out, _ = exported
    result = finish(start_load(out, tmp_path / "empty-cache", weights="int4"))
    assert result["path"] == str(out) and result["torch"] is False and not converted(result)
    assert any("holds fp32 weights" in m for m in result["messages"])
    assert not (tmp_path / "empty-cache").exists() or entries(tmp_path / "empty-cache") == []


def test_damaged_export_is_refused_with_advice(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    (copy / "lm_head.xml").write_text("<net/>")
    with pytest.raises(ConversionError) as e:
        ensure_converted(str(copy), cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "lm_head.xml" in msg and "It was not loaded" in msg and "python -m janus_ov export" in msg


def test_hub_repo_holding_an_export_is_used_directly(exported, tmp_path):
    out, _ = exported
    hub = FakeHub()
    try:
        hub.repos["org/tiny-ov"] = out
        result = finish(start_load("org/tiny-ov", tmp_path / "cache", HF_ENDPOINT=hub.url,
                                   HF_HOME=str(tmp_path / "hf")))
    finally:
        hub.close()
    path = Path(result["path"])
    assert path.is_relative_to(tmp_path / "hf" / "hub") and path.name == FakeHub.sha(out)
    assert result["torch"] is False and not converted(result)
    assert manifest(path) == manifest(out)
    assert not any("safetensors" in r for r in hub.requests)


def test_export_force_replaces_the_output(built, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old-file.txt").write_text("old")
    from janus_ov.export import main

    assert main(["--model", str(tiny_model_dir), "--weights", "fp32", "--output", str(out),
                 "--cache-dir", str(built["root"]), "--force"]) == 0
    assert not (out / "old-file.txt").exists() and verify(out, tmp_path / "stamps") is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_export_killed_midway_leaves_nothing_the_next_one_does_not_clean(built, tiny_model_dir, tmp_path):
    """SIGKILL skips `finally`: a partial copy stays beside the output. The next export removes it and,
    had the kill come between its two renames, puts the previous output back first."""
    import signal

    from janus_ov.export import main

    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    partial = tmp_path / f".tmp-export-out-{dead.pid}-0badc0de"
    partial.mkdir()
    (partial / "language_model.bin").write_bytes(b"half")
    aside = tmp_path / f".old-export-out-{dead.pid}-0badc0de"
    aside.mkdir()
    (aside / "note.txt").write_text("the previous export")
    live = tmp_path / f".tmp-export-out-{os.getpid()}-feedface"  # an export running right now is left alone
    live.mkdir()
    from janus_ov.export import _sweep_dead_exports

    _sweep_dead_exports(out)
    assert (out / "note.txt").read_text() == "the previous export" and not partial.exists() and not aside.exists()
    assert live.exists()
    live.rmdir()
    assert main(["--model", str(tiny_model_dir), "--weights", "fp32", "--output", str(out),
                 "--cache-dir", str(built["root"]), "--force"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unwritable_cache_dir(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConversionError, match="Cannot write to the model cache .* Set JANUS_OV_CACHE to a writable"):
        ensure_converted(str(tiny_model_dir), weights="fp32", cache_dir=blocker / "cache")


def test_a_process_that_ends_right_after_loading_exits_cleanly(tiny_ir_fp32):
    """Ending while the background warm-up was inside OpenVINO aborted the process ("terminate called
    without an active exception", status -6), as the first-launch fault loop saw after a rename."""
    code = f"from janus_ov.pipeline import JanusPipeline; JanusPipeline.from_converted({str(tiny_ir_fp32)!r})"
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env())
        assert run.returncode == 0 and "terminate called" not in run.stderr, (run.returncode, run.stderr[-2000:])
