"""Answers already given, replayed for the same query: the UDP loop's fast path.

A pod asks the same few names over and over, and for one table and one UDP size
limit an answer is a function of the query's bytes after its 2-byte ID (flags,
counts, the question as typed, the OPT record). So the whole response after the
ID is kept under the query after the ID, with the labels the query counts use,
and a repeated query costs one dict lookup instead of `answer()`'s parsing and
the labels' (about 0.5 us instead of 2.4 us here, 1.3 us more with counts).
Only what `answer()` itself produced is kept; a new table starts afresh (and
tables change with every endpoint change). Once full, nothing more is kept until
then: a flood of distinct names cannot push the pod's own names out again and
again, and whatever is not kept is answered as without this.
"""

from __future__ import annotations

from meshlet.sidecar.dns.observe import labels
from meshlet.sidecar.dns.table import DnsTable

# The response after the ID, and the query's type and rcode for the observer.
Replayed = tuple[bytes, str, str]

LIMIT = 2048  # distinct queries kept; a pod's working set is a few dozen to a few hundred
_LONGEST = 300  # bytes: a longer query is answered each time, never kept


class Replay:
    __slots__ = ("responses", "table")

    def __init__(self) -> None:
        self.table: DnsTable | None = None
        # Query after the ID -> response after the ID, qtype and rcode names.
        self.responses: dict[bytes, Replayed] = {}

    def for_table(self, table: DnsTable | None) -> dict[bytes, Replayed]:
        """The responses valid for `table` (none kept from any other)."""
        if table is not self.table:
            self.table = table
            self.responses = {}
        return self.responses

    def keep(self, query: bytes, response: bytes) -> tuple[str, str]:
        """Keeps `answer()`'s response to `query` (for the table of the last for_table)
        when it may; returns the query's type and rcode names, for the observer."""
        qtype, rcode = labels(query, response)
        responses = self.responses
        if len(responses) < LIMIT and len(query) <= _LONGEST and response[:2] == query[:2]:
            responses[query[2:]] = (response[2:], qtype, rcode)
        return qtype, rcode
