"""OpenAI-compatible servers (``vllm serve``, an inference provider): one HTTP client, and the completion engine
that ``aha sample --endpoint`` generates with.

:class:`OpenAIClient` (on ``httpx2``, httpx's line, which huggingface_hub already brings):

- one ``httpx2.Client``: its connections are kept alive and reused, at most `concurrency` of them, which is also
  how many requests :meth:`OpenAIClient.post_many` has in flight;
- explicit timeouts: `connect_timeout` to open a connection, `read_timeout` for an answer;
- retries: a connection that fails (refused, reset, closed before answering, or not opened in time) and an
  answer of HTTP 429 or 5xx are retried, at most `retries` times, after ``backoff · 2^attempt`` seconds (at most
  :data:`MAX_BACKOFF`; a ``Retry-After`` header in seconds is honoured within that bound). A read timeout is not
  retried: the server took the request and would take as long again;
- every failure is one :class:`EndpointError` that names the URL and says what to do.

URLs: the client is given the API root (``http://127.0.0.1:8000/v1``; a URL without a path means its ``/v1``).
A request path is relative to it (``completions``), or with a leading slash relative to the server root, the
API root without its ``/v1`` (``/health``, vLLM's ``/collective_rpc``).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx2

from aha.data.prompts import render_prompt
from aha.rollout.engine import Prompt, request_seed
from aha.rollout.sampler import SamplingParams

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0  # seconds, the longest wait between two attempts
# failures of the connection, before an answer came: retried
CONNECT_ERRORS = (httpx2.ConnectError, httpx2.ConnectTimeout)  # no connection: the server is down or unreachable
BROKEN_ERRORS = (httpx2.NetworkError, httpx2.RemoteProtocolError)  # opened, then reset or closed without answer


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint could not be reached, or answered with an error or with nonsense. `url` is
    the request's URL, `status` the HTTP status when the server answered one."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def api_root(url: str, what: str = "--endpoint") -> str:
    """`url` as an API root: ``http(s)://host[:port][/path]`` without a trailing slash; no path means ``/v1``.
    A bad URL is a ValueError naming `what` (the option that gave it)."""
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{what} must be an http(s):// URL such as http://127.0.0.1:8000/v1, got {url!r}")
    url = url.rstrip("/")
    return url + "/v1" if parsed.path in ("", "/") else url


class OpenAIClient:
    """JSON over HTTP to one OpenAI-compatible server; see the module docstring. Close it (or use it as a context
    manager) to close its connections."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        retries: int = 3,
        backoff: float = 0.5,
        concurrency: int = 8,
        what: str = "--endpoint",
    ) -> None:
        self.api_url = api_root(url, what)
        self.server_url = self.api_url.removesuffix("/v1")
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not value > 0:
                raise ValueError(f"OpenAIClient {name} must be > 0 seconds, got {value}")
        if retries < 0 or backoff < 0:
            raise ValueError(f"OpenAIClient retries and backoff must be >= 0, got {retries} and {backoff}")
        if concurrency < 1:
            raise ValueError(f"OpenAIClient concurrency must be at least 1, got {concurrency}")
        self.read_timeout = float(read_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.concurrency = int(concurrency)
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx2.Client(
            headers=headers,
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=True,  # an API behind a redirecting proxy (307/308 keep the POST)
        )

    def url(self, path: str) -> str:
        """The URL of `path`: relative to the API root, or with a leading slash to the server root."""
        return f"{self.server_url}{path}" if path.startswith("/") else f"{self.api_url}/{path}"

    def get(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` as JSON; the decoded JSON answer ({} for an empty one)."""
        return self._request("POST", path, body)

    def post_many(self, path: str, bodies: list[dict[str, Any]]) -> list[Any]:
        """POST every body, at most `concurrency` at a time (a server such as vLLM batches the ones in flight);
        the answers in the order of `bodies`. The first failure is raised, and the requests not yet sent are not
        sent."""
        if len(bodies) <= 1:
            return [self.post(path, b) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            futures = [pool.submit(self.post, path, b) for b in bodies]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def wait_ready(self, timeout: float, path: str = "/health") -> None:
        """Poll `path` until it answers (a server may still be loading its model), for at most `timeout` seconds;
        then the last failure, as an EndpointError."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.1, deadline - time.monotonic())
            try:
                self._request("GET", path, None, retries=0, timeout=min(10.0, left))
                return
            except EndpointError as e:
                if time.monotonic() >= deadline:
                    raise EndpointError(
                        f"{e} (still failing after {timeout:g} s: start the server, or wait longer for it)",
                        url=e.url,
                        status=e.status,
                    ) from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ one request
    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request, retried as the module docstring says; `retries` and `timeout` (seconds, connect and read)
        override the client's."""
        url = self.url(path)
        retries = self.retries if retries is None else retries
        extra = {} if timeout is None else {"timeout": httpx2.Timeout(timeout)}
        for attempt in range(retries + 1):
            wait = self.backoff * 2**attempt
            try:
                resp = self._http.request(method, url, json=body, **extra)
            except CONNECT_ERRORS as e:
                failure = EndpointError(
                    f"{url}: cannot connect ({_reason(e)}); is the server running at {self.server_url}?", url=url
                )
            except BROKEN_ERRORS as e:
                failure = EndpointError(
                    f"{url}: the connection broke before an answer ({_reason(e)}); is the server crashing or "
                    "restarting? (see its log)",
                    url=url,
                )
            except httpx2.TimeoutException:
                seconds = timeout or self.read_timeout
                raise EndpointError(
                    f"{url}: no answer within {seconds:g} s; give the server more time (a longer read timeout) or "
                    "ask for fewer tokens",
                    url=url,
                ) from None
            except (httpx2.InvalidURL, httpx2.UnsupportedProtocol) as e:
                raise EndpointError(f"{url}: bad URL ({e})", url=url) from None
            except httpx2.TransportError as e:  # a write failure, a proxy error and the like
                raise EndpointError(f"{url}: {type(e).__name__}: {_reason(e)}", url=url) from None
            else:
                if resp.status_code < 400:
                    return _json(resp, url)
                failure = EndpointError(_http_error(resp, url, self.api_url), url=url, status=resp.status_code)
                if resp.status_code not in RETRY_STATUSES:
                    raise failure
                wait = _retry_after(resp, wait)
            if attempt < retries:
                time.sleep(min(wait, MAX_BACKOFF))
        if retries:
            raise EndpointError(f"{failure} (after {retries + 1} attempts)", url=url, status=failure.status)
        raise failure


def _reason(e: Exception) -> str:
    return str(e) or type(e).__name__


def _json(resp: httpx2.Response, url: str) -> Any:
    raw = resp.content
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise EndpointError(
            f"{url}: the answer is not JSON: {raw[:200]!r}; is this an OpenAI-compatible API?", url=url
        ) from None


def _http_error(resp: httpx2.Response, url: str, api_url: str) -> str:
    code = resp.status_code
    detail = resp.text.strip()[:500]
    msg = f"{url}: HTTP {code} {resp.reason_phrase}" + (f": {detail}" if detail else "")
    if code in (401, 403):
        return msg + "; check the API key"
    if code == 404:
        return msg + f"; is {api_url} the server's API root?"
    if code in RETRY_STATUSES:
        return msg + "; the server is overloaded or failing: try again later, or send fewer requests at once"
    return msg


def _retry_after(resp: httpx2.Response, default: float) -> float:
    """The server's ``Retry-After`` in seconds, when it sent one as a number."""
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return default


# ---------------------------------------------------------------------------------------- the engine
class EndpointEngine:
    """Completions from the model `model` behind an OpenAI-compatible API (``vllm serve``, an inference
    provider, ...), through `client`; a :class:`aha.rollout.engine.CompletionEngine`. The engine takes the client
    over: :meth:`close` closes it.

    With a local `tokenizer`, each prompt is rendered with its chat template, exactly as in-process sampling
    renders it, and sent to ``completions`` as token ids: the served model sees the same tokens as the local one
    (no server-side template, no second BOS), and the verifier knows whether the template pre-fills ``<think>``.
    Without one, the messages go to ``chat/completions`` and the server applies its own template. One request per
    prompt: ``n`` completions, ``seed`` = :func:`aha.rollout.engine.request_seed` (vLLM draws the j-th with that
    seed + j); greedy: one completion, used ``n`` times (vLLM refuses n > 1 when greedy). top_k, min_p and the
    repetition penalty are sent, as vLLM's extra fields, only when they are set: OpenAI's API has no such fields.
    """

    def __init__(self, client: OpenAIClient, model: str, tokenizer: Any = None) -> None:
        if not model:
            raise ValueError("--model: the endpoint needs the served model's name")
        self.client = client
        self.model = model
        self.tokenizer = tokenizer

    def complete(self, prompts: list[Prompt], n: int, params: SamplingParams, seed: int, start: int = 0) -> list[str]:
        chat = self.tokenizer is None
        path = "chat/completions" if chat else "completions"
        url = self.client.url(path)
        per_request = 1 if params.greedy else n
        common: dict[str, Any] = {
            "model": self.model,
            "n": per_request,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        unset = SamplingParams()
        for k in ("top_k", "min_p", "repetition_penalty"):
            if getattr(params, k) != getattr(unset, k):
                common[k] = getattr(params, k)
        bodies = []
        for i, prompt in enumerate(prompts):
            body = {**common, "seed": request_seed(seed, start + i, n)}
            if chat:
                body["messages"] = _as_messages(prompt)
            else:
                text = render_prompt(self.tokenizer, prompt)
                body["prompt"] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            bodies.append(body)
        out: list[str] = []
        for i, answer in enumerate(self.client.post_many(path, bodies)):
            try:
                choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
                texts = [c["message"]["content"] if chat else c["text"] for c in choices]
            except (KeyError, TypeError, AttributeError):
                raise EndpointError(
                    f"{url}: the answer has no choices[].{'message.content' if chat else 'text'}; is this an "
                    "OpenAI-compatible API?",
                    url=url,
                ) from None
            if len(texts) != per_request or not all(isinstance(t, str) for t in texts):
                raise EndpointError(
                    f"{url}: asked for {per_request} completions of prompt {i}, got {len(texts)}", url=url
                )
            out += texts * n if params.greedy else texts
        return out

    def close(self) -> None:
        self.client.close()


def _as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
