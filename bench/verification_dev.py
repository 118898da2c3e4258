"""Choose kb.verification's thresholds on labelled claim/sources pairs drawn from a manual.

No database: the pages go through kb's pure pipeline (readers, chunking) only. Pages are
split in two by a hash of their path: thresholds are chosen on the dev half and reported on
the held-out half, never tuned on it.

Each pair is a claim and three passages (the sources an answer would have):
- supported: a sentence of the first passage, verbatim, or its first two thirds (answers
  often state part of a sentence);
- other page: a sentence of another page of the manual (not in any of the three passages);
- same page: a sentence of another passage of the same page (the hard case: on topic, not said);
- changed: a sentence of the first passage with one number or one code name altered.

Usage (the manual as laid out for kb_eval, docs/benchmarks.md):
    .venv/bin/python bench/verification_dev.py var/pydoc [--pairs 300] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

import django  # noqa: E402

django.setup()

from ingestion.pipeline import parse_and_chunk  # noqa: E402
from kb import verification as v  # noqa: E402


def passages(root: Path) -> dict[str, list[str]]:
    pages: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.html")):
        try:
            parsed = parse_and_chunk(path, source_path=str(path.relative_to(root)))
        except Exception:  # noqa: BLE001 - a page the readers refuse is simply not sampled
            continue
        texts = [c.text for c in parsed.chunks if len(c.text) > 200]
        if len(texts) >= 2:
            pages[str(path.relative_to(root))] = texts
    return pages


def claims_of(text: str) -> list[str]:
    return [s for s, code in v.split(text) if not code and 6 <= len(s.split()) <= 40 and not s.startswith("#")]


def changed(sentence: str, rng: random.Random) -> str | None:
    numbers = list(re.finditer(r"\b\d+\b", sentence))
    names = [m for m in re.finditer(r"\b[a-z]+_[a-z_]+\b|\b\w+\.\w+\b", sentence)]
    if numbers:
        m = rng.choice(numbers)
        return sentence[: m.start()] + str(int(m.group(0)) + 7) + sentence[m.end() :]
    if names:
        m = rng.choice(names)
        return sentence[: m.start()] + m.group(0) + "_ex" + sentence[m.end() :]
    return None


def make_pairs(pages: dict[str, list[str]], n: int, seed: int) -> list[tuple[str, list[str], bool, str]]:
    rng = random.Random(seed)
    names = sorted(pages)
    out: list[tuple[str, list[str], bool, str]] = []
    while len(out) < n:
        page = rng.choice(names)
        first = rng.choice(pages[page])
        others = [rng.choice(pages[rng.choice(names)]) for _ in range(2)]
        sources = [first, *others]
        own = claims_of(first)
        if not own:
            continue
        kind = rng.choice(["verbatim", "part", "other page", "same page", "changed"])
        claim, label = None, kind in ("verbatim", "part")
        if kind == "verbatim":
            claim = rng.choice(own)
        elif kind == "part":
            words = rng.choice(own).split()
            claim = " ".join(words[: max(5, len(words) * 2 // 3)]) + "."
        elif kind == "other page":
            claim = rng.choice(claims_of(rng.choice(pages[rng.choice(names)])) or [None])
        elif kind == "same page":
            rest = [t for t in pages[page] if t is not first and t not in others]
            claim = rng.choice(claims_of(rng.choice(rest)) or [None]) if rest else None
        else:
            claim = changed(rng.choice(own), rng)
        if claim is None or (not label and any(claim in s for s in sources)):
            continue
        out.append((claim, sources, label, kind))
    return out


def features(pairs):
    """Per pair: (best cosine per source, content-word overlap per source, unknown identifiers)."""
    rows = []
    for claim, sources, label, kind in pairs:
        numbered = [{"n": i + 1, "text": t} for i, t in enumerate(sources)]
        evidence = v.Evidence.of(numbered, v.embed)
        vector = v._unit(v.embed([claim]))[0]
        scores, _ = evidence.best(vector)
        words = v.content_words(claim)
        overlaps = [len(words & w) / max(len(words), 1) for w in evidence.words]
        unknown = [x for x in v.identifiers(claim) if not v._found(x, evidence)]
        rows.append((scores, overlaps, unknown, label, kind))
    return rows


def decide(row, cos: float, cos_words: float, words: float) -> bool:
    scores, overlaps, unknown, _, _ = row
    backed = any(c >= cos or (c >= cos_words and o >= words) for c, o in zip(scores, overlaps, strict=True))
    return backed and not unknown


def score(rows, cos, cos_words, words) -> dict:
    tp = sum(1 for r in rows if r[3] and decide(r, cos, cos_words, words))
    fp = sum(1 for r in rows if not r[3] and decide(r, cos, cos_words, words))
    pos = sum(1 for r in rows if r[3])
    neg = len(rows) - pos
    by_kind = {}
    for kind in ("verbatim", "part", "other page", "same page", "changed"):
        of_kind = [r for r in rows if r[4] == kind]
        if of_kind:
            by_kind[kind] = round(sum(1 for r in of_kind if decide(r, cos, cos_words, words)) / len(of_kind), 3)
    return {"recall": round(tp / max(pos, 1), 3), "false_support": round(fp / max(neg, 1), 3), "vouched": by_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--pairs", type=int, default=300, help="pairs per half")
    parser.add_argument("--max-false-support", type=float, default=0.05)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.root.is_dir():
        parser.error(f"{args.root}: no such folder. Lay out the manual first (docs/benchmarks.md, 'To rebuild').")
    pages = passages(args.root)
    odd = sum(1 for p in pages if int(hashlib.sha256(p.encode()).hexdigest(), 16) % 2)
    if min(odd, len(pages) - odd) < 2:
        parser.error(f"{args.root}: too few readable HTML pages (with two passages each) for two halves of pairs.")
    half = {p: int(hashlib.sha256(p.encode()).hexdigest(), 16) % 2 for p in pages}
    dev = features(make_pairs({p: t for p, t in pages.items() if half[p] == 0}, args.pairs, seed=1))
    held = features(make_pairs({p: t for p, t in pages.items() if half[p] == 1}, args.pairs, seed=2))
    grid = itertools.product([x / 100 for x in range(50, 86, 2)], [x / 100 for x in range(35, 61, 5)],
                             [x / 10 for x in range(4, 9)])  # fmt: skip
    # Most claims vouched for, among the settings that vouch for few false ones on the dev half.
    allowed = [g for g in grid if score(dev, *g)["false_support"] <= args.max_false_support]
    if not allowed:
        sys.exit(f"No thresholds in the grid keep false support at or under {args.max_false_support} on the dev half.")
    best = max(allowed, key=lambda g: (score(dev, *g)["recall"], -score(dev, *g)["false_support"]))
    current = (v.SUPPORT_COSINE, v.SUPPORT_COSINE_WITH_WORDS, v.SUPPORT_WORDS)
    result = {
        "pages": len(pages),
        "pairs_per_half": args.pairs,
        "chosen": {"cosine": best[0], "cosine_with_words": best[1], "words": best[2]},
        "dev": score(dev, *best),
        "heldout": score(held, *best),
        "current": {"thresholds": current, "dev": score(dev, *current), "heldout": score(held, *current)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
