"""The ``openai`` sampler: candidates from an OpenAI-compatible API (GPT-4o mini in the reference;
vLLM, llama.cpp's server, Ollama and others speak the same protocol), through the ``openai`` client.

Config (``funsearch.sampler``)::

    type: openai
    model: gpt-4o-mini
    base_url: null                # null: OpenAI; http://127.0.0.1:8000/v1 for a vLLM server, ...
    api_key_env: OPENAI_API_KEY   # the key is read from this environment variable, nowhere else
    api: chat                     # chat (chat completions) | completions (plain completions, base models)
    max_tokens: 150
    temperature: null             # null: the server's default
    top_p: null
    timeout_s: 60                 # per request
    max_retries: 6                # 429, 5xx, time-outs and dropped connections, with backoff
    backoff_s: 1.0                # first wait; doubles per retry (jittered), capped at backoff_max_s,
    backoff_max_s: 60             # or the server's Retry-After when it sends one
    price_input_per_m: 0.15       # USD per million tokens (gpt-4o-mini's prices), for cost_usd
    price_output_per_m: 0.60

``samples`` completions per task (``n``; servers that ignore ``n`` are asked again until there are
enough). The key is never accepted from a config or a payload; it stays out of logs, errors and
results (any text that would carry it has it replaced by ``***``).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

from eqflow.funsearch.samplers import SampleRequest, SampleResult, register

log = logging.getLogger("eqflow.funsearch.openai")

SYSTEM_PROMPT = (
    "You continue Python code. The user's message ends with the header of a function. Write the body "
    "of that function only: valid Python indented by four spaces, with no header, no markdown fences "
    "and no explanation. Keep it short."
)
_KNOWN = {"model", "base_url", "api_key_env", "api", "max_tokens", "temperature", "top_p", "timeout_s",
          "max_retries", "backoff_s", "backoff_max_s", "price_input_per_m", "price_output_per_m",
          "system_prompt", "samples_per_prompt"}
_SECRET_KEYS = {"api_key", "key", "openai_api_key", "token", "authorization"}


class SamplerError(RuntimeError):
    """The API did not give candidates (after retries, or an error not worth retrying)."""


class _Redactor:
    """Wraps the log record factory: once a key is known, every record's message (in any logger:
    openai's, httpx's, ours) has it replaced by ``***`` before a handler sees it."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.lock = threading.Lock()
        self.installed = False

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def add(self, secret: str) -> None:
        with self.lock:
            self.secrets.add(secret)
            if self.installed:
                return
            self.installed = True
            make_record = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = make_record(*args, **kwargs)
                try:
                    message = record.getMessage()
                except Exception:  # a bad format string stays the handler's problem
                    return record
                clean = self.redact(message)
                if clean != message:
                    record.msg, record.args = clean, None
                return record

            logging.setLogRecordFactory(factory)


_REDACTOR = _Redactor()


class OpenAISampler:
    name = "openai"

    def __init__(self, config: dict[str, Any]) -> None:
        secrets = {k for k in config if k.lower() in _SECRET_KEYS}
        if secrets:
            raise ValueError(f"openai sampler: {', '.join(sorted(secrets))} in the config: the API key is read "
                             f"from the environment only (api_key_env, default OPENAI_API_KEY), never from a file")
        unknown = set(config) - _KNOWN
        if unknown:
            raise ValueError(f"openai sampler: unknown parameter(s) {sorted(unknown)}; known: {sorted(_KNOWN)}")
        try:
            import openai
        except ImportError as exc:  # a core dependency, but say what is missing
            raise ImportError(f"the openai sampler needs the openai package: pip install openai ({exc})") from None
        self.openai = openai
        self.model = str(config.get("model", "gpt-4o-mini"))
        self.base_url = config.get("base_url")
        self.api = str(config.get("api", "chat"))
        if self.api not in ("chat", "completions"):
            raise ValueError(f"openai sampler: api must be chat or completions, got {self.api!r}")
        self.max_tokens = int(config.get("max_tokens", 150))
        self.temperature = config.get("temperature")
        self.top_p = config.get("top_p")
        self.timeout_s = float(config.get("timeout_s", 60.0))
        self.max_retries = int(config.get("max_retries", 6))
        self.backoff_s = float(config.get("backoff_s", 1.0))
        self.backoff_max_s = float(config.get("backoff_max_s", 60.0))
        self.price_in = float(config.get("price_input_per_m", 0.15))
        self.price_out = float(config.get("price_output_per_m", 0.60))
        self.system_prompt = str(config.get("system_prompt", SYSTEM_PROMPT))
        self.samples_per_prompt = config.get("samples_per_prompt")
        env = str(config.get("api_key_env", "OPENAI_API_KEY"))
        key = os.environ.get(env, "")
        if not key:
            if not self.base_url:
                raise ValueError(f"openai sampler: set ${env} to the API key (it is read from the environment only)")
            key = "unused"  # a local server without authentication still wants a bearer token
        else:
            _REDACTOR.add(key)
        self._key = key
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0)
        self.retries = 0  # retried requests over this sampler's life

    def __repr__(self) -> str:  # never the key
        return f"OpenAISampler(model={self.model!r}, base_url={self.base_url!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, request: SampleRequest) -> SampleResult:
        wanted = max(1, int(request.samples or self.samples_per_prompt or 2))
        started = time.perf_counter()
        bodies: list[str] = []
        tokens_in = tokens_out = 0
        for _ in range(wanted):  # a server that ignores n answers one at a time
            texts, used_in, used_out = self._ask(request, wanted - len(bodies))
            bodies += texts
            tokens_in += used_in
            tokens_out += used_out
            if len(bodies) >= wanted:
                break
        cost = tokens_in * self.price_in / 1e6 + tokens_out * self.price_out / 1e6
        return SampleResult(bodies=bodies[:wanted], tokens_in=tokens_in, tokens_out=tokens_out,
                            seconds=time.perf_counter() - started, cost_usd=cost, model=self.model)

    def _ask(self, request: SampleRequest, n: int) -> tuple[list[str], int, int]:
        response = self._with_retries(lambda: self._create(request, n))
        usage = getattr(response, "usage", None)
        used_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        used_out = int(getattr(usage, "completion_tokens", 0) or 0)
        if self.api == "chat":
            texts = [(c.message.content or "") for c in response.choices]
        else:
            texts = [(c.text or "") for c in response.choices]
        return texts, used_in, used_out

    def _create(self, request: SampleRequest, n: int) -> Any:
        options: dict[str, Any] = {"model": self.model, "n": n, "max_tokens": self.max_tokens}
        temperature = request.params.get("temperature", self.temperature)
        top_p = request.params.get("top_p", self.top_p)
        if temperature is not None:
            options["temperature"] = float(temperature)
        if top_p is not None:
            options["top_p"] = float(top_p)
        if self.api == "chat":
            messages: Any = [{"role": "system", "content": self.system_prompt},
                        {"role": "user", "content": request.prompt}]
            return self.client.chat.completions.create(messages=messages, **options)
        return self.client.completions.create(prompt=request.prompt, **options)

    def _with_retries(self, call: Any) -> Any:
        openai = self.openai
        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                     openai.APIConnectionError)
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except retryable as exc:
                if attempt == self.max_retries:
                    raise SamplerError(f"{self._describe(exc)} (gave up after {attempt + 1} tries)") from None
                delay = self._delay(exc, attempt)
                self.retries += 1
                log.warning("openai sampler: retrying", extra={
                    "model": self.model, "error": self._describe(exc), "try": attempt + 1, "wait_s": round(delay, 2)})
                time.sleep(delay)
            except openai.OpenAIError as exc:  # 400, 401, 404...: retrying would not help
                raise SamplerError(self._describe(exc)) from None
        raise AssertionError("unreachable")

    def _describe(self, exc: BaseException) -> str:
        status = getattr(exc, "status_code", None)
        kind = type(exc).__name__
        return self._redact(f"{kind}{f' (HTTP {status})' if status else ''}: {exc}")[:2000]

    def _delay(self, exc: BaseException, attempt: int) -> float:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        retry_after = headers.get("retry-after") if hasattr(headers, "get") else None
        if retry_after:
            try:
                return min(self.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        return base * (0.5 + random.random() / 2)


@register("openai")
def make_openai_sampler(config: dict[str, Any]) -> OpenAISampler:
    return OpenAISampler(config)
