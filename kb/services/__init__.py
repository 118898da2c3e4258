"""Writes, one module a domain. Each service validates, checks the acting user's permission
with kb.access, changes the database in one transaction, and queues background work only
after that transaction commits (ingestion.queue).

- collections: create, update, delete, grant, revoke
- documents: uploads, archives, batches, deletion
- reindex: embed a collection again with another model
- conversations: ask, answer, stop, regenerate, rate
- tokens: personal API tokens
- people: group membership from single sign-on

Nothing is re-exported here: import the module of the domain, so that loading one never
loads the others.
"""
