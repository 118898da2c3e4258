"""The JSON API: personal API tokens only (`Authorization: Bearer kb_…`), never the session cookie."""
