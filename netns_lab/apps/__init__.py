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

# the generic test server (testserver.py): what every other image runs
TEST_SERVER = "testserver"
APPS = (*UPSTREAM, TEST_SERVER)
# a pod annotation choosing the app over what the image implies
APP_ANNOTATION = "netns-lab/app"

# path every app answers without logging: `up` polls it to know the app is serving,
# and keeping probes out of the access log keeps the log exactly the lesson's.
HEALTH_PATH = "/healthz"


def app_for_image(image: str) -> str:
    """The app a container image runs here: calico/yaobank-<app>[:tag] its yaobank app, any other the test server."""
    repo = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    app = repo.removeprefix("yaobank-")
    return app if repo.startswith("yaobank-") and app in UPSTREAM else TEST_SERVER
