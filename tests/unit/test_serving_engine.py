"""Unit tests of the batching engine and text tracking, driven by a fake model.

The fake model is deterministic and records every prefill/decode batch, so the tests
can see continuous batching happen (sequences join a running batch, leave it early) and
check that batching never changes an answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from runtime.serving.detokenize import TextTracker
from runtime.serving.engine import Engine
from runtime.serving.errors import InvalidRequest, Overloaded
from runtime.serving.generation import SamplingParams, TokenEvent
from tests.unit.test_serving_fakes import Collector, FakeModel

pytestmark = pytest.mark.unit

@pytest.fixture
def model() -> FakeModel:
    return FakeModel(step_seconds=0.002)


@pytest.fixture
def engine(model: FakeModel) -> Iterator[Engine]:
    engine = Engine(model, max_batch_size=4, max_queue=2)
    engine.start()
    yield engine
    engine.stop()


def params(max_new_tokens: int = 5, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, **kwargs)  # type: ignore[arg-type]


def test_generates_until_max_tokens(engine: Engine) -> None:
    sink = Collector()
    engine.submit("xa", params(4), None, sink)
    finish = sink.finish()
    assert finish.reason == "length"
    assert finish.text == "bcde"
    assert sink.streamed_text() == "bcde"
    assert (finish.prompt_tokens, finish.generated_tokens) == (2, 4)


def test_eos_ends_generation(engine: Engine) -> None:
    sink = Collector()
    engine.submit("hi!", params(4), None, sink)
    finish = sink.finish()
    assert finish.reason == "eos_token"
    assert finish.text == ""
    assert isinstance(sink.events[0], TokenEvent) and sink.events[0].is_special


def test_stop_sequence_cuts_text_and_is_never_streamed(engine: Engine) -> None:
    sink = Collector()
    engine.submit("a", params(20, stop=("efg",)), None, sink)
    finish = sink.finish()
    assert finish.reason == "stop_sequence"
    assert finish.text == "bcd"
    assert sink.streamed_text() == "bcd"


def test_concurrent_requests_share_batches_without_changing_answers(model: FakeModel) -> None:
    engine = Engine(model, max_batch_size=8, max_queue=8)
    model.gate.clear()  # hold the worker so that every request queues first
    engine.start()
    try:
        sinks = []
        for index in range(6):
            sink = Collector()
            engine.submit("a" + chr(ord("a") + index), params(3 + index), None, sink)
            sinks.append(sink)
        model.gate.set()
        finishes = [sink.finish() for sink in sinks]
    finally:
        engine.stop()
    for index, finish in enumerate(finishes):
        start = ord("a") + index + 1
        expected = "".join(chr(ord("a") + (start - ord("a") + k) % 26) for k in range(3 + index))
        assert finish.text == expected
    assert max(model.decode_batches) == 6
    # Short sequences left the batch early instead of riding along padded.
    assert min(model.decode_batches) < 6
    assert sorted(model.released) == sorted(range(1, 7))


def test_new_request_joins_running_batch(model: FakeModel) -> None:
    engine = Engine(model, max_batch_size=4, max_queue=4)
    model.step_seconds = 0.01
    engine.start()
    try:
        long_sink, short_sink = Collector(), Collector()
        engine.submit("a", params(40), None, long_sink)
        time.sleep(0.1)
        assert not long_sink.done.is_set()
        engine.submit("b", params(3), None, short_sink)
        short = short_sink.finish()
        assert not long_sink.done.is_set(), "the short request waited for the long one"
        long = long_sink.finish()
    finally:
        engine.stop()
    assert short.text == "cde"
    assert long.generated_tokens == 40
    assert 2 in model.decode_batches


def test_queue_full_is_overloaded(model: FakeModel) -> None:
    engine = Engine(model, max_batch_size=1, max_queue=1)
    model.gate.clear()
    engine.start()
    try:
        sinks = [Collector(), Collector()]
        engine.submit("a", params(2), None, sinks[0])
        engine.submit("b", params(2), None, sinks[1])
        with pytest.raises(Overloaded):
            engine.submit("c", params(2), None, Collector())
        model.gate.set()
        assert all(s.finish().reason == "length" for s in sinks)
    finally:
        model.gate.set()
        engine.stop()


def test_cancel_frees_the_row(model: FakeModel) -> None:
    engine = Engine(model, max_batch_size=2, max_queue=2)
    model.step_seconds = 0.01
    engine.start()
    try:
        sink = Collector()
        handle = engine.submit("a", params(50), None, sink)
        time.sleep(0.1)
        handle.cancel()
        finish = sink.finish()
        assert finish.reason == "cancelled"
        assert 0 < finish.generated_tokens < 50
        deadline = time.monotonic() + 2
        while model.rows and time.monotonic() < deadline:
            time.sleep(0.01)
        assert model.rows == {}
    finally:
        engine.stop()


def test_prompt_and_budget_must_fit_the_context(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="context"):
        engine.submit("x" * 64, params(1), None, Collector())
    with pytest.raises(InvalidRequest, match="exceed"):
        engine.submit("x" * 10, params(60), None, Collector())
    with pytest.raises(InvalidRequest, match="empty"):
        engine.submit("", params(1), None, Collector())


def test_stop_finishes_pending_requests_as_cancelled(model: FakeModel) -> None:
    engine = Engine(model, max_batch_size=1, max_queue=2)
    model.gate.clear()
    engine.start()
    sinks = [Collector(), Collector()]
    engine.submit("a", params(2), None, sinks[0])
    engine.submit("b", params(2), None, sinks[1])
    threading.Timer(0.05, model.gate.set).start()
    engine.stop()
    assert {s.finish().reason for s in sinks} <= {"cancelled", "length"}
    assert sinks[1].finish().reason == "cancelled"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 1, "temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 1, "top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 1, "top_k": -1}, "top_k"),
        ({"max_new_tokens": 1, "stop": ("",)}, "stop"),
        ({"max_new_tokens": 1, "repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def _byte_decode(ids: Sequence[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def test_tracker_waits_for_whole_characters() -> None:
    tracker = TextTracker(_byte_decode)
    encoded = "né€".encode()
    visible = [tracker.push(b) for b in encoded]
    assert "".join(visible) == "né€"
    assert all("\ufffd" not in piece for piece in visible)
    assert visible[1] == ""  # first byte of é alone is not shown


def test_tracker_holds_back_possible_stop_prefix_then_releases_it() -> None:
    tracker = TextTracker(_byte_decode, stop=("END",))
    shown = "".join(tracker.push(b) for b in b"xyEN")
    assert shown == "xy"
    shown += "".join(tracker.push(b) for b in b"Dz")
    assert tracker.is_stopped
    assert shown == "xy" and tracker.text == "xy"
    other = TextTracker(_byte_decode, stop=("END",))
    text = "".join(other.push(b) for b in b"xyENx")
    assert text == "xyENx"
    assert other.flush() == ""


def test_tracker_flush_releases_held_text() -> None:
    tracker = TextTracker(_byte_decode, stop=("STOP",))
    shown = "".join(tracker.push(b) for b in b"go ST")
    assert shown == "go "
    assert tracker.flush() == "ST"
    assert tracker.text == "go ST"
