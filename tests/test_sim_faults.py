"""Failure injection, through the admin endpoint and the command-line flags."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from disagg.sim.process import SimProcess

BODY = {"model": "m", "prompt": "fault please", "max_tokens": 6}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess("--model", "m", "--sim-speedup", "50") as process:
        yield process


@pytest.fixture(autouse=True)
def reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sim" in request.fixturenames:
        httpx.delete(request.getfixturevalue("sim").url + "/sim/faults")


def set_faults(sim: SimProcess, **fields: object) -> dict[str, object]:
    r = httpx.post(sim.url + "/sim/faults", json=fields)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_error_rate_answers_with_an_openai_error(sim: SimProcess) -> None:
    assert set_faults(sim, error_rate=1.0, error_status=503)["error_rate"] == 1.0
    r = httpx.post(sim.url + "/v1/completions", json=BODY, headers={"X-Request-Id": "f1"})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "ServiceUnavailableError"
    (entry,) = httpx.get(sim.url + "/sim/requests", params={"x_request_id": "f1"}).json()[
        "requests"
    ]
    assert entry["outcome"]["injected"] == "error"
    httpx.delete(sim.url + "/sim/faults")
    assert httpx.post(sim.url + "/v1/completions", json=BODY).status_code == 200


def test_bad_fault_updates_are_rejected(sim: SimProcess) -> None:
    for body in ({"error_rate": 2}, {"nonsense": 1}, {"die_mode": "explode"}, [1]):
        r = httpx.post(sim.url + "/sim/faults", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["message"]
    assert httpx.get(sim.url + "/sim/faults").json()["error_rate"] == 0.0


def test_a_stream_dies_after_n_tokens_without_done(sim: SimProcess) -> None:
    set_faults(sim, die_after_tokens=2)
    received = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", sim.url + "/v1/completions", json={**BODY, "stream": True}) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                received.append(line)
    assert len(received) == 2
    assert "data: [DONE]" not in received
    # The engine freed the dead request: nothing is left running.
    assert httpx.get(sim.url + "/sim/state").json()["running"] == 0


def test_die_mode_error_reports_the_failure_in_band(sim: SimProcess) -> None:
    set_faults(sim, die_after_tokens=3, die_mode="error")
    r = httpx.post(sim.url + "/v1/completions", json={**BODY, "stream": True})
    frames = [f for f in r.text.split("\n\n") if f]
    assert len(frames) == 5 and frames[-1] == "data: [DONE]"
    assert '"error"' in frames[3] and '"code":500' in frames[3]
    plain = httpx.post(sim.url + "/v1/completions", json=BODY)
    assert plain.status_code == 500 and plain.json()["error"]["type"] == "InternalServerError"


def test_a_non_streaming_response_is_cut_off(sim: SimProcess) -> None:
    set_faults(sim, die_after_tokens=1)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(sim.url + "/v1/completions", json=BODY)


def test_slowdown_and_extra_latency_make_requests_slower(sim: SimProcess) -> None:
    body = {**BODY, "max_tokens": 30}

    def sim_seconds() -> float:
        before = httpx.get(sim.url + "/sim/state").json()["sim_time_s"]
        assert httpx.post(sim.url + "/v1/completions", json=body).status_code == 200
        return float(httpx.get(sim.url + "/sim/state").json()["sim_time_s"] - before)

    normal = sim_seconds()
    set_faults(sim, slowdown=4.0)
    assert sim_seconds() == pytest.approx(4 * normal, rel=0.05)
    set_faults(sim, slowdown=1.0, extra_latency_s=0.3)
    started = time.monotonic()
    httpx.post(sim.url + "/v1/completions", json=body)
    assert time.monotonic() - started >= 0.3


def test_unhealthy_flag_turns_health_to_503(sim: SimProcess) -> None:
    set_faults(sim, unhealthy=True)
    assert httpx.get(sim.url + "/health").status_code == 503
    httpx.delete(sim.url + "/sim/faults")
    assert httpx.get(sim.url + "/health").status_code == 200


def test_flags_inject_the_same_faults() -> None:
    with SimProcess(
        "--model", "m", "--sim-speedup", "50", "--sim-failure-rate", "1", "--sim-failure-status",
        "429",
    ) as sim:  # fmt: skip
        assert httpx.post(sim.url + "/v1/completions", json=BODY).status_code == 429
        assert httpx.get(sim.url + "/sim/faults").json()["error_status"] == 429


def test_die_mode_exit_kills_the_process_mid_stream() -> None:
    with SimProcess(
        "--model", "m", "--sim-speedup", "50", "--sim-die-after-tokens", "3", "--sim-die-mode",
        "exit",
    ) as sim:  # fmt: skip
        with (
            pytest.raises(httpx.TransportError),
            httpx.stream("POST", sim.url + "/v1/completions", json={**BODY, "stream": True}) as r,
        ):
            for _ in r.iter_lines():
                pass
        assert sim.proc is not None
        assert sim.proc.wait(timeout=5) != 0
