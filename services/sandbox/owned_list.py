"""The shapes the owned-passports list may answer in (it is undocumented upstream).

DESIGN.md §11: a JSON array of documents, or an object with the array under ``data``;
each item is identified by its top-level ``id``, else by
``general_information.identification.uid``. The sandbox answers a JSON array of
documents with a top-level ``id`` until ``PUT /_control/owned-list`` picks another shape:

* ``array``: ``[doc, ...]`` (the default);
* ``data``: ``{"data": [doc, ...]}``, one object, no paging;
* ``paged``: page-number paging, ``GET /v1/passports?page=N&per_page=M`` (``page`` from
  1; ``per_page`` at most ``page_size``, which is also the default) answering
  ``{"data": [...], "meta": {"page", "per_page", "total", "total_pages"},
  "links": {"self", "first", "last", "next", "prev"}}``; links are absolute URLs on the
  host the request came to, ``next`` is null on the last page;
* ``unknown``: ``{"passports": [doc, ...]}``, a shape nobody documented: a client must
  not take it for an empty list.

and ``ids`` decides how items are identified: ``id`` (a top-level ``id``, the default),
``uid`` (only ``general_information.identification.uid``, as in the vendor's sample
document) or ``mixed`` (every second item without a top-level ``id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from yarl import URL

Shape = Literal["array", "data", "paged", "unknown"]
SHAPES: tuple[Shape, ...] = ("array", "data", "paged", "unknown")
Ids = Literal["id", "uid", "mixed"]
IDS: tuple[Ids, ...] = ("id", "uid", "mixed")
DEFAULT_PAGE_SIZE = 100


@dataclass
class OwnedListShape:
    shape: Shape = "array"
    ids: Ids = "id"
    page_size: int = DEFAULT_PAGE_SIZE

    def reset(self) -> None:
        self.shape, self.ids, self.page_size = "array", "id", DEFAULT_PAGE_SIZE


class BadPage(Exception):
    """A paging parameter the upstream would reject; the message is for the client."""


def _items(docs: list[dict[str, Any]], ids: Ids) -> list[dict[str, Any]]:
    if ids == "id":
        return docs
    return [{k: v for k, v in d.items() if k != "id"} if ids == "uid" or n % 2 else d
            for n, d in enumerate(docs)]


def _positive(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BadPage(f"{name} must be a positive integer")
    return int(raw)


def _link(request: web.Request, page: int, per_page: int) -> str:
    url = URL.build(scheme=request.scheme, authority=request.host, path=request.path)
    return str(url.with_query({"page": str(page), "per_page": str(per_page)}))


def render(request: web.Request, docs: list[dict[str, Any]], shape: OwnedListShape) -> Any:
    """The owned list's body in the configured shape; raises BadPage."""
    items = _items(docs, shape.ids)
    if shape.shape == "array":
        return items
    if shape.shape == "data":
        return {"data": items}
    if shape.shape == "unknown":
        return {"passports": items}
    per_page = min(_positive(request, "per_page", shape.page_size), shape.page_size)
    page = _positive(request, "page", 1)
    total = len(items)
    pages = max(1, -(-total // per_page))
    return {
        "data": items[(page - 1) * per_page:page * per_page],
        "meta": {"page": page, "per_page": per_page, "total": total, "total_pages": pages},
        "links": {
            "self": _link(request, page, per_page),
            "first": _link(request, 1, per_page),
            "last": _link(request, pages, per_page),
            "next": _link(request, page + 1, per_page) if page < pages else None,
            "prev": _link(request, page - 1, per_page) if page > 1 else None,
        },
    }
