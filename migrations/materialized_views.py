"""Materialized views: refreshed on the target once its tables are loaded.

``COPY`` cannot fill a materialized view, and an init SQL written by
``pg_dump`` creates each one ``WITH NO DATA``: left so, the service's first
query on it fails. Every view populated on the source is refreshed, each after
the views it reads, so its contents come from the copied rows; one left
unpopulated on the source stays so. Each refresh is its own transaction and
does the same whenever it runs, so a run killed during one simply refreshes
again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from graphlib import TopologicalSorter

import psycopg
from psycopg import sql

from .catalog import Catalog

log = logging.getLogger(__name__)


def refresh(connect_target: Callable[..., psycopg.Connection], catalog: Catalog, target_schema: str) -> list[str]:
    """Refresh, in dependency order, every materialized view populated on the source; return them in that order."""
    views = catalog.materialized_views
    order = [
        name
        for name in TopologicalSorter({name: view.depends_on for name, view in views.items()}).static_order()
        if name in views and views[name].populated
    ]
    if order:
        with connect_target(autocommit=True) as conn:
            for name in order:
                conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(target_schema, name)))
                log.info("refreshed materialized view %s", name)
    return order
