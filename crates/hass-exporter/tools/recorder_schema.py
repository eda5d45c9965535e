"""Writes Home Assistant's recorder schema for PostgreSQL, from its own
SQLAlchemy models, as tests/fixtures/recorder_schema.sql. Run with the Home
Assistant of the tests' root filesystem (scripts/ha-rootfs), as root:

    root=$(bash scripts/ha-rootfs)
    cp crates/hass-exporter/tools/recorder_schema.py "$root/tmp/"
    chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \\
        python3.14 /tmp/recorder_schema.py >crates/hass-exporter/tests/fixtures/recorder_schema.sql
"""
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from homeassistant.components.recorder.db_schema import SCHEMA_VERSION, Base
from homeassistant.const import __version__

dialect = postgresql.dialect()
print(f"-- Home Assistant {__version__} recorder schema version {SCHEMA_VERSION}")
for table in Base.metadata.sorted_tables:
    print(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
    for index in sorted(table.indexes, key=lambda i: i.name):
        print(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
    print()
