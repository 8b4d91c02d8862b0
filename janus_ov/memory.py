"""Giving back memory the process no longer needs (Linux; elsewhere a no-op).

OpenVINO memory-maps each IR's `.bin` (and compiled-cache blobs) and reads the weights from
there; on the first inference the CPU plugin copies most of them into its kernels' own layout.
From then on the mapped pages are not read again, but they still count in our RSS, so a loaded
model looks twice its size. Those mappings are read-only views of files: dropping their pages
loses nothing -- a later read faults the page back in from the page cache or the file. That is
all this module does.

The folders' mappings are found by reading /proc/self/smaps while the plugin's threads map and unmap
memory; a range found may be something else by the time it is advised. So those ranges get
MADV_PAGEOUT, which reclaims a clean file page and never discards data (an anonymous page stays,
or goes to swap), not MADV_DONTNEED, which zeroes anonymous memory: a race that crashed the runtime
while it compiled its parts in parallel.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

MADV_DONTNEED = 4
MADV_PAGEOUT = 21  # Linux 5.4+


def dontneed(start: int, end: int) -> bool:
    """madvise(MADV_DONTNEED) the whole pages inside [start, end), memory the caller knows maps a
    file it only read (a tensor of a mapped checkpoint); False where not possible."""
    return _advise(start, end, MADV_DONTNEED)


def page_out(start: int, end: int) -> bool:
    """madvise(MADV_PAGEOUT) the whole pages inside [start, end): safe on any memory."""
    return _advise(start, end, MADV_PAGEOUT)


def _advise(start: int, end: int, advice: int) -> bool:
    import mmap

    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if not sys.platform.startswith("linux") or last <= first:
        return False
    return _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), advice) == 0


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
    return sum(end - start for start, end in ranges if page_out(start, end))


def drop_file_pages(files) -> int:
    """Drop this process's pages of private mappings of exactly these files, copy-on-write ones
    included, as long as no page of the mapping was written: every page is then still the file's and
    is faulted back in from it when read again. Returns bytes advised."""
    wanted = {str(Path(f).resolve()) for f in files}
    if not sys.platform.startswith("linux") or not wanted:
        return 0
    return sum(end - start for start, end in _unwritten_file_ranges(wanted.__contains__, read_only=False)
               if page_out(start, end))


def _unwritten_file_ranges(match, read_only: bool):
    """(start, end) of this process's file mappings whose path `match`es -- read-only ones if
    `read_only`, else private ones -- that hold no written page (smaps counts a written copy-on-write
    page as Anonymous, and dropping it would undo that write), each as soon as smaps has shown it."""
    current = None
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and ":" not in head[0]:
                current = None
                perms = head[1] if len(head) > 1 else ""
                # read-only: shared or private, never writable; else private ones only, writable too
                allowed = "w" not in perms if read_only else "s" not in perms
                if len(head) == 6 and allowed and match(head[5].strip()):
                    current = tuple(int(x, 16) for x in head[0].split("-"))
            elif current is not None and line.startswith("Anonymous:"):
                if int(line.split()[1]) == 0:
                    yield current
                current = None


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
