"""Shared test documents: texts several test modules upload, ask about or render."""

from __future__ import annotations

BACKUPS = """# Backups

## Schedule

The database backup runs nightly at 02:00 and keeps fourteen copies.

## Restore

To restore, stop the application, then run the restore script with the date of the copy.
"""

VACATION = """# Vacation policy

## Requesting leave

Request vacation days in the HR portal at least two weeks ahead; your manager approves them.

## Carry-over

Up to five unused vacation days carry over into the next year.
"""

HOSTILE = """# Release notes

Click <a href="javascript:alert('link')">here</a> or [there](javascript:alert('md')) for the release notes.

<script>alert('script')</script>

<img src=x onerror="alert('img')"> <svg onload="alert('svg')"></svg>

<iframe src="javascript:alert('frame')"></iframe> The release ships on Friday.
"""


def long_document(sections: int = 60) -> str:
    body = " ".join(f"Replica {i} keeps a nightly snapshot of the archive volume." for i in range(25))
    return "\n\n".join(f"# Runbook\n\n## Step {s}\n\n{body}" for s in range(sections))
