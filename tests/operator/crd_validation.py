"""What the API server does with an InferenceService at admission, done in Python: structural
defaulting, the openAPIV3Schema (jsonschema, OpenAPI 3.0 = draft 4 keywords), then every CEL
rule (`x-kubernetes-validations`, evaluated with cel-python) with `self` bound to the value at
the rule's place. Errors name the field as the API server does: `spec.autoscaling.minReplicas:
...`."""
from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from infernetes.operator.crd import custom_resource_definition


def crd_schema() -> dict[str, Any]:
    return custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting: a missing property with a default gets it, recursively."""
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, item in value.items():
            if name in properties:
                value[name] = apply_defaults(item, properties[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                value[name] = apply_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def validate(obj: dict[str, Any]) -> list[str]:
    """The messages the API server would reject `obj` with; [] when it is admitted."""
    schema = crd_schema()
    obj = apply_defaults(copy.deepcopy(obj), schema)
    validator = jsonschema.Draft4Validator(schema)
    errors = [f"{_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    if errors:  # the API server stops before CEL when the schema fails
        return sorted(errors)
    return _cel_errors(obj, schema, [])


def _cel_errors(value: Any, schema: dict[str, Any], path: list) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not _holds(rule["rule"], value):
            where = (_path(path) + rule.get("fieldPath", "")).lstrip(".")
            errors.append(f"{where}: {rule['message']}" if where else rule["message"])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _cel_errors(value[name], sub, path + [name])
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _cel_errors(item, schema["items"], path + [index])
    return errors


def _holds(rule: str, value: Any) -> bool:
    environment = celpy.Environment()
    program = environment.program(environment.compile(rule))
    result = program.evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, celpy.CELEvalError):
        raise AssertionError(f"CEL rule {rule!r} failed to evaluate: {result}")
    return bool(result)


def cel_rules() -> list[str]:
    """Every CEL rule in the CRD."""
    rules: list[str] = []

    def walk(schema: dict[str, Any]) -> None:
        rules.extend(r["rule"] for r in schema.get("x-kubernetes-validations", []))
        for sub in schema.get("properties", {}).values():
            walk(sub)
        if "items" in schema:
            walk(schema["items"])

    walk(crd_schema())
    return rules


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
