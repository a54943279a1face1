"""The real OpenAI Python SDK against the gateway's OpenAI-compatible API.

Run by tests/tests/gateway/openai_api.rs with the gateway and an agent on the tiny fixtures already
up:  sdk_check.py BASE_URL API_KEY LOCAL_MODEL EXTERNAL_MODEL
Each check asserts what a caller sees; the first failure exits non-zero with its reason.
"""

import base64
import json
import struct
import sys
from typing import Literal

import openai
from common import ASK, WEATHER, check
from openai import OpenAI
from pydantic import BaseModel, Field

BASE, KEY, LOCAL_MODEL, EXTERNAL_MODEL = sys.argv[1:5]
client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=60)
HELLO = [{"role": "user", "content": "Hello, tiny LM!"}]


def refused(kind, call):
    try:
        call()
    except kind as e:
        return e
    except openai.APIStatusError as e:
        check(False, f"expected {kind.__name__}, got {type(e).__name__} {e.status_code}: {e.message}")
    check(False, f"expected {kind.__name__}, the call succeeded")


# chat, not streamed: greedy, so the streamed answer below must be the same text
raw = client.chat.completions.with_raw_response.create(
    model="auto", messages=HELLO, max_tokens=8, temperature=0, seed=1
)
reply = raw.parse()
text = reply.choices[0].message.content
check(isinstance(text, str) and text, f"a chat answer ({text!r})")
check(reply.model == LOCAL_MODEL, f"served by the local model ({reply.model})")
check(reply.usage.completion_tokens > 0, f"usage reported ({reply.usage})")
check(reply.choices[0].finish_reason in ("stop", "length"), "a finish reason")
check(raw.headers.get("x-edgewise-target", "").startswith("local:"), f"decision header {raw.headers.get('x-edgewise-target')}")
check(raw.headers.get("x-edgewise-decision-id"), "a decision id header")
extra = reply.model_extra or {}
check(extra.get("edgewise", {}).get("rule") == raw.headers.get("x-edgewise-rule"), "the body's decision matches the headers")

# the same request streamed, with usage at the end
chunks = list(
    client.chat.completions.create(
        model="auto",
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == text, f"streamed text equals the non-streamed text ({streamed!r})")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens, "usage in the last streamed chunk")
check(any(c.choices and c.choices[0].finish_reason for c in chunks), "a streamed finish reason")

# a route by name, and the route hint in the body's edgewise object
named = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=4, temperature=0)
check(named.model == LOCAL_MODEL, "model = a route name")

# embeddings, float and base64
floats = client.embeddings.create(model="auto", input=["red", "blue"], encoding_format="float")
check(len(floats.data) == 2 and len(floats.data[0].embedding) > 0, f"two embeddings of {len(floats.data[0].embedding)} dims")
check(floats.usage.prompt_tokens > 0, "embedding usage")
b64 = client.embeddings.create(model="auto", input="red", encoding_format="base64")
raw_b64 = b64.data[0].embedding
decoded = (
    list(struct.unpack(f"<{len(base64.b64decode(raw_b64)) // 4}f", base64.b64decode(raw_b64)))
    if isinstance(raw_b64, str)
    else raw_b64
)
check(max(abs(a - b) for a, b in zip(decoded, floats.data[0].embedding)) < 1e-6, "base64 decodes to the float vector")

# the models this tenant may ask for
ids = [m.id for m in client.models.list()]
check("auto" in ids and "chat" in ids and "encoders" in ids, f"models list {ids}")

# a hosted model where policy allows it: public data, a quality no local model has
ext = client.chat.completions.create(
    model="auto",
    messages=HELLO,
    max_tokens=16,
    extra_headers={"x-edgewise-data-class": "public", "x-edgewise-min-quality": "0.99"},
)
check(ext.model == EXTERNAL_MODEL and ext.choices[0].message.content, f"served by the hosted API ({ext.model})")

# structured output: a Pydantic model through the SDK's parse(), from the local model (its
# decode loop masks what the schema does not allow, so even random weights answer in shape)
class Pick(BaseModel):
    n: int = Field(ge=0, le=99)
    color: Literal["red", "green"]


# the schema parse() sends (OpenAI's strict form: no properties beyond these)
PICK_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "color": {"enum": ["red", "green"]}},
    "required": ["n", "color"],
    "additionalProperties": False,
}
parsed = client.chat.completions.parse(model="auto", messages=HELLO, response_format=Pick, max_tokens=48, temperature=0)
pick = parsed.choices[0].message.parsed
check(isinstance(pick, Pick) and parsed.model == LOCAL_MODEL, f"a parsed object from the local model ({pick!r})")
streamed = "".join(
    c.choices[0].delta.content or ""
    for c in client.chat.completions.create(
        model="auto", messages=HELLO, max_tokens=48, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "strict": True, "schema": PICK_SCHEMA}},
    )
    if c.choices
)
check(Pick.model_validate_json(streamed) is not None, f"the streamed structured answer validates ({streamed!r})")
# any JSON object: complete and an object, or cut off by max_tokens and said so
obj = client.chat.completions.create(model="auto", messages=HELLO, response_format={"type": "json_object"}, max_tokens=24, temperature=0)
choice = obj.choices[0]
check(
    choice.finish_reason == "length" or isinstance(json.loads(choice.message.content), dict),
    f"json_object: {choice.finish_reason} {choice.message.content!r}",
)
# this gateway's own kinds, for local models: one of a few strings, a regular expression
for seed in range(3):
    one = client.chat.completions.create(
        model="auto", messages=HELLO, max_tokens=8, temperature=1.0, seed=seed,
        response_format={"type": "choice", "choice": ["yes", "no", "not sure"]},
    )
    check(one.choices[0].message.content in ("yes", "no", "not sure"), f"a choice ({one.choices[0].message.content!r})")
rx = client.chat.completions.create(
    model="auto", messages=HELLO, max_tokens=12, temperature=0,
    response_format={"type": "regex", "regex": "[A-Z]{2}-[0-9]{4}"},
)
check(len(rx.choices[0].message.content) == 7 and rx.choices[0].message.content[2] == "-", f"a regex ({rx.choices[0].message.content!r})")
# the hosted model gets the schema in its own form (the mock answers with a matching object)
hosted = client.chat.completions.parse(
    model="auto", messages=HELLO, response_format=Pick, max_tokens=48,
    extra_headers={"x-edgewise-data-class": "public", "x-edgewise-min-quality": "0.99"},
)
check(hosted.model == EXTERNAL_MODEL and isinstance(hosted.choices[0].message.parsed, Pick), f"parsed from the hosted model ({hosted.choices[0].message.parsed!r})")
e = refused(
    openai.APIStatusError,
    lambda: client.chat.completions.create(
        model="auto", messages=HELLO, max_tokens=8,
        response_format={"type": "regex", "regex": "[a-z]+"},
        extra_headers={"x-edgewise-data-class": "public", "x-edgewise-min-quality": "0.99"},
    ),
)
check("has no form for a regular expression constraint" in e.message, f"{e.status_code}: {e.message}")
e = refused(
    openai.BadRequestError,
    lambda: client.chat.completions.create(
        model="auto", messages=HELLO,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "array", "uniqueItems": True}}},
    ),
)
check("`response_format.json_schema.schema`: `uniqueItems` at / is not supported" in e.message, f"400: {e.message}")

# tool calling: the round trip runs on the real Qwen model (tests/openai/sdk_tools.py); here,
# hosted APIs are not sent tools: a request no local model may serve is refused with why
e = refused(
    openai.APIStatusError,
    lambda: client.chat.completions.create(
        model="auto", messages=ASK, tools=WEATHER, max_tokens=8,
        extra_headers={"x-edgewise-data-class": "public", "x-edgewise-min-quality": "0.99"},
    ),
)
check("tool calling is served by local models only" in e.message, f"{e.status_code}: {e.message}")

# refusals, each with its reason
e = refused(openai.AuthenticationError, lambda: OpenAI(base_url=BASE, api_key="not-a-token", max_retries=0).chat.completions.create(model="auto", messages=HELLO))
check("bearer token" in e.message, f"401: {e.message}")
e = refused(
    openai.PermissionDeniedError,
    lambda: client.chat.completions.create(
        model="auto",
        messages=HELLO,
        extra_body={"edgewise": {"data_class": "confidential", "min_quality": 0.99}},
    ),
)
check("not permitted for confidential data" in e.message, f"403: {e.message}")
e = refused(
    openai.RateLimitError,
    lambda: client.chat.completions.create(
        model="auto",
        messages=HELLO,
        max_tokens=4000,
        extra_headers={"x-edgewise-data-class": "public", "x-edgewise-min-quality": "0.99"},
    ),
)
retry_after = int(e.response.headers.get("retry-after", "0"))
check(e.status_code == 429 and "daily budget" in e.message and 0 < retry_after <= 86400, f"budget: {e.status_code} retry after {retry_after} s: {e.message}")
e = refused(
    openai.BadRequestError,
    lambda: client.chat.completions.create(
        model="auto",
        messages=HELLO,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "g"}},
    ),
)
check("`tool_choice` names `g`, which is not one of `tools`" in e.message, f"400: {e.message}")
e = refused(openai.NotFoundError, lambda: client.chat.completions.create(model="gpt-5", messages=HELLO))
check("ask for one of: auto, chat" in e.message, f"404: {e.message}")
print("all SDK checks passed")
