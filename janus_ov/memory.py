"""Giving back memory the process no longer needs (Linux; elsewhere a no-op).

A server also caps glibc's malloc arenas (`limit_malloc_arenas`, below).

OpenVINO memory-maps each IR's `.bin` (and compiled-cache blobs) and reads the weights from
there; on the first inference the CPU plugin copies most of them into its kernels' own layout.
From then on the mapped pages are not read again, but they still count in our RSS, so a loaded
model looks twice its size. Those mappings are read-only views of files: dropping their pages
(madvise MADV_DONTNEED) loses nothing -- a later read faults the page back in from the page
cache or the file. That is all this module does.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

MADV_DONTNEED = 4
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
# A server's request threads, the scheduler and OpenVINO's workers each get a malloc arena of their
# own by default (up to 8 per core), and each arena keeps its own freed, fragmented memory. Two
# arenas halved the tiny demo's RSS under a 20-minute soak of 6 clients (1.2 GB -> 0.53 GB at the
# end, growth +107 -> +33 MB per 10 min) without slowing it (benchmarks/results/design-measurements.md).
# Python allocates under the GIL anyway, so the threads have little to gain from arenas of their own.
MALLOC_ARENAS = 2


def dontneed(start: int, end: int) -> bool:
    """madvise(MADV_DONTNEED) the whole pages inside [start, end); False where not possible."""
    import mmap

    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if not sys.platform.startswith("linux") or last <= first:
        return False
    return _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED) == 0


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _roots(dirs) -> list[str]:
    """Folder prefixes to match mapped paths against (resolved, as /proc shows them)."""
    return [str(Path(d).resolve()) + "/" for d in dirs if d]


def _weights_below(path: str, roots: list[str]) -> bool:
    """Whether a mapped file is below a root and not a shared library. The attention operation is
    built into the compiled-model cache (attention.py): a library's relocated tables are read-only
    but were written at load, and dropping them crashed the process at its next virtual call."""
    name = path.rsplit("/", 1)[-1]
    return any(path.startswith(root) for root in roots) and not (name.endswith(".so") or ".so." in name)


def drop_mapped_pages(dirs) -> int:
    """Drop this process's pages of read-only file mappings of files below `dirs`, shared libraries
    aside; returns bytes unmapped from RSS at most (the size of the ranges advised). Writable mappings
    are never touched. Each range is advised as soon as /proc/self/maps shows it: MADV_DONTNEED zeroes
    anonymous memory, and the plugin's threads map and unmap memory meanwhile (collecting the ranges
    from the slower smaps first crashed 2 of 3 launches)."""
    roots = _roots(dirs)
    if not sys.platform.startswith("linux") or not roots:
        return 0
    return sum(end - start for start, end in _read_only_file_ranges(roots) if dontneed(start, end))


def drop_file_pages(files) -> int:
    """Drop this process's pages of private mappings of exactly these files, copy-on-write ones
    included, as long as no page of the mapping was written (smaps counts no Anonymous page in it: a
    written copy-on-write page becomes one): every page is then still the file's and is faulted
    back in from it when read again. Returns bytes advised."""
    wanted = {str(Path(f).resolve()) for f in files}
    if not sys.platform.startswith("linux") or not wanted:
        return 0
    clean, current = [], None
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and ":" not in head[0]:
                current = None
                if len(head) == 6 and head[5].strip() in wanted and "s" not in head[1]:  # never a shared mapping
                    current = [int(x, 16) for x in head[0].split("-")]
                    clean.append(current)
            elif current is not None and line.startswith("Anonymous:") and int(line.split()[1]) > 0:
                clean.remove(current)  # something wrote to it: dropping would undo that
                current = None
    return sum(end - start for start, end in clean if dontneed(start, end))


def _read_only_file_ranges(roots: list[str]):
    """(start, end) of mappings in /proc/self/maps that are read-only and map a file below a root."""
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or "w" in fields[1]:
                continue
            path = fields[5].strip()
            if _weights_below(path, roots):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end


def mapped_rss(dirs) -> int:
    """Bytes of this process's RSS that are pages of files mapped from below `dirs`, shared libraries
    aside (for tests and benchmarks)."""
    roots = _roots(dirs)
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) == 6 and _weights_below(head[5].strip(), roots)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def advised_huge() -> int:
    """Bytes of this process's mappings advised MADV_HUGEPAGE (smaps' "hg" flag; for tests)."""
    total, size = 0, 0
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0] if line.strip() else ""
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                size = hi - lo
            elif line.startswith("VmFlags:") and "hg" in line.split():
                total += size
    return total


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (see MALLOC_ARENAS); call it before starting threads:
    a thread that has allocated already keeps its arena. True if capped here; False where the user's
    MALLOC_ARENA_MAX decides, or the C library is not glibc (no arenas to cap)."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        return _libc().mallopt(M_ARENA_MAX, arenas) == 1
    except AttributeError:  # musl and others: no mallopt
        return False
