"""Reads, scoped to what the user may read: one module per area, all re-exported here so
callers keep writing `selectors.x`."""

from kb.selectors.conversations import *  # noqa: F403
from kb.selectors.core import *  # noqa: F403
from kb.selectors.documents import *  # noqa: F403
from kb.selectors.people import *  # noqa: F403
