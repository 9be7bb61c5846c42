"""The body of a route that takes JSON or a form (POST /videos), read as strictly as FastAPI reads JSON.

Starlette's form parser is lenient where a charge is at stake: a multipart body cut off before its
closing boundary loses its unfinished last field silently (the field's default is then used: a
video of another size than asked, and paid for), and bytes that are not UTF-8 are decoded as
Latin-1 or replaced. Here a form must end with its closing boundary and be UTF-8 throughout (the
route takes no files: an uploaded file is refused by its field's name, which the form parse
reports), each field is sent once (a repeated one lost all but its last value silently), and a
body of another Content-Type is refused, as the JSON routes refuse it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from common.errors import InvalidRequest

_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
NOT_JSON_OR_FORM = ("The request body must be JSON (Content-Type: application/json) or a form "
                    "(multipart/form-data or application/x-www-form-urlencoded).")


async def json_or_form(request: Request) -> Any:
    """The body's JSON value, or its form's fields as a dict (an uploaded file as an UploadFile)."""
    content_type = request.headers.get("content-type", "")
    media_type = parse_options_header(content_type)[0].decode("latin-1").lower() if content_type else ""
    try:
        if media_type in _FORMS:
            return await _form(request, content_type, media_type)
        if not media_type or media_type == "application/json" or media_type.endswith("+json"):
            return await request.json()
    except (ValueError, RecursionError):  # json.loads raises the latter on deep nesting
        raise InvalidRequest("The request body is not valid JSON or form data.", code="invalid_json") from None
    except ClientDisconnect:  # a 400 as FastAPI's own body reading has it, not a 500 with a traceback
        raise InvalidRequest("The client disconnected before sending the whole body.", code="body_incomplete") from None
    raise InvalidRequest(NOT_JSON_OR_FORM, code="unsupported_content_type")


async def _form(request: Request, content_type: str, media_type: str) -> dict[str, Any]:
    body = await request.body()  # read first: the form parser then reads these same bytes
    if media_type == "multipart/form-data":
        options = parse_options_header(content_type)[1]
        if options.get(b"charset", b"utf-8").lower() not in (b"utf-8", b"utf8"):  # parts decoded by it, not UTF-8
            raise InvalidRequest("A multipart form must be UTF-8 (its charset, if given, utf-8).", code="invalid_form")
        boundary = options.get(b"boundary")
        if boundary and b"--" + boundary + b"--" not in body:
            raise InvalidRequest("The multipart body ends before its closing boundary: it was cut off.",
                                 code="invalid_form")
    try:
        form = await request.form()
    except MultiPartException as exc:  # the form parser's refusals (no boundary, too many fields...)
        raise InvalidRequest(f"The form cannot be read: {exc.message}", code="invalid_form") from None
    except StarletteHTTPException as exc:  # the same, as Starlette raises it inside an app
        if exc.status_code != 400:
            raise
        raise InvalidRequest(f"The form cannot be read: {exc.detail}", code="invalid_form") from None
    fields = _folded(form.multi_items())
    try:
        if _has_file(fields):  # a file's bytes need not be text: each text part is checked alone
            _check_text_parts(body, parse_options_header(content_type)[1].get(b"boundary") or b"")
        else:
            text = body.decode("utf-8")
            if media_type == "application/x-www-form-urlencoded":
                parse_qsl(text, keep_blank_values=True, errors="strict")  # %-escapes of non-UTF-8 bytes
    except UnicodeDecodeError:
        raise InvalidRequest("The form is not valid UTF-8.", code="invalid_form") from None
    return fields


def _check_text_parts(body: bytes, boundary: bytes) -> None:
    """Each part of a multipart body that is not a file must be UTF-8 (UnicodeDecodeError): the
    form parser would decode one that is not as Latin-1, and the request be served with a garbled
    prompt, as when the body has no file. The parts are found as the form parser finds them (the
    same parser; a file is a part whose Content-Disposition has a `filename`)."""
    part: dict[str, Any] = {}

    def begin() -> None:
        part.update(header=b"", value=b"", disposition=b"", data=bytearray())

    def header_field(data: bytes, start: int, end: int) -> None:
        part["header"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def header_end() -> None:
        if part["header"].lower() == b"content-disposition":  # the last one counts, as for the form parser
            part["disposition"] = part["value"]
        part["header"] = part["value"] = b""

    def data(chunk: bytes, start: int, end: int) -> None:
        part["data"] += chunk[start:end]

    def end() -> None:
        if b"filename" not in parse_options_header(part["disposition"])[1]:
            bytes(part["data"]).decode("utf-8")

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": header_field,
                                        "on_header_value": header_value, "on_header_end": header_end,
                                        "on_part_data": data, "on_part_end": end})
    parser.write(body)
    parser.finalize()


def _folded(items: list[tuple[str, str | UploadFile]]) -> dict[str, Any]:
    """The form's fields by name, each at most once. A nested value comes as bracketed names (the
    OpenAI SDK sends `input_reference={"image_url": ...}` as `input_reference[image_url]`, and a
    list as `name[]` repeated): folded under its first name, so the schema sees (and refuses) the
    field whatever form it came in, where an unknown bracketed name was ignored and the request
    served without it."""
    fields: dict[str, Any] = {}
    for name, value in items:
        top, bracket, rest = name.partition("[")
        if not bracket:
            if name in fields:
                raise _twice(name) if not isinstance(fields[name], dict | list) else _mixed(name)
            fields[name] = value
            continue
        if rest == "]":  # name[]: one item of a list
            listed = fields.setdefault(top, [])
            if not isinstance(listed, list):
                raise _mixed(top)
            listed.append(value)
            continue
        nested = fields.setdefault(top, {})
        inner = rest.removesuffix("]")
        if not isinstance(nested, dict):
            raise _mixed(top)
        if inner in nested:
            raise _twice(top)
        nested[inner] = value
    return fields


def _has_file(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_file(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_file(v) for v in value)
    return isinstance(value, UploadFile)


def _mixed(name: str) -> InvalidRequest:
    return InvalidRequest(f"The form field {name!r} is sent both as a value and as nested fields ({name}[...]);"
                          " send one of the two.", param=name, code="invalid_form")


def _twice(name: str) -> InvalidRequest:
    return InvalidRequest(f"The form field {name!r} is sent more than once; send each field once.",
                          param=name, code="invalid_form")
