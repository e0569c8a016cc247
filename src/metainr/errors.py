"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class MetaINRError(Exception):
    """A mistake in user input (file, option, checkpoint) with a one-line explanation."""


class CheckpointMismatch(MetaINRError):
    """A checkpoint does not match the architecture or learner it is loaded into."""


class TrainingDiverged(MetaINRError):
    """The outer loss became NaN or infinite; the last good checkpoint is kept."""


class NonFiniteTensors(MetaINRError):
    """Tensors to be saved hold NaN or infinite values; nothing was written."""
