"""Error types that carry the command-line exit code of SPEC §1.

Library code raises these with one clear line (what, where, what to do); the CLI prints the line
and exits with the code, without a traceback unless ``--debug`` is given.
"""

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_CHECKPOINT = 4
EXIT_INTERRUPTED = 130


class PfanetError(Exception):
    """Base class: an expected failure with a user-facing one-line message."""

    exit_code = EXIT_OTHER


class UsageError(PfanetError):
    """Bad command-line or recipe input (unknown key, invalid value)."""

    exit_code = EXIT_USAGE


class DataError(PfanetError):
    """Missing, malformed or inconsistent dataset, prepared data or features file."""

    exit_code = EXIT_DATA


class CheckpointError(PfanetError):
    """Checkpoint missing, corrupt, of another stage, version or architecture."""

    exit_code = EXIT_CHECKPOINT


class TrainingDiverged(PfanetError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = EXIT_OTHER


class DiskFull(PfanetError):
    """A write ran out of disk space (or quota); the file it was replacing is left as it was."""

    exit_code = EXIT_OTHER


class Interrupted(PfanetError):
    """Ctrl-C: outputs that were complete are kept, nothing half-written is left behind."""

    exit_code = EXIT_INTERRUPTED
