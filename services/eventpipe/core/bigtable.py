"""Bigtable client setup, written once: clients, table creation with GC rules, readiness.

With ``BIGTABLE_EMULATOR_HOST`` set the client talks to the emulator; otherwise to the real
instance named by the settings, with application-default credentials. Code does not change.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import timedelta

from google.api_core.exceptions import AlreadyExists
from google.cloud import bigtable
from google.cloud.bigtable import column_family
from google.cloud.bigtable.instance import Instance
from google.cloud.bigtable.table import Table

from eventpipe.core.config import CommonSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilySpec:
    """A column family and its garbage-collection rule."""

    name: str
    max_versions: int | None = 1
    max_age: timedelta | None = None

    def gc_rule(self) -> column_family.GarbageCollectionRule | None:
        rules: list[column_family.GarbageCollectionRule] = []
        if self.max_versions:
            rules.append(column_family.MaxVersionsGCRule(self.max_versions))
        if self.max_age:
            rules.append(column_family.MaxAgeGCRule(self.max_age))
        if not rules:
            return None
        if len(rules) == 1:
            return rules[0]
        return column_family.GCRuleUnion(rules)


@dataclass(frozen=True)
class TableSpec:
    """A table (without the settings' table prefix) and its families."""

    name: str
    families: tuple[FamilySpec, ...]


@functools.cache
def client(settings: CommonSettings, admin: bool = False) -> bigtable.Client:
    """One client (and so one channel pool) per settings and role, shared by the process."""
    return bigtable.Client(project=settings.bigtable_project, admin=admin)


def instance(settings: CommonSettings, admin: bool = False) -> Instance:
    return client(settings, admin=admin).instance(settings.bigtable_instance)


def table(settings: CommonSettings, name: str) -> Table:
    """The data-plane handle of ``<table_prefix><name>``."""
    return instance(settings).table(settings.table_prefix + name)


def ensure_tables(settings: CommonSettings, specs: list[TableSpec]) -> None:
    """Creates missing tables and families with their GC rules (idempotent)."""
    inst = instance(settings, admin=True)
    existing = {t.table_id for t in inst.list_tables()}
    for spec in specs:
        full_name = settings.table_prefix + spec.name
        tbl = inst.table(full_name)
        wanted = {f.name: f.gc_rule() for f in spec.families}
        if full_name not in existing:
            try:
                tbl.create(column_families=wanted)
                log.info("created table", extra={"table": full_name})
                continue
            except AlreadyExists:
                pass
        present = tbl.list_column_families()
        for name, rule in wanted.items():
            if name not in present:
                tbl.column_family(name, rule).create()
            elif rule is not None and present[name].gc_rule != rule:
                tbl.column_family(name, rule).update()


def check_bigtable(settings: CommonSettings) -> None:
    """Readiness check: raises unless the instance answers an admin call."""
    list(instance(settings, admin=True).list_tables())
