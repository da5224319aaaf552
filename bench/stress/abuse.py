"""Abuse test of ``rewardrt serve`` on loopback, in bounded time: hostile and broken clients, then a
check that the server still answers correctly.

    python -m rewardrt.bench.stress.abuse [--model PATH] [--slow-clients 50]

Starts the server as a subprocess on a free 127.0.0.1 port with small limits, then sends malformed
JSON, wrong types, lone surrogates, oversize bodies (declared and chunked), too many items, too
long texts, deep nesting, unknown routes; holds slow clients (headers or body trickled byte by byte)
open while ordinary requests are served; disconnects mid-body and before reading answers; bursts
past the queue limit. Each check expects a status (400/404/405/408/413/422/503). Afterwards
/health must answer and /score must return scores bit-identical to in-process ``batch_score``;
the server log must hold no traceback and SIGTERM must stop it with exit 0. Prints one summary
line; exit status 0 when every check passed. Needs ``rewardrt[serve]``; traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rewardrt.bench.stress.loadtest import HOST, free_port, make_pairs, start_server, stop_server, wait_ready

LIMITS = {"max_body_bytes": 65536, "max_items": 64, "max_chars": 4000, "max_queue": 96, "body_timeout": 2.0}


@dataclass
class AbuseResult:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, passed, detail)
    statuses: Counter = field(default_factory=Counter)
    burst: Counter = field(default_factory=Counter)
    slow_clients: int = 0
    slow_held_s: float = 0.0
    served_while_slow_ms: float = float("nan")
    server_exit: int | None = None
    seconds: float = 0.0

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append((name, bool(passed), detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(p for _, p, _ in self.checks) and self.server_exit == 0

    def _passed(self, *names: str) -> bool:
        found = {name: passed for name, passed, _ in self.checks}
        return all(found.get(name, False) for name in names)

    def failures(self) -> list[str]:
        return [f"{name}: {detail}" for name, passed, detail in self.checks if not passed]

    def summary(self) -> str:
        passed = sum(p for _, p, _ in self.checks)
        codes = ", ".join(f"{k}x{v}" for k, v in sorted(self.statuses.items()))
        burst = ", ".join(f"{k}x{v}" for k, v in sorted(self.burst.items()))
        return (f"abuse: {passed}/{len(self.checks)} checks passed in {self.seconds:.0f} s; statuses {codes}; "
                f"burst past the queue: {burst}; {self.slow_clients} slow clients held {self.slow_held_s:.1f} s "
                f"while /score answered in {self.served_while_slow_ms:.0f} ms; afterwards /health ok and "
                f"/score bit-identical: {'yes' if self._passed('health at the end', 'scores bit-identical at the end') else 'NO'}; "
                f"server exit {self.server_exit}" + (f"; FAILED: {'; '.join(self.failures())}" if self.failures() else ""))


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def _raw(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send raw bytes, return whatever comes back until the server closes or answers."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:  # the server may answer (413) and close before reading everything
            pass
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status(response: bytes) -> int:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def _chunked(body: bytes, size: int = 4096) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    ("malformed JSON", b'{"reference": "x", "responses": [', 400),
    ("empty body", b"", 400),
    ("not UTF-8", b"\xff\xfe\x00", 400),
    ("deep nesting", b"[" * 50_000, 400),
    ("not an object", b'["a"]', 422),
    ("responses not a list", b'{"reference": "x", "responses": "a"}', 422),
    ("number in responses", b'{"reference": "x", "responses": ["a", 3]}', 422),
    ("null reference", b'{"reference": null, "responses": ["a"]}', 422),
    ("object as text", b'{"reference": {"a": 1}, "responses": ["a"]}', 422),
    ("lone surrogate", b'{"reference": "x", "responses": ["ok \\ud800"]}', 422),
    ("references length", b'{"references": ["x"], "responses": ["a", "b"]}', 422),
    ("too many items", json.dumps({"reference": "x", "responses": ["a"] * 65}).encode(), 413),
    ("text too long", json.dumps({"reference": "x" * 4001, "responses": ["a"]}).encode(), 413),
    ("body too large", json.dumps({"reference": "x", "responses": ["a"], "pad": "z" * 70_000}).encode(), 413),
]


def run_abuse(model: str | Path | None = None, *, slow_clients: int = 50, burst: int = 48,
              startup_timeout: float = 120.0, log: Path | None = None) -> AbuseResult:
    """Run every check against a fresh server (see the module docstring) and return the figures."""
    from rewardrt.runtime.api import RewardModel

    started = time.monotonic()
    result = AbuseResult()
    port = free_port()
    own_log = log is None
    log = Path(tempfile.mkdtemp(prefix="rewardrt-abuse-")) / "serve.log" if own_log else log
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()] + ["--max-wait-ms=5", "--log-level=info"]
    if model is None:
        from rewardrt.models import default_model_path

        model = default_model_path()
    proc = start_server(model, port, log, flags)
    rm = RewardModel(model, threads=1)
    try:
        wait_ready(proc, port, startup_timeout, log)

        # 1. malformed, mistyped, oversize
        for name, body, expected in BAD_REQUESTS:
            status, payload, _ = _request(port, "POST", "/score", body)
            result.statuses[status] += 1
            ok = status == expected and "error" in json.loads(payload or b"{}")
            result.check(name, ok, f"got {status}, expected {expected}")
        response = _raw(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 99999999\r\n\r\n{")
        result.statuses[_status(response)] += 1
        result.check("declared oversize body", _status(response) == 413, f"got {_status(response)}")
        huge = json.dumps({"reference": "x", "responses": ["y" * 3000] * 40}).encode()
        response = _raw(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(huge))
        result.statuses[_status(response)] += 1
        result.check("chunked oversize body", _status(response) == 413, f"got {_status(response)}")
        for method, path, expected in (("GET", "/nope", 404), ("GET", "/score", 405), ("DELETE", "/health", 405)):
            status, _, _ = _request(port, method, path)
            result.statuses[status] += 1
            result.check(f"{method} {path}", status == expected, f"got {status}, expected {expected}")

        # 2. slow clients: headers and bodies trickled; ordinary requests must still be served
        pairs = make_pairs(8, seed=1)
        body = json.dumps({"references": [p[1] for p in pairs], "responses": [p[0] for p in pairs]}).encode()
        socks: list[socket.socket] = []
        for i in range(slow_clients):
            s = socket.create_connection((HOST, port), timeout=30)
            if i % 2:
                s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
            else:
                s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        hold_start = time.monotonic()
        t0 = time.perf_counter()
        status, payload, _ = _request(port, "POST", "/score", body)
        result.served_while_slow_ms = 1000 * (time.perf_counter() - t0)
        result.check("served while slow clients wait", status == 200, f"got {status}")
        time.sleep(LIMITS["body_timeout"] + 0.5)
        timed_out = 0
        for i, s in enumerate(socks):
            if i % 2:
                s.settimeout(10)
                try:
                    timed_out += _status(s.recv(65536)) == 408
                except OSError:
                    pass
        result.slow_held_s = time.monotonic() - hold_start
        result.slow_clients = len(socks)
        result.statuses[408] += timed_out
        result.check("slow bodies get 408", timed_out == len(socks) // 2, f"{timed_out}/{len(socks) // 2}")
        for s in socks:
            s.close()

        # 3. disconnects: mid-body, and before reading the answer
        for _ in range(10):
            with socket.create_connection((HOST, port), timeout=10) as s:
                s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
            with socket.create_connection((HOST, port), timeout=10) as s:
                s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, _, _ = _request(port, "GET", "/health")
        result.check("health after disconnects", status == 200, f"got {status}")

        # 4. a burst past the queue limit: 200 or 503 (+ Retry-After), nothing else
        long_pairs = [(" ".join(["word"] * 300) + f" {i}", " ".join(["reference"] * 300)) for i in range(8)]
        long_body = json.dumps({"references": [p[1] for p in long_pairs],
                                "responses": [p[0] for p in long_pairs]}).encode()

        def send(_: int) -> tuple[int, str]:
            status, _, headers = _request(port, "POST", "/score", long_body, timeout=300)
            return status, headers.get("retry-after", "")

        with ThreadPoolExecutor(burst) as pool:
            answers = list(pool.map(send, range(burst)))
        result.burst.update(status for status, _ in answers)
        result.statuses.update(status for status, _ in answers)
        result.check("burst: only 200 or 503", set(result.burst) <= {200, 503}, str(dict(result.burst)))
        result.check("burst: some 503", result.burst[503] > 0, str(dict(result.burst)))
        result.check("burst: some 200", result.burst[200] > 0, str(dict(result.burst)))
        result.check("503 carries Retry-After", all(r == "1" for s, r in answers if s == 503), "")

        # 5. still correct afterwards
        status, payload, _ = _request(port, "GET", "/health")
        result.check("health at the end", status == 200 and json.loads(payload) == {"status": "ok"}, f"got {status}")
        status, payload, _ = _request(port, "POST", "/score", body)
        expected = rm.batch_score([p[0] for p in pairs], [p[1] for p in pairs])
        got = json.loads(payload).get("scores") if status == 200 else None
        result.check("scores bit-identical at the end", got == expected, f"status {status}")
    finally:
        result.server_exit = stop_server(proc, timeout=60)
        result.seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    result.check("no traceback in the server log", "Traceback" not in text, text[-1500:] if "Traceback" in text else "")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.stress.abuse", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a .onnx artifact (default: the embedded model)")
    p.add_argument("--slow-clients", type=int, default=50, help="slow connections held open (default: %(default)s)")
    p.add_argument("--burst", type=int, default=48, help="concurrent requests in the burst (default: %(default)s)")
    args = p.parse_args(argv)
    result = run_abuse(args.model, slow_clients=args.slow_clients, burst=args.burst)
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
