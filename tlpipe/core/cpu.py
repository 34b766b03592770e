"""Which CPU kernels TensorFlow computes with, and a record of what a stage computed on.

TensorFlow 2.21 turns its oneDNN kernels on by itself only on x86 CPUs with the newest instruction
sets (AVX-512 VNNI or BF16, AMX). On the others, AVX2-only CPUs such as most cloud VMs and many
laptops, it runs Eigen's kernels, which are slower (fine-tuning 3.9x, measured in issue 26) and
whose convolution results depend on the thread count: a Ray actor given one CPU and a stage using
two wrote different feature caches. `use_onednn` turns oneDNN on for every x86 CPU before
TensorFlow is imported, unless the user set TF_ENABLE_ONEDNN_OPTS, so every machine of this
kind computes the same way (docs/trusted.md, "Determinism").

Standard library only: `tlpipe/__init__.py` calls `use_onednn` before anything imports TensorFlow.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping
from pathlib import Path

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# oneDNN's own cap on the kernels it dispatches to; below AVX512_CORE_BF16 it has no bfloat16
# arithmetic, as on a CPU without it (ONEDNN_MAX_CPU_ISA=AVX2 runs what an AVX2-only CPU runs).
ONEDNN_ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
ISA_CAPS_WITHOUT_BFLOAT16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})
# The /proc/cpuinfo flags that decide which kernels TensorFlow and oneDNN pick, in that order.
INSTRUCTION_SETS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)


def use_onednn(environ: MutableMapping[str, str] = os.environ, machine: str | None = None) -> None:
    """TF_ENABLE_ONEDNN_OPTS=1 on x86 unless already set (the user's choice wins). Call before
    TensorFlow is imported: it reads the variable once."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() in X86_MACHINES:
        environ.setdefault(ONEDNN_VARIABLE, "1")


def onednn_setting(environ: MutableMapping[str, str] = os.environ) -> str:
    """'on', 'off', or TensorFlow's own choice when the variable is unset (not x86)."""
    value = environ.get(ONEDNN_VARIABLE)
    if value is None:
        return "TensorFlow's default"
    return "off" if value.strip().lower() in ("0", "false", "off", "") else "on"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where there is no /proc/cpuinfo."""
    return frozenset(_cpuinfo_field(cpuinfo, "flags").split())


def kernel_flags(
    environ: MutableMapping[str, str] = os.environ, cpuinfo: Path = Path("/proc/cpuinfo")
) -> frozenset[str]:
    """The CPU's flags that oneDNN's kernels may use: all of them, less the bfloat16 ones when
    ONEDNN_MAX_CPU_ISA caps oneDNN below its bfloat16 kernels."""
    flags = cpu_flags(cpuinfo)
    if environ.get(ONEDNN_ISA_VARIABLE, "").strip().upper() in ISA_CAPS_WITHOUT_BFLOAT16:
        return flags - BFLOAT16_FLAGS
    return flags


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    return _cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine()


def _cpuinfo_field(cpuinfo: Path, name: str) -> str:
    """The value of the first `name : value` line of /proc/cpuinfo, or ''."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), which TensorFlow's default thread
    count follows."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def compute_record(*, threads: int, precision: str | None = None) -> dict:
    """What a stage computed on, for its outputs' provenance: the CPU, its instruction sets
    (among INSTRUCTION_SETS), the oneDNN setting (and ONEDNN_MAX_CPU_ISA if set), the threads,
    the precision."""
    flags = cpu_flags()
    record = {
        "cpu": cpu_model(),
        "instruction_sets": [name for name in INSTRUCTION_SETS if name in flags],
        "onednn": onednn_setting(),
        "threads": threads,
    }
    if os.environ.get(ONEDNN_ISA_VARIABLE):
        record["onednn_max_cpu_isa"] = os.environ[ONEDNN_ISA_VARIABLE]
    if precision is not None:
        record["precision"] = precision
    return record
