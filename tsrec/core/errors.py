"""One error type for every bad input: it names the file, the line (or key) and the field."""

from __future__ import annotations


class TsrecError(Exception):
    """A user-facing error. ``tsrec`` prints it as one line and exits non-zero."""

    def __init__(self, message: str, *, file: object = None, line: object = None, field: object = None):
        self.file, self.line, self.field = file, line, field
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}" if isinstance(line, int) else f"key {line!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class ParamError(TsrecError):
    """A value in params.yaml is missing or out of range."""
