"""Tool calling through the gateway's OpenAI-compatible API, with the real OpenAI Python SDK,
on a real model (Qwen2.5-Coder 0.5B: the Hermes tool format its chat template teaches).

Run by tests/tests/gateway/openai_tools.rs with a gateway and an agent serving the model:
    sdk_tools.py BASE_URL API_KEY
Each check asserts what a caller sees; the first failure exits non-zero with its reason.
"""

import json
import sys

from openai import OpenAI

BASE, KEY = sys.argv[1:3]
client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


# the model must call; its arguments follow the tool's schema
WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Oslo", "Lima"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}]
ASK = [{"role": "user", "content": "What is the weather in Oslo this week?"}]
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
print("all tool checks passed")
