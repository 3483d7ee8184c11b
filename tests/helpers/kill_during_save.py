"""python tests/helpers/kill_during_save.py STEP [launch.py flags]: launch.py, hard-killed
(SIGKILL) right after the async save of checkpoint STEP has started, as a preemption without
warning would. Test-only fault injection: production code has no such hook."""

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from diffjax import checkpoint  # noqa: E402

KILL_AT = int(sys.argv.pop(1))
_save = checkpoint.Checkpointer.save


def save_then_die(self, step, state, force=False):
    started = _save(self, step, state, force)
    if started and step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return started


checkpoint.Checkpointer.save = save_then_die
sys.argv[0] = os.path.join(ROOT, "launch.py")

import launch  # noqa: E402

launch.run()
