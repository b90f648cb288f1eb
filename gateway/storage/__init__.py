"""Storage: the only package that talks to PostgreSQL (asyncpg never leaves it)."""
