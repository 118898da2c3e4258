"""bench/retrieval_scale.py's index builds, sizes, keyword-leg plans and its printed table.

Imported by it once Django is set up (split off to keep each module under 600 lines).
"""

from __future__ import annotations

import time

from django.contrib.auth import get_user_model
from django.db import connection

from kb import access, retrieval, selectors, vector_indexes
from kb.models import Collection

DIM = 384


def rebuild_hnsw(m: int, ef_construction: int) -> dict:
    """Replace kb's HNSW index with one of graph degree `m` and build beam `ef_construction`.

    Same name, expression and predicate as kb.vector_indexes makes, so search plans it alike.
    """
    name = vector_indexes.index_name(DIM)
    sql = vector_indexes.create_sql(DIM, concurrently=False).replace(
        "WITH (m = 16, ef_construction = 64)", f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
    )
    assert f"m = {int(m)}" in sql, sql
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '4GB'")
        cursor.execute(f"DROP INDEX IF EXISTS {name}")
        cursor.execute(sql)
    return {"hnsw_rebuild": f"m {m}, ef_construction {ef_construction}", "hnsw_rebuild_s": time.perf_counter() - t}


def hnsw_options() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT array_to_string(c.reloptions, ', ') FROM pg_class c WHERE c.relname = %s",
                       [vector_indexes.index_name(DIM)])  # fmt: skip
        row = cursor.fetchone()
    return row[0] if row else ""


def build_halfvec() -> dict:
    name = f"chunk_embedding_halfvec_{DIM}"
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '4GB'")
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON kb_chunk USING hnsw "
                       f"((embedding::halfvec({DIM})) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) "
                       f"WHERE embedding_dim = {DIM}")  # fmt: skip
    return {"halfvec_build_s": time.perf_counter() - t}


def sizes() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = 'kb_chunk'::regclass""")
        out = {name: size for name, size in cursor.fetchall()}
        cursor.execute("SELECT pg_relation_size('kb_chunk'), pg_total_relation_size('kb_chunk'), "
                       "pg_total_relation_size('kb_keywordterm'), pg_database_size(current_database())")  # fmt: skip
        heap, total, terms, database = cursor.fetchone()
    out.update({"kb_chunk heap": heap, "kb_chunk with TOAST and indexes": total, "kb_keywordterm": terms,
                "database": database})  # fmt: skip
    return out


def explain_keyword(user_pk: int, limit: int) -> dict:
    """EXPLAIN ANALYZE of kb's own BM25 statement for the commonest words and for a real question."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT lexeme FROM kb_keywordterm GROUP BY lexeme ORDER BY sum(df) DESC LIMIT 3")
        common = " ".join(r[0] for r in cursor.fetchall())
    user = get_user_model().objects.get(pk=user_pk)
    out = {}
    for label, text in (("commonest words", common), ("a question", "How do I read a text file one line at a time?")):
        plans: list[str] = []

        def wrapper(execute, sql, params, many, context, plans=plans):
            if "WITH scope AS" in sql and not sql.startswith("EXPLAIN"):
                with connection.cursor() as c:
                    c.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                    plans.extend(r[0] for r in c.fetchall())
            return execute(sql, params, many, context)

        with access.request_cache(), connection.execute_wrapper(wrapper):
            chunks = selectors.chunks_readable_by(user=user)
            ids = list(
                Collection.objects.filter(pk__in=access.readable_collection_ids(user)).values_list("pk", flat=True)
            )
            retrieval.keyword_leg(chunks, text, limit, collection_ids=ids)
        scans = [line.strip() for line in plans if "Scan" in line and "kb_chunk" in line]
        out[label] = {"query": text, "seq_scan_on_kb_chunk": any("Seq Scan on kb_chunk" in s for s in scans),
                      "scans": scans, "execution": [line.strip() for line in plans if "Execution Time" in line],
                      "plan": plans}  # fmt: skip
    return out


def print_table(report: dict) -> None:
    mb = 1024 * 1024
    print(f"\nHNSW: {report.get('hnsw')}; settings: {report.get('settings')}")
    print(f"\n{report['chunks']:,} chunks; load: " + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                                                            for k, v in report["load"].items()))  # fmt: skip
    print("BM25 statistics vs migration 0011's recount:", report["statistics_check"])
    print("\nreadable | colls | dense p50/p95/p99 | keyword p50/p95/p99 | fused p50/p95/p99 | recall@10 (min) "
          "| fallbacks")  # fmt: skip
    for label, row in report["search"].items():
        f = lambda s: f"{s['p50']:.1f}/{s['p95']:.1f}/{s['p99']:.1f}"  # noqa: E731
        print(f"{label:>4} ({row['share']:.1%}) | {row['collections']} | {f(row['dense_ms'])} | "
              f"{f(row['keyword_ms'])} | {f(row['fused_ms'])} | {row['recall@10']:.3f} "
              f"({row['recall@10_min']:.1f}) | {row['exact_fallbacks']}")  # fmt: skip
        k = row.get("keyword_plan")
        if k:
            print(f"      keyword leg: candidates read p50 {k['candidates']['p50']:.0f}, max {k['candidates_max']}; "
                  f"exact {k['exact']}/{row['questions']}; all-words plans {k['all_words']}")  # fmt: skip
        for variant, v in row.get("ann", {}).items():
            print(f"      {variant}: recall@10 {v['recall@10']:.3f}, "
                  f"ms p50/p95 {v['ms']['p50']:.1f}/{v['ms']['p95']:.1f}")  # fmt: skip
    print("\nsizes (MB): " + ", ".join(f"{k} {v / mb:.0f}" for k, v in report["sizes"].items()))
    for label, e in report["explain"].items():
        print(f"\nkeyword leg, {label} ({e['query']!r}): seq scan on kb_chunk: {e['seq_scan_on_kb_chunk']}; "
              f"{'; '.join(e['execution'])}")  # fmt: skip
        for s in e["scans"]:
            print("   ", s)
