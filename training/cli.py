"""How every training program ends: one line on stderr and an exit status, never a traceback,
for the errors a user can fix (a bad flag or config value, bad data, an unreadable checkpoint, a
busy output folder: 2; training that cannot go on: 1; Ctrl-C: 130)."""

import sys

from keras_convnext.weights.files import CheckpointError
from training.config import ConfigError
from training.data import DataError
from training.session import TrainingError


def exit_status(work, report):
    """Runs ``work()``; on success prints ``report(result)`` and returns 0, else the status of
    the failure after printing its one-line message."""
    try:
        result = work()
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(report(result), flush=True)
    return 0
