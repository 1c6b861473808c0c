"""Request bodies of the OpenAI-compatible endpoints, as pydantic models.

Unknown fields are ignored, as OpenAI's own server does, so clients that send newer fields keep
working. Fields that change what the reply means and that radixfair cannot honour (several
choices, log-probabilities, tools, penalties...) are refused by name unless they hold the value
that means "off": a client that asked for them must not get a reply that silently lacks them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from radixfair.errors import InvalidRequestError

# Field -> the values that ask for nothing radixfair lacks. Any other value is refused by name.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


class InvalidFieldError(InvalidRequestError):
    """A body field radixfair refuses; ``param`` names it, as OpenAI's error objects do."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _whole_unicode(text: str) -> str:
    # JSON lets a client write "\ud800", which decodes to a lone UTF-16 surrogate: no UTF-8 spells
    # it, so the protobuf message (and the tokenizer) cannot carry it. Refused here, by field name.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        where = error.start
        raise ValueError(f"holds a lone UTF-16 surrogate at character {where}, which is not text") from None
    return text


# Strict, as OpenAI's server is: "1" is not a number, "yes" not a boolean, true not a token id.
Text = Annotated[str, Field(strict=True), AfterValidator(_whole_unicode)]
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]

# The most characters of a refused value an error message repeats.
_SHOWN_CHARS = 80

# Chat roles a chat template renders; OpenAI's "developer" is its newer name for "system".
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: Bool = False


class _Sampling(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: Text = ""
    max_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    seed: Int | None = None
    stop: Text | list[Text] | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    # OpenAI's end-user id: a label for logs and traces here, never an identity (the key is).
    user: Text | None = None
    # radixfair's (and vLLM's) extension: keep generating past the end-of-sequence token (benchmarks).
    ignore_eos: Bool = False

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: Text


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Text
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: Int | None = None

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def turns(self) -> list[tuple[str, str]]:
        """(role, text) per message, in the roles the chat template knows."""
        turns = []
        for index, message in enumerate(self.messages):
            role = _ROLES.get(message.role)
            if role is None:
                raise InvalidRequestError(
                    f"messages[{index}].role {message.role!r} is not supported; "
                    f"use one of {', '.join(sorted(_ROLES))}"
                )
            turns.append((role, message.text()))
        return turns


class CompletionRequest(_Sampling):
    # One prompt: a string, its token ids, or a list holding one of those (OpenAI's batch shapes).
    prompt: Text | list[Int] | list[Text] | list[list[Int]]

    def single_prompt(self) -> str | list[int]:
        """The text or token ids of the one prompt; a batch of several is refused by name."""
        prompt = self.prompt
        if not prompt:
            raise InvalidRequestError("prompt is empty")
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return prompt  # type: ignore[return-value]
        if len(prompt) != 1:
            raise InvalidRequestError(
                f"prompt: one prompt per request is supported, got a batch of {len(prompt)}"
            )
        return prompt[0]  # type: ignore[return-value]


_Body = TypeVar("_Body", bound=_Sampling)


def parse_body(model: type[_Body], body: Any) -> _Body:
    """The request model of a decoded JSON body; InvalidRequestError naming the offending field."""
    if not isinstance(body, dict):
        raise InvalidRequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    _refuse_unsupported(body)
    try:
        return model.model_validate(body)
    except ValidationError as error:
        where = error.errors()[0]["loc"] if error.error_count() else ()
        param = where[0] if where and isinstance(where[0], str) else None
        raise InvalidFieldError(_describe(error), param) from None


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in _UNSUPPORTED.items():
        value = body.get(name)
        # Compared with the type too: True == 1, but n=true is not a count.
        if value is None or any(value == ok and type(value) is type(ok) for ok in neutral):
            continue
        allowed = [repr(ok) for ok in neutral if ok is not None]
        also = f" or set it to {' or '.join(allowed)}" if allowed else ""
        raise InvalidFieldError(
            f"{name}={_shown(value)} is not supported by radixfair; leave {name} unset{also}", name
        )


def _shown(value: Any) -> str:
    # The value echoed back is cut short: a body of up to megabytes must not come back as the error.
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:3]:
        where = ".".join(_readable(str(part)) for part in item["loc"]) or "body"
        problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def _readable(part: str) -> str:
    # pydantic names a union member checked by a validator "function-after[_whole_unicode(), str]":
    # the caller sent JSON, so the type it had to be ("str") is what tells them something.
    return _VALIDATED_MEMBER.sub(r"\1", part)


_VALIDATED_MEMBER = re.compile(r"function-after\[[^,\]]*, ([^\]]*)\]")
