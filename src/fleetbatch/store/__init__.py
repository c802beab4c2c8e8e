"""Storage: SQLAlchemy Core tables, Alembic migrations, one repository module per aggregate."""
