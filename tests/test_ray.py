"""rewardrt.runtime.integrations.ray on a local Ray (2 CPUs, loopback only): Ray Data scoring, a killed actor, the Serve
deployment and ``rewardrt score --ray``, all checked against in-process ``RewardModel.batch_score``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ray
import rewardrt.runtime.integrations.ray as rr
from rewardrt.cli import main
from rewardrt.runtime.api import RewardModel

# Ray's own modules warn about their pydantic and API deprecations; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# A pair's score is bit-identical whatever its batch (runtime/scorer.py, runtime/README.md "Guarantees"), so
# Ray's batches must give exactly the in-process scores.
TOLERANCE = 0.0
N_PAIRS = 3000


@pytest.fixture(scope="module")
def cluster(monkeypatch_module):
    # Ray lowers its workers' priority by 15 below the driver's (nice 19 under `nice -n 10`), which on a
    # busy machine starves them; keep them at the driver's own priority instead.
    monkeypatch_module.setenv("RAY_worker_niceness", "0")
    # Serve kills a proxy not ready within 5 s (health checks: 10 s); a loaded machine needs longer
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        monkeypatch_module.setenv(name, "120")
    rr.init_local(2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def path(tiny_int8) -> str:
    return str(tiny_int8[0])


@pytest.fixture(scope="module")
def model(path) -> RewardModel:
    return RewardModel(path)


@pytest.fixture(scope="module")
def pairs(dev_pairs) -> list[dict]:
    """3000 pairs with repeats (of pairs and of references) and lengths from a word to ~10 sentences."""
    a, b = dev_pairs
    rows = []
    for i in range(N_PAIRS):
        response = b[(i * 7) % len(b)]
        if i % 11 == 0:
            response = " ".join([response] * (1 + i % 10))
        rows.append({"id": i, "reference": a[i % len(a)], "response": response, "tag": f"t{i % 3}"})
    return rows


@pytest.fixture(scope="module")
def expected(model, pairs) -> list[float]:
    return model.batch_score([r["response"] for r in pairs], [r["reference"] for r in pairs])


def assert_scores(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    assert diff.max() <= TOLERANCE, f"max |diff| {diff.max():.3g} at index {int(diff.argmax())}"


# --- without a cluster -----------------------------------------------------------------------------

def test_import_rewardrt_does_not_import_ray():
    code = textwrap.dedent("""
        import sys
        import rewardrt, rewardrt.runtime, rewardrt.runtime.cli, rewardrt.runtime.serve, rewardrt.cli
        rewardrt.cli.build_parser()
        assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")], "ray imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_without_ray_names_the_extra(tmp_path):
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "ray":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        from rewardrt.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    src = tmp_path / "in.jsonl"
    src.write_text('{"reference": "a", "response": "b"}\n')
    out = subprocess.run([sys.executable, "-c", code, "score", "--ray", "auto", "--input", str(src)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "pip install 'rewardrt[ray]'" in out.stderr


def test_scorer_in_process_numpy_and_pandas(path, model, pairs, expected):
    """The map_batches callable itself: both batch formats, columns kept, float64 scores."""
    import pandas as pd

    scorer = rr.RayScorer(path)
    assert scorer.threads == 1 and not ray.is_initialized()  # outside Ray: 1 thread, and Ray not started
    rows = pairs[:200]
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in ("id", "reference", "response", "tag")}
    out = scorer(batch)
    assert set(out) == {"id", "reference", "response", "tag", "score"} and "score" not in batch
    assert out["score"].dtype == np.float64
    assert out["score"].tolist() == model.batch_score(list(batch["response"]), list(batch["reference"]))
    frame = pd.DataFrame(rows)
    scored = scorer(frame)
    assert "score" not in frame.columns
    assert scored["score"].tolist() == out["score"].tolist()
    assert scored["tag"].tolist() == frame["tag"].tolist()


def test_scorer_names_a_missing_column_and_a_bad_value(path):
    scorer = rr.RayScorer(path)
    with pytest.raises(ValueError, match=r"no 'response' column \(columns: \['reference', 'answer'\]\)"):
        scorer({"reference": np.asarray(["a"]), "answer": np.asarray(["b"])})
    with pytest.raises(TypeError, match=r"column 'response' must hold strings; row 1 of this batch is NoneType"):
        scorer({"reference": np.asarray(["a", "b"], dtype=object), "response": np.asarray(["x", None], dtype=object)})


@pytest.mark.parametrize("kwargs, needle", [
    ({"actors": 0}, "actors must be a positive int"),
    ({"actors": (3, 2)}, "min <= max"),
    ({"cpus_per_actor": 1.5}, "cpus_per_actor must be a positive int"),
    ({"batch_format": "pyarrow"}, "batch_format must be 'numpy' or 'pandas'"),
    ({"scorer": object}, "scorer must be RayScorer or a subclass"),
])
def test_score_dataset_argument_errors(kwargs, needle):
    with pytest.raises((TypeError, ValueError), match=needle):
        rr.score_dataset(None, **kwargs)  # checked before the dataset is touched


def test_build_app_argument_errors():
    with pytest.raises(ValueError, match="replicas must be a positive int"):
        rr.build_app(replicas=0)
    with pytest.raises(ValueError, match="batch_wait_timeout_s must be a number >= 0"):
        rr.build_app(batch_wait_timeout_s=-1)
    with pytest.raises(TypeError, match="model must be a path, a RewardModel or None"):
        rr.build_app(model=3)


# --- Ray Data --------------------------------------------------------------------------------------

def test_ray_data_scores_equal_batch_score(cluster, path, pairs, expected):
    ds = ray.data.from_items(pairs, override_num_blocks=8)
    out = rr.score_dataset(ds, path, actors=2, batch_size=250).take_all()
    by_id = {row["id"]: row for row in out}
    assert sorted(by_id) == list(range(N_PAIRS)) and len(out) == N_PAIRS
    assert all(by_id[r["id"]]["tag"] == r["tag"] for r in pairs)  # other columns travel along
    assert_scores([by_id[i]["score"] for i in range(N_PAIRS)], expected)


def _kill_once(marker: str, victim: int) -> type[rr.RayScorer]:
    """A scorer whose actor process dies (os._exit, no cleanup) the first time it meets ``victim``."""

    class KillOnce(rr.RayScorer):
        def __call__(self, batch):
            if victim in set(batch["id"].tolist()) and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    return KillOnce


def test_killed_actor_loses_and_duplicates_no_rows(cluster, path, pairs, expected, tmp_path):
    marker = tmp_path / "killed"
    ds = ray.data.from_items(pairs, override_num_blocks=12)
    scored = rr.score_dataset(ds, path, actors=2, batch_size=100, scorer=_kill_once(str(marker), 1717))
    ids, scores = [], {}
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        ids.extend(batch["id"].tolist())
        scores.update(zip(batch["id"].tolist(), batch["score"].tolist()))
    assert marker.exists(), "the actor was not killed: the test did not test anything"
    assert len(ids) == N_PAIRS and sorted(ids) == list(range(N_PAIRS))  # each id exactly once
    assert_scores([scores[i] for i in range(N_PAIRS)], expected)


# --- rewardrt score --ray --------------------------------------------------------------------------

def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_cli_jsonl_equals_the_local_command(cluster, path, pairs, tmp_path, capsys):
    rows = [{**r, "meta": {"k": "é"}} for r in pairs[:1000]]
    src = tmp_path / "in.jsonl"
    src.write_text(_jsonl(rows[:500]) + "\n" + _jsonl(rows[500:]), encoding="utf-8")  # a blank line too
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["score", "--model", path, "--input", str(src), "--output", str(local)]) == 0
    assert main(["score", "--ray", "auto", "--actors", "2", "--model", path, "--input", str(src),
                 "--output", str(remote)]) == 0
    assert "wrote 1000 lines in" in capsys.readouterr().err
    want = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines()]
    got = [json.loads(line) for line in remote.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in g.items() if k != "score"} for g in got] == rows  # in input order
    assert_scores([g["score"] for g in got], [w["score"] for w in want])


BAD = (_jsonl([{"reference": "r", "response": "ok 1"}]) + "\n"
       + "{not json\n" + _jsonl([{"reference": "r", "response": 5}, ["a list"], {"response": "no ref"}])
       ).encode() + b"\xff\xfe\n" + _jsonl([{"reference": "r", "response": "ok 2"}]).encode()


def test_cli_bad_lines_as_the_local_command(cluster, path, tmp_path, capsys):
    src, dst = tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(BAD)
    assert main(["score", "--ray", "auto", "--model", path, "--input", str(src), "--output", str(dst)]) == 1
    err = capsys.readouterr().err
    assert "line 3: invalid JSON" in err and "stopped after writing 1 lines" in err
    assert [json.loads(x)["response"] for x in dst.read_text().splitlines()] == ["ok 1"]

    assert main(["score", "--ray", "auto", "--model", path, "--input", str(src), "--output", str(dst),
                 "--on-error", "skip"]) == 0
    err = capsys.readouterr().err
    assert [json.loads(x)["response"] for x in dst.read_text().splitlines()] == ["ok 1", "ok 2"]
    for needle in ("skipped 5 malformed lines", "line 3: invalid JSON",
                   "line 4: field 'response' must be a string, got int", "line 5: expected a JSON object",
                   "line 6: missing field 'reference'", "line 7: not UTF-8 text"):
        assert needle in err


def test_cli_parquet_in_and_out(cluster, path, pairs, expected, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(pairs[:800]), src)
    assert main(["score", "--ray", "auto", "--model", path, "--input", str(src), "--output", str(dst)]) == 0
    out = pq.read_table(dst).to_pylist()
    assert [r["id"] for r in out] == list(range(800)) and out[5]["tag"] == pairs[5]["tag"]
    assert_scores([r["score"] for r in out], expected[:800])
    capsys.readouterr()

    pq.write_table(pa.Table.from_pylist([{"reference": "a", "answer": "b"}]), src)
    assert main(["score", "--ray", "auto", "--model", path, "--input", str(src), "--output", str(dst)]) == 2
    assert "no 'response' column" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--input", "-"], "--ray reads files"),
    (["--input", "in.jsonl", "--output", "out.parquet"], "is Parquet but --input"),
    (["--input", "missing.jsonl"], "cannot open 'missing.jsonl'"),
    (["--input", "in.jsonl", "--actors", "0"], "argument --actors: must be an integer >= 1, got '0'"),
    (["--input", "in.jsonl", "--cpus-per-actor", "-1"], "argument --cpus-per-actor: must be an integer >= 1"),
])
def test_cli_usage_errors(cluster, path, tmp_path, monkeypatch, cli, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(_jsonl([{"reference": "a", "response": "b"}]))
    code, _, err = cli(["score", "--ray", "auto", "--model", path, *argv])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_cli_ray_flags_need_ray(path, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(_jsonl([{"reference": "a", "response": "b"}]))
    assert main(["score", "--model", path, "--input", str(tmp_path / "in.jsonl"), "--actors", "2"]) == 2
    assert "--actors and --cpus-per-actor go with --ray" in capsys.readouterr().err


# --- Ray Serve -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(cluster, path):
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(rr.build_app(path, replicas=1, threads=1, max_batch_size=32, batch_wait_timeout_s=0.005),
              name="rewardrt-test", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_serve_scores_concurrent_requests_as_batch_score(served, model, pairs, expected):
    import httpx2 as httpx

    bodies, wants = [], []  # 400 pairs in 10 concurrent requests: one reference each, or one per pair
    for k in range(10):
        rows = pairs[k * 40:(k + 1) * 40]
        responses = [r["response"] for r in rows]
        if k % 2:
            bodies.append({"references": [r["reference"] for r in rows], "responses": responses})
            wants.append(expected[k * 40:(k + 1) * 40])
        else:
            bodies.append({"reference": rows[0]["reference"], "responses": responses})
            wants.append(model.batch_score(responses, rows[0]["reference"]))

    def post(body):
        return httpx.post(f"{served}/score", json=body, timeout=60)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(post, bodies))
    for want, answer in zip(wants, answers):
        assert answer.status_code == 200, answer.text
        assert_scores(answer.json()["scores"], want)


MALFORMED = [
    b'{"reference": "x", "responses": [',
    b"",
    b'["a"]',
    b'{"responses": ["a"]}',
    b'{"reference": "x", "responses": ["a", 3]}',
    b'{"references": ["x"], "responses": ["a", "b"]}',
    json.dumps({"reference": "x", "responses": ["a"] * 1025}).encode(),
]


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_serve_refuses_bodies_as_rewardrt_serve(served, model, body):
    import httpx2 as httpx
    from starlette.testclient import TestClient

    from rewardrt.runtime.serve import create_app

    with TestClient(create_app(model)) as local:
        want = local.post("/score", content=body)
    got = httpx.post(f"{served}/score", content=body, timeout=60)
    assert want.status_code in (400, 413, 422)
    assert (got.status_code, got.json()) == (want.status_code, want.json())


def test_serve_health_and_unknown_route(served):
    import httpx2 as httpx

    assert httpx.get(f"{served}/health", timeout=30).json() == {"status": "ok"}
    assert httpx.get(f"{served}/nope", timeout=30).status_code == 404
    assert httpx.get(f"{served}/score", timeout=30).status_code == 405
