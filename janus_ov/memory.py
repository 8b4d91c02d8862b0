"""Giving back memory the process no longer needs (Linux; elsewhere a no-op).

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
import sys
from pathlib import Path

MADV_DONTNEED = 4


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


def _weights_below(roots: list[str]):
    """A test of mapped paths: a file below a root that is not a shared library (the attention
    operation is built into the compiled-model cache: its pages are code in use, not weights)."""
    def match(path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(path.startswith(root) for root in roots) and not (name.endswith(".so") or ".so." in name)
    return match


def drop_mapped_pages(dirs) -> int:
    """Drop this process's pages of read-only file mappings of files below `dirs` that were never
    written, shared libraries aside (their relocated tables are read-only but written: dropping them
    undid the relocation and crashed the process); returns bytes unmapped from RSS at most (the size
    of the ranges advised). Writable mappings are never touched."""
    roots = _roots(dirs)
    if not sys.platform.startswith("linux") or not roots:
        return 0
    ranges = _unwritten_file_ranges(_weights_below(roots), read_only=True)
    return sum(end - start for start, end in ranges if dontneed(start, end))


def drop_file_pages(files) -> int:
    """Drop this process's pages of private mappings of exactly these files, copy-on-write ones
    included, as long as no page of the mapping was written: every page is then still the file's and
    is faulted back in from it when read again. Returns bytes advised."""
    wanted = {str(Path(f).resolve()) for f in files}
    if not sys.platform.startswith("linux") or not wanted:
        return 0
    return sum(end - start for start, end in _unwritten_file_ranges(wanted.__contains__, read_only=False)
               if dontneed(start, end))


def _unwritten_file_ranges(match, read_only: bool) -> list:
    """(start, end) of this process's file mappings whose path `match`es -- read-only ones if
    `read_only`, else private ones -- that hold no written page: smaps counts a written copy-on-write
    page as Anonymous, and dropping it would undo that write."""
    ranges, current = [], None
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and ":" not in head[0]:
                current = None
                perms = head[1] if len(head) > 1 else ""
                # read-only: shared or private, never writable; else private ones only, writable too
                allowed = "w" not in perms if read_only else "s" not in perms
                if len(head) == 6 and allowed and match(head[5].strip()):
                    current = [int(x, 16) for x in head[0].split("-")]
                    ranges.append(current)
            elif current is not None and line.startswith("Anonymous:") and int(line.split()[1]) > 0:
                ranges.remove(current)
                current = None
    return ranges


def mapped_rss(dirs) -> int:
    """Bytes of this process's RSS that are pages of files mapped from below `dirs`, shared libraries
    aside (for tests and benchmarks)."""
    match = _weights_below(_roots(dirs))
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) == 6 and match(head[5].strip())
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total
