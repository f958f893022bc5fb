"""What the gateway and the operator share, and nothing else: the database schema (ORM models
and the Alembic migrations, shipped as package data), API key hashing, audit row shapes, the
autoscaling demand contract in Redis, DSN helpers and the one wait for the database and its
schema (`tollgate-schema wait`)."""
