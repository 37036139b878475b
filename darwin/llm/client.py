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
import time
from dataclasses import dataclass

import openai

from darwin.errors import LLMError, UserError
from darwin.llm.ledger import CostCapReached, Ledger
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
        # The run's ledger (in its store) when there is a run: the cap holds across children,
        # processes and resumes; else one of this client's own.
        self.ledger = ledger or Ledger(max_cost_usd=settings.max_cost_usd)
        self._client = openai.OpenAI(
            api_key=key,
            base_url=settings.url(),
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )
        # Learned once per run (kept in the ledger): a server that refused a JSON schema gets
        # the text protocol from then on.
        learned = self.ledger.structured() if settings.structured == "auto" else None
        self._json_ok = settings.structured != "text" and learned is not False

    @property
    def model(self) -> str:
        return self.settings.model

    def _cost(self, usage: Usage) -> None:
        price = self.settings.price()
        if price is None:
            usage.priced = False
            return
        usage.cost_usd = (usage.input_tokens * price[0] + usage.output_tokens * price[1]) / 1e6

    def _reservation(self, messages: list[dict]) -> float:
        """The most this call can cost: its prompt (about 3 characters a token, on the high
        side) and all of max_tokens, at the model's price (0 when it has none)."""
        price = self.settings.price()
        if price is None:
            return 0.0
        prompt = sum(len(str(m.get("content", ""))) for m in messages) / 3
        return (prompt * price[0] + self.settings.max_tokens * price[1]) / 1e6

    def complete(self, messages: list[dict], schema: dict | None = None) -> Completion:
        """One chat completion. With a schema, asks for JSON-schema output where the server
        supports it (falling back to plain text, once and for good, where it does not)."""
        try:
            token = self.ledger.reserve(self._reservation(messages))
        except CostCapReached as e:
            raise LLMError(LLMFailure.cost_cap, str(e)) from None
        try:
            completion = self._complete(messages, schema)
        except LLMError as e:
            self.ledger.release(token, e.kind.value)
            log.warning("LLM call failed (%s): %s", e.kind.value, e.detail[:200])
            raise
        except BaseException:
            self.ledger.release(token)
            raise
        u = completion.usage
        self.ledger.settle(token, u.input_tokens, u.output_tokens, u.cost_usd)
        return completion

    def _complete(self, messages: list[dict], schema: dict | None) -> Completion:
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
                self.ledger.learn_structured(False)
                return self._complete(messages, schema)
            raise _classify(exc) from None
        except Exception as exc:  # noqa: BLE001 - every transport problem becomes a typed error
            raise _classify(exc) from None
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
            raise LLMError(LLMFailure.malformed, f"unusable completion: {exc}") from None
        self._cost(usage)
        return Completion(text=text, usage=usage, structured=structured)
