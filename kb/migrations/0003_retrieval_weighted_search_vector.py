"""Weigh headings above body text in the stored tsvector.

Postgres cannot alter a generated column's expression, so the column (and its GIN index)
is dropped and added again; Postgres recomputes it for every chunk, no re-embedding needed.
"""

import django.contrib.postgres.indexes
import django.contrib.postgres.search
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("kb", "0002_initial"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="chunk", name="chunk_search_gin"),
        migrations.RemoveField(model_name="chunk", name="search_vector"),
        migrations.AddField(
            model_name="chunk",
            name="search_vector",
            field=models.GeneratedField(
                db_persist=True,
                expression=django.contrib.postgres.search.SearchVector(
                    "heading_path", weight="A", config=settings.KB_FTS_CONFIG
                )
                + django.contrib.postgres.search.SearchVector("text", weight="D", config=settings.KB_FTS_CONFIG),
                output_field=django.contrib.postgres.search.SearchVectorField(),
            ),
        ),
        migrations.AddIndex(
            model_name="chunk",
            index=django.contrib.postgres.indexes.GinIndex(fields=["search_vector"], name="chunk_search_gin"),
        ),
    ]
