"""What the benches that measure training memory share (bench/flexecontrol.py, bench/mojito.py): the process's RSS and
its peak on Linux, jobs run in processes of their own so that each peak is one configuration's, a fingerprint of
parameters (did they change?) and the rotation that interleaves configurations across rounds.

Memory is measured as the process's resident set: `reset_peak_rss()` once the models and optimizer exist (so that
building's transient peak does not hide the step's), then `max_rss_mb()` after the steps; what a step adds is that
peak minus `rss_mb()` at the reset. A bench module names its jobs in a `WORKERS` dict {kind: function(spec) -> dict};
`run_job(module, kind, spec)` runs one in a fresh process forked from a forkserver that imported `module` once.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
import resource
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def rss_mb() -> float:
    """The process's resident set size now, in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def max_rss_mb() -> float:
    """The process's peak resident set size since it started or since `reset_peak_rss`, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the peak RSS that ru_maxrss reports to the RSS now (Linux's clear_refs "5"); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def fingerprint(parameters: Iterable[torch.Tensor]) -> float:
    """A number that changes when any of the parameters does (their sum of absolute values, in float64)."""
    return math.fsum(float(p.detach().double().abs().sum()) for p in parameters)


def rotated(items: Sequence, by: int) -> list:
    """`items` starting at index `by` (modulo their count): round r of an interleaved run starts at configuration r."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def timing_record(timed: Sequence[Mapping[str, float]], phases: Sequence[str]) -> dict[str, list[float]]:
    """Per-step timings [{"step": ms, phase: ms, ...}, ...] as series: {"step_ms": [...], "<phase>_ms": [...]}."""
    return {"step_ms": [t["step"] for t in timed], **{f"{phase}_ms": [t[phase] for t in timed] for phase in phases}}


def output_problems(args: Any, results: Path, repo: Path) -> list[str]:
    """What is wrong with a bench's --quick / --out / --inline (the arguments every bench whose quick run is its test
    takes): a quick run names its own .json outside `results` (the committed ones), --inline is for quick runs."""
    problems = []
    if args.quick and args.out is None:
        problems.append("--quick needs --out PATH.json (it never writes the committed results)")
    if args.out is not None:
        out = args.out.resolve()
        if out.suffix != ".json":
            problems.append(f"--out must name a .json file, got {args.out}")
        if args.quick and out.parent == results.resolve():
            problems.append(f"--quick must not write into {results.relative_to(repo)}/ (the committed results): "
                            f"give another --out")
    if args.inline and not args.quick:
        problems.append("--inline is for --quick: the committed measurement runs each configuration in its own "
                        "process")
    return problems


def call_worker(workers: Mapping[str, Any], kind: str, spec: Mapping[str, Any]) -> tuple[str, Any]:
    """("ok", workers[kind](spec)) or ("error", the traceback's text): what a worker process sends back."""
    try:
        return "ok", workers[kind](spec)
    except Exception:  # noqa: BLE001 -- any failure is reported to the parent, which raises it with the job's name
        return "error", traceback.format_exc()


def worker_main(connection, module: str, kind: str, spec: Mapping[str, Any]) -> None:
    connection.send(call_worker(importlib.import_module(module).WORKERS, kind, spec))
    connection.close()


def job_result(reply: tuple[str, Any] | None, exitcode: int | None, what: str) -> dict[str, Any]:
    """The record a worker sent; RuntimeError naming the job (and the worker's traceback) when it failed or sent
    nothing."""
    if reply is not None and reply[0] == "ok":
        return reply[1]
    if reply is not None:
        tail = "\n".join(str(reply[1]).strip().splitlines()[-15:])
        raise RuntimeError(f"bench worker for {what} failed:\n{tail}")
    raise RuntimeError(f"bench worker for {what} exited with {exitcode} before sending a result (killed for memory?)")


def run_job(module: str, kind: str, spec: Mapping[str, Any], *, inline: bool, what: str) -> dict[str, Any]:
    """`module`'s WORKERS[kind](spec), in this process (inline) or in a process of its own. The processes are forked
    from a forkserver that imported `module` (and so its libraries) once: a fresh interpreter would spend ~10 s
    importing them per job; each is a new process, so its peak RSS is its own. `what` names the job in errors."""
    if inline:
        return importlib.import_module(module).WORKERS[kind](spec)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([module])
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=worker_main, args=(sender, module, kind, dict(spec)), daemon=True)
    process.start()
    sender.close()
    try:
        reply = receiver.recv()
    except EOFError:
        reply = None
    process.join()
    return job_result(reply, process.exitcode, what)
