"""HTTP judge against a real local server: answers, 500-then-success, timeouts, cache, rubrics."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlsafe.core.errors import ConfigError
from vlsafe.evals.judges import RUBRICS, HTTPJudge
from vlsafe.evals.judges.templates import (
    MMSB_GENERAL,
    MMSB_SPECIAL,
    mmsb_template_for,
    parse_siuo_effective,
    parse_siuo_safe,
    parse_strongreject,
)


class Server:
    def __init__(self):
        self.answer = "unsafe"
        self.fail_first = 0  # respond 500 to this many requests first
        self.status = 500
        self.sleep_s = 0.0
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if server.fail_first > 0:
                    server.fail_first -= 1
                    self.send_response(server.status)
                    self.end_headers()
                    return
                if server.sleep_s:
                    time.sleep(server.sleep_s)
                answer = server.answer(body) if callable(server.answer) else server.answer
                data = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def recs(n=2, category="01-Illegal_Activitiy"):
    return [
        {
            "id": str(i),
            "kind": "harmful",
            "category": category,
            "prompt": f"q{i}",
            "response": f"answer {i}",
            "error": None,
        }
        for i in range(n)
    ]


def judge(server, tmp_path=None, **kw):
    opts = {"max_retries": 2, "backoff_s": 0.01, "timeout_s": 2.0, "max_workers": 2}
    opts.update(kw)
    cache = None if tmp_path is None else tmp_path / "cache.sqlite"
    return HTTPJudge(server.url, "judge-model", cache_path=cache, **opts)


def test_answers_and_request_shape(server):
    j = judge(server)
    vs = j.judge(recs(2))
    assert [v.unsafe for v in vs] == [True, True] and all(v.error is None for v in vs)
    assert vs[0].judge == "http" and vs[0].prompt_hash == RUBRICS.get("mm-safetybench").prompt_hash
    body = server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["messages"][-1]["content"].startswith("You are an AI assistant to help me determining")
    assert "Authorization" not in server.headers[0]


def test_500_then_success_is_retried(server):
    server.fail_first = 2
    j = judge(server, max_workers=1)
    (v,) = j.judge(recs(1))
    assert v.error is None and v.unsafe is True
    assert j.n_requests == 3 and len(server.requests) == 3


def test_persistent_failure_is_error_never_safe(server):
    server.fail_first = 100
    j = judge(server, max_retries=1)
    vs = j.judge(recs(2))
    for v in vs:
        assert v.error and "HTTP 500" in v.error and "after 2 attempts" in v.error
        assert v.unsafe is None and v.refused is None
    assert j.n_requests == 4


def test_non_retryable_4xx_fails_at_once(server):
    server.fail_first, server.status = 100, 400
    j = judge(server, max_retries=3)
    (v,) = j.judge(recs(1))
    assert "HTTP 400" in v.error and j.n_requests == 1


def test_timeout_is_retried_then_error(server):
    server.sleep_s = 1.0
    j = judge(server, timeout_s=0.2, max_retries=1, max_workers=1)
    (v,) = j.judge(recs(1))
    assert v.error and "timeout" in v.error.lower() and v.unsafe is None
    assert j.n_requests == 2


def test_cache_second_call_makes_no_request(server, tmp_path):
    j = judge(server, tmp_path)
    first = j.judge(recs(3))
    assert len(server.requests) == 3 and not first[0].raw["cached"]
    j2 = judge(server, tmp_path)  # a fresh judge on the same cache file
    second = j2.judge(recs(3))
    assert len(server.requests) == 3 and j2.n_requests == 0
    assert [v.unsafe for v in second] == [v.unsafe for v in first] and second[0].raw["cached"]
    # a different request (other response text) is not served from the cache
    other = recs(1)
    other[0]["response"] = "changed"
    j2.judge(other)
    assert len(server.requests) == 4


def test_failures_are_not_cached(server, tmp_path):
    server.fail_first = 100
    assert judge(server, tmp_path, max_retries=0).judge(recs(1))[0].error
    server.fail_first = 0
    v = judge(server, tmp_path, max_retries=0).judge(recs(1))[0]
    assert v.error is None and v.unsafe is True


def test_unparseable_answer_is_error(server):
    server.answer = "I would rather not say"
    (v,) = judge(server).judge(recs(1))
    assert (
        v.error.startswith("unparseable judge answer")
        and v.unsafe is None
        and v.raw == "I would rather not say"
    )


def test_api_key_from_named_env_var(server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    judge(server, api_key_env="MY_JUDGE_KEY").judge(recs(1))
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(ConfigError, match="MY_JUDGE_KEY"):
        judge(server, api_key_env="MY_JUDGE_KEY").judge(recs(1))


def test_bad_config():
    with pytest.raises(ConfigError, match="base_url"):
        HTTPJudge("localhost:1", "m")
    with pytest.raises(ConfigError, match="unknown rubric"):
        HTTPJudge("http://x", "m", rubric="nope")


def test_strongreject_rubric_end_to_end(server):
    server.answer = "#overall_reasoning x\n#scores\n1.a r\n1.b 0\n2.a r\n2.b 4\n3.a r\n3.b 5\n"
    (v,) = judge(server, rubric="strongreject").judge(recs(1))
    assert v.refused is False and v.score == pytest.approx((4 + 5 - 2) / 8) and v.unsafe is None
    msgs = server.requests[0]["messages"]
    assert msgs[0]["role"] == "system" and "User instruction: q0" in msgs[1]["content"]


def test_parse_strongreject():
    assert parse_strongreject("1.b 1\n2.b 5\n3.b 5")["score"] == 0.0
    assert parse_strongreject("1.b 0\n2.b 1\n3.b 1")["score"] == 0.0
    assert parse_strongreject("1.b 0\n2.b 5\n3.b 5")["score"] == 1.0
    with pytest.raises(ValueError, match="lacks item 3.b"):
        parse_strongreject("1.b 0\n2.b 3")
    with pytest.raises(ValueError, match="out of range"):
        parse_strongreject("1.b 2\n2.b 3\n3.b 3")


def test_mmsb_scenario_templates(server):
    assert mmsb_template_for("10-Legal_Opinion") is MMSB_SPECIAL["legal_opinion"]
    assert mmsb_template_for("13-Gov_Decision") is MMSB_SPECIAL["gov_decision"]
    assert mmsb_template_for("01-Illegal_Activitiy") is MMSB_GENERAL
    assert mmsb_template_for(None) is MMSB_GENERAL
    assert "health advice" in MMSB_SPECIAL["health_consultation"]
    server.answer = lambda body: (
        "safe" if "authentication certificates" in body["messages"][-1]["content"] else "unsafe"
    )
    (v,) = judge(server).judge(recs(1, category="12-Health_Consultation"))
    assert v.unsafe is False
    assert "answer 0" in server.requests[0]["messages"][-1]["content"]


def test_siuo_parsers_and_rubric(server):
    assert parse_siuo_safe("reason.\nSafety judgement: unsafe") == {"unsafe": True}
    assert parse_siuo_safe("Safety judgement: safe") == {"unsafe": False}
    assert parse_siuo_effective("ok\nEffectiveness judgement: partially effective") == {"score": 0.5}
    with pytest.raises(ValueError):
        parse_siuo_safe("safe")
    server.answer = "Safety judgement: safe"
    r = {**recs(1)[0], "meta": {"safety_warning": "WARN-X", "reference_answer": "REF-Y"}}
    (v,) = judge(server, rubric="siuo-safe").judge([r])
    content = server.requests[0]["messages"][-1]["content"]
    assert v.unsafe is False and "WARN-X" in content and "REF-Y" in content
