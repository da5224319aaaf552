"""``rewardrt serve``: routes, errors and limits in-process (Starlette TestClient), the micro-batcher,
one real server process stopped by SIGTERM, and a short load test."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from starlette.testclient import TestClient  # noqa: E402

from rewardrt.runtime.api import RewardModel  # noqa: E402
from rewardrt.runtime.serve import ServeConfig, create_app, is_loopback  # noqa: E402
from rewardrt.runtime.serve_batcher import MicroBatcher, QueueFullError, ShuttingDownError  # noqa: E402

REF = "The capital of France is Paris."
RESPONSES = ["Paris.", "It is Lyon.", "Paris is the capital of France.", "I do not know."]


@pytest.fixture(scope="module")
def model(tiny_int8) -> RewardModel:
    return RewardModel(tiny_int8[0])


@pytest.fixture(scope="module")
def client(model):
    config = ServeConfig(max_items=16, max_chars=200, max_body_bytes=4096)
    with TestClient(create_app(model, config)) as c:
        yield c


class Gate:
    """Wraps model.batch_score so a test can hold the worker inside a model call."""

    def __init__(self, model: RewardModel, monkeypatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []
        original = model.batch_score

        def batch_score(responses, reference, batch_size=64):
            self.sizes.append(len(responses))
            self.entered.set()
            assert self.release.wait(30), "test never released the gate"
            return original(responses, reference, batch_size=batch_size)

        monkeypatch.setattr(model, "batch_score", batch_score)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- routes ----------------------------------------------------------------------------------------

def test_health_and_info(client, model):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model"]["spec"]["precision"] == model.spec.precision
    assert info["model"]["max_length"] == model.max_length
    assert info["server"]["max_items"] == 16
    assert "/get_reward" in info["routes"]


def test_score_matches_in_process_bit_for_bit(client, model):
    got = client.post("/score", json={"reference": REF, "responses": RESPONSES}).json()
    assert got == {"scores": model.batch_score(RESPONSES, REF)}
    refs = [REF, "Paris", "Lyon", REF]
    got = client.post("/score", json={"references": refs, "responses": RESPONSES}).json()
    assert got["scores"] == model.batch_score(RESPONSES, refs)
    assert client.post("/score", json={"reference": REF, "responses": []}).json() == {"scores": []}


def test_rank_highest_first(client, model):
    ranked = client.post("/rank", json={"reference": REF, "responses": RESPONSES}).json()["ranked"]
    expected = model.rank(RESPONSES, REF)
    assert ranked == [{"index": r.index, "response": r.response, "score": r.score} for r in expected]


def test_get_reward_openrlhf_shape(client, model):
    prompts = ["Q: capital of France?\nA:", "Q: 2+2?\nA:", "unrelated prompt"]
    queries = [prompts[0] + " Paris.", prompts[1] + " 4", "Q: something else A: Lyon"]
    labels = [REF, "4", REF]
    body = client.post("/get_reward", json={"query": queries, "prompts": prompts, "labels": labels}).json()
    # the prompt prefix is removed; a query that does not start with its prompt is scored whole
    expected = model.batch_score([" Paris.", " 4", queries[2]], labels)
    assert body == {"rewards": expected, "scores": expected, "extra_logs": {}}
    no_prompts = client.post("/get_reward", json={"query": queries, "labels": labels}).json()
    assert no_prompts["rewards"] == model.batch_score(queries, labels)


def test_rerank_tei_shape(client, model):
    texts = RESPONSES
    got = client.post("/rerank", json={"query": REF, "texts": texts, "return_text": True}).json()
    scores = model.batch_score(texts, REF)
    order = sorted(range(len(texts)), key=lambda i: scores[i], reverse=True)
    assert got == [{"index": i, "score": scores[i], "text": texts[i]} for i in order]
    raw = client.post("/rerank", json={"query": REF, "texts": texts, "raw_scores": True,
                                       "truncate": True}).json()
    raws = model.raw_scores(texts, REF)
    assert [item["score"] for item in raw] == sorted(raws, reverse=True)
    assert all(set(item) == {"index", "score"} for item in raw)


# --- errors and limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, needle", [
    (b'{"reference": "x", "responses": [', 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"\xff\xfe", 400, "UTF-8"),
    (b"[" * 100_000, 413, "--max-body-bytes"),  # over the 4096-byte limit before parsing
    (b'["a"]', 422, "JSON object"),
    (b'{"responses": ["a"]}', 422, "exactly one of 'reference'"),
    (b'{"reference": "x", "references": ["y"], "responses": ["a"]}', 422, "exactly one of"),
    (b'{"reference": "x", "responses": "a"}', 422, "'responses' must be a list"),
    (b'{"reference": "x", "responses": ["a", 3]}', 422, "'responses[1]' must be a string"),
    (b'{"reference": 1, "responses": ["a"]}', 422, "'reference' must be a string"),
    (b'{"references": ["x"], "responses": ["a", "b"]}', 422, "one per response"),
])
def test_score_errors_are_json(client, body, status, needle):
    r = client.post("/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert needle in r.json()["error"]


def test_deep_nesting_is_a_400_not_a_crash(model):
    with TestClient(create_app(model, ServeConfig())) as c:
        r = c.post("/score", content=b"[" * 200_000)
    assert r.status_code == 400 and "error" in r.json()


def test_limits_name_the_flag(client):
    r = client.post("/score", json={"reference": "x", "responses": ["a"] * 17})
    assert r.status_code == 413 and r.json()["limit"] == "max_items" and "--max-items" in r.json()["error"]
    r = client.post("/score", json={"reference": "x" * 201, "responses": ["a"]})
    assert r.status_code == 413 and r.json()["limit"] == "max_chars"
    r = client.post("/score", json={"reference": "x", "responses": ["y"], "padding": "z" * 5000})
    assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"


def test_other_routes_validate(client):
    r = client.post("/get_reward", json={"query": ["a"], "prompts": [""]})
    assert r.status_code == 422 and "labels" in r.json()["error"]
    r = client.post("/get_reward", json={"query": ["a", "b"], "prompts": ["a"], "labels": ["x", "y"]})
    assert r.status_code == 422 and "'prompts' has 1 items" in r.json()["error"]
    r = client.post("/rerank", json={"query": "x", "texts": []})
    assert r.status_code == 422 and "cannot be empty" in r.json()["error"]
    r = client.post("/rerank", json={"query": "x", "texts": ["a"], "raw_scores": "yes"})
    assert r.status_code == 422 and "raw_scores" in r.json()["error"]
    assert client.get("/nope").json()["error_type"] == "not_found"
    assert client.get("/score").json()["error_type"] == "method_not_allowed"


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_queue must be >= 1"):
        ServeConfig(max_queue=0)
    with pytest.raises(TypeError, match="max_items must be an int"):
        ServeConfig(max_items="10")
    assert ServeConfig(max_wait_ms=0).max_wait_ms == 0
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


# --- batching, backpressure, shutdown ----------------------------------------------------------------

def test_concurrent_requests_share_batches(model, monkeypatch):
    gate = Gate(model, monkeypatch)
    app = create_app(model, ServeConfig(max_wait_ms=0))
    requests = [[f"response {i} {j}" for j in range(3)] for i in range(5)]
    results: dict[int, list[float]] = {}
    with TestClient(app) as c:
        def post(i: int) -> None:
            results[i] = c.post("/score", json={"reference": REF, "responses": requests[i]}).json()["scores"]

        first = threading.Thread(target=post, args=(0,))
        first.start()
        assert gate.entered.wait(10)  # the worker is busy with request 0 ...
        rest = [threading.Thread(target=post, args=(i,)) for i in range(1, 5)]
        for t in rest:
            t.start()
        wait_until(lambda: app.state.batcher.pending == 12)  # ... while 1-4 queue up
        gate.release.set()
        for t in [first, *rest]:
            t.join(30)
        metrics = c.get("/metrics").text
    assert gate.sizes == [3, 12]  # requests 1-4 went through the model in one call
    for i, responses in enumerate(requests):
        expected = model.batch_score(responses, REF)
        assert results[i] == expected  # bit-identical although they shared a batch
    assert 'rewardrt_requests_total{route="/score",status="200"} 5.0' in metrics
    assert "rewardrt_batch_size_count 2.0" in metrics
    assert "rewardrt_request_seconds_bucket" in metrics


def test_full_queue_answers_503(model, monkeypatch):
    gate = Gate(model, monkeypatch)
    app = create_app(model, ServeConfig(max_queue=2, max_wait_ms=0))
    with TestClient(app) as c:
        codes: list[int] = []
        send = lambda n: codes.append(c.post("/score", json={"reference": REF, "responses": ["a"] * n}).status_code)  # noqa: E731
        busy = threading.Thread(target=send, args=(1,))
        busy.start()
        assert gate.entered.wait(10)
        queued = threading.Thread(target=send, args=(2,))
        queued.start()
        wait_until(lambda: app.state.batcher.pending == 2)
        r = c.post("/score", json={"reference": REF, "responses": ["b"]})
        assert r.status_code == 503 and r.json()["error_type"] == "overloaded"
        assert r.headers["retry-after"] == "1"
        gate.release.set()
        busy.join(30)
        queued.join(30)
    assert codes == [200, 200]


def test_close_drains_queued_work_then_refuses(model, monkeypatch):
    gate = Gate(model, monkeypatch)
    batcher = MicroBatcher(model, max_wait_ms=0)
    first = batcher.submit(["a"], [REF])
    assert gate.entered.wait(10)
    queued = [batcher.submit([f"q{i}"], [REF]) for i in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_until(lambda: batcher.closed)
    with pytest.raises(ShuttingDownError, match="shutting down"):
        batcher.submit(["late"], [REF])
    gate.release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert len(first.result(0)) == 1 and all(len(f.result(0)) == 1 for f in queued)


def test_batcher_isolates_a_failing_job(model, monkeypatch):
    original = model.batch_score

    def flaky(responses, reference, batch_size=64):
        if "boom" in responses:
            raise RuntimeError("bad pair")
        return original(responses, reference, batch_size=batch_size)

    monkeypatch.setattr(model, "batch_score", flaky)
    batcher = MicroBatcher(model, max_wait_ms=50)
    good, bad = batcher.submit(["fine"], [REF]), batcher.submit(["boom"], [REF])
    assert good.result(10) == original(["fine"], REF)
    with pytest.raises(RuntimeError, match="bad pair"):
        bad.result(10)
    batcher.close(10)


def test_batcher_checks_its_arguments(model):
    batcher = MicroBatcher(model, max_queue=1)
    with pytest.raises(ValueError, match="one reference per response"):
        batcher.submit(["a", "b"], [REF])
    with pytest.raises(ValueError, match="output must be one of"):
        batcher.submit(["a"], [REF], output="logits")
    assert batcher.submit([], []).result(0) == []
    with pytest.raises(QueueFullError, match="at most 1"):
        batcher.submit(["a", "b"], [REF, REF])
    batcher.close(10)


# --- a real process ----------------------------------------------------------------------------------

def test_serve_subprocess_sigterm_exits_cleanly(tiny_int8, tmp_path):
    from rewardrt.bench.loadtest import free_port, start_server, stop_server, wait_ready

    port, log = free_port(), tmp_path / "serve.log"
    proc = start_server(tiny_int8[0], port, log, ["--log-level", "info"])
    try:
        wait_ready(proc, port, 60, log)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read()) == {"status": "ok"}
        conn.request("POST", "/score", json.dumps({"reference": REF, "responses": RESPONSES}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert len(json.loads(response.read())["scores"]) == len(RESPONSES)
        conn.close()
    finally:
        code = stop_server(proc, timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "batcher drained and stopped" in text and "Finished server process" in text


def test_serve_refuses_a_missing_model(tmp_path, capsys):
    from rewardrt.cli import main

    assert main(["serve", "--model", str(tmp_path / "no.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--max-queue", "0"]) == 2
    assert "max_queue must be >= 1" in capsys.readouterr().err


def test_short_loadtest(tiny_int8):
    from rewardrt.bench.loadtest import run_loadtest

    result = run_loadtest(tiny_int8[0], seconds=2.0, clients=4, max_requests=2000)
    print(result.summary())
    assert result.errors == 0, result.error_samples
    assert result.requests > 0 and result.checked == result.pairs
    assert result.max_diff == 0.0 and result.identical == result.checked
    assert result.server_exit == 0
    assert result.ok



def test_abuse_loopback(tiny_int8, tmp_path):
    """Malformed, mistyped and oversize requests, slow clients, disconnects and a burst past the queue
    get the right 4xx/503 and the server keeps serving correct scores (bench/abuse.py, shortened)."""
    from rewardrt.bench.abuse import run_abuse

    result = run_abuse(tiny_int8[0], slow_clients=8, burst=24, log=tmp_path / "serve.log")
    print(result.summary())
    assert result.ok, result.failures()
    assert result.burst[503] > 0 and result.statuses[408] == 4
