"""CSRF tokens for the console's forms.

Every state-changing form carries a `csrf` field; a POST without the right one is 403 before
anything is done. Inside a session the token is an HMAC of the session's secret (the cookie),
so it needs no storage, differs per session and dies with it; a page of another origin can
neither read the cookie nor compute it. The login form, before any session, uses a double
submit: a random value in its own SameSite=Strict cookie that the form must repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

FIELD = "csrf"
LOGIN_COOKIE = "telemetry_console_login"


def session_token(session_secret: str) -> str:
    """The CSRF token of the session whose cookie is `session_secret`."""
    return hmac.new(session_secret.encode(), b"telemetry-console-csrf", hashlib.sha256).hexdigest()


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def matches(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison; a missing value never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
