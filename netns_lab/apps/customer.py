"""yaobank customer: the web front end on :80 (NodePort 30180); renders the summary it fetches as HTML."""

from __future__ import annotations

import html

from netns_lab.apps.common import AppHandler, main

PAGE = """<!DOCTYPE html>
<html>
<head><title>YAO Bank</title></head>
<body>
<h1>Welcome to YAO Bank</h1>
<table>
<tr><td>Name:</td><td id="name">{name}</td></tr>
<tr><td>Account:</td><td id="account">{account}</td></tr>
<tr><td>Balance:</td><td id="balance">{balance} {currency}</td></tr>
</table>
<p><a href="/logout">Log out</a></p>
<p id="served-by">customer pod: {customer_pod}; summary pod: {summary_pod}; database pod: {database_pod}</p>
</body>
</html>
"""


class CustomerHandler(AppHandler):
    """GET / -> the bank's page with the account data from `summary`."""

    def page(self) -> tuple[int, str, bytes]:
        """Fetch the summary and render it; every pod on the path is named at the bottom."""
        s = self.fetch_json()
        fields = {k: html.escape(str(s.get(k, ""))) for k in ("name", "account", "balance", "currency", "summary_pod", "database_pod")}
        return 200, "text/html; charset=utf-8", PAGE.format(customer_pod=html.escape(self.pod), **fields).encode()

    routes = {"/": page}


if __name__ == "__main__":
    main("customer", CustomerHandler)
