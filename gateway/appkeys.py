"""Typed keys for everything stored on the aiohttp Application."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.storage.database import Database

CONFIG: web.AppKey[Config] = web.AppKey("config")
DATABASE: web.AppKey[Database] = web.AppKey("database")
# Extra services registered by later parts (hook cache, batcher, dispatcher, metrics ...).
SERVICES: web.AppKey[dict[str, Any]] = web.AppKey("services")
