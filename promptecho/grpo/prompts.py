"""Prompt sets: .txt (one per line), .jsonl (`prompt` or `caption` field), .csv (`prompt`/`caption` column or
the first column). Validation reports every empty, duplicate and over-long prompt with its line number."""
from __future__ import annotations

import csv
import json
import os
from typing import List, Tuple


class PromptSetError(ValueError):
    """The prompt file is unreadable or has invalid entries (the message lists them)."""


def _read_entries(path: str) -> List[Tuple[int, str]]:
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if ext == ".txt":
        return [(i, line.rstrip("\r")) for i, line in enumerate(text.split("\n"), 1)
                if not (line.strip() == "" and i == len(text.split("\n")))]
    if ext == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSetError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not any(k in obj for k in ("prompt", "caption")):
                raise PromptSetError(f"{path}:{i}: expected an object with a 'prompt' or 'caption' field")
            v = obj.get("prompt", obj.get("caption"))
            out.append((i, v if isinstance(v, str) else ""))
        return out
    if ext == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(k) for k in ("prompt", "caption") if k in header), None)
        start = 1 if col is not None else 0
        col = col or 0
        return [(i + 1, r[col] if len(r) > col else "") for i, r in enumerate(rows) if i >= start]
    raise PromptSetError(f"unsupported prompt file type {ext!r} (use .txt, .jsonl or .csv): {path}")


def load_prompts(path: str, max_chars: int = 4000, allow_duplicates: bool = False) -> List[str]:
    if not os.path.isfile(path):
        raise PromptSetError(f"prompt file not found: {path}")
    entries = _read_entries(path)
    problems, seen, out = [], {}, []
    for line, p in entries:
        s = p.strip()
        if not s:
            problems.append(f"line {line}: empty prompt")
        elif len(s) > max_chars:
            problems.append(f"line {line}: prompt has {len(s)} characters (limit {max_chars})")
        elif s in seen and not allow_duplicates:
            problems.append(f"line {line}: duplicate of line {seen[s]}")
        else:
            seen.setdefault(s, line)
            out.append(s)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise PromptSetError(f"{path}: {len(problems)} invalid prompt(s): {shown}")
    if not out:
        raise PromptSetError(f"{path}: no prompts")
    return out
