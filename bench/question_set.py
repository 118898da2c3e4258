"""What the retrieval benches share: their arguments and the answerable questions of a set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_QUESTIONS = Path(__file__).resolve().parent / "python311_questions.jsonl"


def parse_args(description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--questions", default=str(DEFAULT_QUESTIONS))
    parser.add_argument("--k", type=int, default=5)
    return parser.parse_args()


def answerable(path: str) -> list[dict]:
    """The questions of a kb_eval set that name the pages answering them."""
    return [q for q in map(json.loads, Path(path).read_text().splitlines()) if q["expected"]]
