"""Pydantic schemas mirroring each public API field for field, and how their errors read."""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import ValidationError

from gemma_server.api.errors import ApiError


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
