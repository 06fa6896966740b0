"""Keeping freed CPU tensor memory in the process (glibc's allocator) instead of handing it back to the OS.

glibc serves a request above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with a fresh ``mmap``
and gives the pages back on ``free``; it also trims the top of the heap once more than the trim threshold is free
there. A training step on the CPU allocates and frees the same large activations every step, so every new tensor
of that size starts on untouched pages, and the first write to each 4 KiB page is a page fault that the kernel
zero-fills. For an element-wise op that is the cost: on a 2-core Intel Xeon (torch 2.11, bf16) GELU of a
(128, 768, 14, 14) tensor (38.5 MB, data2vec 2.0's decoder at 16 masks per image) takes 21.5 ms with glibc's
defaults and 6.7 ms with both thresholds raised, an add 17.8 against 5.4 ms; an encoder-sized (128, 40, 1536) GELU
is unchanged (3.0 ms). The data2vec 2.0 CPU step at 16 masks runs 1.21x faster, data2vec 1.0 1.10x (26,483 page
faults per step against 1,252: glibc also trims the heap's top). Raising the mmap threshold alone gains nothing
(the freed block at the heap top is trimmed); raising both keeps the pages mapped and reused. The measurements are
in ``benchmarks/README.md`` (``benchmarks/malloc_cpu.py``).

The cost: the process keeps its peak heap mapped instead of returning memory between allocations (peak resident
set size -1 % to +6 % in the measured steps). ``train.retain_freed_memory: false`` leaves glibc's defaults. Other C
libraries (musl, macOS, Windows) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
RETAIN_BYTES = 2**31 - 1  # the largest int mallopt takes: no request or free block is that large in practice


def is_glibc() -> bool:
    """True where the interpreter runs on glibc (``platform.libc_ver()``; Linux distributions other than Alpine)."""
    return platform.libc_ver()[0] == "glibc"


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, mmap_bytes)`` and ``mallopt(M_TRIM_THRESHOLD, trim_bytes)`` (each at most
    2**31 - 1; setting either ends glibc's dynamic raising of the thresholds). True when glibc took both; False off
    glibc."""
    if not is_glibc():
        return False
    for value in (mmap_bytes, trim_bytes):
        if not 0 <= value <= RETAIN_BYTES:
            raise ValueError(f"a malloc threshold must be in [0, {RETAIN_BYTES}], got {value}")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
               for param, value in ((M_MMAP_THRESHOLD, mmap_bytes), (M_TRIM_THRESHOLD, trim_bytes)))


def retain_freed_memory(enabled: bool = True) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the processes it forks from now on), so that
    large freed CPU buffers are reused instead of mapped afresh. Returns True when the thresholds were set; False
    when ``enabled`` is false or the C library is not glibc (nothing changed), or glibc refused (logged)."""
    if not enabled or not is_glibc():
        return False
    done = set_malloc_thresholds(RETAIN_BYTES, RETAIN_BYTES)
    if not done:
        log.warning("glibc refused mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD); large CPU buffers are mapped "
                    "afresh at every allocation")
    return done
