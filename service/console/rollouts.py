"""`/console/rollouts`: per build, `GET /v1/apk-versions/{build_id}/rollout`'s funnel.

The builds are `GET /v1/apk-versions`' list (`service.api.apk.versions`) and each funnel is the
API's own (`service.rollout.funnel.funnel`): download → install → verified with the failures at
each step, the median download → install time, and when the maintenance task counted them.
`rollout_funnels` is also the overview's source of its active rollouts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from service.api.apk import versions
from service.api.schemas import ApkVersion
from service.api.state import services
from service.console.access import render
from service.console.sessions import ConsoleSession
from service.rollout import funnel
from service.rollout.funnel import RolloutFunnel

BUILDS_SHOWN = 50
CONCURRENT_FUNNELS = 4


@dataclass(frozen=True, slots=True)
class BuildRollout:
    version: ApkVersion
    funnel: RolloutFunnel

    @property
    def active(self) -> bool:
        """Downloads in the window, or installations still in progress."""
        d = self.funnel.downloads
        return (
            d.started + d.completed + d.failed + d.cancelled > 0 or self.funnel.installations.installing > 0
        )


async def rollout_funnels(pool: asyncpg.Pool, request: web.Request, limit: int) -> list[BuildRollout]:
    """The newest `limit` registered builds (by registration) with their funnels, read
    `CONCURRENT_FUNNELS` at a time on their own connections (each funnel is a few short reads)."""
    window = services(request).settings.retention.apk_download_events
    builds = sorted(await versions(pool, None, 1000), key=lambda v: v.created_at, reverse=True)[:limit]
    turns = asyncio.Semaphore(CONCURRENT_FUNNELS)

    async def one(build: ApkVersion) -> BuildRollout | None:
        async with turns, pool.acquire() as conn:
            version = await funnel.find_version(conn, build.build_id)
            if version is None:  # deleted between the two reads
                return None
            return BuildRollout(build, await funnel.funnel(conn, build.build_id, version, window))

    return [r for r in await asyncio.gather(*(one(b) for b in builds)) if r is not None]


async def get_rollouts(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    rollouts = await rollout_funnels(services(request).pool, request, BUILDS_SHOWN)
    context: dict[str, Any] = {"rollouts": rollouts}
    return render(request, "rollouts.html", context)
