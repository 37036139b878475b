"""The LLM client: the official `openai` package against OpenAI or any compatible server.

One retry layer only: the openai client's own (``max_retries``, exponential backoff on connection
errors, 408/409/429/5xx). Every call is measured (tokens, latency, model, estimated cost from the
price table) into a ledger, which also enforces the spending cap. Failures are typed
(:class:`LLMError`) so a run can count and log them instead of crashing. The API key lives only in
the client object: never in logs, records, prompts or sandboxes.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass, field

import openai

from darwin import errors
from darwin.errors import UserError
from darwin.settings import LLMSettings

log = logging.getLogger(__name__)


class LLMFailure(str, enum.Enum):
    unreachable = "unreachable"
    timeout = "timeout"
    auth = "auth"
    rate_limited = "rate_limited"
    server_error = "server_error"
    bad_request = "bad_request"
    malformed = "malformed"  # the HTTP answer was not a usable chat completion
    cost_cap = "cost_cap"


class LLMError(errors.LLMError):
    """One failed use of the LLM; ``kind`` is the typed reason a mutation records."""

    def __init__(self, kind: LLMFailure, detail: str):
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Usage:
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    priced: bool = True  # False when the model is missing from the price table


@dataclass
class Completion:
    text: str
    usage: Usage
    structured: bool  # answered under a JSON schema


@dataclass
class Ledger:
    """Running totals of one run's LLM traffic; thread-safe; enforces the spending cap."""

    max_cost_usd: float | None = None
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self) -> None:
        with self._lock:
            if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
                self.failures[LLMFailure.cost_cap.value] = (
                    self.failures.get(LLMFailure.cost_cap.value, 0) + 1
                )
                raise LLMError(
                    LLMFailure.cost_cap,
                    f"spending cap reached: ${self.cost_usd:.4f} of ${self.max_cost_usd:.4f} "
                    "(raise DARWIN_LLM__MAX_COST_USD to allow more)",
                )

    def add(self, usage: Usage) -> None:
        with self._lock:
            self.calls += 1
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            self.cost_usd += usage.cost_usd

    def fail(self, kind: LLMFailure) -> None:
        with self._lock:
            self.failures[kind.value] = self.failures.get(kind.value, 0) + 1
        log.warning("LLM call failed (%s); %d %s failure(s) so far", kind.value,
                    self.failures[kind.value], kind.value)

    def summary(self) -> dict:
        with self._lock:
            return {
                "calls": self.calls,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 6),
                "failures": dict(self.failures),
            }


def _classify(exc: Exception) -> LLMError:
    if isinstance(exc, openai.APITimeoutError):
        return LLMError(LLMFailure.timeout, "the server did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return LLMError(LLMFailure.unreachable, f"cannot reach the server: {exc}")
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return LLMError(LLMFailure.auth, "the server refused the API key (HTTP 401/403)")
    if isinstance(exc, openai.RateLimitError):
        return LLMError(LLMFailure.rate_limited, "rate limited (HTTP 429) after retries")
    if isinstance(exc, openai.InternalServerError):
        return LLMError(LLMFailure.server_error, f"server error (HTTP {exc.status_code})")
    if isinstance(exc, (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError)):
        return LLMError(LLMFailure.bad_request, f"request refused (HTTP {exc.status_code})")
    if isinstance(exc, openai.APIStatusError):
        return LLMError(LLMFailure.server_error, f"HTTP {exc.status_code}")
    return LLMError(LLMFailure.malformed, f"{type(exc).__name__}: {exc}")


class LLMClient:
    def __init__(self, settings: LLMSettings, ledger: Ledger | None = None):
        key = settings.key()
        if not key:
            raise UserError(
                "the openai mutator needs an API key: set OPENAI_API_KEY (or DARWIN_LLM__API_KEY); "
                "for a local OpenAI-compatible server also set OPENAI_BASE_URL"
            )
        self.settings = settings
        self.ledger = ledger or Ledger(max_cost_usd=settings.max_cost_usd)
        self._client = openai.OpenAI(
            api_key=key,
            base_url=settings.url(),
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )
        # Learned per client: a server that refused a JSON schema once gets the text protocol.
        self._json_ok = settings.structured != "text"

    @property
    def model(self) -> str:
        return self.settings.model

    def _cost(self, usage: Usage) -> None:
        price = self.settings.price()
        if price is None:
            usage.priced = False
            return
        usage.cost_usd = (usage.input_tokens * price[0] + usage.output_tokens * price[1]) / 1e6

    def complete(self, messages: list[dict], schema: dict | None = None) -> Completion:
        """One chat completion. With a schema, asks for JSON-schema output where the server
        supports it (falling back to plain text, once and for good, where it does not)."""
        self.ledger.check()
        structured = schema is not None and self._json_ok
        kwargs: dict = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
        }
        if structured:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": False},
            }
        started = time.monotonic()
        try:
            response = self._client.chat.completions.create(**kwargs)
        except openai.BadRequestError as exc:
            if structured and self.settings.structured == "auto":
                log.info("server refused a JSON schema (HTTP 400): using the text protocol")
                self._json_ok = False
                return self.complete(messages, schema)
            err = _classify(exc)
            self.ledger.fail(err.kind)
            raise err from None
        except Exception as exc:  # noqa: BLE001 - every transport problem becomes a typed error
            err = _classify(exc)
            self.ledger.fail(err.kind)
            raise err from None
        latency = time.monotonic() - started
        try:
            text = response.choices[0].message.content or ""
            u = response.usage
            usage = Usage(
                model=getattr(response, "model", None) or self.settings.model,
                input_tokens=int(getattr(u, "prompt_tokens", 0) or 0),
                output_tokens=int(getattr(u, "completion_tokens", 0) or 0),
                latency_s=latency,
            )
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            self.ledger.fail(LLMFailure.malformed)
            raise LLMError(LLMFailure.malformed, f"unusable completion: {exc}") from None
        self._cost(usage)
        self.ledger.add(usage)
        return Completion(text=text, usage=usage, structured=structured)
