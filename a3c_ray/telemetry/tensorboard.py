"""TensorBoard scalars without TensorFlow.

The driver writes only scalars. ``tf.summary`` (and TensorBoard's own event writer, which
goes through TensorFlow's file layer when TensorFlow is installed) would make it import
TensorFlow: seconds of CPU at every start, taken from the actors starting beside it. The
file is TensorFlow's event file (TFRecord framing, TensorBoard's CRC), and each scalar is
the record ``tf.summary.scalar`` writes (a float32 tensor under the scalars plugin), so
TensorBoard and ``tf.compat.v1.train.summary_iterator`` read it alike. The run directory
is local, so plain file I/O is enough.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path


_FILES = itertools.count()  # a process's writers never share a file name


class ScalarWriter:
    """Scalars into a new event file in ``logdir``; ``flush`` makes them visible."""

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.scalar import metadata
        from tensorboard.summary.writer.record_writer import RecordWriter

        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}." \
               f"{os.getpid()}.{next(_FILES)}"
        self._metadata = metadata.create_summary_metadata("", "")
        self._records = RecordWriter(open(Path(logdir) / name, "wb"))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[float(value)])
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, tensor=tensor, metadata=self._metadata)])
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()
