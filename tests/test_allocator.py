"""The fit's allocator tuning keeps freed step buffers instead of page-faulting them back."""

from __future__ import annotations


def test_retain_freed_memory_stops_page_faulting_large_buffers():
    """After the allocator is tuned, re-allocating a large buffer costs far fewer page faults.

    Buffers above glibc's largest dynamic mmap threshold (32 MB) are mmap'd and unmapped on every
    allocation unless tuned, so the untuned count is deterministic (about one fault per 4 KB page).
    """
    import subprocess
    import sys

    code = (
        "import resource, torch, sys\n"
        "from ds4d_cli.allocator import retain_freed_memory\n"
        "if sys.argv[1] == '1': assert retain_freed_memory()\n"
        "sizes = (10_500_000, 12_000_000)\n"  # 42 and 48 MB of float32
        "for _ in range(5):\n"  # warm up: the heap grows to what the loop needs
        "    for n in sizes:\n"
        "        x = torch.empty(n); x.fill_(1); del x\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    for n in sizes:\n"
        "        x = torch.empty(n); x.fill_(1); del x\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    faults = [int(subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True,
                                 check=True).stdout) for flag in ("0", "1")]
    assert faults[0] > 200_000  # 40 allocations of 10k-12k pages each
    assert faults[1] * 20 < faults[0], faults
