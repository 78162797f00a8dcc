"""Typed errors that cross RPC: a service raises them, the caller catches the same class.

nameko serialises an exception raised by an RPC entry point as its class path and
``args``; ``deserialize_to_instance`` makes the caller's proxy rebuild it as this class
(not a generic ``RemoteError``), provided the caller imported this module, which the
gateway does. So ``args`` must be exactly what ``__init__`` takes: (message, field).
"""
from nameko.exceptions import deserialize_to_instance


class ServiceError(Exception):
    """Base of the errors a person can be shown. ``field`` names the form field at fault."""

    default_field: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        deserialize_to_instance(cls)  # every subclass crosses RPC as itself

    def __init__(self, message: str = "", field: str | None = None):
        super().__init__(message, field if field is not None else self.default_field)

    @property
    def message(self) -> str:
        return self.args[0]

    @property
    def field(self) -> str | None:
        return self.args[1]

    def __str__(self) -> str:
        return self.message


class ValidationFailed(ServiceError):
    """Input was rejected; the message says why and ``field`` (when known) says where."""


class UsernameTaken(ValidationFailed):
    default_field = "username"


class EmailTaken(ValidationFailed):
    default_field = "email"


class InvalidCredentials(ServiceError):
    """Username and password do not match an account."""


class UserNotFound(ServiceError):
    """No user has that id or username."""


class RecipientNotFound(UserNotFound):
    """A message was addressed to a user who does not exist."""


class DependencyUnavailable(ServiceError):
    """A service could not reach another service it needs (it did not answer in time)."""


class DatabaseUnavailable(DependencyUnavailable):
    """A service could not reach its own database (refused, cut, timed out): try again
    shortly. Raised for every entry point by ``kernel.rpc.Rpc`` (see
    ``kernel.db.is_database_unavailable``); a ``DependencyUnavailable``, so a caller that
    answers 503 for one answers 503 for both."""


def is_whole(value) -> bool:
    """Whether an RPC argument is an integer: JSON's true and false arrive as bools, which
    Python counts as ints."""
    return isinstance(value, int) and not isinstance(value, bool)


def whole_number(value, message: str, low: float = float("-inf"), high: float = float("inf")) -> int:
    """``value`` if it is a whole number from ``low`` to ``high``, else ``ValidationFailed``."""
    if not is_whole(value) or not low <= value <= high:
        raise ValidationFailed(message)
    return value
