"""The one error a decoder raises, and where in a resource it points."""

from __future__ import annotations

from dataclasses import dataclass

from meshlet.xds.error_detail import bounded, quoted


class ValidationError(ValueError):
    """A resource the sidecar cannot honour; the message becomes the NACK's error_detail."""


@dataclass(frozen=True)
class Where:
    """The resource a problem is in: `fail` names it, shortened, before the problem."""

    kind: str
    name: str

    def fail(self, problem: str) -> ValidationError:
        return ValidationError(bounded(f'{self.kind} "{quoted(self.name)}": {problem}'))
