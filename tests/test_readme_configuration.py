"""README's configuration table names every variable `service/settings.py` reads, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_readme() -> None:
    source = (ROOT / "service/settings.py").read_text()
    read = set(re.findall(r'"((?:TELEMETRY_[A-Z_]+)|DATABASE_URL)"', source))
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1]
    documented = set(re.findall(r"`((?:TELEMETRY_[A-Z_]+)|DATABASE_URL)`", section))
    assert len(read) > 20
    assert read == documented, (sorted(read - documented), sorted(documented - read))
