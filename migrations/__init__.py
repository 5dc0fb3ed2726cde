"""Alembic environment and revisions of the service database, installed with the package so that
`chextriev db` (service.db.migrate) finds them wherever the package is installed."""
