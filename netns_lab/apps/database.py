"""yaobank database: answers account data as JSON on :2379 (the real one is etcd)."""

from __future__ import annotations

from netns_lab.apps.common import AppHandler, json_body, main

ACCOUNT = {"name": "Spike Curtis", "account": "22-4410-37", "balance": "2389.45", "currency": "USD"}


class DatabaseHandler(AppHandler):
    """GET / -> the account record and which pod served it."""

    def account(self) -> tuple[int, str, bytes]:
        """The account, tagged with this pod's name."""
        return json_body({"account": ACCOUNT, "database_pod": self.pod})

    routes = {"/": account}


if __name__ == "__main__":
    main("database", DatabaseHandler)
