"""The repository page's description, overview and pulls (issue 17)."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx

from cangku.auth.accounts import Accounts
from cangku.registry import Registry
from cangku.registry.descriptions import describe, set_description
from cangku.web.markdown import render_markdown

from .conftest import Browser, store_image

XSS_OVERVIEW = """# Hello

<script>alert('raw')</script>
<img src=x onerror="alert('img')">

[click](javascript:alert('link')) and [home](https://example.com/docs)

<a href="https://example.com" onclick="alert('a')">raw link</a>
"""


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(html)
    return parser.found


def assert_harmless(html: str) -> None:
    for tag, attributes in elements(html):
        assert tag not in {"script", "style", "iframe", "object", "embed", "form"}, tag
        assert not any(name.startswith("on") for name in attributes), (tag, attributes)
        for name in ("href", "src"):
            value = attributes.get(name)
            assert value is None or value.startswith(("https://", "http://", "mailto:")), value
        if tag == "a":
            assert attributes.get("rel") == "nofollow noopener"


def test_markdown_is_rendered_and_sanitized() -> None:
    html = str(
        render_markdown(
            XSS_OVERVIEW + "\n[ftp](ftp://example.com) ![d](data:image/png;base64,AA==)\n"
        )
    )
    assert "<h1>Hello</h1>" in html
    assert_harmless(html)
    # Raw HTML stays text, links the renderer makes carry rel, other schemes lose their URL.
    assert "&lt;script&gt;alert('raw')&lt;/script&gt;" in html
    assert '<a href="https://example.com/docs" rel="nofollow noopener">home</a>' in html
    assert "ftp://" not in html and "data:" not in html


async def test_owner_edits_description_and_overview_shown_sanitized(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1")
    await browser.sign_in("jimo")
    saved = await browser.post(
        "/r/jimo/app/-/description",
        {"description": "A <b>small</b> server", "overview": XSS_OVERVIEW},
    )
    assert saved.status_code == 303
    page = await browser.client.get("/r/jimo/app")
    assert "A &lt;b&gt;small&lt;/b&gt; server" in page.text
    assert "<h1>Hello</h1>" in page.text
    overview = page.text.split('<div class="overview" id="overview">', 1)[1].split("</div>", 1)[0]
    assert_harmless(overview)
    assert "&lt;script&gt;" in overview
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    about = await describe(registry, "jimo/app")
    assert (about.description, about.updated_by) == ("A <b>small</b> server", "jimo")


async def test_a_description_too_long_is_refused_with_a_page(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1")
    await browser.sign_in("jimo")
    refused = await browser.post("/r/jimo/app/-/description", {"description": "x" * 101})
    assert refused.status_code == 400
    assert "at most 100" in refused.text
    assert (await describe(registry, "jimo/app")).description is None


async def test_reader_sees_no_form_and_may_not_post_it(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    await store_image(registry, "lee/shared", "1", actor="lee")
    await accounts.set_public("lee/shared", True)
    await browser.sign_in("jimo")
    page = (await browser.client.get("/r/lee/shared")).text
    assert "Save description" not in page
    refused = await browser.post("/r/lee/shared/-/description", {"description": "mine now"})
    assert refused.status_code == 403
    assert (await describe(registry, "lee/shared")).description is None


async def test_description_api_needs_owner_rights(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    import base64

    await store_image(registry, "lee/shared", "1", actor="lee")
    await accounts.set_public("lee/shared", True)

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    client: httpx.AsyncClient = browser.client
    url = "/api/v1/repositories/lee/shared/description"
    assert (await client.get(url)).status_code == 200  # public: anyone may read
    refused = await client.put(
        url, json={"description": "x"}, headers=basic("jimo", "jimo-password")
    )
    assert refused.status_code == 403
    allowed = await client.put(
        url, json={"description": "Lee's"}, headers=basic("lee", "lee-password")
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["updated_by"] == "lee"


async def test_repository_page_shows_pulls_per_tag(browser: Browser, registry: Registry) -> None:
    digest = await store_image(registry, "jimo/app", "1")
    await store_image(registry, "jimo/app", "2")
    for _ in range(3):
        registry.pulls.record("jimo/app", "1", digest)
    await browser.sign_in("jimo")
    page = (await browser.client.get("/r/jimo/app")).text
    assert '<span id="pulls">3 pulls</span>' in page
    assert '<td data-label="Pulls">3</td>' in page
    assert '<td data-label="Pulls">0</td>' in page


async def test_list_searches_descriptions_and_shows_them_with_pulls(
    browser: Browser, registry: Registry
) -> None:
    digest = await store_image(registry, "jimo/web", "1")
    await store_image(registry, "jimo/db", "1")
    await set_description(registry, "jimo/web", "Serves <HTTP> quickly", None, "jimo")
    registry.pulls.record("jimo/web", "1", digest)
    await registry.pulls.flush()
    registry.pulls.record("jimo/web", "1", digest)  # not written yet: shown too
    await browser.sign_in("jimo")
    found = (await browser.client.get("/?q=http")).text
    assert "jimo/web" in found and "jimo/db" not in found
    assert '<span class="muted repository-description">Serves &lt;HTTP&gt; quickly</span>' in found
    assert '<td data-label="Pulls">2</td>' in found
    # The name is still searched; a `%` is a character, not a wildcard.
    assert "jimo/db" in (await browser.client.get("/?q=db")).text
    assert "jimo/web" not in (await browser.client.get("/?q=%25")).text
