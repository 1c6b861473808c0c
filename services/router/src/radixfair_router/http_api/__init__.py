"""The router's OpenAI-compatible HTTP front door (issue 16): the same dispatch path as gRPC, over HTTP."""

from radixfair_router.front_door import DispatchParts
from radixfair_router.http_api.routes import OpenAiApi
from radixfair_router.http_api.server import RunningHttpApi, start_http_api

__all__ = ["DispatchParts", "OpenAiApi", "RunningHttpApi", "start_http_api"]
