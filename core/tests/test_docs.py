"""The documentation keeps up with the code.

- The HTTP API reference (``docs/api/openapi.json`` and ``docs/api/routes.md``) is what
  ``docs/gen_openapi.py`` writes from ``create_app()`` now: a route changed without regenerating fails here.
- Every hook of the contract (``tongcrm.plugin.hookspecs``) has a heading in the plugin author guide.
- Every hook implementation of the first-party plugins fits its spec: it implements a declared hook and takes
  no argument the spec does not give (pluggy lets an implementation take a subset).

No database: these tests read files and build the app without connecting.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import pytest
from tongcrm.plugin import hookspecs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDE = DOCS / "plugins.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tongcrm_docs_gen_openapi", DOCS / "gen_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


def _hookspec_names() -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(
        name for name, func in vars(hookspecs).items() if inspect.isfunction(func) and hasattr(func, marker)
    )


def _headings(markdown: str) -> list[str]:
    """Heading texts of a Markdown page (ATX headings outside fenced code blocks)."""
    headings: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        found = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if found and not fenced:
            headings.append(found.group(1))
    return headings


def _named_in(heading: str) -> set[str]:
    """The identifiers a heading names: ``#### `order_changed` `` and ``#### order_changed`` alike."""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", heading))


def test_the_generated_api_reference_matches_the_app(generator: ModuleType) -> None:
    stale = [
        path.relative_to(ROOT).as_posix()
        for path, text in generator.generated().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, (
        f"{', '.join(stale)} out of date: run `python docs/gen_openapi.py` and commit the result"
    )


def test_the_api_reference_lists_every_route_with_its_roles(generator: ModuleType) -> None:
    """The routes page is not only in sync but complete: every route of the app is a row with its roles."""
    from tongcrm.api.security import ROLES_OPT
    from tongcrm.console.web import CONSOLE_OPT, PUBLIC

    app = generator.build_app()
    text = (DOCS / "api" / "routes.md").read_text(encoding="utf-8")
    rows = {
        (m.group(1), m.group(2)): m.group(3)
        for m in re.finditer(r"^\| ([A-Z]+) \| `([^`]+)` \| ([^|]+) \|", text, re.M)
    }
    expected = {}
    for route in app.routes:
        if route.path.startswith("/schema"):
            continue
        for handler in getattr(route, "route_handlers", ()):
            roles = sorted(getattr(r, "value", str(r)) for r in handler.opt.get(ROLES_OPT, ()))
            console = handler.opt.get(CONSOLE_OPT)  # console pages: the roles of the session
            if console is not None:
                roles = ["console: no session"] if console == PUBLIC else sorted(r.value for r in console)
            for method in set(getattr(handler, "http_methods", ())) - {"OPTIONS"}:
                expected[(method, generator.display_path(route.path))] = roles
    assert expected, "the app has routes"
    assert set(rows) == set(expected)
    for key, roles in expected.items():
        shown = sorted(r.strip() for r in rows[key].split(","))
        assert shown == (roles or ["public"]), key


def test_the_openapi_document_covers_core_and_plugin_routes(generator: ModuleType) -> None:
    import json

    schema = json.loads((DOCS / "api" / "openapi.json").read_text(encoding="utf-8"))
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    # core, a till API, a platform callback and a gateway callback
    for path in ("/api/members", "/pos/v1/receipts", "/callbacks/taobao/{account}/member/bind", "/health"):
        assert path in paths
    assert "apiKey" in schema["components"]["securitySchemes"]


def test_a_patch_states_its_bounds_where_its_create_schema_does(generator: ModuleType) -> None:
    """A field that may be left out (``Url | UnsetType``) carried its ``maxLength`` beside a ``oneOf``, where
    viewers and client generators do not look: the webhooks patch looked unbounded next to its create schema.
    Every bound now sits in the branch of the type it bounds."""
    import json

    from tongcrm.api.inputs import bounds_inside_one_of

    schema = json.loads((DOCS / "api" / "openapi.json").read_text(encoding="utf-8"))
    components = schema["components"]["schemas"]
    created, patched = components["EndpointIn"]["properties"], components["EndpointPatch"]["properties"]
    for field in ("url", "description"):
        [branch] = patched[field]["oneOf"]
        assert branch["maxLength"] == created[field]["maxLength"], field
        assert "maxLength" not in patched[field]
    assert patched["event_types"]["oneOf"][0]["maxItems"] == created["event_types"]["maxItems"]
    # a list's item bound: litestar dropped it (tongcrm.api.inputs.ItemBoundsStructSchemaPlugin puts it back)
    assert created["event_types"]["items"]["maxLength"] == 64
    assert patched["event_types"]["oneOf"][0]["items"]["maxLength"] == 64

    def stray(node: Any) -> list[str]:  # bounds left beside a oneOf anywhere in the document
        if isinstance(node, list):
            return [s for item in node for s in stray(item)]
        if not isinstance(node, dict):
            return []
        here = [k for k in ("maxLength", "minLength", "maximum", "minimum", "maxItems") if k in node]
        return (here if "oneOf" in node else []) + [s for v in node.values() for s in stray(v)]

    assert stray(schema) == []
    nullable = {"oneOf": [{"type": "integer"}, {"type": "null"}], "maximum": 5, "description": "d"}
    assert bounds_inside_one_of(nullable) == {
        "oneOf": [{"type": "integer", "maximum": 5}, {"type": "null"}],
        "description": "d",
    }


def test_every_hookspec_has_a_heading_in_the_plugin_guide() -> None:
    names = _hookspec_names()
    assert len(names) >= 14, names  # seven registration hooks, one policy hook, six events at least
    assert set(names) >= hookspecs.EVENT_NAMES
    documented = set().union(*(_named_in(h) for h in _headings(GUIDE.read_text(encoding="utf-8"))))
    missing = [name for name in names if name not in documented]
    assert not missing, f"hooks without a section in docs/plugins.md: {', '.join(missing)}"


def test_the_heading_check_finds_a_missing_hook() -> None:
    """The check above reads headings, not mentions: a hook named only in running text is not documented."""
    page = "# Guide\n\n#### `channels`\n\nThe routes hook is described elsewhere.\n```\n# routes\n```\n"
    documented = set().union(*(_named_in(h) for h in _headings(page)))
    assert "channels" in documented
    assert "routes" not in documented


def _first_party_plugins() -> Iterator[tuple[str, Any]]:
    """The four first-party plugins and the core's own hook modules, with any class that holds hooks."""
    from tongcrm.plugin.host import BUILTIN_PLUGINS

    generator = _load_generator()
    for name, module_name in [*generator.FIRST_PARTY, *((m, m) for m in BUILTIN_PLUGINS)]:
        module = importlib.import_module(module_name)
        yield name, module
        for value in vars(module).values():
            # plugins that keep their hooks on a class (the POS plugin) register an instance in tests
            if inspect.isclass(value) and value.__module__ == module.__name__ and _hookimpls(value):
                yield f"{name}:{value.__name__}", value


def _hookimpls(owner: Any) -> dict[str, Any]:
    marker = f"{hookspecs.PROJECT}_impl"
    found = {}
    for attr in dir(owner):
        func = getattr(owner, attr, None)
        if callable(func) and hasattr(func, marker):
            found[attr] = func
    return found


def _argnames(func: Any) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


def _spec_mismatches(owner: Any) -> list[str]:
    problems = []
    specs = {name: getattr(hookspecs, name) for name in _hookspec_names()}
    for name, impl in _hookimpls(owner).items():
        spec = specs.get(name)
        if spec is None:
            problems.append(f"{name}: no such hook in the contract")
            continue
        extra = [a for a in _argnames(impl) if a not in _argnames(spec)]
        if extra:
            problems.append(f"{name}: takes {', '.join(extra)}, which the spec does not give")
    return problems


@pytest.mark.parametrize(
    ("plugin", "owner"), [pytest.param(name, owner, id=name) for name, owner in _first_party_plugins()]
)
def test_first_party_hookimpls_fit_their_specs(plugin: str, owner: Any) -> None:
    impls = _hookimpls(owner)
    assert impls, f"{plugin} implements no hook"
    assert _spec_mismatches(owner) == []


def test_the_signature_check_finds_an_argument_the_spec_does_not_give() -> None:
    hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)

    class Plugin:
        @hookimpl
        def order_changed(self, event: Any) -> None:  # a subset: fine
            return None

        @hookimpl
        def resolve_member(self, claims: Any, matches: Any, session: Any) -> None:  # not in the spec
            return None

        @hookimpl
        def order_shipped(self, event: Any) -> None:  # no such hook
            return None

    assert sorted(_spec_mismatches(Plugin())) == [
        "order_shipped: no such hook in the contract",
        "resolve_member: takes session, which the spec does not give",
    ]


#: Request string fields that declare no ``maxLength``, each with why: a new one fails the test below.
UNBOUNDED_REQUEST_STRINGS: dict[str, str] = {}


def _request_strings_without_bound(schema: dict[str, Any]) -> set[str]:
    """``Component.field`` (``.*`` for a mapping's values, ``[]`` for a list's items) of every string a request
    body may hold that states no ``maxLength`` (an ``enum``, a ``const`` or a ``format`` bounds it too)."""
    components = schema["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"].rsplit("/", 1)[1]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    todo = [
        name
        for operations in schema["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict) and "requestBody" in operation
        for name in refs(operation["requestBody"])
    ]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(refs(components[name]))

    found: set[str] = set()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where)
        if not isinstance(node, dict):
            return
        if node.get("type") == "string" and not {"maxLength", "enum", "const", "format"} & set(node):
            found.add(where)
        for key, value in node.items():
            if key == "properties":
                for field, sub in value.items():
                    walk(sub, f"{where}.{field}")
            elif key == "items":
                walk(value, f"{where}[]")
            elif key == "additionalProperties":
                walk(value, f"{where}.*")
            elif key in ("oneOf", "anyOf", "allOf"):
                walk(value, where)

    for name in seen:
        walk(components[name], name)
    return found


def test_every_request_string_declares_its_bound() -> None:
    """A request string with no ``maxLength`` in the document reached a bounded column (a member's name, a
    campaign's flow) and came back a 500 on PostgreSQL, or was refused with a bound no integrator could read
    (MemberPatch). Each one states its bound now, and the server refuses a longer one with a 400 naming it;
    one left unbounded is listed above with its reason."""
    import json

    schema = json.loads((DOCS / "api" / "openapi.json").read_text(encoding="utf-8"))
    found = _request_strings_without_bound(schema)
    assert found == set(UNBOUNDED_REQUEST_STRINGS), sorted(found ^ set(UNBOUNDED_REQUEST_STRINGS))
    # a channel's and a messenger's settings: values, names and their count are bounded (leftovers14)
    from tongcrm.api.inputs import SETTING_NAME_MAX, SETTING_VALUE_MAX, SETTINGS_MAX

    for component in ("AccountIn", "ReauthIn", "MessengerAccountIn"):
        settings = schema["components"]["schemas"][component]["properties"]["settings"]
        assert settings["maxProperties"] == SETTINGS_MAX, component
        assert settings["propertyNames"]["maxLength"] == SETTING_NAME_MAX, component
        assert settings["additionalProperties"]["maxLength"] == SETTING_VALUE_MAX, component
    patched = schema["components"]["schemas"]["MemberPatch"]["properties"]
    assert patched["name"]["oneOf"][0]["maxLength"] == 100 and patched["city"]["oneOf"][0]["maxLength"] == 64
    # the walk itself finds an unbounded field, item and mapping value
    fake = {
        "paths": {"/x": {"post": {"requestBody": {"$ref": "#/components/schemas/A"}}}},
        "components": {
            "schemas": {
                "A": {
                    "properties": {
                        "s": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                        "l": {"items": {"type": "string"}, "type": "array"},
                        "m": {"additionalProperties": {"type": "string"}},
                        "ok": {"type": "string", "maxLength": 3},
                        "b": {"$ref": "#/components/schemas/B"},
                    }
                },
                "B": {"properties": {"day": {"type": "string", "format": "date"}, "t": {"type": "string"}}},
            }
        },
    }
    assert _request_strings_without_bound(fake) == {"A.s", "A.l[]", "A.m.*", "B.t"}


def test_a_delete_declares_only_the_refusals_it_can_answer() -> None:
    """Every DELETE declared 409 and 422 (the key-revoke route gives no 422): a delete declares 404 for the
    resource its path names, and a conflict or a rule only where it names them (``problems(409)``)."""
    import json

    schema = json.loads((DOCS / "api" / "openapi.json").read_text(encoding="utf-8"))
    declared = {
        path: {int(s) for s in ops["delete"]["responses"] if int(s) >= 400}
        for path, ops in schema["paths"].items()
        if "delete" in ops
    }
    assert declared["/api/api-keys/{key_id}"] == {400, 401, 403, 404, 409}  # the last live admin key
    assert declared["/api/calendar/marks/{mark_id}"] == {400, 401, 403, 404}
    assert declared["/api/members/{member_id}/tags/{tag}"] == {400, 401, 403, 404, 409}  # merged or erased
    assert {409, 422} <= declared["/api/members/{member_id}/referrer"]  # none to unbind; a blank reason
