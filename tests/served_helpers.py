"""Real servers for the served-model tests, on 127.0.0.1 only: llama.cpp's server (llama-cpp-python)
serving the embedded SmolLM2 GGUF, and a small proxy in front of it that forwards every request
and, when a test's script says so, answers instead: 429 with Retry-After, 5xx, a dropped connection,
a reply that is not JSON, is cut short or is huge, a slow reply, a request with a field removed, or a
model listing that says another kind of server."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

MODEL_ALIAS = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_llama_cpp() -> None:
    """Skip without llama-cpp-python[server], unless EVALKIT_REQUIRE_SERVED=1 (CI), where it must be there.

    The import is tried in a child process: imported here, llama_cpp/_utils.py's two ``open(os.devnull)``
    files, never closed, would last until this process exits and print "ResourceWarning: unclosed file"."""
    done = subprocess.run([sys.executable, "-c", "import llama_cpp.server"], check=False, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        e = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if os.environ.get("EVALKIT_REQUIRE_SERVED") == "1":
            raise RuntimeError(f"EVALKIT_REQUIRE_SERVED=1 but llama-cpp-python[server] is missing: {e}")
        pytest.skip("llama-cpp-python[server] is not installed")


class LocalServer:
    """A server process on 127.0.0.1 with an API key (:meth:`command` says which): started, waited for until GET
    /models answers, always stopped; its output goes to ``log_dir``."""

    name = "server"

    def __init__(self, log_dir: Path, api_key: str, port: int | None = None):
        self.port = port or free_port()
        self.api_key = api_key
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 120.0, env: dict[str, str] | None = None):
        with open(self.log_dir / f"{self.name}-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "NO_PROXY": "*", **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_dir}")
            try:
                request = urllib.request.Request(self.base_url + "/models",
                                                 headers={"Authorization": f"Bearer {self.api_key}"})
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s; see {self.log_dir}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """As a crash: SIGKILL, no goodbye."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def complete(self, body: dict) -> dict:
        """One request straight to the server (what a test compares evalkit's samples with)."""
        request = urllib.request.Request(self.base_url + "/completions", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {self.api_key}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())


class LlamaServer(LocalServer):
    """``python -m llama_cpp.server`` serving the embedded SmolLM2 GGUF as ``smollm2``."""

    name = "llama-server"

    def __init__(self, log_dir: Path, api_key: str, port: int | None = None):
        from evalkit.generation.gguf import default_gguf_path

        super().__init__(log_dir, api_key, port)
        self.model = default_gguf_path()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", MODEL_ALIAS,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "1024", "--n_threads", "2",
                "--api_key", self.api_key]


class VLLMServer(LocalServer):
    """vLLM's OpenAI-compatible server (``vllm.entrypoints.openai.api_server``, from vLLM's environment) on a
    checkpoint directory, with the engine arguments evalkit's in-process vLLM backend gives its engine on a CPU."""

    name = "vllm-server"

    def __init__(self, log_dir: Path, api_key: str, checkpoint: str, served_name: str, seed: int,
                 max_model_len: int):
        super().__init__(log_dir, api_key)
        self.checkpoint, self.served_name, self.seed, self.max_model_len = checkpoint, served_name, seed, max_model_len

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.checkpoint,
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                "--api-key", self.api_key, "--dtype", "float32", "--seed", str(self.seed),
                "--max-model-len", str(self.max_model_len), "--no-enable-chunked-prefill", "--max-logprobs", "-1",
                "--logprobs-mode", "raw_logprobs", "--generation-config", "vllm"]


def leaked(reply: dict, credentials: str) -> bytes:
    """``reply`` with ``credentials`` in every field a server fills in itself: the model listing, the reported
    model and fingerprint, and the generated text."""
    for entry in reply.get("data") or []:
        entry["owned_by"] = f"owner {credentials}"
    if "choices" in reply:
        reply["model"] = f"{reply.get('model')} {credentials}"
        reply["system_fingerprint"] = f"fp {credentials}"
        for choice in reply["choices"]:
            if "text" in choice:
                choice["text"] += f" {credentials}"
    return json.dumps(reply).encode()


class InThreadServer:
    """An HTTP server in a thread of this process on 127.0.0.1, on a port of its own (:meth:`_serve` with the
    request handler), started and stopped as a context manager."""

    def _serve(self, handler, quiet: bool = False) -> None:
        """``quiet``: a handler's error is not printed (a client that hung up: evalkit cancelling requests after a
        failure, which is not news)."""
        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not quiet:
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FaultProxy(InThreadServer):
    """Forwards to ``upstream`` (host, port); ``script(n, method, path, body)`` may return an action for
    the n-th request (counted from 1): ("status", code, headers), "echo-key", "leak-key", "disconnect",
    "garbage", "truncated", "huge", "no-logprobs" (the reply without its logprobs), "empty" (an empty completion),
    ("slow", seconds), ("drop", field), ("reject", field), ("fingerprint",
    text) or ("owned_by", text): GET /models says the models are owned by ``text`` (as llama.cpp's server says
    "llamacpp" and vLLM's "vllm"). Every request is logged. With ``upstream_key`` the proxy takes any key and
    forwards with that one (so a test can give evalkit a key of its choosing)."""

    def __init__(self, upstream_port: int, script=None, upstream_key: str | None = None):
        self.upstream_port = upstream_port
        self.upstream_key = upstream_key
        self.script = script or (lambda n, method, path, body: None)
        self.log: list[tuple[int, str, str, dict | None, object]] = []
        self.times: dict[int, float] = {}  # request number -> when it arrived (time.monotonic)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def _handle(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with proxy.lock:
                    n = len(proxy.log) + 1
                    action = proxy.script(n, method, self.path, body)
                    proxy.log.append((n, method, self.path, body, action))
                    proxy.times[n] = time.monotonic()
                kind = action[0] if isinstance(action, tuple) else action
                if kind == "status":
                    _, code, headers = action
                    self._reply(code, json.dumps({"error": {"message": f"injected {code}"}}).encode(), headers)
                elif kind == "echo-key":  # a careless server that quotes the credentials it refuses
                    got = self.headers.get("Authorization", "")
                    self._reply(401, json.dumps({"error": {"message": f"invalid credentials: {got}"}}).encode())
                elif kind == "disconnect":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif kind == "garbage":
                    self._reply(200, b"<html>502 proxy trouble</html>", {"Content-Type": "text/html"})
                elif kind == "huge":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(256 << 20))
                    self.end_headers()
                    try:
                        chunk = b"x" * (1 << 20)
                        for _ in range(256):
                            self.wfile.write(chunk)
                    except OSError:
                        pass
                    self.close_connection = True
                else:
                    if kind == "slow":
                        time.sleep(action[1])
                    if kind == "drop":
                        body = {k: v for k, v in body.items() if k != action[1]}
                    if kind == "reject" and body and action[1] in body:
                        self._reply(400, json.dumps({"error": {"message": f"unknown field {action[1]}"}}).encode())
                        return
                    status, headers, payload = proxy.forward(method, self.path, body, self.headers)
                    if kind == "leak-key" and status == 200:  # a server that quotes the credentials in its replies
                        payload = leaked(json.loads(payload), self.headers.get("Authorization", ""))
                    if kind == "empty" and status == 200 and method == "POST":
                        reply = json.loads(payload)
                        reply["choices"] = [{**c, "text": "", "logprobs": None, "finish_reason": "stop"}
                                            for c in reply["choices"]]
                        payload = json.dumps(reply).encode()
                    if kind == "no-logprobs" and status == 200 and method == "POST":
                        reply = json.loads(payload)
                        reply["choices"] = [{**c, "logprobs": None} for c in reply["choices"]]
                        payload = json.dumps(reply).encode()
                    if kind == "fingerprint" and status == 200 and method == "POST":  # as vLLM's and OpenAI's do
                        payload = json.dumps({**json.loads(payload), "system_fingerprint": action[1]}).encode()
                    if kind == "owned_by" and status == 200 and method == "GET":
                        listing = json.loads(payload)
                        listing["data"] = [{**m, "owned_by": action[1]} for m in listing["data"]]
                        payload = json.dumps(listing).encode()
                    if kind == "truncated":
                        self.send_response(status)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload[: len(payload) // 2])
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self._reply(status, payload, headers)

            def _reply(self, code: int, payload: bytes, headers: dict | None = None):
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._serve(Handler, quiet=True)

    def forward(self, method: str, path: str, body: dict | None, headers) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            send = {k: headers[k] for k in ("Authorization", "Content-Type") if headers.get(k)}
            if self.upstream_key is not None:
                send["Authorization"] = f"Bearer {self.upstream_key}"
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=send)
            r = conn.getresponse()
            return r.status, {"Content-Type": r.getheader("Content-Type", "application/json")}, r.read()
        except OSError:
            return 502, {}, json.dumps({"error": {"message": "upstream is down"}}).encode()
        finally:
            conn.close()

    def posts(self) -> list:
        return [entry for entry in self.log if entry[1] == "POST"]

class SamplingServer(InThreadServer):
    """A small OpenAI-compatible server on 127.0.0.1 that samples from a reference's logits (``reference``: an
    :class:`evalkit.conformance.core.Reference`, its forward pass cached) with a sampler of its own (numpy, written from
    llama.cpp's and vLLM's descriptions, not evalkit's transforms), and with one deliberate ``fault``:

    - ``top_p_one_more``: keeps one token too many at the top-p cut (where it keeps more than one);
    - ``temperature_last``: applies the temperature after top-k and top-p while its listing claims vLLM's order
      (temperature first; min-p stays after the temperature, so that the capability check's order probe passes);
    - ``ignores_seed``: one generator for every request, whatever its seed;
    - ``neighbours``: a seeded request's generator moved by the number of other requests in flight;
    - ``processed_logprobs``: reports the processed distribution's logprobs where its kind reports the raw model's.

    ``owned_by`` is what GET /models says (``me``: llama-cpp-python's server, order llama_cpp; ``vllm``: vLLM's).
    Replies use the completions format of llama-cpp-python (logprobs keyed by text), and vLLM's ``token_id:N`` when
    a request asks ``return_tokens_as_token_ids``; ``n`` choices come from one generator seeded once."""

    LLAMA_CPP = ("top_k", "top_p", "min_p", "temperature")
    VLLM = ("temperature", "min_p", "top_k", "top_p")
    FAULTS = ("top_p_one_more", "temperature_last", "ignores_seed", "neighbours", "processed_logprobs")

    def __init__(self, reference, fault: str | None = None, owned_by: str = "me"):
        import numpy as np

        assert fault is None or fault in self.FAULTS, fault
        self.reference, self.fault, self.owned_by = reference, fault, owned_by
        self.order = self.VLLM if owned_by == "vllm" else self.LLAMA_CPP
        if fault == "temperature_last":
            self.order = ("top_k", "top_p", "temperature", "min_p")
        self.lock = threading.Lock()  # the reference's forward pass is one at a time
        self.shared = np.random.default_rng(12345)  # unseeded requests (and every request, ignores_seed)
        self.in_flight = 0
        self.texts = reference.texts()
        self.bodies: list[dict] = []  # every request's body, in order of arrival
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                listing = {"object": "list", "data": [{"id": MODEL_ALIAS, "object": "model",
                                                       "owned_by": server.owned_by}]}
                self._reply(200, listing)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with server.lock:
                    server.in_flight += 1
                    server.bodies.append(body)
                try:
                    time.sleep(0.005)  # a request takes a while: others arrive meanwhile (what a batch is)
                    self._reply(200, server.complete(body))
                except Exception as e:  # noqa: BLE001 (the test reads the reply)
                    self._reply(500, {"error": {"message": f"{type(e).__name__}: {e}"}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _reply(self, code: int, data: dict):
                payload = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._serve(Handler)

    # ---------------------------------------------------------------- sampling

    def probabilities(self, logits, knobs: dict):
        """The distribution the server samples from: each knob in ``self.order`` (off at its neutral value)."""
        import numpy as np

        z = np.asarray(logits, dtype=np.float64).copy()
        t = float(knobs.get("temperature", 1.0))
        for stage in self.order:
            if stage == "temperature":
                z = z / t
            elif stage == "top_k" and int(knobs.get("top_k") or 0) > 0:
                k = int(knobs["top_k"])
                z[np.argsort(-z, kind="stable")[k:]] = -np.inf
            elif stage == "top_p" and float(knobs.get("top_p", 1.0)) < 1.0:
                p = np.exp(z - z.max())
                p /= p.sum()
                order = np.argsort(-p, kind="stable")
                keep = int(np.searchsorted(np.cumsum(p[order]), float(knobs["top_p"]))) + 1  # through the crossing
                keep += self.fault == "top_p_one_more" and keep > 1  # (one kept stays one: the probe's top-p)
                z[order[keep:]] = -np.inf
            elif stage == "min_p" and float(knobs.get("min_p") or 0.0) > 0:
                p = np.exp(z - z.max())
                z[p < float(knobs["min_p"])] = -np.inf
        p = np.exp(z - z.max())
        return p / p.sum()

    def generator(self, seed):
        import numpy as np

        if seed is None or self.fault == "ignores_seed":
            return self.shared
        if self.fault == "neighbours":
            with self.lock:
                others = self.in_flight - 1
            return np.random.default_rng(int(seed) + others)
        return np.random.default_rng(int(seed))

    def logits(self, tokens: tuple[int, ...]):
        with self.lock:
            return self.reference.logits(tokens)[0].double().numpy()

    def complete(self, body: dict) -> dict:
        import numpy as np

        rng = self.generator(body.get("seed"))
        prompt = self.reference.encode(body["prompt"])
        ids = bool(body.get("return_tokens_as_token_ids"))
        choices, counted = [], 0
        for index in range(int(body.get("n") or 1)):
            tokens, lps, tops, finish = [], [], [], "length"
            for _ in range(int(body.get("max_tokens") or 16)):
                z = self.logits(tuple(prompt) + tuple(tokens))
                raw = z - z.max() - np.log(np.exp(z - z.max()).sum())
                if float(body.get("temperature", 1.0)) == 0.0:
                    token, probs = int(np.argmax(z)), None
                else:
                    probs = self.probabilities(z, body)
                    token = int(rng.choice(len(probs), p=probs))
                processed = self.fault == "processed_logprobs" and probs is not None
                shown = np.log(np.maximum(probs, 1e-300)) if processed else raw
                if token in self.reference.eos_ids:
                    finish = "stop"
                    break
                tokens.append(token)
                key = (lambda i: f"token_id:{i}") if ids else (lambda i: self.texts[i])
                lps.append(float(shown[token]))
                best = [int(i) for i in np.argsort(-shown, kind="stable")[: int(body.get("logprobs") or 0)]]
                tops.append({key(i): float(shown[i]) for i in best if shown[i] > -600})
                tops[-1][key(token)] = float(shown[token])
            text = self.reference.decode(tokens) if tokens else ""
            logprobs = None
            if body.get("logprobs"):
                key = (lambda i: f"token_id:{i}") if ids else (lambda i: self.texts[i])
                logprobs = {"tokens": [key(t) for t in tokens], "token_logprobs": lps, "top_logprobs": tops,
                            "text_offset": list(range(len(tokens)))}
            choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
            counted = counted if index else len(tokens)
        return {"id": "cmpl-fault", "object": "text_completion", "model": MODEL_ALIAS, "choices": choices,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": counted}}
