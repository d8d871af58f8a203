"""Reading JOS response bodies: the ``<method>_responce`` wrapper, ``error_response`` and ``apiResult``.

Bodies are decoded exactly (:func:`tongcrm.plugin.wire.loads_exact`): no number ever passes through a binary float: JSON
integers already decode to exact Python ints (big order ids survive), and decimals keep their exact digits
(money survives).
"""

from __future__ import annotations

from typing import Any

from tongcrm.plugin.wire import loads_exact

from tongcrm_jd.errors import (
    CODE_CALL_LIMITED,
    CODE_INVALID_ACCESS_TOKEN,
    JosAuthError,
    JosBusinessError,
    JosProtocolError,
    JosRequestError,
)


class JosCallLimited(Exception):
    """Internal signal for code 2, which the client retries; it never leaves the client."""

    def __init__(self, zh_desc: str, en_desc: str) -> None:
        super().__init__(en_desc or zh_desc or "App Call Limited")
        self.zh_desc = zh_desc
        self.en_desc = en_desc


def response_key(method: str) -> str:
    """``jingdong.pop.order.search`` → ``jingdong_pop_order_search_responce`` (JD's spelling, not ours)."""
    return method.replace(".", "_") + "_responce"


def decode_body(body: bytes | str) -> dict[str, Any]:
    """Decode a body exactly (see module docstring); anything but a JSON object is a protocol error."""
    try:
        data = loads_exact(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JosProtocolError(f"response is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JosProtocolError(f"response is a JSON {type(data).__name__}, not an object")
    return data


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def unwrap(method: str, data: dict[str, Any]) -> dict[str, Any]:
    """Return the payload inside ``<method>_responce`` or raise the typed error the body describes."""
    error = data.get("error_response")
    if isinstance(error, dict):
        code = _text(error.get("code"))
        zh_desc, en_desc = _text(error.get("zh_desc")), _text(error.get("en_desc"))
        if code == CODE_CALL_LIMITED:
            raise JosCallLimited(zh_desc, en_desc)
        if code == CODE_INVALID_ACCESS_TOKEN:
            raise JosAuthError(code, zh_desc, en_desc)
        raise JosRequestError(code, zh_desc, en_desc)
    payload = data.get(response_key(method))
    if not isinstance(payload, dict):
        raise JosProtocolError(f"response has neither error_response nor {response_key(method)}")
    code = _text(payload.get("code", "0"))
    if code != "0":
        # Defensive: the wrapper carries a ``code`` too; a non-zero one is read like a top-level error.
        zh_desc, en_desc = _text(payload.get("zh_desc")), _text(payload.get("en_desc"))
        if code == CODE_CALL_LIMITED:
            raise JosCallLimited(zh_desc, en_desc)
        if code == CODE_INVALID_ACCESS_TOKEN:
            raise JosAuthError(code, zh_desc, en_desc)
        raise JosRequestError(code, zh_desc, en_desc)
    check_api_results(payload)
    return payload


def check_api_results(payload: dict[str, Any]) -> None:
    """Raise :class:`JosBusinessError` if any result object in the payload reports ``success == false``.

    Each API names its result object differently (``searchorderinfo_result``, ``returnType``...), so every
    direct child that carries an ``apiResult`` is checked rather than a list of names that would go stale.
    """
    for value in payload.values():
        if not isinstance(value, dict):
            continue
        api_result = value.get("apiResult")
        if not isinstance(api_result, dict):
            continue
        success = api_result.get("success")
        if success is True or (isinstance(success, str) and success.lower() == "true"):
            continue
        raise JosBusinessError(
            _text(api_result.get("numberCode")),
            _text(api_result.get("chineseErrCode")),
            _text(api_result.get("englishErrCode")),
        )
