"""The one error a loader raises for bad input."""


class ModelLoadError(ValueError):
  """A model folder or file that cannot be loaded: the message names the file and the field.

  A subclass of ValueError, so callers that catch ValueError (config validation, binaries that
  turn it into one line on stderr and exit code 2) handle it without knowing this module.
  """
