"""What failed statements and exceptions leave in the log: never the values (issue #18, defect 3).

A failed statement's bound parameters (a member's name) appeared in the server log; structlog's console
traceback printed every frame's local variables; asyncpg quotes the value it could not send.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import structlog
from tongcrm.logging import configure_logging, get_logger
from tongcrm.members.models import Member
from tongcrm.privacy.redact import redact
from tongcrm.testing.database import TestDatabase

NAME = "Zhang-SECRET-NAME-4711"
MOBILE = "13812345678"


class CapturedLog:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def getvalue(self) -> str:
        return self._capsys.readouterr().err


@pytest.fixture
def captured_log(capsys: pytest.CaptureFixture[str]) -> Iterator[CapturedLog]:
    """Logging configured (in the test) as the server configures it writes to the captured stderr; the
    configuration is restored afterwards."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield CapturedLog(capsys)
    structlog.configure(**saved_config)
    root.handlers, root.level = saved_handlers, saved_level


async def test_a_failed_statement_does_not_show_its_parameters(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        session.add(Member(id=1, name="first"))
    with pytest.raises(sa.exc.IntegrityError) as failed:
        async with tongcrm_db.sessions() as session, session.begin():
            session.add(Member(id=1, name=NAME))
    assert NAME not in str(failed.value)
    assert "parameters hidden" in str(failed.value)


async def test_a_value_the_driver_quotes_is_not_logged(
    tongcrm_db: TestDatabase, captured_log: CapturedLog
) -> None:
    configure_logging(json=True)
    try:
        async with tongcrm_db.sessions() as session:
            # an integer column given text: asyncpg refuses it quoting the value, SQLite stores it
            query = sa.text("SELECT :v + 1").bindparams(sa.bindparam("v", type_=sa.Integer))
            await session.execute(query, {"v": MOBILE})
            raise RuntimeError(f"refused on SQLite too: invalid input for query argument $1: {MOBILE!r}")
    except Exception:
        get_logger("test").exception("statement failed")
    text = captured_log.getvalue()
    assert "statement failed" in text
    assert MOBILE not in text and MOBILE[-8:] not in text


@pytest.mark.parametrize("as_json", [True, False])
def test_an_exception_is_logged_without_local_variables(captured_log: CapturedLog, as_json: bool) -> None:
    configure_logging(json=as_json)

    def handler(body: dict[str, str]) -> None:
        secret_local = NAME  # noqa: F841 - what a rich traceback would print
        raise ValueError("cannot apply this body")

    try:
        handler({"mobile": MOBILE, "name": NAME})
    except ValueError:
        get_logger("test").exception("request failed")
    text = captured_log.getvalue()
    assert "cannot apply this body" in text and "handler" in text  # the traceback is there
    assert NAME not in text and MOBILE not in text
    if as_json:
        assert json.loads(text.strip().splitlines()[-1])["event"] == "request failed"


def test_stdlib_loggers_are_scrubbed_too(captured_log: CapturedLog) -> None:
    configure_logging(json=True)
    logging.getLogger("uvicorn.error").error("client sent mobile %s and Bearer tcrm_abcdefgh12345678", MOBILE)
    text = captured_log.getvalue()
    assert "client sent mobile" in text
    assert MOBILE not in text and "tcrm_abcdefgh12345678" not in text


@pytest.mark.parametrize(
    ("raw", "gone"),
    [
        ("invalid input for query argument $1: '13812345678' (expected int)", "13812345678"),
        ("call +86 138-1234-5678 now", "1234-5678"),
        ("number 8613812345678.", "13812345678"),
        ("GET /x?app_secret=abcdef123&x=1", "abcdef123"),
        ('{"session": "tb-session-xyz"}', "tb-session-xyz"),
        ("Authorization: Bearer tcrm_abcdefgh12345678", "tcrm_abcdefgh12345678"),
    ],
)
def test_redact_hides_numbers_and_credentials(raw: str, gone: str) -> None:
    assert gone not in redact(raw)


def test_redact_keeps_ordinary_text_and_long_ids() -> None:
    text = "order 3912345678901234567 of 2026-11-11 12:00:00 failed: 409 conflict"
    assert redact(text) == text
