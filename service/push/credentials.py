"""The service account FCM is called with, and the OAuth2 access tokens minted from it.

Guarantees:
* A credentials file that cannot be read, is not JSON, is not a service-account key, lacks a
  field FCM needs or holds a private key that does not parse raises a `SettingsError` naming
  `TELEMETRY_FCM_CREDENTIALS_FILE` (checked by `service.settings` when the settings are read),
  so `telemetry serve` refuses to start with one line (`service.cli_errors`). The message never
  quotes the key.
* `AccessTokens.token()` returns a token valid for at least `refresh_margin` more: the token is
  cached and refreshed only when it would expire within the margin, by one refresh at a time
  however many sends wait for it (the others await that refresh). google-auth's service-account
  flow (a signed JWT bearer grant to the file's `token_uri`) is synchronous, so it runs in a
  worker thread: the event loop never waits on the token endpoint.
* `invalidate(token)` drops a token FCM refused (401), so the next `token()` mints a new one;
  a token already replaced is not dropped twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import urllib3
from google.auth import exceptions as google_exceptions
from google.auth.transport.urllib3 import Request as Urllib3Request
from google.oauth2 import service_account

from service.settings import service_account_info

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# Google's tokens live an hour; refreshing 5 minutes early leaves every send in flight a token
# that outlives it, and costs one grant per 55 minutes.
REFRESH_MARGIN_SECONDS = 300.0


class TokenUnavailable(Exception):
    """No access token could be minted (token endpoint unreachable or refusing): a send
    attempt that fails this way is retryable, like a 5xx from FCM."""


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A parsed service-account key: the project pushes go to and the credentials that sign
    the token grant. `token_uri` is where tokens are minted (the file's own, or an override for
    emulators and the tests' fake)."""

    project_id: str
    client_email: str
    token_uri: str
    credentials: service_account.Credentials

    def __repr__(self) -> str:  # the credentials hold the private key: never in a log line
        return f"ServiceAccount(project_id={self.project_id!r}, client_email={self.client_email!r})"


def load_service_account(path: Path, token_uri: str | None = None) -> ServiceAccount:
    """The service account in `path` (a Google service-account JSON key), or `SettingsError`
    naming `TELEMETRY_FCM_CREDENTIALS_FILE` and saying what is wrong with it (the checks are
    `service.settings.service_account_info`'s, the ones `telemetry serve` refuses to start on)."""
    info = service_account_info(path)
    if token_uri is not None:
        info = {**info, "token_uri": token_uri}
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    return ServiceAccount(
        project_id=info["project_id"],
        client_email=info["client_email"],
        token_uri=info["token_uri"],
        credentials=credentials,
    )


class AccessTokens:
    """OAuth2 access tokens for FCM, minted from `account` and cached until near expiry."""

    def __init__(
        self,
        account: ServiceAccount,
        *,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
        http: urllib3.PoolManager | None = None,
    ) -> None:
        self._account = account
        self._margin = refresh_margin
        self._http = http or urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=10.0))
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0  # time.monotonic() at which the cached token expires
        self.refreshes = 0  # tokens minted so far (tests and metrics read it)

    def _fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._expires_at - self._margin

    async def token(self) -> str:
        """A token valid for at least the refresh margin; `TokenUnavailable` if none can be had."""
        if self._fresh():
            return self._token  # type: ignore[return-value]
        async with self._lock:
            if not self._fresh():  # another waiter may have refreshed it meanwhile
                self._token, self._expires_at = await asyncio.to_thread(self._mint)
                self.refreshes += 1
            return self._token  # type: ignore[return-value]

    def invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = None

    def _mint(self) -> tuple[str, float]:
        credentials = self._account.credentials
        started = time.monotonic()
        try:
            credentials.refresh(Urllib3Request(self._http))
        except (google_exceptions.GoogleAuthError, urllib3.exceptions.HTTPError, OSError) as exc:
            reason = type(exc).__name__
            raise TokenUnavailable(f"token endpoint {self._account.token_uri}: {reason}") from None
        if not credentials.token:
            raise TokenUnavailable(f"token endpoint {self._account.token_uri} answered no access token")
        lifetime = 3600.0
        if credentials.expiry is not None:
            # google-auth keeps a naive UTC expiry; measured from before the request, so the
            # cached lifetime never exceeds the real one.
            expiry = credentials.expiry.replace(tzinfo=UTC)
            lifetime = (expiry - datetime.now(UTC)).total_seconds()
        return credentials.token, started + lifetime

    def close(self) -> None:
        self._http.clear()
