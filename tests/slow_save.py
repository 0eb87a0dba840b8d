"""Test helper imported into a training process (``custom_imports``): the
checkpoint write of iteration ``$SLOW_SAVE_ITER`` stops half-way, touches
``$SLOW_SAVE_MARKER`` and waits, so that a test can kill the process while
a checkpoint is being written."""
import os
import time

from mmengine.fileio.backends.local_backend import LocalBackend

_put = LocalBackend.put


def _slow_put(self, obj, filepath) -> None:
    target = os.environ.get('SLOW_SAVE_ITER')
    if target and f'iter_{target}.pth' in os.path.basename(str(filepath)):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
            os.fsync(f.fileno())
        open(os.environ['SLOW_SAVE_MARKER'], 'w').close()
        time.sleep(600)
    _put(self, obj, filepath)


LocalBackend.put = _slow_put
