"""Request fixtures more than one test tier sends (the stand-in's own tests and the
gateway's), so that both check the same shapes."""

from __future__ import annotations

from typing import Any

WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the weather for a city",
    "parameters": {
        "type": "object",
        "required": ["city"],
        "properties": {"city": {"type": "string"}},
    },
}
"""A Responses API function tool."""

ANTHROPIC_WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Get the weather for a city",
    "input_schema": WEATHER["parameters"],
}
"""The same tool in the Anthropic Messages API's shape."""
