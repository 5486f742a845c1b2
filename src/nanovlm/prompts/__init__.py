"""Prompt templates shipped with the package, one file per version: `<name>-v<N>.txt`.

A prompt is never edited in place once used: a changed prompt is a new version, so cached answers and reports
name exactly the words that produced them. Templates use str.format fields ({captions}, {min_words}, ...).
"""
from __future__ import annotations

from importlib.resources import files


def load(name: str, version: str) -> str:
    """The text of prompts/<name>-<version>.txt, e.g. load("describe", "v1")."""
    path = files(__package__) / f"{name}-{version}.txt"
    if not path.is_file():
        available = sorted(p.name for p in files(__package__).iterdir() if p.name.endswith(".txt"))
        raise FileNotFoundError(f"no prompt {name}-{version}.txt in nanovlm/prompts; have {', '.join(available)}")
    return path.read_text(encoding="utf-8").strip()
