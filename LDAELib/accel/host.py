"""Facts about this machine (CPU name and vector level, memory) and the process's memory allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from pathlib import Path


def cpu_vector_level(flags: str | None = None) -> str:
    """The widest vector instructions this CPU offers, as a short label: "AVX-512 BF16", "AVX-512",
    "AVX2", "AVX" or "" (none found, or no /proc/cpuinfo). Two CPUs of one model name can differ
    here (the same "AMD EPYC" is sold with AVX2 only or with AVX-512 BF16), and with it their speed."""
    if flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
        except OSError:
            flags = ""
    have = set(flags.split(":", 1)[-1].split())
    if "avx512f" in have:
        return "AVX-512 BF16" if "avx512_bf16" in have or "amx_bf16" in have else "AVX-512"
    return next((label for flag, label in (("avx2", "AVX2"), ("avx", "AVX")) if flag in have), "")


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else platform.processor(), else "CPU"), with
    its vector level in brackets where known, e.g. "AMD EPYC (AVX2)"."""


    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or "CPU"
    level = cpu_vector_level()
    return f"{name} ({level})" if level else name


def available_memory_bytes() -> int | None:
    """MemAvailable of this Linux machine (None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_gb() -> tuple[float | None, float | None]:
    """(total, available) system memory in GiB, where the platform tells."""
    try:
        if sys.platform.startswith("linux"):
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
            kb = lambda k: float(info[k].split()[0]) / 2**20  # noqa: E731
            return round(kb("MemTotal"), 1), round(kb("MemAvailable"), 1)
        if sys.platform == "win32":
            class MEMORYSTATUSEX(ctypes.Structure):
                _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong), ("ullTotalPhys", ctypes.c_ulonglong),
                            ("ullAvailPhys", ctypes.c_ulonglong), ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                            ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong), ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

            s = MEMORYSTATUSEX()
            s.dwLength = ctypes.sizeof(s)
            ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(s))
            return round(s.ullTotalPhys / 2**30, 1), round(s.ullAvailPhys / 2**30, 1)
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return round(total, 1), None
    except (OSError, ValueError, KeyError, AttributeError):
        return None, None


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the system after every call.

    With glibc's defaults each ShiftUNet call at the official size maps and unmaps its large
    activation buffers (hundreds of thousands of page faults, about a second of kernel time per
    float32 step on this project's CPU). Serving large blocks from the heap and not trimming it
    removes that; the price is that the process keeps its peak memory until it exits, which is
    what a model server (the Slicer worker, ``ldae`` on many scans) does anyway. glibc only; set
    LDAE_TUNE_MALLOC=0 to leave the allocator alone. Returns whether anything was changed."""
    if os.environ.get("LDAE_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, …)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = (mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1) and ok
    return ok
