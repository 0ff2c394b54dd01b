"""Repository overviews: CommonMark (+ tables, strikethrough) rendered by markdown-it-py,
then sanitized by nh3 (Ammonia) before it reaches a page.

Two locks on the door: raw HTML in the Markdown is not passed through at all (`html`
off: it shows as text), and whatever the renderer makes is cleaned to an allow-list of
tags and attributes: no script, style, iframe or form, no `on*` handlers, only http(s) and
mailto links, each `rel="nofollow noopener"`. The page's CSP (web/site.py) forbids inline
script anyway.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

_PARSER = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)

ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "img", "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr",
    "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "td": {"align"},
    "th": {"align"},
    "code": {"class"},
}
URL_SCHEMES = {"http", "https", "mailto"}


def render_markdown(text: str) -> Markup:
    """Safe HTML for a page from user Markdown (at most MAX_OVERVIEW_CHARACTERS)."""
    html = _PARSER.render(text)
    return Markup(
        nh3.clean(
            html,
            tags=ALLOWED_TAGS,
            attributes=ALLOWED_ATTRIBUTES,
            url_schemes=URL_SCHEMES,
            link_rel="nofollow noopener",
            strip_comments=True,
        )
    )
