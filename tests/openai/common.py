"""What the SDK scripts share: how a check reports, and the tool they call."""

import sys


def check(cond, what):
    """Prints `ok: what`, or `FAILED: what` and exits non-zero."""
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


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
