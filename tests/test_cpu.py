"""tlpipe/core/cpu.py: oneDNN on for every x86 CPU before TensorFlow loads, unless the user chose;
the flags its kernels may use; the record of what a stage computed on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import command_env
from tlpipe.core.cpu import compute_record, kernel_flags, onednn_setting, use_onednn

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n"


@pytest.mark.parametrize(
    ("machine", "environ", "expected"),
    [
        ("x86_64", {}, "1"),
        ("AMD64", {}, "1"),
        ("x86_64", {"TF_ENABLE_ONEDNN_OPTS": "0"}, "0"),  # the user's choice wins
        ("aarch64", {}, None),  # TensorFlow's own choice elsewhere
    ],
)
def test_onednn_is_on_for_x86_unless_the_user_set_it(machine, environ, expected):
    use_onednn(environ, machine)
    assert environ.get("TF_ENABLE_ONEDNN_OPTS") == expected


def test_onednn_setting_reads_the_variable():
    assert onednn_setting({"TF_ENABLE_ONEDNN_OPTS": "1"}) == "on"
    assert onednn_setting({"TF_ENABLE_ONEDNN_OPTS": "0"}) == "off"
    assert onednn_setting({}) == "TensorFlow's default"


def test_importing_tlpipe_turns_onednn_on_before_tensorflow_loads():
    """A fresh process without the variable: after `import tlpipe` it is set and TensorFlow is
    not loaded yet (it reads the variable once, when it loads)."""
    environ = {k: v for k, v in command_env().items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    script = (
        "import json, os, sys, tlpipe; "
        "print(json.dumps([os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == ["1", False]


def test_kernel_flags_drop_bfloat16_when_onednn_is_capped_below_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert "avx512_bf16" in kernel_flags({}, cpuinfo)
    assert "avx512_bf16" in kernel_flags({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, cpuinfo)
    capped = kernel_flags({"ONEDNN_MAX_CPU_ISA": "avx2"}, cpuinfo)
    assert "avx512_bf16" not in capped and "avx2" in capped


def test_compute_record_names_the_cpu_its_instruction_sets_onednn_and_threads():
    record = compute_record(threads=3, precision="float32")
    assert set(record) >= {"cpu", "instruction_sets", "onednn", "threads", "precision"}
    assert record["threads"] == 3 and record["onednn"] == "on"  # the test process imported tlpipe
    assert all(isinstance(name, str) for name in record["instruction_sets"])
