"""The prompt tokens an admission reserves, estimated before the model server counts them.

Text is counted by its bytes (one token per ``bytes_per_token`` bytes of the body, rounded
up). An image is not: its base64 data says nothing about its tokens (a vision model turns
any image into a fixed or bounded number of them: gemma3 256, llava 576), so a tiny image
would reserve too little and a photo tens of thousands of tokens too many. Each image
reserves ``tokens_per_image`` instead, and its data leaves the byte count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The content parts of the APIs that carry an image: OpenAI chat `image_url`, Responses
# `input_image`, Anthropic `image`. Ollama's own API lists base64 strings under `images`.
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


@dataclass(frozen=True, slots=True)
class Images:
    count: int = 0
    data_bytes: int = 0  # what their data (base64, data URLs, URLs) takes in the body

    def __add__(self, other: Images) -> Images:
        return Images(self.count + other.count, self.data_bytes + other.data_bytes)


NO_IMAGES = Images()


def _string_bytes(value: Any) -> int:
    """The characters of every string in a JSON value (base64 and URLs are ASCII)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def images_in(value: Any) -> Images:
    """The images a request body (or a stored conversation) holds, in any API's shape."""
    count = data = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if kind in IMAGE_PARTS:
                count += 1
                data += _string_bytes(item) - len(kind)
                continue
            for name, child in item.items():
                if name == "images" and isinstance(child, list):
                    for image in child:
                        if isinstance(image, str):
                            count += 1
                            data += len(image)
                elif isinstance(child, dict | list):
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(child for child in item if isinstance(child, dict | list))
    return Images(count, data)


def prompt_estimate(
    body_bytes: int,
    bytes_per_token: float,
    images: Images = NO_IMAGES,
    tokens_per_image: int = 0,
) -> int:
    """The prompt tokens reserved for a request of this size: one per `bytes_per_token`
    bytes of the body but its images' data, rounded up, plus `tokens_per_image` per image.
    With 1 byte per token the text part is an upper bound for byte-level tokenizers (every
    token covers at least one byte of text, and the JSON around each message is longer
    than its chat-template tokens)."""
    text = max(body_bytes - images.data_bytes, 0)
    return math.ceil(text / bytes_per_token) + images.count * tokens_per_image
