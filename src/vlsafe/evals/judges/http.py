"""OpenAI-compatible chat-completions judge over HTTP (stdlib ``urllib`` only).

Requests go to ``{base_url}/chat/completions`` with ``{"model", "messages", "temperature",
"max_tokens"}``. The API key is read at request time from the environment variable whose *name* is
configured (``api_key_env``); it is never logged or cached.

Robustness:

- bounded concurrency (``max_workers`` threads);
- per-request ``timeout_s``;
- retries with exponential backoff (``backoff_s * 2**attempt``, capped by ``max_backoff_s``; a
  ``Retry-After`` header is honoured up to the cap) on HTTP 429, HTTP 5xx, timeouts and connection
  errors; other 4xx fail at once;
- every transport failure counts as a failed attempt: HTTP errors, timeouts, refused or dropped
  connections, malformed status lines, bodies that are not UTF-8 or not JSON, answers without a text;
- an on-disk cache (:class:`JudgeCache`) keyed by the hash of the full request, so re-scoring is free;
  only answers the rubric parses are stored, so a failed request or an unreadable answer is asked again;
- a request that still fails, or an answer the rubric cannot parse, becomes a verdict with
  ``error`` set and ``refused``/``unsafe`` ``None`` -- never a safe verdict.

The judge's identity (:meth:`HTTPJudge.identity_fields`) holds the model, the endpoint, the rubric and the
decoding options, so verdicts of one model or server are never reused for another.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlsafe.core.errors import ConfigError
from vlsafe.evals.judges.base import JUDGES, Judge, Verdict
from vlsafe.evals.judges.cache import JudgeCache, request_key
from vlsafe.evals.judges.rubrics import RUBRICS, Rubric

logger = logging.getLogger(__name__)

__all__ = ["HTTPJudge", "JudgeRequestError"]

_RETRY_STATUS = {408, 409, 425, 429}


class JudgeRequestError(RuntimeError):
    """A judge request failed after all retries (or with a non-retryable status)."""


class HTTPJudge(Judge):
    """LLM judge behind an OpenAI-compatible endpoint.

    Args:
        base_url: e.g. ``"http://127.0.0.1:8000/v1"`` (``/chat/completions`` is appended).
        model: model name sent in the request.
        rubric: a name in ``RUBRICS`` or a :class:`Rubric`.
        api_key_env: name of the environment variable holding the API key; ``None`` sends none.
        cache_path: sqlite cache file; ``None`` disables caching.
        max_workers: concurrent requests.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt.
        backoff_s: first backoff delay; doubles each retry.
        max_backoff_s: cap on one delay.
        temperature, max_tokens: sampling parameters sent with every request.
    """

    name = "http"
    version = "1"

    def __init__(
        self,
        base_url: str,
        model: str,
        rubric: str | Rubric = "mm-safetybench",
        api_key_env: str | None = None,
        cache_path: str | Path | None = None,
        max_workers: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"http judge base_url={base_url!r} must start with http:// or https://")
        if max_workers < 1 or max_retries < 0 or timeout_s <= 0:
            raise ConfigError(
                f"http judge needs max_workers>=1, max_retries>=0, timeout_s>0; got {max_workers}, "
                f"{max_retries}, {timeout_s}"
            )
        self.rubric = RUBRICS.get(rubric) if isinstance(rubric, str) else rubric
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.cache = JudgeCache(cache_path) if cache_path is not None else None
        self.max_workers = max_workers
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.version = f"2+{self.rubric.name}-{self.rubric.version}"
        self.prompt_hash = self.rubric.prompt_hash
        self.n_requests = 0  # HTTP attempts made (for tests and logs)
        self._count_lock = threading.Lock()

    def identity_fields(self) -> dict[str, Any]:
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")  # credentials in the URL are no identity
        return {
            "kind": "openai-chat",
            "model": self.model,
            "url": urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
            "rubric": self.rubric.name,
            "rubric_version": self.rubric.version,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"http judge: environment variable {self.api_key_env!r} (api_key_env) is not set"
            )
        return key

    def _post(self, body: dict[str, Any], api_key: str | None) -> str:
        """POST with retries; returns the answer text or raises :class:`JudgeRequestError`."""
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            delay = min(self.backoff_s * (2**attempt), self.max_backoff_s)
            with self._count_lock:
                self.n_requests += 1
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                try:
                    content = payload["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    raise JudgeRequestError(
                        f"malformed response from {self.url}: {str(payload)[:200]}"
                    ) from None
                if not isinstance(content, str):
                    raise JudgeRequestError(f"response from {self.url} has no answer text: {str(payload)[:200]}")
                return content
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {self.url}"
                if exc.code not in _RETRY_STATUS and exc.code < 500:
                    raise JudgeRequestError(last) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = min(max(delay, float(retry_after)), self.max_backoff_s)
            except TimeoutError as exc:
                last = f"timeout after {self.timeout_s}s ({exc})"
            except urllib.error.URLError as exc:
                last = f"connection error: {exc.reason}"
            except http.client.HTTPException as exc:  # bad status line, connection dropped mid-answer, ...
                last = f"broken HTTP exchange with {self.url}: {type(exc).__name__}: {exc}"
            except OSError as exc:  # connection reset or refused below urllib
                last = f"connection error: {type(exc).__name__}: {exc}"
            except UnicodeDecodeError as exc:
                last = f"response body from {self.url} is not UTF-8 ({exc.reason} at byte {exc.start})"
            except json.JSONDecodeError as exc:
                last = f"invalid JSON from {self.url}: {exc}"
            if attempt < self.max_retries:
                logger.debug("judge request failed (%s); retry %d in %.2fs", last, attempt + 1, delay)
                time.sleep(delay)
        raise JudgeRequestError(f"{last} (after {self.max_retries + 1} attempts)")

    def _one(self, record: dict[str, Any], api_key: str | None) -> Verdict:
        body = {
            "model": self.model,
            "messages": self.rubric.messages(record),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        key = request_key({"url": self.url, **body})
        text = self.cache.get(key) if self.cache is not None else None
        cached = text is not None
        if text is None:
            try:
                text = self._post(body, api_key)
            except JudgeRequestError as exc:
                return self.verdict(record, error=f"judge request failed: {exc}")
        try:
            parsed = self.rubric.parse(text)
        except ValueError as exc:
            return self.verdict(record, error=f"unparseable judge answer: {exc}", raw=text)
        if self.cache is not None and not cached:
            self.cache.put(key, text)
        fields = {k: parsed.pop(k) for k in ("refused", "unsafe", "score") if k in parsed}
        return self.verdict(record, raw={"text": text, "cached": cached, **parsed}, **fields)

    def _judge_valid(self, records: list[dict[str, Any]]) -> list[Verdict]:
        api_key = self._api_key()
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            it = pool.map(lambda r: self._one(r, api_key), records)
            return list(tqdm(it, total=len(records), desc=f"judge {self.name}", disable=len(records) < 8))


JUDGES.register("http", HTTPJudge)
