"""Device telemetry backend.

Layers, top to bottom (`LAYERS`): a module imports only from its own package or module and
from layers below its own, never from a layer above or from another package of its own layer,
and no modules import each other in a circle (tests/test_layers.py checks both over every
import, those inside functions included):

1. `__main__`; 2. `cli`; 3. `serve`, `admin`; 4. `cli_errors`, the CLI's one error path;
5. `app`, the wiring; 6. `console`, the operator's screens over the API's own parts; 7. `api`;
8. `migrations`; 9. `retention`, whose maintenance round runs the domain packages' steps; 10. `bulk`, one
command to a fleet selection, over `fleet`'s filters and `commands`' dispatch; 11. the domain
packages `fleet`, `commands`, `rollout`, `push`, `webhooks`, `enrollment_tokens`,
each owning its types, statements, state machine and status enum; 12. `events`, the log they
write to, and `audit`, the operators' log of who did what; 13. `ingest`, the group-commit
writer and the merge interface the domain packages' row kinds implement; 14. `db`; 15. `tokens`,
`metrics`, `event_loop`; 16. `settings`.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("serve", "admin"),
    ("cli_errors",),
    ("app",),
    ("console",),
    ("api",),
    ("migrations",),
    ("retention",),
    ("bulk",),
    ("fleet", "commands", "rollout", "push", "webhooks", "enrollment_tokens"),
    ("events", "audit"),
    ("ingest",),
    ("db",),
    ("tokens", "metrics", "event_loop"),
    ("settings",),
)
