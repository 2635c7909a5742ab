"""The device calls of one GPU-tier run, and what travels with each.

A GPU machine here takes at most 64 MiB per call -- the checkout's tracked and untracked files plus
the ignored folders named in ``carry`` -- runs one command of at most 10 minutes, and is given back
~30 s after a call returns.  The bundle (~110 MiB) therefore travels in two parts over two calls
issued back to back; the third call only measures.  Pure: the plan is data, checked by tests.

| call | carries | runs | expected |
|---|---|---|---|
| 1 | ``.gpu/c1`` (bundle part 1) | appends it, probes the machine | machine start + ~0.5 min |
| 2 | ``.gpu/c2`` (part 2, checksum, models) | unpack; the P/D suite; start timers | ~8.5 min |
| 3 | nothing | H200 layer calibration; fidelity real vs sim | ~8.5 min |

Each call must be issued within ~30 s of the previous one returning, or the machine (and with it
the unpacked bundle and the running engines) is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MiB = 1 << 20
#: What one call may carry in all (the device tool's limit).
CALL_LIMIT = 64 * MiB
#: Left free under the limit for files that appear between staging and the call.
MARGIN = 2 * MiB
COMMAND_LIMIT = 2000
STAGE = ".gpu"


@dataclass(frozen=True)
class DeviceCall:
    name: str
    kind: str
    """The device kind: ``nvidia-h200``, or ``nvidia-h200-x2`` for the two-GPU run."""
    command: str
    carry: tuple[str, ...]
    minutes: float
    """Expected wall time of the command (the machine's start comes on top for the first)."""
    timeout_s: int
    writes: tuple[str, ...]
    """Files the command leaves under ``$OUT`` (at most 8, at most two folders deep)."""


def one_gpu_calls(stage: str = STAGE) -> list[DeviceCall]:
    run = "set -o pipefail; {env}bash bench/gpu/device.sh {call} 2>&1 | tee $OUT/console.txt"
    return [
        DeviceCall(
            "call 1",
            "nvidia-h200",
            run.format(env="", call=1),
            (f"{stage}/c1",),
            0.5,
            120,
            ("call1.json", "console.txt"),
        ),
        DeviceCall(
            "call 2",
            "nvidia-h200",
            run.format(env="BUDGET=500 ", call=2),
            (f"{stage}/c2",),
            8.5,
            600,
            ("suite.json", "logs-call2.txt", "console.txt"),
        ),
        DeviceCall(
            "call 3",
            "nvidia-h200",
            run.format(env="BUDGET=520 ", call=3),
            (),
            8.5,
            600,
            (
                "calibration-h200-layers.json",
                "calibrate.txt",
                "fidelity.json",
                "logs-call3.txt",
                "console.txt",
            ),
        ),
    ]


def two_gpu_calls(stage: str = STAGE) -> list[DeviceCall]:
    """Issue 19: the same bundle on ``nvidia-h200-x2`` (a fresh machine: parts again)."""
    run = "set -o pipefail; {env}bash bench/gpu/device.sh {call} 2>&1 | tee $OUT/console.txt"
    return [
        DeviceCall(
            "x2 call 1",
            "nvidia-h200-x2",
            run.format(env="", call=1),
            (f"{stage}/c1",),
            0.5,
            120,
            ("call1.json", "console.txt"),
        ),
        DeviceCall(
            "x2 call 2",
            "nvidia-h200-x2",
            run.format(env="BUDGET=520 ", call="x2"),
            (f"{stage}/c2",),
            9.0,
            600,
            ("two_gpu.json", "logs-callx2.txt", "console.txt"),
        ),
    ]


def _after_part_one(
    stage: str, mode: str, budget: int, minutes: float, timeout_s: int, writes: tuple[str, ...]
) -> list[DeviceCall]:
    """A fresh machine: part 1 (``device.sh 1``), then part 2 and ``device.sh <mode>``."""
    run = "set -o pipefail; {env}bash bench/gpu/device.sh {call} 2>&1 | tee $OUT/console.txt"
    first = one_gpu_calls(stage)[0]
    return [
        replace(first, name=f"{mode} call 1"),
        DeviceCall(
            f"{mode} call 2",
            "nvidia-h200",
            run.format(env=f"BUDGET={budget} ", call=mode),
            (f"{stage}/c2",),
            minutes,
            timeout_s,
            writes,
        ),
    ]


def sim_fit_calls(stage: str = STAGE) -> list[DeviceCall]:
    """Issue 20: only the simulator side of the fidelity driver, on the GPU machine's CPU (the
    same machine the real engines were timed on), with the calibrated H200 preset: a fresh
    machine, so part 1 (``device.sh 1``), then part 2, unpack and the sims (``simfit``)."""
    writes = ("fidelity-simfit.json", "logs-callsimfit.txt", "console.txt")
    return _after_part_one(stage, "simfit", 400, 3.0, 480, writes)


def fidelity_all_calls(stage: str = STAGE) -> list[DeviceCall]:
    """Issue 20, both sides in one run: part 1 (``device.sh 1``), then part 2, unpack, the five
    timing engines started and measured (eager ITL in several passes), then the simulators
    with the calibrated preset (``fidelity-all``): real and simulated side by side, one call."""
    writes = ("fidelity.json", "logs-callfidelity-all.txt", "console.txt")
    return _after_part_one(stage, "fidelity-all", 570, 9.0, 600, writes)


def eager_pin_calls(stage: str = STAGE) -> list[DeviceCall]:
    """Issue 20, eager mode: part 1 (``device.sh 1``), then part 2, unpack and the eager engine
    alone, in passes unpinned and pinned to CPUs of its own (``eager-pin``,
    ``bench/gpu/eager_passes.py``)."""
    writes = ("eager-passes.json", "logs-calleager-pin.txt", "console.txt")
    return _after_part_one(stage, "eager-pin", 560, 9.0, 600, writes)


def split_sizes(total: int, parts: int) -> list[int]:
    """Byte sizes of ``parts`` consecutive parts of a ``total``-byte file, as equal as can be."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def travel_bytes(checkout_bytes: int, carried: dict[str, int], call: DeviceCall) -> int:
    """What one call sends: the checkout (tracked + untracked, not ignored) plus its carry."""
    return checkout_bytes + sum(size for path, size in carried.items() if path in call.carry)


def check_plan(calls: list[DeviceCall], checkout_bytes: int, carried: dict[str, int]) -> list[str]:
    """Every way the plan breaks the device tool's limits (empty: it fits)."""
    problems = []
    for call in calls:
        size = travel_bytes(checkout_bytes, carried, call)
        if size > CALL_LIMIT - MARGIN:
            problems.append(
                f"{call.name} sends {size / MiB:.1f} MiB (limit {CALL_LIMIT // MiB} MiB, "
                f"{MARGIN // MiB} MiB kept free)"
            )
        if len(call.command) > COMMAND_LIMIT:
            problems.append(f"{call.name}: command of {len(call.command)} characters")
        if len(call.writes) > 8:
            problems.append(f"{call.name} writes {len(call.writes)} files (8 come back)")
        if not 1 <= call.timeout_s <= 600:
            problems.append(f"{call.name}: timeout {call.timeout_s} s")
    return problems
