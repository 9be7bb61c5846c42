"""Image and video request bodies (OpenAI shapes; unknown fields ignored)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator

from api.schemas.base import JSONBody, NullMeansDefault, StoredText

_SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")
VIDEO_SIZES = ("1280x720", "720x1280", "1792x1024", "1024x1792")
VIDEO_SECONDS = ("4", "8", "12")


def _not_blank(prompt: str) -> str:
    if not prompt.strip():
        raise ValueError("the prompt is blank: describe what to make")
    return prompt


# A blank prompt was made and charged for: a picture of nothing in particular.
Prompt = Annotated[str, Field(min_length=1, max_length=32_000), AfterValidator(_not_blank)]


def parse_size(size: str, *, low: int = 64, high: int = 2048) -> tuple[int, int]:
    match = _SIZE.match(size)
    if not match:
        raise ValueError("size must look like 1024x1024")
    width, height = int(match[1]), int(match[2])
    if not (low <= width <= high and low <= height <= high):
        raise ValueError(f"width and height must be between {low} and {high}")
    if width % 2 or height % 2:
        raise ValueError("width and height must be even")
    return width, height


class ImageGenerationRequest(JSONBody, NullMeansDefault, StoredText):
    model: str = Field(default="nano-banana-pro", min_length=1, max_length=200)
    prompt: Prompt
    n: int = Field(default=1, ge=1, le=4)
    size: Literal["256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792",
                  "auto"] = "1024x1024"
    response_format: Literal["url", "b64_json"] = "url"
    webhook_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://",
                                    description="http(s) URL; private and loopback targets are refused")
    user: str | None = Field(default=None, max_length=256)
    # Not supported: refused when asked for, rather than ignored (a stream would arrive empty).
    stream: bool | None = Field(default=None, description="not supported: only false")
    partial_images: int | None = Field(default=None, description="not supported: only 0")
    output_format: str | None = Field(default=None, description='only "png"')
    # Hints OpenAI's image models take: checked as OpenAI checks them (a bad value was taken, and
    # charged), then not passed on. A transparent background cannot be made: refused.
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"] | None = None
    style: Literal["vivid", "natural"] | None = None
    background: Literal["opaque", "auto"] | None = Field(default=None, description='"transparent" is not supported')
    moderation: Literal["low", "auto"] | None = None

    @field_validator("background", mode="before")
    @classmethod
    def _no_transparency(cls, value: object) -> object:
        if value == "transparent":
            raise ValueError("transparent backgrounds are not supported by this gateway's image models")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        return "1024x1024" if value == "auto" else value

    @field_validator("stream", "partial_images")
    @classmethod
    def _no_stream(cls, value: object) -> object:
        if value:
            raise ValueError("streamed image generation (partial images) is not supported by this gateway")
        return value

    @field_validator("output_format")
    @classmethod
    def _png_only(cls, value: str | None) -> str | None:
        if value not in (None, "png"):
            raise ValueError('images are made as PNG only; output_format must be "png"')
        return value


class VideoCreateRequest(NullMeansDefault, StoredText):
    """Lax, unlike the JSON bodies: the OpenAI SDK sends it as a form, where every field is a string
    (`seconds` "4"). Every field is a string here anyway, and lax strings refuse numbers and booleans."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(default="vo3", min_length=1, max_length=200)
    prompt: Prompt
    seconds: Literal["4", "8", "12"] = "4"
    size: Literal["1280x720", "720x1280", "1792x1024", "1024x1792"] = "720x1280"  # portrait, as OpenAI's default
    webhook_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://",
                                    description="http(s) URL; private and loopback targets are refused")
    input_reference: object = Field(default=None, description="not supported: an image to start from")

    @field_validator("input_reference")
    @classmethod
    def _no_reference(cls, value: object) -> object:
        if value not in (None, ""):
            raise ValueError("an input_reference (an image to start the video from) is not supported by this "
                             "gateway")
        return value

    @field_validator("seconds", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
