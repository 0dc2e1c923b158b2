from __future__ import annotations

from tests.api.conftest import api, app_settings  # noqa: F401  (the API fixtures, shared)
