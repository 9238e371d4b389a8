"""GET a JSON page of an admin port, failing with one line that says what and where."""

from __future__ import annotations

import json
from typing import Any

TIMEOUT_SECONDS = 5.0


class AdminError(Exception):
    """The admin port could not be asked, or did not answer with JSON."""


def get_json(address: str, path: str, what: str, expect: type = dict) -> Any:
    """The JSON of http://`address``path`, of type `expect`; `what` names the server in
    the error."""
    # Here, not at the top: every `meshlet` command imports this module, and urllib
    # costs `meshlet init` (on a pod's start path) a tenth of its run.
    import urllib.error
    import urllib.request

    url = f"http://{address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            said = exc.read(200).decode(errors="replace").strip().splitlines()
        detail = f": {said[0]}" if said else ""
        raise AdminError(
            f"{what} at {address} answered {path} with HTTP {exc.code}{detail}"
        ) from None
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot ask {what} at {address}: {reason}") from None
    try:
        found = json.loads(body)
    except ValueError:
        found = None
    if not isinstance(found, expect):
        raise AdminError(f"{what} at {address} answered {path} with no JSON {expect.__name__}")
    return found
