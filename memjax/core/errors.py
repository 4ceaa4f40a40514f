"""Errors that end a run with one line and exit status 2 (memjax.core.cli), light to import."""


class TrainingDiverged(RuntimeError):
  """Loss, gradients or parameters went non-finite; the last good checkpoint is left intact."""


class TrainingStopped(RuntimeError):
  """The system asked to stop (System.stop_reason); the last good checkpoint is left intact."""
