"""Why a run can end before its work is done, and how each case is told to the user.

Three kinds of failure get three answers (README: Failures):

* a record's own problem is a reject with its reason, never an exception that reaches here;
* an infrastructure failure (an engine, actor or node lost, a hung replica, a lost dedup index)
  is retried where it happens; only when retrying cannot help does it end the run, as
  :class:`cluster.engine.EngineUnavailable`;
* a configuration or programming error ends the run at once, with the first error shown.

Whatever ends a run, committed work stays committed and the same command resumes it.
"""

from __future__ import annotations


class RunStopped(RuntimeError):
    """The run ended early; committed work is intact and rerunning the spec resumes it."""

    exit_code = 1


class ConfigurationError(RunStopped):
    """A mistake in the spec or its files that shows only once work runs (a prompt template
    naming an undefined variable): every record would fail the same way."""


class TooManyStageErrors(RunStopped):
    """Stage code raised on more than ``failures.max_stage_error_rate`` of the work items: a bug
    or a misconfiguration, not a few bad records."""


class CommitFailed(RunStopped):
    """A shard could not be written (a full disk, a lost mount): generation stops at once instead
    of piling up work that cannot be saved."""


class Interrupted(RunStopped):
    """SIGINT or SIGTERM: work that was complete is committed; the rest is redone on resume."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for "ended by signal N"
