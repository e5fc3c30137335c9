"""yaobank's apps: which ones exist and what each needs. Stdlib only, so app processes start fast.

Each app runs as `python -m netns_lab.apps.<app>` inside its pod's namespace; see common.py.
"""

from __future__ import annotations

# app name -> name of the service it calls (None: calls nothing)
UPSTREAM: dict[str, str | None] = {
    "customer": "summary",
    "summary": "database",
    "database": None,
}

APPS = tuple(UPSTREAM)

# path every app answers without logging: `up` polls it to know the app is serving,
# and keeping probes out of the access log keeps the log exactly the lesson's.
HEALTH_PATH = "/healthz"
