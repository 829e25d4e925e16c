"""Errors that a stage reports as one line and a nonzero exit code (see `appliedtorch.core.cli`)."""


class AppliedTorchError(Exception):
    """An expected failure: the message is shown to the user as is, without a traceback."""

    exit_code = 1


class ParamsError(AppliedTorchError):
    """params.yaml is unreadable, incomplete or out of range."""

    exit_code = 2


class DataError(AppliedTorchError):
    """A dataset is missing, corrupt or cannot be fetched."""


class TrackingError(AppliedTorchError):
    """The MLflow tracking store cannot be reached or written."""


class DivergenceError(AppliedTorchError):
    """Training produced a NaN or infinite loss."""
