"""Engines of the GPU tier, started from the operator's own rendering.

Every engine -- real vLLM on the GPU machine, or ``disagg sim`` in its place on a CPU -- is the
``disagg render --workers`` output of one of the tier's custom resources (``bench/gpu/*.yaml``,
optionally with ``--set`` changes, which are spec changes the renderer validates), with only these
local substitutions (:func:`local_command`; docs/gpu.md lists them):

* the program: ``vllm serve`` runs as ``python3 -m vllm.entrypoints.cli.main serve`` (the offline
  bundle has no console scripts), or as ``python3 -m disagg.cli sim serve`` with ``--engine sim``;
* the model: the hub id becomes a local folder with ``config.json`` and a tokenizer, and
  ``--load-format dummy`` (random weights made on the GPU; no weights travel);
* ``--host 0.0.0.0`` -> ``127.0.0.1`` and ``--port`` -> the engine's own port; the side channel's
  pod IP (``status.podIP``) -> ``127.0.0.1`` and its port -> the engine's own (several engines
  share one machine);
* memory, so that several engines share one GPU: ``--gpu-memory-utilization 0.05`` (only vLLM's
  start-up check of free memory reads it once ``--kv-cache-memory-bytes`` is given) and
  ``--kv-cache-memory-bytes`` sized per engine;
* ``--enforce-eager`` for the tiny protocol engines only (start-up time; their timings are not
  measured).

Engines run in their own process session (``setsid``): they outlive the call that started them
while the machine stays warm, which is how the timing engines started during call 2 are ready for
call 3.  Their pids are recorded under the tier's root, and only those process groups are ever
signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("DISAGG_GPU_ROOT", "/tmp/disagg-gpu"))
SITE = ROOT / "site"
MODELS = ROOT / "models"
STATE = ROOT / "engines"
LOGS = ROOT / "logs"

VLLM_SERVE = ("vllm", "serve")
API_SERVER = ("python3", "-m", "vllm.entrypoints.openai.api_server")
#: Added to every port of the tier (engines, side channels, gateways): 0 on the GPU machine; the
#: CPU proof moves everything out of the way of other programs on a shared machine.
PORT_OFFSET = int(os.environ.get("DISAGG_GPU_PORT_OFFSET", "0"))


def port(number: int) -> int:
    return number + PORT_OFFSET


#: Start-up check only (see the module docstring): far below what any engine here needs free.
GPU_MEMORY_UTILIZATION = "0.05"

#: The machine's environment for every engine (not part of the rendering): offline, no usage
#: statistics, no FlashInfer (not in the bundle; vLLM 0.26's sampler imports it unless told not
#: to), and the machine's own address for vLLM's host-IP probe, which cannot leave the machine.
MACHINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "PYTHONUNBUFFERED": "1",
}


class EngineError(RuntimeError):
    """An engine could not be rendered, started or reached; the message says which and why."""


@dataclass(frozen=True)
class EnginePlan:
    """One engine: which pool of which resource, and where it runs on this machine."""

    name: str
    resource: str
    """The custom resource, relative to the repository (``bench/gpu/disaggdeployment.yaml``)."""
    role: str
    """The pool of the resource to start (``prefill``, ``decode``, ``aggregated``)."""
    model: str
    """Folder under the models root: ``tiny`` or ``llama-3.1-8b``."""
    port: int
    side_channel_port: int | None = None
    kv_cache_bytes: int = 2 << 30
    sets: tuple[str, ...] = ()
    """``disagg render --set`` changes (spec changes, validated by the renderer)."""
    eager_startup: bool = False
    """Add ``--enforce-eager`` (the tiny protocol engines: start-up time)."""
    gpu: int | None = None
    """``CUDA_VISIBLE_DEVICES`` for machines with several GPUs."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def render_worker(plan: EnginePlan, python: str = sys.executable) -> dict[str, Any]:
    """The operator's rendering of the plan's pool (``disagg render --workers``)."""
    argv = [python, "-m", "disagg.cli", "render", str(REPO / plan.resource), "--workers"]
    argv += ["--role", plan.role]
    for change in plan.sets:
        argv += ["--set", change]
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    if done.returncode != 0:
        raise EngineError(f"disagg render failed for {plan.name}: {done.stderr.strip()}")
    workers: list[dict[str, Any]] = json.loads(done.stdout)
    if len(workers) != 1:
        raise EngineError(f"{plan.resource} renders {len(workers)} {plan.role} pools, want one")
    return workers[0]


def _replace_flag(args: list[str], flag: str, value: str | None) -> list[str]:
    """``args`` with ``flag``'s value replaced (``None``: the flag removed)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == flag:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out if value is None else [*out, flag, value]


def local_command(
    worker: dict[str, Any], plan: EnginePlan, engine: str, python: str, models: Path = MODELS
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``worker`` here: the rendering plus the documented
    substitutions (module docstring).  ``engine`` is ``vllm`` or ``sim``."""
    command, args = list(worker["command"]), list(worker["args"])
    model = str(models / plan.model)
    if tuple(command[:2]) == VLLM_SERVE and len(command) == 3:
        program = ["-m", "vllm.entrypoints.cli.main", "serve"]
        head = [python, *(program if engine == "vllm" else ["-m", "disagg.cli", "sim", "serve"])]
        head.append(model)
    elif tuple(command[:3]) == API_SERVER and command[3:4] == ["--model"]:
        program = ["-m", "vllm.entrypoints.openai.api_server"]
        head = [python, *(program if engine == "vllm" else ["-m", "disagg.cli", "sim"])]
        head += ["--model", model]
    else:
        raise EngineError(f"{plan.name}: not a vLLM command the tier knows: {command}")
    args = _replace_flag(args, "--host", "127.0.0.1")
    args = _replace_flag(args, "--port", str(plan.port))
    args = _replace_flag(args, "--gpu-memory-utilization", GPU_MEMORY_UTILIZATION)
    args = _replace_flag(args, "--kv-cache-memory-bytes", str(plan.kv_cache_bytes))
    args += ["--load-format", "dummy"]
    if plan.eager_startup and "--enforce-eager" not in args:
        args.append("--enforce-eager")
    env: dict[str, str] = {}
    for var in worker["env"]:
        name = var["name"]
        if name == "VLLM_NIXL_SIDE_CHANNEL_HOST":
            env[name] = "127.0.0.1"
        elif name == "VLLM_NIXL_SIDE_CHANNEL_PORT":
            if plan.side_channel_port is None:
                raise EngineError(f"{plan.name} renders a side channel but has no port here")
            env[name] = str(plan.side_channel_port)
        elif "value" in var:
            env[name] = str(var["value"])
        else:
            raise EngineError(f"{plan.name}: cannot fill {name} ({var.get('valueFrom')}) here")
    return head + args, env


@dataclass
class Running:
    """A started engine, as recorded under the tier's root (it outlives the call)."""

    name: str
    pid: int
    url: str
    argv: list[str]
    env: dict[str, str]
    started: float
    log: str
    ready_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def pythonpath() -> str:
    parts = [str(SITE)] if SITE.is_dir() else []
    parts.append(str(REPO / "operator"))
    parts += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def start(plan: EnginePlan, engine: str, python: str = sys.executable) -> Running:
    """Render and start ``plan`` in its own session; returns at once (see :func:`wait_ready`)."""
    worker = render_worker(plan, python)
    argv, rendered_env = local_command(worker, plan, engine, python)
    env = {**os.environ, **MACHINE_ENV, **rendered_env, "PYTHONPATH": pythonpath()}
    if engine == "sim":
        env.setdefault("DISAGG_SIM_GPU", "h200")
    if plan.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(plan.gpu)
    stop(plan.name)
    LOGS.mkdir(parents=True, exist_ok=True)
    STATE.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{plan.name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    running = Running(plan.name, process.pid, plan.url, argv, rendered_env, time.time(), str(log))
    running.extra["vllmVersion"] = worker["vllmVersion"]
    _save(running)
    return running


def _save(running: Running) -> None:
    (STATE / f"{running.name}.json").write_text(json.dumps(asdict(running), indent=1))


def recorded(name: str) -> Running | None:
    path = STATE / f"{name}.json"
    if not path.exists():
        return None
    return Running(**json.loads(path.read_text()))


def alive(running: Running) -> bool:
    try:
        os.kill(running.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours counts as gone.
    try:
        state = Path(f"/proc/{running.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_ready(names: Iterable[str], deadline_s: float) -> dict[str, dict[str, Any]]:
    """Poll each engine's ``/health`` until it answers 200, it dies or the deadline passes.

    Returns per engine ``{"ready_s": seconds from launch}`` or ``{"error": ..., "log": tail}``.
    """
    pending = {n: r for n in names if (r := recorded(n)) is not None}
    results: dict[str, dict[str, Any]] = {}
    end = time.time() + deadline_s
    while pending and time.time() < end:
        for name, running in list(pending.items()):
            if healthy(running.url, 1.0):
                running.ready_s = round(time.time() - running.started, 1)
                _save(running)
                results[name] = {"ready_s": running.ready_s}
                del pending[name]
            elif not alive(running):
                results[name] = {"error": "exited before ready", "log": log_tail(name)}
                del pending[name]
        time.sleep(0.5)
    for name in pending:
        results[name] = {"error": f"not ready after {deadline_s:.0f} s", "log": log_tail(name)}
    return results


def log_tail(name: str, lines: int = 40) -> str:
    path = LOGS / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def kill(name: str) -> bool:
    """SIGKILL the engine's whole process group (a crash: no drain, no goodbye)."""
    running = recorded(name)
    if running is None or not alive(running):
        return False
    os.killpg(running.pid, signal.SIGKILL)
    _reap(running.pid, 10.0)
    return True


def stop(name: str, grace_s: float = 15.0) -> None:
    """SIGTERM the engine's process group, SIGKILL after ``grace_s``."""
    running = recorded(name)
    if running is None or not alive(running):
        return
    os.killpg(running.pid, signal.SIGTERM)
    if not _reap(running.pid, grace_s):
        os.killpg(running.pid, signal.SIGKILL)
        _reap(running.pid, 5.0)


def _reap(pid: int, timeout_s: float) -> bool:
    end = time.time() + timeout_s
    while time.time() < end:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:  # not our child (started by an earlier call)
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
