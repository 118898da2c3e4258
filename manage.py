#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A setting the operator gave is wrong: say which and how to fix it, without a traceback.
        sys.exit(f"kb is not configured correctly: {exc}")


if __name__ == "__main__":
    main()
