"""The prompt estimate: text by its bytes, images by a fixed reserve, in every API's shape."""

from __future__ import annotations

import orjson

from tollgate_gateway.limits.estimate import NO_IMAGES, Images, images_in, prompt_estimate

PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)


def test_text_only_counts_bytes() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    assert images_in(body) == NO_IMAGES
    raw = orjson.dumps(body)
    assert prompt_estimate(len(raw), 2.0, images_in(body), 2048) == -(-len(raw) // 2)


def test_each_apis_image_shape_is_found() -> None:
    url = "data:image/png;base64," + PNG
    shapes = {
        "openai chat": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ]
        },
        "responses": {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": url},
                    ],
                }
            ]
        },
        "anthropic": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {"type": "text", "text": "what is this?"},
                    ],
                }
            ]
        },
        "ollama chat": {"messages": [{"role": "user", "content": "what?", "images": [PNG]}]},
        "ollama generate": {"prompt": "what?", "images": [PNG]},
    }
    for name, body in shapes.items():
        found = images_in(body)
        assert found.count == 1, name
        assert len(PNG) <= found.data_bytes <= len(PNG) + 40, (name, found)


def test_images_reserve_their_tokens_not_their_bytes() -> None:
    tiny = {"messages": [{"role": "user", "content": "x", "images": [PNG] * 4}]}
    raw = orjson.dumps(tiny)
    text_part = len(raw) - 4 * len(PNG)
    assert prompt_estimate(len(raw), 2.0, images_in(tiny), 2048) == -(-text_part // 2) + 4 * 2048

    photo = {"messages": [{"role": "user", "content": "x", "images": ["A" * 200_000]}]}
    raw = orjson.dumps(photo)
    assert prompt_estimate(len(raw), 2.0, images_in(photo), 2048) < 2048 + len(raw) // 1000


def test_images_of_a_conversation_add_up() -> None:
    assert Images(1, 10) + Images(2, 5) == Images(3, 15)
    nested = [[{"type": "input_image", "image_url": "u"}], {"images": ["a", 3, "b"]}]
    assert images_in(nested) == Images(3, 3)
