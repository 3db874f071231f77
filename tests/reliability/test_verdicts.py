"""Verdicts that can be trusted: a verdict is reused only by the judge that made it, never when it is an error,
broken HTTP exchanges become error verdicts, and results.json names the judges of the verdicts it counts."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from probes import cli, hand_run

from vlsafe.core.errors import InputError
from vlsafe.evals import judge_run
from vlsafe.evals.judges import KeywordJudge, read_verdicts
from vlsafe.evals.judging import build_results, judge_records
from vlsafe.evals.rundir import RunDir


class Judge:
    """An OpenAI-compatible judge server whose health and answers a test sets."""

    def __init__(self) -> None:
        self.healthy = True
        self.answer: Callable[[dict], str] = lambda body: "unsafe"
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if not server.healthy:
                    self.send_response(503)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"content": server.answer(body)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def options(self, model: str = "judge-a") -> dict:
        return {"base_url": self.url, "model": model, "max_retries": 0, "timeout_s": 5.0, "max_workers": 2}


@pytest.fixture
def server() -> Iterator[Judge]:
    s = Judge()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_an_outage_is_repaired_by_the_next_judging_run(server: Judge, tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run", ["Sure, step one ...", "Here is how ...", "First, ..."])
    server.healthy = False
    down = judge_run(run, "http", judge_options=server.options())
    assert down["metrics"]["overall"]["n_judge_errors"] == 3 and len(server.requests) == 3
    server.healthy, server.requests = True, []
    up = judge_run(run, "http", judge_options=server.options())
    assert len(server.requests) == 3  # the stored error verdicts were not reused
    assert up["metrics"]["overall"]["n_judge_errors"] == 0
    assert all(v.unsafe is True for v in read_verdicts(run / "verdicts.jsonl").values())
    server.requests = []
    judge_run(run, "http", judge_options=server.options())
    assert server.requests == []  # good verdicts of the same judge are reused


def test_another_judge_model_gets_its_own_verdicts_and_results_name_it(server: Judge, tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run", ["Sure, step one ...", "I cannot help with that."])
    server.answer = lambda body: "safe" if body["model"] == "judge-a" else "unsafe"
    first = judge_run(run, "http", judge_options=server.options("judge-a"))
    server.requests = []
    second = judge_run(run, "http", judge_options=server.options("judge-b"))
    assert {r["model"] for r in server.requests} == {"judge-b"} and len(server.requests) == 2
    assert second["judge"]["model"] == "judge-b" and second["judge"]["key"] != first["judge"]["key"]
    assert second["verdict_judges"] == [
        {"name": "http", "version": second["judge"]["version"], "prompt_hash": second["judge"]["prompt_hash"],
         "key": second["judge"]["key"], "n": 2}
    ]  # fmt: skip
    assert all(v.unsafe is True for v in read_verdicts(run / "verdicts.jsonl").values())


def test_the_endpoint_and_decoding_options_are_part_of_the_identity(server: Judge, tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run", ["Sure."])
    judge_run(run, "http", judge_options=server.options())
    for change in ({"temperature": 0.5}, {"max_tokens": 7}, {"rubric": "harmbench"}):
        server.requests = []
        judge_run(run, "http", judge_options={**server.options(), **change})
        assert len(server.requests) == 1, change


def test_rejudge_all_errors_none(server: Judge, tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run", ["a", "b"])
    server.healthy = False
    judge_run(run, "http", judge_options=server.options())
    server.healthy, server.requests = True, []
    kept = judge_run(run, "http", judge_options=server.options(), rejudge="none")
    assert server.requests == [] and kept["metrics"]["overall"]["n_judge_errors"] == 2
    judge_run(run, "http", judge_options=server.options(), rejudge="errors")
    assert len(server.requests) == 2
    server.requests = []
    result = cli("judge", run, "--judge", "http", *[f"--option={k}={v}" for k, v in server.options().items()],
                 "--rejudge", "all")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 2


def test_results_refuse_verdicts_of_two_judges(tmp_path: Path) -> None:
    run = RunDir(hand_run(tmp_path / "run", ["I cannot.", "Sure."]))
    a, b = KeywordJudge(), KeywordJudge(extra_keywords=["sure"])
    judged = judge_records(run, run.records(), a)
    mixed = [judged[0], {**judged[1], "verdict": b.verdict(judged[1], refused=True).model_dump()}]
    with pytest.raises(InputError, match="results never mix judges"):
        build_results(run, mixed, a, {"model": "m", "benchmark": "hand"})


def _raw_server(reply: bytes | None) -> tuple[str, Callable[[], None]]:
    """A server that answers every connection with ``reply`` bytes (``None``: closes without a word)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                if reply is not None:
                    conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()

    def close() -> None:
        stop.set()
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1", close


_BODY = b"\xff\xfe not utf-8 \x80"
_NO_TEXT = b'{"choices": [{"message": {"content": null}}]}'


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize(
    "reply, reason",
    [
        (_ok(_BODY), "not UTF-8"),
        (None, "broken HTTP exchange"),
        (b"NONSENSE\r\n\r\n", "broken HTTP exchange"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"choi", "broken HTTP exchange"),
        (_ok(b"[]"), "malformed response"),
        (_ok(_NO_TEXT), "no answer text"),
    ],
    ids=["non-utf8-body", "closed-connection", "bad-status-line", "cut-body", "json-list", "no-text"],
)  # fmt: skip
def test_broken_http_exchanges_become_error_verdicts(reply: bytes | None, reason: str, tmp_path: Path) -> None:
    url, close = _raw_server(reply)
    try:
        run = hand_run(tmp_path / "run", ["Sure, here is how."])
        result = cli("judge", run, "--judge", "http", f"--option=base_url={url}", "--option=model=m",
                     "--option=max_retries=1", "--option=backoff_s=0.01", "--option=timeout_s=30")  # fmt: skip
    finally:
        close()
    assert result.exit_code == 0, result.output
    (verdict,) = read_verdicts(run / "verdicts.jsonl").values()
    assert verdict.error and reason in verdict.error and verdict.unsafe is None and verdict.refused is None


def test_a_verdict_write_that_fails_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = hand_run(tmp_path / "run", ["I cannot.", "Sure."])
    judge_run(run, "keyword")
    before = (run / "verdicts.jsonl").read_bytes()

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        judge_run(run, "keyword", rejudge="all")
    monkeypatch.undo()
    assert (run / "verdicts.jsonl").read_bytes() == before
    assert not [p for p in (run / "judgements").iterdir() if p.name.endswith(".tmp")]


def test_a_damaged_verdicts_file_does_not_break_later_runs(tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run", ["I cannot.", "Sure."])
    judge_run(run, "keyword")
    stored = run / "judgements" / "keyword.jsonl"
    stored.write_bytes(stored.read_bytes()[:-30])  # a file cut in the middle of its last verdict
    (run / "judgements" / "http.jsonl").write_text('{"id": "r0", "judge": 3}\nnot json\n')
    results = judge_run(run, "keyword")
    assert results["metrics"]["overall"]["n_records"] == 2 and len(read_verdicts(stored)) == 2
