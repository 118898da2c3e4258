"""Measure retrieval on a set of questions: hit@1, hit@k and MRR@k of each mode, and latency;
with --generate, the whole answer path (kb.management.generation_eval).

Each line of QUESTIONS is {"q": "...", "expected": ["source path", ...]}; a question with an
empty `expected` has no answer in the collection and counts only towards the no-answer
figures. Retrieval runs through kb.retrieval.search, as the product's, with the access of
--user (default: the operator).
"""

from __future__ import annotations

import json as jsonlib
import statistics
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from kb import abstention, answering, retrieval, verification
from kb.management.cli import actor_and_collections
from kb.management.generation_eval import evaluate_generation, print_generation

MODES = ("dense", "keyword", "hybrid")
STAGES = ("embed_ms", "dense_ms", "keyword_ms", "fuse_ms", "rerank_ms", "judge_ms", "total_ms")


def load_questions(path: Path) -> list[dict]:
    questions = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = jsonlib.loads(line)
            questions.append({"q": str(item["q"]), "expected": [str(e) for e in item.get("expected") or []]})
        except (ValueError, KeyError, TypeError) as exc:
            raise CommandError(f'{path}:{n}: expected {{"q": ..., "expected": [...]}} ({exc}).') from None
    if not questions:
        raise CommandError(f"{path}: no questions.")
    return questions


def _path(path: str) -> str:
    return path.split("#", 1)[0].strip().removeprefix("./").strip("/")


def same_source(source_path: str, expected: str) -> bool:
    """Whether a document is the expected source: the same path, or one ends the other at a folder.

    A set written against `library/os.html` still matches a collection ingested from one
    folder up (`html/library/os.html`), and an anchor (`os.html#os.environ`) is ignored.
    """
    a, b = _path(source_path), _path(expected)
    return bool(a and b) and (a == b or a.endswith("/" + b) or b.endswith("/" + a))


def first_relevant_rank(result: retrieval.Result, expected: list[str]) -> int | None:
    """1-based rank of the first passage from an expected source, or None."""
    for rank, hit in enumerate(result.hits, start=1):
        if any(same_source(hit.chunk.document.source_path, e) for e in expected):
            return rank
    return None


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def evaluate(*, user, questions: list[dict], collection_ids: list[int], k: int, modes=MODES) -> dict:
    """Figures per mode: hit@1, hit@k, MRR@k over answerable questions, no-answer counts, latency."""
    retrieval.search(user=user, query="warm-up", collection_ids=collection_ids, top_k=k)  # loads the model
    report: dict = {"k": k, "questions": len(questions), "modes": {}, "per_question": []}
    answerable = [q for q in questions if q["expected"]]
    unanswerable = [q for q in questions if not q["expected"]]
    for mode in modes:
        ranks: list[int | None] = []
        timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
        refused_answerable = refused_unanswerable = 0
        for item in questions:
            result = retrieval.search(user=user, query=item["q"], collection_ids=collection_ids, top_k=k, mode=mode)
            for stage in STAGES:
                timings[stage].append(getattr(result.timings, stage))
            if item["expected"]:
                rank = first_relevant_rank(result, item["expected"])
                ranks.append(rank)
                refused_answerable += not result.relevant
            else:
                rank = None
                refused_unanswerable += not result.relevant
            if mode == modes[-1]:
                report["per_question"].append({
                    "q": item["q"], "expected": item["expected"], "rank": rank, "relevant": result.relevant,
                    "best_similarity": result.best_similarity, "quote_score": _quote_score(item["q"], result),
                    **{key: value for key, value in result.evidence.as_json().items() if key != "similarity"},
                    "top": [h.chunk.document.source_path for h in result.hits],
                })  # fmt: skip
        n = max(1, len(ranks))
        report["modes"][mode] = {
            "hit@1": sum(1 for r in ranks if r == 1) / n,
            f"hit@{k}": sum(1 for r in ranks if r is not None) / n,
            f"mrr@{k}": sum(1 / r for r in ranks if r is not None) / n,
            "answerable": len(answerable),
            "unanswerable": len(unanswerable),
            "refused_unanswerable": refused_unanswerable,
            "refused_answerable": refused_answerable,
            "latency_ms": {
                stage: {"p50": percentile(values, 50), "p95": percentile(values, 95), "mean": statistics.fmean(values)}
                for stage, values in timings.items()
            },
        }
    return report


def _quote_score(question: str, result: retrieval.Result) -> float | None:
    """How well the best sentence of the passages the prompt would get answers the question (cosine)."""
    if not result.hits:
        return None
    sources = answering.fit_to_budget(answering.sources_of(result), settings.KB_CONTEXT_TOKENS)
    return verification.extract(question, sources, verification.embed)["score"]


class Command(BaseCommand):
    help = "Evaluate retrieval on QUESTIONS.jsonl: hit@1, hit@k, MRR@k per mode, and latency p50/p95."

    def add_arguments(self, parser):
        parser.add_argument("questions", metavar="QUESTIONS.jsonl")
        parser.add_argument("--collection", action="append", required=True, metavar="NAME")
        parser.add_argument("--k", type=int, default=5, help="passages retrieved per question (default 5)")
        parser.add_argument("--mode", action="append", choices=MODES, help="only these modes (default: all three)")
        parser.add_argument("--user", metavar="USERNAME", help="evaluate with this user's access (default: operator)")
        parser.add_argument("--json", action="store_true", help="print the figures and each question's ranks as JSON")
        parser.add_argument("--generate", action="store_true",
                            help="run the real answer path (KB_LLM_URL's model) and report what kb vouched for")
        parser.add_argument("--limit", type=int, default=None, metavar="N",
                            help="with --generate: N answerable (and N/5 unanswerable) questions")  # fmt: skip

    def handle(self, *args, questions, collection, k, mode, user, json: bool, generate: bool, limit, **options):
        if k < 1:
            raise CommandError("--k must be at least 1.")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1.")
        path = Path(questions)
        if not path.is_file():
            raise CommandError(f"{questions}: no such file.")
        actor, collections = actor_and_collections(username=user, names=collection)
        if generate:
            report = evaluate_generation(user=actor, questions=load_questions(path), collections=collections,
                                         limit=limit)  # fmt: skip
            if json:
                self.stdout.write(jsonlib.dumps(report, indent=2))
            else:
                print_generation(self.stdout.write, report)
            return
        report = evaluate(
            user=actor, questions=load_questions(path), collection_ids=[c.pk for c in collections], k=k,
            modes=tuple(mode or MODES),
        )  # fmt: skip
        if json:
            self.stdout.write(jsonlib.dumps(report, indent=2))
            return
        self._print(report, k)

    def _print(self, report: dict, k: int) -> None:
        first = next(iter(report["modes"].values()))
        self.stdout.write(
            f"{first['answerable']} answerable and {first['unanswerable']} unanswerable questions, k={k}, "
            f"RRF k={settings.KB_RRF_K}, weights dense {settings.KB_DENSE_WEIGHT} / keyword "
            f"{settings.KB_KEYWORD_WEIGHT}, min similarity {settings.KB_MIN_SIMILARITY}"
        )
        self.stdout.write(f"{'mode':<8} {'hit@1':>6} {f'hit@{k}':>6} {f'MRR@{k}':>6}  {'no-answer':>9}  "
                          f"{'false no-answer':>15}  {'p50 ms':>7} {'p95 ms':>7}")  # fmt: skip
        for mode, m in report["modes"].items():
            lat = m["latency_ms"]["total_ms"]
            self.stdout.write(
                f"{mode:<8} {m['hit@1']:>6.3f} {m[f'hit@{k}']:>6.3f} {m[f'mrr@{k}']:>6.3f}  "
                f"{m['refused_unanswerable']:>4}/{m['unanswerable']:<4}  "
                f"{m['refused_answerable']:>10}/{m['answerable']:<4}  "
                f"{lat['p50']:>7.1f} {lat['p95']:>7.1f}"
            )
        self._print_calibration(report)
        self._print_quote_calibration(report)
        self.stdout.write("\nRetrieval latency per stage, ms (p50 / p95):")
        for mode, m in report["modes"].items():
            parts = [f"{stage[:-3]} {m['latency_ms'][stage]['p50']:.1f} / {m['latency_ms'][stage]['p95']:.1f}"
                     for stage in STAGES]  # fmt: skip
            self.stdout.write(f"  {mode:<8} " + ", ".join(parts))

    def _print_quote_calibration(self, report: dict) -> None:
        """What refusing below a quote score would do (retrieval's own refusals counted in)."""
        rows = report["per_question"]
        if not any(q["quote_score"] is not None for q in rows):
            return
        self.stdout.write("\nquote score below  refuses unanswerable  refuses answerable   (with the other checks)")
        for step in range(0, 9):
            t = 0.30 + step * 0.025  # 0.30 ... 0.50
            refused = [not q["relevant"] or (q["quote_score"] or 0) < t for q in rows]
            unanswerable = sum(r for r, q in zip(refused, rows, strict=True) if not q["expected"])
            answerable = sum(r for r, q in zip(refused, rows, strict=True) if q["expected"])
            self.stdout.write(
                f"{t:>17.3f}  {unanswerable:>9}/{sum(1 for q in rows if not q['expected']):<11}"
                f"{answerable:>9}/{sum(1 for q in rows if q['expected'])}"
            )

    def _print_calibration(self, report: dict) -> None:
        """What other abstention thresholds would refuse (kb.abstention.judge), from the last mode's run.

        Each cell is "unanswerable refused / answerable refused"; the thresholds not varied in a
        table are the configured ones.
        """
        rows = [q for q in report["per_question"] if q["best_similarity"] is not None]
        if not rows:
            return
        evidence = [abstention.Evidence(similarity=q["best_similarity"], coverage=q["coverage"], known=q["known"],
                                        agreement=q["agreement"]) for q in rows]  # fmt: skip
        unanswerable = sum(1 for q in rows if not q["expected"])
        similarities = [round(0.25 + step * 0.05, 2) for step in range(5)]  # 0.25 ... 0.45
        configured = (f"similarity {settings.KB_MIN_SIMILARITY}, known {settings.KB_MIN_KNOWN}, "
                      f"unagreed {settings.KB_MIN_SIMILARITY_UNAGREED}, coverage {settings.KB_MIN_COVERAGE}")
        self.stdout.write(f"\nRefused (of {unanswerable} unanswerable / of {len(rows) - unanswerable} answerable), "
                          f"configured: {configured}")  # fmt: skip
        for name, values in (("known", (0.0, 0.4, 0.5, 0.6)), ("unagreed", (0.0, 0.4, 0.45, 0.5))):
            self.stdout.write(f"KB_MIN_SIMILARITY (rows) x KB_MIN_{name.upper()}"
                              f"{'_SIMILARITY' if name == 'unagreed' else ''} (columns)")  # fmt: skip
            self.stdout.write(f"{'':>6}" + "".join(f"{v:>10.2f}" for v in values))
            for t in similarities:
                cells = []
                for v in values:
                    refused = [not abstention.judge(e, similarity=t, **{name: v}) for e in evidence]
                    u = sum(r for r, q in zip(refused, rows, strict=True) if not q["expected"])
                    a = sum(r for r, q in zip(refused, rows, strict=True) if q["expected"])
                    cells.append(f"{u:>4} /{a:>3}")
                self.stdout.write(f"{t:>6.2f}" + "".join(f"{cell:>10}" for cell in cells))
