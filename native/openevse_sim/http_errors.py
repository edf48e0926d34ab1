"""Protocol-level errors (unparseable request line, bad headers, unknown method) answered in
the firmware's JSON envelope instead of aiohttp's text page (firmware.md §1.1)."""

from __future__ import annotations

import json
import sys
import traceback
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest


class JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # a bug in a handler: keep the traceback visible (the fuzz test looks for it)
            print("Error handling request:", file=sys.stderr)
            if exc is not None:
                traceback.print_exception(exc, file=sys.stderr)
        else:
            first = (message or "").strip().splitlines()[0:1]
            print(f"DBUG: rejected request ({status}): {first[0][:120] if first else ''}", flush=True)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = web.Response(
            status=status, text=json.dumps({"msg": phrase}), content_type="application/json"
        )
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """AppRunner whose connections use JsonErrorRequestHandler."""

    async def _make_server(self) -> web.Server:
        server: Any = await super()._make_server()
        server.__class__ = JsonErrorServer  # same layout; only __call__ differs
        return server  # type: ignore[no-any-return]
