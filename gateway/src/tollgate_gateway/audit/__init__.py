"""The audit log: who changed which key, alias, user or app, when, and from what to what.

Every ORM change to those tables is recorded by a flush hook in the same transaction as the
change itself (``recorder``), so an admin-API write without its audit row cannot exist; the
operator writes its rows through the same pure helpers (``events``). Secrets (key hashes,
password hashes) never enter a row.
"""
