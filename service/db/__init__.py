"""The service's database: SQLAlchemy models, engine and sessions, and the repository functions."""
