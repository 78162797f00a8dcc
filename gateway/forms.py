"""Helpers shared by the gateway's forms, and the base class every form uses."""
from babel import support
from flask import abort, current_app, flash, request
from flask_babel import _, get_locale
from flask_wtf import FlaskForm
from flask_wtf.form import _Auto  # the "read the request" default (Flask-WTF pinned)
from wtforms.i18n import messages_path

from kernel.errors import ServiceError

# locale -> WTForms' catalog for it (TextForm.Meta.get_translations)
_WTFORMS_TRANSLATIONS: dict[str, support.NullTranslations] = {}


class TextForm(FlaskForm):
    """A form whose fields are all text: it reads only the URL-encoded (or multipart) text
    fields of a submission.

    Flask-WTF also feeds a form the request's file parts and a JSON body: a file part
    named like a text field reaches the validators as a ``FileStorage`` (``len()`` fails:
    a 500), and JSON values can be numbers, lists or objects. None of our forms takes a
    file or JSON, so a submission carrying a file part is refused with a 400, and a JSON
    body counts as an empty form (its fields are "required").
    """

    class Meta(FlaskForm.Meta):
        def get_translations(self, form):
            """WTForms' own messages in the request's locale, as Flask-WTF gives them, but
            loaded once a process per locale: Flask-WTF reads and parses the catalog on
            every request (about a tenth of a form page's CPU). The catalogs are only read."""
            if not current_app.config.get("WTF_I18N_ENABLED", True):
                return super().get_translations(form)
            locale = get_locale()
            translations = _WTFORMS_TRANSLATIONS.get(str(locale))
            if translations is None:  # one per locale the app offers (select_locale)
                translations = support.Translations.load(messages_path(), [locale], domain="wtforms")
                _WTFORMS_TRANSLATIONS[str(locale)] = translations
            return translations

        def wrap_formdata(self, form, formdata):
            if formdata is not _Auto or not form.is_submitted():
                return super().wrap_formdata(form, formdata)
            if request.files:
                abort(400, description=_("This form takes text only, and a file was sent."))
            return request.form or None


def show_service_error(form, error: ServiceError) -> None:
    """Put a service's validation error under the field it names, or flash it."""
    field = getattr(form, error.field, None) if error.field else None
    if field is not None:
        field.errors = list(field.errors) + [error.message]
    else:
        flash(error.message)
