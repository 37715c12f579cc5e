"""The copy benchmark: this engine against pg_dump/pg_restore, pgcopydb and a physical floor (``python -m bench``)."""
