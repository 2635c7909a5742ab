"""Where an engine's processes run on the host's CPUs, and what the host did meanwhile.

An ``--enforce-eager`` vLLM launches every kernel of every layer from Python, so its step time is
the CPU's: which core the engine core's thread runs on, who else runs there, and how fast that
core is at the moment.  This module places processes on fixed CPU sets
(``os.sched_setaffinity`` on every thread; new threads inherit their creator's set) and reads what
the host can tell about a measurement window: load average, steal time (the hypervisor running
someone else on our vCPUs), the engine core's involuntary context switches and CPU time, the
cores' reported MHz, and the speed of a fixed pure-Python loop.

The layout (:func:`layout`) keeps the first CPUs for the system, gives the API server two, the
engine core (the process that launches the kernels) its own four and the load generator the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class Layout:
    """Disjoint CPU sets: the system's, the API server's, the engine core's, the client's."""

    system: frozenset[int]
    api: frozenset[int]
    engine: frozenset[int]
    client: frozenset[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {k: sorted(getattr(self, k)) for k in ("system", "api", "engine", "client")}


def layout(cpus: list[int] | None = None) -> Layout:
    """Split the CPUs this process may use (16 on the GPU machine): 2 system, 2 API server,
    4 engine core, the rest the client; on fewer than 8 CPUs the sets overlap as little as
    they can (the CPU proof runs on 2)."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if len(cpus) >= 10:
        return Layout(
            frozenset(cpus[:2]), frozenset(cpus[2:4]), frozenset(cpus[4:8]), frozenset(cpus[8:])
        )
    half = max(1, len(cpus) // 2)
    return Layout(
        frozenset(cpus[:1]), frozenset(cpus[:half]), frozenset(cpus[:half]),
        frozenset(cpus[half:] or cpus),
    )  # fmt: skip


def everything() -> frozenset[int]:
    """All CPUs this machine has online (what an unpinned process may run on)."""
    return frozenset(range(os.cpu_count() or 1))


def _threads(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in (PROC / str(pid) / "task").iterdir()]
    except OSError:
        return []


def pin(pid: int, cpus: frozenset[int]) -> int:
    """Every thread of ``pid`` onto ``cpus``; returns how many threads were placed."""
    placed = 0
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
            placed += 1
        except OSError:  # the thread ended meanwhile
            continue
    return placed


def pin_self(cpus: frozenset[int]) -> None:
    """This process's every thread (the load generator's client processes are spawned from
    them and inherit the set)."""
    pin(os.getpid(), cpus)


def _comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def group(leader: int) -> dict[int, str]:
    """The processes of ``leader``'s process group (an engine started with ``setsid``):
    pid -> name."""
    members = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if len(fields) > 2 and fields[2] == str(leader):
                members[int(entry.name)] = _comm(int(entry.name))
    return members


def engine_core(members: dict[int, str]) -> int | None:
    """The process that runs the engine loop and launches the kernels (vLLM names it
    ``VLLM::EngineCore``; the kernel keeps 15 characters of it)."""
    for pid, name in members.items():
        if "EngineCor" in name:
            return pid
    return None


def pin_engine(leader: int, place: Layout | None) -> dict[str, Any]:
    """The engine core onto ``place.engine``, every other process of the group onto
    ``place.api`` (with no engine core to tell apart, as in ``disagg sim``: all onto both sets);
    ``None``: every process back onto every CPU.  Returns what went where."""
    members = group(leader)
    core = engine_core(members)
    placed: dict[str, Any] = {}
    for pid, name in members.items():
        if place is None:
            cpus = everything()
        elif core is None:
            cpus = place.api | place.engine
        else:
            cpus = place.engine if pid == core else place.api
        placed[f"{pid} {name}"] = {"cpus": sorted(cpus), "threads": pin(pid, cpus)}
    return placed


def spinners(count: int, cpus: frozenset[int] | None) -> list[subprocess.Popen[bytes]]:
    """``count`` busy loops (background CPU load), confined to ``cpus`` when given."""
    out = []
    for _ in range(count):
        process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        if cpus is not None:
            pin(process.pid, cpus)
        out.append(process)
    return out


def stop_spinners(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
        process.wait(5)


def loop_ms(iterations: int = 2_000_000) -> float:
    """A fixed pure-Python loop's time: how fast the core this thread is on runs an
    interpreter now."""
    started = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i
    return round((time.perf_counter() - started) * 1e3, 2)


def _cpu_times() -> dict[str, list[int]]:
    out = {}
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            out[name] = [int(v) for v in values]
    return out


def _process_counters(pid: int | None) -> dict[str, int]:
    if pid is None:
        return {}
    counters = {}
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                counters[key] = int(value)
    except OSError:
        return {}
    fields = _stat_fields(pid)
    if len(fields) > 12:
        counters["cpu_ticks"] = int(fields[11]) + int(fields[12])  # utime + stime
    return counters


def _mhz() -> list[float]:
    try:
        lines = (PROC / "cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return [float(line.split(":")[1]) for line in lines if line.startswith("cpu MHz")]


class Window:
    """What the host did between :meth:`open` and :meth:`close` (one measurement pass)."""

    def __init__(self, engine_pid: int | None) -> None:
        self.engine_pid = engine_pid
        self.started = time.monotonic()
        self.cpu = _cpu_times()
        self.proc = _process_counters(engine_pid)

    def close(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        cpu, proc = _cpu_times(), _process_counters(self.engine_pid)
        tick = os.sysconf("SC_CLK_TCK")

        def steal_share(name: str) -> float | None:
            before, after = self.cpu.get(name), cpu.get(name)
            if not before or not after or len(after) < 8:
                return None
            total = sum(after) - sum(before)
            return round((after[7] - before[7]) / total, 4) if total else None

        out: dict[str, Any] = {
            "seconds": round(wall, 1),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "steal_share_all": steal_share("cpu"),
            "steal_share_per_cpu": {
                name[3:]: steal_share(name) for name in sorted(cpu) if name != "cpu"
            },
            "mhz": _mhz(),
            "loop_ms": loop_ms(),
        }
        if proc and self.proc:
            out["engine_core"] = {k: proc[k] - self.proc.get(k, 0) for k in proc}
            if "cpu_ticks" in proc:
                out["engine_core"]["cpu_share"] = round(
                    (proc["cpu_ticks"] - self.proc["cpu_ticks"]) / tick / wall, 3
                )
        return out


def machine() -> dict[str, Any]:
    """``nproc``, ``lscpu`` and the SMT siblings of each CPU, as the machine reports them."""
    siblings = {}
    for cpu in sorted(everything()):
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        siblings[cpu] = path.read_text().strip() if path.exists() else None
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        lscpu = ""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "lscpu": lscpu,
        "siblings": siblings,
        "mhz": _mhz(),
    }
