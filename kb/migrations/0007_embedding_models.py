"""Each collection names its embedding model; vectors of any size share one untyped column.

- Chunk.embedding becomes an untyped `vector` (the values are kept as they are), with
  embedding_dim generated from it; the one HNSW index over vector(384) is replaced by a
  partial expression index per size present (kb.vector_indexes), 384 on a default install.
- Collections record the model their vectors come from: the one configured now, which made
  the vectors already stored. Chunks carry the generation they were embedded for, so a
  re-index can write new ones beside them and switch over in one transaction.
"""

import pgvector.django.vector
from django.conf import settings
from django.db import migrations, models

import kb.models

SEQUENCE = "kb_embed_generation_seq"


def create_vector_indexes(apps, schema_editor):
    from kb import vector_indexes

    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT embedding_dim FROM kb_chunk")
        dims = {row[0] for row in cursor.fetchall()}
    if 0 < settings.KB_EMBED_DIM <= vector_indexes.MAX_DIM:
        dims.add(settings.KB_EMBED_DIM)
    for dim in sorted(dims):
        schema_editor.execute(vector_indexes.create_sql(dim, concurrently=False))


def drop_vector_indexes(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE i.indrelid = 'kb_chunk'::regclass AND c.relname LIKE 'chunk_embedding_hnsw_%%'"
        )
        names = [row[0] for row in cursor.fetchall()]
    for name in names:
        schema_editor.execute(f"DROP INDEX {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("kb", "0006_ingest_batches"),
    ]

    operations = [
        migrations.RunSQL(f"CREATE SEQUENCE {SEQUENCE}", f"DROP SEQUENCE {SEQUENCE}"),
        migrations.AddField(
            model_name="collection",
            name="embed_generation",
            field=models.BigIntegerField(
                db_default=models.Func(
                    models.Value(SEQUENCE), function="nextval", output_field=models.BigIntegerField()
                ),
                editable=False,
            ),
        ),
        migrations.AddField(
            model_name="collection",
            name="embed_model",
            field=models.JSONField(default=kb.models.configured_embed_model, editable=False),
        ),
        migrations.AddField(
            model_name="collection",
            name="reindex_generation",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="collection",
            name="reindex_model",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        migrations.RemoveConstraint(model_name="chunk", name="chunk_unique_ordinal"),
        migrations.RemoveIndex(model_name="chunk", name="chunk_embedding_hnsw"),
        migrations.AlterField(model_name="chunk", name="embedding", field=pgvector.django.vector.VectorField()),
        migrations.AddField(
            model_name="chunk",
            name="embedding_dim",
            field=models.GeneratedField(
                db_persist=True,
                expression=models.Func(models.F("embedding"), function="vector_dims"),
                output_field=models.IntegerField(),
            ),
        ),
        migrations.AddField(
            model_name="chunk",
            name="generation",
            field=models.BigIntegerField(default=0),
            preserve_default=False,
        ),
        # Checked at once: deferred foreign-key checks left pending would block the ALTERs below.
        migrations.RunSQL(
            [
                "SET CONSTRAINTS ALL IMMEDIATE",
                "UPDATE kb_chunk SET generation = c.embed_generation FROM kb_collection c "
                "WHERE c.id = kb_chunk.collection_id",
                "SET CONSTRAINTS ALL DEFERRED",
            ],
            migrations.RunSQL.noop,
        ),
        migrations.AddConstraint(
            model_name="chunk",
            constraint=models.UniqueConstraint(
                fields=("document", "generation", "ordinal"), name="chunk_unique_ordinal"
            ),
        ),
        migrations.RunPython(create_vector_indexes, drop_vector_indexes),
    ]
