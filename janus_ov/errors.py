"""The errors janus_ov raises on purpose. Each message says what happened and what to do."""


class JanusError(Exception):
    """Base class: anything janus_ov reports to a user as a clear, one-paragraph message."""


class ModelNotFoundError(JanusError):
    """The model id or path does not name a reachable Janus checkpoint."""


class ConversionError(JanusError):
    """A checkpoint could not be converted to OpenVINO IR."""


class InvalidInputError(JanusError, ValueError):
    """A request (image, prompt, parameter) is not acceptable; the pipeline stays usable."""


class ServerBusyError(JanusError):
    """Every slot of the server's queue is taken; the same request may succeed a little later."""
