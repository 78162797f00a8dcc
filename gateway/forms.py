"""Helpers shared by the gateway's forms."""
from flask import flash

from kernel.errors import ServiceError


def show_service_error(form, error: ServiceError) -> None:
    """Put a service's validation error under the field it names, or flash it."""
    field = getattr(form, error.field, None) if error.field else None
    if field is not None:
        field.errors = list(field.errors) + [error.message]
    else:
        flash(error.message)
