"""Text that ships with slerpmerge (an original document for the demo) and the question asked about it."""

from __future__ import annotations

from importlib.resources import files

DEMO_QUESTION = "In which year was the lighthouse built, and when did it stop working?"


def long_document() -> str:
    """An original report of about 900 tokens about a fictional harbour town, written for slerpmerge."""
    return files("slerpmerge").joinpath("data/document.txt").read_text(encoding="utf-8")


def demo_prompt(document: str | None = None, question: str = DEMO_QUESTION) -> str:
    return f"Read this document and answer the question.\n\n{document or long_document()}\n\nQuestion: {question}"
