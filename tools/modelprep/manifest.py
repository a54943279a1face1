"""model.toml, the manifest the agent validates (written here, read by agent/src/models/manifest.rs)."""
from __future__ import annotations

import json
import os

import numpy as np


def toml_str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_str(x) for x in v) + "]"
    raise TypeError(type(v))


def write(folder: str, top: dict, sections: dict[str, dict]) -> None:
    lines = ["# Edgewise model manifest (written by tools/prepare_models.py)."]
    lines += [f"{k} = {toml_str(v)}" for k, v in top.items()]
    for name, table in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {toml_str(v)}" for k, v in table.items()]
    with open(os.path.join(folder, "model.toml"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
