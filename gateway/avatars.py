"""Avatars: the tutorial's Gravatar URL (``d=identicon``), or an identicon drawn here.

The local identicon is a 5x5 grid, mirrored left to right, coloured and filled from the
same MD5 Gravatar uses, so the same user always gets the same picture, and no request
leaves the site (the default in embedded mode: ``AVATARS=local``).
"""
from __future__ import annotations

import hashlib
import re

from flask import Response, abort, current_app, url_for

DIGEST = re.compile(r"^[0-9a-f]{32}$")
SIZES = range(8, 513)


def digest_of(profile: dict) -> str:
    # A profile from before avatars were part of it (a memory filled earlier): its id's.
    return profile.get("avatar") or hashlib.md5(str(profile.get("id")).encode()).hexdigest()


def avatar_url(profile: dict, size: int) -> str:
    digest = digest_of(profile)
    if current_app.config.get("AVATARS") == "local":
        return url_for("main.avatar", digest=digest, s=size)
    return f"https://www.gravatar.com/avatar/{digest}?d=identicon&s={size}"


def identicon(digest: str, size: str | None) -> Response:
    if not DIGEST.match(digest):
        abort(404)
    pixels = int(size) if size and size.isdigit() and int(size) in SIZES else 80
    bits = int(digest, 16)
    colour = f"#{digest[:6]}"
    cells = []
    for row in range(5):
        for column in range(3):
            if bits >> (row * 3 + column) & 1:
                for x in {column, 4 - column}:
                    cells.append(f'<rect x="{x}" y="{row}" width="1" height="1"/>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{pixels}" height="{pixels}" viewBox="-0.5 -0.5 6 6">'
           f'<rect x="-0.5" y="-0.5" width="6" height="6" fill="#f0f0f0"/><g fill="{colour}">{"".join(cells)}</g></svg>')
    response = Response(svg, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "public, max-age=86400, immutable"
    return response
