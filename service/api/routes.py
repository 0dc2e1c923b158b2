"""Every endpoint in one table: the app factory registers it and the OpenAPI document is built
from it, so the two cannot disagree. An endpoint's `auth` kind is also what operators' roles are
checked against (`service.api.auth.guarded`): `viewer` endpoints only read, `admin` endpoints
change something."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.api import devices, dispatches, downloads, enrollment, health, heartbeats, history, openapi_doc
from service.api import schemas as s
from service.api.auth import Auth, Handler


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    request: type | None = None
    responses: dict[int, type | None] = field(default_factory=dict)
    query: tuple[str, ...] = ()


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/enroll",
        enrollment.enroll,
        "none",
        "Exchange an enrollment token for a device credential",
        s.EnrollRequest,
        {
            201: s.EnrollResponse,
            400: s.ErrorBody,
            401: s.ErrorBody,
            403: s.ErrorBody,
            409: s.ErrorBody,
            422: s.ErrorBody,
            429: s.ErrorBody,
        },
    ),
    Endpoint(
        "POST",
        "/v1/heartbeats",
        heartbeats.post_heartbeats,
        "device",
        'Record one heartbeat, or a batch as {"heartbeats": [...]} (at most '
        "TELEMETRY_MAX_BATCH_HEARTBEATS, default 500); answered after commit",
        s.Heartbeat,
        {
            200: s.HeartbeatsResponse,
            400: s.ErrorBody,
            401: s.ErrorBody,
            403: s.ErrorBody,
            413: s.ErrorBody,
            422: s.ErrorBody,
            503: s.ErrorBody,
        },
    ),
    Endpoint(
        "POST",
        "/v1/apk-downloads",
        downloads.post_download,
        "device",
        "Record an APK download event of the calling device (201; 200 with stored=false when its"
        " event_key and ts were already stored)",
        s.ApkDownload,
        {
            200: s.ApkDownloadResponse,
            201: s.ApkDownloadResponse,
            400: s.ErrorBody,
            401: s.ErrorBody,
            403: s.ErrorBody,
            422: s.ErrorBody,
            503: s.ErrorBody,
        },
    ),
    Endpoint(
        "POST",
        "/v1/enrollment-tokens",
        enrollment.post_enrollment_token,
        "admin",
        "Mint an enrollment token (shown once); with device_id, only that device id can enroll with"
        " it, and it is the only kind that can re-enroll an existing device id",
        s.EnrollmentTokenRequest,
        {
            201: s.EnrollmentTokenResponse,
            400: s.ErrorBody,
            401: s.ErrorBody,
            403: s.ErrorBody,
            422: s.ErrorBody,
        },
    ),
    Endpoint(
        "DELETE",
        "/v1/enrollment-tokens/{token_id}",
        enrollment.revoke_enrollment_token,
        "admin",
        "Revoke an enrollment token",
        None,
        {200: None, 401: s.ErrorBody, 403: s.ErrorBody, 404: s.ErrorBody},
    ),
    Endpoint(
        "POST",
        "/v1/dispatches",
        dispatches.create_dispatch,
        "admin",
        "Create a dispatch once per request_id (201 created, 200 existing, 409 conflicting)",
        s.DispatchRequest,
        {
            200: s.Dispatch,
            201: s.Dispatch,
            400: s.ErrorBody,
            401: s.ErrorBody,
            403: s.ErrorBody,
            404: s.ErrorBody,
            409: s.ErrorBody,
            422: s.ErrorBody,
            503: s.ErrorBody,
        },
    ),
    Endpoint(
        "GET",
        "/v1/dispatches/{request_id}",
        dispatches.get_dispatch,
        "viewer",
        "Look up a dispatch by request_id",
        None,
        {200: s.Dispatch, 401: s.ErrorBody, 403: s.ErrorBody, 404: s.ErrorBody},
    ),
    Endpoint(
        "GET",
        "/v1/devices/{device_id}",
        devices.get_device,
        "viewer",
        "A device: enrollment, last seen, last battery and status",
        None,
        {200: s.DeviceSummary, 401: s.ErrorBody, 403: s.ErrorBody, 404: s.ErrorBody},
    ),
    Endpoint(
        "POST",
        "/v1/devices/{device_id}/revoke",
        devices.revoke_device,
        "admin",
        "Revoke a device's credential and ban its id: it cannot enroll again until reinstated",
        None,
        {200: s.DeviceState, 401: s.ErrorBody, 403: s.ErrorBody, 404: s.ErrorBody},
    ),
    Endpoint(
        "POST",
        "/v1/devices/{device_id}/reinstate",
        devices.reinstate_device,
        "admin",
        "Lift a device's ban; its old credential stays revoked, so it re-enrolls with a token"
        " bound to its id",
        None,
        {200: s.DeviceState, 401: s.ErrorBody, 403: s.ErrorBody, 404: s.ErrorBody},
    ),
    Endpoint(
        "GET",
        "/v1/devices/{device_id}/heartbeats",
        heartbeats.list_heartbeats,
        "viewer",
        "A device's heartbeats, newest first",
        None,
        {200: s.HeartbeatList, 400: s.ErrorBody, 401: s.ErrorBody, 403: s.ErrorBody, 404: s.ErrorBody},
        query=("limit",),
    ),
    Endpoint(
        "GET",
        "/v1/devices/{device_id}/dispatches",
        dispatches.list_device_dispatches,
        "viewer",
        "A device's dispatches, newest first",
        None,
        {200: s.DispatchList, 400: s.ErrorBody, 401: s.ErrorBody, 403: s.ErrorBody, 404: s.ErrorBody},
        query=("limit",),
    ),
    Endpoint(
        "GET",
        "/v1/devices/{device_id}/history",
        history.get_device_history,
        "viewer",
        "A device's heartbeats per hour or day: rollups, plus the raw rows not rolled up yet",
        None,
        {
            200: s.DeviceHistory,
            400: s.ErrorBody,
            401: s.ErrorBody,
            403: s.ErrorBody,
            404: s.ErrorBody,
            422: s.ErrorBody,
        },
        query=("from", "to", "bucket"),
    ),
    Endpoint(
        "GET",
        "/v1/fleet/history",
        history.get_fleet_history,
        "viewer",
        "The fleet's devices seen, heartbeats and average battery per hour or day",
        None,
        {200: s.FleetHistory, 400: s.ErrorBody, 401: s.ErrorBody, 403: s.ErrorBody, 422: s.ErrorBody},
        query=("from", "to", "bucket"),
    ),
    Endpoint(
        "GET",
        "/health",
        health.health,
        "none",
        "Liveness and readiness",
        None,
        {200: s.Health, 503: s.Health},
    ),
    Endpoint("GET", "/health/live", health.live, "none", "Liveness only", None, {200: None}),
    Endpoint("GET", "/metrics", health.metrics, "none", "Prometheus metrics", None, {200: None}),
    Endpoint("GET", "/openapi.json", openapi_doc.serve_openapi, "none", "This document", None, {200: None}),
)
