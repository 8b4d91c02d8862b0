"""Warm-up at load and giving back the memory-mapped IR weights the CPU plugin has copied."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from janus_ov.memory import drop_mapped_pages, mapped_rss

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def test_dropped_pages_leave_rss_and_read_back_unchanged(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    data.tofile(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
        mapped = np.frombuffer(view, np.uint8)
        assert int(mapped.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # touch every page
        assert mapped_rss([tmp_path]) >= 7 << 20
        assert drop_mapped_pages([tmp_path]) >= 8 << 20
        assert mapped_rss([tmp_path]) < 1 << 20
        assert np.array_equal(mapped, data)  # faulted back in from the file, same bytes
        del mapped


def test_writable_mappings_are_never_dropped(tmp_path):
    path = tmp_path / "scratch.bin"
    path.write_bytes(bytes(4 << 20))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE) as view:
        view[:4] = b"keep"  # a private copy-on-write page: dropping it would lose this
        assert drop_mapped_pages([tmp_path]) == 0
        assert view[:4] == b"keep"


def test_pipeline_warms_up_in_the_background_and_returns_the_mapped_weights(tiny_ir_fp32, tmp_path):
    from janus_ov.pipeline import JanusPipeline

    messages = [{"role": "user", "content": "Tell me a story."}]
    cold = JanusPipeline(tiny_ir_fp32, ov_config={"INFERENCE_PRECISION_HINT": "f32"}, compile_cache_dir=tmp_path)
    # A request sent at once waits for the warm-up, and the warm-up leaves no state behind.
    first = cold.chat(messages, max_new_tokens=12)
    assert cold.runtime.wait_warm(timeout=0) and cold.runtime.warm_up_s > 0
    assert cold.chat(messages, max_new_tokens=12) == first
    weights = sum(p.stat().st_size for p in tiny_ir_fp32.glob("*.bin"))
    assert mapped_rss([tiny_ir_fp32, tmp_path]) < 0.1 * weights

    # Second launch compiles from OpenVINO's cache (blobs mapped from tmp_path): same answer, same release.
    warm = JanusPipeline(tiny_ir_fp32, ov_config={"INFERENCE_PRECISION_HINT": "f32"}, compile_cache_dir=tmp_path)
    assert warm.runtime.wait_warm(timeout=300)
    assert mapped_rss([tiny_ir_fp32, tmp_path]) < 0.1 * weights
    assert warm.chat(messages, max_new_tokens=12) == first


def test_checkpoint_pages_are_dropped_only_while_unwritten(tmp_path):
    """drop_file_pages is what conversion sheds its copy-on-write safetensors mapping with: clean
    pages go (and read back the same), a mapping someone wrote to is left whole."""
    from janus_ov.memory import drop_file_pages

    data = np.random.default_rng(1).integers(0, 255, 8 << 20, dtype=np.uint8)
    path = tmp_path / "model.safetensors"
    data.tofile(path)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE) as view:  # as transformers maps it
        mapped = np.frombuffer(view, np.uint8)
        assert int(mapped.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))
        assert mapped_rss([tmp_path]) >= 7 << 20
        assert drop_mapped_pages([tmp_path]) == 0  # the general helper never touches a writable mapping
        assert drop_file_pages([path]) >= 8 << 20
        assert mapped_rss([tmp_path]) < 1 << 20
        assert np.array_equal(mapped, data)
        view[:4] = b"edit"  # now one page is a private copy: dropping would undo the write
        assert drop_file_pages([path]) == 0
        assert view[:4] == b"edit"
        del mapped


_DECODE_MANY = """
import sys, threading
from janus_ov.images import PixelCache
from janus_ov.model_info import ModelInfo
cache = PixelCache(ModelInfo.load(sys.argv[1]))
status = lambda key: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
base = status("VmRSS:")
threads = [threading.Thread(target=cache.get, args=(path,)) for path in sys.argv[2:]]
for t in threads: t.start()
for t in threads: t.join()
assert len(cache._entries) == len(sys.argv) - 2
print((status("VmHWM:") - base) // 1024)
"""


def test_simultaneous_huge_uploads_are_decoded_one_at_a_time(tiny_ir_fp32, tmp_path):
    """Four 64-megapixel RGBA PNGs (a few hundred kB each on disk) decoded at once once took four
    times the memory of one (362 -> 4,771 MB); large images now take turns, process-wide."""
    import subprocess

    from PIL import Image

    paths = []
    for i in range(4):  # distinct files, so that none comes from the cache
        image = Image.new("RGBA", (8000, 8000))
        image.putpixel((i, i), (255, 0, 0, 255))
        paths.append(tmp_path / f"bomb{i}.png")
        image.save(paths[-1], compress_level=1)
        del image

    def growth_mib(files):
        out = subprocess.run([sys.executable, "-c", _DECODE_MANY, str(tiny_ir_fp32), *map(str, files)],
                             capture_output=True, text=True, check=True, timeout=600)
        return int(out.stdout.strip().splitlines()[-1])

    one, four = growth_mib(paths[:1]), growth_mib(paths)
    assert one > 200  # a 64 MP RGBA image really is decoded (256 MB of pixels)
    assert four < 1.5 * one, (one, four)


# Eight threads holding malloc'd blocks at once, then glibc's own account of its arenas (malloc_info).
ARENAS_SCRIPT = r"""
import ctypes, sys, threading
from janus_ov.memory import limit_malloc_arenas

capped = limit_malloc_arenas(2) if sys.argv[1] == "cap" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.fopen.restype = ctypes.c_void_p, ctypes.c_void_p
libc.free.argtypes, libc.malloc_info.argtypes = [ctypes.c_void_p], [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
together = threading.Barrier(8)

def work():
    blocks = [libc.malloc(4096) for _ in range(256)]
    together.wait()  # every thread holds its blocks while the others allocate
    for block in blocks:
        libc.free(block)

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
print(capped, open(sys.argv[2]).read().count("<heap nr="))
"""


def test_a_server_caps_mallocs_arenas(tmp_path):
    """app.py and `python -m janus_ov serve` call limit_malloc_arenas first: glibc then serves all threads
    from two arenas instead of one per thread (the soak's RSS halved with it)."""
    import os
    import subprocess

    def arenas(mode: str) -> tuple[str, int]:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        done = subprocess.run([sys.executable, "-c", ARENAS_SCRIPT, mode, str(tmp_path / f"{mode}.xml")], env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        capped, heaps = done.stdout.split()
        return capped, int(heaps)

    assert arenas("cap") == ("True", 2)
    capped, heaps = arenas("default")
    assert capped == "False" and heaps > 2  # glibc's default: an arena per thread, up to 8 per core
