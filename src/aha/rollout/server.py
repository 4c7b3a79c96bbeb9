"""A small JSON-over-HTTP client for OpenAI-compatible endpoints (``vllm serve``, ``aha sample --endpoint``):
every failure is one :class:`EndpointError` that names the URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint could not be reached, or answered with an error or with nonsense."""


def http_json(
    url: str, body: dict[str, Any] | None = None, *, timeout: float = 600.0, api_key: str | None = None
) -> Any:
    """POST `body` as JSON (GET when None) and return the decoded JSON answer ({} for an empty one).
    Every failure is one :class:`EndpointError` naming `url`."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace").strip()[:500]
        raise EndpointError(f"{url}: HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")) from None
    except urllib.error.URLError as e:
        raise EndpointError(f"{url}: cannot connect ({e.reason}); is the server running?") from None
    except (TimeoutError, OSError) as e:  # a read timeout, a reset connection
        raise EndpointError(f"{url}: {type(e).__name__}: {e}") from None
    except ValueError as e:  # urllib's "unknown url type" and the like
        raise EndpointError(f"{url}: bad URL ({e})") from None
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise EndpointError(f"{url}: the answer is not JSON: {raw[:200]!r}") from None


def check_base_url(url: str, what: str = "server_base_url") -> str:
    """``http(s)://host[:port][/v1]`` without a trailing slash or ``/v1`` (the API root)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or "://" == url[-3:]:
        raise ValueError(f"{what} must be an http(s):// URL such as http://127.0.0.1:8000, got {url!r}")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url
