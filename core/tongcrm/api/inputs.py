"""What the admin API accepts, enforced in one place for every route (core and plugins alike).

Outside testing (a fuzzer and hand-made requests) found inputs that reached the database and came back as 500s:
ids past the 64-bit columns, NUL characters PostgreSQL text cannot hold, JSON nested thousands deep, ``"100"``
accepted as an integer. Rather than each handler guarding itself, the app applies these rules:

* **Bounded integers** — the parameter types below carry their bounds into validation and into the OpenAPI
  document (a test walks every route and fails on an integer parameter without a maximum). A request body is
  also checked as a whole: any JSON integer beyond a 64-bit column (:data:`MAX_ID`) is refused before a
  handler sees it.
* **Strict bodies** — :class:`StrictRequest` decodes every JSON body with msgspec's *strict* rules against the
  handler's declared body type (no ``"100"`` or ``1e2`` for an integer), refuses bodies nested deeper than
  :data:`MAX_JSON_DEPTH`, and refuses U+0000 in any string or key, naming the field.
* **Known query parameters only** — :func:`reject_unknown_query` answers 400 for a query parameter the route
  does not read, instead of silently ignoring a filter the caller thinks is applied.
* **Documented failures** — :func:`document_problems` lists on every operation the problem statuses it can
  answer, each with the RFC 9457 problem-details schema.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
import msgspec.inspect
from litestar import Litestar, Request
from litestar.datastructures import UploadFile
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIType, Schema
from litestar.params import KwargDefinition, PathParameter, QueryParameter
from litestar.plugins import OpenAPISchemaPlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.types import Empty
from litestar.typing import FieldDefinition

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

from tongcrm.errors import SHOWN_CHARS, SHOWN_NAMES, UnsupportedMediaType, listed, shown
from tongcrm.plugin.settings import SETTING_NAME_MAX, SETTING_VALUE_MAX, SETTINGS_MAX

#: The largest id, cursor or offset the API accepts: within the 64-bit (BIGINT) columns ids live in, and the
#: largest such number a double holds exactly (2^63 - 1024), because the OpenAPI document states bounds as JSON
#: numbers, which many clients (and litestar's schema writer) read as doubles: 2^63 - 1 would read as 2^63.
MAX_ID = 2**63 - 1024
#: :data:`MAX_ID` as an error message states it: the bare number reads like a double's rounding of 2^63 - 1
#: (which is 9223372036854775808), so the message says what it is and why.
MAX_ID_STATED = (
    f"{MAX_ID} (2^63 - 1024: the largest 64-bit integer a JSON number read as a double holds exactly)"
)
#: The largest value a 32-bit (INTEGER) column holds, e.g. an earning-rules version.
MAX_INT32 = 2**31 - 1
#: The deepest a JSON request body may nest (objects and arrays). No request the API defines needs more than a
#: handful of levels; the bound keeps decoding and every later walk of the value cheap and non-recursive.
MAX_JSON_DEPTH = 32

#: Dates and times the API accepts: years 1900 to 2999. Wider values reached arithmetic that overflows (a
#: ``+14:00`` time at 0001-01-01 has no UTC value; the day after 9999-12-31 does not exist) and no member's
#: birthday, order or validity lies outside them.
MIN_DATE = date(1900, 1, 1)
MAX_DATE = date(2999, 12, 31)

#: A positive database id in a path (``/api/members/{member_id}``).
PathId = Annotated[int, PathParameter(ge=1, le=MAX_ID, description="a positive id")]
#: A 32-bit positive number in a path (an earning-rules version).
PathInt32 = Annotated[int, PathParameter(ge=1, le=MAX_INT32, description="a positive 32-bit number")]
#: An optional id filter or keyset cursor in a query string.
QueryId = Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description="a positive id")]
#: An offset into a listing.
QueryOffset = Annotated[int, QueryParameter(ge=0, le=MAX_ID, description="rows to skip")]


def id_named(text: str) -> int | None:
    """The id a text names where an id or a name may be given (``/api/segments/{segment}``, a CLI argument):
    ASCII digits from 1 to :data:`MAX_ID`, else ``None`` (the text is a name).

    ``str.isdigit`` alone let through digits ``int`` cannot read (``²``) and numbers past the 64-bit columns,
    which reached the database and came back as 500s; such a text is a name that names nothing (404).
    """
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None


#: A positive id in a request body.
BodyId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID, description="a positive id")]

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(msgspec.Struct):
    """An RFC 9457 problem details body, as :mod:`tongcrm.api.problems` writes it (more members may follow)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
    #: What was wrong, per field: a list of ``{key, message, source}`` (validation) or ``{field: message}``.
    errors: list[dict[str, Any]] | dict[str, Any] | None = None


class StrictRequest(Request[Any, Any, Any]):
    """The app's request class: a JSON body is decoded once, checked (depth, NUL, 64-bit integers) and
    validated strictly against the handler's body type before litestar converts it.

    Validating here, rather than leaving it to litestar's signature model, also keeps a body field that shares
    its name with a dependency (``settings``) from being mistaken for a failing dependency (a 500).
    """

    async def json(self) -> Any:
        if self._json is Empty:
            body = await self.body()
            if body:
                check_json_media_type(self.headers.get("content-type"))
            value, _ = read_json(
                body or b"null", self.route_handler, nul=not self.route_handler.opt.get(NUL_PER_ITEM_OPT)
            )
            self._json = self._connection_state.json = value
        return self._json


#: The media type a JSON body is sent as.
JSON_MEDIA_TYPE = "application/json"


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a body sent with the ``Content-Type`` ``content_type`` may be read as JSON: ``application/json``
    or a ``+json`` type (``application/merge-patch+json``), with any parameters (``; charset=utf-8``), or no
    ``Content-Type`` at all (RFC 9110 lets the server assume; many clients send none)."""
    if content_type is None:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == JSON_MEDIA_TYPE or (kind.startswith("application/") and kind.endswith("+json"))


def check_json_media_type(content_type: str | None) -> None:
    """Refuse (415) a body a JSON route is sent under another media type: a form or text body used to reach the
    JSON decoder and come back as 400 "not valid JSON", where the API documents 415 (RFC 9110 15.5.16)."""
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"this route takes a JSON body: send it with Content-Type: {JSON_MEDIA_TYPE} "
            f"(the request said {shown(content_type or '')})",
            extra={"expected": JSON_MEDIA_TYPE},
        )


def read_json(body: bytes, handler: HTTPRouteHandler, *, nul: bool = True) -> tuple[Any, Any]:
    """The JSON value of ``body`` and its strict conversion to ``handler``'s body type (None when the handler
    declares none, or the body is ``null``), refused (400) as :class:`StrictRequest` refuses a body: the
    checks of :func:`decode_body`, then the type, then dates out of range. A hot answer
    (:mod:`tongcrm.api.hot`) reads its body through this too, so it accepts exactly what the route accepts."""
    value = decode_body(body, nul=nul)
    target = _body_type(handler)
    typed = None
    if target is not None and value is not None:
        try:
            typed = msgspec.convert(value, target, strict=True, dec_hook=handler.default_deserializer)
        except msgspec.ValidationError as exc:
            message = _body_message(str(exc))
            if message.startswith("Object contains unknown field"):
                accepted = _fields_at(target, str(exc).rpartition(" - at `")[2].rstrip("`") or "$")
                message += f" (this object accepts: {', '.join(accepted)})" if accepted else ""
            raise _invalid(message, key=_error_key(str(exc))) from exc
        for where, moment in _moments(typed, "$"):
            check_moment(_key(where) or "body", moment, source="body")
    return value, typed


#: The ``opt`` key of a route that refuses U+0000 per item itself (a batch that answers item by item), so
#: one bad item does not fail the whole body: ``opt={..., **nul_checked_per_item()}``.
NUL_PER_ITEM_OPT = "tongcrm_nul_per_item"


def nul_checked_per_item() -> dict[str, bool]:
    return {NUL_PER_ITEM_OPT: True}


def decode_body(body: bytes, *, nul: bool = True) -> Any:
    """The JSON value of ``body``, refused (400) when it is not JSON, nests deeper than :data:`MAX_JSON_DEPTH`,
    holds U+0000 in a string or key (unless ``nul`` is false), or holds an integer beyond :data:`MAX_ID`."""
    try:
        value = msgspec.json.decode(body)
    except RecursionError as exc:
        raise _invalid(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)") from exc
    except msgspec.DecodeError as exc:
        raise _invalid(f"the body is not valid JSON: {exc}") from exc
    check_value(value, nul=nul)
    return value


def check_value(value: Any, *, nul: bool = True) -> None:
    """Walk a decoded JSON value without recursion and refuse what the database could not store."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if nul and "\x00" in item:
                raise _invalid("NUL characters (U+0000) are not allowed", key=_key(where))
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not -MAX_ID <= item <= MAX_ID:
                raise _invalid(f"integer out of range: at most {MAX_ID_STATED} in magnitude", key=_key(where))
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _invalid(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)")
            if isinstance(item, dict):
                for k, v in item.items():
                    if nul and "\x00" in k:
                        raise _invalid("NUL characters (U+0000) are not allowed in keys", key=_key(where))
                    stack.append((v, f"{where}.{k}", depth + 1))
            else:
                stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))


def check_moment(name: str, value: date, *, source: str) -> None:
    """Refuse (400) a date or date-time outside :data:`MIN_DATE`..:data:`MAX_DATE` (a date-time with a zone
    is judged by its date in UTC, which must exist)."""
    day = value
    if isinstance(value, datetime):
        if value.tzinfo is not None and MIN_DATE <= value.date() <= MAX_DATE:
            value = value.astimezone(UTC)  # cannot overflow inside the bounds
        day = value.date()
    if not MIN_DATE <= day <= MAX_DATE:
        raise _invalid(f"date out of range ({MIN_DATE} to {MAX_DATE})", key=name, source=source)


def _moments(value: Any, where: str) -> Iterator[tuple[str, date]]:
    """The dates and date-times in a converted body (structs, mappings, sequences), with where they are."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, date):
            yield at, item
        elif isinstance(item, msgspec.Struct):
            stack.extend((getattr(item, f), f"{at}.{f}") for f in item.__struct_fields__)
        elif isinstance(item, dict):
            stack.extend((v, f"{at}.{k}") for k, v in item.items())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))


#: A date in a path, as the OpenAPI document states it: the parameter is matched as text and read by
#: :func:`path_date`, so that a malformed date is a 400 naming it rather than a path no route matches (a 404).
PathDate = Annotated[str, PathParameter(format="date", description="a date, YYYY-MM-DD")]
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def path_date(name: str, value: str) -> date:
    """The date ``value`` of the path parameter ``name`` (``YYYY-MM-DD``), refused (400) naming the parameter
    and the expected form when it is not one, or out of range (:func:`check_moment`)."""
    try:
        if not _ISO_DATE.fullmatch(value):
            raise ValueError(value)  # fromisoformat alone also takes 20260301 and 2026-W09-7
        day = date.fromisoformat(value)
    except ValueError:
        raise _invalid(
            f"expected a date as YYYY-MM-DD (e.g. 2026-03-01), got {shown(value)}", key=name, source="path"
        ) from None
    check_moment(name, day, source="path")
    return day


def check_text(name: str, value: str, *, source: str = "query") -> None:
    """Refuse U+0000 in a path or query value (400 naming the parameter)."""
    if "\x00" in value:
        raise _invalid("NUL characters (U+0000) are not allowed", key=name, source=source)


def _key(where: str) -> str | None:
    return None if where == "$" else where.removeprefix("$.")


def _invalid(message: str, *, key: str | None = None, source: str = "body") -> ValidationException:
    """A 400 whose problem names the field (``key``) and says what is wrong with it."""
    error: dict[str, str] = {"message": message, "source": source}
    if key:
        error["key"] = key
    return ValidationException(detail=f"{key}: {message}" if key else message, extra=[error])


#: How msgspec places an error in a mapping's key: "... - at `key` in `$.settings`".
_IN_A_KEY = "key` in `"


def _body_message(msgspec_message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.points`"; the key names the field
    message, _, where = msgspec_message.rpartition(" - at `")
    if message and where.startswith(_IN_A_KEY):  # the field is a mapping: one of its names is wrong
        return f"{message} (a name in it)"
    return message or msgspec_message


def _error_key(msgspec_message: str) -> str | None:
    _, sep, where = msgspec_message.rpartition(" - at `")
    return _key(where.removeprefix(_IN_A_KEY).rstrip("`")) if sep else None


def _fields_at(target: Any, where: str) -> list[str]:
    """The field names (sorted) of the object at ``where`` (msgspec's ``$.lines[0]``) in a body of type ``target``, for
    an "unknown field" refusal to list what is accepted, as an unknown query parameter's does (empty when the
    path leads to no struct)."""
    info: Any = msgspec.inspect.type_info(target)
    for name, _index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", where.removeprefix("$")):
        while isinstance(info, msgspec.inspect.UnionType):  # an optional part: its struct
            info = next((t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)), None)
        if name and isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == name), None)
        elif name and isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif not name and isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
            info = info.item_type
        else:
            return []
    while isinstance(info, msgspec.inspect.UnionType):
        info = next((t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)), None)
    return sorted(f.encode_name for f in info.fields) if isinstance(info, msgspec.inspect.StructType) else []


_NO_BODY_TYPE = object()


def _body_type(handler: HTTPRouteHandler) -> Any:
    """The type the handler declares for its ``data`` parameter (None when it reads JSON itself)."""
    cached = handler.opt.get("tongcrm_body_type", _NO_BODY_TYPE)
    if cached is _NO_BODY_TYPE:
        field = handler.parsed_fn_signature.parameters.get("data")
        cached = None
        if field is not None and not field.is_subclass_of(UploadFile):
            cached = field.annotation
        handler.opt["tongcrm_body_type"] = cached
    return cached


# --- query parameters ------------------------------------------------------------------------------------------

#: The ``opt`` key holding the query parameter names a route reads (None: it reads the whole query itself).
QUERY_OPT = "tongcrm_query"


#: The ``opt`` key holding the query parameters a route reads as dates or date-times (name: type).
QUERY_MOMENTS_OPT = "tongcrm_query_moments"


def collect_query_names(routes: Iterable[BaseRoute]) -> None:
    """Record on every route handler the query parameter names it (and its dependencies) read; a handler
    that takes the whole ``query`` mapping reads what it likes and is not checked."""
    for route in routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler, kwargs_model in route.route_handler_map.values():
            names = frozenset(p.field_alias for p in kwargs_model.expected_query_params)
            handler.opt[QUERY_OPT] = None if "query" in kwargs_model.expected_reserved_kwargs else names
            fields = handler.parsed_fn_signature.parameters
            moments: dict[str, type[date]] = {}
            for p in kwargs_model.expected_query_params:
                field = fields.get(p.field_name)
                for kind in (datetime, date):  # datetime first: it is a date too
                    if field is not None and (
                        field.is_subclass_of(kind) or field.has_inner_subclass_of(kind)
                    ):
                        moments[p.field_alias] = kind
                        break
            handler.opt[QUERY_MOMENTS_OPT] = moments


def reject_unknown_query(request: Request[Any, Any, Any]) -> None:
    """400 when the query string names a parameter the route does not read, or a path or query value holds a
    NUL character or a date out of range."""
    in_path: dict[str, Any] = request.scope["path_params"]  # parsed: ints, dates, strings
    for name, value in in_path.items():
        if isinstance(value, str):
            check_text(name, value, source="path")
        elif isinstance(value, date):
            check_moment(name, value, source="path")
    raw: bytes = request.scope.get("query_string", b"")
    if not raw:
        return
    known: frozenset[str] | None = request.route_handler.opt.get(QUERY_OPT)
    params = request.query_params
    if known is not None:
        unknown = sorted(k for k in params if k not in known)
        if unknown:  # named by their start, the first few: a query string may hold any number of any size
            accepted = ", ".join(sorted(known)) or "none"
            raise ValidationException(
                detail=f"unknown query parameter(s): {listed([shown(k) for k in unknown])} "
                f"(this route accepts: {accepted})",
                extra=[
                    {
                        "message": f"unknown query parameter (this route accepts: {accepted})",
                        "key": k[:SHOWN_CHARS],
                        "source": "query",
                    }
                    for k in unknown[:SHOWN_NAMES]
                ],
            )
    moments: dict[str, Any] = request.route_handler.opt.get(QUERY_MOMENTS_OPT) or {}
    if not moments and b"%00" not in raw and b"\x00" not in raw:
        return  # no date to bound, and no decoded value can hold a NUL (only %00 decodes to one)
    for name, value in params.multi_items():
        check_text(name, value)
        if name in moments:
            try:
                parsed = msgspec.convert(value, moments[name])
            except msgspec.ValidationError:
                continue  # not a date: the handler's own parsing names it (a 400)
            check_moment(name, parsed, source="query")


# --- OpenAPI: the problems each operation can answer -------------------------------------------------------------

#: The ``opt`` key by which a handler names problem statuses beyond those derived from its shape.
PROBLEMS_OPT = "tongcrm_problems"


def problem_response(description: str) -> ResponseSpec:
    """A problem-details response an operation documents in its own words (``responses={422:
    problem_response("…")}``): :func:`document_problems` keeps it and adds the statuses its shape implies."""
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=PROBLEM_MEDIA_TYPE,
        generate_examples=False,
    )


def problems(*statuses: int) -> dict[str, tuple[int, ...]]:
    """Problem statuses a route answers beyond those its shape implies:
    ``@get(..., opt={**requires(...), **problems(404)})`` (a router's ``opt`` applies to all its routes)."""
    return {PROBLEMS_OPT: statuses}


_DESCRIPTIONS = {
    400: "Bad request: a malformed or invalid parameter or body (the problem names it)",
    401: "Unauthorized: no API key, or one that is unknown or revoked",
    403: "Forbidden: the key's role (or store) may not do this",
    404: "Not found: a resource the request names does not exist",
    409: "Conflict: the request conflicts with the current state",
    410: "Gone: what the request names existed but is not kept any more (the problem says why)",
    412: "Precondition failed: the If-Match version is stale",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Unprocessable: valid in form but refused by a business rule",
    428: "Precondition required: send the header the problem names",
    429: "Too many requests: retry after the Retry-After header's seconds",
}


def problem_statuses(handler: Any, kwargs_model: Any, path: str, roles: frozenset[Any] | None) -> set[int]:
    """The problem statuses an operation can answer, from its shape: who may call it, its path parameters,
    method, body and headers, plus those its handler names in ``opt[PROBLEMS_OPT]``."""
    methods = set(handler.http_methods)
    statuses = {400}
    if roles or not any(path == p or path.startswith(p + "/") for p in UNAUTHENTICATED_PATHS):
        # a public plugin route authenticates its caller itself (a platform signature or token)
        statuses |= {401, 403}
    if "{" in path:
        statuses.add(404)
    if methods - {"GET", "HEAD", "OPTIONS", "DELETE"}:
        statuses |= {404, 409, 422}
    elif "DELETE" in methods:
        # removing what a path names: 404 when it is not there; a delete that can also be refused by the state
        # (409) or a rule (422) names them itself (``problems(409)``), so the key-revoke route does not declare
        # answers it can never give
        statuses.add(404)
    elif kwargs_model.expected_query_params:
        statuses.add(422)  # a well-formed filter a business rule refuses (a mobile that is not one)
    if "data" in handler.parsed_fn_signature.parameters:
        statuses |= {413, 415}
    headers = {p.field_alias.lower() for p in kwargs_model.expected_header_params}
    if "if-match" in headers:
        statuses |= {412, 428}
    statuses |= set(handler.opt.get(PROBLEMS_OPT, ()))
    return statuses


#: Paths open to anyone: no key is asked for, so none can be refused.
UNAUTHENTICATED_PATHS = ("/health", "/schema")


def document_problems(app: Litestar, roles_opt: str) -> None:
    """Attach a problem-details response for each status every operation can answer (see
    :func:`problem_statuses`); a status a handler documents itself is left as it is."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler, kwargs_model in route.route_handler_map.values():
            if set(handler.http_methods) <= {"OPTIONS", "HEAD"}:
                continue
            responses = dict(handler.responses or {})
            roles = handler.opt.get(roles_opt)
            for status in sorted(problem_statuses(handler, kwargs_model, route.path, roles)):
                responses.setdefault(
                    status,
                    ResponseSpec(
                        data_container=Problem,
                        description=_DESCRIPTIONS.get(status, "Problem"),
                        media_type=PROBLEM_MEDIA_TYPE,
                        generate_examples=False,
                    ),
                )
            handler.responses = responses


#: The keywords that bound one JSON type, by the type they bound.
_BOUNDS = {
    "string": ("maxLength", "minLength", "pattern", "format"),
    "integer": ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "multipleOf"),
    "number": ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "multipleOf"),
    "array": ("maxItems", "minItems", "uniqueItems"),
}


def bounds_inside_one_of(schema: Any) -> Any:
    """``schema`` (an OpenAPI document as JSON) with each bound that sits beside a ``oneOf`` moved into the
    branches of the type it bounds.

    litestar writes a field that may be left out or null (``Url | UnsetType``, ``str | None``) as ``{"oneOf":
    [{"type": "string"}, {"type": "null"}], "maxLength": 200}``: valid JSON Schema, but viewers and client
    generators read the branches, so a patch looked unbounded while its create schema said ``maxLength`` (the
    server refuses a longer text with a 400 either way). A bound no branch's type takes stays where it is."""
    if isinstance(schema, list):
        return [bounds_inside_one_of(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tidied = {key: bounds_inside_one_of(value) for key, value in schema.items()}
    branches = tidied.get("oneOf")
    if isinstance(branches, list):
        for branch in branches:
            kind = branch.get("type") if isinstance(branch, dict) else None
            for key in _BOUNDS.get(kind, ()) if isinstance(kind, str) else ():
                if key in tidied and key not in branch:
                    branch[key] = tidied[key]
        moved = {key for branch in branches if isinstance(branch, dict) for key in branch if key in tidied}
        for key in moved & {k for keys in _BOUNDS.values() for k in keys}:
            del tidied[key]
    return tidied


class BoundedOpenAPI(OpenAPI):
    """The OpenAPI document with its bounds where readers look (:func:`bounds_inside_one_of`)."""

    def to_schema(self) -> dict[str, Any]:
        tidied: dict[str, Any] = bounds_inside_one_of(super().to_schema())
        return tidied


class BoundedOpenAPIConfig(OpenAPIConfig):
    """litestar's OpenAPI settings, building a :class:`BoundedOpenAPI` (the served ``/schema`` and docs/api)."""

    def to_openapi_schema(self) -> OpenAPI:
        built = super().to_openapi_schema()
        return BoundedOpenAPI(**{f.name: getattr(built, f.name) for f in dataclasses.fields(built)})


# --- OpenAPI: the bounds of a list's items ------------------------------------------------------------------------

#: A channel's or messenger's ``settings`` in a request, within the bounds :mod:`tongcrm.plugin.settings` defines
#: for every door (the console's forms and the CLI check them there).
SettingsIn = Annotated[
    dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=SETTING_NAME_MAX)],
        Annotated[str, msgspec.Meta(max_length=SETTING_VALUE_MAX)],
    ],
    msgspec.Meta(
        max_length=SETTINGS_MAX,
        description=f"the plugin's settings by name (its SettingFields): at most {SETTINGS_MAX} names of at most"
        f" {SETTING_NAME_MAX} characters, each value a string of at most {SETTING_VALUE_MAX}",
    ),
]


#: The :class:`msgspec.Meta` bounds litestar's OpenAPI writer reads from a :class:`KwargDefinition`.
_META_BOUNDS = ("min_length", "max_length", "pattern", "ge", "gt", "le", "lt", "multiple_of")


def _items_bounded(annotation: Any, *, inside: bool = False) -> Any:
    """``annotation`` with each ``Annotated[T, msgspec.Meta(...)]`` inside a container (a list's item, a
    mapping's value) also carrying its bounds as a :class:`KwargDefinition`, which litestar's OpenAPI writer
    reads where it ignores ``msgspec.Meta`` (msgspec ignores the addition)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base = _items_bounded(annotation.__origin__, inside=inside)
        metas = list(annotation.__metadata__)
        if inside and not any(isinstance(m, KwargDefinition) for m in metas):
            bounds = {
                name: value
                for m in metas
                if isinstance(m, msgspec.Meta)
                for name in _META_BOUNDS
                if (value := getattr(m, name)) is not None
            }
            if bounds:
                metas.append(KwargDefinition(**bounds))
        return Annotated[(base, *metas)]
    args = get_args(annotation)
    if not args or origin is None:
        return annotation
    if origin in (list, set, frozenset, tuple, dict):
        return origin[tuple(_items_bounded(a, inside=True) for a in args)]
    if origin is Union or origin is types.UnionType:
        return Union[tuple(_items_bounded(a, inside=inside) for a in args)]  # noqa: UP007 - built at run time
    return annotation


class ItemBoundsStructSchemaPlugin(OpenAPISchemaPlugin):
    """A msgspec Struct's OpenAPI schema with the bounds of its lists' items (a webhook's ``event_types``
    items are at most 64 characters): litestar writes a field's own ``msgspec.Meta`` but drops one on a list's
    item type, so the document said nothing of a bound the server enforces (a 400). Registered before
    litestar's own Struct plugin, it describes each field as litestar does, from :func:`_items_bounded`'s
    type."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.is_subclass_of(msgspec.Struct)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        from litestar.plugins.core._msgspec import kwarg_definition_from_field

        hints = field_definition.get_type_hints(include_extras=True, resolve_generics=True)
        info = msgspec.inspect.type_info(field_definition.type_)
        assert isinstance(info, msgspec.inspect.StructType)
        properties: dict[str, FieldDefinition] = {}
        for field in info.fields:
            own = kwarg_definition_from_field(field)[0]
            default = field.default
            properties[field.encode_name] = FieldDefinition.from_annotation(
                _items_bounded(hints[field.name]),
                name=field.encode_name,
                default=Empty if default is msgspec.NODEFAULT or default is msgspec.UNSET else default,
                **({"kwarg_definition": own} if own is not None else {}),
            )
        required = sorted(f.encode_name for f in info.fields if f.required)
        if info.tag_field:  # a tagged union's member: its tag is a constant
            properties[info.tag_field] = FieldDefinition.from_annotation(Literal[info.tag])
            required = sorted([*required, info.tag_field])
        component = schema_creator.create_component_schema(
            field_definition, required=required, property_fields=properties
        )
        for field in info.fields:
            _state_mapping_bounds(component.properties, field.encode_name, hints[field.name])
        return component


def _state_mapping_bounds(properties: Any, name: str, annotation: Any) -> None:
    """A mapping field's own bounds in its schema: litestar drops ``msgspec.Meta(max_length=...)`` on a ``dict``
    (its count of keys, ``maxProperties``) and a bound on its keys' type (``propertyNames``)."""
    schema = properties.get(name) if properties else None
    if not isinstance(schema, Schema):
        return
    metas: tuple[Any, ...] = ()
    if get_origin(annotation) is Annotated:
        annotation, metas = annotation.__origin__, annotation.__metadata__
    if get_origin(annotation) is not dict:
        return
    for meta in metas:
        if isinstance(meta, msgspec.Meta) and meta.max_length is not None:
            schema.max_properties = meta.max_length
    key = get_args(annotation)[0]
    if get_origin(key) is Annotated:
        bounds = [m for m in key.__metadata__ if isinstance(m, msgspec.Meta)]
        longest = next((m.max_length for m in bounds if m.max_length is not None), None)
        shortest = next((m.min_length for m in bounds if m.min_length is not None), None)
        pattern = next((m.pattern for m in bounds if m.pattern is not None), None)
        if longest is not None or shortest is not None or pattern is not None:
            schema.property_names = Schema(
                type=OpenAPIType.STRING, max_length=longest, min_length=shortest, pattern=pattern
            )
