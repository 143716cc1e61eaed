"""values.yaml (defaults + helm-docs `# --` comments) -> values.schema.json.

The comment block right above a key documents it: it starts with `# --`, may go on over more
`#` lines, and may hold `# @schema KEY: VALUE` lines, each a YAML mapping merged into that key's
schema (`enum`, `pattern`, `minimum`, `exclusiveMinimum`, `items`, `type`, ...). A blank line
ends a block. Types come from the defaults (a `type` annotation wins: `resyncSeconds: 30`
that also takes 0.5 is `number`). Objects given with their keys are closed
(`additionalProperties: false`), so a misspelt key fails `helm install`; an
`additionalProperties` annotation opens one (Kubernetes types passed through, free-form maps),
and its children need no comments of their own.

Supported layout: block mappings indented by spaces, scalars and `[]`/`{}` or flow lists as
values; anything else is refused with the line number.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*):(?:\s|$)")
_DOC_START = "# --"
_ANNOTATION = "# @schema"
# What a parent chart may pass to every subchart; Helm merges it into the values.
_GLOBAL = {"type": "object", "description": "Values a parent chart shares with its subcharts "
                                            "(Helm's `global`); unused by this chart."}


@dataclass
class KeyDoc:
    line: int
    description: str = ""
    schema: dict[str, Any] = field(default_factory=dict)


class ValuesError(ValueError):
    pass


def parse_comments(text: str) -> dict[tuple[str, ...], KeyDoc]:
    """Key path -> its documentation, for every key line of values.yaml."""
    docs: dict[tuple[str, ...], KeyDoc] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    description: list[str] | None = None
    schema: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            description, schema = None, {}
        elif stripped.startswith(_ANNOTATION):
            schema.update(_annotation(stripped[len(_ANNOTATION):], number))
        elif stripped.startswith(_DOC_START):
            description, schema = [stripped[len(_DOC_START):].strip()], {}
        elif stripped.startswith("#"):
            if description is not None:
                description.append(stripped.lstrip("#").strip())
        elif match := _KEY_LINE.match(line):
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = tuple(key for _, key in stack) + (match["key"],)
            stack.append((indent, match["key"]))
            docs[path] = KeyDoc(number, " ".join(description or []).strip(), schema)
            description, schema = None, {}
        elif not stripped.startswith("- ") or not stack:
            raise ValuesError(f"values.yaml:{number}: unsupported line {line!r}")
    return docs


def _annotation(raw: str, number: int) -> dict[str, Any]:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValuesError(f"values.yaml:{number}: bad @schema annotation: {e}") from None
    if not isinstance(value, dict):
        raise ValuesError(f"values.yaml:{number}: @schema takes `KEY: VALUE`, got {raw!r}")
    return value


def build_schema(text: str, title: str) -> dict[str, Any]:
    """The JSON schema of values.yaml's `text`; ValuesError names every undocumented key."""
    values = yaml.safe_load(text) or {}
    docs = parse_comments(text)
    missing: list[str] = []
    schema = _object_schema(values, (), docs, missing)
    if missing:
        raise ValuesError("values.yaml: keys without a `# --` comment: " + ", ".join(missing))
    schema["properties"]["global"] = _GLOBAL
    return {"$schema": SCHEMA_DIALECT, "title": title, **schema}


def _object_schema(values: dict[str, Any], path: tuple[str, ...],
                   docs: dict[tuple[str, ...], KeyDoc], missing: list[str]) -> dict[str, Any]:
    properties = {}
    for key, default in values.items():
        key_path = path + (key,)
        doc = docs.get(key_path)
        if doc is None or not doc.description:
            missing.append(".".join(key_path))
            doc = doc or KeyDoc(0)
        properties[key] = _value_schema(default, key_path, doc, docs, missing)
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _value_schema(default: Any, path: tuple[str, ...], doc: KeyDoc,
                  docs: dict[tuple[str, ...], KeyDoc], missing: list[str]) -> dict[str, Any]:
    if isinstance(default, dict) and "additionalProperties" not in doc.schema:
        inferred = _object_schema(default, path, docs, missing)
    else:
        inferred = {"type": _json_type(default, path)} if default is not None else {}
        if isinstance(default, list) and default and "items" not in doc.schema:
            inferred["items"] = {"type": _json_type(default[0], path)}
    schema = {"description": doc.description, **inferred, **doc.schema}
    if "type" not in schema:
        raise ValuesError(f"{'.'.join(path)}: a null default needs a `# @schema type:` line")
    return schema


def _json_type(value: Any, path: tuple[str, ...]) -> str:
    for python_type, name in ((bool, "boolean"), (int, "integer"), (float, "number"),
                              (str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, python_type):  # bool before int: True is an int too
            return name
    raise ValuesError(f"{'.'.join(path)}: no JSON type for {value!r}")
