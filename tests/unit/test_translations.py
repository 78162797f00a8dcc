"""Every text the gateway shows is in the Spanish catalog: extracted the way
``make babel-extract`` does (gateway/babel.cfg, ``_``, ``gettext``, ``_l``), each one has a
translation in gateway/translations/es/LC_MESSAGES/messages.po that is not fuzzy. A string
marked with a name pybabel does not know (an alias such as ``_gettext``) is never
extracted, and a catalog update then drops its translation: this fails first."""
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None, "lazy_gettext": None}
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]


def _extracted() -> dict[str, str]:
    found = {}
    for filename, _lineno, message, _comments, _context in extract_from_dir(
            str(GATEWAY), METHODS, keywords=KEYWORDS, options_map={"templates/**.html": {}}):
        for msgid in message if isinstance(message, tuple) else (message,):
            if msgid:
                found.setdefault(msgid, filename)
    return found


def test_every_text_the_gateway_shows_is_translated_to_spanish():
    catalog = read_po((GATEWAY / "translations/es/LC_MESSAGES/messages.po").open("rb"))
    extracted = _extracted()
    assert "%(user)s said %(when)s" in extracted and "Messages" in extracted  # the extraction sees both kinds of file
    missing = sorted(f"{where}: {msgid!r}" for msgid, where in extracted.items()
                     if catalog.get(msgid) is None or not catalog[msgid].string or catalog[msgid].fuzzy)
    assert not missing, "not translated (run make babel-update, then translate):\n" + "\n".join(missing)


def test_the_routes_mark_texts_with_names_pybabel_extracts():
    aliases = [str(path.relative_to(GATEWAY)) for path in GATEWAY.rglob("*.py")
               if "gettext as _g" in path.read_text() or "gettext as _gettext" in path.read_text()]
    assert not aliases, f"an alias of gettext hides texts from pybabel: {aliases}"
