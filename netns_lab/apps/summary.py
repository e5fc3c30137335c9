"""yaobank summary: fetches the account from `database` through its cluster IP, returns a summary."""

from __future__ import annotations

from netns_lab.apps.common import AppHandler, json_body, main


class SummaryHandler(AppHandler):
    """GET / -> account summary plus the summary and database pods that served it."""

    def summary(self) -> tuple[int, str, bytes]:
        """Summarise the database's account record; name this pod so replicas can be told apart."""
        data = self.fetch_json()
        acct = data["account"]
        return json_body(
            {
                "name": acct["name"],
                "account": acct["account"],
                "balance": acct["balance"],
                "currency": acct["currency"],
                "summary_pod": self.pod,
                "database_pod": data.get("database_pod"),
            }
        )

    routes = {"/": summary}


if __name__ == "__main__":
    main("summary", SummaryHandler)
