"""A small HTTP client bound to one base URL, with a default timeout (never hang a test)."""

from __future__ import annotations

import threading
from typing import Any

import requests

DEFAULT_TIMEOUT = 5.0


class Api:
    """``Api("http://127.0.0.1:20000").get("/status").json()``; returns ``requests.Response``."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never route through a proxy

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", False)  # AP mode 301s unknown URLs (firmware.md §5.4)
        return self.session.request(method, self.url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET and decode, raising for a non-2xx status."""
        resp = self.get(path, **kwargs)
        resp.raise_for_status()
        return resp.json()

    def post_json(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        resp = self.post(path, json=json, **kwargs)
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return f"Api({self.base_url!r})"


_local = threading.local()


def plain_get(url: str, *, timeout: float) -> requests.Response:
    """GET for readiness probes: one proxy-free session per thread, no redirects followed."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.trust_env = False
    return session.get(url, timeout=timeout, allow_redirects=False)
