"""Errors with a message a user can act on: the CLI prints them without a traceback."""


class HubfleetError(Exception):
    """Base of errors whose message says what went wrong and what to do."""


class ProviderNotReady(HubfleetError):
    """This provider's path for an operation is not built yet; nothing was changed."""
