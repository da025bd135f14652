"""How every training program ends: one line on stderr and an exit status, never a traceback,
for the errors a user can fix (a bad flag, config value, file or data: 2; training that cannot
go on: 1; Ctrl-C: 130). ``keras_convnext.cli`` does the work for every command of the package;
``-v`` shows the traceback too."""

from keras_convnext import cli
from training.session import TrainingError


def exit_status(work, report):
    """Runs ``work()``; on success prints ``report(result)`` and returns 0, else the status of
    the failure after printing its one-line message."""
    return cli.exit_status(work, report, failures=(TrainingError,))
