"""``rewardrt serve``: routes, errors and limits in-process (Starlette TestClient), the micro-batcher,
one real server process stopped by SIGTERM, and a short load test."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from contextlib import contextmanager

import pytest
from conftest import assert_one_line_error

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from starlette.testclient import TestClient  # noqa: E402

from rewardrt.runtime.api import RewardModel  # noqa: E402
from rewardrt.runtime.serve import ServeConfig, create_app, is_loopback  # noqa: E402
from rewardrt.runtime.serve.batcher import MicroBatcher, QueueFullError, ShuttingDownError  # noqa: E402

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


def test_rerank_cohere_shape_on_both_routes(client, model):
    docs = ["Paris.", {"text": "It is Lyon."}, "Paris is the capital of France.", {"text": "I do not know."}]
    scores = model.batch_score(RESPONSES, REF)
    order = sorted(range(len(RESPONSES)), key=lambda i: scores[i], reverse=True)
    for route in ("/rerank", "/v1/rerank"):
        got = client.post(route, json={"model": "rerank-v3", "query": REF, "documents": docs, "top_n": 2,
                                       "return_documents": True}).json()
        assert got["results"] == [{"index": i, "relevance_score": scores[i], "document": {"text": RESPONSES[i]}}
                                  for i in order[:2]]
        assert got["model"] == "rerank-v3" and got["id"]
    bare = client.post("/v1/rerank", json={"query": REF, "documents": RESPONSES, "top_n": 99}).json()
    assert bare["results"] == [{"index": i, "relevance_score": scores[i]} for i in order]
    assert bare["model"] == model.path.name


@pytest.mark.parametrize("body, needle", [
    ({"query": REF, "documents": [{"title": "x"}]}, "'documents[0]' is an object without 'text'"),
    ({"query": REF, "documents": ["a", 3]}, "'documents[1]' must be a string"),
    ({"query": REF, "documents": [{"text": 3}]}, "'documents[0].text' must be a string"),
    ({"query": REF, "documents": []}, "'documents' cannot be empty"),
    ({"query": REF, "documents": ["a"], "top_n": 0}, "'top_n' must be an integer >= 1"),
    ({"query": REF, "documents": ["a"], "texts": ["a"]}, "exactly one of 'texts'"),
    ({"query": REF}, "exactly one of 'texts'"),
    ({"query": REF, "documents": ["a"], "truncate": "no"}, "'truncate' must be true or false"),
])
def test_rerank_cohere_errors_name_the_field(client, body, needle):
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 422 and needle in r.json()["error"], r.json()


def test_rerank_truncate_false_refuses_an_overlong_item(tiny_int8):
    short = RewardModel(tiny_int8[0], max_length=32)
    long = " ".join(["word"] * 60)
    with TestClient(create_app(short)) as c:
        r = c.post("/rerank", json={"query": REF, "texts": ["Paris.", long], "truncate": False})
        assert r.status_code == 413 and r.json()["limit"] == "max_length"
        assert "texts[1] with the query exceeds the model's max_length of 32 tokens" in r.json()["error"]
        r = c.post("/v1/rerank", json={"query": REF, "documents": [long, long], "truncate": False})
        assert r.status_code == 413 and "documents[0], documents[1]" in r.json()["error"]
        cut = c.post("/rerank", json={"query": REF, "texts": ["Paris.", long]})  # default: truncated
        assert cut.status_code == 200 and len(cut.json()) == 2


def test_get_reward_strips_chat_tokens(model):
    prompt = "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    clean = ["Paris.", "Lyon.", "72"]
    queries = ["<|endoftext|>" + prompt + c + "<|im_end|><|endoftext|>" for c in clean]
    body = {"query": queries, "prompts": [prompt] * 3, "labels": [REF] * 3}
    with TestClient(create_app(model)) as c:
        assert c.post("/get_reward", json=body).json()["rewards"] == model.batch_score(clean, REF)
        no_prompts = {"query": [x + "</s>" for x in clean], "labels": [REF] * 3}
        assert c.post("/get_reward", json=no_prompts).json()["rewards"] == model.batch_score(clean, REF)
    with TestClient(create_app(model, ServeConfig(strip_tokens=()))) as c:
        # kept as text: the padding hides the prompt too, so the whole query is scored
        assert c.post("/get_reward", json=body).json()["rewards"] == model.batch_score(queries, REF)
    with pytest.raises(ValueError, match="strip_tokens\\[0\\] must be a non-empty str"):
        ServeConfig(strip_tokens=("",))


def test_openapi_describes_every_route_and_the_real_bodies(client, model):
    jsonschema = pytest.importorskip("jsonschema")
    from rewardrt.runtime.serve.app import ROUTES

    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and set(doc["paths"]) == ROUTES

    def check(instance, name):
        jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                         "components": doc["components"]}).validate(instance)

    calls = [
        ("/score", {"reference": REF, "responses": RESPONSES}, "ScoreRequest", "ScoreResponse"),
        ("/rank", {"references": [REF] * 4, "responses": RESPONSES}, "ScoreRequest", "RankResponse"),
        ("/get_reward", {"query": RESPONSES, "prompts": [""] * 4, "labels": [REF] * 4}, "GetRewardRequest",
         "GetRewardResponse"),
        ("/rerank", {"query": REF, "texts": RESPONSES, "return_text": True}, "TEIRerankRequest",
         "TEIRerankResponse"),
        ("/v1/rerank", {"query": REF, "documents": RESPONSES, "return_documents": True, "top_n": 2},
         "CohereRerankRequest", "CohereRerankResponse"),
    ]
    for route, body, request, response in calls:
        check(body, request)
        r = client.post(route, json=body)
        assert r.status_code == 200
        check(r.json(), response)
    check(client.post("/score", json={"responses": ["a"]}).json(), "Error")
    check(client.get("/health").json(), "Health")
    check(client.get("/info").json(), "Info")


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
    first = batcher.submit([REF], ["a"])
    assert gate.entered.wait(10)
    queued = [batcher.submit([REF], [f"q{i}"]) for i in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_until(lambda: batcher.closed)
    with pytest.raises(ShuttingDownError, match="shutting down"):
        batcher.submit([REF], ["late"])
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
    good, bad = batcher.submit([REF], ["fine"]), batcher.submit([REF], ["boom"])
    assert good.result(10) == original(["fine"], REF)
    with pytest.raises(RuntimeError, match="bad pair"):
        bad.result(10)
    batcher.close(10)


def test_batcher_checks_its_arguments(model):
    batcher = MicroBatcher(model, max_queue=1)
    with pytest.raises(ValueError, match="one reference per response"):
        batcher.submit([REF], ["a", "b"])
    with pytest.raises(ValueError, match="output must be one of"):
        batcher.submit([REF], ["a"], output="logits")
    assert batcher.submit([], []).result(0) == []
    with pytest.raises(QueueFullError, match="at most 1"):
        batcher.submit([REF, REF], ["a", "b"])
    batcher.close(10)


# --- a real process ----------------------------------------------------------------------------------

def test_serve_subprocess_sigterm_exits_cleanly(tiny_int8, tmp_path):
    from rewardrt.bench.stress.loadtest import free_port, start_server, stop_server, wait_ready

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


class SlowRequest(threading.Thread):
    """One /score request of many long pairs (seconds of work for the real model at 1 thread)."""

    def __init__(self, port: int, pairs: int) -> None:
        super().__init__(daemon=True)
        self.port, self.pairs = port, pairs
        self.status: int | None = None
        self.body: dict = {}

    def run(self) -> None:
        words = "the answer to the question follows from the steps shown above and the total is".split()
        responses = [" ".join(words[(i + j) % len(words)] for j in range(400)) + f" {i}" for i in range(self.pairs)]
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request("POST", "/score", json.dumps({"reference": "42", "responses": responses}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        self.status, self.body = response.status, json.loads(response.read())
        conn.close()


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    out = response.status, response.read().decode()
    conn.close()
    return out


def _in_flight(port: int) -> float:
    text = _get(port, "/metrics")[1]
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("rewardrt_requests_in_flight "))


@contextmanager
def _sigterm_during_a_slow_request(tmp_path, grace: str, pairs: int):
    """A real server on the default model (1 thread), a slow request in flight, then SIGTERM:
    yields (process, port, the request's thread); the process is killed if still alive after."""
    from rewardrt.bench.stress.loadtest import free_port, start_server, wait_ready
    from rewardrt.models import default_model_path

    port, log = free_port(), tmp_path / "serve.log"
    proc = start_server(default_model_path(), port, log,
                        ["--threads", "1", "--graceful-timeout", grace, "--log-level", "info"])
    try:
        wait_ready(proc, port, 60, log)
        slow = SlowRequest(port, pairs)
        slow.start()
        wait_until(lambda: _in_flight(port) >= 2, timeout=30)  # the slow request and this /metrics call
        proc.send_signal(signal.SIGTERM)
        yield proc, port, slow
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_refuses_new_ones_as_json(tmp_path):
    with _sigterm_during_a_slow_request(tmp_path, "120", pairs=160) as (proc, port, slow):
        wait_until(lambda: _get(port, "/health")[0] == 503, timeout=10)
        assert json.loads(_get(port, "/health")[1]) == {"status": "draining"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/score", json.dumps({"reference": REF, "responses": ["Paris."]}),
                     {"Content-Type": "application/json"})
        refused = conn.getresponse()
        assert refused.status == 503 and refused.getheader("Retry-After") == "1"
        assert json.loads(refused.read())["error_type"] == "unavailable"
        conn.close()
        assert slow.is_alive(), "the slow request ended before the drain was observed; make it longer"
        slow.join(300)
        assert slow.status == 200 and len(slow.body["scores"]) == 160  # accepted, so answered
        assert proc.wait(60) == 0
    assert "drained: no request in flight" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_a_request_past_the_grace_period_gets_a_json_503(tmp_path):
    with _sigterm_during_a_slow_request(tmp_path, "1", pairs=240) as (proc, port, slow):
        slow.join(300)
        assert slow.status == 503, slow.body
        assert slow.body["error_type"] == "unavailable"
        assert "shut down before this request was scored (grace period 1 s" in slow.body["error"]
        assert proc.wait(120) == 0
    assert "answered 503" in (tmp_path / "serve.log").read_text()


def test_serve_refuses_a_missing_model_and_bad_options(tmp_path, cli):
    assert_one_line_error(*cli(["serve", "--model", str(tmp_path / "no.onnx")])[::2], "does not exist")
    for option, value, needle in [("--max-queue", "0", "must be an integer >= 1, got '0'"),
                                  ("--port", "70000", r"must be an integer in \[0, 65535\]"),
                                  ("--max-wait-ms", "-1", "must be a number >= 0"),
                                  ("--graceful-timeout", "nan", "must be a number >= 1"),
                                  ("--threads", "0", "must be an integer >= 1"),
                                  ("--strip-tokens", "none,<a>", "'none' cannot be combined")]:
        assert_one_line_error(*cli(["serve", option, value])[::2], f"argument {option}: {needle}")


def test_short_loadtest(tiny_int8):
    from rewardrt.bench.stress.loadtest import run_loadtest

    result = run_loadtest(tiny_int8[0], seconds=2.0, clients=4, max_requests=2000)
    print(result.summary())
    assert result.errors == 0, result.error_samples
    assert result.requests > 0 and result.checked == result.pairs
    assert result.max_diff == 0.0 and result.identical == result.checked
    assert result.server_exit == 0
    assert result.ok



def test_abuse_loopback(tiny_int8, tmp_path):
    """Malformed, mistyped and oversize requests, slow clients, disconnects and a burst past the queue
    get the right 4xx/503 and the server keeps serving correct scores (bench/stress/abuse.py, shortened)."""
    from rewardrt.bench.stress.abuse import run_abuse

    result = run_abuse(tiny_int8[0], slow_clients=8, burst=24, log=tmp_path / "serve.log")
    print(result.summary())
    assert result.ok, result.failures()
    assert result.burst[503] > 0 and result.statuses[408] == 4
