"""JSON-schema preparation for constrained decoding (pure functions: no model, no tokenizer)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from xpullm.engine import InvalidParameter
from xpullm.engine.schemas import (
    DEFAULT_MAX_ITEMS,
    InvalidJsonSchema,
    check_json_schema,
    nest_schema,
    tighten_schema,
)


class Address(BaseModel):
    city: str


class Person(BaseModel):
    name: str
    home: Address
    past_homes: list[Address] = []


def _wrap(schema: dict, key: str = "arguments") -> dict:
    return {"type": "object", "properties": {key: schema}, "required": [key]}


def test_nested_defs_need_rebasing() -> None:
    schema = Person.model_json_schema()
    assert "$defs" in schema
    with pytest.raises(InvalidJsonSchema, match="Pointer '/\\$defs/Address' does not exist") as info:
        check_json_schema(_wrap(schema))
    assert isinstance(info.value, InvalidParameter)
    nested = nest_schema(schema, "/properties/arguments")
    assert nested["properties"]["home"] == {"$ref": "#/properties/arguments/$defs/Address"}
    assert check_json_schema(_wrap(nested))
    assert schema["properties"]["home"] == {"$ref": "#/$defs/Address"}  # the input is not modified


def test_nest_rebases_root_and_definitions_refs_and_keeps_remote_ones() -> None:
    tree = {
        "type": "object",
        "definitions": {"Leaf": {"type": "string"}},
        "properties": {
            "child": {"$ref": "#"},
            "leaf": {"anyOf": [{"$ref": "#/definitions/Leaf"}, {"type": "null"}]},
            "other": {"$ref": "other.json#/x"},
        },
    }
    out = nest_schema(tree, "/anyOf/1/properties/arguments")
    props = out["properties"]
    assert props["child"]["$ref"] == "#/anyOf/1/properties/arguments"
    assert props["leaf"]["anyOf"][0]["$ref"] == "#/anyOf/1/properties/arguments/definitions/Leaf"
    assert props["other"]["$ref"] == "other.json#/x"
    with pytest.raises(ValueError, match="JSON pointer"):
        nest_schema(tree, "properties/x")


def test_tighten_caps_arrays_by_enum_size_and_default() -> None:
    schema = {
        "type": "object",
        "$defs": {"Genre": {"enum": ["drama", "comedy", "horror"]}},
        "properties": {
            "genres": {"type": "array", "items": {"$ref": "#/$defs/Genre"}},
            "inline": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "given": {"type": "array", "items": {"type": "string"}, "maxItems": 40},
            "least": {"type": "array", "items": {"const": 1}, "minItems": 3},
        },
    }
    out = tighten_schema(schema, max_string_length=20)
    props = out["properties"]
    assert props["genres"]["maxItems"] == 3 and props["inline"]["maxItems"] == 2
    assert props["tags"]["maxItems"] == DEFAULT_MAX_ITEMS and props["tags"]["items"]["maxLength"] == 20
    assert props["given"]["maxItems"] == 40  # the schema's own cap is kept
    assert props["least"]["maxItems"] == 3  # never below minItems
    assert out["additionalProperties"] is False and out["x-guidance"]["whitespace_flexible"] is False
    assert "maxItems" not in tighten_schema(schema, max_items=None)["properties"]["tags"]
    assert check_json_schema(out)


def test_check_rejects_non_dicts_and_unsupported_keywords() -> None:
    with pytest.raises(InvalidJsonSchema, match="a JSON schema dict"):
        check_json_schema(["not", "a", "schema"])
    with pytest.raises(InvalidJsonSchema, match="uniqueItems"):
        check_json_schema({"type": "array", "uniqueItems": True}, "parameters of tool 'f'")
