"""unimim.train.host_memory: glibc's thresholds raised so that freed large CPU buffers are reused.

The effect is checked by what the kernel counts, not by timing: the minor page faults of a process that allocates,
writes and frees a 64 MiB tensor again and again. With glibc's defaults each allocation is a fresh mapping whose
pages fault on first write (64 MiB / 4 KiB = 16,384 faults per allocation, or 32 with 2 MiB transparent huge pages);
with the thresholds raised the freed block is reused once the heap has grown to hold it (on an Intel Xeon: 131,080
faults for 8 allocations against 0, after glibc has settled).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import unimim.train.host_memory as host_memory
import unimim.train.run as run_mod
from unimim.app.experiment import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes/image/data2vec_fmnist_cpu.yaml"
ALLOCATIONS = 16
PROBE = f"""
import json, resource, sys, torch
from unimim.train.host_memory import retain_freed_memory
applied = retain_freed_memory(sys.argv[1] == "retain")
for _ in range(4 * {ALLOCATIONS}):  # 64 MiB each: glibc settles (the heap grows to hold the block; up to ~16
    torch.empty(16 * 2**20).fill_(1.0)  # allocations seen on an Intel Xeon) before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({ALLOCATIONS}):
    torch.empty(16 * 2**20).fill_(1.0)  # allocated, every page written, freed
print(json.dumps({{"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""


def faults(setting: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not host_memory.is_glibc(), reason="glibc's allocator only (this interpreter is not on glibc)")
def test_retained_memory_stops_the_page_faults_of_reallocation():
    default, retained = faults("glibc"), faults("retain")
    assert default["applied"] is False and retained["applied"] is True
    # glibc's default: at least one fault per huge page of every allocation (32 per 64 MiB), 16,384 with 4 KiB pages
    assert default["faults"] >= 32 * ALLOCATIONS
    # retained: the freed block is reused, its pages already mapped (a few faults from the interpreter itself)
    assert retained["faults"] * 4 < default["faults"]


def test_off_glibc_and_disabled_nothing_is_set(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "set_malloc_thresholds", lambda *a: calls.append(a) or True)
    assert host_memory.retain_freed_memory(False) is False
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))  # e.g. musl or macOS
    assert host_memory.retain_freed_memory(True) is False
    assert calls == []


def test_threshold_out_of_range_is_refused():
    if not host_memory.is_glibc():
        pytest.skip("glibc's allocator only")
    with pytest.raises(ValueError, match="malloc threshold"):
        host_memory.set_malloc_thresholds(2**31, 0)


@pytest.mark.parametrize("override, expected", [([], True), (["train.retain_freed_memory=false"], False)])
def test_prepare_process_applies_the_config(monkeypatch, override, expected):
    seen = []
    monkeypatch.setattr(run_mod, "retain_freed_memory", lambda enabled=True: seen.append(enabled) or enabled)
    run_mod.prepare_process(load_recipe(RECIPE, override))
    assert seen == [expected]
