"""Every endpoint in one table: the app factory registers it and the OpenAPI document is built
from it, so the two cannot disagree. An endpoint's `auth` kind is also what operators' roles are
checked against (`service.api.auth.guarded`): `viewer` endpoints only read, `admin` endpoints
change something. `responses` lists what a handler answers itself; 400/401/403/422/503 follow
from the auth kind, the request type, the query and the path (see `openapi_doc`)."""

from __future__ import annotations

from service.api import (
    apk,
    commands,
    devices,
    dispatches,
    downloads,
    enrollment,
    fleet,
    health,
    heartbeats,
    history,
    openapi_doc,
)
from service.api import schemas as s
from service.api.endpoint import Endpoint, Schema

LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
DATABASE_ID: Schema = {"type": "integer", "format": "int64", "minimum": 1}
COMMAND_STATUS: Schema = {"type": "string", "enum": list(s.COMMAND_STATUSES)}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
HISTORY_QUERY: dict[str, Schema] = {
    "from": {"type": "string", "format": "date-time", "description": "Default: a span before `to`"},
    "to": {"type": "string", "format": "date-time", "description": "Default: now"},
    "bucket": {"type": "string", "enum": ["1h", "1d"], "default": "1h"},
}

TEXT_FILTER: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
BEFORE: Schema = {**DATABASE_ID, "description": "The id of the last event of the previous page"}
DEVICE_LIST_QUERY: dict[str, Schema] = {
    "presence": {"type": "string", "enum": ["online", "offline", "never_seen", "revoked"]},
    "app_version": {**TEXT_FILTER, "description": "Last app version equals"},
    "status": {**TEXT_FILTER, "description": "Last status equals"},
    "battery_below": {"type": "integer", "minimum": 0, "maximum": 101, "description": "Last battery below"},
    "q": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Device id prefix"},
    "limit": LIMIT,
    "cursor": {
        "type": "string",
        "minLength": 1,
        # Issued cursors are under 128 characters; the bound keeps a request line within
        # aiohttp's 8 KiB even with every other parameter at its longest, percent-encoded.
        "maxLength": 256,
        "description": "next_cursor of the previous page (same filters)",
    },
}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        method="POST",
        path="/v1/enroll",
        handler=enrollment.enroll,
        auth="none",
        summary="Exchange an enrollment token for a device credential",
        request=s.EnrollRequest,
        # 401: the enrollment token is not valid; 403: the device id is banned.
        responses={
            201: s.EnrollResponse,
            401: s.ErrorBody,
            403: s.ErrorBody,
            409: s.ErrorBody,
            429: s.ErrorBody,
        },
    ),
    Endpoint(
        method="POST",
        path="/v1/heartbeats",
        handler=heartbeats.post_heartbeats,
        auth="device",
        summary='Record one heartbeat, or a batch as {"heartbeats": [...]} (at most '
        "TELEMETRY_MAX_BATCH_HEARTBEATS, default 500); answered after commit",
        request=(s.Heartbeat, s.HeartbeatBatch),
        responses={200: s.HeartbeatsResponse, 413: s.ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/v1/apk-downloads",
        handler=downloads.post_download,
        auth="device",
        summary="Record an APK download event of the calling device (201; 200 with stored=false when"
        " its event_key and ts were already stored)",
        request=s.ApkDownload,
        responses={200: s.ApkDownloadResponse, 201: s.ApkDownloadResponse},
    ),
    Endpoint(
        method="POST",
        path="/v1/enrollment-tokens",
        handler=enrollment.post_enrollment_token,
        auth="admin",
        summary="Mint an enrollment token (shown once); with device_id, only that device id can enroll"
        " with it, and it is the only kind that can re-enroll an existing device id",
        request=s.EnrollmentTokenRequest,
        responses={201: s.EnrollmentTokenResponse},
    ),
    Endpoint(
        method="DELETE",
        path="/v1/enrollment-tokens/{token_id}",
        handler=enrollment.revoke_enrollment_token,
        auth="admin",
        summary="Revoke an enrollment token",
        path_params={"token_id": DATABASE_ID},
        responses={200: None, 404: s.ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/v1/dispatches",
        handler=dispatches.create_dispatch,
        auth="admin",
        summary="Create a dispatch once per request_id (201 created, 200 existing, 409 conflicting)",
        request=s.DispatchRequest,
        responses={200: s.Dispatch, 201: s.Dispatch, 404: s.ErrorBody, 409: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/dispatches/{request_id}",
        handler=dispatches.get_dispatch,
        auth="viewer",
        summary="Look up a dispatch by request_id",
        responses={200: s.Dispatch, 404: s.ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/v1/dispatches/{request_id}/ack",
        handler=commands.ack_command,
        auth="device",
        summary="Acknowledge a command as the device it was sent to: delivered, executed or failed."
        " Forward only: 200 with the current state (changed=false when repeated), 409 with it when"
        " backward; 404 for any other device",
        request=s.CommandAck,
        responses={200: s.CommandAckResponse, 404: s.ErrorBody, 409: s.CommandConflict},
    ),
    Endpoint(
        method="GET",
        path="/v1/device/commands",
        handler=commands.pull_commands,
        auth="device",
        summary="The calling device's commands not yet delivered, oldest first (pull when push is dead)",
        query={"status": {"type": "string", "enum": ["pending"], "default": "pending"}, "limit": LIMIT},
        responses={200: s.CommandList, 422: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/commands",
        handler=commands.list_commands,
        auth="viewer",
        summary="The fleet's commands still pending (or delivered) after older_than seconds (default"
        " TELEMETRY_COMMAND_STUCK_SECONDS), oldest first: where pushes do not arrive",
        query={
            "status": {"type": "string", "enum": ["pending", "delivered"], "default": "pending"},
            "older_than": {"type": "number", "minimum": 0, "maximum": commands.MAX_AGE_SECONDS},
            "limit": LIMIT,
        },
        responses={200: s.CommandList, 422: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/commands/{request_id}",
        handler=commands.get_command,
        auth="viewer",
        summary="A command and how far it got (kept TELEMETRY_RETENTION_COMMANDS_SECONDS)",
        responses={200: s.Command, 404: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/devices/{device_id}/commands",
        handler=commands.list_device_commands,
        auth="viewer",
        summary="A device's commands, newest first; before= pages back by dispatch time",
        query={"status": COMMAND_STATUS, "before": TIMESTAMP, "limit": LIMIT},
        responses={200: s.CommandList, 404: s.ErrorBody, 422: s.ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/v1/apk-versions",
        handler=apk.register_version,
        auth="ci",
        summary="Register an APK build (201; 200 when registered again as is; 409 when its build_id"
        " or package_name and version_code are taken by different content)",
        request=s.ApkVersionRequest,
        responses={200: s.ApkVersion, 201: s.ApkVersion, 409: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/apk-versions",
        handler=apk.list_versions,
        auth="viewer",
        summary="Registered APK builds, by package and newest version first",
        query={"package_name": {"type": "string", "minLength": 1, "maxLength": 255}, "limit": LIMIT},
        responses={200: s.ApkVersionList, 422: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/apk-versions/{build_id}/rollout",
        handler=apk.get_rollout,
        auth="viewer",
        summary="A build's rollout funnel: downloads (raw events, expiring), installations, devices"
        " reporting the version, median download-to-install time",
        responses={200: s.RolloutFunnel, 404: s.ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/v1/apk-installations",
        handler=apk.report_installation,
        auth="device",
        summary="Report the calling device's install of a build: installing, installed or failed"
        " (forward only; a failed install may be retried). 201 first report, 200 otherwise, 409 backward",
        request=s.ApkInstallationReport,
        responses={
            200: s.ApkInstallation,
            201: s.ApkInstallation,
            404: s.ErrorBody,
            409: s.InstallationConflict,
        },
    ),
    Endpoint(
        method="GET",
        path="/v1/devices",
        handler=fleet.get_devices,
        auth="viewer",
        summary="Devices with their presence, filtered, in keyset pages: offline_since oldest first"
        " for presence=offline, device_id otherwise",
        query=DEVICE_LIST_QUERY,
        responses={200: s.DeviceList, 422: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/devices/{device_id}",
        handler=devices.get_device,
        auth="viewer",
        summary="A device: enrollment, presence, last seen, battery, status, app version, push reachability",
        responses={200: s.DeviceSummary, 404: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/devices/{device_id}/events",
        handler=fleet.get_device_events,
        auth="viewer",
        summary="A device's lifecycle events (enrolled, re_enrolled, credential_revoked, reinstated,"
        " went_offline, came_online, app_version_changed), newest first",
        query={"limit": LIMIT, "before": BEFORE},
        responses={200: s.DeviceEventList, 404: s.ErrorBody, 422: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/fleet/summary",
        handler=fleet.get_fleet_summary,
        auth="viewer",
        summary="Devices by presence, app version (top 20), status and battery; enrolled in the last"
        " 24 h and 7 d",
        responses={200: s.FleetSummary},
    ),
    Endpoint(
        method="GET",
        path="/v1/enrollment-events",
        handler=fleet.get_enrollment_events,
        auth="viewer",
        summary="Enrollments and refusals (refusals counted per address and window), newest first",
        query={
            "token_id": DATABASE_ID,
            "outcome": {"type": "string", "enum": list(fleet.ENROLLMENT_OUTCOMES)},
            "limit": LIMIT,
            "before": BEFORE,
        },
        responses={200: s.EnrollmentEventList, 422: s.ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/v1/devices/{device_id}/revoke",
        handler=devices.revoke_device,
        auth="admin",
        summary="Revoke a device's credential and ban its id: it cannot enroll again until reinstated",
        responses={200: s.DeviceState, 404: s.ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/v1/devices/{device_id}/reinstate",
        handler=devices.reinstate_device,
        auth="admin",
        summary="Lift a device's ban; its old credential stays revoked, so it re-enrolls with a token"
        " bound to its id",
        responses={200: s.DeviceState, 404: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/devices/{device_id}/heartbeats",
        handler=heartbeats.list_heartbeats,
        auth="viewer",
        summary="A device's heartbeats, newest first",
        query={"limit": LIMIT},
        responses={200: s.HeartbeatList, 404: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/devices/{device_id}/dispatches",
        handler=dispatches.list_device_dispatches,
        auth="viewer",
        summary="A device's dispatches, newest first",
        query={"limit": LIMIT},
        responses={200: s.DispatchList, 404: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/devices/{device_id}/history",
        handler=history.get_device_history,
        auth="viewer",
        summary="A device's heartbeats per hour or day: rollups, plus the raw rows not rolled up yet",
        query=HISTORY_QUERY,
        responses={200: s.DeviceHistory, 404: s.ErrorBody, 422: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/v1/fleet/history",
        handler=history.get_fleet_history,
        auth="viewer",
        summary="The fleet's devices seen, heartbeats and average battery per hour or day (rollups only)",
        query=HISTORY_QUERY,
        responses={200: s.FleetHistory, 422: s.ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/health",
        handler=health.health,
        auth="none",
        summary="Liveness and readiness",
        responses={200: s.Health, 503: s.Health},
    ),
    Endpoint(
        method="GET",
        path="/health/live",
        handler=health.live,
        auth="none",
        summary="Liveness only",
        responses={200: None},
    ),
    Endpoint(
        method="GET",
        path="/metrics",
        handler=health.metrics,
        auth="none",
        summary="Prometheus metrics",
        responses={200: None},
    ),
    Endpoint(
        method="GET",
        path="/openapi.json",
        handler=openapi_doc.serve_openapi,
        auth="none",
        summary="This document",
        responses={200: None},
    ),
)
