"""The one base class of freshet errors; subclasses live beside the code that raises them."""


class FreshetError(Exception):
    """Base of every freshet error."""
