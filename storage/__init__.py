"""Storage: SQLAlchemy models, database set-up, migrations, repositories and export."""
