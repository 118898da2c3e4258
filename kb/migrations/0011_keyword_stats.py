"""BM25 statistics kept by Postgres: document frequency per lexeme, and chunk and section totals, per
collection generation.

Statement-level triggers with transition tables fold every INSERT, DELETE or UPDATE of
kb_chunk into kb_keywordterm and kb_keywordtotal within the same transaction: one upsert
per statement, not per row, keys taken in sorted order so that two workers writing chunks
of one collection wait for each other instead of deadlocking. Rows that fall to zero are
deleted (the keys a statement decremented are the only candidates, and it already holds
their locks). The existing chunks are counted once here.
"""

import django.contrib.postgres.search
from django.db import migrations, models

LENGTH_FUNCTION = r"""
CREATE FUNCTION kb_tsvector_length(v tsvector) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT coalesce(sum(coalesce(array_length(positions, 1), 1)), 0)::bigint FROM unnest(v) $$;
"""

SQL = r"""
CREATE FUNCTION kb_chunk_keyword_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO kb_keywordterm AS t (collection_id, generation, lexeme, df)
        SELECT n.collection_id, n.generation, u.lexeme, count(*)
        FROM new_rows n, unnest(n.search_vector) u
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (collection_id, generation, lexeme) DO UPDATE SET df = t.df + EXCLUDED.df;
        -- A section counts when its first chunk arrives: none of its chunks was there before.
        WITH added AS (
            SELECT s.collection_id, s.generation, count(*) AS sections
            FROM (SELECT DISTINCT collection_id, generation, document_id, heading_path FROM new_rows) s
            WHERE NOT EXISTS (
                SELECT 1 FROM kb_chunk c
                WHERE c.document_id = s.document_id AND c.generation = s.generation
                  AND c.heading_path = s.heading_path AND NOT EXISTS (SELECT 1 FROM new_rows m WHERE m.id = c.id))
            GROUP BY 1, 2
        )
        INSERT INTO kb_keywordtotal AS t (collection_id, generation, chunks, length, sections)
        SELECT n.collection_id, n.generation, count(*), sum(n.search_length),
               coalesce(max(a.sections), 0)
        FROM new_rows n LEFT JOIN added a ON a.collection_id = n.collection_id AND a.generation = n.generation
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (collection_id, generation) DO UPDATE
        SET chunks = t.chunks + EXCLUDED.chunks, length = t.length + EXCLUDED.length,
            sections = t.sections + EXCLUDED.sections;
        RETURN NULL;
    END IF;

    -- DELETE, or UPDATE (which may move a chunk or change its words): old rows count -1.
    IF TG_OP = 'DELETE' THEN
        INSERT INTO kb_keywordterm AS t (collection_id, generation, lexeme, df)
        SELECT o.collection_id, o.generation, u.lexeme, -count(*)
        FROM old_rows o, unnest(o.search_vector) u
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (collection_id, generation, lexeme) DO UPDATE SET df = t.df + EXCLUDED.df;
        -- A section goes with its last chunk.
        WITH removed AS (
            SELECT s.collection_id, s.generation, count(*) AS sections
            FROM (SELECT DISTINCT collection_id, generation, document_id, heading_path FROM old_rows) s
            WHERE NOT EXISTS (
                SELECT 1 FROM kb_chunk c
                WHERE c.document_id = s.document_id AND c.generation = s.generation AND c.heading_path = s.heading_path)
            GROUP BY 1, 2
        )
        INSERT INTO kb_keywordtotal AS t (collection_id, generation, chunks, length, sections)
        SELECT o.collection_id, o.generation, -count(*), -sum(o.search_length),
               -coalesce(max(r.sections), 0)
        FROM old_rows o LEFT JOIN removed r ON r.collection_id = o.collection_id AND r.generation = o.generation
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (collection_id, generation) DO UPDATE
        SET chunks = t.chunks + EXCLUDED.chunks, length = t.length + EXCLUDED.length,
            sections = t.sections + EXCLUDED.sections;
    ELSE
        INSERT INTO kb_keywordterm AS t (collection_id, generation, lexeme, df)
        SELECT collection_id, generation, lexeme, sum(d) FROM (
            SELECT o.collection_id, o.generation, u.lexeme, -1 AS d FROM old_rows o, unnest(o.search_vector) u
            UNION ALL
            SELECT n.collection_id, n.generation, u.lexeme, 1 FROM new_rows n, unnest(n.search_vector) u
        ) x GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (collection_id, generation, lexeme) DO UPDATE SET df = t.df + EXCLUDED.df;
        -- Sections: one that lost its last chunk goes; one whose chunks all arrived by this
        -- update (none there before, none moved within it) counts.
        WITH sections AS (
            SELECT s.collection_id, s.generation, -1 AS d
            FROM (SELECT DISTINCT collection_id, generation, document_id, heading_path FROM old_rows) s
            WHERE NOT EXISTS (
                SELECT 1 FROM kb_chunk c
                WHERE c.document_id = s.document_id AND c.generation = s.generation AND c.heading_path = s.heading_path)
            UNION ALL
            SELECT s.collection_id, s.generation, 1
            FROM (SELECT DISTINCT collection_id, generation, document_id, heading_path FROM new_rows) s
            WHERE NOT EXISTS (
                SELECT 1 FROM old_rows o
                WHERE o.document_id = s.document_id AND o.generation = s.generation AND o.heading_path = s.heading_path)
              AND NOT EXISTS (
                SELECT 1 FROM kb_chunk c
                WHERE c.document_id = s.document_id AND c.generation = s.generation
                  AND c.heading_path = s.heading_path AND NOT EXISTS (SELECT 1 FROM new_rows m WHERE m.id = c.id))
        )
        INSERT INTO kb_keywordtotal AS t (collection_id, generation, chunks, length, sections)
        SELECT collection_id, generation, sum(c), sum(l), sum(sc) FROM (
            SELECT o.collection_id, o.generation, -1 AS c, -o.search_length AS l, 0 AS sc
            FROM old_rows o
            UNION ALL
            SELECT n.collection_id, n.generation, 1, n.search_length, 0 FROM new_rows n
            UNION ALL
            SELECT collection_id, generation, 0, 0, d FROM sections
        ) x GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (collection_id, generation) DO UPDATE
        SET chunks = t.chunks + EXCLUDED.chunks, length = t.length + EXCLUDED.length,
            sections = t.sections + EXCLUDED.sections;
    END IF;
    DELETE FROM kb_keywordterm t
    USING (SELECT DISTINCT o.collection_id, o.generation, u.lexeme FROM old_rows o, unnest(o.search_vector) u) d
    WHERE t.collection_id = d.collection_id AND t.generation = d.generation AND t.lexeme = d.lexeme
      AND t.df <= 0;
    DELETE FROM kb_keywordtotal t WHERE t.chunks <= 0 AND (t.collection_id, t.generation) IN (
        SELECT DISTINCT o.collection_id, o.generation FROM old_rows o);
    RETURN NULL;
END $$;

CREATE TRIGGER kb_chunk_keyword_stats_insert AFTER INSERT ON kb_chunk
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kb_chunk_keyword_stats();
CREATE TRIGGER kb_chunk_keyword_stats_delete AFTER DELETE ON kb_chunk
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION kb_chunk_keyword_stats();
CREATE TRIGGER kb_chunk_keyword_stats_update AFTER UPDATE ON kb_chunk
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kb_chunk_keyword_stats();

INSERT INTO kb_keywordterm (collection_id, generation, lexeme, df)
SELECT c.collection_id, c.generation, u.lexeme, count(*) FROM kb_chunk c, unnest(c.search_vector) u GROUP BY 1, 2, 3;
INSERT INTO kb_keywordtotal (collection_id, generation, chunks, length, sections)
SELECT collection_id, generation, count(*), sum(search_length),
       count(DISTINCT (document_id, heading_path))
FROM kb_chunk GROUP BY 1, 2;
"""

REVERSE_SQL = """
DROP TRIGGER IF EXISTS kb_chunk_keyword_stats_insert ON kb_chunk;
DROP TRIGGER IF EXISTS kb_chunk_keyword_stats_delete ON kb_chunk;
DROP TRIGGER IF EXISTS kb_chunk_keyword_stats_update ON kb_chunk;
DROP FUNCTION IF EXISTS kb_chunk_keyword_stats();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("kb", "0010_message_verification"),
    ]

    operations = [
        migrations.CreateModel(
            name="KeywordTerm",
            fields=[
                ("pk", models.CompositePrimaryKey("collection_id", "generation", "lexeme", blank=True, editable=False,
                                                  primary_key=True, serialize=False)),
                ("collection_id", models.BigIntegerField()),
                ("generation", models.BigIntegerField()),
                ("lexeme", models.TextField()),
                ("df", models.IntegerField()),
            ],
        ),
        migrations.CreateModel(
            name="KeywordTotal",
            fields=[
                ("pk", models.CompositePrimaryKey("collection_id", "generation", blank=True, editable=False,
                                                  primary_key=True, serialize=False)),
                ("collection_id", models.BigIntegerField()),
                ("generation", models.BigIntegerField()),
                ("chunks", models.BigIntegerField()),
                ("length", models.BigIntegerField()),
                ("sections", models.BigIntegerField()),
            ],
        ),
        # A chunk's length for BM25 (lexeme occurrences), stored: computed from the same
        # expression as search_vector, since a generated column cannot read another.
        migrations.RunSQL(LENGTH_FUNCTION, "DROP FUNCTION IF EXISTS kb_tsvector_length(tsvector);"),
        migrations.AddField(
            model_name="chunk",
            name="search_length",
            field=models.GeneratedField(
                db_persist=True,
                expression=models.Func(
                    django.contrib.postgres.search.CombinedSearchVector(
                        django.contrib.postgres.search.SearchVector("heading_path", config="english", weight="A"),
                        "||",
                        django.contrib.postgres.search.SearchVector("text", config="english", weight="D"),
                        django.contrib.postgres.search.SearchConfig("english"),
                    ),
                    function="kb_tsvector_length",
                ),
                output_field=models.BigIntegerField(),
            ),
        ),
        migrations.RunSQL(SQL, REVERSE_SQL),
    ]
