"""The human-readable table: one row per figure, grouped by study, headed by the machine.

Every figure is a ratio measured in this run or an absolute figure; absolute rows are marked
(`*`) and the header names the machine they hold for (CPU model, instruction sets, oneDNN).
"""

from __future__ import annotations

from dataclasses import dataclass

EMULATED = "emulated: not a target here"


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    note: str = ""
    absolute: bool = False  # a figure of this machine, not a ratio


def bfloat16_note(note: str, native: bool) -> str:
    """`note`, or the mark that bfloat16 is emulated on this CPU (or under the oneDNN cap)."""
    return note if native else f"{EMULATED}; {note}"


def header(machine: dict, mode: str, tf_version: str) -> list[str]:
    sets = ", ".join(machine["instruction_sets"]) or "none of avx2/avx512f/avx512_bf16/amx"
    cap = machine["onednn_max_cpu_isa"]
    return [
        f"tlpipe benchmark ({mode}); TensorFlow {tf_version}, oneDNN {machine['onednn']}"
        + (f" capped at ONEDNN_MAX_CPU_ISA={cap}" if cap else ""),
        f"machine (for rows marked *): {machine['cpu']}, {machine['cpus']} CPUs; "
        f"instruction sets found: {sets}; native bfloat16: "
        + ("yes" if machine["native_bfloat16"] else "no (emulated)"),
    ]


def render(title_lines: list[str], sections: dict[str, list[Row]], footer: list[str]) -> str:
    rows = [row for section in sections.values() for row in section]
    width = max((len(row.name) for row in rows), default=10) + 2
    value_width = max((len(row.value) for row in rows), default=8)
    lines = list(title_lines)
    for section, section_rows in sections.items():
        lines.append(f"[{section}]")
        for row in section_rows:
            name = ("* " if row.absolute else "  ") + row.name
            lines.append(f"  {name:<{width}} {row.value:>{value_width}}  {row.note}".rstrip())
    return "\n".join([*lines, *footer])
