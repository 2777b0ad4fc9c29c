"""The indexer's errors, in one place: every stage raises these, the CLI and the service catch them."""


class IndexBuildError(RuntimeError):
    """The vectors could not be turned into the requested FAISS index."""


class IndexUpdateError(RuntimeError):
    """An add or remove cannot be applied; the live index is left as it was."""


class IndexOpenError(RuntimeError):
    """An index folder cannot be served: missing, corrupt or inconsistent files."""


class StoreUnavailableError(RuntimeError):
    """The configured store cannot be reached or used (no server, a locked Lite file, no client)."""


class ModelMismatchError(RuntimeError):
    """A model is not the one an index's vectors were made with (Manifest.require_model's default;
    callers that stop on it pass their own error class)."""
