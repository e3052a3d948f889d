"""The error every converter in :mod:`mmdtl.converters` raises."""


class ConversionError(ValueError):
    """The source file does not have a layout this converter understands.

    The message names the source and what is wrong; the command-line
    converters print it as one ``error:`` line and exit with status 1.
    """
