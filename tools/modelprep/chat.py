"""A generate model's chat template, as model.toml declares it and the agent renders it
(agent/src/models/mod.rs): each turn is `message` with {role} and {content} filled in, the
template's `default_system` first when no system turn is given, then `generation_prompt`.
Standard library only: bench/reference.py runs it in the llama.cpp virtualenv too."""
from __future__ import annotations

import os
import tomllib

# The ChatML template the shipped models and a ChatML GGUF's import declare.
CHATML = {"message": "<|im_start|>{role}\n{content}<|im_end|>\n",
          "generation_prompt": "<|im_start|>assistant\n"}


def template_of(folder: str) -> dict | None:
    """`[generate.chat_template]` of the model folder, or None (a prompt-only model)."""
    with open(os.path.join(folder, "model.toml"), "rb") as fh:
        manifest = tomllib.load(fh)
    return manifest.get("generate", {}).get("chat_template")


def render(template: dict | None, turns: list[tuple[str, str]]) -> str:
    """The prompt text for (role, content) turns; without a template, the user turns' text."""
    if not template:
        return "".join(content for role, content in turns if role == "user")

    def turn(role: str, content: str) -> str:
        return template["message"].replace("{role}", role).replace("{content}", content)

    out = ""
    if template.get("default_system") and not any(role == "system" for role, _ in turns):
        out += turn("system", template["default_system"])
    for role, content in turns:
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"chat role `{role}` is not one of system, user, assistant")
        out += turn(role, content)
    return out + template["generation_prompt"]
