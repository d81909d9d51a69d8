"""Run every benchmark section and write the results into docs/benchmarks.md.

Sections (issue 15): 1 loss kernels vs peers; 2 GloFND's share of a training step; 3 per-sample
tables at N = 10^3 ... 10^8 (and sharded memory per rank); 4 ``debiascl train`` vs a hand-written
loop (trainer overhead); 5 data pipeline; 6 one vs two gloo processes.

Run (about 15 minutes on 2 shared CPU cores; the allocator settings keep glibc from returning
and re-faulting the large temporaries every call, which would dominate the kernel timings):

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 OMP_NUM_THREADS=1 \
    .venv/bin/python -m benchmarks

``--quick`` runs every section once at tiny sizes (a smoke test, seconds per section) and prints
instead of writing the document unless ``--output`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: python benchmarks/run_all.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.is_file():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for pkg in ("lightly", "libauc", "kornia"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, load average {load:.1f} at start; "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), {', '.join(versions)}"
    )


def sections(quick: bool) -> list[tuple[str, object]]:
    from benchmarks import bench_data, bench_distributed, bench_kernels, bench_steps, bench_trainer

    if quick:
        return [
            ("1. Loss kernels", lambda: bench_kernels.run((64,), 2)),
            ("2. GloFND share of a training step", lambda: bench_steps.glofnd_share(32, 2)),
            (
                "3a. Per-sample tables: per-step cost",
                lambda: bench_steps.table_cost(64, (10**3, 10**5), 5),
            ),
            (
                "3b. Full step at small vs large N",
                lambda: bench_steps.full_step_by_n(32, (10**3, 10**5), 2),
            ),
            (
                "3c. Sharded tables: memory per rank",
                lambda: (bench_steps.sharded_memory(10**5), {}),
            ),
            ("4. Trainer overhead", lambda: bench_trainer.run(32, 3, 1)),
            ("5a. Augmentation", lambda: bench_data.augmentation_rate(16, 1)),
            ("5b. Input-bound check", lambda: bench_data.input_bound(16, 2, (0, 1))),
            ("6. Distributed", lambda: bench_distributed.run(16, 2, 500)),
        ]
    return [
        ("1. Loss kernels", lambda: bench_kernels.run((256, 512, 1024), 15)),
        ("2. GloFND share of a training step", lambda: bench_steps.glofnd_share(256, 10)),
        ("3a. Per-sample tables: per-step cost", lambda: bench_steps.table_cost(256)),
        ("3b. Full step at small vs large N", lambda: bench_steps.full_step_by_n(256)),
        ("3c. Sharded tables: memory per rank", lambda: (bench_steps.sharded_memory(), {})),
        ("4. Trainer overhead", lambda: bench_trainer.run(128, 16, 4)),
        ("5a. Augmentation", lambda: bench_data.augmentation_rate(256, 5)),
        ("5b. Input-bound check", lambda: bench_data.input_bound(256, 8)),
        ("6. Distributed", lambda: bench_distributed.run(256, 10)),
    ]


def render(parts: list[tuple[str, str, float]], command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        BEGIN,
        "## All sections (`python -m benchmarks`)",
        "",
        f"Recorded {now} on: {machine()}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "Kernel, table and step timings are the CPU time of the calling thread (medians of "
        "interleaved calls in one process), so time spent descheduled on a shared machine does "
        "not count; the trainer-overhead section uses the CPU time of the whole process (both "
        "sides, any helper threads included) and shows wall time beside it; the data-pipeline "
        "and distributed sections use wall time.",
    ]
    for title, text, seconds in parts:
        out += ["", f"### {title}", "", text, "", f"_(section took {seconds:.0f} s)_"]
    out.append(END)
    return "\n".join(out) + "\n"


def write_doc(block: str, path: Path) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check every section runs")
    parser.add_argument("--output", type=Path, default=None, help=f"document (default {DOC})")
    parser.add_argument("--only", default=None, help="run only sections whose title starts so")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    parts = []
    for title, fn in sections(args.quick):
        if args.only and not title.startswith(args.only):
            continue
        print(f"== {title}", flush=True)
        start = time.perf_counter()
        text, _ = fn()  # type: ignore[operator]
        seconds = time.perf_counter() - start
        print(text, f"\n({seconds:.0f} s)\n", flush=True)
        parts.append((title, text, seconds))
    env = " ".join(
        f"{k}={os.environ[k]}"
        for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
        if k in os.environ
    )
    flags = " ".join(argv if argv is not None else sys.argv[1:])
    command = f"{env} .venv/bin/python -m benchmarks {flags}".strip()
    output = args.output if args.output is not None else (None if args.quick else DOC)
    if output is not None:
        write_doc(render(parts, command), output)
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
