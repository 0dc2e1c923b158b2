"""How the storage mode is decided from what the database offers and holds (no database needed)."""

from __future__ import annotations

import pytest

from service.db.storage_mode import Probe, StorageModeError, decide

PRELOADED = "timescaledb"


def probe(
    *,
    installed: bool = False,
    available: bool = False,
    preload: str = "",
    license: str | None = None,
    relkind: str | None = None,
) -> Probe:
    return Probe(
        installed=installed, available=available, preload=preload, license=license, heartbeats_relkind=relkind
    )


def test_a_fresh_database_is_timescale_when_the_extension_can_be_created() -> None:
    assert decide(probe(available=True, preload=PRELOADED), "auto") == "timescale"
    assert decide(probe(installed=True), "auto") == "timescale"


def test_a_fresh_database_is_postgres_when_the_extension_is_not_preloaded_or_not_there() -> None:
    assert decide(probe(available=True, preload="pg_stat_statements"), "auto") == "postgres"
    assert decide(probe(), "auto") == "postgres"


def test_a_database_keeps_the_mode_its_tables_were_built_in() -> None:
    assert decide(probe(installed=True, relkind="p"), "auto") == "postgres"
    assert decide(probe(installed=True, relkind="r"), "auto") == "timescale"
    assert probe(relkind="p").built == "postgres" and probe(relkind="r").built == "timescale"
    assert probe().built is None


def test_a_forced_mode_wins() -> None:
    assert decide(probe(installed=True, relkind="r"), "postgres") == "postgres"
    assert decide(probe(installed=True, relkind="p"), "timescale") == "timescale"


def test_forcing_timescale_where_it_cannot_load_is_an_error_not_a_fallback() -> None:
    with pytest.raises(StorageModeError, match="cannot be used here"):
        decide(probe(available=True), "timescale")


def test_an_apache_only_build_is_postgres_mode_and_forcing_timescale_names_the_license() -> None:
    apache = {"available": True, "preload": PRELOADED, "license": "apache"}
    assert decide(probe(**apache), "auto") == "postgres"  # type: ignore[arg-type]
    assert decide(probe(available=True, preload=PRELOADED, license="timescale"), "auto") == "timescale"
    with pytest.raises(StorageModeError, match=r"timescaledb.license = 'apache'"):
        decide(probe(**apache), "timescale")  # type: ignore[arg-type]
    # A database built as hypertables keeps its mode (its policies are then reported as not running).
    assert decide(probe(installed=True, license="apache", relkind="r"), "auto") == "timescale"
