"""Domain errors rendered as /v2 responses: status, code and the headers the spec asks for."""

from __future__ import annotations

import json

from cangku.content.errors import RangeInvalid, TooManyRequests, TooManyTags
from cangku.distribution.errors import registry_error_response


def test_every_429_says_when_to_come_back() -> None:
    response = registry_error_response(TooManyRequests("slow down", retry_after=6.2))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert json.loads(response.body)["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_unsatisfiable_range_is_416_size_invalid_with_the_size() -> None:
    response = registry_error_response(RangeInvalid("range not satisfiable", 100))
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */100"
    assert json.loads(response.body)["errors"][0]["code"] == "SIZE_INVALID"


def test_too_many_tags_is_414() -> None:
    response = registry_error_response(TooManyTags("too many tags"))
    assert response.status_code == 414
