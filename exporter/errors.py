"""The one error type the exporter raises for bad input; the CLI prints it and exits non-zero."""


class ExportError(RuntimeError):
    pass
