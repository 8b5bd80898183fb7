"""Errors a user can act on: which layer, which rule, which value, and what to do."""

from __future__ import annotations

from dataclasses import dataclass, replace


class NpukitError(Exception):
    """An error in the user's input (model, file, option) with a message meant to be read as is."""


class UnsupportedError(NpukitError):
    """An op that exists but not in this configuration; `fix` says what to change in the model."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class Problem:
    """One finding about one layer: collected, never raised one at a time."""

    where: str  # module path or node name
    rule: str
    message: str
    fix: str = ""
    source: str = ""  # file:line of the user's code, when known
    severity: str = "error"  # "warning": reported, but nothing is refused for it

    def with_source(self, source: str) -> Problem:
        return replace(self, source=source)

    def to_dict(self) -> dict:
        return {"where": self.where, "rule": self.rule, "message": self.message, "fix": self.fix,
                "source": self.source, "severity": self.severity}

    def __str__(self) -> str:
        text = f"{self.where}: [{self.rule}] {self.message}"
        if self.severity != "error":
            text = f"{self.severity}: {text}"
        if self.source:
            text += f" (at {self.source})"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class ProblemsError(NpukitError):
    """Every problem found, reported together so the user fixes them in one pass."""

    def __init__(self, headline: str, problems: list[Problem]):
        self.problems = list(problems)
        body = "\n".join(f"  - {str(p)}" for p in self.problems)
        super().__init__(f"{headline} ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):\n{body}")


def invalid_file_error(what: str, where: str, error) -> NpukitError:
    """A pydantic ValidationError of a YAML file or dict as one error naming every bad key."""
    lines = [f"  {'.'.join(map(str, err['loc'])) or '<top level>'}: {err['msg']}" for err in error.errors()]
    return NpukitError(f"{what} {where} is invalid:\n" + "\n".join(lines))
