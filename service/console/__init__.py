"""The operator console: server-rendered pages at `/console/` on the service's own app.

One module per job: `sessions` (console logins in `sessions`), `passwords` (argon2id),
`csrf` (form tokens), `access` (the checks every page passes), `login`, one module per screen
(`overview`, `devices`), `routes` (the table, `mount`). Templates are Jinja2 with autoescape;
the only script besides the console's own is htmx, vendored and pinned in `static/`.
"""
