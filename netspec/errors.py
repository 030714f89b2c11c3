"""Findings and the errors that carry them.

Every problem a user can cause (spec, data, CLI flag, snapshot) ends up as a `Finding`
printed as one line: ``path:line:col: error: <what>; <how to fix>``. Code raises
`SpecError` (one or more findings) or `UserError` (a message without a position);
the CLI prints them and exits 2 without a traceback.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, asdict


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    col: int
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        if not self.line:  # no position: a command-line value or a whole file
            return f"{self.path}: {self.severity}: {self.message}"
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def as_dict(self) -> dict:
        return asdict(self)


class UserError(Exception):
    """A user mistake without a position in a spec (a CLI flag, a data file, a snapshot)."""


class SpecError(UserError):
    """One or more findings in a spec; `str()` gives one line per finding."""

    def __init__(self, findings):
        self.findings = list(findings)
        super().__init__("\n".join(str(f) for f in self.findings))


class LayerError(Exception):
    """Raised by a layer's setup; the net compiler adds the file position and layer name.

    `field` names the parameter (e.g. "pooling_param.stride") whose node the error points at.
    """

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


def did_you_mean(word: str, choices) -> str:
    """' did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
