"""Unit tests of the simulator's pure parts (command line, tokenizer, KV cache), and the
operator's rendered worker argv run as a simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from disagg.planner.calibration import load_calibration
from disagg.planner.roofline import DEFAULT_EFFICIENCY
from disagg.sim import tokenizer
from disagg.sim.cli import parse_config
from disagg.sim.config import ConfigError
from disagg.sim.kvcache import KVCache
from disagg.sim.process import SimProcess
from disagg.sim.timing import resolve_model

ROOT = Path(__file__).resolve().parent.parent

GOLDEN = Path(__file__).parent / "golden"


# -- command line ---------------------------------------------------------------------------
def test_vllm_serve_argv_with_unmodelled_flags() -> None:
    config = parse_config(
        ["serve", "meta-llama/Llama-3.1-8B-Instruct", "--revision", "abc123", "--port", "9000",
         "--enforce-eager", "--served-model-name", "a", "b", "--max-model-len", "32k",
         "--tensor-parallel-size", "2", "--sim-speedup", "10"]
    )  # fmt: skip
    assert config.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert config.served_model_names == ("a", "b")
    assert config.port == 9000 and config.tensor_parallel_size == 2
    assert config.max_model_len == 32768 and config.speedup == 10
    assert config.ignored_args == ("--revision", "abc123")
    assert config.enforce_eager  # modelled: eager steps pay their kernel launches


def test_api_server_argv_and_an_unknown_flag_value_is_not_the_model() -> None:
    config = parse_config(["--model", "/models/x", "--revision", "abc", "--block-size", "32"])
    assert config.model == "/models/x" and config.block_size == 32
    assert config.served_model_names == ("/models/x",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no model given"),
        (["a", "--model", "b"], "two different models"),
        (["m", "--kv-transfer-config", "{nope"], "not valid JSON"),
        (
            ["m", "--kv-transfer-config", '{"kv_connector":"PyNcclConnector"}'],
            "unknown kv_connector",
        ),
        (
            ["m", "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"x"}'],
            "kv_role",
        ),
        (["m", "--max-num-seqs", "0"], "--max-num-seqs"),
        (["m", "--sim-speedup", "0"], "--sim-speedup"),
        (["m", "--sim-failure-rate", "1.5"], "error_rate"),
    ],
)
def test_bad_command_lines_say_what_is_wrong(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(argv)


def test_environment_side_channel_and_sim_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_NIXL_SIDE_CHANNEL_HOST", "10.1.2.3")
    monkeypatch.setenv("VLLM_NIXL_SIDE_CHANNEL_PORT", "5601")
    monkeypatch.setenv("DISAGG_SIM_SPEEDUP", "25")
    config = parse_config(["m", "--kv-transfer-config", '{"kv_connector":"NixlConnector",'
                           '"kv_role":"kv_producer","engine_id":"e1",'
                           '"kv_connector_extra_config":{"kv_lease_duration":120}}'])  # fmt: skip
    assert (config.side_channel_host, config.side_channel_port) == ("10.1.2.3", 5601)
    assert config.side_channel_port_explicit and config.speedup == 25
    assert config.kv_transfer.engine_id == "e1" and config.kv_transfer.role == "kv_producer"
    assert config.kv_lease_s == 120


def test_max_model_len_beyond_the_kv_cache_is_refused_at_startup() -> None:
    from disagg.sim.app import Simulator

    config = parse_config(["m", "--max-model-len", "4096", "--num-gpu-blocks-override", "100"])
    with pytest.raises(ConfigError, match="larger than the 1600 tokens"):
        Simulator(config)


def test_kv_cache_memory_bytes_sizes_the_cache_as_vllm_does() -> None:
    """``--kv-cache-memory-bytes`` (what shares one GPU between engines) replaces the memory
    budget: Llama-3.1-8B keeps 128 KiB of KV per token, 2 KiB per 16-token block x 64."""
    from disagg.sim.app import Simulator

    config = parse_config(
        ["m", "--kv-cache-memory-bytes", "1G", "--gpu-memory-utilization", "0.05"]
    )
    assert config.kv_cache_memory_bytes == 2**30
    assert Simulator(config).engines[0].kv.num_blocks == 2**30 // (128 * 1024 * 16)
    assert parse_config(["m", "--kv-cache-memory-bytes", "2g"]).kv_cache_memory_bytes == 2 * 10**9


def test_a_calibration_file_times_the_simulated_steps(tmp_path: Path) -> None:
    """``--sim-calibration`` swaps the roofline's default efficiencies for measured ones, and
    refuses a file measured on another GPU."""
    from disagg.sim.app import Simulator

    calibration = ROOT / "docs" / "calibration-h100.json"
    default = Simulator(parse_config(["m", "--sim-gpu", "h100-sxm"])).timer
    fitted = Simulator(
        parse_config(["m", "--sim-gpu", "h100-sxm", "--sim-calibration", str(calibration)])
    ).timer
    assert fitted.efficiency == load_calibration(calibration).efficiency
    assert default.efficiency == DEFAULT_EFFICIENCY  # no measured preset for the H100
    assert fitted.step_seconds([], 16, 16 * 2048) != default.step_seconds([], 16, 16 * 2048)
    with pytest.raises(ValueError, match="calibrates h100-sxm, not h200"):
        Simulator(parse_config(["m", "--sim-gpu", "h200", "--sim-calibration", str(calibration)]))


def test_model_presets_follow_the_served_model() -> None:
    assert resolve_model("meta-llama/Llama-3.1-70B-Instruct", None).name == "llama-3.1-70b"
    assert resolve_model("/models/mixtral-8x7b", None).name == "mixtral-8x7b"
    assert resolve_model("m", None).name == "llama-3.1-8b"
    assert resolve_model("m", "qwen3-32b").name == "qwen3-32b"


# -- tokenizer ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, world!", ["Hello", ",", " world", "!"]),
        ("internationalization", ["internat", "ionaliza", "tion"]),
        ("a  b\n", ["a", "  b", "\n"]),
        ("", []),
    ],
)
def test_tokenizer_rule(text: str, tokens: list[str]) -> None:
    assert tokenizer.split(text) == tokens
    assert "".join(tokenizer.split(text)) == text
    assert tokenizer.encode(text) == [tokenizer.token_id(t) for t in tokens]
    assert all(0 <= i < tokenizer.VOCAB_SIZE for i in tokenizer.encode(text))


def test_chat_template() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
    ]
    assert tokenizer.render_chat(messages) == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"


# -- KV cache -------------------------------------------------------------------------------
def test_prefix_blocks_are_shared_and_the_last_token_recomputed() -> None:
    kv = KVCache(num_blocks=10, block_size=4)
    prompt = list(range(10))  # 2 full blocks + 2 tokens
    got = kv.acquire(prompt)
    assert got is not None
    blocks, cached = got
    assert cached == 0 and len(blocks) == 3 and kv.used_blocks == 3
    kv.commit(blocks, prompt)
    again = kv.acquire(prompt)
    assert again is not None and again[1] == 8 and again[0][:2] == blocks[:2]
    assert kv.used_blocks == 4  # two shared, one fresh each
    exact = list(range(8))
    hit = kv.acquire(exact)  # fully cached: recompute the last block's last token
    assert hit is not None and hit[1] == 4


def test_freed_blocks_stay_cached_until_evicted_tail_first() -> None:
    kv = KVCache(num_blocks=4, block_size=2)
    a = [1, 2, 3, 4, 5, 6, 7, 8]
    got = kv.acquire(a)
    assert got is not None
    kv.commit(got[0], a)
    kv.release(got[0])
    assert kv.usage == 0 and kv.available_blocks == 4
    b = [9, 9, 9, 9]
    got_b = kv.acquire(b)  # evicts A's last two blocks
    assert got_b is not None
    reacquired = kv.acquire(a)
    assert reacquired is None  # 2 cached + 2 needed, but only the 2 cached are left
    kv.release(got_b[0])
    reacquired = kv.acquire(a)
    assert reacquired is not None and reacquired[1] == 4  # A's first two blocks survived


def test_grow_fails_when_full_and_nothing_changes_on_refusal() -> None:
    kv = KVCache(num_blocks=2, block_size=4)
    got = kv.acquire([1, 2, 3])
    assert got is not None
    blocks = got[0]
    assert kv.grow(blocks, 8) and len(blocks) == 2
    assert not kv.grow(blocks, 9)
    assert kv.acquire([5]) is None and kv.used_blocks == 2


# -- the operator's rendered pods -------------------------------------------------------------
def _rendered_workers() -> list[tuple[str, list[str]]]:
    found = []
    for path in sorted(GOLDEN.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                command = list(container.get("command", []))
                if command[:2] == ["vllm", "serve"]:
                    argv = command[1:]
                elif command[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]:
                    argv = command[3:]
                else:
                    continue
                found.append((f"{path.stem}/{doc['metadata']['name']}", argv + container["args"]))
    return found


WORKERS = _rendered_workers()


@pytest.mark.parametrize(("name", "argv"), WORKERS, ids=[w[0] for w in WORKERS])
def test_rendered_worker_argv_parses(name: str, argv: list[str]) -> None:
    config = parse_config(argv)
    assert config.served_model_names[0] in argv


def test_rendered_prefill_and_decode_pods_run_p_d() -> None:
    """The minimal DisaggDeployment's two worker argvs, run as simulators (host and port moved
    to loopback), do a P/D exchange."""
    pods = {n: a for n, a in WORKERS if n.startswith("disaggdeployment-minimal/")}
    prefill = next(a for n, a in pods.items() if "prefill" in n)
    decode = next(a for n, a in pods.items() if "decode" in n)
    env = {"VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1", "VLLM_NIXL_SIDE_CHANNEL_PORT": "0"}
    fast = ["--sim-speedup", "100"]
    with SimProcess(*prefill, *fast, env=env) as p, SimProcess(*decode, *fast, env=env) as d:
        name = httpx.get(p.url + "/v1/models").json()["data"][0]["id"]
        body: dict[str, Any] = {"model": name, "prompt": "rendered " * 50, "max_tokens": 1}
        first = httpx.post(
            p.url + "/v1/completions",
            json={**body, "kv_transfer_params": {"do_remote_decode": True}},
        ).json()
        assert first["kv_transfer_params"]["remote_host"] == "127.0.0.1"
        r = httpx.post(
            d.url + "/v1/completions",
            json={**body, "max_tokens": 4, "kv_transfer_params": first["kv_transfer_params"]},
            headers={"X-Request-Id": "rendered"},
        )
        assert r.status_code == 200
        entries = httpx.get(d.url + "/sim/requests", params={"x_request_id": "rendered"}).json()
        assert entries["requests"][0]["outcome"]["prefill"] == "remote"


# -- streaming from the engine's events -------------------------------------------------------
async def test_a_stream_keeps_every_token_a_slow_reader_let_queue_up() -> None:
    from disagg.sim import protocol
    from disagg.sim.config import SimConfig
    from disagg.sim.engine import Engine
    from disagg.sim.metrics import SimMetrics
    from disagg.sim.recorder import Recorder
    from disagg.sim.request import FinishEvent, Request, TokenEvent
    from disagg.sim.serving import CompletionService
    from disagg.sim.timing import StepTimer

    config = SimConfig(model="m", served_model_names=("m",), num_gpu_blocks_override=100)
    engine = Engine(config, StepTimer.build("m", None, "h100-sxm", 1, 100.0), SimMetrics("m"))
    service = CompletionService(config, [engine], Recorder(10), 1600)
    body = {"model": "m", "prompt": "x", "max_tokens": 5, "stream": True}
    parsed = protocol.parse_request(body, False, ("m",), 1600, 16)
    request = Request("cmpl-x", parsed.prompt_ids, 5)
    for i in range(5):  # the engine ran five steps before the reader came back
        request.events.put_nowait(TokenEvent(f" t{i}", i))
    request.events.put_nowait(FinishEvent("length"))
    frames = [f async for f in service._stream(engine, request, parsed, "cmpl-x", {}, -1)]
    assert frames[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == [f" t{i}" for i in range(5)]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
