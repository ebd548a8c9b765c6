"""Pydantic schemas mirroring each public API field for field, and how their errors read."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from gemma_server.api.errors import ApiError


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` references inlined, for `openapi_extra`
    (a `#/$defs/...` reference would point nowhere inside the OpenAPI document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "union")) or part in (
                "str", "list[str]", "list[int]", "list[list[int]]", "int", "float"):
            continue
        else:
            out += ("." if out else "") + part
    return out


def validation_error(exc: ValidationError, fields: Iterable[str] = ()) -> ApiError:
    """The first problem, worded as 'Invalid <field>: <what> (got <value>)'.

    Errors of whole-body rules have no location; their param is the first field they name.
    """
    error = exc.errors()[0]
    param = _path(error["loc"]) or None
    message = error["msg"].removeprefix("Value error, ")
    if param is None:
        words = set(re.findall(r"\w+", message))
        param = next((f for f in fields if f in words), None)
        return ApiError(400, message, param, "invalid_value", 5006)
    if error["type"] == "missing":
        text = f"Missing required parameter: '{param}'."
    elif error["type"] == "extra_forbidden":
        text = f"Unrecognized request argument supplied: {param}"
    else:
        shown = repr(error.get("input"))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        text = f"Invalid '{param}': {message} (got {shown})." if param else f"{message}."
    return ApiError(400, text, param, "invalid_value" if error["type"] != "missing"
                    else "missing_required_parameter", 5006)
