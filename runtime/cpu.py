"""What this CPU is, and what OpenVINO needs because of it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import openvino as ov


def cpu_has(flag: str) -> bool:
    """Whether /proc/cpuinfo lists this CPU flag (False where there is no such file)."""
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def computes_in_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here. Without it (no AVX512-BF16 or AMX) a bf16 precision
    hint computes in f32, and only the KV cache's f16 tells it from f32."""
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def avoid_one_core_amx_crash(precision: str, threads: int) -> None:
    """Keep OpenVINO off AMX when it would compile a bf16 model for one core on an AMX CPU.

    OpenVINO 2026.4.1's CPU plugin dies of SIGFPE compiling any bf16 model there (a 1-thread compile, or a
    process pinned to one core; f32 and two threads are fine), which a server replica of one thread meets
    first. Capping oneDNN at AVX512-BF16 avoids that path. It is process-wide and read at the first compile,
    so it is set before the first one and never over a user's own setting.
    """
    if precision != "bf16" or "ONEDNN_MAX_CPU_ISA" in os.environ or not cpu_has("amx_bf16"):
        return  # cpu_has is False off Linux, where os.sched_getaffinity may not exist either
    if threads == 1 or (threads == 0 and len(os.sched_getaffinity(0)) == 1):
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_BF16"
        print("specqd: one core on an AMX CPU: bf16 runs without AMX (OpenVINO 2026.4.1 crashes compiling it)",
              file=sys.stderr)
