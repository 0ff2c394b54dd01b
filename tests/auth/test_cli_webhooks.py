"""`cangku webhooks` (issue 16) on a data directory: the secret printed once, the SSRF guard,
history, test events, redeliver, delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from cangku.auth.accounts import Accounts
from cangku.config import EventSettings
from cangku.events.delivery import Deliverer
from tests.api.events_receiver import Receiver, verify
from tests.auth.test_cli import run, with_accounts


def deliver(data: Path) -> int:
    async def send(accounts: Accounts) -> int:
        worker = Deliverer(accounts.metadata, EventSettings(allow_private=True))
        try:
            return await worker.deliver_due()
        finally:
            await worker.close()

    return with_accounts(data, send)


def test_create_list_history_test_redeliver_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    try:
        code, out, err = run(
            capsys,
            monkeypatch,
            tmp_path,
            "webhooks",
            "create",
            "--namespace",
            "jimo",
            "--url",
            receiver.url,
        )
        assert code == 1 and "not a public address" in err, (out, err)

        monkeypatch.setenv("CANGKU_EVENTS__ALLOW_PRIVATE", "true")
        code, out, err = run(
            capsys,
            monkeypatch,
            tmp_path,
            "webhooks",
            "create",
            "--repository",
            "jimo/app",
            "--url",
            receiver.url,
            "--type",
            "io.cangku.tag.created",
            "--tag",
            "1.*",
        )
        assert code == 0, err
        secret = next(line for line in out.splitlines() if line.startswith("secret: "))[8:]
        assert secret.startswith("whsec_")
        hook = out.split()[0]

        code, out, _ = run(
            capsys, monkeypatch, tmp_path, "webhooks", "list", "--repository", "jimo/app"
        )
        assert code == 0 and receiver.url in out and "1.*" in out
        assert "whsec_" not in out
        code, out, _ = run(capsys, monkeypatch, tmp_path, "webhooks", "list", "--namespace", "jimo")
        assert out.strip() == "no webhooks"  # the repository's is not the namespace's

        code, out, _ = run(capsys, monkeypatch, tmp_path, "webhooks", "test", hook)
        assert code == 0 and "queued" in out
        assert deliver(tmp_path) == 1
        [(headers, body)] = receiver.requests
        assert verify(secret, headers, body) and b"io.cangku.test" in body

        code, out, _ = run(capsys, monkeypatch, tmp_path, "webhooks", "history", hook)
        assert "io.cangku.test  delivered  attempts 1  status 204" in out
        assert "whsec_" not in out
        delivery = out.split()[0]
        code, out, _ = run(capsys, monkeypatch, tmp_path, "webhooks", "redeliver", hook, delivery)
        assert code == 0
        assert deliver(tmp_path) == 1
        assert len(receiver.requests) == 2

        code, _, err = run(capsys, monkeypatch, tmp_path, "webhooks", "redeliver", hook, "99999")
        assert code == 1 and "no delivery 99999" in err
        code, _, err = run(
            capsys,
            monkeypatch,
            tmp_path,
            "webhooks",
            "create",
            "--namespace",
            "jimo",
            "--url",
            "ftp://x.example/",
        )
        assert code == 1 and "http(s)" in err

        code, out, _ = run(capsys, monkeypatch, tmp_path, "webhooks", "delete", hook)
        assert code == 0
        code, _, err = run(capsys, monkeypatch, tmp_path, "webhooks", "history", hook)
        assert code == 1 and f"no webhook {hook}" in err
    finally:
        receiver.stop()
