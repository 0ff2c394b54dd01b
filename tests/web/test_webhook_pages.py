"""The webhook pages (issue 16): owners add a webhook (the secret shown once), see its
delivery history, send a test event, redeliver and delete; others are refused; CSRF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cangku.config import EventSettings, Settings
from cangku.events.delivery import Deliverer
from cangku.registry import Registry
from tests.api.events_receiver import Receiver, verify

from .conftest import Browser


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data=tmp_path / "data", events={"allow_private": True})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


async def test_owner_adds_a_webhook_sees_its_history_tests_redelivers_and_deletes_it(
    browser: Browser, registry: Registry, receiver: Receiver
) -> None:
    await browser.sign_in("jimo")
    page = await browser.client.get("/r/jimo/app/-/webhooks")
    assert page.status_code == 200 and 'id="no-webhooks"' in page.text
    made = await browser.post(
        "/r/jimo/app/-/webhooks",
        {"url": receiver.url, "types": "io.cangku.tag.created", "tags": "1.*\nlatest\n"},
    )
    assert made.status_code == 201, made.text
    secret = re.search(r'<code id="secret">(whsec_[^<]+)</code>', made.text)
    assert secret is not None
    hook = re.search(r'href="/webhooks/(\d+)"', made.text)
    assert hook is not None
    listing = await browser.client.get("/r/jimo/app/-/webhooks")
    assert receiver.url in listing.text and "1.*, latest" in listing.text
    assert "whsec_" not in listing.text  # never again

    detail_path = f"/webhooks/{hook.group(1)}"
    assert (await browser.post(f"{detail_path}/test")).status_code == 303
    worker = Deliverer(registry.metadata, EventSettings(allow_private=True))
    assert await worker.deliver_due() == 1
    [(headers, body)] = receiver.requests
    assert verify(secret.group(1), headers, body)
    receiver.status = 500
    await browser.post(f"{detail_path}/test")
    await worker.deliver_due()
    detail = await browser.client.get(detail_path)
    assert detail.status_code == 200 and "whsec_" not in detail.text
    rows = detail.text.split('id="deliveries"', 1)[1].split("</table>", 1)[0]
    assert rows.count("<tr>") == 3  # the header and two deliveries
    assert "HTTP 500" in rows and ">500<" in rows and ">204<" in rows and " ms<" in rows
    delivery = re.findall(r"/deliveries/(\d+)/redeliver", rows)[-1]  # the delivered one
    receiver.status = 204
    again = await browser.post(f"{detail_path}/deliveries/{delivery}/redeliver")
    assert again.status_code == 303
    assert await worker.deliver_due() == 1  # the redelivery (the retry waits its backoff)
    assert receiver.requests[-1][0]["webhook-id"] == receiver.requests[0][0]["webhook-id"]
    await worker.close()
    missing = await browser.post(f"{detail_path}/deliveries/999999/redeliver")
    assert missing.status_code == 404

    assert (await browser.post(f"{detail_path}/delete")).status_code == 303
    assert (await browser.client.get(detail_path)).status_code == 404


async def test_bad_urls_and_private_addresses_are_refused_on_the_form(
    browser: Browser, registry: Registry, tmp_path: Path
) -> None:
    await browser.sign_in("jimo")
    refused = await browser.post("/n/jimo/-/webhooks", {"url": "ftp://x.example/"})
    assert refused.status_code == 400 and 'id="form-error"' in refused.text
    assert "whsec_" not in refused.text
    refused = await browser.post(
        "/n/jimo/-/webhooks", {"url": "https://x.example/", "types": "io.cangku.nope"}
    )
    assert refused.status_code == 400 and "unknown event types" in refused.text


async def test_others_are_refused_and_forms_need_the_csrf_token(
    browser: Browser, other_browser: Browser, receiver: Receiver
) -> None:
    await browser.sign_in("jimo")
    made = await browser.post("/n/jimo/-/webhooks", {"url": receiver.url})
    assert made.status_code == 201
    hook = re.search(r'href="/webhooks/(\d+)"', made.text)
    assert hook is not None
    await other_browser.sign_in("lee")
    for response in (
        await other_browser.client.get("/n/jimo/-/webhooks"),
        await other_browser.client.get("/r/jimo/app/-/webhooks"),
        await other_browser.post("/n/jimo/-/webhooks", {"url": receiver.url}),
        await other_browser.client.get(f"/webhooks/{hook.group(1)}"),
        await other_browser.post(f"/webhooks/{hook.group(1)}/test"),
        await other_browser.post(f"/webhooks/{hook.group(1)}/delete"),
    ):
        assert response.status_code == 403
    # Without the token: refused, nothing added.
    forged = await browser.client.post("/n/jimo/-/webhooks", data={"url": receiver.url})
    assert forged.status_code == 403
    listing = await browser.client.get("/n/jimo/-/webhooks")
    assert set(re.findall(r'href="/webhooks/(\d+)"', listing.text)) == {hook.group(1)}
