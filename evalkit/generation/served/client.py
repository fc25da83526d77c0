"""HTTP to an OpenAI-compatible server: retries with backoff, a cap on a reply's size, one-line errors.

evalkit speaks the protocol with httpx rather than the ``openai`` package: it must control every
field of a request (``top_k``, ``min_p`` and the other knobs outside the OpenAI schema go in the body
as they are), run its own bounded retries (429 and 5xx with ``Retry-After`` honoured, dropped
connections, timeouts, garbled replies), cap how much of a reply it reads, and keep the raw reply
(logprobs, ``system_fingerprint``). httpx does exactly that and is already installed with
huggingface_hub.

The API key is only ever put in the ``Authorization`` header: no message of this module contains
it, and any copy of it in a server's reply (generated text included) is masked before the reply is stored or
quoted; a key under 8 characters is a placeholder (EMPTY), not a secret, and is masked nowhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import math
import random
import time
from contextlib import aclosing
from dataclasses import dataclass, field

from evalkit.errors import EvalkitError, Stopped

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 600.0  # the longest exponential backoff (a Retry-After is capped at timeout_s)


class ServerError(EvalkitError):
    """The server failed a request for good (after retries, or a refusal that no retry can change)."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after: float | None = None  # seconds, from the reply's Retry-After header
        self.detail: str | None = None  # the server's own words (key masked)


# A key shorter than this is a placeholder, not a secret (vLLM's users set EMPTY or dummy, llama.cpp's examples
# no-key): it is masked nowhere, since masking it would change the model's words. A key this long or longer is masked
# everywhere, generated text included (see Endpoint.scrub).
SECRET_LENGTH = 8


class SampleFailed(ServerError, Stopped):
    """A sample's request failed for good during a run: the run stops as an interrupted one (exit code 130) with
    the resume hint, and keeps the samples it made."""


@dataclass
class Endpoint:
    base_url: str
    api_key: str | None = field(repr=False)
    timeout_s: float
    max_retries: int
    backoff_s: float

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "evalkit"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def listed_models(self) -> list[dict]:
        """The entries of the server's GET /models (one request, no retry); ServerError where it fails."""
        async def get():
            async with self.client(1) as client:
                return await self.call(client, "GET", "/models", retries=0)

        data = run_async(get())
        return [m for m in data.get("data", []) if isinstance(m, dict)] if isinstance(data.get("data"), list) else []

    def client(self, connections: int):
        import httpx

        return httpx.AsyncClient(headers=self.headers(), timeout=httpx.Timeout(self.timeout_s),
                                 limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections),
                                 follow_redirects=False, trust_env=False)

    def scrub(self, value):
        """``value`` (a string, or a list or mapping of them, from a server's reply) with every copy of the
        API key masked: what a server says (its model listing, its errors, the generated text) is stored and
        shown, and a careless server may quote the key. A key under :data:`SECRET_LENGTH` characters is a
        placeholder (EMPTY, dummy), not a secret, and is left alone: masking it would change the model's words."""
        if isinstance(value, str):
            if not self.api_key or len(self.api_key) < SECRET_LENGTH:
                return value
            return value.replace(self.api_key, "***")
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def masked(self, text: str, limit: int = 200) -> str:
        """``text`` with the API key masked, squeezed to one line of at most ``limit`` characters."""
        text = " ".join(self.scrub(text).split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def retry_wait(self, e: ServerError) -> float:
        """The wait a reply's Retry-After asks for, capped at ``timeout_s``: a server asking for a day would hold the
        run that long with nothing on screen."""
        return min(e.retry_after or 0.0, self.timeout_s)

    async def call(self, client, method: str, path: str, body: dict | None = None, *, max_bytes: int = 8 << 20,
                   retries: int | None = None, on_retry=None, once: frozenset[int] = frozenset(),
                   parse=None) -> dict:
        """The JSON reply of one request (``parse(data)`` of it, when given), retried on transient failures:
        429 and 5xx replies, dropped connections, timeouts, replies that are not JSON or that ``parse``
        refuses. Statuses in ``once`` are retried at most once (a refusal some servers send as a 500).
        Waits grow exponentially from ``backoff_s`` (a Retry-After header can ask for longer, up to ``timeout_s``);
        ``on_retry(error, wait)`` is told of each. Raises :class:`ServerError`."""
        retries = self.max_retries if retries is None else retries
        attempt = 0
        while True:
            try:
                data = await asyncio.wait_for(self._once(client, method, path, body, max_bytes), self.timeout_s)
                return parse(data) if parse is not None else data
            except (ServerError, asyncio.TimeoutError) as e:
                if isinstance(e, asyncio.TimeoutError):
                    e = ServerError(f"no reply from {self.base_url}{path} within {self.timeout_s:g} s "
                                    "(model.timeout_s)", retryable=True)
                if not e.retryable or attempt >= retries or (e.status in once and attempt >= 1):
                    if attempt:
                        raise ServerError(f"{e} (after {attempt} retr{'y' if attempt == 1 else 'ies'})", e.status)
                    raise e
                wait = max(min(self.backoff_s * 2 ** attempt, MAX_RETRY_AFTER_S), self.retry_wait(e))
                wait *= 1 + 0.1 * random.random()  # jitter: not all at once
                attempt += 1
                if on_retry is not None:
                    on_retry(e, wait)
                await asyncio.sleep(wait)

    async def _once(self, client, method: str, path: str, body: dict | None, max_bytes: int) -> dict:
        import httpx

        url = self.base_url + path
        try:
            async with client.stream(method, url, json=body) as response, aclosing(response.aiter_bytes()) as body_:
                chunks, size = [], 0
                async for chunk in body_:  # closed here when a reply is cut off, not left to the garbage collector
                    size += len(chunk)
                    if size > max_bytes:
                        raise ServerError(f"the reply to {method} {url} is larger than {max_bytes >> 20} MiB; "
                                          "evalkit stops reading it", response.status_code)
                    chunks.append(chunk)
                raw = b"".join(chunks)
        except httpx.RequestError as e:
            what = {httpx.ConnectError: "connection refused or host unreachable",
                    httpx.ConnectTimeout: "connection timed out"}.get(type(e),
                                                                      f"connection dropped ({type(e).__name__})")
            if isinstance(e, httpx.DecodingError):
                what = "the reply could not be decoded"
            raise ServerError(f"cannot reach {url}: {what}", retryable=True) from None
        status = response.status_code
        if 300 <= status < 400:
            location = self.masked(response.headers.get("location", "nowhere"), 120)
            raise ServerError(f"{method} {url} was redirected ({status}) to {location}: set base_url to where "
                              "the API is", status)
        if status >= 400:
            detail = self.masked(_error_text(raw), 300) if raw.strip() else None
            error = ServerError(f"{method} {url} failed: {status} {response.reason_phrase}"
                                + (f": {detail}" if detail else ""), status,
                                retryable=status in RETRY_STATUS or status >= 500)
            error.detail = detail
            error.retry_after = _retry_after(response.headers.get("retry-after"))
            raise error
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            start = self.masked(raw.decode("utf-8", "replace"), 80)
            raise ServerError(f"the reply to {method} {url} is not JSON ({len(raw)} bytes: {start!r})", status,
                              retryable=True) from None
        if not isinstance(data, dict):
            raise ServerError(f"the reply to {method} {url} is JSON but not an object", status, retryable=True)
        return data


def run_async(coro):
    """Run ``coro`` to its end from synchronous code; where an event loop already runs in this thread (a
    notebook), in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _error_text(raw: bytes) -> str:
    """The message of an error reply: OpenAI's {"error": {"message": ...}}, FastAPI's {"detail": ...}, or the text
    (whole: the caller masks the key before cutting it short)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return err if isinstance(err, str) else json.dumps(err)
    return json.dumps(data)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay seconds or an HTTP date), as the server asked (the caller caps
    it: :meth:`Endpoint.retry_wait`); None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
