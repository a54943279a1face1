"""Tool calling through the gateway's OpenAI-compatible API, with the real OpenAI Python SDK,
on a real model (Qwen2.5-Coder 0.5B: the Hermes tool format its chat template teaches).

Run by tests/tests/gateway/openai_tools.rs with a gateway and an agent serving the model:
    sdk_tools.py BASE_URL API_KEY
Each check asserts what a caller sees; the first failure exits non-zero with its reason.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
from common import ASK, WEATHER, check
from openai import OpenAI

BASE, KEY = sys.argv[1:3]
client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)

# the model must call; its arguments follow the tool's schema
called = client.chat.completions.create(
    model="auto", messages=ASK, tools=WEATHER, tool_choice="required", parallel_tool_calls=False, max_tokens=64, temperature=0
)
msg = called.choices[0].message
check(called.choices[0].finish_reason == "tool_calls" and len(msg.tool_calls or []) == 1, f"one tool call ({called.choices[0].finish_reason}, {msg})")
call = msg.tool_calls[0]
args = json.loads(call.function.arguments)
check(call.function.name == "get_weather" and args["city"] in ("Oslo", "Lima") and 1 <= args["days"] <= 7, f"the call follows the schema ({call.function.name} {args})")
check(call.id.startswith("call_") and call.type == "function", f"an OpenAI call id ({call.id})")
# streamed: the deltas assemble into the same call
parts = {}
finish = None
for c in client.chat.completions.create(
    model="auto", messages=ASK, tools=WEATHER, tool_choice={"type": "function", "function": {"name": "get_weather"}},
    max_tokens=64, temperature=0, stream=True,
):
    if not c.choices:
        continue
    finish = c.choices[0].finish_reason or finish
    for d in c.choices[0].delta.tool_calls or []:
        p = parts.setdefault(d.index, {"name": "", "arguments": ""})
        p["name"] += d.function.name or ""
        p["arguments"] += d.function.arguments or ""
check(finish == "tool_calls" and list(parts) == [0], f"streamed: one call, finish {finish}")
check(parts[0]["name"] == call.function.name and json.loads(parts[0]["arguments"]) == args, f"streamed call equals the non-streamed one ({parts[0]})")
# the round trip: the call and its result go back, the model answers in text
answer = client.chat.completions.create(
    model="auto",
    messages=ASK + [msg.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}],
    tools=WEATHER, tool_choice="none", max_tokens=8, temperature=0,
)
check(answer.choices[0].finish_reason in ("stop", "length") and not answer.choices[0].message.tool_calls, f"a text answer after the tool result ({answer.choices[0].message.content!r})")

# auto: the model decides; a question the tool answers is asked so a call is likely, and
# whichever it does, a call is whole and valid and text is text
auto = client.chat.completions.create(model="auto", messages=ASK, tools=WEATHER, max_tokens=64, temperature=0)
m = auto.choices[0].message
if m.tool_calls:
    a = json.loads(m.tool_calls[0].function.arguments)
    check(auto.choices[0].finish_reason == "tool_calls" and a["city"] in ("Oslo", "Lima"), f"auto: a valid call ({a})")
else:
    check(isinstance(m.content, str) and "<tool_call>" not in m.content, f"auto: a text answer ({m.content!r})")

# structured output at scale: 20 schemas x 10 prompts, 8 at a time; every completed output
# validates against its schema (jsonschema, not the engine that produced it)
OBJ = {"type": "object", "additionalProperties": False}
SCHEMAS = [
    {**OBJ, "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]},
    {**OBJ, "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}}, "required": ["score"]},
    {**OBJ, "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string", "maxLength": 24}}, "required": ["city", "country"]},
    {**OBJ, "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3}}, "required": ["tags"]},
    {**OBJ, "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 40}}, "required": ["ok", "reason"]},
    {**OBJ, "properties": {"price": {"type": "number", "minimum": 0, "maximum": 1000}}, "required": ["price"]},
    {**OBJ, "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["sku", "qty"]},
    {**OBJ, "properties": {"person": {**OBJ, "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]}}, "required": ["person"]},
    {**OBJ, "properties": {"sentiment": {"enum": ["positive", "neutral", "negative"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["sentiment", "confidence"]},
    {**OBJ, "properties": {"steps": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 4}}, "required": ["steps"]},
    {**OBJ, "properties": {"kind": {"const": "event"}, "day": {"enum": ["mon", "tue", "wed", "thu", "fri"]}}, "required": ["kind", "day"]},
    {**OBJ, "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"enum": ["none"]}]}}, "required": ["value"]},
    {"$defs": {"pt": {**OBJ, "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}, "y": {"type": "integer", "minimum": -9, "maximum": 9}}, "required": ["x", "y"]}},
     **OBJ, "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}}, "required": ["a", "b"]},
    {**OBJ, "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 30}, "draft": {"type": "boolean"}}, "required": ["title"]},
    {**OBJ, "properties": {"items": {"type": "array", "maxItems": 2, "items": {**OBJ, "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}, "unit": {"enum": ["kg", "g"]}}, "required": ["n", "unit"]}}}, "required": ["items"]},
    {**OBJ, "properties": {"lang": {"enum": ["en", "de", "fr", "es"]}, "formal": {"type": "boolean"}}, "required": ["lang", "formal"]},
    {**OBJ, "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}}, "required": ["date"]},
    {**OBJ, "properties": {"priority": {"type": "integer", "minimum": 0, "maximum": 3}, "labels": {"type": "array", "items": {"enum": ["bug", "ui", "api"]}, "maxItems": 3}}, "required": ["priority", "labels"]},
    {**OBJ, "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.(com|org)$"}}, "required": ["email"]},
    {**OBJ, "properties": {"summary": {"type": "string", "maxLength": 60}, "words": {"type": "integer", "minimum": 0, "maximum": 50}}, "required": ["summary", "words"]},
]
PROMPTS = [
    "Is Paris the capital of France?",
    "Rate this review: 'The soup was cold but the staff were lovely.'",
    "Where is the Eiffel Tower?",
    "Tag this ticket: the login page crashes on Safari.",
    "Should we deploy on a Friday afternoon?",
    "Extract the order: three ABC-1234 at 4.50 each.",
    "Summarise: the meeting moved to Tuesday at 10.",
    "Who is Ada Lovelace?",
    "Convert 2 kilograms of flour into a list of items.",
    "Write an event for next Wednesday.",
]
assert len(SCHEMAS) == 20 and len(PROMPTS) == 10
for s in SCHEMAS:
    jsonschema.Draft202012Validator.check_schema(s)


def structured(job):
    i, schema, prompt = job
    r = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=96, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "strict": True, "schema": schema}},
    )
    return i, schema, r.choices[0].finish_reason, r.choices[0].message.content


jobs = [(i, s, p) for i, s in enumerate(SCHEMAS) for p in PROMPTS]
with ThreadPoolExecutor(max_workers=8) as pool:
    results = list(pool.map(structured, jobs))
completed = [(i, s, text) for i, s, finish, text in results if finish == "stop"]
for i, s, text in completed:
    try:
        jsonschema.validate(json.loads(text), s)
    except (ValueError, jsonschema.ValidationError) as e:
        check(False, f"schema {i}: {text!r} does not validate: {e}")
cut = [(i, text) for i, s, finish, text in results if finish != "stop"]
check(len(completed) >= 180, f"{len(completed)} of {len(results)} outputs completed and every one validates; cut by max_tokens: {cut[:3]}")
# a choice constraint returns exactly one of its options, whatever the prompt
OPTIONS = ["A", "B", "C", "D"]
for p in PROMPTS:
    r = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": p + " Answer A, B, C or D."}], max_tokens=4, temperature=0.8, seed=3,
        response_format={"type": "choice", "choice": OPTIONS},
    )
    check(r.choices[0].message.content in OPTIONS, f"choice: {r.choices[0].message.content!r}")
print("all tool checks passed")
