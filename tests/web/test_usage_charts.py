"""Usage over time (issue 17): daily figures, the SVG charts with known numbers, the pages
and the API that show them."""

from __future__ import annotations

import base64
import re
import time
from html.parser import HTMLParser

from cangku.auth.accounts import Accounts
from cangku.metadata import usage_days
from cangku.registry import Registry
from cangku.registry.usage_history import snapshot_usage, usage_history
from cangku.web.charts import bar_chart

from .conftest import Browser, store_image

DAY = 86400.0


class _Bars(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str]] = []
        self.titles: list[str] = []
        self.tags: set[str] = set()
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "rect":
            self.bars.append({k: v or "" for k, v in attrs})
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.titles.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False


def parse(svg: str) -> _Bars:
    parser = _Bars()
    parser.feed(svg)
    return parser


def test_chart_bars_are_proportional_and_titled_with_their_numbers() -> None:
    svg = str(
        bar_chart(
            "Pulls per day",
            [("2026-11-01", 10), ("2026-11-02", 40), ("2026-11-03", None), ("<d>", 0)],
        )
    )
    chart = parse(svg)
    heights = [float(bar["height"]) for bar in chart.bars]
    assert heights[1] == 104.0  # the largest value fills the plot (120 - 16)
    assert heights[0] == 26.0 and heights[2] == 0.0 and heights[3] == 0.0
    assert chart.titles == [
        "Pulls per day",
        "2026-11-01: 10",
        "2026-11-02: 40",
        "2026-11-03: no data",
        "<d>: 0",
    ]
    assert "&lt;d&gt;" in svg  # labels are escaped
    assert not chart.tags & {"script", "foreignobject"} and " on" not in svg and "style=" not in svg


async def test_pulls_pushes_and_bytes_per_day(registry: Registry) -> None:
    digest = await store_image(registry, "jimo/app", "1")
    await store_image(registry, "lee/tool", "1", actor="lee")
    for _ in range(3):
        registry.pulls.record("jimo/app", "1", digest)
    await registry.pulls.flush()
    now = time.time()
    await snapshot_usage(registry.metadata, now)
    jimo = await usage_history(registry.metadata, "jimo", 7, now)
    assert len(jimo) == 7 and jimo[-1].day == usage_days.day_of(now)
    assert (jimo[-1].pushes, jimo[-1].pulls) == (1, 3)
    assert jimo[-1].stored_bytes is not None and jimo[-1].stored_bytes > 2048
    assert all(day.stored_bytes is None and day.pulls == 0 for day in jimo[:-1])
    everything = await usage_history(registry.metadata, None, 7, now)
    assert (everything[-1].pushes, everything[-1].pulls) == (2, 3)
    # Tomorrow's snapshot keeps today's figures as they were.
    await snapshot_usage(registry.metadata, now + DAY)
    later = await usage_history(registry.metadata, "jimo", 2, now + DAY)
    assert (later[0].pushes, later[0].pulls) == (1, 3)
    assert (later[1].pushes, later[1].pulls) == (0, 0) and later[1].stored_bytes is not None


async def test_namespace_and_admin_pages_draw_the_charts(
    browser: Browser, other_browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    digest = await store_image(registry, "jimo/app", "1")
    registry.pulls.record("jimo/app", "1", digest)
    await registry.pulls.flush()
    await snapshot_usage(registry.metadata)
    await browser.sign_in("jimo")
    page = await browser.client.get("/n/jimo")
    assert page.status_code == 200
    svgs = re.findall(r"<svg.*?</svg>", page.text, re.S)
    assert len(svgs) == 3
    today = usage_days.day_of(time.time())
    assert f"{today}: 1" in parse(svgs[2]).titles  # pulls
    assert f"{today}: 1" in parse(svgs[1]).titles  # pushes
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    # Another user's namespace is not shown; admins see the registry's.
    assert (await browser.client.get("/n/lee")).status_code == 404
    await other_browser.sign_in("admin")
    admin = await other_browser.client.get("/admin")
    assert len(re.findall(r"<svg", admin.text)) == 3 and f"{today}: 1" in admin.text


async def test_usage_history_api(browser: Browser, registry: Registry, accounts: Accounts) -> None:
    await store_image(registry, "jimo/app", "1")
    await snapshot_usage(registry.metadata)

    def basic(user: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{user}-password".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    client = browser.client
    mine = await client.get("/api/v1/namespaces/jimo/usage/history?days=3", headers=basic("jimo"))
    assert mine.status_code == 200, mine.text
    assert [day["pushes"] for day in mine.json()["days"]] == [0, 0, 1]
    assert (
        await client.get("/api/v1/namespaces/jimo/usage/history", headers=basic("lee"))
    ).status_code == 403
    assert (await client.get("/api/v1/usage/history", headers=basic("jimo"))).status_code == 403
    everything = await client.get("/api/v1/usage/history?days=30", headers=basic("admin"))
    assert len(everything.json()["days"]) == 30
    for bad in ("0", "367", "x", "1e3", "-1"):
        response = await client.get(f"/api/v1/usage/history?days={bad}", headers=basic("admin"))
        assert response.status_code == 400, bad
