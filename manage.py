#!/usr/bin/env python
import os
import sys


def _require_migrated() -> None:
    """kb's own commands need the tables: say what to run first instead of a database traceback."""
    import django
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.migrations.executor import MigrationExecutor
    from django.db.utils import OperationalError

    django.setup()
    try:
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except OperationalError as exc:
        sys.exit(f"kb cannot reach its database: {str(exc).strip().splitlines()[0]}")
    if pending:
        sys.exit(
            f"The database is not set up yet ({len(pending)} migration(s) to apply): run "
            "`python manage.py migrate` first (`make run` does it)."
        )


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if command.startswith("kb_") and not {"-h", "--help"} & set(sys.argv):
            _require_migrated()
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A setting the operator gave is wrong: say which and how to fix it, without a traceback.
        sys.exit(f"kb is not configured correctly: {exc}")


if __name__ == "__main__":
    main()
