"""values.yaml and its generated schema: bad values fail `helm template`/`helm install` with a
message naming the key, every key is documented, and the generator's rules hold."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from chart_render import CHART, NAMESPACE, generate, helm, render_error

values_schema = generate.values_schema
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())

# values -> what the error must say (the key, and why where the schema says it).
BAD_VALUES = {
    "pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy", "Always"]),
    "negative-resync": ({"resyncSeconds": -1}, ["/resyncSeconds", "exclusiveMinimum"]),
    "zero-resync": ({"resyncSeconds": 0}, ["/resyncSeconds"]),
    "typo-top-level": ({"watchNamespace": ["a"]}, ["watchNamespace", "not allowed"]),
    "typo-nested": ({"runtime": {"image": {"tga": "1"}}}, ["/runtime/image", "tga"]),
    "bad-namespace": ({"watchNamespaces": ["Bad_NS"]}, ["/watchNamespaces/0", "Bad_NS"]),
    "duplicate-namespace": ({"watchNamespaces": ["a", "a"]}, ["/watchNamespaces"]),
    "shm-size": ({"runtime": {"shmSize": "lots"}}, ["/runtime/shmSize"]),
    "drain-timeout-type": ({"runtime": {"drainTimeoutSeconds": "30"}},
                           ["/runtime/drainTimeoutSeconds", "integer"]),
    "backoff-negative": ({"runtime": {"downloadBackoffLimit": -1}},
                         ["/runtime/downloadBackoffLimit"]),
    "runtime-pull-policy": ({"runtime": {"imagePullPolicy": "always"}},
                            ["/runtime/imagePullPolicy"]),
    "enabled-not-bool": ({"monitoring": {"podMonitor": {"enabled": "yes"}}},
                         ["/monitoring/podMonitor/enabled", "boolean"]),
    "pull-secret-shape": ({"imagePullSecrets": ["registry"]}, ["/imagePullSecrets/0"]),
    "scrape-interval": ({"monitoring": {"serviceMonitor": {"interval": "often"}}},
                        ["/monitoring/serviceMonitor/interval"]),
    "cluster-wide-and-namespaces": ({"clusterWide": True, "watchNamespaces": ["a"]},
                                    ["watchNamespaces", "clusterWide"]),
    "no-service-account": ({"serviceAccount": {"create": False}}, ["serviceAccount.name"]),
}


@pytest.mark.parametrize("values, expected", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_fail_naming_the_key(values, expected):
    message = render_error(values)
    for part in expected:
        assert part in message, message


def test_helm_install_checks_the_schema_too():
    result = helm("install", "x", str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                  "--set", "image.pullPolicy=Sometimes", check=False)
    assert result.returncode != 0 and "/image/pullPolicy" in result.stderr, result.stderr


def test_defaults_and_documented_examples_satisfy_the_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(DEFAULTS, SCHEMA)
    jsonschema.validate({"global": {"imageRegistry": "x"}, "resyncSeconds": 0.5,
                         "watchNamespaces": ["ml", "team-a"]}, SCHEMA)


def walk(schema, path=""):
    yield path, schema
    for key, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{key}" if path else key)


def test_every_key_is_described_and_closed_unless_free_form():
    for path, schema in walk(SCHEMA):
        if not path:
            continue
        assert schema.get("description"), f"{path}: no description"
        if schema.get("type") == "object" and "properties" in schema:
            assert schema["additionalProperties"] is False, path
    assert SCHEMA["additionalProperties"] is False
    assert set(SCHEMA["properties"]) == set(DEFAULTS) | {"global"}


def test_every_key_has_a_helm_docs_comment():
    """The `# --` comment is in values.yaml itself (the schema only copies it)."""
    docs = values_schema.parse_comments((CHART / "values.yaml").read_text())
    for path, schema in walk(SCHEMA):
        if path and path != "global":
            assert docs[tuple(path.split("."))].description == schema["description"], path


SAMPLE = """\
# -- The name.
name: ""
# -- A count
# that goes on.
# @schema minimum: 1
count: 3
# -- Seconds.
# @schema type: number
seconds: 30
# -- Things.
thing:
  # -- Enabled?
  enabled: true
  # -- Free-form.
  # @schema additionalProperties: true
  extra:
    undocumented: 1
  # -- Words.
  words: [a, b]
"""


def test_generator_infers_types_and_merges_annotations():
    schema = values_schema.build_schema(SAMPLE, title="t")
    props = schema["properties"]
    assert props["name"] == {"description": "The name.", "type": "string"}
    assert props["count"] == {"description": "A count that goes on.", "type": "integer",
                              "minimum": 1}
    assert props["seconds"]["type"] == "number"
    thing = props["thing"]
    assert thing["additionalProperties"] is False and thing["description"] == "Things."
    assert thing["properties"]["enabled"]["type"] == "boolean"
    assert thing["properties"]["extra"] == {"description": "Free-form.", "type": "object",
                                            "additionalProperties": True}
    assert thing["properties"]["words"]["items"] == {"type": "string"}


@pytest.mark.parametrize("text, message", [
    ("# -- Fine.\na: 1\nb: 2\n", "b"),
    ("# -- Fine.\na:\n  b: 1\n", "a.b"),
    ("a: 1  # -- a trailing comment is not a doc comment\n", "a"),
    ("# -- Nothing known.\na: null\n", "a: a null default"),
    ("# -- Bad annotation.\n# @schema enum\na: x\n", "values.yaml:2"),
])
def test_generator_refuses_undocumented_or_unknown(text, message):
    with pytest.raises(values_schema.ValuesError, match=message):
        values_schema.build_schema(text, title="t")


def test_schema_file_is_what_the_generator_writes():
    text = (CHART / "values.yaml").read_text()
    assert generate.schema_json(text) == (CHART / "values.schema.json").read_text()
    assert Path(CHART / "values.schema.json").read_text().endswith("}\n")
