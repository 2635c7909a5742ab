"""``Kubectl.wait_unchanged``: the e2e tier's "settled" -- an answer that held for a quiet spell.

Its settle checks had paused with ``wait_for(lambda: True, N)``, which returns at once: two
reads back to back "agreed", and a test snapshotted a gateway with one of its two pods still
starting (e2e/test_chart.py's upgrade test failed on the other pod's readiness)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testbed.cluster.kubectl import Kubectl, KubectlError, WaitTimeout

KUBE = Kubectl("kubectl", Path("/nonexistent"))


def test_an_answer_is_returned_only_after_it_held_for_the_quiet_spell() -> None:
    answers = iter([{"a": "1"}, {"a": "2"}, {"a": "2"}, {"a": "3"}] + [{"a": "4"}] * 100)
    began = time.monotonic()
    got = KUBE.wait_unchanged(lambda: next(answers), 0.3, 10, interval=0.05)
    assert got == {"a": "4"}
    assert time.monotonic() - began >= 0.3 + 4 * 0.05 - 0.01


def test_the_value_from_the_start_of_the_spell_is_returned_when_a_key_compares() -> None:
    reads = iter(range(1000))

    def read() -> dict[str, int]:
        return {"rv": 7, "read": next(reads)}

    got = KUBE.wait_unchanged(read, 0.2, 10, key=lambda o: o["rv"], interval=0.05)
    assert got == {"rv": 7, "read": 0}


def test_nothing_and_errors_restart_the_spell() -> None:
    answers: list[object] = ["x", None, "x", KubectlError(["get"], 1, "boom"), "x"]

    def read() -> object:
        answer = answers.pop(0) if answers else "x"
        if isinstance(answer, Exception):
            raise answer
        return answer

    began = time.monotonic()
    assert KUBE.wait_unchanged(read, 0.2, 10, interval=0.05) == "x"
    assert not answers  # the gaps were read through, not settled on
    assert time.monotonic() - began >= 0.2 + 4 * 0.05 - 0.01


def test_an_answer_that_keeps_changing_times_out() -> None:
    counter = iter(range(10_000))
    with pytest.raises(WaitTimeout, match="still changing after"):
        KUBE.wait_unchanged(lambda: next(counter) + 1, 0.2, 0.5, what="ticks", interval=0.05)
